"""daemon/audio.py: the one mixdown and clip check every reader of audio uses."""

from __future__ import annotations

import numpy as np
import pytest

from intentd.daemon.audio import check_clip as core_check_clip
from intentd.daemon.audio import to_mono
from intentd.daemon.errors import AudioError


def test_mixdown_is_the_float32_mean_on_either_axis() -> None:
    frames = np.array([[0.5, -0.5], [1.0, 0.0], [0.25, 0.75]], dtype=np.float32)
    np.testing.assert_array_equal(to_mono(frames, channels_axis=1), [0.0, 0.5, 0.5])
    np.testing.assert_array_equal(to_mono(frames.T, channels_axis=0), [0.0, 0.5, 0.5])
    assert to_mono(frames, channels_axis=1).dtype == np.float32
    one = to_mono(frames[:, :1], channels_axis=1)
    assert one.flags.c_contiguous and one.tolist() == [0.5, 1.0, 0.25]
    mono = np.ones(4, dtype=np.float32)
    assert to_mono(mono) is mono
    with pytest.raises(AudioError, match="3 dimensions"):
        to_mono(np.zeros((2, 2, 2)))


def test_clip_check_names_the_clip() -> None:
    assert core_check_clip(np.ones(3), "a.wav").dtype == np.float32
    for bad, message in ((np.zeros(0), "empty"), (np.array([0.1, np.inf]), "NaN or infinite"),
                         (np.zeros((2, 3)), "mono 1-D"), (np.zeros(10), "silent")):
        with pytest.raises(AudioError, match=message) as caught:
            core_check_clip(bad, "a.wav")
        assert str(caught.value).startswith("a.wav: ")
    assert core_check_clip(np.zeros(10), "live", allow_silence=True).size == 10

