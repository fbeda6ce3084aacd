"""LSTM attention decoder with input feeding (Luong et al. 2015; Chan et al. 2016).

Inference-time attention constraints (:class:`AttentionConstraint`, set from the decoding options) apply to any
trained scorer:

- **windowed (monotonic) decoding**: output step ``t`` attends only to the encoder frames
  ``[m_{t-1} - a, m_{t-1} + b]``, ``m_{t-1}`` the peak (argmax) of the previous step's weights (``m_0 = 0``:
  decoding starts at the first frame). This is Chorowski et al. 2015's windowing (arXiv 1506.07503, §2.4,
  around the median of ``alpha_{t-1}``; the argmax is ESPnet's ``AttentionConstraint`` choice in Tacotron 2
  decoding, ``espnet.nets.pytorch_backend.rnn.attentions``). The frames are gathered, so a step costs ``O(a + b)``
  instead of ``O(S)``: the scorer runs on ``(B, a + b + 1)`` tensors (at the edges the window keeps its width,
  shifted inside ``[0, S)``). The weights are scattered back into ``(B, S)`` (zero outside the window). For
  ``location_aware`` the convolution over the previous weights sees the window only (zero beyond its edges). A
  window that covers the whole utterance gives exactly the unconstrained result. An eos before the window
  reaches the utterance's last frame is either blocked (``eos_id`` set: its logit is -inf there; beam search)
  or, in greedy search, a *restart*: the model ended one utterance inside a longer recording, so the decoder
  state is reset (:meth:`RNNAttentionDecoder.restart`: zero LSTM state and input feed, the attention state a
  one-hot at the last peak) and decoding goes on with ``sos`` from that position.

  ``a`` decides whether the search is monotonic: with ``a = 0`` the window starts at the previous peak, so peaks
  never decrease; a few frames of slack (``a`` = 1-2, 40-80 ms at ×4) still cannot re-read a word. On AN4 test audio
  concatenated into 2-5 minute recordings the recipe's model loops (re-reading the same word forever) with
  ``a`` >= 4 and decodes them at about 30 % WER with ``a = 2`` (recipes/an4/README.md, "Local, windowed and hard
  attention").
- **hard attention** (argmax context, :func:`asr.models.attention.harden`).
"""

from __future__ import annotations

from dataclasses import dataclass, fields

import torch
from torch import Tensor, nn

from asr.models.attention import Attention


@dataclass(frozen=True)
class AttentionConstraint:
    """Inference-time attention settings (module docstring).

    Attributes
    ----------
    window : tuple of int or None
        ``(a, b)``: encoder frames before / after the previous peak (both >= 0); None = global attention.
    hard : bool
        Argmax (hard) attention context.
    eos_id : int or None
        With a window: this token's logit is ``-inf`` until the window reaches the utterance's last frame.
    """

    window: tuple[int, int] | None = None
    hard: bool = False
    eos_id: int | None = None

    def __post_init__(self) -> None:
        if self.window is not None and (len(self.window) != 2 or min(self.window) < 0):
            raise ValueError(f"attention window must be two frame counts >= 0 (back, ahead), got {self.window}")

    @property
    def active(self) -> bool:
        """Whether it changes anything."""
        return self.window is not None or self.hard


