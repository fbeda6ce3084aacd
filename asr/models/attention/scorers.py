"""Attention mechanisms for the RNN attention decoder, selectable by config.

Every mechanism has the same explicit-state interface, so a beam search can reorder its state with
``index_select`` and nothing is cached on ``self``:

- ``precompute(keys) -> memory``: work that depends on the encoder output only (key projections),
  done once per utterance, ``(B, S, *)``;
- ``init_state(mask) -> state``: the previous attention weights before the first step, ``(B, S)``
  (uniform over valid frames, as Chorowski et al.);
- ``forward(query, keys, memory, mask, state, hard=False) -> (context, weights, state)`` with
  ``query (B, Dq)``, ``keys (B, S, Dk)``, ``mask (B, S)`` bool True = valid frame,
  ``context (B, Dk)``, ``weights (B, S)`` (sum to 1, exactly 0 on padding), ``state (B, S)`` (the soft
  weights; ``(B, S + 1)`` for the local scorers, which also count the output step);
- ``forward_window(..., idx)``: the same step over a gathered window of frames ``idx (B, W)`` (windowed
  decoding, :mod:`asr.models.decoders.rnn`); only ``location`` needs the absolute frame indices.

**Hard attention** (Xu et al. 2015, arXiv 1502.03044, "stochastic hard attention"): the context is one encoder
frame, ``c_t = h_{s*}``. ``hard=True`` in ``forward`` (the decoding option ``hard_attention``) takes
``s* = argmax_s alpha_t(s)`` for any trained model. A model built with ``hard: st`` trains with it: ``s*`` is
sampled from ``alpha_t`` and the gradient passes straight through (Bengio et al. 2013, arXiv 1308.3432):
the forward pass uses the one-hot ``e_{s*}``, the backward pass the gradient of the soft ``alpha_t``
(``e_{s*} + alpha_t - stopgrad(alpha_t)``); such a model decodes with the argmax. Xu et al. train with
REINFORCE and a moving-average baseline instead; straight-through needs no reward and no variance control. The
returned weights are the one-hot ones (what was attended, for plots); the state (previous weights for
``location_aware``) stays the soft ``alpha_t``, so the scorer sees the inputs it was trained on.

**Local attention** (Luong et al. 2015, §3.2; :class:`LocalAttention`, types ``local_m`` and ``local_p``):
at output step ``t`` only the ``2D + 1`` frames ``[p_t - D, p_t + D]`` are scored, over any base scorer
(``dot``, ``general``, ``additive``, ``location``, ``location_aware``):

- ``local_m`` (monotonic): ``p_t = t * ratio``, ``ratio`` the expected encoder frames per output token (Luong
  sets ``p_t = t`` for text, where source and target advance at the same rate; speech needs a rate), clipped to
  the utterance's last frame ``S_b - 1``; the weights are the base softmax over the window (Luong eq. 7);
- ``local_p`` (predictive): ``p_t = S_b * sigmoid(v_p^T tanh(W_p h_t))`` (eq. 9, ``S_b`` the utterance's own
  length, not the padded one) and ``a_t(s) = align(h_t, h_s) exp(-(s - p_t)^2 / (2 sigma^2))``,
  ``sigma = D / 2`` (eq. 10). We add the Gaussian's log to the scores before the softmax, i.e. the product of
  eq. 10 renormalised over the window, so the weights sum to 1 like every other scorer's; ``p_t`` is real
  and trained through the Gaussian term.

The window is intersected with the valid frames, so padding never gets weight, and always holds at least one
valid frame (``D >= 1``, ``p_t`` clipped to ``[0, S_b]``). Scores are computed over all ``S`` frames and masked,
so training costs what global attention costs; windowed decoding (:mod:`asr.models.decoders.rnn`) is the
inference path whose cost is ``O(W)`` per step.

The maths and references are in ``docs/attention.md`` of the project notes: Luong et al. 2015
(arXiv 1508.04025) for ``dot``, ``general`` and ``location``; Bahdanau et al. 2015 (arXiv 1409.0473)
for ``additive``; Chorowski et al. 2015 (arXiv 1506.07503) for ``location_aware``; Vaswani et al. 2017
(arXiv 1706.03762) for ``multihead``.
"""

from __future__ import annotations

import math
from functools import partial

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from asr.models.layers import MultiHeadAttention as SharedMultiHeadAttention


