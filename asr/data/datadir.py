"""Kaldi/ESPnet-style data directories.

A data directory holds one utterance per line in each of these text files (UTF-8, ``\\n`` line ends,
sorted by utterance id in byte order, i.e. ``LC_ALL=C sort``), as described in the Kaldi data
preparation docs (https://kaldi-asr.org/doc/data_prep.html) and used by ESPnet and lhotse
(``lhotse.kaldi.load_kaldi_data_dir``):

=========== =====================================================
``wav.scp``  ``<utt_id> <audio path>``
``text``     ``<utt_id> <transcript>``
``utt2spk``  ``<utt_id> <speaker_id>``
``spk2utt``  ``<speaker_id> <utt_id> <utt_id> ...``
``utt2dur``  ``<utt_id> <duration in seconds, 3 decimals>``
=========== =====================================================

Utterance ids should be prefixed with the speaker id so that ``utt2spk`` and ``spk2utt`` sort the same
way (a Kaldi requirement, checked by ``utils/validate_data_dir.sh``).
"""

from __future__ import annotations

import logging
import math
import os
import tempfile
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

__all__ = [
    "Utterance",
    "DataDirError",
    "SkippedEntry",
    "write_data_dir",
    "read_data_dir",
    "check_data_dir",
    "write_skipped",
    "DEFAULT_MAX_BAD_FRACTION",
]

log = logging.getLogger(__name__)

_MAX_LISTED = 5
#: Default largest fraction of bad utterances a data dir may have before reading it fails.
DEFAULT_MAX_BAD_FRACTION = 0.05


@dataclass(frozen=True)
class Utterance:
    """One utterance of a data directory.

    Attributes
    ----------
    utt_id : str
        Utterance id (no whitespace), ideally ``<speaker>-...``.
    wav : str
        Audio path (absolute after :func:`read_data_dir`, unless it is a Kaldi pipe command ending in ``|``).
    text : str
        Transcript (may be empty; no newlines).
    speaker : str
        Speaker id (no whitespace).
    duration : float
        Duration in seconds (``0.0`` when unknown).
    """

    utt_id: str
    wav: str
    text: str
    speaker: str
    duration: float


class DataDirError(ValueError):
    """A data directory (or the utterances to write into one) is malformed or inconsistent.

    Parameters
    ----------
    message : str
        What is wrong.
    path : str or os.PathLike, optional
        The file concerned.
    line : int, optional
        1-based line number in ``path``.

    Attributes
    ----------
    path : str or None
    line : int or None
    """

    def __init__(self, message: str, path: str | os.PathLike[str] | None = None, line: int | None = None) -> None:
        self.path = None if path is None else str(path)
        self.line = line
        where = ""
        if self.path is not None:
            where = f"{self.path}:{line}: " if line is not None else f"{self.path}: "
        super().__init__(where + message)


def _byte_key(s: str) -> bytes:
    """Sort key matching ``LC_ALL=C sort`` (byte order of the UTF-8 encoding)."""
    return s.encode("utf-8")


def _preview(ids: Iterable[str]) -> str:
    ids = sorted(ids, key=_byte_key)
    shown = ", ".join(ids[:_MAX_LISTED])
    return shown + (f", ... ({len(ids)} in all)" if len(ids) > _MAX_LISTED else "")


def _atomic_write(path: Path, lines: Iterable[str]) -> None:
    """Write ``lines`` (each without newline) to ``path`` via a temp file in the same folder + os.replace."""
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8", newline="\n") as f:
            for line in lines:
                f.write(line)
                f.write("\n")
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise


def _check_token(value: str, what: str, utt_id: str) -> None:
    if not value or any(c.isspace() for c in value):
        raise DataDirError(f"{what} {value!r} of utterance {utt_id!r} is empty or contains whitespace")


