#!/usr/bin/env python3
"""Print the AN4 results table (markdown) from recipe outputs.

    python scripts/results_table.py recipes/an4/exp              # every scored decode setting
    python scripts/results_table.py recipes/an4/exp --only beam10_ctc0.5_avg5

One row per (experiment folder with ``train_summary.json``, decode setting) that has scored decodes of both
dev and test (``decode_{dev,test}_<setting>/scoring/wer.json``; settings are the run.sh folder suffixes such as
``beam10`` (attention only, best checkpoint) or ``beam10_ctc0.5_avg5`` (joint CTC/attention, 5 averaged
checkpoints)): model, decoding, dev/test WER and CER, parameters, epochs, training wall time, machine, decode
real-time factor and the recipe command that reproduces the row.
"""

from __future__ import annotations

import argparse
import json
import re
from pathlib import Path


def _wer(d: Path) -> dict | None:
    f = d / "scoring" / "wer.json"
    return json.loads(f.read_text()) if f.is_file() else None


def _train_args(exp: Path) -> str:
    """The ``--train_args`` the recipe was given: the last Hydra overrides minus those run.sh adds itself."""
    runs = sorted((exp / "hydra").glob("*/.hydra/overrides.yaml"))
    if not runs:
        return ""
    own = ("experiment=", "exp_dir=", "tokenizer.kind=", "tokenizer.vocab_size=", "ckpt_path=")
    lines = [ln[2:].strip() for ln in runs[-1].read_text().splitlines() if ln.startswith("- ")]
    return " ".join(x for x in lines if not x.startswith(own))


def _experiment(exp: Path) -> str:
    """The ``--experiment`` of a folder: the ``experiment=`` override of its last training run."""
    for run in sorted((exp / "hydra").glob("*/.hydra/overrides.yaml"), reverse=True):
        m = re.search(r"^- experiment=(\S+)", run.read_text(), re.M)
        if m:
            return m.group(1)
    return "an4/" + exp.name.removeprefix("an4_pblstm_")


def _decoding(setting: str, meta: dict) -> str:
    w = float(meta.get("ctc_weight", 0.0))
    how = "attention" if w == 0 else ("CTC greedy" if w == 1 and meta["beam_size"] == 1 else f"joint λ={w:g}")
    ckpt = Path(meta["checkpoint"]).stem
    lp = float(meta.get("length_penalty", 0.5))
    return f"{how}, beam {meta['beam_size']}{'' if lp == 0.5 else f', lp {lp:g}'}, {ckpt}"


def rows(exp_root: Path, only: str | None = None) -> list[str]:
    out = []
    for exp in sorted(p for p in exp_root.iterdir() if (p / "train_summary.json").is_file()):
        if exp.name.endswith("_smoke"):
            continue
        s = json.loads((exp / "train_summary.json").read_text())
        for test_dir in sorted(exp.glob("decode_test_*")):
            setting = test_dir.name.removeprefix("decode_test_")
            if only and setting != only:
                continue
            dev, test = _wer(exp / f"decode_dev_{setting}"), _wer(test_dir)
            if not (dev and test):
                continue
            meta = json.loads((test_dir / "meta.json").read_text())
            model = f"{meta.get('encoder', 'pblstm')} + {meta.get('decoder', 'rnn')}"
            if meta.get("decoder", "rnn") == "rnn":
                model += f" ({meta['attention']})"
            experiment = _experiment(exp)
            f = lambda r, k: f"{r[k]:.1f}" if r.get(k) is not None else "-"  # noqa: E731
            targs = _train_args(exp)
            m = re.match(r"beam(\d+)(?:_ctc([\d.]+))?(?:_lp([\d.]+))?(?:_avg(\d+))?$", setting)
            beam, ctc, lp, avg = (
                (m.group(1), m.group(2) or "0", m.group(3), m.group(4) or "0")
                if m
                else (meta["beam_size"], meta.get("ctc_weight", 0), None, 0)
            )
            cmd = f"recipes/an4/run.sh --an4_root $AN4_ROOT --stage 4 --experiment {experiment} --beam_size {beam} --ctc_weight {ctc} --average {avg}"
            if lp is not None:
                cmd += f" --length_penalty {lp}"
            base = experiment.replace("/", "_")
            if not base.startswith(("an4_pblstm_", "an4_transformer_")):
                base = base.replace("an4_", "an4_pblstm_", 1)
            label = experiment
            if exp.name != base and exp.name.startswith(base):
                cmd += f" --tag {exp.name[len(base):]}"
                label += f" --tag {exp.name[len(base):]}"
            if targs:
                cmd += f' --train_args "{targs}"'
            if "(1 torch threads)" in s["machine"]:  # ran beside another training, one thread each
                cmd = f"OMP_NUM_THREADS=1 {cmd} --decode_args threads=1"
            out.append(
                f"| {model} | {label} | {_decoding(setting, meta)} | {f(dev, 'wer')} | {f(dev, 'cer')} | "
                f"{f(test, 'wer')} | {f(test, 'cer')} | {s['n_params'] / 1e6:.2f} M | {s['epochs']} | "
                f"{s['train_wall_s'] / 60:.1f} min | {s['machine']} | {meta['rtf']:.3f} | `{cmd}` |"
            )
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("exp_root", type=Path)
    ap.add_argument("--only", help="one decode setting, e.g. beam10_ctc0.5_avg5")
    a = ap.parse_args()
    print("| model | experiment | decoding | dev WER % | dev CER % | test WER % | test CER % | params | epochs | train wall time | machine | test decode RTF | command |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    for r in rows(a.exp_root, a.only):
        print(r)


if __name__ == "__main__":
    main()