class Attention(nn.Module):
    """Base class: masking, normalisation and the context vector; subclasses define ``score``.

    Parameters
    ----------
    query_dim : int
        Decoder state size Dq.
    key_dim : int
        Encoder output size Dk.
    temperature : float
        Sharpening (Chorowski et al. 2015, §2.3): scores are multiplied by it before the softmax (1 = none).
    """

    #: ``"none"`` (soft attention) or ``"st"`` (hard attention trained straight-through, module docstring);
    #: set by :func:`build_attention` from the config key ``hard``.
    hard_train: str = "none"

    def __init__(self, query_dim: int, key_dim: int, temperature: float = 1.0) -> None:
        super().__init__()
        self.query_dim = query_dim
        self.key_dim = key_dim
        self.temperature = temperature

    def precompute(self, keys: Tensor) -> Tensor | None:
        """Per-utterance projection of the keys ``(B, S, Dk) -> (B, S, A)``, or None when unused."""
        return None

    def init_state(self, mask: Tensor) -> Tensor:
        """Uniform weights over valid frames, ``(B, S)`` float (the ``alpha_0`` of Chorowski et al.)."""
        m = mask.float()
        return m / m.sum(-1, keepdim=True).clamp_min(1.0)

    def score(self, query: Tensor, keys: Tensor, memory: Tensor | None, state: Tensor) -> Tensor:
        """Unnormalised scores ``(B, S)``."""
        raise NotImplementedError

    def forward(
        self, query: Tensor, keys: Tensor, memory: Tensor | None, mask: Tensor, state: Tensor, hard: bool = False
    ) -> tuple[Tensor, Tensor, Tensor]:
        """One attention step; see the module docstring for shapes. ``hard``: argmax context (decoding)."""
        return self._attend(self.score(query, keys, memory, state), keys, mask, hard)

    def forward_window(
        self, query: Tensor, keys: Tensor, memory: Tensor | None, mask: Tensor, state: Tensor, idx: Tensor, hard: bool = False
    ) -> tuple[Tensor, Tensor, Tensor]:
        """:meth:`forward` over a window: ``keys``, ``memory``, ``mask``, ``state`` are the frames ``idx (B, W)``
        gathered along the frame axis; returns ``context (B, Dk)``, ``weights`` and ``state`` ``(B, W)``."""
        return self.forward(query, keys, memory, mask, state, hard)

    def _attend(self, scores: Tensor, keys: Tensor, mask: Tensor, hard: bool) -> tuple[Tensor, Tensor, Tensor]:
        """Temperature, mask, softmax, hard selection and context from ``scores (B, S)``."""
        if self.temperature != 1.0:
            scores = scores * self.temperature
        soft = torch.softmax(scores.masked_fill(~mask, float("-inf")), dim=-1)
        weights = self._select(soft, hard)
        if weights is not soft and not weights.requires_grad:
            # one-hot without a gradient to carry: the frame itself (exact, and O(Dk) instead of O(S Dk))
            context = keys[torch.arange(keys.shape[0], device=keys.device), weights.argmax(-1)]
        else:
            context = torch.bmm(weights.unsqueeze(1), keys).squeeze(1)
        return context, weights, soft

    def _select(self, soft: Tensor, hard: bool) -> Tensor:
        """The weights the context is built from: ``soft``, or one-hot (argmax; sampled straight-through when
        training a ``hard_train="st"`` model)."""
        if self.hard_train == "st" and self.training:
            return harden(soft, sample=True, straight_through=True)
        if hard or self.hard_train == "st":
            return harden(soft.detach(), sample=False)
        return soft


def harden(weights: Tensor, sample: bool = False, straight_through: bool = False) -> Tensor:
    """One-hot attention weights over the last axis of ``weights (..., S)``: at the argmax, or at a position
    sampled from ``weights`` (``sample``, Xu et al. 2015). With ``straight_through`` the result is the
    straight-through estimator ``onehot + weights - weights.detach()`` (forward: one-hot; backward: the soft
    weights' gradient; Bengio et al. 2013). Padding (weight 0) is never picked."""
    flat = weights.reshape(-1, weights.shape[-1])
    if sample:
        idx = torch.multinomial(flat.detach().float(), 1)
    else:
        idx = flat.argmax(-1, keepdim=True)
    onehot = torch.zeros_like(flat).scatter_(-1, idx, 1.0).view_as(weights)
    return onehot + (weights - weights.detach()) if straight_through else onehot  # exactly one-hot forward


