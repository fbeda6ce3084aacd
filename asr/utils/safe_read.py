"""One reader for untrusted files: the files a model directory names, and ``.npz`` archives of decode folders.

Every file a model directory's ``config.yaml`` names (weights, CMVN, tokenizer; the config itself and the optional
``checksums.sha256``) is read through :func:`read_bytes` / :func:`open_inside`, which enforce:

* **inside the folder**: the name is a relative path (no absolute path, no ``..``, no NUL, no backslash); the path
  is resolved (symlinks followed) and must stay inside the folder's own resolved path. The one exception is the
  layout of a Hugging Face cache snapshot (``.../snapshots/<rev>/<file>`` a symlink to ``.../blobs/<sha>`` of the
  same repository folder), which ``huggingface_hub.snapshot_download`` creates: a link into that ``blobs`` folder is
  accepted;
* **regular files only**: a FIFO, a device (``/dev/zero``), a socket or a folder is refused before it is opened for
  reading (it is then opened with ``O_NONBLOCK`` and checked again on the open descriptor, so a file swapped
  meanwhile for a FIFO cannot hang the reader);
* **a size cap per kind** (:data:`MAX_BYTES`): config 1 MiB, tokenizer 50 MiB, weights 2 GiB, ...; the size is
  checked from ``fstat`` before reading, and a read never takes more than the cap.

YAML (:func:`load_yaml`) is parsed by ``yaml`` 's safe loader after one pass over its events that refuses anchors
and aliases (so neither an alias bomb, a 1.5 KB file expanding to gigabytes, nor a self-referencing structure can be
built) and nesting deeper than :data:`MAX_YAML_DEPTH`: what a model config needs, nothing more.

``.npz`` archives (:func:`safe_npz_shapes`): the shape and dtype of every member are read from its ``.npy`` header
through :mod:`zipfile` (``numpy.lib.format.read_magic`` / ``read_array_header_1_0`` / ``_2_0``) before anything is
allocated; object arrays, members larger than the caller's element limit, and members whose stored size cannot
hold what their header announces are refused. ``asr.decoding.results.read_attention`` can call it before
``numpy.load``.

Every refusal is an :class:`UntrustedFileError` (a ``ValueError``; :class:`MissingFileError`, also a
``FileNotFoundError``, when the file does not exist) whose message is ``<path>: <reason>``.
"""

from __future__ import annotations

import hashlib
import os
import stat
import zipfile
from pathlib import Path, PurePosixPath
from typing import Any, Iterator

import numpy as np
import yaml

__all__ = ["UntrustedFileError", "MissingFileError", "MAX_BYTES", "MAX_YAML_DEPTH", "resolve_inside", "open_inside", "read_bytes", "read_text",
           "load_yaml", "read_yaml", "sha256_inside", "safe_npz_shapes"]

_MiB = 1 << 20
#: Size cap in bytes per kind of untrusted file.
MAX_BYTES = {
    "config": 1 * _MiB,
    "checksums": 1 * _MiB,
    "tokenizer": 50 * _MiB,
    "cmvn": 64 * _MiB,
    "weights": 2 << 30,
    "npz": 4 << 30,
}
#: Deepest nesting of mappings/sequences a YAML file may have (a model config needs 4).
MAX_YAML_DEPTH = 32
_MAX_YAML_EVENTS = 200_000


class UntrustedFileError(ValueError):
    """An untrusted file that is refused (outside its folder, not a regular file, too large, malformed).

    ``str(exc)`` is ``"<path>: <reason>"``.

    Attributes
    ----------
    path : Path
    reason : str
    """

    def __init__(self, path: str | os.PathLike[str], reason: str) -> None:
        self.path, self.reason = Path(path), reason
        super().__init__(f"{path}: {reason}")

    def __reduce__(self) -> Any:
        return (type(self), (self.path, self.reason))


class MissingFileError(UntrustedFileError, FileNotFoundError):
    """The file does not exist (also a ``FileNotFoundError``)."""


