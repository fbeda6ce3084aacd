"""The decode folder format: its one writer (``asr-decode``) and reader (``asr-score``, ``asr-plot``, scripts).

A decode folder holds:

* ``results.jsonl``: one JSON object per utterance, sorted by id: ``utt_id``, ``ref``, ``hyp``, ``score`` (total
  log-probability), ``norm_score`` (the ranking score), ``tokens`` (pieces, without eos), ``n_frames`` (fbank
  frames), ``enc_frames`` (encoder frames of the first model); see :func:`hypothesis_row`; decoding audio files
  (``audio=[...]``), also ``path``: the file as given (JSON ``\\udcNN`` escapes for bytes of a name that are not
  UTF-8; the utterance id replaces whitespace, control characters and such bytes with ``_``);
* ``attention.npz``: utterance id -> float32 ``(len(tokens) + 1, enc_frames)`` attention weights, the last row
  that of the step which emitted eos (all zeros when the search stopped at the length limit);
* ``hyp.trn`` / ``ref.trn``: sclite trn files of the same text;
* ``errors.tsv``: ``file<TAB>reason`` of the inputs that could not be decoded (only when there were some; the file
  name escaped, :func:`write_errors`);
* ``segments.jsonl``: for recordings decoded in segments (:mod:`asr.decoding.longform`), one line per segment
  (``utt_id`` of the recording, ``seg_id``, ``start``/``end`` seconds, ``hyp``, ``score``); their
  ``results.jsonl`` row holds the stitched text and a ``segments`` list, and ``attention.npz`` holds one
  matrix per segment id (:func:`~asr.decoding.longform.expand_segments` gives the matching rows);
* ``meta.json``: the model's description, every field of the search's
  :class:`~asr.decoding.search.DecodingOptions` (:func:`build_meta` takes them from the dataclass), the data source
  (``data_dir``, ``dump_dir`` or ``audio``) and run statistics;
* while a decode runs, its partial files: ``results.partial.jsonl`` (rows with their ``_shard``) and
  ``.partial/`` (``settings.json`` and ``attention_<n>.npz`` shards), removed when it ends
  (:func:`save_batch`, :func:`load_partial`, :func:`remove_partial`). Each partial row carries the signature
  of its input file (:data:`INPUT_KEY`, :func:`input_signature`), so a file changed at the same path is decoded
  again on resume;
* ``.decode.lock``: held (``flock``) by the decode writing the folder (:class:`OutDirLock`); a new decode first
  removes the final files of an earlier one (:data:`OWNED_FILES`, :data:`OWNED_DIRS`, :func:`remove_stale_outputs`),
  only those that the folder's ownership manifest lists;
* ``.asr-owned.json``: that manifest (:mod:`asr.utils.owned`): the files the decode wrote. A non-empty folder
  without one is refused unless ``overwrite=true``.
"""

from __future__ import annotations

import dataclasses
import errno
import fcntl
import hashlib
import json
import logging
import os
import shutil
import stat
from pathlib import Path
from typing import Any, Iterable, Mapping

import numpy as np

from asr.decoding.search import DecodingOptions, Hypothesis
from asr.metrics.wer import write_trn
from asr.utils.io import atomic_open, atomic_write_text, remove_stale_temp_files
from asr.utils.names import escape_field, unescape_field
from asr.utils.owned import MANIFEST, OutputDirError, claim_output_dir, owned_entries, read_manifest, record_owned, remove_owned

__all__ = [
    "RESULTS", "ATTENTION", "META", "ERRORS", "PARTIAL_RESULTS", "PARTIAL_DIR", "UNRECORDED_OPTIONS",
    "hypothesis_row", "attention_matrix", "build_meta", "write_meta", "read_meta", "read_results", "read_attention", "attention_ids",
    "write_errors", "read_errors", "write_final", "save_batch", "load_partial", "remove_partial", "write_partial_settings",
    "SEGMENTS", "INPUT_KEY", "LOCK_FILE", "OWNED_FILES", "OWNED_DIRS", "DECODE_TOOL", "RESUME_NAMES", "SHARDS_DIR", "SIGNATURE_BLOCK", "OutDirLock", "remove_stale_outputs", "input_signature",
]

