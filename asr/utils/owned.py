"""Output folders a tool owns: it deletes or replaces only what it wrote.

Every tool that writes a folder of outputs (``asr-decode``, ``asr-score``, ``asr-plot``, ``asr-inspect``,
``asr-export``) keeps, in that folder, a hidden manifest :data:`MANIFEST` (``.asr-owned.json``) listing, per
tool, the paths it wrote there (relative, POSIX; folders end with ``/``)::

    {"version": 1, "tools": {"asr-inspect": ["index.html", "utts/", "utts/a.html", ...]}}

The rules (:func:`claim_output_dir`, :class:`OwnedOutput`):

* a folder that does not exist, or is empty, is created and claimed;
* a folder with a manifest: before the new outputs are written, the entries the same tool listed are removed
  (files unlinked, folders removed only once empty), nothing else: a file the user put there stays;
* a non-empty folder without a manifest is refused (:class:`OutputDirError`, a one-line ``<path>: <reason>``)
  unless ``overwrite=True``; even then nothing is removed, the tool only writes (and so replaces) its own names
  beside the user's files.

A manifest is read as untrusted input: an entry that is absolute, holds ``..``, or resolves (through a symlinked
folder) outside the folder is ignored, and symlinks are unlinked, never followed.
"""

from __future__ import annotations

import json
import logging
import os
import stat
from pathlib import Path, PurePosixPath
from typing import Any, Iterable

from asr.utils.io import atomic_write_text

__all__ = ["MANIFEST", "OutputDirError", "read_manifest", "owned_entries", "record_owned", "remove_owned",
           "check_output_dir", "claim_output_dir", "OwnedOutput"]

log = logging.getLogger(__name__)

#: The manifest's file name, in the output folder it describes.
MANIFEST = ".asr-owned.json"
_VERSION = 1
_MAX_MANIFEST_BYTES = 64 << 20


class OutputDirError(ValueError):
    """An output folder a tool may not write (not empty and not its own, not a folder, bad manifest).

    ``str(exc)`` is ``"<path>: <reason>"``, what a CLI prints after ``asr-<tool>: ``.
    """

    def __init__(self, path: str | Path, reason: str) -> None:
        self.path, self.reason = Path(path), reason
        super().__init__(f"{path}: {reason}")


def _safe_entry(folder: Path, entry: Any) -> str | None:
    """``entry`` normalised when it is a relative path inside ``folder`` (no ``..``, not absolute, not the
    manifest, its parent folders not leaving ``folder`` through a symlink); else None."""
    if not isinstance(entry, str) or not entry or "\x00" in entry:
        return None
    is_dir = entry.endswith("/")
    p = PurePosixPath(entry.rstrip("/"))
    if p.is_absolute() or not p.parts or any(x in ("..", ".") for x in p.parts) or str(p) == MANIFEST:
        return None
    try:
        parent = (folder / p).parent.resolve()
        if parent != folder.resolve() and folder.resolve() not in parent.parents:
            return None
    except (OSError, RuntimeError):
        return None
    return str(p) + ("/" if is_dir else "")


def read_manifest(folder: str | Path) -> dict[str, list[str]] | None:
    """The manifest of ``folder``: tool name -> the entries it wrote (unsafe entries dropped, see module
    docstring); None when the folder has no manifest.

    Raises
    ------
    OutputDirError
        The manifest is not a regular file, is over 64 MiB, or is not a manifest (bad JSON or layout).
    """
    folder = Path(folder)
    path = folder / MANIFEST
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise OutputDirError(path, f"cannot read the ownership manifest ({exc.strerror})") from None
    if not stat.S_ISREG(st.st_mode):
        raise OutputDirError(path, "the ownership manifest is not a regular file")
    if st.st_size > _MAX_MANIFEST_BYTES:
        raise OutputDirError(path, f"the ownership manifest is too large ({st.st_size} bytes)")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        tools = data["tools"]
        if not isinstance(tools, dict) or not all(isinstance(v, list) for v in tools.values()):
            raise TypeError("tools must map names to lists")
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise OutputDirError(path, f"not a valid ownership manifest ({exc}); remove it to reclaim the folder") from None
    out: dict[str, list[str]] = {}
    for tool, entries in tools.items():
        safe = [e for e in (_safe_entry(folder, x) for x in entries) if e is not None]
        out[str(tool)] = list(dict.fromkeys(safe))
    return out


