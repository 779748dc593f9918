"""A fast loop for unseen-speaker experiments: cache one FSDD fold once, then train many top-1 variants on it.

Usage: .venv/bin/python -m bench.fold_variants --speaker nicolas --synth DIR [--workdir DIR] [--trim-perturb 15]
                                               [--seeds 0 1 2] [--variants base time-mask=0.4 mixup=0.4 ...]

`bench/fsdd_speakers.py` runs the real `intentd-train fit` per fold: 7-14 min each here, mostly Trainer. This
script builds the same training data (the three other speakers + the synth set, `fit`'s held-out split, the same
features, the same frozen-prefix cache of train.frozen) once per fold, saves the cache under the work folder, and
trains the top layer itself with fit's optimiser settings (AdamW, lr 2e-4, batch 32, linear warm-up 10% and
decay, 5 epochs) in about 5 min per variant. For each variant and seed it prints the unseen speaker's accuracy at
the epoch `fit` would keep (best held-out accuracy), its mean over the epochs (less noisy), and, over the seeds,
the accuracy of averaging their probabilities (an ensemble) and the clips every seed misses. Use it to choose
what to run through `fsdd_speakers`; the README's rows come from that script, not this one.

Variants: base; time-mask=SECONDS (train.augment, as `fit --time-mask`); label-smoothing=X; mixup=ALPHA (inputs
and targets mixed within a batch, Beta(ALPHA, ALPHA)). Join with `+`: time-mask=0.4+mixup=0.4.
"""

from __future__ import annotations

import argparse
import math
import sys
import tempfile
from pathlib import Path

import torch
from torch import nn

from bench import fsdd

EPOCHS, LEARNING_RATE, BATCH, WARMUP = 5, 2e-4, 32, 0.1


def build_cache(fold: Path, synth: Path, base: Path, trims: tuple[float, ...], max_seconds: float) -> dict:
    """The fold's top-1 cache: train (with trim copies), fit's held-out split, and the unseen speaker."""
    from train import frozen
    from train.data import load_combined, load_labelled, prepare_features
    from train.fit import load_base_model

    data = load_combined([str(fold / "train-data"), str(synth)], None, None, 42, 0.2)
    model, extractor = load_base_model(str(base), data.label_names)
    frozen.apply_train_mode(model, "top", 1)
    out: dict = {"label_names": data.label_names}
    for name, split, split_trims in (("train", "train", trims), ("val", "test", ())):
        features = prepare_features(data.split(split), data.label_column, extractor, max_seconds, trims=split_trims)
        cache, _ = frozen.build_cache(model, features, "top", 1)
        out[name] = (cache.inputs.half(), cache.labels)
    unseen = load_labelled(str(fold / "test-data"), None, None, 42, 0.2)
    features = prepare_features(unseen.split("test"), unseen.label_column, extractor, max_seconds)
    cache, _ = frozen.build_cache(model, features, "top", 1)
    to_ours = [data.label_names.index(n) for n in unseen.label_names]
    out["unseen"] = (cache.inputs.half(), torch.tensor([to_ours[int(i)] for i in cache.labels]))
    return out


def parse_variant(text: str) -> dict[str, float]:
    """'time-mask=0.4+mixup=0.4' -> {'time-mask': 0.4, 'mixup': 0.4}; 'base' -> {}."""
    known = {"time-mask", "label-smoothing", "mixup"}
    parts = {} if text == "base" else dict(p.split("=", 1) for p in text.split("+"))
    unknown = set(parts) - known
    if unknown:
        raise SystemExit(f"unknown variant part(s) {sorted(unknown)} in {text!r}; known: base, {', '.join(sorted(known))}")
    return {k: float(v) for k, v in parts.items()}


