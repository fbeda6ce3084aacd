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

import math
import os
import tempfile
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

__all__ = ["Utterance", "DataDirError", "write_data_dir", "read_data_dir"]

_MAX_LISTED = 5


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


def _read_table(path: Path, kind: str) -> dict[str, str]:
    """Read ``<id> <rest>`` lines; ``kind`` is 'rest' (non-empty rest), 'optional' (rest may be empty) or
    'token' (exactly one more field). Blank lines are skipped."""
    table: dict[str, str] = {}
    first_line: dict[str, int] = {}
    with open(path, encoding="utf-8", newline=None) as f:
        for lineno, raw in enumerate(f, start=1):
            line = raw.rstrip("\n")
            if not line.strip():
                continue
            parts = line.strip().split(maxsplit=1)
            key = parts[0]
            rest = parts[1].strip() if len(parts) > 1 else ""
            if kind == "rest" and not rest:
                raise DataDirError(f"malformed line {line!r}: expected '<id> <value>'", path, lineno)
            if kind == "token" and (not rest or len(rest.split()) != 1):
                raise DataDirError(f"malformed line {line!r}: expected exactly two fields", path, lineno)
            if key in table:
                raise DataDirError(f"duplicate id {key!r} (first on line {first_line[key]})", path, lineno)
            table[key] = rest
            first_line[key] = lineno
    return table


def _check_same_ids(ref: dict[str, str], ref_path: Path, other: dict[str, str], other_path: Path) -> None:
    missing_in_other = ref.keys() - other.keys()
    if missing_in_other:
        raise DataDirError(
            f"{len(missing_in_other)} utterance id(s) of {ref_path.name} missing here: {_preview(missing_in_other)}",
            other_path,
        )
    missing_in_ref = other.keys() - ref.keys()
    if missing_in_ref:
        raise DataDirError(
            f"{len(missing_in_ref)} utterance id(s) of {other_path.name} missing here: {_preview(missing_in_ref)}",
            ref_path,
        )


def _resolve_wav(value: str, base: Path) -> str:
    if value.endswith("|"):  # Kaldi extended filename: a command whose stdout is the audio
        return value
    p = Path(value)
    if not p.is_absolute():
        p = base / p
    return os.path.normpath(p)


def read_data_dir(path: str | os.PathLike[str]) -> list[Utterance]:
    """Read and validate a Kaldi/ESPnet data directory.

    Required: ``wav.scp``, ``text``, ``utt2spk``. Optional: ``utt2dur`` (durations are ``0.0`` when it is
    absent) and ``spk2utt`` (checked against ``utt2spk`` when present). Blank lines are ignored.

    Parameters
    ----------
    path : str or os.PathLike
        The data directory.

    Returns
    -------
    list of Utterance
        Sorted by utterance id in byte order. Relative wav paths are resolved against the (absolute)
        data directory; pipe commands (``... |``) are kept verbatim.

    Raises
    ------
    DataDirError
        If the directory or a required file is missing; a line is malformed (``wav.scp`` without a path,
        ``utt2spk`` / ``utt2dur`` without exactly two fields, a duration that is not a finite number >= 0);
        an id is duplicated within a file; the files do not hold the same utterance ids (the message names
        the file that lacks them and lists a few); ``spk2utt`` disagrees with ``utt2spk``.
    """
    d = Path(path)
    if not d.is_dir():
        raise DataDirError("data directory not found", d)
    for name in ("wav.scp", "text", "utt2spk"):
        if not (d / name).is_file():
            raise DataDirError("required file missing", d / name)

    wav_path, text_path, spk_path = d / "wav.scp", d / "text", d / "utt2spk"
    wavs = _read_table(wav_path, "rest")
    texts = _read_table(text_path, "optional")
    spks = _read_table(spk_path, "token")
    _check_same_ids(wavs, wav_path, texts, text_path)
    _check_same_ids(wavs, wav_path, spks, spk_path)

    durs: dict[str, float] = {}
    dur_path = d / "utt2dur"
    if dur_path.is_file():
        raw = _read_table(dur_path, "token")
        _check_same_ids(wavs, wav_path, raw, dur_path)
        for k, v in raw.items():
            try:
                x = float(v)
            except ValueError:
                x = float("nan")
            if not math.isfinite(x) or x < 0:
                raise DataDirError(f"duration {v!r} of {k!r} is not a finite number >= 0", dur_path)
            durs[k] = x

    s2u_path = d / "spk2utt"
    if s2u_path.is_file():
        expected: dict[str, set[str]] = {}
        for u, s in spks.items():
            expected.setdefault(s, set()).add(u)
        got = {s: set(v.split()) for s, v in _read_table(s2u_path, "rest").items()}
        if got != expected:
            bad = {s for s in expected.keys() | got.keys() if expected.get(s) != got.get(s)}
            raise DataDirError(f"disagrees with utt2spk for speaker(s): {_preview(bad)}", s2u_path)

    base = d.absolute()
    return [
        Utterance(
            utt_id=k,
            wav=_resolve_wav(wavs[k], base),
            text=texts[k],
            speaker=spks[k],
            duration=durs.get(k, 0.0),
        )
        for k in sorted(wavs, key=_byte_key)
    ]