def _check_name(root: Path, name: Any) -> PurePosixPath:
    if not isinstance(name, str) or not name:
        raise UntrustedFileError(root, f"file name {name!r} is not a non-empty string")
    where = root / name if "\x00" not in name else root
    if "\x00" in name or "\\" in name:
        raise UntrustedFileError(where, "file name holds a NUL or a backslash")
    p = PurePosixPath(name)
    if p.is_absolute() or name.startswith("~"):
        raise UntrustedFileError(root, f"{name!r} is an absolute path; files are named relative to the folder")
    if any(part == ".." for part in p.parts):
        raise UntrustedFileError(where, f"the name holds '..'; files must stay inside {root}")
    return p


def resolve_inside(root: str | os.PathLike[str], name: Any, kind: str = "config") -> Path:
    """The resolved path of the regular file ``name`` inside folder ``root``, checked (module docstring).

    Parameters
    ----------
    root : path of the folder (a model directory)
    name : str
        A relative POSIX path, as a config names it.
    kind : str
        A key of :data:`MAX_BYTES`: the size cap.

    Returns
    -------
    Path
        The file's resolved path (no symlink left).

    Raises
    ------
    MissingFileError
        ``name`` does not exist (a dangling link included).
    UntrustedFileError
        ``name`` is not a string, absolute, holds ``..`` / NUL / backslash, resolves outside ``root``, is not a
        regular file (FIFO, device, folder, socket) or is larger than the cap of ``kind``.
    """
    root = Path(root)
    p = _check_name(root, name)
    target = root / p
    try:
        real_root = root.resolve(strict=True)
    except FileNotFoundError:
        raise MissingFileError(root, "no such folder") from None
    except (OSError, RuntimeError) as exc:
        raise UntrustedFileError(root, f"cannot resolve the folder ({exc})") from None
    try:
        real = target.resolve(strict=True)
    except FileNotFoundError:
        raise MissingFileError(target, "no such file") from None
    except (OSError, RuntimeError) as exc:  # a symlink loop, a permission error
        raise UntrustedFileError(target, f"cannot resolve the path ({exc})") from None
    if real != real_root and real_root not in real.parents:
        blobs = real_root.parent.parent / "blobs"
        if not (real_root.parent.name == "snapshots" and blobs in real.parents):
            raise UntrustedFileError(target, f"resolves to {real}, outside {real_root}")
    try:
        st = os.stat(real)
    except OSError as exc:
        raise UntrustedFileError(target, f"cannot stat ({exc.strerror})") from None
    _check_stat(target, st, kind)
    return real


def _check_stat(where: Path, st: os.stat_result, kind: str) -> None:
    if not stat.S_ISREG(st.st_mode):
        what = ("a folder" if stat.S_ISDIR(st.st_mode) else "a FIFO" if stat.S_ISFIFO(st.st_mode) else
                "a device" if stat.S_ISCHR(st.st_mode) or stat.S_ISBLK(st.st_mode) else "a socket" if stat.S_ISSOCK(st.st_mode) else "not a file")
        raise UntrustedFileError(where, f"not a regular file ({what})")
    cap = MAX_BYTES[kind]
    if st.st_size > cap:
        raise UntrustedFileError(where, f"{st.st_size:,} bytes, more than the {cap:,} allowed for a {kind} file")


