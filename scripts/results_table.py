#!/usr/bin/env python3
"""Print the AN4 results table (markdown) from recipe outputs.

    python scripts/results_table.py recipes/an4/exp              # every scored decode setting
    python scripts/results_table.py recipes/an4/exp --only beam10_ctc0.5_avg5

One row per (experiment folder with ``train_summary.json``, decode setting) that has scored decodes of both
dev and test (``decode_{dev,test}_<setting>/scoring/wer.json``; settings are the run.sh folder suffixes such as
``beam10`` (attention only, best checkpoint) or ``beam10_ctc0.5_avg5`` (joint CTC/attention, 5 averaged
checkpoints)): model, decoding, dev/test WER and CER, parameters, epochs, training wall time, machine, decode
real-time factor and the recipe command that reproduces the row.

A decode setting whose ``meta.json`` has ``ensemble`` (``asr-decode ... 'ensemble=[...]'``: several checkpoints
decoded together) gives an ensemble row, wherever its ``decode_{dev,test}_<setting>`` folders are below
``exp_root`` (an experiment folder, or one of its own such as ``exp/ensemble_x4_x8``): its model column names the
member experiment folders, parameters, epochs and training time are the members' (summed, joined by ``+``) and
its command is the two ``asr-decode`` + ``asr-score`` calls that rebuild it, run from ``recipes/an4`` as the
recipe commands are.

An experiment trained from another's weights (``--train_args "init_param=exp/<parent>/checkpoints/<x>.ckpt ..."``,
a warm restart) is described with its whole chain, as long as the parents' folders are below ``exp_root``: epochs
``212 + 200`` (parent first), the training times summed, and the command starts with each parent's training
(``--stage 4 --stop_stage 4``) joined by ``&&``.
"""

from __future__ import annotations

import argparse
import json
import re
from pathlib import Path

from asr.decoding.results import read_meta
from asr.decoding.search import DecodingOptions

#: The decoding defaults (run.sh names a decode folder _lp<x> only when its length penalty differs).
DEFAULTS = DecodingOptions()


def _wer(d: Path) -> dict | None:
    f = d / "scoring" / "wer.json"
    return json.loads(f.read_text()) if f.is_file() else None


def _f(r: dict, k: str) -> str:
    """A WER/CER of a ``wer.json`` with one decimal, ``-`` when absent."""
    return f"{r[k]:.1f}" if r.get(k) is not None else "-"


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


def _label(exp: Path) -> tuple[str, str]:
    """``(--experiment, --tag)`` of an experiment folder (tag ``""`` when the folder has the experiment's name)."""
    experiment = _experiment(exp)
    base = experiment.replace("/", "_")
    if not base.startswith(("an4_pblstm_", "an4_transformer_")):
        base = base.replace("an4_", "an4_pblstm_", 1)
    tag = exp.name[len(base):] if exp.name != base and exp.name.startswith(base) else ""
    return experiment, tag


def _run_sh(stages: str, experiment: str, options: str, tag: str, targs: str, summary: dict, decode: bool) -> str:
    """A run.sh command of one experiment (``stages``: ``--stage 4`` or ``--stage 4 --stop_stage 4``; ``options``:
    decoding options, may be empty), 1-thread (``OMP_NUM_THREADS=1``, and ``--decode_args threads=1`` when it
    decodes) where the training ran so: beside another training, one thread each."""
    cmd = f"recipes/an4/run.sh --an4_root $AN4_ROOT {stages} --experiment {experiment}{options}"
    cmd += f" --tag {tag}" if tag else ""
    cmd += f' --train_args "{targs}"' if targs else ""
    if "(1 torch threads)" in summary["machine"]:
        cmd = f"OMP_NUM_THREADS=1 {cmd}" + (" --decode_args threads=1" if decode else "")
    return cmd


def _parents(exp_root: Path, targs: str) -> list[tuple[Path, dict, str]]:
    """The chain of experiments whose weights a training started from (``init_param=exp/<parent>/checkpoints/...``),
    oldest first, as ``(folder, train_summary, train_args)``; it stops at a parent not below ``exp_root`` (or
    without ``train_summary.json``) and at a loop."""
    chain: list[tuple[Path, dict, str]] = []
    seen: set[str] = set()
    while (m := re.search(r"(?:^|\s)init_param=(\S+)", targs)) is not None:
        ckpt = Path(m.group(1))
        name = ckpt.parent.parent.name if ckpt.parent.name == "checkpoints" else ckpt.parent.name
        parent = exp_root / name
        if name in seen or not (parent / "train_summary.json").is_file():
            break
        seen.add(name)
        targs = _train_args(parent)
        chain.insert(0, (parent, json.loads((parent / "train_summary.json").read_text()), targs))
    return chain


def _decoding(setting: str, meta: dict) -> str:
    w = float(meta["ctc_weight"])
    how = "attention" if w == 0 else ("CTC greedy" if w == 1 and meta["beam_size"] == 1 else f"joint λ={w:g}")
    stems = list(dict.fromkeys(Path(c).stem for c in meta.get("ensemble", [meta["checkpoint"]])))
    ckpt = " + ".join(stems)
    lp = float(meta["length_penalty"])
    extra = ""
    if int(meta.get("att_window_back", -1)) >= 0:
        extra += f", window {meta['att_window_back']}:{meta['att_window_ahead']}"
    if meta.get("hard_attention"):
        extra += ", hard attention"
    return f"{how}, beam {meta['beam_size']}{'' if lp == DEFAULTS.length_penalty else f', lp {lp:g}'}{extra}, {ckpt}"


