"""The portable model directory: its one writer (``asr-export``) and reader (:class:`asr.inference.Speech2Text`).

A model directory holds, as a Hugging Face model repository does:

* ``config.yaml``: ``format`` (:data:`FORMAT_VERSION`), ``model`` (the ``model`` config group: encoder, attention,
  decoder types and sizes, as in a checkpoint), ``features`` (every :class:`~asr.features.fbank.FbankOptions` field
  and ``cmvn: cmvn.safetensors``), ``tokenizer`` (``kind``: bpe / unigram / char, ``vocab_size``, ``file`` and,
  since checksums are written, the special ids ``pad_id``, ``unk_id``, ``sos_id``, ``eos_id``), ``weights``
  (``file``, ``dtype``: the stored floating-point dtype, ``n_params``), ``decoding`` (the search options the model
  was evaluated with; :class:`~asr.decoding.search.DecodingOptions` fields) and ``source`` (the checkpoint it was
  exported from);
* ``model.safetensors``: the model's weights without the CMVN statistics, as ``float32`` or ``float16``;
* ``cmvn.safetensors``: the global CMVN ``mean`` and ``istd`` (``1 / std``) buffers, always ``float32``;
* ``tokenizer.model``: the sentencepiece model;
* ``checksums.sha256`` (optional; :data:`CHECKSUMS`): the SHA-256 of the weights, CMVN and tokenizer files, in
  ``sha256sum``'s format (``sha256sum -c checksums.sha256`` checks it too). ``config.yaml`` is left out on purpose:
  it is the human-editable part (e.g. its ``decoding`` options) and is itself checked against those files on every
  load; a checksum list that does name it (one written by hand with ``sha256sum``) is honoured;
* ``README.md``: the model card, and ``.asr-owned.json``, the list of files ``asr-export`` wrote
  (:mod:`asr.utils.owned`).

Loading runs no pickle at all: safetensors files are a JSON header and raw little-endian tensors, YAML is read with
``yaml``'s safe loader, and the stored model config is checked as a checkpoint's is
(:func:`asr.models.checkpoint.check_stored_config`) and built from the type registries only. A float16 model is
loaded into float32 parameters (computation stays float32; only the stored values are rounded).

A model directory is untrusted input. Every file it names is read through :mod:`asr.utils.safe_read` (relative
names inside the directory only, regular files only, a size cap per kind, YAML without anchors/aliases and with
bounded depth), and :func:`load_model_dir` verifies what it loads against ``config.yaml`` (tensor names, shapes and
dtypes from the safetensors headers before any weight is read, finite values, the tokenizer's kind, size and special
ids, checksums when listed). Every failure is one :class:`ModelLoadError` ``<path>: <reason>``.
"""

from __future__ import annotations

import dataclasses
import hashlib
import math
import os
import re
from pathlib import Path
from typing import Any

import torch
import yaml
from safetensors import SafetensorError, safe_open
from safetensors.torch import save

from asr.features.fbank import FbankOptions
from asr.models.asr_model import AttentionASRModel, build_model
from asr.models.checkpoint import check_stored_config, expected_state, fbank_options, load_checkpoint
from asr.text.tokenizer import Tokenizer
from asr.utils.io import atomic_open, atomic_write_text
from asr.utils.safe_read import MissingFileError, UntrustedFileError, open_inside, read_bytes, read_text, read_yaml, resolve_inside, sha256_inside

__all__ = ["FORMAT_VERSION", "CONFIG", "WEIGHTS", "CMVN", "TOKENIZER", "CHECKSUMS", "ModelLoadError", "ModelFileNotFoundError", "tokenizer_kind",
           "save_model_dir", "load_model_dir", "is_model_dir", "load_model"]

FORMAT_VERSION = 1
CONFIG, WEIGHTS, CMVN, TOKENIZER = "config.yaml", "model.safetensors", "cmvn.safetensors", "tokenizer.model"
#: Optional list of the files' SHA-256 sums (``sha256sum`` format), written by :func:`save_model_dir`.
CHECKSUMS = "checksums.sha256"
_CHECKSUM_LINE = re.compile(r"([0-9a-fA-F]{64}) [ *]([^\x00\n]+)")
_DTYPES = {"float32": torch.float32, "float16": torch.float16}