def train_variant(cache: dict, base: Path, variant: dict[str, float], seed: int) -> tuple[list[float], torch.Tensor]:
    """Train one variant; returns the unseen accuracy per epoch and the unseen logits at fit's kept epoch."""
    from train import augment, frozen
    from train.fit import load_base_model

    torch.manual_seed(seed)
    model, _ = load_base_model(str(base), cache["label_names"])
    frozen.apply_train_mode(model, "top", 1)
    top = frozen.small_module(model, "top", 1)
    if variant.get("time-mask"):
        augment.install_time_mask(frozen.encoder_layers(model)[-1], variant["time-mask"], seed)
    (x_train, y_train), (x_val, y_val), (x_unseen, y_unseen) = cache["train"], cache["val"], cache["unseen"]
    params = [p for p in top.parameters() if p.requires_grad]
    optimiser = torch.optim.AdamW(params, lr=LEARNING_RATE, weight_decay=0.0)
    steps = math.ceil(len(y_train) / BATCH)
    total, warm = steps * EPOCHS, math.ceil(WARMUP * steps * EPOCHS)
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimiser, lambda s: s / warm if s < warm else max(0.0, (total - s) / max(1, total - warm)))
    generator = torch.Generator().manual_seed(seed)
    smoothing, alpha = variant.get("label-smoothing", 0.0), variant.get("mixup", 0.0)

    @torch.no_grad()
    def logits(x: torch.Tensor) -> torch.Tensor:
        top.eval()
        out = torch.cat([top(x[i : i + 64].float())["logits"] for i in range(0, len(x), 64)])
        top.train()
        return out

    per_epoch: list[float] = []
    best_val, kept = -1.0, torch.empty(0)
    top.train()
    for _ in range(EPOCHS):
        order = torch.randperm(len(y_train), generator=generator)
        for step in range(steps):
            rows = order[step * BATCH : (step + 1) * BATCH]
            x, y = x_train[rows].float(), y_train[rows]
            if alpha:
                lam = float(torch.distributions.Beta(alpha, alpha).sample())
                other = torch.randperm(len(y), generator=generator)
                out = top(lam * x + (1 - lam) * x[other])["logits"]
                loss = lam * nn.functional.cross_entropy(out, y, label_smoothing=smoothing) + (
                    1 - lam) * nn.functional.cross_entropy(out, y[other], label_smoothing=smoothing)
            else:
                loss = nn.functional.cross_entropy(top(x)["logits"], y, label_smoothing=smoothing)
            optimiser.zero_grad()
            loss.backward()
            optimiser.step()
            schedule.step()
        val = float((logits(x_val).argmax(1) == y_val).float().mean())
        unseen = logits(x_unseen)
        per_epoch.append(float((unseen.argmax(1) == y_unseen).float().mean()))
        if val > best_val:  # Trainer keeps the first of equal epochs
            best_val, kept = val, unseen
    return per_epoch, kept


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--fsdd", type=Path, default=fsdd.DEFAULT_FSDD, help="FSDD recordings folder")
    parser.add_argument("--workdir", type=Path, help="where the fold and its cache go (default: a temp folder)")
    parser.add_argument("--speaker", default="nicolas", choices=fsdd.SPEAKERS, help="the unseen speaker")
    parser.add_argument("--synth", type=Path, required=True, help="digits synth folder joined to training")
    parser.add_argument("--max-seconds", type=float, default=2.0, help="backbone crop (default 2, as the README's)")
    parser.add_argument("--trim-perturb", type=float, nargs="*", default=[15.0], help="as fit's (default 15)")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    parser.add_argument("--variants", nargs="+", default=["base"])
    args = parser.parse_args(argv)
    variants = {text: parse_variant(text) for text in args.variants}

    recs = fsdd.require_fsdd(args.fsdd)
    if recs is None:
        return fsdd.SKIP_STATUS
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="intentd-fold-variants-"))
    workdir.mkdir(parents=True, exist_ok=True)
    base, _ = fsdd.backbone(workdir, args.max_seconds, workdir / "steps.log")
    trims = tuple(args.trim_perturb)
    fold = workdir / f"fold-{args.speaker}"
    cache_file = workdir / f"cache-{args.speaker}-{args.synth.name}-trim{','.join(f'{t:g}' for t in trims)}.pt"
    if cache_file.is_file():
        cache = torch.load(cache_file)
    else:
        if not fold.exists():
            fsdd.audiofolder(fold / "train-data", {"train": [r for r in recs if r.speaker != args.speaker]})
            fsdd.audiofolder(fold / "test-data", {"test": [r for r in recs if r.speaker == args.speaker]})
        cache = build_cache(fold, args.synth, base, trims, args.max_seconds)
        torch.save(cache, cache_file)

    y_unseen = cache["unseen"][1]
    print(f"| variant | seed | kept epoch | mean of epochs | per epoch |  (unseen: {args.speaker}, {len(y_unseen)} clips)")
    print("|---|---|---|---|---|")
    for text, variant in variants.items():
        kept_logits = []
        for seed in args.seeds:
            per_epoch, kept = train_variant(cache, base, variant, seed)
            kept_logits.append(kept)
            kept_acc = float((kept.argmax(1) == y_unseen).float().mean())
            print(f"| {text} | {seed} | {kept_acc:.2%} | {sum(per_epoch) / len(per_epoch):.2%} | "
                  f"{' '.join(f'{a:.1%}' for a in per_epoch)} |", flush=True)
        if len(kept_logits) > 1:
            mean_probs = sum(torch.softmax(k, dim=1) for k in kept_logits)
            ensemble = float((mean_probs.argmax(1) == y_unseen).float().mean())
            always = torch.stack([k.argmax(1) != y_unseen for k in kept_logits]).all(dim=0).sum()
            print(f"| {text} | ensemble of {len(kept_logits)} | {ensemble:.2%} | | {int(always)} clips missed by "
                  "every seed |", flush=True)
    print(f"reproduce: {fsdd.reproduce_line(argv)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