def write_data_dir(utts: Iterable[Utterance], out_dir: str | os.PathLike[str]) -> Path:
    """Write utterances as a Kaldi/ESPnet data directory.

    Creates ``out_dir`` if needed and (over)writes ``wav.scp``, ``text``, ``utt2spk``, ``spk2utt`` and
    ``utt2dur``, each atomically (temp file + :func:`os.replace`). Lines are sorted by utterance id in
    byte order (``LC_ALL=C sort``); ``spk2utt`` by speaker id, its utterances in byte order. Wav paths are
    written as given. Other files already in ``out_dir`` (e.g. ``feats.scp``) are left alone.

    Parameters
    ----------
    utts : iterable of Utterance
        The utterances, in any order.
    out_dir : str or os.PathLike
        Destination folder.

    Returns
    -------
    pathlib.Path
        ``out_dir``.

    Raises
    ------
    DataDirError
        On a duplicate utterance id, an empty id / speaker or one containing whitespace, an empty wav
        path or one containing a newline, a transcript containing a newline, or a negative / non-finite
        duration. Nothing is written in that case.
    """
    out = Path(out_dir)
    by_id: dict[str, Utterance] = {}
    for u in utts:
        _check_token(u.utt_id, "utterance id", u.utt_id)
        _check_token(u.speaker, "speaker id", u.utt_id)
        if u.utt_id in by_id:
            raise DataDirError(f"duplicate utterance id {u.utt_id!r}")
        if not u.wav.strip() or "\n" in u.wav or "\r" in u.wav:
            raise DataDirError(f"wav path {u.wav!r} of utterance {u.utt_id!r} is empty or contains a newline")
        if "\n" in u.text or "\r" in u.text:
            raise DataDirError(f"transcript of utterance {u.utt_id!r} contains a newline")
        if not math.isfinite(u.duration) or u.duration < 0:
            raise DataDirError(f"duration {u.duration!r} of utterance {u.utt_id!r} is negative or not finite")
        by_id[u.utt_id] = u

    ordered = [by_id[k] for k in sorted(by_id, key=_byte_key)]
    spk2utt: dict[str, list[str]] = {}
    for u in ordered:  # already in byte order, so each speaker's list is too
        spk2utt.setdefault(u.speaker, []).append(u.utt_id)

    out.mkdir(parents=True, exist_ok=True)
    _atomic_write(out / "wav.scp", (f"{u.utt_id} {u.wav}" for u in ordered))
    _atomic_write(out / "text", (f"{u.utt_id} {u.text}".rstrip(" ") for u in ordered))
    _atomic_write(out / "utt2spk", (f"{u.utt_id} {u.speaker}" for u in ordered))
    _atomic_write(out / "spk2utt", (f"{s} {' '.join(spk2utt[s])}" for s in sorted(spk2utt, key=_byte_key)))
    _atomic_write(out / "utt2dur", (f"{u.utt_id} {u.duration:.3f}" for u in ordered))
    return out


@dataclass(frozen=True)
class SkippedEntry:
    """An utterance left out by :func:`read_data_dir`, and why.

    Attributes
    ----------
    utt_id : str
        The utterance id (for a line whose id cannot be decoded: its bytes as ``repr``).
    file : str
        The file showing the problem, with ``:<line>`` when one line is at fault.
    reason : str
        What is wrong (human readable).
    """

    utt_id: str
    file: str
    reason: str


class _Table:
    """``<id> <rest>`` lines of one data dir file, with per-line problems collected instead of raised."""

    def __init__(self, path: Path, kind: str) -> None:
        self.path = path
        self.values: dict[str, str] = {}
        self.lines: dict[str, int] = {}
        self.problems: list[tuple[str, int, str]] = []  # (utt_id, line, reason)
        dup: set[str] = set()
        try:
            raw_bytes = path.read_bytes()
        except OSError as exc:
            raise DataDirError(f"cannot read file ({exc.strerror or exc})", path) from exc
        for lineno, raw in enumerate(raw_bytes.split(b"\n"), start=1):
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as exc:
                key_bytes = raw.strip().split(maxsplit=1)[0] if raw.strip() else b""
                try:
                    key = key_bytes.decode("utf-8")
                except UnicodeDecodeError:
                    key = repr(key_bytes)
                self.problems.append((key, lineno, f"not valid UTF-8 (byte {raw[exc.start]:#04x} at column {exc.start + 1})"))
                continue
            parts = line.strip().split(maxsplit=1)
            if not parts:
                continue  # blank line
            key = parts[0]
            rest = parts[1].strip() if len(parts) > 1 else ""
            if kind == "rest" and not rest:
                self.problems.append((key, lineno, f"malformed line {line.strip()!r}: expected '<id> <value>'"))
                continue
            if kind == "token" and (not rest or len(rest.split()) != 1):
                self.problems.append((key, lineno, f"malformed line {line.strip()!r}: expected exactly two fields"))
                continue
            if kind == "text":
                rest = " ".join(rest.split())  # trailing spaces / tabs, runs of whitespace -> one space
            if key in self.values or key in dup:
                first = self.lines.get(key)
                self.problems.append((key, lineno, "duplicate id" + (f" (first on line {first})" if first else "")))
                dup.add(key)
                continue
            self.values[key] = rest
            self.lines[key] = lineno
        for key in dup:  # ambiguous: drop every occurrence
            if key in self.values:
                del self.values[key]


def _resolve_wav(value: str, base: Path) -> str:
    if value.endswith("|"):  # Kaldi extended filename: a command whose stdout is the audio
        return value
    p = Path(value)
    if not p.is_absolute():
        p = base / p
    return os.path.normpath(p)