class DotAttention(Attention):
    """``score = q^T k`` (Luong 2015). When Dq != Dk both sides are projected to ``att_dim``."""

    def __init__(self, query_dim: int, key_dim: int, att_dim: int = 256, temperature: float = 1.0) -> None:
        super().__init__(query_dim, key_dim, temperature)
        self.project = query_dim != key_dim
        if self.project:
            self.q_proj = nn.Linear(query_dim, att_dim, bias=False)
            self.k_proj = nn.Linear(key_dim, att_dim, bias=False)

    def precompute(self, keys: Tensor) -> Tensor | None:
        return self.k_proj(keys) if self.project else keys

    def score(self, query, keys, memory, state):
        q = self.q_proj(query) if self.project else query
        return torch.bmm(memory, q.unsqueeze(-1)).squeeze(-1)


class GeneralAttention(Attention):
    """``score = q^T W_a k`` (Luong 2015, "general"/multiplicative), computed as ``(W_a^T q)^T k``."""

    def __init__(self, query_dim: int, key_dim: int, temperature: float = 1.0) -> None:
        super().__init__(query_dim, key_dim, temperature)
        self.W_a = nn.Linear(query_dim, key_dim, bias=False)

    def score(self, query, keys, memory, state):
        return torch.bmm(keys, self.W_a(query).unsqueeze(-1)).squeeze(-1)


class AdditiveAttention(Attention):
    """``score = v^T tanh(W q + U k + b)`` (Bahdanau 2015, "concat")."""

    def __init__(self, query_dim: int, key_dim: int, att_dim: int = 256, temperature: float = 1.0) -> None:
        super().__init__(query_dim, key_dim, temperature)
        self.W = nn.Linear(query_dim, att_dim, bias=False)
        self.U = nn.Linear(key_dim, att_dim, bias=True)
        self.v = nn.Linear(att_dim, 1, bias=False)

    def precompute(self, keys: Tensor) -> Tensor:
        return self.U(keys)

    def score(self, query, keys, memory, state):
        return self.v(torch.tanh(memory + self.W(query).unsqueeze(1))).squeeze(-1)


class LocationAttention(Attention):
    """Luong's location-based attention: ``alpha_t = softmax(W_a h_t)``, from the decoder state only.

    ``W_a`` maps to ``max_frames`` positions; the scores are cut to the S encoder frames and padding masked.

    Raises
    ------
    ValueError
        In ``score`` if the utterance has more than ``max_frames`` encoder frames.
    """

    def __init__(self, query_dim: int, key_dim: int, max_frames: int = 512, temperature: float = 1.0) -> None:
        super().__init__(query_dim, key_dim, temperature)
        self.max_frames = max_frames
        self.W_a = nn.Linear(query_dim, max_frames)

    def score(self, query, keys, memory, state):
        s = keys.shape[1]
        if s > self.max_frames:
            raise ValueError(
                f"location attention covers at most {self.max_frames} encoder frames, got {s}; "
                "raise model.attention.max_frames"
            )
        return self.W_a(query)[:, :s]

    def forward_window(self, query, keys, memory, mask, state, idx, hard=False):
        """Luong's location scores are indexed by absolute frame, so the window gathers them at ``idx``."""
        return self._attend(self.W_a(query).gather(1, idx), keys, mask, hard)


