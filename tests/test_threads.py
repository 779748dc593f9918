"""run_in_new_thread: results and errors come back, and the thread (with any OpenMP pool it made) is gone."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Sequence

import pytest

from intentd.daemon import settings as settings_mod
from intentd.daemon.frames import Prediction, Utterance
from intentd.daemon.notify import Notifier
from intentd.daemon.threads import run_in_new_thread
from tests.daemon_proc import NotifySocket, free_port, serve_while


def test_returns_the_result_from_a_thread_that_has_ended() -> None:
    seen: list[threading.Thread] = []

    def work() -> int:
        seen.append(threading.current_thread())
        return 42

    async def main() -> tuple[int, threading.Thread]:
        value = await run_in_new_thread(work, name="t-work")
        return value, threading.current_thread()

    value, loop_thread = asyncio.run(main())
    assert value == 42
    assert seen[0] is not loop_thread
    assert seen[0].name == "t-work"
    assert not seen[0].is_alive()


def test_raises_the_threads_exception_and_the_thread_has_ended() -> None:
    seen: list[threading.Thread] = []

    def work() -> int:
        seen.append(threading.current_thread())
        raise ValueError("broken model")

    with pytest.raises(ValueError, match="broken model"):
        asyncio.run(run_in_new_thread(work, name="t-fail"))
    assert not seen[0].is_alive()


def test_a_cancelled_wait_leaves_the_loop_usable_and_the_thread_finishes() -> None:
    release = threading.Event()
    finished = threading.Event()

    def work() -> str:
        release.wait(10.0)
        finished.set()
        return "late"

    loop_errors: list[dict[str, object]] = []

    async def main() -> None:
        asyncio.get_running_loop().set_exception_handler(lambda _loop, context: loop_errors.append(context))
        task = asyncio.create_task(run_in_new_thread(work, name="t-slow"))
        await asyncio.sleep(0)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        release.set()
        # The late result must not raise InvalidStateError into the loop; give it a turn to arrive.
        await asyncio.to_thread(finished.wait, 10.0)
        await asyncio.sleep(0.05)

    asyncio.run(main())
    assert finished.is_set()
    assert loop_errors == []  # e.g. InvalidStateError from settling a cancelled future would land here


class _RecordingEngine:
    model_id = "fake@0"

    def classify(self, utterances: Sequence[Utterance]) -> list[Prediction]:
        return [Prediction("a", 1.0, (("a", 1.0),)) for _ in utterances]


def test_the_service_loads_its_model_on_a_thread_that_is_gone_before_ready() -> None:
    """No thread that ran the model load may outlive it (see daemon/threads.py for the 2x slowdown)."""
    from intentd.daemon.service import Service

    settings = settings_mod.from_dict({
        "sources": {"listen": ["tcp://127.0.0.1:0"]},
        "publisher": {"uri": f"tcp://127.0.0.1:{free_port()}"},
    })
    loaded_on: list[threading.Thread] = []

    def loader(_: settings_mod.Settings) -> _RecordingEngine:
        loaded_on.append(threading.current_thread())
        return _RecordingEngine()

    notify = NotifySocket()
    service = Service(settings, model_loader=loader, notifier=Notifier(notify.path))

    def drive() -> None:
        notify.wait_for("READY", "1", timeout_s=30.0)
        assert len(loaded_on) == 1
        assert loaded_on[0] is not threading.main_thread()
        assert not loaded_on[0].is_alive()

    try:
        assert serve_while(service, drive) == 0
    finally:
        notify.close()
