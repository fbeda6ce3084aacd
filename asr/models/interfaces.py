"""The written contracts between the parts of a model: what an encoder, a decoder and an attention scorer must
offer, as :class:`typing.Protocol` classes (structural: a new encoder needs no base class, only these members).
:class:`~asr.models.asr_model.AttentionASRModel`, the searches (:mod:`asr.decoding.search`) and the engine rely on
nothing else. ``isinstance(x, Encoder)`` checks the members' presence (``runtime_checkable``), not their signatures;
tests/test_models.py checks every registered class against them.

Shapes: ``B`` utterances, ``T`` input (fbank) frames, ``S`` encoder frames, ``F`` feature bins, ``D`` encoder output
size, ``V`` vocabulary, ``N`` hypothesis rows in a search (``B x beam``).
"""

from __future__ import annotations

from typing import Any, Protocol, runtime_checkable

from torch import Tensor

__all__ = ["Encoder", "Decoder", "Scorer"]


@runtime_checkable
class Encoder(Protocol):
    """Acoustic encoder: fbank frames to encoder frames.

    ``forward(xs_pad (B, T, F), xs_lens (B,)) -> (hs_pad (B, S, D), hs_lens (B,))``; frames past ``hs_lens`` are
    padding (their values unused). Raises ``ValueError`` for an utterance shorter than ``subsampling_factor``
    frames (or whatever its front end needs)."""

    output_dim: int

    @property
    def subsampling_factor(self) -> int:
        """Input frames per encoder frame."""
        ...

    def output_lengths(self, xs_lens: Tensor) -> Tensor:
        """Encoder frames ``(B,)`` int64 for ``xs_lens`` input frames."""
        ...

    def forward(self, xs_pad: Tensor, xs_lens: Tensor) -> tuple[Tensor, Tensor]: ...


@runtime_checkable
class Decoder(Protocol):
    """Attention decoder: teacher-forced scores for training, one step at a time for search.

    ``needs_attention``: whether it takes a scorer built from the config's ``model.attention`` group (the RNN
    decoder: True; the Transformer decoder has its own cross-attention: False). ``memory`` (per utterance,
    computed once) and ``state`` (per hypothesis row) are the decoder's own types; both have
    ``select(idx (N',) int64)`` returning the rows ``idx`` (beam reordering, dropping finished utterances)."""

    needs_attention: bool
    vocab_size: int

    def forward(self, hs: Tensor, hs_lens: Tensor, ys_in: Tensor) -> tuple[Tensor, Tensor]:
        """Teacher forcing: ``ys_in (B, U)`` (sos + tokens) -> logits ``(B, U, V)`` and attention weights ``(B, U, S)``."""
        ...

    def memory(self, hs: Tensor, hs_lens: Tensor) -> Any:
        """What every step reads of the encoder output ``hs (B, S, D)``."""
        ...

    def init_state(self, memory: Any) -> Any:
        """The state before the first token."""
        ...

    def step(self, y_prev: Tensor, state: Any, memory: Any, constraint: Any = None) -> tuple[Tensor, Tensor, Any]:
        """One token for every row: ``y_prev (N,)`` -> logits ``(N, V)``, attention weights ``(N, S)``, new state."""
        ...


@runtime_checkable
class Scorer(Protocol):
    """Attention scorer of the RNN decoder (:mod:`asr.models.attention.scorers`): ``forward(query (B, Dq), keys
    (B, S, Dk), memory, mask (B, S) bool, state (B, S), hard) -> (context (B, Dk), weights (B, S), state (B, S))``;
    ``precompute(keys)`` is the per-utterance ``memory`` (or None); ``init_state(mask)`` the first state."""

    def precompute(self, keys: Tensor) -> Tensor | None: ...

    def init_state(self, mask: Tensor) -> Tensor: ...

    def forward(self, query: Tensor, keys: Tensor, memory: Tensor | None, mask: Tensor, state: Tensor, hard: bool = False) -> tuple[Tensor, Tensor, Tensor]: ...
