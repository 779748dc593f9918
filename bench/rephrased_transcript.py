"""Re-phrased requests by way of words (issue 16's "a transcript" route, measured): Whisper tiny.en transcribes
each clip freely (greedy, no grammar, its 30 s window), and a text classifier trained only on sentences the
intents file generates (TF-IDF over word 1-2-grams or character 3-5-grams, logistic regression) names the intent.

    .venv/bin/python -m bench.rephrased_transcript --whisper runs/gm/minds --clips CLIPS [--intents FILE]

--whisper: any `intentd-train grammar-model` folder (it holds Whisper tiny.en's encoder and decoder and its
tokenizer); CLIPS: the re-phrased clips bench/rephrased.py rendered (one folder per intent).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch

BATCH = 8
MAX_NEW_TOKENS = 60
SENTENCES_PER_INTENT = 400


def transcribe(whisper: Path, clips: Path) -> list[dict[str, str]]:
    """Each clip's free transcript, with the intent its folder names."""
    from tokenizers import Tokenizer
    from transformers import WhisperFeatureExtractor, WhisperForConditionalGeneration

    from intentd.daemon.audio import SAMPLE_RATE
    from intentd.train.audio_io import read_audio

    model = WhisperForConditionalGeneration.from_pretrained(whisper).eval()
    features = WhisperFeatureExtractor.from_pretrained(whisper)
    tokenizer = Tokenizer.from_file(str(whisper / "tokenizer.json"))
    decoder = json.loads((whisper / "intentd.json").read_text(encoding="utf-8"))["decoder"]
    files = sorted(clips.rglob("*.wav"))
    rows = []
    for i in range(0, len(files), BATCH):
        batch = files[i:i + BATCH]
        audio = [read_audio(f) for f in batch]
        inputs = features(audio, sampling_rate=SAMPLE_RATE, return_tensors="pt").input_features
        with torch.inference_mode():
            ids = model.generate(inputs, decoder_input_ids=torch.tensor([decoder["prompt"]] * len(batch)),
                                 num_beams=1, max_new_tokens=MAX_NEW_TOKENS)
        for f, seq in zip(batch, ids.tolist(), strict=True):
            text = tokenizer.decode([t for t in seq if t < decoder["eot"]]).strip().lower()
            rows.append({"file": str(f.relative_to(clips)), "intent": f.parent.name, "text": text})
    return rows


def main(argv: list[str] | None = None) -> int:
    """Transcribe, fit the text classifiers on the intents file's sentences, print their accuracy."""
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.linear_model import LogisticRegression

    from intentd.train.intents import load_intents

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--whisper", type=Path, required=True)
    parser.add_argument("--clips", type=Path, required=True)
    parser.add_argument("--intents", type=Path, default=Path("train/intents/minds14.toml"))
    parser.add_argument("--transcripts", type=Path, help="write the transcripts here (JSON)")
    args = parser.parse_args(argv)
    rows = transcribe(args.whisper, args.clips)
    if args.transcripts:
        args.transcripts.write_text(json.dumps(rows, indent=0), encoding="utf-8")
    intents = load_intents(args.intents)
    rng = np.random.default_rng(0)
    sentences, labels = [], []
    for name in intents.names:
        said = intents.sample(name, SENTENCES_PER_INTENT, rng)
        sentences += [s.lower() for s in said]
        labels += [name] * len(said)
    for analyzer, ngrams in (("word", (1, 2)), ("char_wb", (3, 5))):
        vectors = TfidfVectorizer(analyzer=analyzer, ngram_range=ngrams, sublinear_tf=True)
        model = LogisticRegression(max_iter=2000, C=10).fit(vectors.fit_transform(sentences), labels)
        guessed = model.predict(vectors.transform([r["text"] for r in rows]))
        right = sum(g == r["intent"] for g, r in zip(guessed, rows, strict=True))
        print(f"transcript + {analyzer} {ngrams[0]}-{ngrams[1]}-gram classifier: {right / len(rows):.4f} "
              f"({right} of {len(rows)} clips)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