def _write_manifest(folder: Path, tools: dict[str, list[str]]) -> None:
    atomic_write_text(json.dumps({"version": _VERSION, "tools": tools}, indent=1) + "\n", folder / MANIFEST)


def owned_entries(folder: str | Path, tool: str | None = None) -> list[str]:
    """The entries of ``folder``'s manifest written by ``tool`` (every tool's when None); ``[]`` without one.
    Raises as :func:`read_manifest`."""
    m = read_manifest(folder) or {}
    tools = m.values() if tool is None else [m.get(tool, [])]
    return list(dict.fromkeys(e for entries in tools for e in entries))


def record_owned(folder: str | Path, tool: str, paths: Iterable[str | Path]) -> None:
    """Add ``paths`` (files, or folders given with a trailing ``/`` or existing as folders; absolute or relative
    to ``folder``, inside it) to ``tool``'s entries in ``folder``'s manifest, creating the manifest if needed.
    Call it with ``folder`` locked against other writers (read, modify, atomic write).

    Raises
    ------
    OutputDirError
        As :func:`read_manifest`, or a path outside ``folder``.
    """
    folder = Path(folder)
    tools = read_manifest(folder) or {}
    entries = tools.setdefault(tool, [])
    for p in paths:
        s = str(p)
        rel = os.path.relpath(s, folder) if os.path.isabs(s) else s
        rel = rel.replace(os.sep, "/")
        if not rel.endswith("/") and (folder / rel).is_dir() and not (folder / rel).is_symlink():
            rel += "/"
        safe = _safe_entry(folder, rel)
        if safe is None:
            raise OutputDirError(folder, f"{p} is not inside the output folder")
        if safe not in entries:
            entries.append(safe)
    _write_manifest(folder, tools)


def remove_owned(folder: str | Path, tool: str | None = None) -> list[str]:
    """Remove the entries ``tool`` (every tool when None) listed in ``folder``'s manifest: files (and symlinks,
    never followed) unlinked, then listed folders removed when empty, deepest first; a listed folder still
    holding other files stays (and stays listed). The manifest is updated. Returns the entries removed.

    Raises
    ------
    OutputDirError
        As :func:`read_manifest`.
    """
    folder = Path(folder)
    tools = read_manifest(folder)
    if not tools:
        return []
    names = [t for t in tools if tool is None or t == tool]
    removed: list[str] = []
    for t in names:
        entries = tools[t]
        files = [e for e in entries if not e.endswith("/")]
        dirs = sorted((e for e in entries if e.endswith("/")), key=lambda e: -e.count("/"))
        kept: list[str] = []
        for e in files:
            p = folder / e
            try:
                if not stat.S_ISDIR(os.lstat(p).st_mode):
                    os.unlink(p)
                    removed.append(e)
                else:
                    kept.append(e)  # a folder now where a file was: not ours
            except FileNotFoundError:
                pass
        for e in dirs:
            p = folder / e.rstrip("/")
            try:
                if stat.S_ISDIR(os.lstat(p).st_mode):
                    os.rmdir(p)
                    removed.append(e)
            except FileNotFoundError:
                pass
            except OSError:
                kept.append(e)  # not empty: holds someone else's files
        tools[t] = kept
    _write_manifest(folder, tools)
    if removed:
        log.info("removed %d earlier output(s) of %s from %s", len(removed), "/".join(names), folder)
    return removed


def _foreign(folder: Path, ignore: Iterable[str]) -> list[str]:
    skip = {MANIFEST, *ignore}
    return sorted(x for x in os.listdir(folder) if x not in skip)


