"""The layers every model shares: padding masks, sinusoidal positions, multi-head attention and the position-wise
feed-forward block. One home, so that the Transformer encoder, the Transformer decoder and the RNN decoder's
``multihead`` scorer run the same :class:`MultiHeadAttention` (and a new encoder reuses them instead of copying).

References: Vaswani et al. 2017, "Attention is all you need" (arXiv 1706.03762), sections 3.2-3.5.
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

    Raises
    ------
    ValueError
        If ``d_model`` is not divisible by ``num_heads``.
    """

    def __init__(self, d_model: int, num_heads: int, dropout: float = 0.0, kv_dim: int | None = None, query_dim: int | None = None, out_dim: int | None = None) -> None:
        super().__init__()
        if d_model % num_heads:
            raise ValueError(f"d_model {d_model} is not divisible by num_heads {num_heads}")
        kv_dim = d_model if kv_dim is None else kv_dim
        self.d_model, self.num_heads, self.d_k = d_model, num_heads, d_model // num_heads
        self.dropout = dropout
        self.w_q = nn.Linear(d_model if query_dim is None else query_dim, d_model)
        self.w_kv = nn.Linear(kv_dim, 2 * d_model)
        self.w_o = nn.Linear(d_model, d_model if out_dim is None else out_dim)

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


class PositionwiseFeedForward(nn.Module):
    """``W_2 dropout(ReLU(W_1 x))``, ``d_model -> ff_dim -> d_model`` at every position (Vaswani et al. 2017, 3.3)."""

    def __init__(self, d_model: int, ff_dim: int, dropout: float = 0.0) -> None:
        super().__init__()
        self.w_1, self.w_2 = nn.Linear(d_model, ff_dim), nn.Linear(ff_dim, d_model)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: Tensor) -> Tensor:
        """``(..., d_model) -> (..., d_model)``."""
        return self.w_2(self.dropout(torch.relu(self.w_1(x))))
