"""Transformer decoder (Vaswani et al. 2017, arXiv 1706.03762) with pre-LN blocks and cached incremental decoding."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from asr.models.layers import MultiHeadAttention, PositionwiseFeedForward, make_pad_mask, sinusoidal_positions

__all__ = ["TransformerMemory", "TransformerDecoderState", "TransformerDecoder"]


@dataclass
class TransformerMemory:
    """Encoder output as every decoder layer's cross-attention sees it (projected once per utterance).

    Attributes
    ----------
    k, v : Tensor
        ``(L, B, H, S, d_k)`` cross-attention keys and values of the L layers.
    mask : Tensor
        ``(B, S)`` bool, True = valid encoder frame.
    """

    k: Tensor
    v: Tensor
    mask: Tensor

    def select(self, idx: Tensor) -> "TransformerMemory":
        """Index the batch axis: ``idx (B',)`` int64 -> memory with batch B' (e.g. each utterance K times)."""
        return TransformerMemory(self.k.index_select(1, idx), self.v.index_select(1, idx), self.mask.index_select(0, idx))


@dataclass
class TransformerDecoderState:
    """Self-attention cache of the positions decoded so far.

    Attributes
    ----------
    k, v : Tensor
        ``(L, B, H, t, d_k)`` self-attention keys and values of every layer for the ``t`` earlier positions
        (projections of the layer inputs, so a step projects only the new position).
    """

    k: Tensor
    v: Tensor

    @property
    def length(self) -> int:
        """Positions decoded so far (the next position index)."""
        return self.k.shape[3]

    def select(self, idx: Tensor) -> "TransformerDecoderState":
        """Reorder / repeat along the batch axis (beam search): ``idx (B',)`` int64."""
        return TransformerDecoderState(self.k.index_select(1, idx), self.v.index_select(1, idx))


class TransformerDecoderLayer(nn.Module):
    """Pre-LN block: masked self-attention, cross-attention over the encoder output, feed-forward, each
    ``x + Dropout(f(LN(x)))``."""

    def __init__(self, d_model: int, enc_dim: int, num_heads: int, ff_dim: int, dropout: float) -> None:
        super().__init__()
        self.norm_self, self.norm_src, self.norm_ff = nn.LayerNorm(d_model), nn.LayerNorm(d_model), nn.LayerNorm(d_model)
        self.self_att = MultiHeadAttention(d_model, num_heads, dropout)
        self.src_att = MultiHeadAttention(d_model, num_heads, dropout, kv_dim=enc_dim)
        self.ff = PositionwiseFeedForward(d_model, ff_dim, dropout)
        self.dropout = nn.Dropout(dropout)

    def _src_ff(self, x: Tensor, mem_k: Tensor, mem_v: Tensor, mem_mask: Tensor, need_weights: bool) -> tuple[Tensor, Tensor | None]:
        out, w = self.src_att.attend(self.norm_src(x), mem_k, mem_v, mem_mask, need_weights)
        x = x + self.dropout(out)
        return x + self.dropout(self.ff(self.norm_ff(x))), w

    def forward(self, x: Tensor, causal: Tensor, mem_k: Tensor, mem_v: Tensor, mem_mask: Tensor, need_weights: bool) -> tuple[Tensor, Tensor | None]:
        """All positions at once: ``x (B, U, D)``, ``causal (1, 1, U, U)``, ``mem_k/v (B, H, S, d_k)``,
        ``mem_mask (B, 1, 1, S)`` -> ``(B, U, D)`` and cross weights ``(B, H, U, S)`` if ``need_weights``."""
        y = self.norm_self(x)
        x = x + self.dropout(self.self_att(y, y, causal)[0])
        return self._src_ff(x, mem_k, mem_v, mem_mask, need_weights)

    def step(self, x: Tensor, cache_k: Tensor, cache_v: Tensor, mem_k: Tensor, mem_v: Tensor, mem_mask: Tensor, need_weights: bool):
        """One new position ``x (B, 1, D)`` attending to the cached ``(B, H, t, d_k)`` keys/values and itself.

        Returns ``(x (B, 1, D), weights (B, H, 1, S) or None, k (B, H, t+1, d_k), v)``.
        """
        y = self.norm_self(x)
        k_new, v_new = self.self_att.project_kv(y)
        k, v = torch.cat([cache_k, k_new], 2), torch.cat([cache_v, v_new], 2)
        x = x + self.dropout(self.self_att.attend(y, k, v, None)[0])
        x, w = self._src_ff(x, mem_k, mem_v, mem_mask, need_weights)
        return x, w, k, v


class TransformerDecoder(nn.Module):
    """Token embedding (x sqrt(d_model)) + sinusoidal positions, ``num_layers`` pre-LN blocks (causal
    self-attention, cross-attention over ``hs`` with its padding mask, feed-forward), LayerNorm, Linear.

    The decoder interface of `asr.decoding.search` (same as the RNN decoder): ``memory``, ``init_state``,
    ``step`` (incremental, cached: a step computes only the new position) and teacher-forced ``forward``.
    The attention weights it reports are the cross-attention of the last layer averaged over its heads;
    `cross_attention` gives every layer's and head's. Weights are exactly 0 on padded encoder frames.

    Parameters
    ----------
    vocab_size : int
    enc_dim : int
        Encoder output size (keys/values of the cross-attention are projected from it).
    d_model, num_heads, ff_dim, num_layers : int
        Sizes.
    dropout : float
        On embeddings + positions, attention weights, residual branches and the FF hidden layer.

    Examples
    --------
    >>> dec = TransformerDecoder(10, 16, d_model=16, num_heads=2, ff_dim=32, num_layers=2).eval()
    >>> logits, w = dec(torch.randn(2, 7, 16), torch.tensor([7, 5]), torch.tensor([[1, 4, 5], [1, 6, 0]]))
    >>> tuple(logits.shape), tuple(w.shape)
    ((2, 3, 10), (2, 3, 7))
    """

    #: builds its own multi-head attention: `build_model` passes no ``attention`` scorer
    needs_attention = False

    def __init__(
        self,
        vocab_size: int,
        enc_dim: int,
        d_model: int = 256,
        num_heads: int = 4,
        ff_dim: int = 1024,
        num_layers: int = 3,
        dropout: float = 0.1,
    ) -> None:
        super().__init__()
        if num_layers < 1:
            raise ValueError(f"num_layers must be >= 1, got {num_layers}")
        self.vocab_size, self.d_model, self.num_layers, self.num_heads = vocab_size, d_model, num_layers, num_heads
        self.embed = nn.Embedding(vocab_size, d_model)
        # N(0, 1/d): after the sqrt(d) scale the embeddings have unit variance, like the positions
        nn.init.normal_(self.embed.weight, std=d_model**-0.5)
        self.dropout = nn.Dropout(dropout)
        self.layers = nn.ModuleList(TransformerDecoderLayer(d_model, enc_dim, num_heads, ff_dim, dropout) for _ in range(num_layers))
        self.norm = nn.LayerNorm(d_model)
        self.output = nn.Linear(d_model, vocab_size)

    def _embed(self, ys: Tensor, offset: int) -> Tensor:
        x = self.embed(ys) * math.sqrt(self.d_model)
        return self.dropout(x + sinusoidal_positions(ys.shape[1], self.d_model, offset, x.device, x.dtype))

    def memory(self, hs: Tensor, hs_lens: Tensor) -> TransformerMemory:
        """Project ``hs (B, S, enc_dim)`` to every layer's cross-attention keys/values; mask from ``hs_lens (B,)``."""
        kv = [layer.src_att.project_kv(hs) for layer in self.layers]
        return TransformerMemory(torch.stack([k for k, _ in kv]), torch.stack([v for _, v in kv]), make_pad_mask(hs_lens, hs.shape[1]))

    def init_state(self, memory: TransformerMemory) -> TransformerDecoderState:
        """Empty cache (no position decoded yet)."""
        _, b, h, _, dk = memory.k.shape
        empty = memory.k.new_zeros(self.num_layers, b, h, 0, dk)
        return TransformerDecoderState(empty, empty.clone())

    def step(self, y_prev: Tensor, state: TransformerDecoderState, memory: TransformerMemory, constraint=None) -> tuple[Tensor, Tensor, TransformerDecoderState]:
        """Decode one position from the cache.

        ``constraint`` (windowed / hard attention, :class:`asr.models.decoders.rnn.AttentionConstraint`) is not
        implemented for the Transformer decoder's multi-layer, multi-head cross-attention: an active one raises
        ValueError.

        Parameters
        ----------
        y_prev : Tensor
            ``(B,)`` int64 previous tokens (``sos`` at the first step).
        state : TransformerDecoderState
            Cache of the ``t`` earlier positions; this step is position ``t``.
        memory : TransformerMemory

        Returns
        -------
        logits : Tensor ``(B, V)``
        weights : Tensor ``(B, S)`` last layer's cross-attention, mean over heads
        state : TransformerDecoderState with ``t + 1`` positions
        """
        if constraint is not None and constraint.active:
            raise ValueError(
                "windowed and hard attention decoding (att_window_back/att_window_ahead, hard_attention) are implemented "
                "for the RNN attention decoder only, not for the Transformer decoder"
            )
        x = self._embed(y_prev[:, None], state.length)
        mask = memory.mask[:, None, None, :]
        ks, vs, w = [], [], None
        for i, layer in enumerate(self.layers):
            last = i == self.num_layers - 1
            x, wi, k, v = layer.step(x, state.k[i], state.v[i], memory.k[i], memory.v[i], mask, need_weights=last)
            ks.append(k)
            vs.append(v)
            if last:
                w = wi
        logits = self.output(self.norm(x))[:, 0]
        return logits, w.mean(1)[:, 0], TransformerDecoderState(torch.stack(ks), torch.stack(vs))

    def _decode(self, hs: Tensor, hs_lens: Tensor, ys_in: Tensor, all_weights: bool) -> tuple[Tensor, list[Tensor]]:
        memory = self.memory(hs, hs_lens)
        mask = memory.mask[:, None, None, :]
        u = ys_in.shape[1]
        causal = torch.ones(u, u, dtype=torch.bool, device=ys_in.device).tril()[None, None]
        x = self._embed(ys_in, 0)
        weights = []
        for i, layer in enumerate(self.layers):
            need = all_weights or i == self.num_layers - 1
            x, w = layer(x, causal, memory.k[i], memory.v[i], mask, need)
            if need:
                weights.append(w)
        return self.output(self.norm(x)), weights

    def forward(self, hs: Tensor, hs_lens: Tensor, ys_in: Tensor) -> tuple[Tensor, Tensor]:
        """Teacher-forced decoding of all positions in one pass (causal self-attention).

        Parameters
        ----------
        hs : Tensor ``(B, S, enc_dim)``; hs_lens : Tensor ``(B,)`` encoder frames
        ys_in : Tensor ``(B, U)`` int64, ``sos`` followed by the reference tokens (padding anyhow: position
            ``u`` only sees positions ``<= u``).

        Returns
        -------
        logits : Tensor ``(B, U, V)``
        weights : Tensor ``(B, U, S)`` last layer's cross-attention, mean over heads
        """
        logits, weights = self._decode(hs, hs_lens, ys_in, all_weights=False)
        return logits, weights[-1].mean(1)

    @torch.no_grad()
    def cross_attention(self, hs: Tensor, hs_lens: Tensor, ys_in: Tensor) -> Tensor:
        """Every layer's and head's cross-attention weights under teacher forcing (for plots).

        Parameters as `forward`.

        Returns
        -------
        Tensor
            ``(L, B, H, U, S)``; rows sum to 1 over the valid frames, 0 on padded ones.
        """
        return torch.stack(self._decode(hs, hs_lens, ys_in, all_weights=True)[1])