log = logging.getLogger(__name__)

RESULTS = "results.jsonl"
ATTENTION = "attention.npz"
META = "meta.json"
ERRORS = "errors.tsv"
PARTIAL_RESULTS = "results.partial.jsonl"
PARTIAL_DIR = ".partial"
SEGMENTS = "segments.jsonl"
#: Key of a partial row holding its input file's :func:`input_signature` (left out of ``results.jsonl``).
INPUT_KEY = "_input"
LOCK_FILE = ".decode.lock"
#: Largest attention matrix ``(U + 1) x S`` read back (an hour of 40 ms frames by 2000 tokens), and all of a folder's.
MAX_ATTENTION_ELEMENTS = 2000 * 90_000
MAX_ATTENTION_TOTAL = 2_000_000_000
#: Bytes hashed at each end of an input file by :func:`input_signature`.
SIGNATURE_BLOCK = 64 * 1024
#: Final outputs a decode writes in its folder: files, then the folders other tools write about its results
#: (``asr-score``/``asr-plot``/``asr-inspect`` outputs). A new decode removes those of an earlier one that the
#: folder's ownership manifest lists (:func:`remove_stale_outputs`), so that no file of an earlier run is left
#: next to the new results, and nothing else.
OWNED_FILES = (RESULTS, ATTENTION, "hyp.trn", "ref.trn", ERRORS, META, SEGMENTS)
OWNED_DIRS = ("scoring", "plots", "report")
#: The tool name of a decode in an output folder's manifest (:mod:`asr.utils.owned`).
DECODE_TOOL = "asr-decode"
#: The parts of a parallel decode (:mod:`asr.decoding.parallel`).
SHARDS_DIR = ".shards"
#: A decode's own working files, left to the resume logic and ignored when deciding whether a folder is empty.
RESUME_NAMES = (LOCK_FILE, PARTIAL_DIR, PARTIAL_RESULTS, SHARDS_DIR)

#: Search options of decode folders written before ``meta.json`` recorded them: the values those decodes used
#: (``conf/decode.yaml`` of the time; no joint CTC decoding existed before ``ctc_weight`` was recorded, no end
#: detection before ``end_detect_m``). Since
#: :func:`build_meta`, every field of :class:`DecodingOptions` is recorded.
UNRECORDED_OPTIONS = {"ctc_weight": 0.0, "length_penalty": 0.5, "max_len_ratio": 1.5, "min_len": 5, "end_detect_m": 0, "end_detect_d": -10.0,
                      "att_window_back": -1, "att_window_ahead": -1, "att_window_restart": True, "hard_attention": False, "no_speech_db": 0.0, "lm_weight": 0.0}


# ---- rows and attention ---------------------------------------------------------------------------------------
def attention_matrix(h: Hypothesis) -> np.ndarray:
    """float32 ``(len(h.tokens) + 1, S)`` attention of a hypothesis; a hypothesis stopped at the length limit
    without eos (``len(tokens)`` rows) gets an all-zero eos row, so every matrix has the eos step last."""
    att = h.attention.float().numpy()
    if att.shape[0] == len(h.tokens):
        att = np.concatenate([att, np.zeros((1, att.shape[1]), dtype=att.dtype)], 0)
    return att.astype(np.float32)


def hypothesis_row(utt_id: str, ref: str, hyp: str, h: Hypothesis, pieces: list[str], n_frames: int, enc_frames: int) -> dict[str, Any]:
    """One line of ``results.jsonl`` (module docstring); scores rounded to 4 decimals."""
    return {
        "utt_id": utt_id,
        "ref": ref,
        "hyp": hyp,
        "score": round(h.score, 4),
        "norm_score": round(h.norm_score, 4),
        "tokens": pieces,
        "n_frames": int(n_frames),
        "enc_frames": int(enc_frames),
    }