_MODEL_TYPES = {1: "unigram", 2: "bpe", 3: "word", 4: "char"}


def _varint(buf: bytes, i: int) -> tuple[int, int]:
    shift = value = 0
    while True:
        if i >= len(buf) or shift > 63:
            raise ValueError("truncated protobuf varint")
        b = buf[i]
        i += 1
        value |= (b & 0x7F) << shift
        shift += 7
        if not b & 0x80:
            return value, i


def _proto_fields(buf: bytes) -> list[tuple[int, int, Any]]:
    """``(field, wire type, value)`` of one protobuf message level (bytes for length-delimited fields)."""
    out, i = [], 0
    while i < len(buf):
        key, i = _varint(buf, i)
        field, wt = key >> 3, key & 7
        if wt == 0:
            value, i = _varint(buf, i)
        elif wt == 1:
            value, i = buf[i:i + 8], i + 8
        elif wt == 5:
            value, i = buf[i:i + 4], i + 4
        elif wt == 2:
            n, i = _varint(buf, i)
            value, i = buf[i:i + n], i + n
        else:
            raise ValueError(f"unsupported protobuf wire type {wt}")
        if i > len(buf):
            raise ValueError("truncated protobuf field")
        out.append((field, wt, value))
    return out


def tokenizer_kind(tok: Tokenizer) -> str:
    """``bpe``, ``unigram``, ``char`` or ``word``: the sentencepiece model type stored in the tokenizer's model
    (``ModelProto.trainer_spec.model_type``, read from the serialized model without the protobuf package).

    Raises
    ------
    ValueError
        The serialized model is not a readable protobuf message.
    """
    kind = 1  # protobuf's default: UNIGRAM
    for field, wt, value in _proto_fields(tok.proto):
        if field == 2 and wt == 2:  # trainer_spec
            for f2, wt2, v2 in _proto_fields(value):
                if f2 == 3 and wt2 == 0:  # model_type
                    kind = v2
    return _MODEL_TYPES.get(kind, f"type{kind}")


def is_model_dir(path: str | Path) -> bool:
    """Whether ``path`` is a directory holding a ``config.yaml`` and a ``model.safetensors``."""
    p = Path(path)
    return (p / CONFIG).is_file() and (p / WEIGHTS).is_file()


