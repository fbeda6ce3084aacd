"""asr-average: average the weights of several checkpoints into one model file.

    asr-average exp_dir=exp/an4_transformer_ctc            # the epoch checkpoints kept by training (N best)
    asr-average exp_dir=exp/an4_transformer_ctc n=5 out=exp/an4_transformer_ctc/checkpoints/avg5.ckpt
    asr-average 'ckpts=[a.ckpt,b.ckpt]' out=avg.ckpt

Checkpoint averaging (Vaswani et al. 2017, section 6.1; ESPnet's ``average_checkpoints``): the element-wise mean
of the floating-point model weights of N checkpoints of one run, usually the N best epochs by dev accuracy or the last
N. Training keeps them as ``checkpoints/epochNNN.ckpt`` (``keep_checkpoints``/``keep_checkpoints_by`` in
conf/train.yaml: best by dev accuracy, dev loss or dev WER, or the last N); which N were kept is the training's choice, so this
tool averages what it finds (or the N best by the metric stored in each checkpoint). The output is a normal
checkpoint (the ``asr`` entry of the first input plus the averaged ``state_dict``) that ``asr-decode`` loads.
"""

from __future__ import annotations

import json
import logging
import sys
from pathlib import Path
from typing import Any, Sequence

import torch
from omegaconf import OmegaConf

from asr.models.checkpoint import ASR_KEY, read_checkpoint
from asr.utils.io import atomic_torch_save, atomic_write_text

log = logging.getLogger("asr.average")


def average_state_dicts(state_dicts: Sequence[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    """Element-wise mean of floating-point tensors (accumulated in float64, cast back); integer tensors
    (counters) are taken from the last input.

    Raises
    ------
    ValueError
        No inputs, or the inputs differ in keys or shapes (the message names the key).
    """
    if not state_dicts:
        raise ValueError("nothing to average")
    keys = list(state_dicts[0])
    for i, sd in enumerate(state_dicts[1:], 1):
        if list(sd) != keys:
            raise ValueError(f"checkpoint {i} has different parameters: {sorted(set(sd) ^ set(keys))[:5]}")
    out = {}
    for k in keys:
        ts = [sd[k] for sd in state_dicts]
        if any(t.shape != ts[0].shape for t in ts):
            raise ValueError(f"parameter {k} has different shapes: {[tuple(t.shape) for t in ts]}")
        if ts[0].is_floating_point():
            out[k] = (sum(t.double() for t in ts) / len(ts)).to(ts[0].dtype)
        else:
            out[k] = ts[-1].clone()
    return out


def find_epoch_checkpoints(exp_dir: str | Path) -> list[Path]:
    """The ``checkpoints/epoch*.ckpt`` files of an experiment, sorted by name (= epoch)."""
    return sorted(Path(exp_dir, "checkpoints").glob("epoch*.ckpt"))


def average_checkpoints(paths: Sequence[str | Path], out: str | Path) -> dict[str, Any]:
    """Average ``paths`` into ``out`` (written atomically); returns a summary (inputs, their epochs and monitored
    scores).

    Raises
    ------
    ValueError
        Fewer than one input, an unreadable/unsafe/non-asr checkpoint, or mismatched models: a different model
        config, tokenizer (``tokenizer_proto``), ``feat_dim`` or ``frame_shift_s`` than the first input.
    """
    paths = [Path(p) for p in paths]
    if not paths:
        raise ValueError("no checkpoints to average")
    ckpts = [read_checkpoint(p) for p in paths]
    cfg0 = ckpts[0][ASR_KEY].get("model_cfg")
    for p, c in zip(paths[1:], ckpts[1:]):
        if c[ASR_KEY].get("model_cfg") != cfg0:
            raise ValueError(f"{p} has a different model config than {paths[0]}: cannot average")
        for key, what in (("tokenizer_proto", "tokenizer"), ("feat_dim", "feature dimension"), ("frame_shift_s", "frame shift")):
            if c["asr"].get(key) != ckpts[0]["asr"].get(key):
                raise ValueError(f"{p} has a different {what} ({key}) than {paths[0]}: weights trained on other tokens or features cannot be averaged")
    avg = average_state_dicts([c["state_dict"] for c in ckpts])
    result = {"state_dict": avg, ASR_KEY: ckpts[0][ASR_KEY], "averaged_from": [str(p) for p in paths], "epoch": max(int(c.get("epoch", 0)) for c in ckpts)}
    atomic_torch_save(result, out)
    summary = {"out": str(out), "inputs": [str(p) for p in paths], "epochs": [int(c.get("epoch", -1)) for c in ckpts]}
    atomic_write_text(json.dumps(summary, indent=2) + "\n", Path(str(out) + ".json"))
    log.info("averaged %d checkpoints (epochs %s) -> %s", len(paths), summary["epochs"], out)
    return summary


def main(argv: Sequence[str] | None = None) -> None:
    """Console script ``asr-average``: ``exp_dir=... [n=0] [out=...]`` or ``ckpts=[...] out=...``.

    ``n > 0`` keeps the ``n`` latest of the epoch checkpoints found (by epoch number). Exits with a message
    (``SystemExit``) for an ``n`` that is not an integer >= 0 or exceeds the checkpoints found.
    """
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    cfg = OmegaConf.merge(OmegaConf.create({"exp_dir": None, "ckpts": [], "n": 0, "out": None}), OmegaConf.from_dotlist(list(sys.argv[1:] if argv is None else argv)))
    if cfg.ckpts:
        paths = [Path(p) for p in cfg.ckpts]
    elif cfg.exp_dir:
        paths = find_epoch_checkpoints(cfg.exp_dir)
        if not paths:
            raise SystemExit(f"asr-average: no checkpoints/epoch*.ckpt in {cfg.exp_dir} (train with keep_checkpoints>0)")
    else:
        raise SystemExit("asr-average needs exp_dir=<experiment> or ckpts=[...]")
    n = cfg.n
    if isinstance(n, bool) or not isinstance(n, int) or n < 0:
        raise SystemExit(f"asr-average: n must be an integer >= 0 (0: all), got {n!r}")
    if n > len(paths):
        # a short or time-limited run (a smoke test, trainer.max_time) kept fewer: average those, and say so; the
        # epochs averaged are in <out>.json and in the line printed below
        logging.warning("asr-average: n=%d but only %d checkpoint(s) found: averaging those %d", n, len(paths), len(paths))
    if n:
        paths = paths[-n:]
    out = cfg.out or str(Path(cfg.exp_dir or paths[0].parent.parent, "checkpoints", f"avg{len(paths)}.ckpt"))
    summary = average_checkpoints(paths, out)
    print(f"averaged {len(paths)} checkpoints (epochs {summary['epochs']}) -> {out}")


if __name__ == "__main__":
    main()
