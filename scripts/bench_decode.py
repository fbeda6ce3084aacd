#!/usr/bin/env python3
"""Decoding speed of each search against attention greedy search, measured in one process.

    python scripts/bench_decode.py --ckpt recipes/an4/exp/an4_pblstm_ctc/checkpoints/avg5.ckpt \
        --feats recipes/an4/dump/test/feats.pt --utts 64 --batch 16 --threads 1

Times greedy, attention beam search, joint CTC/attention beam search and CTC greedy over the same
utterances (length-sorted batches of ``--batch``), ``--repeats`` interleaved rounds, and prints the median
seconds per round, the real-time factor (decode time / audio time, 10 ms frames) and the ratio to greedy.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from asr.decoding.search import DecodingOptions, decode_batch
from asr.models.checkpoint import load_checkpoint


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--ckpt", required=True)
    ap.add_argument("--feats", required=True, help="feats.pt of a dump dir (utterance id -> (T, 80) fbank)")
    ap.add_argument("--utts", type=int, default=64)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--beam", type=int, default=10)
    ap.add_argument("--ctc_weight", type=float, default=0.5)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=1)
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    model, _, _ = load_checkpoint(a.ckpt)
    feats = torch.load(a.feats, weights_only=True)
    items = sorted(feats.values(), key=lambda x: x.shape[0])[: a.utts]
    batches = []
    for i in range(0, len(items), a.batch):
        chunk = items[i : i + a.batch]
        batches.append((torch.nn.utils.rnn.pad_sequence(chunk, batch_first=True), torch.tensor([x.shape[0] for x in chunk])))
    audio_s = sum(x.shape[0] for x in items) * 0.01
    searches = {"greedy": DecodingOptions(beam_size=1, length_penalty=0.5), f"beam{a.beam}": DecodingOptions(beam_size=a.beam, length_penalty=0.5)}
    if model.ctc is not None:
        searches[f"beam{a.beam} joint ctc{a.ctc_weight:g}"] = DecodingOptions(beam_size=a.beam, length_penalty=0.5, ctc_weight=a.ctc_weight)
        searches["ctc greedy"] = DecodingOptions(beam_size=1, ctc_weight=1.0)
    times: dict[str, list[float]] = {k: [] for k in searches}
    for _ in range(a.repeats):
        for name, opts in searches.items():
            t0 = time.perf_counter()
            for xs, lens in batches:
                decode_batch(model, xs, lens, opts)
            times[name].append(time.perf_counter() - t0)
    base = statistics.median(times["greedy"])
    print(f"{len(items)} utterances, {audio_s:.1f} s audio, batch {a.batch}, {a.threads} thread(s), {a.repeats} rounds")
    print(f"{'search':<26} {'median s':>9} {'RTF':>8} {'x greedy':>9}")
    for name, ts in times.items():
        m = statistics.median(ts)
        print(f"{name:<26} {m:9.2f} {m / audio_s:8.4f} {m / base:9.2f}")


if __name__ == "__main__":
    main()
