"""``asr-score``: WER/CER of a decode directory.

Usage::

    asr-score decode_dir=exp/an4/decode_test              # -> exp/an4/decode_test/scoring/
    asr-score decode_dir=exp/an4/decode_test out_dir=/tmp/s

Reads ``<decode_dir>/results.jsonl`` (``utt_id``, ``ref``, ``hyp`` per line), or, when that file is
missing, ``ref.trn`` + ``hyp.trn`` (sclite trn). Writes to ``out_dir`` (default
``<decode_dir>/scoring``):

* ``wer.json``: counts and rates (``wer``, ``cer``, ``ser`` in percent), see `ScoreResult.as_dict`;
* ``result.txt``: a readable summary table;
* ``per_utt.txt``: per-utterance alignments, most word errors first;

and prints one summary line. Scoring follows sclite conventions via jiwer (`asr.metrics.wer`).

``out_dir`` is the tool's only where it wrote the files (``<out_dir>/.asr-owned.json``, :mod:`asr.utils.owned`):
a re-run replaces them, and ``asr-decode`` removes them when it re-decodes the folder; a non-empty ``out_dir``
without that manifest is refused unless ``overwrite=true`` (then only the three names above are replaced).
Every error (a malformed ``results.jsonl`` line, e.g. a ``ref``/``hyp`` that is not a string; a results file
without utterances: "nothing to score"; a refused ``out_dir``) is one line ``asr-score: <path>: <reason>`` on
stderr, exit status 2.
Config: ``conf/score.yaml``; Hydra creates no ``outputs/`` folder and does not change the cwd.
"""

from __future__ import annotations

import json
import logging
import sys
from pathlib import Path
from typing import Any

import hydra
from omegaconf import DictConfig

from asr.decoding.results import read_errors, read_results
from asr.metrics.wer import ErrorCounts, ScoreResult, per_utterance, read_trn, score
from asr.utils.owned import OwnedOutput, check_output_dir
from asr.utils.paths import CONF_DIR

__all__ = ["SCORE_TOOL", "read_results", "load_ref_hyp", "read_coverage", "score_decode_dir", "summary_line", "main", "DEFAULT_MAX_MISSING_FRACTION"]

#: Default limit on the fraction of expected utterances without a hypothesis (unreadable inputs listed in
#: ``errors.tsv``, ids missing from ``hyp.trn``) above which scoring fails instead of reporting a WER over
#: the few that were decoded.
DEFAULT_MAX_MISSING_FRACTION = 0.05

log = logging.getLogger(__name__)

#: The tool name in the ownership manifest of ``asr-score``'s output folder (:mod:`asr.utils.owned`).
SCORE_TOOL = "asr-score"


def load_ref_hyp(decode_dir: str | Path) -> tuple[list[str], list[str], list[str]]:
    """Utterance ids, references and hypotheses of a decode directory.

    From ``results.jsonl`` when present, else from ``ref.trn``/``hyp.trn`` (order of ``ref.trn``;
    an utterance missing from ``hyp.trn`` is scored with an empty hypothesis, i.e. all deletions,
    and a warning is logged).

    Raises
    ------
    FileNotFoundError
        If neither ``results.jsonl`` nor both trn files exist.
    ValueError
        If ``hyp.trn`` has ids absent from ``ref.trn``, or a file is malformed (e.g. a ``results.jsonl`` line whose
        ``ref``/``hyp`` is not a string; the message names the file and line).
    """
    ids, refs, hyps, _, extra = _load(decode_dir)
    if extra:
        raise ValueError(f"{Path(decode_dir) / 'hyp.trn'}: {len(extra)} utterance(s) not in ref.trn, e.g. {extra[:3]}")
    return ids, refs, hyps


def _load(decode_dir: str | Path) -> tuple[list[str], list[str], list[str], list[str], list[str]]:
    """``(ids, refs, hyps, missing, extra)``: as :func:`load_ref_hyp`, plus the ids of ``ref.trn`` missing from
    ``hyp.trn`` (scored as empty) and those of ``hyp.trn`` not in ``ref.trn`` (not scored); both empty with
    ``results.jsonl``."""
    d = Path(decode_dir)
    if (d / "results.jsonl").is_file():
        rows = read_results(d)
        return [r["utt_id"] for r in rows], [r["ref"] for r in rows], [r["hyp"] for r in rows], [], []
    if (d / "ref.trn").is_file() and (d / "hyp.trn").is_file():
        refs, hyps = read_trn(d / "ref.trn"), read_trn(d / "hyp.trn")
        extra = sorted(set(hyps) - set(refs))
        missing = [u for u in refs if u not in hyps]
        if missing:
            log.warning("%s: %d utterance(s) missing from hyp.trn, scored as empty", d, len(missing))
        ids = list(refs)
        return ids, [refs[u] for u in ids], [hyps.get(u, "") for u in ids], missing, extra
    raise FileNotFoundError(f"{d}: neither results.jsonl nor ref.trn + hyp.trn found")


