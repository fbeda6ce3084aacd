"""Our duration-budgeted batches (``LengthBucketBatchSampler`` + ``data.max_duration``) vs lhotse's
``DynamicBucketingSampler`` on a recipe's training set: batches per epoch, padding, batch variety, speed.

lhotse is not a dependency; install it beside the project to run this (issue 11 asked for the measurement):

    pip install --target /tmp/lh lhotse     # then remove the torch/numpy it pulls in from /tmp/lh
    PYTHONPATH=/tmp/lh python scripts/compare_samplers.py --recipe recipes/an4 --max_duration 200

Both get the same utterance lengths (frames of the recipe's ``dump/train_nodev/feats.pt``, 10 ms each). Per
epoch it prints: batches, mean utterances per batch, padding = 1 - sum(T) / sum(B x T_max) (what a padded batch
wastes), the largest padded batch in seconds (B x T_max: what bounds memory), the share of batches (as sets of
utterances) that also occur in the next epoch (1.0 = fixed batch composition), and the time to draw an epoch.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch

from asr.data.dataset import LengthBucketBatchSampler


def stats(batches: list[list[int]], lengths: list[int]) -> dict[str, float]:
    """Batches, mean batch size, padding fraction and the largest padded batch (seconds) of one epoch."""
    padded = [len(b) * max(lengths[i] for i in b) for b in batches]
    return {
        "batches": len(batches),
        "mean_utts": sum(map(len, batches)) / len(batches),
        "padding": 1 - sum(lengths[i] for b in batches for i in b) / sum(padded),
        "max_padded_s": max(padded) * 0.01,
    }


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--recipe", default="recipes/an4")
    ap.add_argument("--max_duration", type=float, default=200.0)
    ap.add_argument("--epochs", type=int, default=3)
    args = ap.parse_args(argv)
    feats = torch.load(Path(args.recipe) / "dump/train_nodev/feats.pt", weights_only=True)
    ids = sorted(feats)
    lengths = [int(feats[k].shape[0]) for k in ids]
    print(f"{len(ids)} utterances, {sum(lengths) * 0.01:.0f} s; max_duration {args.max_duration:g} s")

    ours = LengthBucketBatchSampler(lengths, 100000, int(args.max_duration / 0.01), shuffle=True, seed=1, num_replicas=1, rank=0)
    from lhotse import CutSet, MonoCut
    from lhotse.dataset import DynamicBucketingSampler

    cuts = CutSet.from_cuts(MonoCut(id=str(i), start=0.0, duration=n * 0.01, channel=0) for i, n in enumerate(lengths))
    lh = DynamicBucketingSampler(cuts, max_duration=args.max_duration, shuffle=True, seed=1, num_buckets=10, drop_last=False)

    jit = LengthBucketBatchSampler(lengths, 100000, int(args.max_duration / 0.01), shuffle=True, seed=1, num_replicas=1, rank=0, length_jitter=0.1)

    def epoch_ours(e):
        ours.set_epoch(e)
        return [[i for i, _ in b] for b in ours]

    def epoch_jitter(e):
        jit.set_epoch(e)
        return [[i for i, _ in b] for b in jit]

    def epoch_lhotse(e):
        lh.set_epoch(e)
        return [[int(c.id) for c in b] for b in lh]

    for name, draw in (("ours (LengthBucketBatchSampler)", epoch_ours), ("ours, data.length_jitter=0.1", epoch_jitter), ("lhotse DynamicBucketingSampler (10 buckets)", epoch_lhotse)):
        t = time.perf_counter()
        epochs = [draw(e) for e in range(args.epochs)]
        dt = (time.perf_counter() - t) / args.epochs
        st = [stats(b, lengths) for b in epochs]
        same = [len({frozenset(b) for b in epochs[e]} & {frozenset(b) for b in epochs[e + 1]}) / len(epochs[e]) for e in range(args.epochs - 1)]
        covered = all(sorted(i for b in ep for i in b) == list(range(len(lengths))) for ep in epochs)
        print(f"{name}: batches {st[0]['batches']}, {st[0]['mean_utts']:.1f} utt/batch, padding {100 * sum(s['padding'] for s in st) / len(st):.1f} %, "
              f"largest padded batch {max(s['max_padded_s'] for s in st):.0f} s, batches repeated next epoch {100 * sum(same) / len(same):.0f} %, "
              f"every utterance once per epoch: {covered}, {1000 * dt:.1f} ms per epoch")


if __name__ == "__main__":
    main()
