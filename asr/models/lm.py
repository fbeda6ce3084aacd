"""Token-level LSTM language model for shallow fusion in the search (Gulcehre et al. 2015, "On using monolingual
corpora in neural machine translation", arXiv 1503.03535; for attention ASR: Kannan et al. 2018, arXiv 1712.01996;
joint with CTC as ESPnet: ``(1 - λ) log p_att + λ log p_ctc + β log p_lm``).

The LM shares the ASR model's tokenizer (same ids, ``sos``/``eos``), is trained on transcripts (``asr-train-lm``) and
scores one token per hypothesis row per step, batched like the decoder (:meth:`LSTMLM.step`, :meth:`LMState.select`).

File format (``save_lm``/``load_lm``): one ``torch.save`` of plain containers and tensors, read back with
``weights_only=True`` (nothing in the file runs): ``{"format": "asr-lm-1", "config": {...}, "vocab_size", "sos_id",
"eos_id", "pad_id", "pieces_sha256", "state_dict"}``; ``pieces_sha256`` fingerprints the tokenizer's vocabulary so an
LM of another tokenizer is refused.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

__all__ = ["LSTMLM", "LMState", "save_lm", "load_lm", "tokenizer_fingerprint", "LM_FORMAT"]

LM_FORMAT = "asr-lm-1"


@dataclass
class LMState:
    """LSTM state of ``N`` rows: ``h``, ``c`` ``(num_layers, N, H)``."""

    h: Tensor
    c: Tensor

    def select(self, idx: Tensor) -> "LMState":
        """Rows ``idx (N',)`` (beam reordering, dropping finished utterances)."""
        return LMState(self.h.index_select(1, idx), self.c.index_select(1, idx))


class LSTMLM(nn.Module):
    """``p(y_u | y_<u)``: embedding -> ``num_layers`` LSTM -> linear over the vocabulary.

    Parameters
    ----------
    vocab_size : int
    embed_dim, hidden_size, num_layers : int
    dropout : float
        On the embedding and the LSTM output (training only).

    Shapes: ``forward(ys_in (B, U)) -> logits (B, U, V)``; ``step(y (N,), state) -> (log-probs (N, V), state)``.
    """

    def __init__(self, vocab_size: int, embed_dim: int = 128, hidden_size: int = 256, num_layers: int = 1, dropout: float = 0.1) -> None:
        super().__init__()
        self.vocab_size, self.hidden_size, self.num_layers = vocab_size, hidden_size, num_layers
        self.embed = nn.Embedding(vocab_size, embed_dim)
        self.lstm = nn.LSTM(embed_dim, hidden_size, num_layers, batch_first=True, dropout=dropout if num_layers > 1 else 0.0)
        self.dropout = nn.Dropout(dropout)
        self.output = nn.Linear(hidden_size, vocab_size)

    def forward(self, ys_in: Tensor) -> Tensor:
        """Teacher-forced logits ``(B, U, V)`` of ``ys_in (B, U)`` (sos + tokens)."""
        out, _ = self.lstm(self.dropout(self.embed(ys_in)))
        return self.output(self.dropout(out))

    def init_state(self, n: int, device: torch.device | str = "cpu") -> LMState:
        """Zero state for ``n`` rows."""
        z = torch.zeros(self.num_layers, n, self.hidden_size, device=device)
        return LMState(z, z.clone())

    def step(self, y: Tensor, state: LMState) -> tuple[Tensor, LMState]:
        """Log-probabilities ``(N, V)`` of the next token after ``y (N,)`` for every row, and the new state."""
        out, (h, c) = self.lstm(self.embed(y)[:, None, :], (state.h, state.c))
        return torch.log_softmax(self.output(out[:, 0]).float(), -1), LMState(h, c)


def tokenizer_fingerprint(tokenizer: Any) -> str:
    """SHA-256 of the tokenizer's pieces in id order and its special ids: two tokenizers with the same fingerprint
    give the same ids for the same text."""
    h = hashlib.sha256()
    for i in range(tokenizer.vocab_size):
        h.update(tokenizer.sp.id_to_piece(i).encode("utf-8") + b"\0")
    h.update(f"{tokenizer.sos_id},{tokenizer.eos_id},{tokenizer.pad_id}".encode())
    return h.hexdigest()


def save_lm(path: str | Path, lm: LSTMLM, config: dict[str, Any], tokenizer: Any) -> Path:
    """Write ``lm`` (config, weights, the tokenizer's ids and fingerprint) to ``path`` atomically."""
    from asr.utils.io import atomic_open

    payload = {
        "format": LM_FORMAT, "config": dict(config), "vocab_size": tokenizer.vocab_size, "sos_id": tokenizer.sos_id, "eos_id": tokenizer.eos_id,
        "pad_id": tokenizer.pad_id, "pieces_sha256": tokenizer_fingerprint(tokenizer), "state_dict": {k: v.detach().cpu() for k, v in lm.state_dict().items()},
    }
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_open(path, "wb") as f:
        torch.save(payload, f)
    return path


def load_lm(path: str | Path, tokenizer: Any | None = None, map_location: str = "cpu") -> LSTMLM:
    """Load an LM written by :func:`save_lm` (``weights_only=True``), in eval mode.

    Raises
    ------
    FileNotFoundError
        No file at ``path``.
    ValueError
        Not an LM file of this format, a config that does not build or weights that do not fit it, or (with
        ``tokenizer``) an LM of another tokenizer (vocabulary size, special ids or pieces differ). The message
        names the file.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no language model at {path}")
    try:
        payload = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as exc:  # noqa: BLE001 -- any unreadable file is one error
        raise ValueError(f"{path}: not a language model file ({type(exc).__name__}: {exc})") from None
    if not isinstance(payload, dict) or payload.get("format") != LM_FORMAT:
        raise ValueError(f"{path}: not a language model file of format {LM_FORMAT} (written by asr-train-lm)")
    if tokenizer is not None and payload.get("pieces_sha256") != tokenizer_fingerprint(tokenizer):
        raise ValueError(f"{path}: the language model was trained with another tokenizer (vocabulary {payload.get('vocab_size')} vs {tokenizer.vocab_size}, "
                         "or other pieces/special ids); train it with the ASR model's tokenizer")
    cfg = dict(payload.get("config") or {})
    allowed = {"embed_dim", "hidden_size", "num_layers", "dropout"}
    if set(cfg) - allowed or any(isinstance(v, (int, float)) and v > 100_000 for v in cfg.values()):
        raise ValueError(f"{path}: language model config {cfg} has unknown keys or sizes out of range")
    try:
        lm = LSTMLM(int(payload["vocab_size"]), **cfg)
        lm.load_state_dict(payload["state_dict"])
    except (KeyError, TypeError, RuntimeError, ValueError) as exc:
        raise ValueError(f"{path}: the language model does not load ({type(exc).__name__}: {exc})") from None
    return lm.eval()