def attention_window(peak: Tensor, back: int, ahead: int, num_frames: int) -> tuple[Tensor, int]:
    """First frame ``lo (B,)`` and width ``W`` of the windows ``[peak - back, peak + ahead]`` kept at full width
    ``W = min(back + ahead + 1, num_frames)`` inside ``[0, num_frames)`` (shifted at the edges); ``peak (B,)``
    int64 frames. Used by windowed decoding and by the plots that draw its windows."""
    width = min(back + ahead + 1, num_frames)
    return (peak - back).clamp(min=0).clamp(max=num_frames - width), width


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
    window_end : Tensor or None
        ``(B,)`` bool, windowed decoding only: the last step's window held the utterance's last frame.
    """

    h: Tensor
    c: Tensor
    att_hidden: Tensor
    att_state: Tensor
    window_end: Tensor | None = None

    def select(self, idx: Tensor) -> "DecoderState":
        """Reorder / repeat along the batch axis (beam search): ``idx (B',)`` int64 → state with batch B'."""
        return DecoderState(
            h=self.h.index_select(1, idx),
            c=self.c.index_select(1, idx),
            att_hidden=self.att_hidden.index_select(0, idx),
            att_state=self.att_state.index_select(0, idx),
            window_end=None if self.window_end is None else self.window_end.index_select(0, idx),
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

    #: It takes an attention scorer built from ``model.attention`` (:class:`asr.models.interfaces.Decoder`).
    needs_attention = True

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
        self._compiled_advance = None  # set by compile_step

    def memory(self, hs: Tensor, hs_lens: Tensor) -> EncoderMemory:
        """Wrap encoder output ``hs (B, S, Dk)`` with its mask and the attention's key projection."""
        mask = torch.arange(hs.shape[1], device=hs.device)[None, :] < hs_lens[:, None]
        return EncoderMemory(hs, mask, self.attention.precompute(hs))

    def init_state(self, memory: EncoderMemory) -> DecoderState:
        """Zero LSTM states and input feed; the attention's initial state."""
        b = memory.keys.shape[0]
        z = memory.keys.new_zeros(self.num_layers, b, self.hidden_size)
        return DecoderState(z, z.clone(), memory.keys.new_zeros(b, self.hidden_size), self.attention.init_state(memory.mask))

    def step(
        self, y_prev: Tensor, state: DecoderState, memory: EncoderMemory, constraint: AttentionConstraint | None = None
    ) -> tuple[Tensor, Tensor, DecoderState]:
        """One output step.

        Parameters
        ----------
        y_prev : Tensor
            ``(B,)`` int64 previous tokens (``sos`` at the first step).
        constraint : AttentionConstraint, optional
            Windowed and/or hard attention (decoding; module docstring).

        Returns
        -------
        logits : Tensor ``(B, V)``
        weights : Tensor ``(B, S)`` attention weights of this step
        state : DecoderState
        """
        att_hidden, weights, state = self._recur(self.dropout(self.embed(y_prev)), state, memory, constraint)
        logits = self.output(self.dropout(att_hidden))
        if state.window_end is not None and constraint is not None and constraint.eos_id is not None:
            logits[:, constraint.eos_id] = logits[:, constraint.eos_id].masked_fill(~state.window_end, float("-inf"))
        return logits, weights, state

    def _advance(
        self, emb: Tensor, state: DecoderState, memory: EncoderMemory, constraint: AttentionConstraint | None = None
    ) -> tuple[Tensor, Tensor, DecoderState]:
        """The recurrent part of a step, from the (dropped-out) embedding ``emb (B, E)`` of the previous token to
        the attentional hidden state ``a_t (B, H)``, the weights ``(B, S)`` and the new state; the output layer
        is left to the caller (:meth:`step` per step, :meth:`forward` once for all steps)."""
        x = torch.cat([emb, state.att_hidden], dim=-1)
        hs, cs = [], []
        for i, cell in enumerate(self.cells):
            h, c = cell(x, (state.h[i], state.c[i]))
            hs.append(h)
            cs.append(c)
            x = self.dropout(h) if i + 1 < self.num_layers else h
        if constraint is None or constraint.window is None:
            hard = constraint is not None and constraint.hard
            context, weights, att_state = self.attention(x, memory.keys, memory.proj, memory.mask, state.att_state, hard)
            ends = None
        else:
            context, weights, att_state, ends = self._attend_window(x, state.att_state, memory, constraint)
        att_hidden = torch.tanh(self.W_c(torch.cat([context, x], dim=-1)))
        return att_hidden, weights, DecoderState(torch.stack(hs), torch.stack(cs), att_hidden, att_state, ends)

    def compile_step(self, **compile_kwargs) -> None:
        """``torch.compile`` the recurrent part of a step (LSTM cells, attention, ``a_t``), in place.

        At small batches the step loop is bound by the number of kernel launches (GPU) or op calls (CPU): one
        eager step of the recipe's location-aware decoder is about 130 top-level ATen ops forward and backward.
        Inductor fuses the step's pointwise work (LSTM gates, the attention's tanh/softmax, ``a_t``) into a few
        kernels. ``dynamic=True`` (batch, frames and steps vary from batch to batch) keeps recompiles rare. The
        compiled step gives the same values as the eager one (to float rounding); it is used by :meth:`forward`
        and by :meth:`step` (validation, search). The first batch pays the compilation (about 20-70 s on the
        2-core CPU). Set by the training option ``compile_decoder_step``; ``compile_kwargs`` go to
        ``torch.compile``.
        """
        compile_kwargs.setdefault("dynamic", True)
        # The unbound function, called with the module as its first argument: a bound method stored on the
        # instance would survive copy.deepcopy and make the copy step with the original's weights.
        self._compiled_advance = torch.compile(type(self)._advance, **compile_kwargs)

    def _recur(
        self, emb: Tensor, state: DecoderState, memory: EncoderMemory, constraint: AttentionConstraint | None = None
    ) -> tuple[Tensor, Tensor, DecoderState]:
        """:meth:`_advance`, through ``torch.compile`` after :meth:`compile_step`."""
        if self._compiled_advance is None:
            return self._advance(emb, state, memory, constraint)
        return self._compiled_advance(self, emb, state, memory, constraint)

    def restart(self, state: DecoderState, rows: Tensor) -> DecoderState:
        """Start a new utterance in the rows ``rows (B,)`` bool of ``state`` where attention last peaked: zero LSTM
        state and input feed, attention state one-hot at the peak of the previous weights (windowed decoding of
        long recordings, module docstring). Other rows are unchanged."""
        keep = ~rows
        onehot = torch.zeros_like(state.att_state).scatter_(1, state.att_state.argmax(-1, keepdim=True), 1.0)
        att_state = torch.where(rows[:, None], onehot, state.att_state)
        return DecoderState(
            h=state.h * keep[None, :, None],
            c=state.c * keep[None, :, None],
            att_hidden=state.att_hidden * keep[:, None],
            att_state=att_state,
            window_end=state.window_end,
        )

    def _attend_window(
        self, query: Tensor, att_state: Tensor, memory: EncoderMemory, constraint: AttentionConstraint
    ) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """Attention over the window ``[m - a, m + b]`` around the previous peak ``m`` (module docstring).

        Returns ``context (B, Dk)``, ``weights (B, S)`` and the state ``(B, S)`` scattered from the window, and
        ``reaches_end (B,)`` bool: the window holds the utterance's last valid frame."""
        b, s, dk = memory.keys.shape
        lo, width = attention_window(att_state[:, :s].argmax(-1), *constraint.window, s)  # uniform initial state: peak 0
        idx = lo[:, None] + torch.arange(width, device=lo.device)[None, :]  # (B, W)
        keys = memory.keys.gather(1, idx[:, :, None].expand(-1, -1, dk))
        proj = None if memory.proj is None else memory.proj.gather(1, idx[:, :, None].expand(-1, -1, memory.proj.shape[-1]))
        context, w, st = self.attention.forward_window(
            query, keys, proj, memory.mask.gather(1, idx), att_state.gather(1, idx), idx, constraint.hard
        )
        weights = w.new_zeros(b, s).scatter(1, idx, w)
        new_state = st.new_zeros(b, s).scatter(1, idx, st)
        reaches_end = (lo + width) >= memory.mask.sum(-1)
        return context, weights, new_state, reaches_end

    def forward(self, hs: Tensor, hs_lens: Tensor, ys_in: Tensor) -> tuple[Tensor, Tensor]:
        """Teacher-forced decoding (training, validation, the teacher-forced report).

        Only the recurrence (LSTM, attention, ``a_t``) runs step by step: the embedding of every input token and
        the output layer over every ``a_t`` are one batched call each, before and after the loop, instead of
        ``U`` small ones (at batches of 8 the step loop is bound by the number of kernel launches / op calls, not
        arithmetic: recipes/an4/README.md, "GPU"; ``scripts/bench_train.py --stepwise`` measures it).
        Same result as calling :meth:`step` ``U`` times (:meth:`forward_stepwise`, to float rounding), dropout
        masks included for the same seed.

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
        embs = self.embed(ys_in)  # (B, U, E)
        att_hiddens, weights = [], []
        for t in range(ys_in.shape[1]):
            # Dropout stays per step, in the order step() draws its masks (embedding, between layers, a_t), so a
            # seed gives the same training run as the step-by-step loop did (and as forward_stepwise does).
            a, w, state = self._recur(self.dropout(embs[:, t]), state, memory)
            att_hiddens.append(self.dropout(a))
            weights.append(w)
        return self.output(torch.stack(att_hiddens, 1)), torch.stack(weights, 1)

    def forward_stepwise(self, hs: Tensor, hs_lens: Tensor, ys_in: Tensor) -> tuple[Tensor, Tensor]:
        """:meth:`forward` as ``U`` calls of :meth:`step` (the decoding path): the reference for tests and the
        baseline of ``scripts/bench_train.py --stepwise``."""
        memory = self.memory(hs, hs_lens)
        state = self.init_state(memory)
        logits, weights = [], []
        for t in range(ys_in.shape[1]):
            lo, w, state = self.step(ys_in[:, t], state, memory)
            logits.append(lo)
            weights.append(w)
        return torch.stack(logits, 1), torch.stack(weights, 1)