def _ensemble_row(exp_root: Path, folder: Path, setting: str, meta: dict, dev: dict, test: dict) -> str:
    """The row of an ensemble decode (``meta["ensemble"]``: the member checkpoints, first = ``ckpt``) of
    ``folder/decode_{dev,test}_<setting>``; members are the experiment folders of their checkpoints
    (``exp/<name>/checkpoints/<x>.ckpt``), described by their ``train_summary.json`` under ``exp_root``."""
    ckpts = [str(c) for c in meta["ensemble"]]
    names = [Path(c).parent.parent.name if Path(c).parent.name == "checkpoints" else Path(c).stem for c in ckpts]
    labels, summaries = [], []
    for name in names:
        exp = exp_root / name
        experiment, tag = _label(exp)
        labels.append(experiment + (f" --tag {tag}" if tag else ""))
        summaries.append(json.loads((exp / "train_summary.json").read_text()) if (exp / "train_summary.json").is_file() else {})
    known = all(summaries)
    params = f"{sum(x['n_params'] for x in summaries) / 1e6:.2f} M" if known else "-"
    epochs = " + ".join(str(x["epochs"]) for x in summaries) if known else "-"
    wall = f"{sum(x['train_wall_s'] for x in summaries) / 60:.1f} min" if known else "-"
    machine = " / ".join(dict.fromkeys(x["machine"] for x in summaries)) if known else "-"
    omp = "OMP_NUM_THREADS=1 " if meta.get("threads") == 1 else ""
    opts = f"beam_size={meta['beam_size']} ctc_weight={meta['ctc_weight']} length_penalty={meta['length_penalty']}"
    if meta["max_len_ratio"] != DEFAULTS.max_len_ratio:
        opts += f" max_len_ratio={meta['max_len_ratio']}"
    if meta.get("threads") == 1:
        opts += " threads=1"
    calls = []
    for split, data in (("dev", "train_dev"), ("test", "test")):
        out = f"exp/{folder.name}/decode_{split}_{setting}"
        calls.append(
            f"{omp}asr-decode ckpt={ckpts[0]} 'ensemble=[{','.join(ckpts[1:])}]' data_dir=data/{data} dump_dir=dump/{data} "
            f"out_dir={out} {opts} && asr-score decode_dir={out}"
        )
    return (
        f"| ensemble of {' + '.join(names)} | {' + '.join(labels)} | {_decoding(setting, meta)} | {_f(dev, 'wer')} | {_f(dev, 'cer')} | "
        f"{_f(test, 'wer')} | {_f(test, 'cer')} | {params} | {epochs} | {wall} | {machine} | {meta['rtf']:.3f} | `{' && '.join(calls)}` |"
    )


def rows(exp_root: Path, only: str | None = None) -> list[str]:
    out = []
    for exp in sorted(p for p in exp_root.iterdir() if p.is_dir()):
        if exp.name.endswith("_smoke"):
            continue
        trained = (exp / "train_summary.json").is_file()
        s = json.loads((exp / "train_summary.json").read_text()) if trained else {}
        if trained:  # what every row of this experiment shares: its label, training and the chain it continues
            experiment, tag = _label(exp)
            label = experiment + (f" --tag {tag}" if tag else "")
            targs = _train_args(exp)
            chain = _parents(exp_root, targs)
            chain_cmds = [_run_sh("--stage 4 --stop_stage 4", _label(p)[0], "", _label(p)[1], a, ps, decode=False) for p, ps, a in chain]
            epochs = " + ".join([str(c[1]["epochs"]) for c in chain] + [str(s["epochs"])])
            wall_s = sum(c[1]["train_wall_s"] for c in chain) + s["train_wall_s"]
            machine = " / ".join(dict.fromkeys([c[1]["machine"] for c in chain] + [s["machine"]]))
        for test_dir in sorted(exp.glob("decode_test_*")):
            setting = test_dir.name.removeprefix("decode_test_")
            if only and setting != only:
                continue
            dev, test = _wer(exp / f"decode_dev_{setting}"), _wer(test_dir)
            if not (dev and test):
                continue
            meta = read_meta(test_dir)
            if meta.get("ensemble"):
                out.append(_ensemble_row(exp_root, exp, setting, meta, dev, test))
                continue
            if not trained:
                continue
            model = f"{meta.get('encoder', 'pblstm')} + {meta.get('decoder', 'rnn')}"
            if meta.get("decoder", "rnn") == "rnn":
                model += f" ({meta['attention']})"
            m = re.match(r"beam(\d+)(?:_ctc([\d.]+))?(?:_lp([\d.]+))?(?:_win(\d+)-(\d+))?(_hard)?(?:_avg(\d+))?$", setting)
            beam, ctc, lp, win, hard, avg = (
                (m.group(1), m.group(2) or "0", m.group(3), m.group(4) and f"{m.group(4)}:{m.group(5)}", m.group(6), m.group(7) or "0")
                if m
                else (meta["beam_size"], meta.get("ctc_weight", 0), None, None, None, 0)
            )
            opts = f" --beam_size {beam} --ctc_weight {ctc} --average {avg}"
            if lp is not None:
                opts += f" --length_penalty {lp}"
            if win:
                opts += f" --att_window {win}"
            if hard:
                opts += " --hard_attention true"
            cmd = " && ".join(chain_cmds + [_run_sh("--stage 4", experiment, opts, tag, targs, s, decode=True)])
            out.append(
                f"| {model} | {label} | {_decoding(setting, meta)} | {_f(dev, 'wer')} | {_f(dev, 'cer')} | "
                f"{_f(test, 'wer')} | {_f(test, 'cer')} | {s['n_params'] / 1e6:.2f} M | {epochs} | "
                f"{wall_s / 60:.1f} min | {machine} | {meta['rtf']:.3f} | `{cmd}` |"
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
