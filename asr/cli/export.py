"""asr-export: a training checkpoint -> a portable model directory with a model card.

    asr-export ckpt=recipes/an4/exp/an4_pblstm_location_aware_x4_noaug/checkpoints/avg5.ckpt out_dir=models/an4_pblstm_x4
    asr-export ckpt=... out_dir=... dtype=float16 'decode_dirs=[exp/x/decode_test_beam10_ctc0.3_avg5]' license=apache-2.0

Writes the files of :mod:`asr.models.pretrained` (``config.yaml``, ``model.safetensors``, ``cmvn.safetensors``,
``tokenizer.model``, and ``checksums.sha256``: the SHA-256 sums of the last three, checked by every load and by
``sha256sum -c checksums.sha256``) and ``README.md``, a model card: architecture, parameters, training data and run (from the
experiment's ``config.yaml`` and ``train_summary.json`` beside ``checkpoints/`` when present), the results rows the
checkpoint was evaluated with (the ``decode_*`` folders of its experiment whose ``meta.json`` names this checkpoint,
or ``decode_dirs``; WER/CER from their ``scoring/wer.json``) and the licence. The decoding options recorded in
``config.yaml`` (what :class:`asr.inference.Speech2Text` uses by default) are those of the test decode reported,
else the toolkit's defaults.

Options: ``dtype`` (``float32``, the default, is bit-identical to the checkpoint; ``float16`` halves the size),
``name`` (card title, default the output folder's name), ``license`` (default ``apache-2.0``, the toolkit's; the
training data's own terms are noted separately), ``data_license`` (a note on the training data's licence), ``note`` (text added under the results, e.g. the WER
that ``scripts/transcribe_wer.py`` measured with the exported directory), ``overwrite`` (see below).

The model directory is written whole or not at all: every file goes into a temporary sibling folder
(``.<name>.export-*``), which is then renamed onto ``out_dir``; an export that fails half-way (a full disk, a bad
checkpoint) leaves an existing ``out_dir`` exactly as it was and removes the temporary folder, so new weights can
never sit beside an old tokenizer. The folder records what ``asr-export`` wrote (``.asr-owned.json``,
:mod:`asr.utils.owned`). An existing ``out_dir`` is replaced only when it holds nothing but an earlier export's
files; one that also holds other files (a README.md of the user's, anything not in its manifest, or no manifest
at all, e.g. a model directory exported before manifests) is refused with one line
``asr-export: <out_dir>: <reason>`` (exit status 2) unless ``overwrite=true``. With ``overwrite=true`` the new
directory is still swapped in whole, and the files ``asr-export`` did not write are moved into it unchanged, except
those with the name of an exported file (``README.md``, ``config.yaml``, ...), which are replaced: the choice is
to keep a user's other files rather than drop them with the old directory.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import re
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Any, Sequence

import yaml
from omegaconf import OmegaConf

from asr.decoding.results import read_meta
from asr.decoding.search import DecodingOptions, resolve_options
from asr.models.checkpoint import fbank_options, load_checkpoint
from asr.models.pretrained import TOKENIZER, WEIGHTS, save_model_dir
from asr.utils.io import file_sha256
from asr.utils.owned import MANIFEST, OutputDirError, read_manifest, record_owned

log = logging.getLogger("asr.export")

#: The tool name in a model directory's ownership manifest (:mod:`asr.utils.owned`).
EXPORT_TOOL = "asr-export"

__all__ = ["EXPORT_TOOL", "export", "find_decode_dirs", "model_card", "portable_path", "main"]

AN4_NOTE = (
    "Trained on CMU AN4 (alphanumeric census utterances, 16 kHz), Copyright (c) 1991-2005 Carnegie Mellon University, "
    "free for any purpose under the CMU licence: redistributions must keep its copyright notice and conditions "
    "(see `tests/data/an4/LICENSE` in the asr repository)."
)


def find_decode_dirs(ckpt: str | Path) -> list[Path]:
    """The single-model decode folders (``<exp>/decode_*`` with ``meta.json``) of the experiment holding
    ``<exp>/checkpoints/<ckpt>`` whose ``meta.json`` names this checkpoint (compared by its last three path parts,
    since decodes record the path they were given), sorted by name."""
    ckpt = Path(ckpt).resolve()
    exp = ckpt.parent.parent
    found = []
    for d in sorted(exp.glob("decode_*")):
        m = d / "meta.json"
        if not m.is_file():
            continue
        meta = json.loads(m.read_text(encoding="utf-8"))
        if meta.get("ensemble") or not meta.get("checkpoint"):
            continue
        if Path(meta["checkpoint"]).parts[-3:] == ckpt.parts[-3:]:
            found.append(d)
    return found


def _split_name(decode_dir: str) -> str:
    """The data set a decode folder holds: ``decode_<set>_beam...`` (the recipe's naming) -> ``<set>``, with
    ``train_dev`` shown as ``dev``; other names: ``test`` / ``dev`` when they contain it, else the name itself."""
    m = re.match(r"^decode_(.+?)_(beam|greedy)", decode_dir)
    if m:
        return {"train_dev": "dev"}.get(m.group(1), m.group(1))
    return "test" if "test" in decode_dir else ("dev" if "dev" in decode_dir else decode_dir)


def _results_rows(decode_dirs: Sequence[Path]) -> list[dict[str, Any]]:
    """One row per decode folder: WER/CER from ``scoring/wer.json``; a folder whose references are all empty (a set
    of silence or noise clips: WER undefined) gives the count of non-empty hypotheses instead (``nonempty``)."""
    rows = []
    for d in decode_dirs:
        wer_file = d / "scoring" / "wer.json"
        meta = read_meta(d)
        row = {"split": _split_name(d.name), "dir": d.name, "options": {f.name: meta[f.name] for f in dataclasses.fields(DecodingOptions)}}
        if wer_file.is_file():
            wer = json.loads(wer_file.read_text(encoding="utf-8"))
            rows.append({**row, "wer": wer.get("wer"), "cer": wer.get("cer"), "n_utts": wer.get("n_utts")})
            continue
        res = [json.loads(x) for x in (d / "results.jsonl").read_text(encoding="utf-8").splitlines() if x.strip()] if (d / "results.jsonl").is_file() else []
        if res and not any(str(r.get("ref", "")).strip() for r in res):
            rows.append({**row, "wer": None, "cer": None, "n_utts": len(res), "nonempty": sum(1 for r in res if str(r.get("hyp", "")).strip())})
            continue
        log.warning("%s has no scoring/wer.json (run asr-score): left out of the model card", d)
    return rows


def _usage_path(out_dir: str | Path) -> str:
    """How the card's usage lines name the model directory: as given when relative, relative to the working
    directory when under it, else the folder name (never a machine's absolute path)."""
    p = Path(out_dir)
    if not p.is_absolute():
        return p.as_posix()
    try:
        return p.relative_to(Path.cwd()).as_posix()
    except ValueError:
        return p.name


def portable_path(path: str | Path) -> str:
    """A checkpoint path as a model card and ``config.yaml`` record it, without a machine's absolute path: from the
    last ``exp`` component on (``exp/<run>/checkpoints/avg5.ckpt``, the recipe's layout), a relative path as given,
    else the file name alone."""
    p = Path(path)
    if "exp" in p.parts:
        i = len(p.parts) - 1 - p.parts[::-1].index("exp")
        return "/".join(p.parts[i:])
    return p.as_posix() if not p.is_absolute() else p.name


def model_card(name: str, config: dict[str, Any], rows: list[dict[str, Any]], train: dict[str, Any], license_id: str, data_license: str, weights_mb: float, note: str = "", where: str | None = None) -> str:
    """The ``README.md`` text of a model directory (Hugging Face model-card layout: YAML front matter, then
    Markdown)."""
    m = config["model"]
    enc, dec = m["encoder"], m["decoder"]
    sub = 1
    for r in enc.get("subsample", []) or []:
        sub *= int(r)
    fb = config["features"]
    arch = f"{enc['type']} encoder ({enc.get('num_layers', '?')} layers x {enc.get('hidden_size', '?')}"
    arch += f" per direction, x{sub} subsampling)" if enc["type"] == "pblstm" else ")"
    arch += f", {dec['type']} decoder"
    if dec["type"] == "rnn":
        arch += f" with {m['attention']['type']} attention"
    arch += f", CTC branch (weight {m['ctc_weight']})" if float(m.get("ctc_weight", 0)) > 0 else ", no CTC branch"
    front = {"license": license_id, "library_name": "asr", "tags": ["automatic-speech-recognition", "attention", "las"], "language": ["en"]}
    if train.get("data"):
        front["datasets"] = [train["data"]]
    lines = ["---", yaml.safe_dump(front, sort_keys=False).strip(), "---", "", f"# {name}", ""]
    lines += [f"An attention encoder-decoder speech recogniser of the `asr` toolkit: {arch}.", ""]
    lines += ["| | |", "| --- | --- |",
              f"| parameters | {config['weights']['n_params'] / 1e6:.2f} M |",
              f"| weights | `{WEIGHTS}`, {config['weights']['dtype']}, {weights_mb:.1f} MB |",
              f"| features | {fb['num_mel_bins']} log-mel fbank, {fb['frame_length_ms']:g} ms window, {fb['frame_shift_ms']:g} ms hop, {fb['sample_rate']} Hz, global CMVN |",
              f"| tokens | sentencepiece {config['tokenizer']['kind']}, {config['tokenizer']['vocab_size']} (`{TOKENIZER}`) |",
              f"| decoding | {', '.join(f'{k}={v}' for k, v in config['decoding'].items())} |"]
    if train.get("data"):
        lines.append(f"| training data | {train['data']} |")
    if train.get("experiment"):
        lines.append(f"| training run | {train['experiment']} |")
    if train.get("summary"):
        s = train["summary"]
        lines.append(f"| training | {s.get('epochs', '?')} epochs, {s.get('train_wall_s', 0) / 60:.0f} min on {s.get('machine', '?')} |")
    lines += ["", "## Results", ""]
    if rows:
        lines += ["| split | WER % | CER % | utterances | decoding |", "| --- | --- | --- | --- | --- |"]
        for r in rows:
            opts = ", ".join(f"{k}={v}" for k, v in r["options"].items())
            if r["wer"] is None:  # no reference words (silence / noise clips): how many hypotheses were not empty
                lines.append(f"| {r['split']} (`{r['dir']}`) | — ({r['nonempty']} of {r['n_utts']} hypotheses not empty) | — | {r['n_utts']} | {opts} |")
            else:
                lines.append(f"| {r['split']} (`{r['dir']}`) | {r['wer']:.2f} | {r['cer']:.2f} | {r['n_utts']} | {opts} |")
    else:
        lines.append("Not evaluated (no scored decode folder of this checkpoint was found).")
    if note:
        lines += ["", note]
    lines += ["", "## Usage", "", "```python", "from asr import Speech2Text", "",
              f's2t = Speech2Text.from_pretrained("{where or name}")', 'print(s2t.transcribe(["audio.wav"])[0].text)', "```", "",
              f"or `asr-transcribe --model {where or name} audio.wav`.", "",
              "## Licence", "", f"Model: {license_id}. {data_license}".strip(), ""]
    src = config.get("source") or {}
    if src:
        lines += ["## Provenance", "", f"Exported by `asr-export` from `{src.get('checkpoint')}` (sha256 `{src.get('sha256', '')[:16]}…`).", ""]
    return "\n".join(lines)


def _foreign_entries(out: Path, overwrite: bool) -> list[str]:
    """The top-level names of an existing ``out`` that ``asr-export`` did not write (its manifest aside).

    Raises
    ------
    OutputDirError
        ``out`` is not a folder; or it holds such names and ``overwrite`` is false.
    """
    if not os.path.lexists(out):
        return []
    if out.is_symlink() or not out.is_dir():
        raise OutputDirError(out, "exists and is not a folder")
    manifest = read_manifest(out)
    owned = {e.rstrip("/").split("/", 1)[0] for e in (manifest or {}).get(EXPORT_TOOL, [])}
    foreign = sorted(x for x in os.listdir(out) if x != MANIFEST and x not in owned)
    if foreign and not overwrite:
        what = "holds files asr-export did not write" if manifest is not None else "is not empty and was not written by asr-export"
        shown = ", ".join(foreign[:3]) + (", ..." if len(foreign) > 3 else "")
        raise OutputDirError(out, f"{what} ({shown}); choose a new folder, or pass overwrite=true to replace the model files "
                                  "and keep the others (files of exported names, e.g. README.md, are replaced)")
    return foreign


def export(ckpt: str | Path, out_dir: str | Path, dtype: str = "float32", decode_dirs: Sequence[str | Path] | None = None, name: str | None = None,
           license_id: str = "apache-2.0", data_license: str | None = None, note: str = "", overwrite: bool = False) -> dict[str, Any]:
    """Export ``ckpt`` to the model directory ``out_dir`` (module docstring); returns the ``config.yaml`` content.

    The directory is built in a temporary sibling folder and renamed into place as a whole; on any error the
    temporary folder is removed and an existing ``out_dir`` is left as it was.

    Parameters
    ----------
    overwrite : bool
        Replace an ``out_dir`` holding files ``asr-export`` did not write; those files are moved into the new
        directory, except the ones named like an exported file, which are replaced (module docstring).

    Raises
    ------
    FileNotFoundError, ValueError
        From :func:`asr.models.checkpoint.load_checkpoint` (missing or unsafe checkpoint); unknown ``dtype``.
    asr.utils.owned.OutputDirError
        ``out_dir`` exists and is not a folder, or holds files ``asr-export`` did not write and ``overwrite`` is
        false (checked before anything is read or written; a ``ValueError`` whose message is ``<out_dir>: <reason>``).
    OSError
        Writing or renaming failed (a full disk): ``out_dir`` is unchanged.
    """
    out = Path(out_dir)
    _foreign_entries(out, overwrite)  # refuse before the (slow) checkpoint load
    ckpt = Path(ckpt)
    model, tok, meta = load_checkpoint(ckpt)
    dirs = [Path(d) for d in decode_dirs] if decode_dirs else find_decode_dirs(ckpt)
    rows = _results_rows(dirs)
    test_rows = [r for r in rows if r["split"] == "test"]
    decoding = test_rows[0]["options"] if test_rows else dataclasses.asdict(resolve_options(model, {}))
    exp = ckpt.resolve().parent.parent
    train: dict[str, Any] = {}
    if (exp / "config.yaml").is_file():
        tcfg = OmegaConf.to_container(OmegaConf.load(exp / "config.yaml"), resolve=False)
        data = tcfg.get("data") or {}
        train["experiment"] = f"{tcfg.get('name', exp.name)}"
        if data:
            train["data"] = f"{'AN4' if 'an4' in exp.name else 'data'} ({data.get('train', '?')})"
    if (exp / "train_summary.json").is_file():
        train["summary"] = json.loads((exp / "train_summary.json").read_text(encoding="utf-8"))
    if data_license is None:
        data_license = AN4_NOTE if "an4" in str(train.get("data", "")).lower() or "an4" in exp.name else ""
    out.absolute().parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.export-", dir=out.absolute().parent))
    old: Path | None = None
    try:
        mask = os.umask(0)
        os.umask(mask)
        os.chmod(tmp, 0o777 & ~mask)  # mkdtemp makes it 0700; the model directory gets a plain mkdir's mode
        config = save_model_dir(tmp, model, tok, meta["model_cfg"], fbank_options(meta), decoding, dtype, {"checkpoint": portable_path(ckpt), "sha256": file_sha256(ckpt)})
        mb = (tmp / WEIGHTS).stat().st_size / 1e6
        (tmp / "README.md").write_text(model_card(name or out.name, config, rows, train, license_id, data_license, mb, note, _usage_path(out_dir)), encoding="utf-8")
        written = sorted(x for x in os.listdir(tmp) if x != MANIFEST)
        record_owned(tmp, EXPORT_TOOL, written)
        for fd_path in [tmp / x for x in written] + [tmp]:
            _fsync(fd_path)
        foreign = _foreign_entries(out, overwrite)  # again: the folder may have changed meanwhile
        moved = []
        try:
            for x in foreign:
                if x not in written:
                    os.rename(out / x, tmp / x)  # the user's files go along into the new directory
                    moved.append(x)
            if os.path.lexists(out):
                old = out.absolute().parent / f".{out.name}.old-{os.getpid()}-{tmp.name.rsplit('-', 1)[-1]}"
                os.rename(out, old)
            os.rename(tmp, out)
        except BaseException:
            if old is not None and not os.path.lexists(out):
                os.rename(old, out)
                old = None
            for x in moved:
                os.rename(tmp / x, out / x)
            raise
        _fsync(out.absolute().parent)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    log.info("exported %s -> %s (%s, %.1f MB of weights)", ckpt, out, dtype, mb)
    return config


def _fsync(path: Path) -> None:
    """fsync a file or folder (best effort: a file system without it is not an error)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def main(argv: Sequence[str] | None = None) -> None:
    """Console script ``asr-export ckpt=... out_dir=... [dtype=float16] [decode_dirs=[...]] [name=...] [license=...]
    [overwrite=true]``. A refused ``out_dir``, a missing or unsafe checkpoint, or a failed write ends it with one line
    ``asr-export: <path>: <reason>`` on stderr, exit status 2."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    defaults = {"ckpt": None, "out_dir": None, "dtype": "float32", "decode_dirs": [], "name": None, "license": "apache-2.0", "data_license": None, "note": "",
                "overwrite": False}
    cfg = OmegaConf.merge(OmegaConf.create(defaults), OmegaConf.from_dotlist(list(sys.argv[1:] if argv is None else argv)))
    if not cfg.ckpt or not cfg.out_dir:
        raise SystemExit("asr-export needs ckpt=<checkpoint> out_dir=<model directory>")
    try:
        export(cfg.ckpt, cfg.out_dir, cfg.dtype, list(cfg.decode_dirs or []), cfg.name, cfg.license, cfg.data_license, cfg.note, overwrite=bool(cfg.overwrite))
    except OSError as exc:
        print(f"asr-export: {exc.filename}: {exc.strerror}" if exc.filename and exc.strerror else f"asr-export: {exc}", file=sys.stderr)
        sys.exit(2)
    except ValueError as exc:
        print(f"asr-export: {exc}", file=sys.stderr)
        sys.exit(2)
    print(f"{cfg.out_dir}: {', '.join(p.name for p in sorted(Path(cfg.out_dir).iterdir()) if p.name != MANIFEST)}")


if __name__ == "__main__":
    main()