# ---- meta.json --------------------------------------------------------------------------------------------------
def build_meta(opts: DecodingOptions, **fields: Any) -> dict[str, Any]:
    """``meta.json`` content: ``fields`` (model description, data source, statistics) plus every field of
    ``opts`` (``dataclasses.asdict``), so that a new search option is recorded without touching this module."""
    return {**fields, **dataclasses.asdict(opts)}


def write_meta(meta: Mapping[str, Any], decode_dir: str | Path) -> Path:
    """Write ``<decode_dir>/meta.json`` atomically."""
    path = atomic_write_text(json.dumps(dict(meta), indent=2) + "\n", Path(decode_dir) / META)
    _record(Path(decode_dir), META)
    return path


def read_meta(decode_dir: str | Path) -> dict[str, Any]:
    """``<decode_dir>/meta.json``, with ``frame_shift_s=0.01`` and ``subsampling=1`` when absent (a warning when
    the file is missing) and, for folders written before a search option was recorded, the value decodes
    used then (:data:`UNRECORDED_OPTIONS`; not today's defaults, which may differ).

    Raises
    ------
    ValueError
        The file is not a JSON object (the message names it).
    """
    path = Path(decode_dir) / META
    meta: dict[str, Any] = {}
    if path.is_file():
        try:
            meta = json.loads(path.read_text(encoding="utf-8"))
        except json.JSONDecodeError as exc:
            raise ValueError(f"{path}: not valid JSON ({exc})") from exc
        if not isinstance(meta, dict):
            raise ValueError(f"{path}: not a JSON object")
    else:
        log.warning("%s not found: assuming frame_shift_s=0.01, subsampling=1", path)
    meta.setdefault("frame_shift_s", 0.01)
    meta.setdefault("subsampling", 1)
    for k, v in UNRECORDED_OPTIONS.items():
        meta.setdefault(k, v)
    return meta