def check_data_dir(
    path: str | os.PathLike[str], max_bad_fraction: float = DEFAULT_MAX_BAD_FRACTION
) -> tuple[list[Utterance], list[SkippedEntry]]:
    """Read a Kaldi/ESPnet data directory, leaving out (and listing) the utterances with a problem.

    Required files: ``wav.scp``, ``text``, ``utt2spk``; optional: ``utt2dur`` (durations are ``0.0`` when it
    is absent) and ``spk2utt`` (checked against ``utt2spk`` when present). Files need not be sorted (the
    result is); blank lines are ignored; ``\\r\\n`` line ends are accepted; transcripts are normalised
    (trailing spaces and tabs removed, runs of whitespace collapsed to one space; an empty transcript is
    kept as ``""``).

    An utterance is skipped, with its id, the file (and line) and the reason, when: a line of any file is
    not UTF-8 or is malformed (``wav.scp``/``spk2utt`` without a value, ``utt2spk``/``utt2dur`` without
    exactly two fields); its id is repeated within a file (every occurrence is dropped: which one is right
    is unknown); it is missing from one of the files present (e.g. in ``text`` but not in ``wav.scp``, or
    the reverse); its duration is not a finite number >= 0; ``spk2utt`` gives it another speaker; or its id
    contains ``(`` or ``)`` (sclite ``trn`` files cannot hold it). Counts are logged (a warning naming the
    first few), and :class:`DataDirError` is raised only when the skipped fraction exceeds
    ``max_bad_fraction``.

    Parameters
    ----------
    path : str or os.PathLike
        The data directory.
    max_bad_fraction : float, default 0.05
        Largest tolerated fraction of skipped utterances (over all ids seen in any file); ``0`` makes any
        problem fatal.

    Returns
    -------
    utts : list of Utterance
        The good utterances, sorted by id in byte order. Relative wav paths are resolved against the
        (absolute) data directory; pipe commands (``... |``) are kept verbatim (and never run: loading one
        fails like a missing file). Audio paths are only ever read.
    skipped : list of SkippedEntry
        The utterances left out, in id order.

    Raises
    ------
    DataDirError
        If the directory or a required file is missing or unreadable, or the skipped fraction exceeds
        ``max_bad_fraction`` (then ``path`` / ``line`` and the start of the message are those of the
        first problem, followed by the counts). Nothing else, whatever the file contents.
    ValueError
        If ``max_bad_fraction`` is not in ``[0, 1]``.
    """
    if not 0.0 <= max_bad_fraction <= 1.0:
        raise ValueError(f"max_bad_fraction must be in [0, 1], got {max_bad_fraction}")
    d = Path(path)
    if not d.is_dir():
        raise DataDirError("data directory not found", d)
    for name in ("wav.scp", "text", "utt2spk"):
        if not (d / name).is_file():
            raise DataDirError("required file missing", d / name)

    tables = [_Table(d / "wav.scp", "rest"), _Table(d / "text", "text"), _Table(d / "utt2spk", "token")]
    if (d / "utt2dur").is_file():
        tables.append(_Table(d / "utt2dur", "token"))
    wavs, texts, spks = (t.values for t in tables[:3])

    # (utt_id) -> first problem as (path, line or None, reason); every later one is only counted
    problems: dict[str, tuple[Path, int | None, str]] = {}

    def bad(uid: str, where: Path, line: int | None, reason: str) -> None:
        problems.setdefault(uid, (where, line, reason))

    all_ids: set[str] = set()
    for t in tables:
        all_ids |= t.values.keys()
        for uid, line, reason in t.problems:
            all_ids.add(uid)
            bad(uid, t.path, line, reason)
    for t in tables:  # an id every file must have
        for uid in sorted(all_ids - t.values.keys(), key=_byte_key):
            if uid not in problems:
                others = [o.path.name for o in tables if uid in o.values]
                bad(uid, t.path, None, f"utterance {uid!r} is in {', '.join(others)} but not in {t.path.name}")

    durs: dict[str, float] = {}
    if len(tables) > 3:
        dur_t = tables[3]
        for k, v in dur_t.values.items():
            try:
                x = float(v)
            except ValueError:
                x = float("nan")
            if not math.isfinite(x) or x < 0:
                bad(k, dur_t.path, dur_t.lines[k], f"duration {v!r} of {k!r} is not a finite number >= 0")
            durs[k] = x

    s2u_path = d / "spk2utt"
    if s2u_path.is_file():
        s2u = _Table(s2u_path, "rest")
        s2u_note = ""
        if s2u.problems:  # keyed by speaker: their utterances show up below as missing from spk2utt
            spk, line, reason = s2u.problems[0]
            s2u_note = f" (spk2utt:{line}, speaker {spk!r}: {reason})"
        listed: dict[str, str] = {}
        for spk, members in s2u.values.items():
            for uid in members.split():
                if uid in listed and listed[uid] != spk:
                    bad(uid, s2u_path, s2u.lines[spk], f"utterance {uid!r} listed for speakers {listed[uid]!r} and {spk!r}")
                listed.setdefault(uid, spk)
        for uid in sorted(all_ids, key=_byte_key):
            if uid in spks and listed.get(uid) != spks[uid]:
                got = listed.get(uid)
                reason = f"missing from spk2utt{s2u_note}" if got is None else f"spk2utt gives speaker {got!r}, utt2spk {spks[uid]!r}"
                bad(uid, s2u_path, None, f"utterance {uid!r}: {reason}")
        for uid in sorted(listed.keys() - all_ids, key=_byte_key):
            all_ids.add(uid)
            bad(uid, s2u_path, s2u.lines[listed[uid]], f"utterance {uid!r} is in spk2utt but in no other file")

    for uid in all_ids:
        if "(" in uid or ")" in uid:
            bad(uid, d / "wav.scp", None, f"utterance id {uid!r} contains '(' or ')', which sclite trn files cannot hold")

    skipped = [
        SkippedEntry(uid, f"{where}:{line}" if line is not None else str(where), reason)
        for uid, (where, line, reason) in sorted(problems.items(), key=lambda kv: _byte_key(kv[0]))
    ]
    good_ids = sorted(all_ids - problems.keys(), key=_byte_key)
    n_all = len(all_ids)
    if skipped:
        frac = len(skipped) / n_all
        summary = (
            f"{d}: {len(good_ids)} utterances kept, {len(skipped)} skipped ({frac:.1%} of {n_all}): "
            + "; ".join(f"{b.utt_id} [{b.file}] {b.reason}" for b in skipped[:_MAX_LISTED])
            + (f"; ... {len(skipped) - _MAX_LISTED} more" if len(skipped) > _MAX_LISTED else "")
        )
        log.warning(summary)
        if frac > max_bad_fraction:
            first_uid = skipped[0].utt_id
            where, line, reason = problems[first_uid]
            raise DataDirError(
                f"{reason} [utterance {first_uid!r}]; {len(skipped)} of {n_all} utterances bad "
                f"({frac:.1%} > max_bad_fraction={max_bad_fraction:g}): "
                + ", ".join(f"{b.utt_id} ({b.file})" for b in skipped[:_MAX_LISTED])
                + (f", ... ({len(skipped)} in all)" if len(skipped) > _MAX_LISTED else ""),
                where,
                line,
            )

    base = d.absolute()
    utts = [
        Utterance(
            utt_id=k,
            wav=_resolve_wav(wavs[k], base),
            text=texts[k],
            speaker=spks[k],
            duration=durs.get(k, 0.0),
        )
        for k in good_ids
    ]
    return utts, skipped


