"""The portable model directory: its one writer (``asr-export``) and reader (:class:`asr.inference.Speech2Text`).

A model directory holds, as a Hugging Face model repository does:

* ``config.yaml``: ``format`` (:data:`FORMAT_VERSION`), ``model`` (the ``model`` config group: encoder, attention,
  decoder types and sizes, as in a checkpoint), ``features`` (every :class:`~asr.features.fbank.FbankOptions` field
  and ``cmvn: cmvn.safetensors``), ``tokenizer`` (``kind``: bpe / unigram / char, ``vocab_size``, ``file``),
  ``weights`` (``file``, ``dtype``: the stored floating-point dtype), ``decoding`` (the search options the model
  was evaluated with; :class:`~asr.decoding.search.DecodingOptions` fields) and ``source`` (the checkpoint it was
  exported from);
* ``model.safetensors``: the model's weights without the CMVN statistics, as ``float32`` or ``float16``;
* ``cmvn.safetensors``: the global CMVN ``mean`` and ``istd`` (``1 / std``) buffers, always ``float32``;
* ``tokenizer.model``: the sentencepiece model;
* ``README.md``: the model card (written by ``asr-export``).

Loading runs no pickle at all: safetensors files are a JSON header and raw little-endian tensors, YAML is read with
``yaml.safe_load``, and the stored model config is checked as a checkpoint's is
(:func:`asr.models.checkpoint.check_stored_config`) and built from the type registries only. A float16 model is
loaded into float32 parameters (computation stays float32; only the stored values are rounded).
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import torch
import yaml
from safetensors.torch import load_file, save

from asr.features.fbank import FbankOptions
from asr.models.asr_model import AttentionASRModel, build_model
from asr.models.checkpoint import check_model_size, check_stored_config, fbank_options, load_checkpoint
from asr.text.tokenizer import Tokenizer
from asr.utils.io import atomic_open, atomic_write_text

__all__ = ["FORMAT_VERSION", "CONFIG", "WEIGHTS", "CMVN", "TOKENIZER", "tokenizer_kind", "save_model_dir", "load_model_dir", "is_model_dir", "load_model"]

FORMAT_VERSION = 1
CONFIG, WEIGHTS, CMVN, TOKENIZER = "config.yaml", "model.safetensors", "cmvn.safetensors", "tokenizer.model"
_DTYPES = {"float32": torch.float32, "float16": torch.float16}


def tokenizer_kind(tok: Tokenizer) -> str:
    """``bpe``, ``unigram``, ``char`` or ``word``: the sentencepiece model type stored in the tokenizer's model."""
    from sentencepiece import sentencepiece_model_pb2

    proto = sentencepiece_model_pb2.ModelProto()
    proto.ParseFromString(tok.proto)
    return sentencepiece_model_pb2.TrainerSpec.ModelType.Name(proto.trainer_spec.model_type).lower()


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
    """Write ``config.yaml``, ``model.safetensors``, ``cmvn.safetensors`` and ``tokenizer.model`` (module docstring)
    into ``out_dir`` (created; each file written atomically); returns the config written.

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
        Unknown ``dtype``.
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
        "tokenizer": {"kind": tokenizer_kind(tokenizer), "vocab_size": tokenizer.vocab_size, "file": TOKENIZER},
        "weights": {"file": WEIGHTS, "dtype": dtype, "n_params": int(sum(p.numel() for p in model.parameters()))},
        "decoding": dict(decoding or {}),
        "source": dict(source or {}),
    }
    for name, tensors in ((WEIGHTS, weights), (CMVN, cmvn)):
        with atomic_open(out / name, "wb") as f:
            f.write(save(tensors, metadata={"format": "pt", "asr_format": str(FORMAT_VERSION)}))
    with atomic_open(out / TOKENIZER, "wb") as f:
        f.write(tokenizer.proto)
    atomic_write_text(yaml.safe_dump(config, sort_keys=False), out / CONFIG)
    return config


def load_model_dir(path: str | Path, map_location: str | torch.device = "cpu") -> tuple[AttentionASRModel, Tokenizer, dict[str, Any]]:
    """Rebuild model and tokenizer from a model directory (no pickle is run).

    Returns
    -------
    model : AttentionASRModel in eval mode, float32 parameters on ``map_location``
    tokenizer : Tokenizer
    config : dict (``config.yaml``; ``config["fbank"]`` is added: the :class:`FbankOptions`)

    Raises
    ------
    FileNotFoundError
        ``path`` is not a directory with ``config.yaml`` (the message names the missing file).
    ValueError
        ``config.yaml`` is not a mapping, has another ``format`` version, a ``_target_`` key or unknown
        model types; the weights do not fit the model (missing or unexpected keys, shapes) or the config fails
        :func:`~asr.models.checkpoint.check_model_size` (checked before any weight is allocated).
    """
    d = Path(path)
    for name in (CONFIG, WEIGHTS):
        if not (d / name).is_file():
            raise FileNotFoundError(f"not an asr model directory: {d / name} is missing")
    config = yaml.safe_load((d / CONFIG).read_text(encoding="utf-8"))
    if not isinstance(config, dict):
        raise ValueError(f"{d / CONFIG}: not a mapping")
    if config.get("format") != FORMAT_VERSION:
        raise ValueError(f"{d / CONFIG}: format {config.get('format')!r}, this asr reads format {FORMAT_VERSION}")
    check_stored_config(config.get("model"), None, str(d / CONFIG))
    features = dict(config.get("features") or {})
    cmvn_file = features.pop("cmvn", CMVN)
    fbank = fbank_options({"fbank": features})
    tok = Tokenizer((d / config.get("tokenizer", {}).get("file", TOKENIZER)).read_bytes())
    state = dict(load_file(str(d / config.get("weights", {}).get("file", WEIGHTS))))
    state.update({f"cmvn.{k}": v for k, v in load_file(str(d / cmvn_file)).items()})
    check_model_size(config["model"], state, tok, fbank.num_mel_bins, str(d / CONFIG))
    model = build_model(config["model"], tok.vocab_size, tok.sos_id, tok.eos_id, tok.pad_id, fbank.num_mel_bins)
    try:
        model.load_state_dict(state)  # copies into the float32 parameters
    except RuntimeError as exc:
        raise ValueError(f"{d}: the weights do not fit the model of config.yaml ({exc})") from exc
    model.eval().to(map_location)
    config["fbank"] = fbank
    return model, tok, config


def load_model(path: str | Path, map_location: str | torch.device = "cpu") -> tuple[AttentionASRModel, Tokenizer, FbankOptions, dict[str, Any]]:
    """The one loader of a local model: a model directory (:func:`load_model_dir`) or a ``.ckpt`` training
    checkpoint (:func:`~asr.models.checkpoint.load_checkpoint`).

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
    FileNotFoundError
        Nothing at ``path`` (the message gives the absolute path looked at), or a directory that is not a model
        directory (the missing file named).
    ValueError
        As the two loaders.
    """
    p = Path(path)
    if p.is_dir():
        model, tok, config = load_model_dir(p, map_location)
        fbank = config["fbank"]
        info = {"model_cfg": config["model"], "decoding": dict(config.get("decoding") or {}), "feat_dim": fbank.num_mel_bins, "frame_shift_s": fbank.frame_shift_s}
        return model, tok, fbank, info
    if not p.exists():
        raise FileNotFoundError(f"no model directory or checkpoint at {p} (looked at {p.absolute()})")
    model, tok, meta = load_checkpoint(p, str(map_location))
    info = {"model_cfg": meta["model_cfg"], "decoding": {}, "feat_dim": meta.get("feat_dim", 80), "frame_shift_s": meta.get("frame_shift_s", 0.01)}
    return model.to(map_location), tok, fbank_options(meta), info