class LocationAwareAttention(Attention):
    """Chorowski's location-aware attention: ``score = w^T tanh(W q + V k + U f + b)``, ``f = F * alpha_{t-1}``.

    ``F`` is a 1-D convolution (``conv_channels`` filters of width ``kernel_size``) over the previous
    weights, so the mechanism knows where it attended and moves forward (ESPnet ``AttLoc``,
    SpeechBrain ``LocationAwareAttention``).
    """

    def __init__(
        self,
        query_dim: int,
        key_dim: int,
        att_dim: int = 256,
        conv_channels: int = 10,
        kernel_size: int = 31,
        temperature: float = 1.0,
    ) -> None:
        super().__init__(query_dim, key_dim, temperature)
        if kernel_size % 2 == 0:
            raise ValueError(f"kernel_size must be odd to keep frames centred, got {kernel_size}")
        self.W = nn.Linear(query_dim, att_dim, bias=False)
        self.V = nn.Linear(key_dim, att_dim, bias=True)
        self.conv = nn.Conv1d(1, conv_channels, kernel_size, padding=kernel_size // 2, bias=False)
        self.U = nn.Linear(conv_channels, att_dim, bias=False)
        self.w = nn.Linear(att_dim, 1, bias=False)

    def precompute(self, keys: Tensor) -> Tensor:
        return self.V(keys)

    def score(self, query, keys, memory, state):
        f = self.conv(state.unsqueeze(1)).transpose(1, 2)  # (B, S, C)
        if torch.is_grad_enabled() or torch.is_autocast_enabled(memory.device.type):
            return self.w(torch.tanh(memory + self.W(query).unsqueeze(1) + self.U(f))).squeeze(-1)
        # Decoding: the same sum with one (B, S, A) tensor instead of four (U f accumulated into it by addmm_, tanh
        # in place); the search's cost at CPU sizes is memory traffic over B x S x A (equal to float rounding).
        b, s, a = memory.shape
        e = memory + self.W(query).unsqueeze(1)
        e.view(b * s, a).addmm_(f.reshape(b * s, -1), self.U.weight.t())
        return (e.tanh_() @ self.w.weight.t()).squeeze(-1)


class MultiHeadScorer(Attention):
    """Multi-head scaled dot-product attention (Vaswani 2017) with one query per step: the shared
    :class:`asr.models.layers.MultiHeadAttention` (the Transformer's) as an RNN decoder scorer.

    ``head_i = softmax(q W_q^i (k W_k^i)^T / sqrt(d)) k W_v^i``; heads concatenated and projected by ``W_o``
    back to ``key_dim`` so the decoder sees a context of the usual size. The returned weights (and state)
    are the mean over heads, for plots. Checkpoints written before the layer was shared (parameters
    ``W_q``/``W_kv``/``W_o``) load unchanged: their names are mapped to ``mha.w_q``/``mha.w_kv``/``mha.w_o``.
    """

    def __init__(
        self, query_dim: int, key_dim: int, att_dim: int = 256, num_heads: int = 4, temperature: float = 1.0
    ) -> None:
        super().__init__(query_dim, key_dim, temperature)
        self.mha = SharedMultiHeadAttention(att_dim, num_heads, kv_dim=key_dim, query_dim=query_dim, out_dim=key_dim)
        self.h, self.d = num_heads, att_dim // num_heads

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):  # noqa: D401 -- torch hook
        for old, new in (("W_q", "mha.w_q"), ("W_kv", "mha.w_kv"), ("W_o", "mha.w_o")):
            for kind in ("weight", "bias"):
                if prefix + f"{old}.{kind}" in state_dict:
                    state_dict[prefix + f"{new}.{kind}"] = state_dict.pop(prefix + f"{old}.{kind}")
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def precompute(self, keys: Tensor) -> Tensor:
        return self.mha.w_kv(keys)  # (B, S, 2A): keys then values, gathered along S by windowed decoding

    def forward(self, query, keys, memory, mask, state, hard=False):
        """As :meth:`Attention.forward`; ``hard`` takes each head's argmax frame."""
        k, v = (self.mha._heads(x) for x in memory.chunk(2, dim=-1))  # each (B, h, S, d)
        q = self.mha.project_q(query.unsqueeze(1))  # (B, h, 1, d)
        scores = self.mha.scores(q, k, mask[:, None, None, :]).squeeze(2) * self.temperature  # (B, h, S)
        soft = torch.softmax(scores, dim=-1)
        w = self._select(soft, hard)
        return self.mha.merge(w.unsqueeze(2) @ v).squeeze(1), w.mean(1), soft.mean(1)


#: The name this scorer had before the layer was shared (older imports).
MultiHeadAttention = MultiHeadScorer


