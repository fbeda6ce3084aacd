"""Sentencepiece tokenizer (BPE, unigram or char) with the special ids the models use.

Special ids come from the sentencepiece model itself (``pad_id``, ``unk_id``, ``bos_id`` used as
``sos``, ``eos_id``), never from ``vocab_size - 1`` by convention. The serialized model is small
(a few kB) and travels inside every checkpoint, so a checkpoint alone rebuilds the tokenizer.

Source: Kudo & Richardson 2018, "SentencePiece" (arXiv 1808.06226); ESPnet's an4 recipes use
``bpe`` with 30 tokens.
"""

from __future__ import annotations

import io
from pathlib import Path
from typing import Iterable, Sequence

import sentencepiece as spm

PAD_ID, UNK_ID, SOS_ID, EOS_ID = 0, 1, 2, 3


class Tokenizer:
    """Text ↔ token ids.

    Parameters
    ----------
    model_proto : bytes
        A serialized sentencepiece model (``Tokenizer.train`` writes one; ``.proto`` gives it back).

    Attributes
    ----------
    pad_id, unk_id, sos_id, eos_id : int
        Special ids read from the model.
    vocab_size : int
    """

    def __init__(self, model_proto: bytes) -> None:
        self.proto = bytes(model_proto)
        self.sp = spm.SentencePieceProcessor(model_proto=self.proto)
        self.pad_id = self.sp.pad_id()
        self.unk_id = self.sp.unk_id()
        self.sos_id = self.sp.bos_id()
        self.eos_id = self.sp.eos_id()
        if min(self.pad_id, self.unk_id, self.sos_id, self.eos_id) < 0:
            raise ValueError("sentencepiece model must define pad, unk, bos (sos) and eos ids")

    @classmethod
    def from_file(cls, path: str | Path) -> "Tokenizer":
        """Load a ``.model`` file; FileNotFoundError names it when absent."""
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"tokenizer model not found: {path} (run the recipe's stage 3)")
        return cls(path.read_bytes())

    @classmethod
    def train(
        cls,
        texts: Iterable[str],
        model_prefix: str | Path,
        kind: str = "bpe",
        vocab_size: int = 30,
    ) -> "Tokenizer":
        """Train on transcripts and write ``<model_prefix>.model`` and ``.vocab``.

        Parameters
        ----------
        texts : iterable of str
            One transcript per item (e.g. ``train_nodev``'s ``text``, ids removed).
        kind : {"bpe", "unigram", "char"}
        vocab_size : int
            Total size including the 4 special tokens. Ignored for ``char`` (all characters are kept).

        Raises
        ------
        ValueError
            Unknown ``kind`` or no text.
        """
        if kind not in {"bpe", "unigram", "char"}:
            raise ValueError(f"tokenizer kind must be bpe, unigram or char, got {kind!r}")
        lines = [t.strip() for t in texts if t.strip()]
        if not lines:
            raise ValueError("no training text for the tokenizer")
        model_prefix = Path(model_prefix)
        model_prefix.parent.mkdir(parents=True, exist_ok=True)
        buf = io.BytesIO()
        spm.SentencePieceTrainer.train(
            sentence_iterator=iter(lines),
            model_writer=buf,
            model_type=kind,
            vocab_size=vocab_size if kind != "char" else 1000,
            hard_vocab_limit=kind != "char",
            character_coverage=1.0,
            pad_id=PAD_ID,
            unk_id=UNK_ID,
            bos_id=SOS_ID,
            eos_id=EOS_ID,
            split_digits=False,
            minloglevel=2,
        )
        tok = cls(buf.getvalue())
        from asr.utils.io import atomic_open, atomic_write_text

        with atomic_open(model_prefix.with_suffix(".model"), "wb") as f:
            f.write(tok.proto)
        atomic_write_text(
            "".join(f"{tok.sp.id_to_piece(i)}\t{i}\n" for i in range(tok.vocab_size)),
            model_prefix.with_suffix(".vocab"),
        )
        return tok

    @property
    def vocab_size(self) -> int:
        """Number of tokens, special ones included (the decoder output size V)."""
        return self.sp.get_piece_size()

    def encode(self, text: str) -> list[int]:
        """Token ids of ``text`` (no sos/eos).

        Whitespace is normalised first (ends stripped, runs of spaces/tabs collapsed to one space), so
        ``"A B\t "`` encodes like ``"A B"``; an empty text gives ``[]``. Characters the model has never
        seen map to ``unk_id`` (a run of them to one ``unk_id``); :meth:`unknown_chars` lists them.
        """
        return self.sp.encode(" ".join(text.split()), out_type=int)

    def unknown_chars(self, text: str) -> list[str]:
        """The characters of ``text`` that :meth:`encode` maps to ``unk_id``, in order, with repeats.

        Whitespace is never unknown. Example: a char model trained on upper-case AN4 text gives
        ``["é"]`` for ``"CAFé"``.
        """
        cache = self.__dict__.setdefault("_unk_cache", {})
        out = []
        for c in text:
            if c.isspace():
                continue
            if c not in cache:
                cache[c] = self.unk_id in self.sp.encode(c, out_type=int)
            if cache[c]:
                out.append(c)
        return out

    def decode(self, ids: Sequence[int]) -> str:
        """Text of ``ids``; special ids (pad, sos, eos) are dropped, runs of spaces collapsed to one.

        A hypothesis may hold a stand-alone word-boundary piece ``▁`` next to a word-initial one
        (``▁H ▁ ▁O``), which sentencepiece decodes as two spaces (``"H  O"``); transcripts never hold
        those, so they are collapsed here (scoring collapses them as well, ``asr.metrics.wer``).
        """
        special = {self.pad_id, self.sos_id, self.eos_id}
        return " ".join(self.sp.decode([int(i) for i in ids if int(i) not in special]).split())

    def pieces(self, ids: Sequence[int]) -> list[str]:
        """Token strings of ``ids`` (for alignment plots)."""
        return [self.sp.id_to_piece(int(i)) for i in ids]