def check_output_dir(folder: str | Path, tool: str, overwrite: bool = False, ignore: Iterable[str] = ()) -> None:
    """Refuse ``folder`` as ``tool``'s output folder without changing anything (see :func:`claim_output_dir`).

    Raises
    ------
    OutputDirError
        ``folder`` exists and is not a folder; or it is not empty (names in ``ignore`` and the manifest aside),
        has no manifest and ``overwrite`` is false; or its manifest is unreadable.
    """
    folder = Path(folder)
    if not os.path.lexists(folder):
        return
    if not folder.is_dir():
        raise OutputDirError(folder, "exists and is not a folder")
    if read_manifest(folder) is not None or overwrite:
        return
    foreign = _foreign(folder, ignore)
    if foreign:
        shown = ", ".join(foreign[:3]) + (", ..." if len(foreign) > 3 else "")
        raise OutputDirError(
            folder, f"not empty and not written by {tool} (holds {shown}); choose a new or empty folder, or pass overwrite=true "
            f"to write {tool}'s files beside these (files of the same names are replaced, nothing else is removed)")


def claim_output_dir(folder: str | Path, tool: str, overwrite: bool = False, ignore: Iterable[str] = (), clean: bool = True) -> list[str]:
    """Make ``folder`` ``tool``'s output folder: check it (:func:`check_output_dir`), create it, remove the
    entries ``tool`` wrote there before (:func:`remove_owned`; not when ``clean`` is false: a tool that adds to
    its earlier outputs, like ``asr-plot``) and make sure the manifest names ``tool``. Returns the entries removed.

    Raises
    ------
    OutputDirError
        As :func:`check_output_dir`.
    """
    folder = Path(folder)
    check_output_dir(folder, tool, overwrite, ignore)
    folder.mkdir(parents=True, exist_ok=True)
    removed = remove_owned(folder, tool) if clean else []
    tools = read_manifest(folder) or {}
    if tool not in tools:
        tools[tool] = []
        _write_manifest(folder, tools)
    return removed


def _snapshot(folder: Path) -> dict[str, tuple[int, int, int] | None]:
    """relative path -> ``(inode, mtime_ns, size)`` of each file, None for each folder (symlinks not followed)."""
    snap: dict[str, tuple[int, int, int] | None] = {}
    for root, dirs, files in os.walk(folder):
        rel = os.path.relpath(root, folder)
        for name in dirs:
            snap[os.path.normpath(os.path.join(rel, name))] = None
        for name in files:
            p = os.path.join(root, name)
            try:
                st = os.lstat(p)
            except OSError:
                continue
            snap[os.path.normpath(os.path.join(rel, name))] = (st.st_ino, st.st_mtime_ns, st.st_size)
    snap.pop(MANIFEST, None)
    return snap


class OwnedOutput:
    """Context manager around writing ``tool``'s outputs into ``folder``: claims it on entering
    (:func:`claim_output_dir`) and, on leaving (also after an error, so that a partial output is removed by the
    next run), records in the manifest every file and folder that is new or was rewritten meanwhile.
    ``clean=False`` keeps the tool's earlier outputs (see :func:`claim_output_dir`).

    Raises
    ------
    OutputDirError
        On entering, as :func:`claim_output_dir`.
    """

    def __init__(self, folder: str | Path, tool: str, overwrite: bool = False, clean: bool = True) -> None:
        self.folder, self.tool, self.overwrite, self.clean = Path(folder), tool, overwrite, clean
        self._before: dict[str, Any] = {}

    def __enter__(self) -> "OwnedOutput":
        claim_output_dir(self.folder, self.tool, self.overwrite, clean=self.clean)
        self._before = _snapshot(self.folder)
        return self

    def __exit__(self, *exc: Any) -> None:
        after = _snapshot(self.folder)
        new = [p.replace(os.sep, "/") + ("/" if v is None else "") for p, v in after.items() if p not in self._before or (v is not None and v != self._before[p])]
        try:
            record_owned(self.folder, self.tool, new)
        except OSError as e:  # never hide the error that ended the block
            log.warning("could not record the outputs of %s in %s: %s", self.tool, self.folder / MANIFEST, e)