class LocalAttention(Attention):
    """Luong et al. 2015 local attention (``local_m`` / ``local_p``) over a base scorer; maths in the module
    docstring.

    Parameters
    ----------
    query_dim, key_dim : int
    mode : str
        ``"local_m"`` (``p_t = t * ratio``) or ``"local_p"`` (predicted ``p_t`` and Gaussian weighting).
    base : str
        The scorer inside the window: ``dot``, ``general``, ``additive``, ``location`` or ``location_aware``.
    window : int
        D, encoder frames on each side of ``p_t`` (the window has ``2D + 1`` frames); >= 1.
    ratio : float
        ``local_m``: encoder frames per output token (> 0).
    p_dim : int
        ``local_p``: size of ``W_p``.
    temperature : float
        As every scorer's.
    **base_kwargs
        Passed to the base scorer (e.g. ``att_dim``, ``conv_channels``, ``kernel_size``).

    The state is ``(B, S + 1)``: the base scorer's state (previous soft weights) and, in the last column, the
    number of output steps taken ``t``.

    Raises
    ------
    ValueError
        Unknown ``mode``, a base that is not a single-score scorer (``multihead``, a local one), ``window < 1``
        or ``ratio <= 0``.
    """

    BASES = ("dot", "general", "additive", "location", "location_aware")

    def __init__(
        self,
        query_dim: int,
        key_dim: int,
        mode: str = "local_m",
        base: str = "location_aware",
        window: int = 8,
        ratio: float = 1.0,
        p_dim: int = 256,
        temperature: float = 1.0,
        **base_kwargs,
    ) -> None:
        super().__init__(query_dim, key_dim, temperature)
        if mode not in ("local_m", "local_p"):
            raise ValueError(f"local attention mode must be local_m or local_p, got {mode!r}")
        if base not in self.BASES:
            raise ValueError(f"local attention needs a base scorer out of {list(self.BASES)}, got {base!r}")
        if int(window) < 1:
            raise ValueError(f"local attention window D must be >= 1 frame, got {window}")
        if not ratio > 0:
            raise ValueError(f"local_m ratio (encoder frames per output token) must be > 0, got {ratio}")
        self.mode, self.window, self.ratio = mode, int(window), float(ratio)
        self.base = ATTENTION_TYPES[base](query_dim, key_dim, **base_kwargs)
        if mode == "local_p":
            self.W_p = nn.Linear(query_dim, p_dim, bias=False)
            self.v_p = nn.Linear(p_dim, 1, bias=False)

    def precompute(self, keys: Tensor) -> Tensor | None:
        return self.base.precompute(keys)

    def init_state(self, mask: Tensor) -> Tensor:
        """The base scorer's initial weights and a step counter 0: ``(B, S + 1)``."""
        return torch.cat([self.base.init_state(mask), mask.new_zeros(mask.shape[0], 1, dtype=torch.float)], -1)

    def position(self, query: Tensor, lens: Tensor, t: Tensor) -> Tensor:
        """``p_t (B,)`` float, in frames: ``t * ratio`` clipped to ``lens - 1`` (local-m) or
        ``lens * sigmoid(v_p^T tanh(W_p h_t))`` (local-p); ``lens (B,)`` valid frames, ``t (B,)`` steps taken."""
        if self.mode == "local_m":
            return torch.minimum(t * self.ratio, (lens - 1).to(t.dtype))
        return lens.to(query.dtype) * torch.sigmoid(self.v_p(torch.tanh(self.W_p(query)))).squeeze(-1)

    def forward(self, query, keys, memory, mask, state, hard=False):
        s = keys.shape[1]
        prev, t = state[:, :s], state[:, s]
        lens = mask.sum(-1)
        p = self.position(query, lens, t)
        dist = torch.arange(s, device=keys.device, dtype=p.dtype)[None, :] - p[:, None]  # (B, S)
        in_window = dist.abs() <= self.window
        scores = self.base.score(query, keys, memory, prev)  # the temperature is this module's (in _attend)
        if self.mode == "local_p":
            sigma = self.window / 2.0
            scores = scores - dist.pow(2) / (2 * sigma * sigma)
        context, weights, soft = self._attend(scores, keys, mask & in_window, hard)
        return context, weights, torch.cat([soft, (t + 1)[:, None]], -1)

    def forward_window(self, query, keys, memory, mask, state, idx, hard=False):
        raise ValueError(
            f"{self.mode} attention is already local (a window of 2D+1 = {2 * self.window + 1} frames around p_t); "
            "windowed decoding (att_window_back/att_window_ahead) is for global-attention models"
        )


#: Config names → classes (``model.attention.type`` in the Hydra configs).
ATTENTION_TYPES: dict[str, type[Attention]] = {
    "dot": DotAttention,
    "general": GeneralAttention,
    "additive": AdditiveAttention,
    "location": LocationAttention,
    "location_aware": LocationAwareAttention,
    "multihead": MultiHeadScorer,
    "local_m": partial(LocalAttention, mode="local_m"),  # type: ignore[dict-item]
    "local_p": partial(LocalAttention, mode="local_p"),  # type: ignore[dict-item]
}

#: How a scorer is trained: soft, or hard attention trained straight-through (config key ``hard``).
HARD_TRAINING = ("none", "st")


def build_attention(type: str, query_dim: int, key_dim: int, **kwargs) -> Attention:
    """Make an attention mechanism by config name (see :data:`ATTENTION_TYPES`).

    ``hard`` (``"none"`` or ``"st"``, module docstring) selects soft or straight-through hard attention.

    Raises
    ------
    ValueError
        Unknown ``type`` or ``hard``, listing the known ones.
    """
    if type not in ATTENTION_TYPES:
        raise ValueError(f"unknown attention type {type!r}; choose one of {sorted(ATTENTION_TYPES)}")
    hard = str(kwargs.pop("hard", "none"))
    if hard not in HARD_TRAINING:
        raise ValueError(f"unknown attention hard={hard!r}; choose one of {list(HARD_TRAINING)}")
    att = ATTENTION_TYPES[type](query_dim, key_dim, **kwargs)
    att.hard_train = hard
    return att