def write_skipped(path: str | os.PathLike[str], skipped: Iterable[SkippedEntry]) -> Path:
    """Write a skipped-utterance report as TSV with header ``utt_id file reason`` (tabs/newlines in cells
    become spaces). The caller chooses ``path``; nothing in a data dir decides where it goes."""

    def clean(x: str) -> str:
        return " ".join(x.split())

    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    _atomic_write(out, ["utt_id\tfile\treason", *(f"{clean(b.utt_id)}\t{clean(b.file)}\t{clean(b.reason)}" for b in skipped)])
    return out


def read_data_dir(
    path: str | os.PathLike[str],
    max_bad_fraction: float = DEFAULT_MAX_BAD_FRACTION,
    report: str | os.PathLike[str] | None = None,
) -> list[Utterance]:
    """Read and validate a Kaldi/ESPnet data directory; bad utterances are skipped and reported.

    See :func:`check_data_dir` for what counts as bad. ``report``: when given and some utterance was
    skipped, a TSV listing them (``utt_id file reason``) is written there (see :func:`write_skipped`).

    Returns
    -------
    list of Utterance
        The good utterances, sorted by id in byte order, wav paths resolved against the data dir.

    Raises
    ------
    DataDirError
        Missing directory or required file, or more than ``max_bad_fraction`` of the utterances bad (the
        report, when asked for, is written first).
    ValueError
        ``max_bad_fraction`` not in ``[0, 1]``.
    """
    try:
        utts, skipped = check_data_dir(path, max_bad_fraction)
    except DataDirError:
        if report is not None:
            try:  # too many bad ones: still list them all (a missing file or folder just re-raises)
                _, skipped = check_data_dir(path, 1.0)
                write_skipped(report, skipped)
            except DataDirError:
                pass
        raise
    if report is not None and skipped:
        write_skipped(report, skipped)
    return utts
