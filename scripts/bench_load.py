#!/usr/bin/env python3
"""Load time of a model directory with and without verification, measured in one process (speed goals are
measured here, never by timed tests):

    python scripts/bench_load.py --model models/an4_pblstm_x4 --repeats 10

Prints the median seconds of ``--repeats`` interleaved loads with ``verify=True`` and ``verify=False``
(:func:`asr.models.pretrained.load_model`) and their ratio (issue 33: at most 1.2x)."""

from __future__ import annotations

import argparse
import statistics
import time

import torch


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="models/an4_pblstm_x4")
    ap.add_argument("--repeats", type=int, default=10)
    ap.add_argument("--threads", type=int, default=1)
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    from asr.models.pretrained import load_model

    load_model(a.model, verify=True)  # warm-up: imports, file cache
    times: dict[bool, list[float]] = {True: [], False: []}
    for _ in range(a.repeats):
        for verify in (True, False):
            t0 = time.perf_counter()
            load_model(a.model, verify=verify)
            times[verify].append(time.perf_counter() - t0)
    on, off = statistics.median(times[True]), statistics.median(times[False])
    print(f"{a.model}: verify=True {1000 * on:.1f} ms, verify=False {1000 * off:.1f} ms (median of {a.repeats}), ratio {on / off:.3f}")


if __name__ == "__main__":
    main()
