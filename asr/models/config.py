"""Typed, frozen model configs: what a model is, checked when it is built and stored whole with it.

    cfg = ModelConfig.from_dict(hydra_cfg.model)      # ValueError naming an unknown key or a bad value
    cfg.encoder.hidden_size, cfg.decoder.num_layers   # typed fields (whisper's ModelDimensions, nanoGPT's GPTConfig)
    cfg.to_dict()                                      # every field, defaults included: the checkpoint's model_cfg

One config class per encoder, decoder and attention scorer, made from its constructor's signature
(:func:`config_class`: the parameters the model builder does not supply, with their annotations and defaults), so a
new constructor argument is a config field without a second list to keep in step. Each class is a frozen dataclass
whose ``type`` field names the registry entry (``conf/model/<group>/<type>.yaml``).

Why stored whole: a checkpoint or model directory records every field, defaults included (:meth:`ModelConfig.to_dict`),
so a later change of a default never changes an old model. Older checkpoints, which stored the Hydra group as given,
load through :meth:`ModelConfig.from_dict`, which fills the missing fields with today's defaults (those the model was
built with, since the stored keys were the only ones set).
"""

from __future__ import annotations

import dataclasses
import inspect
from collections.abc import Mapping
from typing import Any

__all__ = ["config_class", "ModelConfig", "GuidedAttentionConfig", "encoder_config", "decoder_config", "attention_config"]

#: Constructor parameters the model builder supplies (from the data, the tokenizer or the other parts), not config fields.
SUPPLIED = {"self", "input_dim", "vocab_size", "enc_dim", "attention", "query_dim", "key_dim"}


def _plain(v: Any) -> Any:
    """Hydra containers (ListConfig/DictConfig) and lists as plain Python values (lists as tuples: frozen)."""
    if isinstance(v, Mapping):
        return {str(k): _plain(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)) or type(v).__name__ == "ListConfig":
        return tuple(_plain(x) for x in v)
    return v


def config_class(name: str, cls: Any, kind: str) -> type:
    """A frozen dataclass named ``name`` with a ``type`` field and one field per parameter of ``cls``'s constructor
    (``cls`` may be a ``functools.partial``: its bound keywords are left out) other than :data:`SUPPLIED`, with the
    constructor's annotations and defaults. ``kind`` ("encoder", ...) goes into error messages."""
    target = getattr(cls, "func", cls)
    bound = set(getattr(cls, "keywords", {}) or {})
    fields, var_kw = [], None
    for p in inspect.signature(target.__init__).parameters.values():
        if p.kind == p.VAR_KEYWORD:  # e.g. local attention's options of its base scorer: one dict field
            var_kw = p.name
            fields.append((p.name, dict, dataclasses.field(default_factory=dict)))
            continue
        if p.name in SUPPLIED or p.name in bound or p.kind == p.VAR_POSITIONAL:
            continue
        if p.default is inspect.Parameter.empty:
            raise TypeError(f"{target.__name__}.__init__ parameter {p.name} needs a default to be a config field")
        default = tuple(p.default) if isinstance(p.default, list) else p.default
        fields.append((p.name, p.annotation if p.annotation is not inspect.Parameter.empty else Any, dataclasses.field(default=default)))
    out = dataclasses.make_dataclass(name, [("type", str, dataclasses.field(default="")), *fields], frozen=True)
    out.__doc__ = f"Config of a {kind} {target.__name__} (fields: its constructor's parameters; :mod:`asr.models.config`)."
    out.kind, out.var_kw = kind, var_kw
    return out


def _build(classes: Mapping[str, type], kind: str, d: Mapping[str, Any] | None, extra: set[str] = frozenset()) -> Any:
    """``classes[d["type"]]`` filled from ``d``; keys in ``extra`` are ignored (other groups' business).

    Raises
    ------
    ValueError
        No or an unknown ``type``, or an unknown key (the message lists the known ones).
    """
    d = _plain(dict(d or {}))
    typ = d.get("type")
    if typ not in classes:
        raise ValueError(f"unknown {kind} type {typ!r} (model.{kind}.type); choose one of {sorted(classes)}")
    cls = classes[typ]
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(d) - known - set(extra))
    if unknown and cls.var_kw:  # passed on through the constructor's **kwargs (checked by whoever takes them)
        d[cls.var_kw] = {**dict(d.get(cls.var_kw) or {}), **{k: d.pop(k) for k in unknown}}
        unknown = []
    if unknown:
        raise ValueError(f"model.{kind} ({typ}): unknown key(s) {unknown}; known: {sorted(known - {'type'})}")
    return cls(**{k: v for k, v in d.items() if k in known})


def _classes(registry: Mapping[str, Any], kind: str) -> dict[str, type]:
    return {name: config_class(f"{''.join(w.title() for w in name.split('_'))}{kind.title()}Config", c, kind) for name, c in registry.items()}


_CACHE: dict[str, dict[str, type]] = {}


def _registry(kind: str) -> dict[str, type]:
    """The config classes of one group (made once, from the registries of :mod:`asr.models.asr_model` and the scorers)."""
    if kind not in _CACHE:
        from asr.models.asr_model import DECODERS, ENCODERS
        from asr.models.attention.scorers import ATTENTION_TYPES

        _CACHE[kind] = _classes({"encoder": ENCODERS, "decoder": DECODERS, "attention": ATTENTION_TYPES}[kind], kind)
    return _CACHE[kind]


