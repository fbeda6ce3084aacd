"""The training checkpoint format: its one reader and writer (no Lightning needed to read one).

A checkpoint is a ``torch.save`` file holding plain types and tensors only, so it loads with
``torch.load(..., weights_only=True)`` and nothing in it is ever run:

* ``state_dict``: the Lightning module's weights, the model's under the prefix ``model.`` (CMVN statistics are
  buffers of the model, so they travel with it);
* ``asr`` (:data:`ASR_KEY`): what rebuilding needs, written by :func:`checkpoint_payload`: ``model_cfg`` (the
  ``model`` config group, types chosen from the registries of :mod:`asr.models.asr_model`), ``optim_cfg``,
  ``tokenizer_proto`` (the serialized sentencepiece model), ``feat_dim``, ``frame_shift_s`` and, since
  checkpoints of this version, ``fbank`` (every :class:`~asr.features.fbank.FbankOptions` field);
* Lightning's own entries (``epoch``, optimiser states, callbacks), read only by Lightning when resuming.

The stored configs are checked against an allow-list (:func:`check_stored_config`) before anything is built.
The training side (``asr.lightning.module``) writes the payload with :func:`checkpoint_payload`; decoding,
plotting, averaging, export and the inference API read with :func:`read_checkpoint` / :func:`load_checkpoint`.
"""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path
from typing import Any

import torch

from asr.features.fbank import FbankOptions
from asr.models.asr_model import AttentionASRModel, build_model, reject_target_keys
from asr.text.tokenizer import Tokenizer

__all__ = [
    "ASR_KEY",
    "ALLOWED_OPTIMIZERS",
    "MODEL_PREFIX",
    "checkpoint_payload",
    "read_checkpoint",
    "check_stored_config",
    "check_model_size",
    "expected_state",
    "check_state_shapes",
    "MAX_MODEL_PARAMS",
    "MAX_CONFIG_INT",
    "model_state_dict",
    "fbank_options",
    "load_checkpoint",
]

#: Checkpoint key holding what ``asr-decode`` needs to rebuild model and tokenizer (plain types only,
#: so checkpoints load with ``torch.load(..., weights_only=True)``).
ASR_KEY = "asr"

#: Prefix of the model's weights in a checkpoint's ``state_dict`` (the Lightning module's attribute name).
MODEL_PREFIX = "model."

#: Optimisers a stored ``optim`` config may name (key ``optimizer``, ``name`` or ``type``); the LR schedule is
#: a LambdaLR built in code. Anything else in a checkpoint is refused by :func:`load_checkpoint`.
ALLOWED_OPTIMIZERS = {"adam": torch.optim.Adam, "adamw": torch.optim.AdamW, "sgd": torch.optim.SGD}


def _typed_model_cfg(model_cfg: Any) -> Any:
    """``model_cfg`` with every field of :class:`asr.models.config.ModelConfig` filled in (defaults included), so that
    a later change of a default never changes a stored model; left as given when it does not parse (the builder
    then reports it)."""
    from asr.models.config import ModelConfig

    try:
        return ModelConfig.from_dict(model_cfg).to_dict()
    except (ValueError, TypeError, KeyError):
        return model_cfg


def checkpoint_payload(model_cfg: dict, optim_cfg: dict, tokenizer: Tokenizer, feat_dim: int, frame_shift_s: float, fbank: FbankOptions | dict | None = None) -> dict[str, Any]:
    """The :data:`ASR_KEY` entry of a checkpoint (plain types only).

    Parameters
    ----------
    model_cfg, optim_cfg : dict
        The ``model`` and ``optim`` config groups as plain containers.
    tokenizer : Tokenizer
        Its serialized model is stored (a few kB).
    feat_dim : int
        F, fbank bins; frame_shift_s : float, seconds between fbank frames.
    fbank : FbankOptions or dict, optional
        The full front-end settings (stored as a dict under ``fbank``); None stores only the two above.
    """
    payload = {
        "model_cfg": _typed_model_cfg(model_cfg),
        "optim_cfg": optim_cfg,
        "tokenizer_proto": tokenizer.proto,
        "feat_dim": int(feat_dim),
        "frame_shift_s": float(frame_shift_s),
    }
    if fbank is not None:
        payload["fbank"] = dataclasses.asdict(fbank) if isinstance(fbank, FbankOptions) else dict(fbank)
    return payload


def read_checkpoint(path: str | Path, map_location: str = "cpu") -> dict[str, Any]:
    """The raw checkpoint dict, loaded with ``weights_only=True`` (nothing in the file is run).

    Raises
    ------
    FileNotFoundError
        No file at ``path``.
    ValueError
        Not loadable with ``weights_only=True`` (it pickles other objects than tensors and plain containers),
        or not an ``asr`` checkpoint (no ``state_dict`` or no :data:`ASR_KEY` entry); the message names the file.
    """
    if not Path(path).is_file():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    try:
        ckpt = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as exc:  # pickle.UnpicklingError and friends: refuse, never fall back to unsafe loading
        raise ValueError(f"refusing to load checkpoint {path}: not loadable with weights_only=True ({exc})") from exc
    if not isinstance(ckpt, dict) or ASR_KEY not in ckpt:
        raise ValueError(f"{path} is not an asr training checkpoint (no '{ASR_KEY}' entry)")
    if "state_dict" not in ckpt:
        raise ValueError(f"{path} is not an asr training checkpoint (no 'state_dict' entry)")
    return ckpt