def read_coverage(decode_dir: str | Path, n_scored: int, missing: list[str], extra: list[str]) -> dict[str, Any]:
    """How many of the utterances a decode was asked for were scored.

    Parameters
    ----------
    decode_dir : the decode folder; its ``errors.tsv`` (``file<TAB>reason`` rows written by ``asr-decode``
        for inputs that could not be read or decoded) counts as unreadable.
    n_scored : utterances scored (including ``missing`` ones, scored as empty).
    missing, extra : ids of ``ref.trn`` without hypothesis, ids of ``hyp.trn`` without reference.

    Returns
    -------
    dict
        ``n_expected`` (scored + unreadable), ``n_missing_hyp``, ``n_unreadable``, ``n_extra`` (ignored),
        ``missing_fraction`` (``(n_missing_hyp + n_unreadable) / n_expected``) and ``missing_ids``/``extra_ids``
        (first 20 each).
    """
    n_unreadable = len(read_errors(decode_dir))
    n_expected = n_scored + n_unreadable
    return {
        "n_expected": n_expected,
        "n_missing_hyp": len(missing),
        "n_unreadable": n_unreadable,
        "n_extra": len(extra),
        "missing_fraction": (len(missing) + n_unreadable) / n_expected if n_expected else 0.0,
        "missing_ids": missing[:20],
        "extra_ids": extra[:20],
    }


def _coverage_note(cov: dict[str, Any]) -> str:
    parts = []
    if cov["n_unreadable"]:
        parts.append(f"{cov['n_unreadable']} unreadable (errors.tsv)")
    if cov["n_missing_hyp"]:
        parts.append(f"{cov['n_missing_hyp']} missing from hyp.trn, scored as deletions")
    if cov["n_extra"]:
        parts.append(f"{cov['n_extra']} in hyp.trn only, ignored")
    return f"WARNING: {', '.join(parts)} of {cov['n_expected']} expected utterances" if parts else ""


def _pct(c: ErrorCounts) -> str:
    try:
        return f"{100.0 * c.rate:.2f}"
    except ValueError:
        return "n/a"


def summary_line(result: ScoreResult, decode_dir: str | Path = "", coverage: dict[str, Any] | None = None) -> str:
    """One-line summary, e.g. ``WER 12.34 % (sub 10, del 3, ins 2 / 1234 words)  CER ... [dir]``, followed by
    a warning about unreadable, missing or extra utterances when ``coverage`` (:func:`read_coverage`) has any."""
    w, c = result.words, result.chars
    line = (
        f"WER {_pct(w)} % (sub {w.sub}, del {w.dele}, ins {w.ins} / {w.n_ref} words)  "
        f"CER {_pct(c)} % (sub {c.sub}, del {c.dele}, ins {c.ins} / {c.n_ref} chars)  "
        f"SER {100.0 * result.ser:.2f} % ({result.n_sent_err} / {result.n_utts} utts)"
    )
    line = f"{line}  [{decode_dir}]" if decode_dir != "" else line
    note = _coverage_note(coverage) if coverage else ""
    return f"{line}  {note}" if note else line


def _result_table(result: ScoreResult, decode_dir: Path) -> str:
    head = f"{'unit':<6} {'#utts':>6} {'#ref':>8} {'corr':>8} {'sub':>7} {'del':>7} {'ins':>7} {'err %':>8}"
    lines = [f"Scoring of {decode_dir}", "(sclite conventions: err % = (sub + del + ins) / #ref, summed over utterances)", ""]
    lines += [head, "-" * len(head)]
    for name, c in (("words", result.words), ("chars", result.chars)):
        lines.append(
            f"{name:<6} {result.n_utts:>6} {c.n_ref:>8} {c.hits:>8} {c.sub:>7} {c.dele:>7} {c.ins:>7} {_pct(c):>8}"
        )
    lines += [
        "",
        f"WER                 : {_pct(result.words)} %",
        f"CER                 : {_pct(result.chars)} %",
        f"sentence error rate : {100.0 * result.ser:.2f} % ({result.n_sent_err} / {result.n_utts})",
    ]
    return "\n".join(lines) + "\n"


def _per_utt_listing(rows: list[dict[str, Any]]) -> str:
    rows = sorted(rows, key=lambda r: (-r["errors"], r["utt_id"]))
    out = []
    for r in rows:
        wer = "n/a" if r["wer"] is None else f"{100.0 * r['wer']:.1f} %"
        out.append(
            f"id: ({r['utt_id']})\n"
            f"Scores: (#C #S #D #I) {r['hits']} {r['sub']} {r['del']} {r['ins']}   WER {wer}\n"
            f"{r['alignment']}\n"
        )
    return "\n".join(out)


