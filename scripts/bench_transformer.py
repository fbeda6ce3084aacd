"""Forward + backward time of one realistic AN4 training batch for Transformer sizes vs the default pBLSTM model.

    OMP_NUM_THREADS=1 python scripts/bench_transformer.py --threads 1 --repeats 5

Batch: 8 utterances x 300 frames x 80 fbank (3 s each, AN4's typical length), 15 target tokens, BPE-40-sized
vocabulary, ctc_weight 0.3, training mode (dropout on). The reference is the default model of
``conf/train.yaml`` (``conf/model/encoder/pblstm.yaml`` + ``conf/model/decoder/rnn.yaml`` +
``conf/model/attention/location_aware.yaml``) built with ``build_model`` in the same process. Models are
timed in interleaved rounds (median over rounds) so that load from other processes hits them alike.
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import torch
import yaml

from asr.models.asr_model import build_model

CONF = Path(__file__).resolve().parents[1] / "conf" / "model"
VOCAB, SOS, EOS, PAD = 44, 2, 3, 0


def _yaml(group: str, name: str) -> dict:
    return yaml.safe_load((CONF / group / f"{name}.yaml").read_text())


def candidates() -> dict[str, dict]:
    """Model configs by label: the pBLSTM baseline and Transformer sizes (encoder layers/d/ff, decoder layers)."""
    base = {"attention": _yaml("attention", "location_aware"), "label_smoothing": 0.1, "ctc_weight": 0.3}
    out = {"pblstm (default)": {**base, "encoder": _yaml("encoder", "pblstm"), "decoder": _yaml("decoder", "rnn")}}

    def tf(el, d, ff, dl, heads=4, ch=None):
        enc = {"type": "transformer", "d_model": d, "num_heads": heads, "ff_dim": ff, "num_layers": el, "dropout": 0.1}
        if ch is not None:
            enc["conv_channels"] = ch
        dec = {"type": "transformer", "d_model": d, "num_heads": heads, "ff_dim": ff, "num_layers": dl, "dropout": 0.1}
        label = f"tf e{el} d{d} ff{ff} dec{dl}" + (f" conv{ch}" if ch is not None else "")
        return label, {**base, "encoder": enc, "decoder": dec}

    for args in [(6, 256, 1024, 3), (6, 256, 1024, 3, 4, 64), (9, 256, 1024, 3, 4, 64), (12, 256, 1024, 6, 4, 64), (12, 144, 576, 6, 4), (12, 192, 768, 3, 4, 64)]:
        label, cfg = tf(*args)
        out[label] = cfg
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--repeats", type=int, default=5, help="timed rounds (after one warm-up round)")
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--frames", type=int, default=300)
    ap.add_argument("--tokens", type=int, default=15)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    xs = torch.randn(args.batch, args.frames, 80)
    xs_lens = torch.full((args.batch,), args.frames, dtype=torch.long)
    xs_lens[1::2] -= args.frames // 10  # some padding, as in a length-bucketed batch
    ys = torch.randint(4, VOCAB, (args.batch, args.tokens))
    ys_lens = torch.full((args.batch,), args.tokens, dtype=torch.long)
    models = {k: build_model(cfg, VOCAB, SOS, EOS, PAD).train() for k, cfg in candidates().items()}
    opts = {k: torch.optim.Adam(m.parameters(), 1e-4) for k, m in models.items()}
    times: dict[str, list[float]] = {k: [] for k in models}
    for r in range(args.repeats + 1):
        for k, m in models.items():
            t0 = time.perf_counter()
            opts[k].zero_grad()
            m(xs, xs_lens, ys, ys_lens)["loss"].backward()
            dt = time.perf_counter() - t0
            if r:  # round 0 warms up
                times[k].append(dt)
    base = statistics.median(times["pblstm (default)"])
    print(f"threads={args.threads} batch={args.batch}x{args.frames}x80 tokens={args.tokens} rounds={args.repeats}")
    print(f"{'model':34s} {'params':>8s} {'ms/batch':>9s} {'ratio':>6s}")
    for k, m in models.items():
        med = statistics.median(times[k])
        n = sum(p.numel() for p in m.parameters()) / 1e6
        print(f"{k:34s} {n:7.2f}M {1000 * med:9.0f} {med / base:6.2f}")


if __name__ == "__main__":
    main()
