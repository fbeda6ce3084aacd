"""The layers every model shares: padding masks, sinusoidal positions, multi-head attention and the position-wise
feed-forward block. One home, so that the Transformer encoder, the Transformer decoder and the RNN decoder's
``multihead`` scorer run the same :class:`MultiHeadAttention` (and a new encoder reuses them instead of copying).

References: Vaswani et al. 2017, "Attention is all you need" (arXiv 1706.03762), sections 3.2-3.5; relative
positions (``MultiHeadAttention(rel_pos=True)``, the Conformer's self-attention): Dai et al. 2019, "Transformer-XL"
(arXiv 1901.02860), section 3.3, as ESPnet's ``RelPositionMultiHeadedAttention`` (Gulati et al. 2020, arXiv 2005.08100).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["make_pad_mask", "sinusoidal_positions", "MultiHeadAttention", "PositionwiseFeedForward"]


def make_pad_mask(lens: Tensor, max_len: int | None = None) -> Tensor:
    """Valid-frame mask from lengths.

    Parameters
    ----------
    lens : Tensor
        ``(B,)`` int64 lengths.
    max_len : int, optional
        Width of the mask (default ``lens.max()``).

    Returns
    -------
    Tensor
        ``(B, max_len)`` bool, True on valid frames.

    Examples
    --------
    >>> make_pad_mask(torch.tensor([1, 3])).tolist()
    [[True, False, False], [True, True, True]]
    """
    max_len = int(lens.max()) if max_len is None else max_len
    return torch.arange(max_len, device=lens.device)[None, :] < lens[:, None]



def sinusoidal_positions(length: int, d_model: int, offset: int = 0, device=None, dtype=torch.float32) -> Tensor:
    """Absolute sinusoidal position encodings of Vaswani et al. 2017 (section 3.5).

    ``PE[p, 2i] = sin(p / 10000^(2i/d))``, ``PE[p, 2i+1] = cos(p / 10000^(2i/d))`` for positions
    ``p = offset .. offset + length - 1``.

    Returns
    -------
    Tensor
        ``(length, d_model)``.

    Raises
    ------
    ValueError
        If ``d_model`` is odd.

    Examples
    --------
    >>> sinusoidal_positions(3, 4).shape
    torch.Size([3, 4])
    """
    if d_model % 2:
        raise ValueError(f"sinusoidal positions need an even d_model, got {d_model}")
    pos = torch.arange(offset, offset + length, device=device, dtype=torch.float32)[:, None]
    inv = torch.exp(torch.arange(0, d_model, 2, device=device, dtype=torch.float32) * (-math.log(10000.0) / d_model))
    pe = torch.empty(length, d_model, device=device, dtype=torch.float32)
    pe[:, 0::2] = torch.sin(pos * inv)
    pe[:, 1::2] = torch.cos(pos * inv)
    return pe.to(dtype)


class MultiHeadAttention(nn.Module):
    """Scaled dot-product attention over ``num_heads`` projected subspaces (Vaswani et al. 2017, 3.2.2).

    Keys/values are projected separately from queries (`project_kv`) so that a decoder can project the
    encoder output once per utterance and cache its own past keys/values.

    Parameters
    ----------
    d_model : int
        Query and output size; ``d_k = d_model / num_heads`` per head.
    num_heads : int
    dropout : float
        Dropout on the attention weights (training only).
    kv_dim : int, optional
        Size of the key/value inputs (default ``d_model``).
    query_dim : int, optional
        Size of the query inputs (default ``d_model``).
    out_dim : int, optional
        Size of the output (default ``d_model``; the RNN decoder's ``multihead`` scorer gives the encoder's size,
        so that its context vector has the usual size).
    rel_pos : bool
        Also create the relative-position parameters of Transformer-XL self-attention (Dai et al. 2019, 3.3; the
        Conformer's, Gulati et al. 2020): ``linear_pos`` (``W_R``, no bias) and the learnable biases ``pos_bias_u``,
        ``pos_bias_v`` ``(H, d_k)``, used by :meth:`attend_rel`. Off (the default), the module and its state dict
        are exactly those of plain attention.

    Raises
    ------
    ValueError
        If ``d_model`` is not divisible by ``num_heads``.
    """

    def __init__(self, d_model: int, num_heads: int, dropout: float = 0.0, kv_dim: int | None = None, query_dim: int | None = None, out_dim: int | None = None, rel_pos: bool = False) -> None:
        super().__init__()
        if d_model % num_heads:
            raise ValueError(f"d_model {d_model} is not divisible by num_heads {num_heads}")
        kv_dim = d_model if kv_dim is None else kv_dim
        self.d_model, self.num_heads, self.d_k = d_model, num_heads, d_model // num_heads
        self.dropout = dropout
        self.w_q = nn.Linear(d_model if query_dim is None else query_dim, d_model)
        self.w_kv = nn.Linear(kv_dim, 2 * d_model)
        self.w_o = nn.Linear(d_model, d_model if out_dim is None else out_dim)
        self.rel_pos = rel_pos
        if rel_pos:  # ESPnet's RelPositionMultiHeadedAttention: linear_pos without bias, u and v Xavier-initialised
            self.linear_pos = nn.Linear(d_model, d_model, bias=False)
            self.pos_bias_u = nn.Parameter(torch.empty(num_heads, self.d_k))
            self.pos_bias_v = nn.Parameter(torch.empty(num_heads, self.d_k))
            nn.init.xavier_uniform_(self.pos_bias_u)
            nn.init.xavier_uniform_(self.pos_bias_v)

    def _heads(self, x: Tensor) -> Tensor:
        b, t, _ = x.shape
        return x.view(b, t, self.num_heads, self.d_k).transpose(1, 2)

    def project_q(self, query: Tensor) -> Tensor:
        """Queries ``(B, H, Tq, d_k)`` from ``query (B, Tq, query_dim)``."""
        return self._heads(self.w_q(query))

    def scores(self, q: Tensor, k: Tensor, mask: Tensor | None = None) -> Tensor:
        """Scaled scores ``q k^T / sqrt(d_k)`` ``(B, H, Tq, Tk)`` of projected ``q``, ``k``; ``-inf`` where ``mask``
        (bool, True = may attend, broadcastable) is False."""
        scores = q @ k.transpose(-2, -1) / math.sqrt(self.d_k)
        return scores if mask is None else scores.masked_fill(~mask, float("-inf"))

    def merge(self, ctx: Tensor) -> Tensor:
        """Heads ``(B, H, Tq, d_k)`` concatenated and projected: ``(B, Tq, out_dim)``."""
        b, _, tq, _ = ctx.shape
        return self.w_o(ctx.transpose(1, 2).reshape(b, tq, self.d_model))

    def project_kv(self, kv: Tensor) -> tuple[Tensor, Tensor]:
        """Keys and values ``(B, H, Tk, d_k)`` each, from ``kv (B, Tk, kv_dim)``."""
        k, v = self.w_kv(kv).chunk(2, dim=-1)
        return self._heads(k), self._heads(v)

    def attend(self, query: Tensor, k: Tensor, v: Tensor, mask: Tensor | None, need_weights: bool = False) -> tuple[Tensor, Tensor | None]:
        """Attention of ``query (B, Tq, d_model)`` over projected ``k, v (B, H, Tk, d_k)``.

        Parameters
        ----------
        mask : Tensor, optional
            Bool, True = may attend, broadcastable to ``(B, H, Tq, Tk)`` (e.g. ``(B, 1, 1, Tk)`` key padding,
            ``(1, 1, Tq, Tk)`` causal). Every query row must keep at least one key.
        need_weights : bool
            Also return the weights (explicit softmax); otherwise the fused
            ``torch.nn.functional.scaled_dot_product_attention`` kernel runs and None is returned.

        Returns
        -------
        out : Tensor ``(B, Tq, d_model)``
        weights : Tensor ``(B, H, Tq, Tk)`` (before dropout; exactly 0 where ``mask`` is False) or None
        """
        q = self.project_q(query)
        p = self.dropout if self.training else 0.0
        if need_weights:
            weights = torch.softmax(self.scores(q, k, mask), dim=-1)
            ctx = F.dropout(weights, p, self.training) @ v
        else:
            weights = None
            ctx = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=p)
        return self.merge(ctx), weights

    def forward(self, query: Tensor, kv: Tensor, mask: Tensor | None = None, need_weights: bool = False) -> tuple[Tensor, Tensor | None]:
        """``attend(query, *project_kv(kv), mask, need_weights)``; ``kv (B, Tk, kv_dim)``."""
        k, v = self.project_kv(kv)
        return self.attend(query, k, v, mask, need_weights)

    @staticmethod
    def rel_shift(x: Tensor) -> Tensor:
        """Scores by relative position to scores by key: ``x (..., T, 2T-1)``, column ``c`` for relative position
        ``T-1-c`` (as :meth:`attend_rel`'s ``pos_emb``), to ``(..., T, T)`` with ``out[..., i, j] = x[..., i, T-1-i+j]``
        (relative position ``i - j``). Transformer-XL's pad-and-reshape trick (Dai et al. 2019, appendix B; ESPnet's
        ``rel_shift`` for ``rel_pos_type: latest``): no gather, one copy."""
        *lead, t, p = x.shape
        x = torch.cat([x.new_zeros(*lead, t, 1), x], dim=-1).view(*lead, p + 1, t)
        return x[..., 1:, :].reshape(*lead, t, p)[..., : p // 2 + 1]

    def attend_rel(self, query: Tensor, k: Tensor, v: Tensor, pos_emb: Tensor, mask: Tensor | None, need_weights: bool = False) -> tuple[Tensor, Tensor | None]:
        """Relative-position self-attention (Dai et al. 2019, 3.3; Gulati et al. 2020, 2.1; ESPnet's
        ``RelPositionMultiHeadedAttention``): for query ``i`` and key ``j`` (per head)

        ``score(i, j) = ((q_i + u) . k_j + (q_i + v) . W_R r_{i-j}) / sqrt(d_k)``

        with ``r_{i-j}`` the sinusoidal code of the relative position ``i - j`` and ``u``, ``v`` the learnable
        biases ``pos_bias_u``, ``pos_bias_v``. Needs ``rel_pos=True``.

        Parameters
        ----------
        query : Tensor
            ``(B, T, d_model)``.
        k, v : Tensor
            Projected keys and values ``(B, H, T, d_k)`` of the same ``T`` frames (:meth:`project_kv`).
        pos_emb : Tensor
            ``(1, 2T-1, d_model)`` (or ``(B, ...)``): codes of relative positions ``T-1, T-2, ..., -(T-1)``
            (:func:`asr.models.encoders.conformer.relative_positions`).
        mask : Tensor, optional
            Bool, True = may attend, broadcastable to ``(B, H, T, T)``; every row must keep a key.
        need_weights : bool
            Also return the weights (explicit softmax); otherwise the fused
            ``scaled_dot_product_attention`` runs with the position term as its additive mask.

        Returns
        -------
        out : Tensor ``(B, T, d_model)``
        weights : Tensor ``(B, H, T, T)`` (before dropout; 0 where ``mask`` is False) or None

        Raises
        ------
        RuntimeError
            If the module was built without ``rel_pos``.
        """
        if not self.rel_pos:
            raise RuntimeError("attend_rel needs MultiHeadAttention(rel_pos=True)")
        q = self.project_q(query)  # (B, H, T, d_k)
        t = q.shape[2]
        if pos_emb.shape[-2] != 2 * t - 1:
            raise ValueError(f"pos_emb has {pos_emb.shape[-2]} positions; {t} frames need {2 * t - 1}")
        p = self.linear_pos(pos_emb)
        p = p.view(p.shape[0], -1, self.num_heads, self.d_k).transpose(1, 2)  # (1|B, H, 2T-1, d_k)
        q_u = q + self.pos_bias_u[:, None, :]
        bd = self.rel_shift((q + self.pos_bias_v[:, None, :]) @ p.transpose(-2, -1)) / math.sqrt(self.d_k)  # (B, H, T, T)
        if mask is not None:
            bd = bd.masked_fill(~mask, float("-inf"))
        drop = self.dropout if self.training else 0.0
        if need_weights:
            weights = torch.softmax(q_u @ k.transpose(-2, -1) / math.sqrt(self.d_k) + bd, dim=-1)
            ctx = F.dropout(weights, drop, self.training) @ v
        else:
            weights = None
            ctx = F.scaled_dot_product_attention(q_u, k, v, attn_mask=bd, dropout_p=drop)
        return self.merge(ctx), weights


class PositionwiseFeedForward(nn.Module):
    """``W_2 dropout(act(W_1 x))``, ``d_model -> ff_dim -> d_model`` at every position (Vaswani et al. 2017, 3.3).

    ``activation``: ``relu`` (default, the Transformer's) or ``swish`` (``x sigmoid(x)``, the Conformer's
    feed-forward module, Gulati et al. 2020, 2.3)."""

    ACTIVATIONS = {"relu": F.relu, "swish": F.silu}

    def __init__(self, d_model: int, ff_dim: int, dropout: float = 0.0, activation: str = "relu") -> None:
        super().__init__()
        if activation not in self.ACTIVATIONS:
            raise ValueError(f"unknown activation {activation!r}; choose one of {sorted(self.ACTIVATIONS)}")
        self.w_1, self.w_2 = nn.Linear(d_model, ff_dim), nn.Linear(ff_dim, d_model)
        self.dropout = nn.Dropout(dropout)
        self.act = self.ACTIVATIONS[activation]

    def forward(self, x: Tensor) -> Tensor:
        """``(..., d_model) -> (..., d_model)``."""
        return self.w_2(self.dropout(self.act(self.w_1(x))))