class open_inside:
    """Context manager: a read-only binary file object of the checked file ``name`` inside ``root``
    (:func:`resolve_inside`), opened without blocking and checked again on the open descriptor.

    Attributes
    ----------
    path : Path
        The resolved path; ``size`` : int, its size in bytes.

    Raises
    ------
    MissingFileError, UntrustedFileError
        As :func:`resolve_inside`; the open file is not the checked one's kind (swapped meanwhile).
    """

    def __init__(self, root: str | os.PathLike[str], name: Any, kind: str = "config") -> None:
        self.where = Path(root) / str(name)
        self.kind = kind
        self.path = resolve_inside(root, name, kind)
        try:
            fd = os.open(self.path, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_CLOEXEC", 0))
        except OSError as exc:
            raise UntrustedFileError(self.where, f"cannot open ({exc.strerror})") from None
        try:
            st = os.fstat(fd)
            _check_stat(self.where, st, kind)
            os.set_blocking(fd, True)
        except BaseException:
            os.close(fd)
            raise
        self.size = st.st_size
        self.file = os.fdopen(fd, "rb")

    def __enter__(self) -> "open_inside":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.file.close()

    def read(self) -> bytes:
        """The whole file (at most the cap of its kind, even if it grew after the check)."""
        data = self.file.read(MAX_BYTES[self.kind] + 1)
        if len(data) > MAX_BYTES[self.kind]:
            raise UntrustedFileError(self.where, f"more than the {MAX_BYTES[self.kind]:,} bytes allowed for a {self.kind} file")
        return data

    @property
    def fd_path(self) -> str:
        """A path naming the open file itself (``/proc/self/fd/N`` where the OS has it; else the resolved path),
        for readers that take a path (safetensors)."""
        p = f"/proc/self/fd/{self.file.fileno()}"
        return p if os.path.exists(p) else str(self.path)


def read_bytes(root: str | os.PathLike[str], name: Any, kind: str = "config") -> bytes:
    """The content of the checked file ``name`` inside ``root`` (:func:`resolve_inside`).

    Raises
    ------
    MissingFileError, UntrustedFileError
        As :func:`resolve_inside`.
    """
    with open_inside(root, name, kind) as f:
        return f.read()


def read_text(root: str | os.PathLike[str], name: Any, kind: str = "config") -> str:
    """:func:`read_bytes` decoded as UTF-8.

    Raises
    ------
    MissingFileError, UntrustedFileError
        As :func:`resolve_inside`, or the file is not UTF-8.
    """
    data = read_bytes(root, name, kind)
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise UntrustedFileError(Path(root) / name, f"not UTF-8 text ({exc.reason} at byte {exc.start})") from None


_Loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


def load_yaml(text: str, where: str | os.PathLike[str] = "<yaml>", max_depth: int = MAX_YAML_DEPTH) -> Any:
    """Parse untrusted YAML: one pass over its events refuses anchors, aliases, more than one document and nesting
    deeper than ``max_depth``, then ``yaml`` 's safe loader builds it (plain types only; libyaml's when installed).

    Raises
    ------
    UntrustedFileError
        An anchor or alias, too deep or too many nodes, or not valid YAML (the message gives the line).
    """
    depth = n = docs = 0
    try:
        for ev in yaml.parse(text, Loader=_Loader):
            n += 1
            if n > _MAX_YAML_EVENTS:
                raise UntrustedFileError(where, f"more than {_MAX_YAML_EVENTS:,} YAML nodes")
            if isinstance(ev, yaml.AliasEvent) or getattr(ev, "anchor", None) is not None:
                line = ev.start_mark.line + 1 if ev.start_mark is not None else "?"
                raise UntrustedFileError(where, f"YAML anchors and aliases are not allowed (line {line})")
            if isinstance(ev, (yaml.MappingStartEvent, yaml.SequenceStartEvent)):
                depth += 1
                if depth > max_depth:
                    raise UntrustedFileError(where, f"YAML nested deeper than {max_depth} levels")
            elif isinstance(ev, (yaml.MappingEndEvent, yaml.SequenceEndEvent)):
                depth -= 1
            elif isinstance(ev, yaml.DocumentStartEvent):
                docs += 1
                if docs > 1:
                    raise UntrustedFileError(where, "more than one YAML document")
        return yaml.load(text, Loader=_Loader)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        at = f" at line {mark.line + 1}" if mark is not None else ""
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise UntrustedFileError(where, f"not valid YAML{at} ({problem})") from None
    except RecursionError:
        raise UntrustedFileError(where, "YAML too deeply nested") from None


def read_yaml(root: str | os.PathLike[str], name: Any, kind: str = "config") -> Any:
    """:func:`load_yaml` of the checked file ``name`` inside ``root``.

    Raises
    ------
    MissingFileError, UntrustedFileError
        As :func:`read_text` and :func:`load_yaml`.
    """
    return load_yaml(read_text(root, name, kind), Path(root) / name)


def sha256_inside(root: str | os.PathLike[str], name: Any, kind: str) -> str:
    """The hex SHA-256 of the checked file ``name`` inside ``root``, read in blocks (never more than its cap).

    Raises
    ------
    MissingFileError, UntrustedFileError
        As :func:`resolve_inside`.
    """
    h = hashlib.sha256()
    with open_inside(root, name, kind) as f:
        left = MAX_BYTES[kind] + 1
        while left > 0:
            block = f.file.read(min(1 << 20, left))
            if not block:
                break
            h.update(block)
            left -= len(block)
        if left <= 0:
            raise UntrustedFileError(f.where, f"more than the {MAX_BYTES[kind]:,} bytes allowed for a {kind} file")
    return h.hexdigest()


def _npy_header(fp: Any) -> tuple[tuple[int, ...], bool, np.dtype]:
    version = np.lib.format.read_magic(fp)
    if version == (1, 0):
        return np.lib.format.read_array_header_1_0(fp)
    if version == (2, 0):
        return np.lib.format.read_array_header_2_0(fp)
    raise ValueError(f"unsupported .npy format version {version}")


def _members(zf: zipfile.ZipFile) -> Iterator[zipfile.ZipInfo]:
    for info in zf.infolist():
        if not info.is_dir():
            yield info


def safe_npz_shapes(path: str | os.PathLike[str], max_elements: int, max_total_elements: int | None = None) -> dict[str, tuple[tuple[int, ...], np.dtype]]:
    """Shapes and dtypes of the arrays of the ``.npz`` file ``path``, read from the ``.npy`` headers only.

    Call it before ``numpy.load`` of an untrusted archive (``attention.npz`` of a decode folder): nothing is
    allocated for the arrays themselves.

    Parameters
    ----------
    path : the ``.npz`` file (a regular file of at most ``MAX_BYTES["npz"]``)
    max_elements : int
        Largest number of elements one member may hold.
    max_total_elements : int, optional
        Largest sum over all members (default: no limit beyond ``max_elements`` each).

    Returns
    -------
    dict
        Member name (``.npy`` removed, as ``numpy.load`` names it) -> ``(shape, dtype)``.

    Raises
    ------
    MissingFileError
        No file at ``path``.
    UntrustedFileError
        Not a regular file, over the size cap, not a zip archive, a member that is not a ``.npy`` array (bad magic
        or header), an object dtype (it would need pickle), a negative dimension, more elements than allowed, or a
        member whose stored (uncompressed) size is smaller than its header announces.
    """
    path = Path(path)
    try:
        st = os.stat(path)
    except FileNotFoundError:
        raise MissingFileError(path, "no such file") from None
    except OSError as exc:
        raise UntrustedFileError(path, f"cannot stat ({exc.strerror})") from None
    _check_stat(path, st, "npz")
    out: dict[str, tuple[tuple[int, ...], np.dtype]] = {}
    total = 0
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0))
    except OSError as exc:
        raise UntrustedFileError(path, f"cannot open ({exc.strerror})") from None
    with os.fdopen(fd, "rb") as raw:
        _check_stat(path, os.fstat(raw.fileno()), "npz")
        os.set_blocking(fd, True)
        try:
            with zipfile.ZipFile(raw) as zf:
                for info in _members(zf):
                    name = info.filename
                    key = name[:-4] if name.endswith(".npy") else name
                    with zf.open(info) as member:
                        try:
                            shape, _fortran, dtype = _npy_header(member)
                        except (ValueError, SyntaxError, TypeError, EOFError) as exc:
                            raise UntrustedFileError(path, f"member {name!r} is not a .npy array ({exc})") from None
                    if dtype.hasobject:
                        raise UntrustedFileError(path, f"member {name!r} holds Python objects (dtype {dtype}); refused")
                    if any(not isinstance(d, int) or d < 0 for d in shape):
                        raise UntrustedFileError(path, f"member {name!r} has an invalid shape {shape}")
                    n = 1
                    for d in shape:
                        n *= d
                    if n > max_elements:
                        raise UntrustedFileError(path, f"member {name!r} of shape {shape} holds {n:,} elements, more than the {max_elements:,} allowed")
                    if n * dtype.itemsize > info.file_size:
                        raise UntrustedFileError(path, f"member {name!r} announces {shape} {dtype} but stores only {info.file_size:,} bytes")
                    total += n
                    if max_total_elements is not None and total > max_total_elements:
                        raise UntrustedFileError(path, f"more than {max_total_elements:,} elements in all")
                    out[key] = (tuple(shape), dtype)
        except zipfile.BadZipFile as exc:
            raise UntrustedFileError(path, f"not an npz archive ({exc})") from None
        except (OSError, EOFError, zipfile.LargeZipFile, NotImplementedError, RuntimeError) as exc:
            raise UntrustedFileError(path, f"unreadable npz archive ({exc})") from None
    return out
