"""LSTM attention decoder with input feeding (Luong et al. 2015; Chan et al. 2016)."""

from __future__ import annotations

from dataclasses import dataclass, fields

import torch
from torch import Tensor, nn

from asr.models.attention import Attention


@dataclass
class DecoderState:
    """Everything the decoder carries from one output step to the next; all tensors have batch first.

    Attributes
    ----------
    h, c : Tensor
        ``(L, B, H)`` LSTM hidden and cell states of the L layers.
    att_hidden : Tensor
        ``(B, H)`` attentional hidden state ``a_{t-1} = tanh(W_c [c_{t-1}; h_{t-1}])`` fed back as input.
    att_state : Tensor
        ``(B, S)`` the attention mechanism's state (previous weights).
    """

    h: Tensor
    c: Tensor
    att_hidden: Tensor
    att_state: Tensor

    def select(self, idx: Tensor) -> "DecoderState":
        """Reorder / repeat along the batch axis (beam search): ``idx (B',)`` int64 → state with batch B'."""
        return DecoderState(
            h=self.h.index_select(1, idx),
            c=self.c.index_select(1, idx),
            att_hidden=self.att_hidden.index_select(0, idx),
            att_state=self.att_state.index_select(0, idx),
        )


@dataclass
class EncoderMemory:
    """Per-utterance encoder output the decoder attends to.

    ``keys (B, S, Dk)``, ``mask (B, S)`` bool True = valid, ``proj`` the attention's precomputed key projection.
    """

    keys: Tensor
    mask: Tensor
    proj: Tensor | None

    def select(self, idx: Tensor) -> "EncoderMemory":
        """Index the batch axis (e.g. repeat each utterance K times for a beam)."""
        return EncoderMemory(
            keys=self.keys.index_select(0, idx),
            mask=self.mask.index_select(0, idx),
            proj=None if self.proj is None else self.proj.index_select(0, idx),
        )


class RNNAttentionDecoder(nn.Module):
    """Stacked LSTM decoder: ``x_t = [E y_{t-1}; a_{t-1}]``, ``h_t = LSTM(x_t)``, ``c_t, alpha_t = Att(h_t, hs)``,
    ``a_t = tanh(W_c [c_t; h_t])``, ``logits_t = W_out a_t``.

    Parameters
    ----------
    vocab_size : int
    enc_dim : int
        Encoder output size Dk.
    attention : Attention
        A mechanism built with ``query_dim=hidden_size, key_dim=enc_dim``.
    embed_dim, hidden_size, num_layers, dropout
        Sizes; dropout on the embedding, between layers and on ``a_t``.
    """

    def __init__(
        self,
        vocab_size: int,
        enc_dim: int,
        attention: Attention,
        embed_dim: int = 128,
        hidden_size: int = 256,
        num_layers: int = 1,
        dropout: float = 0.1,
    ) -> None:
        super().__init__()
        if attention.query_dim != hidden_size or attention.key_dim != enc_dim:
            raise ValueError(
                f"attention built for query {attention.query_dim} / key {attention.key_dim}, "
                f"decoder has hidden {hidden_size} / encoder {enc_dim}"
            )
        self.vocab_size, self.hidden_size, self.num_layers = vocab_size, hidden_size, num_layers
        self.embed = nn.Embedding(vocab_size, embed_dim)
        self.cells = nn.ModuleList(
            nn.LSTMCell(embed_dim + hidden_size if i == 0 else hidden_size, hidden_size) for i in range(num_layers)
        )
        self.attention = attention
        self.W_c = nn.Linear(enc_dim + hidden_size, hidden_size)
        self.output = nn.Linear(hidden_size, vocab_size)
        self.dropout = nn.Dropout(dropout)

    def memory(self, hs: Tensor, hs_lens: Tensor) -> EncoderMemory:
        """Wrap encoder output ``hs (B, S, Dk)`` with its mask and the attention's key projection."""
        mask = torch.arange(hs.shape[1], device=hs.device)[None, :] < hs_lens[:, None]
        return EncoderMemory(hs, mask, self.attention.precompute(hs))

    def init_state(self, memory: EncoderMemory) -> DecoderState:
        """Zero LSTM states and input feed; the attention's initial state."""
        b = memory.keys.shape[0]
        z = memory.keys.new_zeros(self.num_layers, b, self.hidden_size)
        return DecoderState(z, z.clone(), memory.keys.new_zeros(b, self.hidden_size), self.attention.init_state(memory.mask))

    def step(self, y_prev: Tensor, state: DecoderState, memory: EncoderMemory) -> tuple[Tensor, Tensor, DecoderState]:
        """One output step.

        Parameters
        ----------
        y_prev : Tensor
            ``(B,)`` int64 previous tokens (``sos`` at the first step).

        Returns
        -------
        logits : Tensor ``(B, V)``
        weights : Tensor ``(B, S)`` attention weights of this step
        state : DecoderState
        """
        x = torch.cat([self.dropout(self.embed(y_prev)), state.att_hidden], dim=-1)
        hs, cs = [], []
        for i, cell in enumerate(self.cells):
            h, c = cell(x, (state.h[i], state.c[i]))
            hs.append(h)
            cs.append(c)
            x = self.dropout(h) if i + 1 < self.num_layers else h
        context, weights, att_state = self.attention(x, memory.keys, memory.proj, memory.mask, state.att_state)
        att_hidden = torch.tanh(self.W_c(torch.cat([context, x], dim=-1)))
        logits = self.output(self.dropout(att_hidden))
        return logits, weights, DecoderState(torch.stack(hs), torch.stack(cs), att_hidden, att_state)

    def forward(self, hs: Tensor, hs_lens: Tensor, ys_in: Tensor) -> tuple[Tensor, Tensor]:
        """Teacher-forced decoding.

        Parameters
        ----------
        hs : Tensor ``(B, S, Dk)``; hs_lens : Tensor ``(B,)``
        ys_in : Tensor ``(B, U)`` int64, ``sos`` followed by the reference tokens (padded anyhow).

        Returns
        -------
        logits : Tensor ``(B, U, V)``
        weights : Tensor ``(B, U, S)``
        """
        memory = self.memory(hs, hs_lens)
        state = self.init_state(memory)
        logits, weights = [], []
        for t in range(ys_in.shape[1]):
            lo, w, state = self.step(ys_in[:, t], state, memory)
            logits.append(lo)
            weights.append(w)
        return torch.stack(logits, 1), torch.stack(weights, 1)