def save_model_dir(
    out_dir: str | Path,
    model: AttentionASRModel,
    tokenizer: Tokenizer,
    model_cfg: dict[str, Any],
    fbank: FbankOptions,
    decoding: dict[str, Any] | None = None,
    dtype: str = "float32",
    source: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Write ``config.yaml``, ``model.safetensors``, ``cmvn.safetensors``, ``tokenizer.model`` and
    ``checksums.sha256`` (module docstring) into ``out_dir`` (created; each file written atomically); returns the
    config written.

    Parameters
    ----------
    model : AttentionASRModel
        Its ``state_dict``: floating-point tensors are stored as ``dtype``, the ``cmvn.*`` buffers go to
        ``cmvn.safetensors`` in float32.
    model_cfg : dict
        The ``model`` config the model was built from (a checkpoint's ``model_cfg``).
    decoding : dict, optional
        Search options recorded as the model's (``DecodingOptions`` fields).
    dtype : {"float32", "float16"}
    source : dict, optional
        Where it came from (e.g. ``{"checkpoint": ..., "sha256": ...}``), stored as is.

    Raises
    ------
    ValueError
        Unknown ``dtype``; a weight or CMVN value that is not finite in ``dtype`` (NaN, or beyond float16's range).
    """
    if dtype not in _DTYPES:
        raise ValueError(f"dtype must be one of {sorted(_DTYPES)}, got {dtype!r}")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    state = model.state_dict()
    cmvn = {k.removeprefix("cmvn."): v.detach().float().contiguous() for k, v in state.items() if k.startswith("cmvn.")}
    weights = {
        k: (v.detach().to(_DTYPES[dtype]) if v.is_floating_point() else v.detach()).contiguous().cpu()
        for k, v in state.items()
        if not k.startswith("cmvn.")
    }
    config = {
        "format": FORMAT_VERSION,
        "model": model_cfg,
        "features": {**dataclasses.asdict(fbank), "cmvn": CMVN},
        "tokenizer": {"kind": tokenizer_kind(tokenizer), "vocab_size": tokenizer.vocab_size, "file": TOKENIZER,
                      "pad_id": tokenizer.pad_id, "unk_id": tokenizer.unk_id, "sos_id": tokenizer.sos_id, "eos_id": tokenizer.eos_id},
        "weights": {"file": WEIGHTS, "dtype": dtype, "n_params": int(sum(p.numel() for p in model.parameters()))},
        "decoding": dict(decoding or {}),
        "source": dict(source or {}),
    }
    for name, tensors in ((WEIGHTS, weights), (CMVN, cmvn)):
        for k, v in tensors.items():
            if v.is_floating_point() and not bool(torch.isfinite(v).all()):
                raise ValueError(f"cannot export: tensor {k} holds non-finite values as {v.dtype} (a float16 export of values beyond ±65504, or a diverged model)")
    blobs = {name: save(tensors, metadata={"format": "pt", "asr_format": str(FORMAT_VERSION)}) for name, tensors in ((WEIGHTS, weights), (CMVN, cmvn))}
    blobs[TOKENIZER] = tokenizer.proto
    blobs[CONFIG] = yaml.safe_dump(config, sort_keys=False).encode("utf-8")
    for name in (WEIGHTS, CMVN, TOKENIZER, CONFIG):
        with atomic_open(out / name, "wb") as f:
            f.write(blobs[name])
    # the binary files only: config.yaml stays editable (its decoding options), and is verified against them on load
    atomic_write_text("".join(f"{hashlib.sha256(blobs[name]).hexdigest()}  {name}\n" for name in (WEIGHTS, CMVN, TOKENIZER)), out / CHECKSUMS)
    return config


class ModelLoadError(ValueError):
    """A model directory or checkpoint that does not load: missing or unsafe file, malformed config, or files that
    disagree with the config (dtype, shape, non-finite values, tokenizer, checksum).

    ``str(exc)`` is ``"<path>: <reason>"``, what ``asr-transcribe`` prints after ``cannot load the model: ``.

    Attributes
    ----------
    path : Path
        The file at fault (or the model directory / checkpoint).
    reason : str
    """

    def __init__(self, path: str | Path, reason: str) -> None:
        self.path, self.reason = Path(path), reason
        super().__init__(f"{path}: {reason}")

    def __reduce__(self) -> Any:
        return (type(self), (self.path, self.reason))


class ModelFileNotFoundError(ModelLoadError, FileNotFoundError):
    """A :class:`ModelLoadError` for a file that does not exist (also a ``FileNotFoundError``)."""


#: What a failing reader or builder may raise on malformed input; :func:`load_model` turns each into a
#: :class:`ModelLoadError` (never a bare traceback in a CLI).
_LOAD_ERRORS: tuple[type[BaseException], ...] = (ValueError, KeyError, TypeError, IndexError, AttributeError, RecursionError, RuntimeError, OSError,
                                                 OverflowError, EOFError, SafetensorError)

_ST_DTYPES = {"F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16, "F64": torch.float64, "I64": torch.int64, "I32": torch.int32,
              "I16": torch.int16, "I8": torch.int8, "U8": torch.uint8, "BOOL": torch.bool}


def _where_reason(exc: BaseException, where: Path) -> ModelLoadError:
    """``exc`` as a :class:`ModelLoadError` at ``where`` (a ``refusing <where>: `` prefix of its message dropped)."""
    if isinstance(exc, ModelLoadError):
        return exc
    if isinstance(exc, UntrustedFileError):
        return (ModelFileNotFoundError if isinstance(exc, MissingFileError) else ModelLoadError)(exc.path, exc.reason)
    msg = str(exc) if isinstance(exc, (ValueError, OSError)) and str(exc) else f"{type(exc).__name__}: {exc}"
    for prefix in (f"refusing {where}: ", f"{where}: "):
        if msg.startswith(prefix):
            msg = msg[len(prefix):]
    if isinstance(exc, RecursionError):
        msg = "a self-referencing or too deeply nested structure (RecursionError)"
    return (ModelFileNotFoundError if isinstance(exc, FileNotFoundError) else ModelLoadError)(where, msg)


def _section(config: dict[str, Any], name: str, where: Path) -> dict[str, Any]:
    sec = config.get(name)
    if sec is None:
        return {}
    if not isinstance(sec, dict):
        raise ModelLoadError(where, f"'{name}' is {type(sec).__name__}, not a mapping")
    return dict(sec)


def _check_features(features: dict[str, Any], where: Path) -> None:
    """Type and range of the front-end settings a config gives (a lying ``num_mel_bins`` or rate)."""
    ranges = {"num_mel_bins": (int, 1, 1024), "sample_rate": (int, 1000, 384_000), "frame_length_ms": (float, 1e-3, 1000.0),
              "frame_shift_ms": (float, 1e-3, 1000.0), "dither": (float, 0.0, 1e6)}
    for key, (kind, lo, hi) in ranges.items():
        if key not in features:
            continue
        v = features[key]
        ok = isinstance(v, int) if kind is int else isinstance(v, (int, float))
        if isinstance(v, bool) or not ok or not (lo <= v <= hi):  # NaN fails the range test
            raise ModelLoadError(where, f"features.{key}={v!r} is not a {kind.__name__} in [{lo}, {hi}]")


def _check_tokenizer(tok: Tokenizer, tcfg: dict[str, Any], where: Path) -> None:
    """The tokenizer's kind, vocabulary size and special ids against ``config.yaml`` ``tokenizer``."""
    v = tok.vocab_size
    ids = {"pad_id": tok.pad_id, "unk_id": tok.unk_id, "sos_id": tok.sos_id, "eos_id": tok.eos_id}
    for k, i in ids.items():
        if not 0 <= i < v:
            raise ModelLoadError(where, f"special id {k}={i} outside the vocabulary of {v}")
    if len({tok.pad_id, tok.unk_id, tok.sos_id}) < 3 or len({tok.pad_id, tok.unk_id, tok.eos_id}) < 3:
        raise ModelLoadError(where, f"special ids collide ({ids})")
    if "vocab_size" in tcfg and tcfg["vocab_size"] != v:
        raise ModelLoadError(where, f"a vocabulary of {v} tokens, config.yaml says tokenizer.vocab_size={tcfg['vocab_size']!r}")
    if "kind" in tcfg:
        kind = tokenizer_kind(tok)
        if tcfg["kind"] != kind:
            raise ModelLoadError(where, f"a {kind} tokenizer, config.yaml says tokenizer.kind={tcfg['kind']!r}")
    for k, i in ids.items():
        if k in tcfg and tcfg[k] != i:
            raise ModelLoadError(where, f"{k} is {i}, config.yaml says tokenizer.{k}={tcfg[k]!r}")


def _read_checksums(d: Path) -> dict[str, str]:
    """``checksums.sha256`` (``sha256sum`` format: ``<64 hex>  <name>`` per line, ``*`` before binary names)."""
    text = read_text(d, CHECKSUMS, "checksums")
    out: dict[str, str] = {}
    for n, line in enumerate(text.splitlines(), 1):
        if not line.strip() or line.startswith("#"):
            continue
        m = _CHECKSUM_LINE.fullmatch(line)
        if m is None:
            raise ModelLoadError(d / CHECKSUMS, f"line {n} is not '<sha256>  <file>'")
        digest, name = m.group(1).lower(), m.group(2)
        if name in out and out[name] != digest:
            raise ModelLoadError(d / CHECKSUMS, f"{name} listed twice with different sums")
        out[name] = digest
    return out


def _verify_checksums(d: Path, needed: dict[str, str], optional: dict[str, str]) -> None:
    """Each file the checksum list names has its sum; ``needed`` (name -> kind: the binary files the loader reads)
    must be listed, ``optional`` ones (``config.yaml``) are checked when listed."""
    sums = _read_checksums(d)
    needed_kinds = {**optional, **needed}
    missing = sorted(set(needed) - set(sums))
    if missing:
        raise ModelLoadError(d / CHECKSUMS, f"does not list {', '.join(missing)}")
    for name, digest in sums.items():
        got = sha256_inside(d, name, needed_kinds.get(name, "weights"))
        if got != digest:
            raise ModelLoadError(d / name, f"checksum mismatch (sha256 {got[:16]}…, {CHECKSUMS} says {digest[:16]}…)")


def _read_safetensors(d: Path, name: Any, kind: str, want: dict[str, torch.Tensor], want_float: torch.dtype | None, verify: bool, note: str = "") -> dict[str, torch.Tensor]:
    """The tensors of a safetensors file of the model directory, checked from its header before any is read: the
    same names and shapes as ``want`` (the config's meta tensors), floating ones of dtype ``want_float`` (None: any
    one of float32/float16 for all), others of ``want``'s dtype (``verify`` only)."""
    where = d / name
    with open_inside(d, name, kind) as f:
        try:
            return _read_open_safetensors(f.fd_path, where, want, want_float, verify, note)
        except SafetensorError as exc:
            raise ModelLoadError(where, f"not a readable safetensors file ({exc})") from exc


def _read_open_safetensors(fd_path: str, where: Path, want: dict[str, torch.Tensor], want_float: torch.dtype | None, verify: bool, note: str) -> dict[str, torch.Tensor]:
    with safe_open(fd_path, "pt") as st:
        header = {k: (st.get_slice(k).get_dtype(), tuple(st.get_slice(k).get_shape())) for k in st.keys()}
        extra, lacking = sorted(set(header) - set(want)), sorted(set(want) - set(header))
        if extra or lacking:
            raise ModelLoadError(where, f"tensors do not fit the model of config.yaml (missing {lacking[:3]}, unexpected {extra[:3]})")
        for k, (dt, shape) in header.items():
            if shape != tuple(want[k].shape):
                raise ModelLoadError(where, f"tensor {k} has shape {list(shape)}, the model of config.yaml has {list(want[k].shape)}")
            if not verify:
                continue
            got = _ST_DTYPES.get(dt)
            if want[k].is_floating_point():
                expect = want_float if want_float is not None else (got if got in (torch.float32, torch.float16) else torch.float32)
            else:
                expect = want[k].dtype
            if got != expect:
                raise ModelLoadError(where, f"tensor {k} is stored as {dt}, expected {str(expect).removeprefix('torch.')}"
                                            + (note if want_float is not None and want[k].is_floating_point() else ""))
        if verify and want_float is None:
            floats = {header[k][0] for k in header if want[k].is_floating_point()}
            if len(floats) > 1:
                raise ModelLoadError(where, f"floating tensors of several dtypes {sorted(floats)}")
        return {k: st.get_tensor(k) for k in header}


def _check_finite(state: dict[str, torch.Tensor], where: Path) -> None:
    """Every floating value finite. Fast path: a float32 sum is finite when every value is (float16 values sum to
    at most 65504 x numel; a float32 tensor whose sum overflows is checked element-wise), and not when one is NaN
    or infinite; only a non-finite sum costs the element-wise check."""
    for k, v in state.items():
        if not v.is_floating_point() or math.isfinite(v.sum(dtype=torch.float32)):
            continue
        if not bool(torch.isfinite(v).all()):
            bad = v[~torch.isfinite(v)]
            what = "NaN" if bool(torch.isnan(bad).any()) else "infinite"
            raise ModelLoadError(where, f"tensor {k} holds {bad.numel()} {what} value(s)")


def load_model_dir(path: str | Path, map_location: str | torch.device = "cpu", verify: bool = True) -> tuple[AttentionASRModel, Tokenizer, dict[str, Any]]:
    """Rebuild model and tokenizer from a model directory (no pickle is run), verifying it.

    Every file is read through :mod:`asr.utils.safe_read` (inside the directory, regular files, a size cap per
    kind; YAML without anchors/aliases and with bounded depth). The model is built from ``config.yaml`` first (on
    the ``meta`` device: no memory) and each stored tensor's name and shape checked against it from the
    safetensors header before any weight is read. With ``verify`` (the default) also: each tensor's dtype
    (``weights.dtype`` of the config for floating ones: a float16 export is loaded into float32 parameters; float32
    CMVN), every value finite (weights, CMVN ``mean``/``istd``), the tokenizer's kind, vocabulary size and special
    ids against ``tokenizer``, ``weights.n_params`` against the model, and the sums of ``checksums.sha256`` when
    the directory has one. ``verify=False`` skips these (the safe reading and the shape checks stay).

    Returns
    -------
    model : AttentionASRModel in eval mode, float32 parameters on ``map_location``
    tokenizer : Tokenizer
    config : dict (``config.yaml``; ``config["fbank"]`` is added: the :class:`FbankOptions`)

    Raises
    ------
    ModelFileNotFoundError
        ``path`` has no ``config.yaml`` or lacks a file the config names (a :class:`ModelLoadError` and a
        ``FileNotFoundError``).
    ModelLoadError
        Any other failure, as ``<path>: <reason>`` (a ``ValueError``): an unsafe file (outside the directory, not a
        regular file, over its size cap), YAML with aliases, too deep or invalid, a config that is not a mapping,
        has another ``format`` version, a ``_target_`` key, unknown model types or sizes beyond
        :func:`~asr.models.checkpoint.check_model_size`'s limits; tensors missing, unexpected, of another shape
        or dtype; non-finite values; a tokenizer that does not parse or disagrees with the config; a checksum
        mismatch.
    """
    d = Path(path)
    try:
        return _load_model_dir(d, map_location, verify)
    except _LOAD_ERRORS as exc:
        raise _where_reason(exc, d) from exc


def _load_model_dir(d: Path, map_location: str | torch.device, verify: bool) -> tuple[AttentionASRModel, Tokenizer, dict[str, Any]]:
    for name in (CONFIG, WEIGHTS):
        if not os.path.lexists(d / name):
            raise ModelFileNotFoundError(d, f"not an asr model directory: {name} is missing")
    cfg_path = d / CONFIG
    config = read_yaml(d, CONFIG, "config")
    if not isinstance(config, dict):
        raise ModelLoadError(cfg_path, f"not a mapping ({type(config).__name__})")
    if config.get("format") != FORMAT_VERSION:
        raise ModelLoadError(cfg_path, f"format {config.get('format')!r}, this asr reads format {FORMAT_VERSION}")
    try:
        check_stored_config(config.get("model"), None, str(cfg_path))
    except ValueError as exc:
        raise _where_reason(exc, cfg_path) from exc
    features = _section(config, "features", cfg_path)
    tcfg = _section(config, "tokenizer", cfg_path)
    wcfg = _section(config, "weights", cfg_path)
    cmvn_file = features.pop("cmvn", CMVN)
    tok_file = tcfg.get("file", TOKENIZER)
    w_file = wcfg.get("file", WEIGHTS)
    if verify and os.path.lexists(d / CHECKSUMS):
        _verify_checksums(d, {str(w_file): "weights", str(cmvn_file): "cmvn", str(tok_file): "tokenizer"}, {CONFIG: "config"})
    _check_features(features, cfg_path)
    try:
        fbank = fbank_options({"fbank": features})
    except ValueError as exc:
        raise ModelLoadError(cfg_path, f"features: {exc}") from exc
    dtype = wcfg.get("dtype")
    if dtype is not None and dtype not in _DTYPES:
        raise ModelLoadError(cfg_path, f"weights.dtype={dtype!r}, not one of {sorted(_DTYPES)}")
    for name in (w_file, cmvn_file, tok_file):
        try:
            resolve_inside(d, name, "weights")
        except MissingFileError:
            raise ModelFileNotFoundError(d, f"{name} is missing (not a complete asr model directory)") from None
    tok_bytes = read_bytes(d, tok_file, "tokenizer")
    try:
        tok = Tokenizer(tok_bytes)
    except (RuntimeError, ValueError, TypeError, OSError) as exc:
        raise ModelLoadError(d / tok_file, f"not a usable sentencepiece model ({str(exc).strip() or type(exc).__name__})") from exc
    if verify:
        _check_tokenizer(tok, tcfg, d / tok_file)
    try:
        want, n_params = expected_state(config["model"], tok, fbank.num_mel_bins, str(cfg_path))
    except ValueError as exc:
        raise _where_reason(exc, cfg_path) from exc
    if verify and "n_params" in wcfg and wcfg["n_params"] != n_params:
        raise ModelLoadError(cfg_path, f"weights.n_params={wcfg['n_params']!r}, the model of the config has {n_params:,} parameters")
    want_w = {k: v for k, v in want.items() if not k.startswith("cmvn.")}
    want_c = {k.removeprefix("cmvn."): v for k, v in want.items() if k.startswith("cmvn.")}
    state = _read_safetensors(d, w_file, "weights", want_w, _DTYPES.get(dtype) if dtype else None, verify, " (config.yaml weights.dtype)")
    cmvn = _read_safetensors(d, cmvn_file, "cmvn", want_c, torch.float32, verify, " (CMVN statistics are float32)")
    state.update({f"cmvn.{k}": v for k, v in cmvn.items()})
    model = build_model(config["model"], tok.vocab_size, tok.sos_id, tok.eos_id, tok.pad_id, fbank.num_mel_bins)
    try:
        model.load_state_dict(state)  # copies into the float32 parameters
    except RuntimeError as exc:
        raise ModelLoadError(d, f"the weights do not fit the model of config.yaml ({exc})") from exc
    if verify:  # on the float32 copies: a float16 NaN/inf stays one, and float32 sums are the fastest check
        loaded = model.state_dict()
        _check_finite({k: v for k, v in loaded.items() if not k.startswith("cmvn.")}, d / w_file)
        _check_finite({k.removeprefix("cmvn."): v for k, v in loaded.items() if k.startswith("cmvn.")}, d / cmvn_file)
    model.eval().to(map_location)
    config["fbank"] = fbank
    return model, tok, config


def load_model(path: str | Path, map_location: str | torch.device = "cpu", verify: bool = True) -> tuple[AttentionASRModel, Tokenizer, FbankOptions, dict[str, Any]]:
    """The one loader of a local model: a model directory (:func:`load_model_dir`) or a ``.ckpt`` training
    checkpoint (:func:`~asr.models.checkpoint.load_checkpoint`).

    Parameters
    ----------
    verify : bool
        Verify a model directory (:func:`load_model_dir`) and a checkpoint's weights (all finite); default True.

    Returns
    -------
    model : AttentionASRModel in eval mode
    tokenizer : Tokenizer
    fbank : FbankOptions (the front end it was trained with)
    info : dict
        ``model_cfg`` (the model config), ``decoding`` (the search options recorded with a model directory;
        ``{}`` for a checkpoint), ``feat_dim`` and ``frame_shift_s``.

    Raises
    ------
    ModelFileNotFoundError
        Nothing at ``path`` (the message gives the absolute path looked at), or a directory that is not a model
        directory or lacks a file (a :class:`ModelLoadError` and a ``FileNotFoundError``).
    ModelLoadError
        Every other failure (a ``ValueError`` ``<path>: <reason>``): as :func:`load_model_dir`; a checkpoint that
        :func:`~asr.models.checkpoint.load_checkpoint` refuses, that is malformed (a missing key, a
        self-referencing structure) or holds non-finite weights.
    """
    p = Path(path)
    if p.is_dir():
        model, tok, config = load_model_dir(p, map_location, verify)
        fbank = config["fbank"]
        info = {"model_cfg": config["model"], "decoding": dict(config.get("decoding") or {}), "feat_dim": fbank.num_mel_bins, "frame_shift_s": fbank.frame_shift_s}
        return model, tok, fbank, info
    if not p.exists():
        raise ModelFileNotFoundError(p, f"no model directory or checkpoint (looked at {p.absolute()})")
    try:
        model, tok, meta = load_checkpoint(p, str(map_location))
        if verify:
            _check_finite(model.state_dict(), p)
        info = {"model_cfg": meta["model_cfg"], "decoding": {}, "feat_dim": meta.get("feat_dim", 80), "frame_shift_s": meta.get("frame_shift_s", 0.01)}
        fbank = fbank_options(meta)
    except _LOAD_ERRORS as exc:
        raise _where_reason(exc, p) from exc
    return model.to(map_location), tok, fbank, info