def check_stored_config(model_cfg: Any, optim_cfg: Any, where: str = "checkpoint") -> None:
    """Refuse a stored config that asks for anything beyond the registries and the optimiser allow-list.

    Raises
    ------
    ValueError
        ``model_cfg`` is not a mapping, either config has a ``_target_`` key (named with its path), or the
        optimiser named in ``optim_cfg`` (``optimizer``/``name``/``type``) is not in :data:`ALLOWED_OPTIMIZERS`.
    """
    if not isinstance(model_cfg, dict):
        raise ValueError(f"refusing {where}: stored model config is {type(model_cfg).__name__}, not a mapping")
    reject_target_keys(model_cfg, "model", where)
    if optim_cfg is None:
        return
    if not isinstance(optim_cfg, dict):
        raise ValueError(f"refusing {where}: stored optim config is {type(optim_cfg).__name__}, not a mapping")
    reject_target_keys(optim_cfg, "optim", where)
    for key in ("optimizer", "name", "type"):
        if key in optim_cfg:
            name = str(optim_cfg[key]).lower().removeprefix("torch.optim.")
            if name not in ALLOWED_OPTIMIZERS:
                raise ValueError(f"refusing {where}: optim.{key}={optim_cfg[key]!r} is not an allowed optimiser ({sorted(ALLOWED_OPTIMIZERS)})")


#: Largest model (parameters) a checkpoint may describe: 50x the largest recipe model; a stored config asking
#: for more is refused before anything is allocated.
MAX_MODEL_PARAMS = 500_000_000
#: Largest integer any stored model-config value may hold (sizes, layers, heads, ...).
MAX_CONFIG_INT = 1_000_000
_MAX_LAYERS = 1000


def _config_ints(cfg: Any, path: str = "model") -> list[tuple[str, int]]:
    """Every integer of a nested config as ``(key path, value)`` (booleans excluded)."""
    if isinstance(cfg, dict):
        return [x for k, v in cfg.items() for x in _config_ints(v, f"{path}.{k}")]
    if isinstance(cfg, (list, tuple)):
        return [x for i, v in enumerate(cfg) for x in _config_ints(v, f"{path}[{i}]")]
    return [(path, cfg)] if isinstance(cfg, int) and not isinstance(cfg, bool) else []


def expected_state(model_cfg: dict, tok: Tokenizer, feat_dim: int = 80, where: str = "checkpoint", max_params: int = MAX_MODEL_PARAMS) -> tuple[dict[str, torch.Tensor], int]:
    """The state dict the stored model config builds, as ``meta`` tensors (names, shapes, dtypes; no memory), after
    the sanity limits of :func:`check_model_size`.

    Parameters
    ----------
    model_cfg, tok, feat_dim, where, max_params : as :func:`check_model_size`.

    Returns
    -------
    state : dict
        Name -> ``meta`` tensor (``AttentionASRModel.state_dict()`` of the config, CMVN buffers included).
    n_params : int
        The config's parameter count.

    Raises
    ------
    ValueError
        An integer config value above :data:`MAX_CONFIG_INT` (a ``*layers*``/``*heads*`` one above 1000), a config
        that does not build, or more than ``max_params`` parameters.
    """
    for key, v in _config_ints(model_cfg):
        limit = _MAX_LAYERS if ("layers" in key or "heads" in key) else MAX_CONFIG_INT
        if v > limit:
            raise ValueError(f"refusing {where}: stored config {key}={v} exceeds the sanity limit {limit}")
    try:
        with torch.device("meta"):
            ghost = build_model(model_cfg, tok.vocab_size, tok.sos_id, tok.eos_id, tok.pad_id, feat_dim)
    except (TypeError, KeyError, ValueError, RuntimeError, AttributeError, IndexError, RecursionError) as exc:
        raise ValueError(f"refusing {where}: its stored model config does not build ({type(exc).__name__}: {exc})") from exc
    n_cfg = sum(p.numel() for p in ghost.parameters())
    if n_cfg > max_params:
        raise ValueError(f"refusing {where}: its stored config describes {n_cfg:,} parameters, more than the limit {max_params:,}")
    return ghost.state_dict(), n_cfg