def encoder_config(d: Mapping[str, Any]) -> Any:
    """The typed config of ``model.encoder`` (ValueError as :func:`_build`)."""
    return _build(_registry("encoder"), "encoder", d)


def decoder_config(d: Mapping[str, Any]) -> Any:
    """The typed config of ``model.decoder`` (ValueError as :func:`_build`)."""
    return _build(_registry("decoder"), "decoder", d)


def attention_config(d: Mapping[str, Any]) -> Any:
    """The typed config of ``model.attention`` (its ``hard`` key, ``none`` or ``st``, is a field too)."""
    if "attention+hard" not in _CACHE:
        _CACHE["attention+hard"] = {
            name: dataclasses.make_dataclass(c.__name__, [("hard", str, dataclasses.field(default="none"))], bases=(c,), frozen=True) for name, c in _registry("attention").items()
        }
    return _build(_CACHE["attention+hard"], "attention", d)


@dataclasses.dataclass(frozen=True)
class GuidedAttentionConfig:
    """``model.guided_attention``: weight of the diagonal prior loss (0 = off), its width ``sigma`` (fraction of the
    utterance), and ``epochs`` it lasts (0 = all)."""

    weight: float = 0.0
    sigma: float = 0.3
    epochs: int = 0


@dataclasses.dataclass(frozen=True)
class ModelConfig:
    """The ``model`` group: encoder, attention scorer (used by decoders that take one), decoder, and the losses.

    Attributes
    ----------
    encoder, decoder, attention : typed configs (:func:`encoder_config`, :func:`decoder_config`, :func:`attention_config`);
        ``attention`` None when absent (allowed for decoders with their own attention, the Transformer's)
    label_smoothing : float
        Of the attention decoder's cross-entropy.
    ctc_weight : float
        Weight of the CTC branch in training (0 = no CTC branch).
    init : str
        ``default`` (torch's) or ``xavier_uniform``.
    guided_attention : GuidedAttentionConfig
    """

    encoder: Any
    decoder: Any
    attention: Any
    label_smoothing: float = 0.1
    ctc_weight: float = 0.0
    init: str = "default"
    guided_attention: GuidedAttentionConfig = dataclasses.field(default_factory=GuidedAttentionConfig)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "ModelConfig":
        """Typed config of a ``model`` mapping (the Hydra group, or a checkpoint's stored ``model_cfg``).

        Raises
        ------
        ValueError
            A missing or unknown group or key, or an unknown ``type``/``init`` (the message names it); a value
            that is not a number where one is needed.
        """
        d = _plain(dict(d))
        top = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - top)
        if unknown:
            raise ValueError(f"model: unknown key(s) {unknown}; known: {sorted(top)}")
        for group in ("encoder", "decoder"):
            if group not in d:
                raise ValueError(f"model.{group} is missing")
        ga = dict(d.get("guided_attention") or {})
        bad = sorted(set(ga) - {f.name for f in dataclasses.fields(GuidedAttentionConfig)})
        if bad:
            raise ValueError(f"model.guided_attention: unknown key(s) {bad}; known: weight, sigma, epochs")
        init = str(d.get("init", "default"))
        if init not in ("default", "xavier_uniform"):
            raise ValueError(f"unknown model.init {init!r}; choose default or xavier_uniform")
        from asr.models.asr_model import decoder_uses_attention

        dec = decoder_config(d["decoder"])
        if not d.get("attention") and decoder_uses_attention(dec.type):
            raise ValueError(f"model.attention is missing: the {dec.type} decoder takes an attention scorer (e.g. type: location_aware)")
        try:
            return cls(
                encoder=encoder_config(d["encoder"]), decoder=dec,
                attention=attention_config(d["attention"]) if d.get("attention") else None,
                label_smoothing=float(d.get("label_smoothing", 0.1)), ctc_weight=float(d.get("ctc_weight", 0.0)), init=init,
                guided_attention=GuidedAttentionConfig(float(ga.get("weight", 0.0)), float(ga.get("sigma", 0.3)), int(ga.get("epochs", 0))),
            )
        except (TypeError, ValueError) as exc:
            raise ValueError(f"model config: {exc}") from None

    def to_dict(self) -> dict[str, Any]:
        """Every field as plain values (tuples as lists): what checkpoints and model directories store."""
        def plain(v: Any) -> Any:
            if isinstance(v, dict):
                return {k: plain(x) for k, x in v.items()}
            if isinstance(v, (list, tuple)):
                return [plain(x) for x in v]
            return v

        return plain(dataclasses.asdict(self))

    def kwargs(self, group: str) -> dict[str, Any]:
        """Constructor keyword arguments of ``group`` (``encoder``, ``decoder``, ``attention``; without ``type``,
        and ``hard`` kept for :func:`~asr.models.attention.scorers.build_attention`)."""
        cfg = getattr(self, group)
        out = {k: (list(v) if isinstance(v, tuple) else v) for k, v in dataclasses.asdict(cfg).items()}
        out.pop("type")
        if getattr(cfg, "var_kw", None):
            out.update(out.pop(cfg.var_kw))
        return out
