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
Config: ``conf/score.yaml``; Hydra creates no ``outputs/`` folder and does not change the cwd.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import hydra
from omegaconf import DictConfig

from asr.decoding.results import read_results
from asr.metrics.wer import ErrorCounts, ScoreResult, per_utterance, read_trn, score
from asr.utils.paths import CONF_DIR

__all__ = ["read_results", "load_ref_hyp", "score_decode_dir", "summary_line", "main"]

log = logging.getLogger(__name__)


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
        If ``hyp.trn`` has ids absent from ``ref.trn``, or a file is malformed.
    """
    d = Path(decode_dir)
    if (d / "results.jsonl").is_file():
        rows = read_results(d)
        return [r["utt_id"] for r in rows], [r["ref"] for r in rows], [r["hyp"] for r in rows]
    if (d / "ref.trn").is_file() and (d / "hyp.trn").is_file():
        refs, hyps = read_trn(d / "ref.trn"), read_trn(d / "hyp.trn")
        extra = sorted(set(hyps) - set(refs))
        if extra:
            raise ValueError(f"{d / 'hyp.trn'}: {len(extra)} utterance(s) not in ref.trn, e.g. {extra[:3]}")
        missing = [u for u in refs if u not in hyps]
        if missing:
            log.warning("%s: %d utterance(s) missing from hyp.trn, scored as empty", d, len(missing))
        ids = list(refs)
        return ids, [refs[u] for u in ids], [hyps.get(u, "") for u in ids]
    raise FileNotFoundError(f"{d}: neither results.jsonl nor ref.trn + hyp.trn found")


def _pct(c: ErrorCounts) -> str:
    try:
        return f"{100.0 * c.rate:.2f}"
    except ValueError:
        return "n/a"


def summary_line(result: ScoreResult, decode_dir: str | Path = "") -> str:
    """One-line summary, e.g. ``WER 12.34 % (sub 10, del 3, ins 2 / 1234 words)  CER ... [dir]``."""
    w, c = result.words, result.chars
    line = (
        f"WER {_pct(w)} % (sub {w.sub}, del {w.dele}, ins {w.ins} / {w.n_ref} words)  "
        f"CER {_pct(c)} % (sub {c.sub}, del {c.dele}, ins {c.ins} / {c.n_ref} chars)  "
        f"SER {100.0 * result.ser:.2f} % ({result.n_sent_err} / {result.n_utts} utts)"
    )
    return f"{line}  [{decode_dir}]" if decode_dir != "" else line


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


def score_decode_dir(decode_dir: str | Path, out_dir: str | Path | None = None) -> ScoreResult:
    """Score a decode directory and write ``wer.json``, ``result.txt`` and ``per_utt.txt``.

    Parameters
    ----------
    decode_dir : str or Path
        Folder with ``results.jsonl`` (or ``ref.trn`` + ``hyp.trn``).
    out_dir : str or Path, optional
        Report folder (created); default ``<decode_dir>/scoring``.

    Returns
    -------
    ScoreResult
        Corpus-level counts (rates as fractions; ``wer.json`` holds them in percent).

    Raises
    ------
    FileNotFoundError, ValueError
        See `load_ref_hyp`.
    """
    decode_dir = Path(decode_dir)
    out = Path(out_dir) if out_dir is not None else decode_dir / "scoring"
    ids, refs, hyps = load_ref_hyp(decode_dir)
    result = score(refs, hyps)
    rows = per_utterance(refs, hyps, ids)
    out.mkdir(parents=True, exist_ok=True)
    payload = {**result.as_dict(), "units": "wer/cer/ser in percent", "decode_dir": str(decode_dir)}
    (out / "wer.json").write_text(json.dumps(payload, indent=2) + "\n", encoding="utf-8")
    (out / "result.txt").write_text(_result_table(result, decode_dir), encoding="utf-8")
    (out / "per_utt.txt").write_text(_per_utt_listing(rows), encoding="utf-8")
    return result


@hydra.main(version_base="1.3", config_path=str(CONF_DIR), config_name="score")
def main(cfg: DictConfig) -> None:
    """Console entry point ``asr-score`` (config ``conf/score.yaml``)."""
    result = score_decode_dir(cfg.decode_dir, cfg.out_dir)
    print(summary_line(result, cfg.decode_dir), flush=True)


if __name__ == "__main__":
    main()