# ---- results.jsonl, attention.npz ---------------------------------------------------------------------------------
def read_results(decode_dir: str | Path) -> list[dict[str, Any]]:
    """Read ``<decode_dir>/results.jsonl`` (one JSON object per utterance, file order).

    Raises
    ------
    FileNotFoundError
        If the file does not exist.
    ValueError
        If a line is not a JSON object, lacks ``utt_id``/``ref``/``hyp`` or has one that is not a string, or an
        utt id repeats (the message names the file and line: ``<path>:<line>: <reason>``).
    """
    path = Path(decode_dir) / RESULTS
    rows: list[dict[str, Any]] = []
    seen: set[str] = set()
    with path.open(encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as e:
                raise ValueError(f"{path}:{lineno}: not valid JSON ({e})") from e
            if not isinstance(row, dict):
                raise ValueError(f"{path}:{lineno}: not a JSON object")
            missing = [k for k in ("utt_id", "ref", "hyp") if k not in row]
            if missing:
                raise ValueError(f"{path}:{lineno}: missing key(s) {missing}")
            bad = [f"{k} is {type(row[k]).__name__}" for k in ("utt_id", "ref", "hyp") if not isinstance(row[k], str)]
            if bad:
                raise ValueError(f"{path}:{lineno}: {', '.join(bad)}, not a string")
            if row["utt_id"] in seen:
                raise ValueError(f"{path}:{lineno}: duplicate utt_id {row['utt_id']!r}")
            seen.add(row["utt_id"])
            rows.append(row)
    return rows


def read_attention(decode_dir: str | Path, utt_ids: Iterable[str] | None = None) -> dict[str, np.ndarray]:
    """Attention matrices of ``<decode_dir>/attention.npz`` (all, or those of ``utt_ids``), ``(U + 1, S)`` each.

    Raises
    ------
    FileNotFoundError
        No ``attention.npz``.
    ValueError
        An id of ``utt_ids`` has no matrix (the message names the file and the id); a member larger than
        :data:`MAX_ATTENTION_ELEMENTS` elements, all together more than :data:`MAX_ATTENTION_TOTAL`, or an object
        array (:func:`asr.utils.safe_read.safe_npz_shapes`, from the headers, before allocation).
    """
    path = Path(decode_dir) / ATTENTION
    if not path.exists():
        raise FileNotFoundError(f"{path} not found")
    from asr.utils.safe_read import safe_npz_shapes

    # Shapes from the .npy headers before anything is allocated: a small file cannot ask for gigabytes.
    safe_npz_shapes(path, max_elements=MAX_ATTENTION_ELEMENTS, max_total_elements=MAX_ATTENTION_TOTAL)
    with np.load(path) as z:
        ids = list(z.files) if utt_ids is None else list(utt_ids)
        missing = [u for u in ids if u not in z.files]
        if missing:
            raise ValueError(f"{path}: no attention for utterance(s) {missing[:5]}")
        return {u: z[u] for u in ids}


def attention_ids(decode_dir: str | Path) -> list[str]:
    """The utterance ids that ``<decode_dir>/attention.npz`` holds a matrix for (FileNotFoundError when absent)."""
    with np.load(Path(decode_dir) / ATTENTION) as z:
        return list(z.files)


def write_errors(errors: list[tuple[str, str]], out_dir: str | Path) -> None:
    """``<out_dir>/errors.tsv``: a ``file<TAB>reason`` header and one line per error, so that a line holds one tab:
    the file name escaped (:func:`asr.utils.names.escape_field`: TAB, newline, other control characters and bytes that
    are not UTF-8 as ``\\t``, ``\\n``, ``\\xNN``; :func:`read_errors` gives it back), whitespace runs in the reason
    collapsed to one space."""
    def clean(x: str) -> str:
        return " ".join(x.split())

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_text("file\treason\n" + "".join(f"{escape_field(p)}\t{clean(r)}\n" for p, r in errors), out_dir / ERRORS)
    _record(out_dir, ERRORS)


def read_errors(decode_dir: str | Path) -> list[tuple[str, str]]:
    """The ``(file, reason)`` rows of ``<decode_dir>/errors.tsv`` (header skipped); ``[]`` when there is none.
    A line without a tab gives ``(line, "")``; the file names are unescaped (:func:`write_errors`; a field that is not
    a valid escape is kept as written)."""
    path = Path(decode_dir) / ERRORS
    if not path.is_file():
        return []
    lines = [x for x in path.read_text(encoding="utf-8", errors="replace").splitlines() if x.strip()]
    if lines and lines[0].startswith("file\t"):
        lines = lines[1:]
    def name(field: str) -> str:
        try:
            return unescape_field(field)
        except ValueError:
            return field

    return [(name(x.split("\t", 1)[0]), x.split("\t", 1)[1]) if "\t" in x else (name(x), "") for x in lines]


def write_final(out_dir: str | Path, rows: Mapping[str, dict], atts: Mapping[str, np.ndarray], segment_lines: list[dict] | None = None) -> list[str]:
    """Write ``results.jsonl`` (sorted by id; a row's :data:`INPUT_KEY` left out), ``attention.npz`` (compressed,
    every matrix of ``atts``: per utterance, or per segment of a recording decoded in segments), ``hyp.trn``,
    ``ref.trn`` and, when ``segment_lines`` is not empty, ``segments.jsonl``; returns the sorted ids."""
    out_dir = Path(out_dir)
    ids = sorted(rows)
    clean = {u: {k: v for k, v in rows[u].items() if k != INPUT_KEY} for u in ids}
    atomic_write_text("".join(json.dumps(clean[u]) + "\n" for u in ids), out_dir / RESULTS)
    with atomic_open(out_dir / ATTENTION, "wb") as f:
        np.savez_compressed(f, **{u: atts[u] for u in sorted(atts)})
    write_trn(out_dir / "hyp.trn", {u: clean[u]["hyp"] for u in ids})
    write_trn(out_dir / "ref.trn", {u: clean[u]["ref"] for u in ids})
    _record(out_dir, RESULTS, ATTENTION, "hyp.trn", "ref.trn")
    if segment_lines:
        atomic_write_text("".join(json.dumps(x) + "\n" for x in segment_lines), out_dir / SEGMENTS)
        _record(out_dir, SEGMENTS)
    return ids


# ---- input signatures, lock, stale outputs -------------------------------------------------------------
def input_signature(path: str | Path) -> str:
    """Content signature of an input file (following symlinks), part of the resume key, so that a stored result
    is not reused for other content at the same path: ``"<size>:<sha256>"``, the SHA-256 of the size and of the
    first and last 64 KiB blocks (:data:`SIGNATURE_BLOCK`; the whole file when it is at most 128 KiB). Not the
    modification time: swapping two files' contents while keeping sizes and mtimes still changes both keys. A
    change confined to the middle of a file longer than 128 KiB, keeping its size, goes unnoticed (audio edits
    move the data, the header or the end; hashing the whole of every file would cost a full read per resume).
    A file that is not regular (FIFO, device) is not read: ``"special:<mode>:<size>:<mtime_ns>"``. ``""`` when
    the file cannot be stat'ed or read.
    """
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
    except OSError:
        try:
            st = os.stat(path)
        except OSError:
            return ""
        return f"special:{st.st_mode:o}:{st.st_size}:{st.st_mtime_ns}"
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            return f"special:{st.st_mode:o}:{st.st_size}:{st.st_mtime_ns}"
        h = hashlib.sha256(f"{st.st_size}\n".encode())
        with os.fdopen(os.dup(fd), "rb") as f:
            h.update(f.read(SIGNATURE_BLOCK))
            if st.st_size > SIGNATURE_BLOCK:
                f.seek(max(SIGNATURE_BLOCK, st.st_size - SIGNATURE_BLOCK))
                h.update(f.read(SIGNATURE_BLOCK))
        return f"{st.st_size}:{h.hexdigest()}"
    except OSError:
        return ""
    finally:
        os.close(fd)


class OutDirLock:
    """Exclusive advisory lock (``fcntl.flock``) on ``out_dir/.decode.lock`` for the duration of a decode.

    Raises
    ------
    RuntimeError
        On entering, when another process holds the lock (another decode writes into ``out_dir``); the
        message names the directory and the pid stored in the lock file.
    """

    def __init__(self, out_dir: str | Path) -> None:
        self.path = Path(out_dir) / LOCK_FILE
        self.fd: int | None = None

    def __enter__(self) -> "OutDirLock":
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            holder = os.read(fd, 64).decode(errors="replace").strip() or "?"
            os.close(fd)
            if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                raise RuntimeError(f"out_dir {self.path.parent} is in use by another asr-decode (pid {holder}); wait for it or choose another out_dir") from None
            raise
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        self.fd = fd
        return self

    def __exit__(self, *exc: Any) -> None:
        if self.fd is not None:
            os.close(self.fd)  # releases the lock; the file stays (removing it would race a waiting decode)
            self.fd = None


def remove_stale_outputs(out_dir: str | Path, *, overwrite: bool = False) -> list[str]:
    """Prepare ``out_dir`` for a new decode (call it holding :class:`OutDirLock`): remove the final outputs an
    earlier decode wrote there, and only those (:mod:`asr.utils.owned`).

    The decode owns the files its manifest (``.asr-owned.json``, tool ``asr-decode``) lists: those are removed,
    and the manifest is written at once (claiming the folder), the final files being added as they are written
    (:func:`write_final`, :func:`write_errors`, :func:`write_meta`). Each of :data:`OWNED_DIRS` (``scoring/``,
    ``plots/``, ``report/``: ``asr-score``/``asr-plot``/``asr-inspect`` outputs about the earlier results) loses
    the files its own manifest lists and is removed once empty; one without a manifest (the user's) is left
    alone, with a warning. Files the decode does not own are never removed. The decode's resume files
    (:data:`LOCK_FILE`, :data:`PARTIAL_DIR`, :data:`PARTIAL_RESULTS`, :data:`SHARDS_DIR`) are left alone and
    do not count when deciding whether the folder is empty.

    Parameters
    ----------
    out_dir : str or Path
        The decode folder (created when missing).
    overwrite : bool
        Decode into a non-empty folder without a manifest (a folder the user made, or a decode folder of a
        version without manifests): nothing there is removed, the decode's own names are replaced.

    Returns
    -------
    list of str
        The entries removed (folders with a trailing ``/``).

    Raises
    ------
    asr.utils.owned.OutputDirError
        ``out_dir`` is not empty (resume files aside), has no manifest and ``overwrite`` is false (a
        ``ValueError``; the message is ``<out_dir>: <reason>``), or its manifest is unreadable.
    """
    out_dir = Path(out_dir)
    try:
        removed = claim_output_dir(out_dir, DECODE_TOOL, overwrite=overwrite, ignore=RESUME_NAMES)
    except OutputDirError:
        _drop_own_lock(out_dir)
        raise
    for name in OWNED_DIRS:
        sub = out_dir / name
        if not sub.is_dir() or sub.is_symlink():
            continue
        if read_manifest(sub) is None:
            log.warning("%s was not written by an asr tool: left alone (it may describe earlier results)", sub)
            continue
        removed += [f"{name}/{e}" for e in remove_owned(sub)]
        if not any(owned_entries(sub)) and [x.name for x in sub.iterdir()] == [MANIFEST]:
            (sub / MANIFEST).unlink()
            sub.rmdir()
            removed.append(name + "/")
    if removed:
        log.info("removed earlier outputs from %s: %s", out_dir, ", ".join(removed[:20]) + (", ..." if len(removed) > 20 else ""))
    return removed


def _drop_own_lock(out_dir: Path) -> None:
    """Remove ``out_dir``'s lock file when this process wrote it (:class:`OutDirLock`), so that a refused folder
    keeps no file of the decode."""
    lock = out_dir / LOCK_FILE
    try:
        if lock.read_text(encoding="utf-8", errors="replace").strip() == str(os.getpid()):
            lock.unlink()
    except OSError:
        pass


def _record(out_dir: Path, *names: str) -> None:
    """Add ``names`` to the decode's entries in ``out_dir``'s manifest (:mod:`asr.utils.owned`)."""
    record_owned(out_dir, DECODE_TOOL, names)


# ---- partial files (resuming) ----------------------------------------------------------------------------------
def remove_partial(out_dir: str | Path) -> None:
    """Remove ``results.partial.jsonl`` and ``.partial/`` (settings and attention shards)."""
    out_dir = Path(out_dir)
    (out_dir / PARTIAL_RESULTS).unlink(missing_ok=True)
    shutil.rmtree(out_dir / PARTIAL_DIR, ignore_errors=True)


def write_partial_settings(out_dir: str | Path, settings: Mapping[str, Any]) -> None:
    """Start the partial files of a new decode: remove old ones and write ``.partial/settings.json``, unless
    that file exists (a resumed decode keeps its partial files)."""
    out_dir = Path(out_dir)
    if not (out_dir / PARTIAL_DIR / "settings.json").exists():
        remove_partial(out_dir)
        atomic_write_text(json.dumps(dict(settings), indent=2) + "\n", out_dir / PARTIAL_DIR / "settings.json")


def load_partial(out_dir: str | Path, settings: dict[str, Any], wanted: dict[str, tuple[str, int, str]] | None) -> tuple[dict[str, dict], dict[str, np.ndarray], int]:
    """Rows and attention of the utterances a previous, interrupted decode of ``out_dir`` finished.

    ``wanted`` maps each utterance id to decode to its ``(ref, n_frames, input signature)``; a stored row is
    kept only when its id is wanted with the same ref, frame count and input file signature (size and a
    hash of the content's first and last blocks, :func:`input_signature`, stored under :data:`INPUT_KEY`: a changed file at the same
    path is decoded again), its JSON line is complete and its attention is in its shard. ``wanted`` None keeps
    every complete row with its attention: the caller then compares each row's ``ref``, ``n_frames`` and
    :data:`INPUT_KEY` with its utterance before reusing it (``asr-decode`` does so as the engine reaches it). Partial files written with other ``settings`` (or without settings) are removed with a
    warning. Returns ``(rows, attention, next_shard_number)``; nothing found gives ``({}, {}, 0)``.
    """
    out_dir = Path(out_dir)
    part_dir, part_jsonl = out_dir / PARTIAL_DIR, out_dir / PARTIAL_RESULTS
    if not part_dir.exists() and not part_jsonl.exists():
        return {}, {}, 0
    try:
        stored = json.loads((part_dir / "settings.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        stored = None
    if stored != settings:
        changed = sorted(k for k in set(settings) | set(stored or {}) if (stored or {}).get(k) != settings.get(k))
        log.warning("partial decode results in %s were made with other settings (%s): starting over", out_dir, ", ".join(changed) or "no settings.json")
        remove_partial(out_dir)
        return {}, {}, 0
    remove_stale_temp_files(part_dir)
    shard_nums = [int(p.stem.split("_", 1)[1]) for p in part_dir.glob("attention_*.npz") if p.stem.split("_", 1)[1].isdigit()]
    next_shard = max(shard_nums, default=-1) + 1
    lines = part_jsonl.read_text(encoding="utf-8", errors="replace").split("\n") if part_jsonl.exists() else []
    by_shard: dict[int, dict[str, dict]] = {}
    for k, line in enumerate(lines):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
            shard = int(row.pop("_shard"))
            uid = row["utt_id"]
        except (ValueError, KeyError, TypeError):
            last = all(not x.strip() for x in lines[k + 1 :])
            (log.info if last else log.warning)("ignoring %s line %d of %s", "truncated last" if last else "unreadable", k + 1, part_jsonl)
            continue
        by_shard.setdefault(shard, {})[uid] = row
    rows: dict[str, dict] = {}
    atts: dict[str, np.ndarray] = {}
    for shard, shard_rows in sorted(by_shard.items()):
        try:
            with np.load(part_dir / f"attention_{shard}.npz") as z:
                for uid, row in shard_rows.items():
                    if uid in z.files and (wanted is None or wanted.get(uid) == (row.get("ref"), row.get("n_frames"), row.get(INPUT_KEY))):
                        rows[uid], atts[uid] = row, z[uid]
        except (OSError, ValueError) as exc:
            log.warning("ignoring attention shard %d of %s: %s", shard, part_dir, exc)
    # Keep only the usable lines, so that appending cannot glue a new row onto a truncated one.
    atomic_write_text("".join(json.dumps({**rows[u], "_shard": s}) + "\n" for s, sr in sorted(by_shard.items()) for u in sr if u in rows), part_jsonl)
    return rows, atts, next_shard


def save_batch(out_dir: str | Path, shard: int, rows: list[dict], atts: dict[str, np.ndarray], part_file: Any) -> None:
    """Store one decoded batch: its attention shard atomically first, then its rows (fsynced) to the open
    ``results.partial.jsonl`` ``part_file``."""
    with atomic_open(Path(out_dir) / PARTIAL_DIR / f"attention_{shard}.npz", "wb") as f:
        np.savez(f, **atts)
    part_file.write("".join(json.dumps({**r, "_shard": shard}) + "\n" for r in rows))
    part_file.flush()
    os.fsync(part_file.fileno())
