"""Attention mechanisms for the RNN attention decoder, selectable by config.

Every mechanism has the same explicit-state interface, so a beam search can reorder its state with
``index_select`` and nothing is cached on ``self``:

- ``precompute(keys) -> memory``: work that depends on the encoder output only (key projections),
  done once per utterance, ``(B, S, *)``;
- ``init_state(mask) -> state``: the previous attention weights before the first step, ``(B, S)``
  (uniform over valid frames, as Chorowski et al.);
- ``forward(query, keys, memory, mask, state) -> (context, weights, state)`` with
  ``query (B, Dq)``, ``keys (B, S, Dk)``, ``mask (B, S)`` bool True = valid frame,
  ``context (B, Dk)``, ``weights (B, S)`` (sum to 1, exactly 0 on padding), ``state (B, S)``.

The maths and references are in ``docs/attention.md`` of the project notes: Luong et al. 2015
(arXiv 1508.04025) for ``dot``, ``general`` and ``location``; Bahdanau et al. 2015 (arXiv 1409.0473)
for ``additive``; Chorowski et al. 2015 (arXiv 1506.07503) for ``location_aware``; Vaswani et al. 2017
(arXiv 1706.03762) for ``multihead``.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn


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
        self, query: Tensor, keys: Tensor, memory: Tensor | None, mask: Tensor, state: Tensor
    ) -> tuple[Tensor, Tensor, Tensor]:
        """One attention step; see the module docstring for shapes."""
        scores = self.score(query, keys, memory, state)
        if self.temperature != 1.0:
            scores = scores * self.temperature
        scores = scores.masked_fill(~mask, float("-inf"))
        weights = torch.softmax(scores, dim=-1)
        context = torch.bmm(weights.unsqueeze(1), keys).squeeze(1)
        return context, weights, weights


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
        return self.w(torch.tanh(memory + self.W(query).unsqueeze(1) + self.U(f))).squeeze(-1)


class MultiHeadAttention(Attention):
    """Multi-head scaled dot-product attention (Vaswani 2017) with one query per step.

    ``head_i = softmax(q W_q^i (k W_k^i)^T / sqrt(d)) k W_v^i``; heads concatenated and projected by ``W_o``
    back to ``key_dim`` so the decoder sees a context of the usual size. The returned weights (and state)
    are the mean over heads, for plots.
    """

    def __init__(
        self, query_dim: int, key_dim: int, att_dim: int = 256, num_heads: int = 4, temperature: float = 1.0
    ) -> None:
        super().__init__(query_dim, key_dim, temperature)
        if att_dim % num_heads:
            raise ValueError(f"att_dim {att_dim} is not divisible by num_heads {num_heads}")
        self.h, self.d = num_heads, att_dim // num_heads
        self.W_q = nn.Linear(query_dim, att_dim)
        self.W_kv = nn.Linear(key_dim, 2 * att_dim)
        self.W_o = nn.Linear(att_dim, key_dim)

    def precompute(self, keys: Tensor) -> Tensor:
        return self.W_kv(keys)  # (B, S, 2A)

    def forward(self, query, keys, memory, mask, state):
        b, s, _ = keys.shape
        k, v = memory.view(b, s, 2, self.h, self.d).permute(2, 0, 3, 1, 4)  # each (B, h, S, d)
        q = self.W_q(query).view(b, self.h, 1, self.d)
        scores = (q @ k.transpose(-1, -2)).squeeze(2) / math.sqrt(self.d) * self.temperature  # (B, h, S)
        scores = scores.masked_fill(~mask[:, None, :], float("-inf"))
        w = torch.softmax(scores, dim=-1)
        ctx = (w.unsqueeze(2) @ v).reshape(b, self.h * self.d)
        weights = w.mean(1)
        return self.W_o(ctx), weights, weights


#: Config names → classes (``model.attention.type`` in the Hydra configs).
ATTENTION_TYPES: dict[str, type[Attention]] = {
    "dot": DotAttention,
    "general": GeneralAttention,
    "additive": AdditiveAttention,
    "location": LocationAttention,
    "location_aware": LocationAwareAttention,
    "multihead": MultiHeadAttention,
}


def build_attention(type: str, query_dim: int, key_dim: int, **kwargs) -> Attention:
    """Make an attention mechanism by config name (see :data:`ATTENTION_TYPES`).

    Raises
    ------
    ValueError
        Unknown ``type``, listing the known ones.
    """
    if type not in ATTENTION_TYPES:
        raise ValueError(f"unknown attention type {type!r}; choose one of {sorted(ATTENTION_TYPES)}")
    return ATTENTION_TYPES[type](query_dim, key_dim, **kwargs)
