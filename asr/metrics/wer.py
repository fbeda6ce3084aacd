"""Word and character error rates, per-utterance alignments, and sclite ``trn`` files.

The edit-distance alignment is computed by `jiwer <https://github.com/jitsi/jiwer>`_
(``jiwer.process_words`` / ``jiwer.process_characters``, Levenshtein alignment with unit costs).
Conventions follow NIST sclite (SCTK):

* corpus-level rates are *total* edits divided by *total* reference tokens
  (``(S + D + I) / N``), never a mean of per-utterance rates;
* a sentence is in error when it has at least one word error (sclite ``S.Err``);
* ``trn`` files hold one utterance per line as ``TEXT (utt_id)``;
* the alignment listing resembles sclite's ``pra`` output (``REF:``/``HYP:`` lines with ``*``
  filling the missing side and ``S``/``D``/``I`` markers below the errors).

Text is not normalised beyond whitespace: runs of whitespace are collapsed to one space and the
ends stripped. Case and punctuation are scored as given, so normalise both sides before scoring.
Characters for CER include the single space between words (as ``jiwer.cer`` does).

Empty references are allowed: every hypothesis token of such an utterance counts as an insertion.
They are handled here rather than by jiwer, since jiwer 3.x rejects empty references.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jiwer

__all__ = [
    "ErrorCounts",
    "ScoreResult",
    "normalize_whitespace",
    "score",
    "per_utterance",
    "format_alignment",
    "write_trn",
    "read_trn",
]


@dataclass(frozen=True)
class ErrorCounts:
    """Edit counts of an alignment between references and hypotheses (words or characters).

    Attributes
    ----------
    sub, dele, ins : int
        Substitutions, deletions and insertions (``dele`` because ``del`` is a Python keyword).
    hits : int
        Correctly recognised reference tokens.
    n_ref : int
        Number of reference tokens; ``n_ref == sub + dele + hits``.
    """

    sub: int
    dele: int
    ins: int
    hits: int
    n_ref: int

    @property
    def errors(self) -> int:
        """Total edits ``sub + dele + ins``."""
        return self.sub + self.dele + self.ins

    @property
    def rate(self) -> float:
        """Error rate ``(sub + dele + ins) / n_ref`` as a fraction (1.0 = 100 %).

        May exceed 1 when there are many insertions.

        Raises
        ------
        ValueError
            If ``n_ref == 0`` and there are errors (insertions only): the rate is undefined.
            ``n_ref == 0`` with no errors gives ``0.0``.
        """
        if self.n_ref == 0:
            if self.errors == 0:
                return 0.0
            raise ValueError(f"error rate undefined: {self.errors} insertion(s) against 0 reference tokens")
        return self.errors / self.n_ref

    def __add__(self, other: ErrorCounts) -> ErrorCounts:
        if not isinstance(other, ErrorCounts):
            return NotImplemented
        return ErrorCounts(
            self.sub + other.sub,
            self.dele + other.dele,
            self.ins + other.ins,
            self.hits + other.hits,
            self.n_ref + other.n_ref,
        )

    def as_dict(self) -> dict[str, int]:
        """Counts as a JSON-friendly dict with sclite names ``sub``, ``del``, ``ins``, ``hits``, ``n_ref``."""
        return {"sub": self.sub, "del": self.dele, "ins": self.ins, "hits": self.hits, "n_ref": self.n_ref}


@dataclass(frozen=True)
class ScoreResult:
    """Corpus-level scores.

    Attributes
    ----------
    words, chars : ErrorCounts
        Word-level and character-level counts summed over the corpus.
    n_utts : int
        Number of utterances scored.
    n_sent_err : int
        Utterances with at least one word error.
    """

    words: ErrorCounts
    chars: ErrorCounts
    n_utts: int
    n_sent_err: int

    @property
    def wer(self) -> float:
        """Word error rate as a fraction (see `ErrorCounts.rate`)."""
        return self.words.rate

    @property
    def cer(self) -> float:
        """Character error rate as a fraction (see `ErrorCounts.rate`)."""
        return self.chars.rate

    @property
    def ser(self) -> float:
        """Sentence error rate as a fraction (0.0 when there are no utterances)."""
        return self.n_sent_err / self.n_utts if self.n_utts else 0.0

    def as_dict(self) -> dict[str, Any]:
        """JSON-friendly summary.

        Returns
        -------
        dict
            ``wer``, ``cer``, ``ser`` in **percent** (``None`` where undefined, i.e. zero reference
            tokens with insertions), ``n_utts``, ``n_sent_err``, ``n_words``, ``n_chars`` and the raw
            counts under ``words`` and ``chars`` (see `ErrorCounts.as_dict`).
        """

        def pct(counts: ErrorCounts) -> float | None:
            try:
                return 100.0 * counts.rate
            except ValueError:
                return None

        return {
            "wer": pct(self.words),
            "cer": pct(self.chars),
            "ser": 100.0 * self.ser,
            "n_utts": self.n_utts,
            "n_sent_err": self.n_sent_err,
            "n_words": self.words.n_ref,
            "n_chars": self.chars.n_ref,
            "words": self.words.as_dict(),
            "chars": self.chars.as_dict(),
        }


def normalize_whitespace(text: str) -> str:
    """Collapse runs of whitespace to single spaces and strip the ends."""
    return " ".join(text.split())


# --------------------------------------------------------------------------------------------------
# alignment helpers


# One alignment step: (op, ref token or None, hyp token or None); op in {"C", "S", "D", "I"}.
_Step = tuple[str, "str | None", "str | None"]


def _check_lengths(refs: Sequence[str], hyps: Sequence[str]) -> None:
    if len(refs) != len(hyps):
        raise ValueError(f"{len(refs)} references but {len(hyps)} hypotheses")


def _align(refs: list[str], hyps: list[str], unit: str) -> list[list[_Step]]:
    """Align normalised texts; ``unit`` is ``"word"`` or ``"char"``. Returns one step list per pair."""
    split = (lambda s: s.split()) if unit == "word" else list
    steps: list[list[_Step] | None] = [None] * len(refs)
    todo = [i for i, r in enumerate(refs) if r]
    for i, r in enumerate(refs):
        if not r:  # empty reference: everything in the hypothesis is an insertion
            steps[i] = [("I", None, t) for t in split(hyps[i])]
    if todo:
        r_sub = [refs[i] for i in todo]
        h_sub = [hyps[i] for i in todo]
        out = jiwer.process_words(r_sub, h_sub) if unit == "word" else jiwer.process_characters(r_sub, h_sub)
        for k, i in enumerate(todo):
            ref_toks, hyp_toks = out.references[k], out.hypotheses[k]
            utt: list[_Step] = []
            for ch in out.alignments[k]:
                rs, re_, hs, he = ch.ref_start_idx, ch.ref_end_idx, ch.hyp_start_idx, ch.hyp_end_idx
                if ch.type == "equal":
                    utt += [("C", ref_toks[a], hyp_toks[b]) for a, b in zip(range(rs, re_), range(hs, he))]
                elif ch.type == "substitute":
                    utt += [("S", ref_toks[a], hyp_toks[b]) for a, b in zip(range(rs, re_), range(hs, he))]
                elif ch.type == "delete":
                    utt += [("D", ref_toks[a], None) for a in range(rs, re_)]
                elif ch.type == "insert":
                    utt += [("I", None, hyp_toks[b]) for b in range(hs, he)]
                else:  # pragma: no cover - jiwer only emits the four types above
                    raise RuntimeError(f"unknown jiwer alignment type {ch.type!r}")
            steps[i] = utt
    return steps  # type: ignore[return-value]


def _counts(steps: Iterable[_Step]) -> ErrorCounts:
    n = {"C": 0, "S": 0, "D": 0, "I": 0}
    for op, _, _ in steps:
        n[op] += 1
    return ErrorCounts(sub=n["S"], dele=n["D"], ins=n["I"], hits=n["C"], n_ref=n["C"] + n["S"] + n["D"])


def format_alignment(steps: Sequence[_Step]) -> str:
    """Render word alignment steps as sclite-``pra``-like ``REF:``/``HYP:``/marker lines.

    Correct words are lower-case in sclite; here they are printed as given. A missing word is shown
    as ``*`` (repeated to the column width); the third line marks ``S``, ``D`` or ``I`` under errors.
    """
    ref_cols, hyp_cols, mark_cols = [], [], []
    for op, r, h in steps:
        r_s = r if r is not None else ""
        h_s = h if h is not None else ""
        w = max(len(r_s), len(h_s), 1)
        ref_cols.append((r_s if r is not None else "*" * w).ljust(w))
        hyp_cols.append((h_s if h is not None else "*" * w).ljust(w))
        mark_cols.append(("" if op == "C" else op).ljust(w))
    return "\n".join(
        [
            ("REF:  " + " ".join(ref_cols)).rstrip(),
            ("HYP:  " + " ".join(hyp_cols)).rstrip(),
            ("      " + " ".join(mark_cols)).rstrip(),
        ]
    )


# --------------------------------------------------------------------------------------------------
# public scoring


def score(refs: Sequence[str], hyps: Sequence[str]) -> ScoreResult:
    """Corpus-level WER and CER.

    Parameters
    ----------
    refs, hyps : sequence of str
        Reference and hypothesis transcripts, paired by position. Whitespace is collapsed; no other
        normalisation is applied.

    Returns
    -------
    ScoreResult
        Summed word and character counts. ``result.wer`` is total word edits / total reference
        words (sclite convention), not a mean of per-utterance WERs; likewise ``result.cer`` over
        characters, where the single space between words counts as a character.

    Raises
    ------
    ValueError
        If ``refs`` and ``hyps`` differ in length.

    Notes
    -----
    Alignment by ``jiwer.process_words`` / ``jiwer.process_characters``. Utterances with an empty
    reference contribute their hypothesis tokens as insertions.
    """
    _check_lengths(refs, hyps)
    r = [normalize_whitespace(t) for t in refs]
    h = [normalize_whitespace(t) for t in hyps]
    w_steps = _align(r, h, "word")
    c_steps = _align(r, h, "char")
    words = ErrorCounts(0, 0, 0, 0, 0)
    chars = ErrorCounts(0, 0, 0, 0, 0)
    n_sent_err = 0
    for ws, cs in zip(w_steps, c_steps):
        wc = _counts(ws)
        words = words + wc
        chars = chars + _counts(cs)
        n_sent_err += wc.errors > 0
    return ScoreResult(words=words, chars=chars, n_utts=len(r), n_sent_err=n_sent_err)


def per_utterance(refs: Sequence[str], hyps: Sequence[str], ids: Sequence[str]) -> list[dict[str, Any]]:
    """Per-utterance word counts and alignment listings, in input order.

    Parameters
    ----------
    refs, hyps, ids : sequence of str
        Transcripts and utterance ids, paired by position.

    Returns
    -------
    list of dict
        One dict per utterance with keys ``utt_id``, ``ref``, ``hyp`` (whitespace-normalised),
        ``sub``, ``del``, ``ins``, ``hits``, ``n_ref``, ``errors`` (word counts), ``wer`` (fraction,
        ``None`` for an empty reference with insertions), ``cer`` (fraction or ``None``) and
        ``alignment`` (a ``REF:``/``HYP:``/marker block, see `format_alignment`) and ``steps`` (the word
        alignment as ``(op, ref word or None, hyp word or None)`` tuples, ``op`` in ``C``/``S``/``D``/``I``).

    Raises
    ------
    ValueError
        If the three sequences differ in length.
    """
    _check_lengths(refs, hyps)
    if len(ids) != len(refs):
        raise ValueError(f"{len(ids)} ids but {len(refs)} references")
    r = [normalize_whitespace(t) for t in refs]
    h = [normalize_whitespace(t) for t in hyps]
    w_steps = _align(r, h, "word")
    c_steps = _align(r, h, "char")
    out = []
    for uid, rt, ht, ws, cs in zip(ids, r, h, w_steps, c_steps):
        wc, cc = _counts(ws), _counts(cs)

        def rate(c: ErrorCounts) -> float | None:
            try:
                return c.rate
            except ValueError:
                return None

        out.append(
            {
                "utt_id": uid,
                "ref": rt,
                "hyp": ht,
                **wc.as_dict(),
                "errors": wc.errors,
                "wer": rate(wc),
                "cer": rate(cc),
                "alignment": format_alignment(ws),
                "steps": ws,
            }
        )
    return out


# --------------------------------------------------------------------------------------------------
# sclite trn files

_TRN_LINE = re.compile(r"^(?P<text>.*?)\s*\((?P<id>[^()\s][^()]*)\)\s*$")


def write_trn(path: str | Path, texts: Mapping[str, str]) -> Path:
    """Write an sclite ``trn`` file: one ``TEXT (utt_id)`` line per entry, in mapping order.

    Whitespace in the text is collapsed (a trn line holds one utterance).

    Raises
    ------
    ValueError
        If an id is empty or contains parentheses or whitespace.
    """
    path = Path(path)
    lines = []
    for uid, text in texts.items():
        if not uid or any(c in uid for c in "()") or uid != uid.strip() or len(uid.split()) != 1:
            raise ValueError(f"utterance id {uid!r} cannot be written to a trn file")
        lines.append(f"{normalize_whitespace(text)} ({uid})\n")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(lines), encoding="utf-8")
    return path


def read_trn(path: str | Path) -> dict[str, str]:
    """Read an sclite ``trn`` file into ``{utt_id: text}`` (file order; blank lines skipped).

    Raises
    ------
    ValueError
        If a non-blank line is not valid UTF-8, does not end in ``(utt_id)``, or an id repeats; the
        message names the file and the 1-based line number. (A missing file raises ``OSError``.) No
        other exception is raised for any file content; trailing spaces, tabs and ``\r`` are ignored.
    """
    path = Path(path)
    out: dict[str, str] = {}
    for lineno, raw in enumerate(path.read_bytes().split(b"\n"), 1):
        try:
            line = raw.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise ValueError(
                f"{path}:{lineno}: not valid UTF-8 (byte {raw[exc.start]:#04x} at column {exc.start + 1})"
            ) from None
        if not line.strip():
            continue
        m = _TRN_LINE.match(line.rstrip("\r\n"))
        if m is None:
            raise ValueError(f"{path}:{lineno}: trn line has no '(utt_id)' at the end: {line.rstrip()!r}")
        uid = m.group("id").strip()
        if uid in out:
            raise ValueError(f"{path}:{lineno}: duplicate utterance id {uid!r}")
        out[uid] = normalize_whitespace(m.group("text"))
    return out