def score_decode_dir(decode_dir: str | Path, out_dir: str | Path | None = None, max_missing_fraction: float = DEFAULT_MAX_MISSING_FRACTION, overwrite: bool = False) -> ScoreResult:
    """Score a decode directory and write ``wer.json``, ``result.txt`` and ``per_utt.txt``.

    Parameters
    ----------
    decode_dir : str or Path
        Folder with ``results.jsonl`` (or ``ref.trn`` + ``hyp.trn``).
    out_dir : str or Path, optional
        Report folder (created); default ``<decode_dir>/scoring``.
    max_missing_fraction : float
        Most utterances (fraction of those expected) that may lack a hypothesis: unreadable (``errors.tsv``)
        or missing from ``hyp.trn``. Ids only in ``hyp.trn`` are reported and ignored.
    overwrite : bool
        Write into a non-empty ``out_dir`` that no ``asr-score`` wrote (its other files stay).

    Returns
    -------
    ScoreResult
        Corpus-level counts (rates as fractions; ``wer.json`` holds them in percent, with the
        :func:`read_coverage` counts under ``coverage``, also at the end of ``result.txt``).

    Raises
    ------
    FileNotFoundError, ValueError
        See `load_ref_hyp`; ``max_missing_fraction`` not a number in [0, 1]; more than
        ``max_missing_fraction`` of the expected utterances without hypothesis (nothing is written then); no
        utterance to score ("nothing to score", the message names the file).
    asr.utils.owned.OutputDirError
        ``out_dir`` is not empty, has no ownership manifest and ``overwrite`` is false (a ``ValueError``).
    """
    return _score(decode_dir, out_dir, max_missing_fraction, overwrite)[0]


def _score(decode_dir: str | Path, out_dir: str | Path | None, max_missing_fraction: float, overwrite: bool = False) -> tuple[ScoreResult, dict[str, Any]]:
    """:func:`score_decode_dir`, also returning the coverage (:func:`read_coverage`)."""
    if isinstance(max_missing_fraction, bool) or not isinstance(max_missing_fraction, (int, float)) or not 0.0 <= max_missing_fraction <= 1.0:
        raise ValueError(f"max_missing_fraction must be a number in [0, 1], got {max_missing_fraction!r}")
    decode_dir = Path(decode_dir)
    out = Path(out_dir) if out_dir is not None else decode_dir / "scoring"
    check_output_dir(out, SCORE_TOOL, overwrite)
    ids, refs, hyps, missing, extra = _load(decode_dir)
    if not ids:
        src = decode_dir / "results.jsonl" if (decode_dir / "results.jsonl").is_file() else decode_dir / "ref.trn"
        raise ValueError(f"{src}: nothing to score (no utterances)")
    cov = read_coverage(decode_dir, len(ids), missing, extra)
    if cov["missing_fraction"] > max_missing_fraction:
        raise ValueError(
            f"{decode_dir}: {cov['n_unreadable'] + cov['n_missing_hyp']} of {cov['n_expected']} utterances have no hypothesis "
            f"({cov['n_unreadable']} unreadable in errors.tsv, {cov['n_missing_hyp']} missing from hyp.trn): "
            f"{100 * cov['missing_fraction']:.1f} % > max_missing_fraction {100 * max_missing_fraction:.1f} %; a WER over the rest would mislead"
        )
    if extra:
        log.warning("%s: %d utterance(s) in hyp.trn but not in ref.trn, ignored, e.g. %s", decode_dir, len(extra), extra[:3])
    result = score(refs, hyps)
    rows = per_utterance(refs, hyps, ids)
    payload = {**result.as_dict(), "coverage": cov, "units": "wer/cer/ser in percent", "decode_dir": str(decode_dir)}
    note = _coverage_note(cov)
    with OwnedOutput(out, SCORE_TOOL, overwrite):
        (out / "wer.json").write_text(json.dumps(payload, indent=2) + "\n", encoding="utf-8")
        (out / "result.txt").write_text(_result_table(result, decode_dir) + (f"\n{note}\n" if note else ""), encoding="utf-8")
        (out / "per_utt.txt").write_text(_per_utt_listing(rows), encoding="utf-8")
    return result, cov


@hydra.main(version_base="1.3", config_path=str(CONF_DIR), config_name="score")
def main(cfg: DictConfig) -> None:
    """Console entry point ``asr-score`` (config ``conf/score.yaml``); an error is one line
    ``asr-score: <path>: <reason>`` on stderr, exit status 2."""
    try:
        result, cov = _score(cfg.decode_dir, cfg.out_dir, cfg.get("max_missing_fraction", DEFAULT_MAX_MISSING_FRACTION), bool(cfg.get("overwrite", False)))
    except (ValueError, FileNotFoundError) as exc:
        print(f"asr-score: {exc}", file=sys.stderr)
        sys.exit(2)
    print(summary_line(result, cfg.decode_dir, cov), flush=True)


if __name__ == "__main__":
    main()
