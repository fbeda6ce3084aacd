#!/usr/bin/env python3
"""Print the AN4 results table (markdown) from recipe outputs.

    python scripts/results_table.py recipes/an4/exp --beam 10

One row per experiment folder that has ``train_summary.json`` and scored decodes
(``decode_{dev,test}_beam<K>/scoring/wer.json``): dev/test WER and CER, parameters, epochs, training wall
time, machine, beam size and the recipe command that reproduces it.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def _wer(d: Path) -> dict | None:
    f = d / "scoring" / "wer.json"
    return json.loads(f.read_text()) if f.is_file() else None


def _train_args(exp: Path) -> str:
    """The ``--train_args`` the recipe was given: the last Hydra overrides minus those run.sh adds itself."""
    runs = sorted((exp / "hydra").glob("*/.hydra/overrides.yaml"))
    if not runs:
        return ""
    own = ("experiment=", "exp_dir=", "tokenizer.kind=", "tokenizer.vocab_size=")
    lines = [ln[2:].strip() for ln in runs[-1].read_text().splitlines() if ln.startswith("- ")]
    return " ".join(x for x in lines if not x.startswith(own))


def rows(exp_root: Path, beam: int) -> list[str]:
    out = []
    for exp in sorted(p for p in exp_root.iterdir() if (p / "train_summary.json").is_file()):
        if exp.name.endswith("_smoke"):
            continue
        s = json.loads((exp / "train_summary.json").read_text())
        dev, test = _wer(exp / f"decode_dev_beam{beam}"), _wer(exp / f"decode_test_beam{beam}")
        if not (dev and test):
            continue
        meta = json.loads((exp / f"decode_test_beam{beam}" / "meta.json").read_text())
        scorer = meta["attention"]
        experiment = exp.name.removeprefix("an4_pblstm_")
        f = lambda r, k: f"{r[k]:.1f}" if r.get(k) is not None else "-"  # noqa: E731
        targs = _train_args(exp)
        cmd = f"recipes/an4/run.sh --an4_root $AN4_ROOT --stage 4 --experiment an4/{experiment} --beam_size {beam}"
        if targs:
            cmd += f' --train_args "{targs}"'
        if "(1 torch threads)" in s["machine"]:  # ran beside another training, one thread each
            cmd = f"OMP_NUM_THREADS=1 {cmd} --decode_args threads=1"
        cmd = f"`{cmd}`"
        out.append(
            f"| {scorer} | {experiment} | {f(dev, 'wer')} | {f(dev, 'cer')} | {f(test, 'wer')} | {f(test, 'cer')} | "
            f"{s['n_params'] / 1e6:.2f} M | {s['epochs']} | {s['train_wall_s'] / 60:.1f} min | {s['machine']} | "
            f"{beam} | {meta['rtf']:.3f} | {cmd} |"
        )
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("exp_root", type=Path)
    ap.add_argument("--beam", type=int, default=10)
    a = ap.parse_args()
    print("| scorer | experiment | dev WER % | dev CER % | test WER % | test CER % | params | epochs | train wall time | machine | beam | test decode RTF | command |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    for r in rows(a.exp_root, a.beam):
        print(r)


if __name__ == "__main__":
    main()