def check_model_size(model_cfg: dict, state: dict[str, torch.Tensor], tok: Tokenizer, feat_dim: int = 80, where: str = "checkpoint", max_params: int = MAX_MODEL_PARAMS) -> int:
    """Check a stored model config against sane bounds and the stored tensors, allocating nothing.

    The model is built on PyTorch's ``meta`` device (shapes only, no memory; :func:`expected_state`), so a config
    asking for ``hidden_size: 40000`` costs nothing here; its parameter count must stay under ``max_params`` and
    every parameter/buffer shape must equal that of the stored tensor of the same name.

    Parameters
    ----------
    model_cfg : the stored model config; state : stored tensors by name (``model.`` prefix removed);
    tok : the checkpoint's tokenizer (vocabulary size, special ids); feat_dim : fbank bins; where : names the
    checkpoint in errors; max_params : the parameter limit.

    Returns
    -------
    int
        The parameter count computed from the config.

    Raises
    ------
    ValueError
        An integer config value above :data:`MAX_CONFIG_INT` (a ``*layers*``/``*heads*`` one above 1000),
        more than ``max_params`` parameters, or a config whose parameters differ from the stored tensors
        (missing, unexpected or differently shaped names; the message gives both counts and the first
        difference).
    """
    ghost, n_cfg = expected_state(model_cfg, tok, feat_dim, where, max_params)
    check_state_shapes(ghost, state, where, n_cfg)
    return n_cfg


def check_state_shapes(ghost: dict[str, torch.Tensor], state: dict[str, Any], where: str = "checkpoint", n_params: int | None = None) -> None:
    """Compare stored tensors (or their shapes as tuples) with :func:`expected_state`'s by name and shape;
    ``n_params`` (the config's parameter count) is only quoted in the error.

    Raises
    ------
    ValueError
        Missing, unexpected or differently shaped names (the message gives the first difference).
    """
    n_cfg = n_params if n_params is not None else sum(v.numel() for k, v in ghost.items() if not k.startswith("cmvn."))
    want = {k: tuple(v.shape) for k, v in ghost.items()}
    have = {k: tuple(v.shape) if isinstance(v, torch.Tensor) else tuple(v) for k, v in state.items() if isinstance(v, (torch.Tensor, tuple))}
    if want != have:
        n_have = sum(math.prod(s) for k, s in have.items() if k in want and not k.startswith("cmvn."))
        diff = next((f"{k}: config {want.get(k)} vs stored {have.get(k)}" for k in sorted(set(want) | set(have)) if want.get(k) != have.get(k)), "")
        raise ValueError(f"refusing {where}: its stored config gives {n_cfg:,} parameters but its tensors do not match ({n_have:,} stored; first difference {diff})")


def model_state_dict(ckpt: dict[str, Any]) -> dict[str, torch.Tensor]:
    """The model's weights of a checkpoint dict: its ``state_dict`` entries under :data:`MODEL_PREFIX`,
    prefix removed (the keys of ``AttentionASRModel.state_dict()``)."""
    return {k[len(MODEL_PREFIX):]: v for k, v in ckpt["state_dict"].items() if k.startswith(MODEL_PREFIX)}


def fbank_options(meta: dict[str, Any]) -> FbankOptions:
    """The front end a model was trained with, from a checkpoint's :data:`ASR_KEY` entry (or an exported
    model's ``features`` config): its ``fbank`` dict when present, else the defaults with ``feat_dim`` bins
    and a ``frame_shift_s`` hop (checkpoints written before ``fbank`` was stored).

    Raises
    ------
    ValueError
        ``fbank`` holds a key that is not a :class:`FbankOptions` field.
    """
    stored = dict(meta.get("fbank") or {})
    known = {f.name for f in dataclasses.fields(FbankOptions)}
    unknown = sorted(set(stored) - known)
    if unknown:
        raise ValueError(f"unknown fbank option(s) {unknown}; known: {sorted(known)}")
    if not stored:
        stored = {"num_mel_bins": int(meta.get("feat_dim", 80)), "frame_shift_ms": 1000.0 * float(meta.get("frame_shift_s", 0.01))}
    return FbankOptions(**stored)


def load_checkpoint(path: str | Path, map_location: str = "cpu") -> tuple[AttentionASRModel, Tokenizer, dict]:
    """Rebuild model and tokenizer from a training checkpoint, loading with ``weights_only=True``.

    Returns
    -------
    model : AttentionASRModel in eval mode
    tokenizer : Tokenizer
    meta : dict (the :data:`ASR_KEY` entry: ``model_cfg``, ``feat_dim``, ``frame_shift_s``, ...)

    Raises
    ------
    FileNotFoundError
        No file at ``path``.
    ValueError
        The file is not an ``asr`` checkpoint (no ``"asr"`` entry) or refuses to load safely: it holds
        pickled objects other than tensors and plain containers (nothing in it is run), its stored config
        has a ``_target_`` key anywhere (the error names the key path), names an optimiser outside
        :data:`ALLOWED_OPTIMIZERS`, or an unknown encoder/decoder/attention type, or fails
        :func:`check_model_size` (checked before any weight is allocated).
    """
    ckpt = read_checkpoint(path, map_location)
    meta = ckpt[ASR_KEY]
    check_stored_config(meta.get("model_cfg"), meta.get("optim_cfg"), str(path))
    tok = Tokenizer(meta["tokenizer_proto"])
    state = model_state_dict(ckpt)
    check_model_size(meta["model_cfg"], state, tok, meta.get("feat_dim", 80), str(path))
    model = build_model(meta["model_cfg"], tok.vocab_size, tok.sos_id, tok.eos_id, tok.pad_id, meta.get("feat_dim", 80))
    model.load_state_dict(state)
    model.eval()
    return model, tok, meta
