"""asr-train-lm: train a token-level LSTM language model on transcripts, for shallow fusion in decoding.

    asr-train-lm --text data/train_nodev/text --dev_text data/train_dev/text --tokenizer data/token/bpe40.model \\
        --out exp/lm/lstm_lm.pt --epochs 20
    asr-decode ckpt=models/an4_pblstm_x4 data_dir=data/test out_dir=... lm=exp/lm/lstm_lm.pt lm_weight=0.3

``--text``/``--dev_text`` are Kaldi ``text`` files (``utt_id transcript``; ``--plain`` for one sentence per line).
The tokenizer must be the ASR model's (the LM file records its fingerprint and decoding refuses another). The loop
is Lightning's (CPU or one GPU), the model :class:`asr.models.lm.LSTMLM`; the weights of the epoch with the lowest dev
perplexity are written (:func:`asr.models.lm.save_lm`). Prints train/dev perplexity per epoch. Errors (missing file,
empty text): one line ``asr-train-lm: <reason>``, exit 2.
"""

from __future__ import annotations

import argparse
import copy
import logging
import math
import sys
from pathlib import Path
from typing import Sequence

__all__ = ["main", "read_sentences", "train_lm"]


def read_sentences(path: str | Path, plain: bool = False) -> list[str]:
    """Transcripts of a Kaldi ``text`` file (the first field, the utterance id, dropped) or, with ``plain``, one
    sentence per line; empty lines and empty transcripts are skipped.

    Raises
    ------
    FileNotFoundError
        No file at ``path``.
    ValueError
        Not UTF-8, or no sentence in it (the message names the file).
    """
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"no text file at {p}")
    try:
        lines = p.read_text(encoding="utf-8").splitlines()
    except UnicodeDecodeError as exc:
        raise ValueError(f"{p}: not UTF-8 ({exc})") from None
    out = []
    for line in lines:
        text = line.strip() if plain else (line.split(maxsplit=1)[1].strip() if len(line.split(maxsplit=1)) == 2 else "")
        if text:
            out.append(" ".join(text.split()))
    if not out:
        raise ValueError(f"{p}: no sentence to train on")
    return out


def train_lm(
    sentences: list[str], dev_sentences: list[str], tokenizer, out: str | Path, epochs: int = 20, batch_size: int = 32, lr: float = 1e-3,
    embed_dim: int = 128, hidden_size: int = 256, num_layers: int = 1, dropout: float = 0.2, seed: int = 1, accelerator: str = "cpu",
) -> dict[str, float]:
    """Train an :class:`~asr.models.lm.LSTMLM` with Lightning, keep the epoch of lowest dev perplexity, save it to
    ``out``; returns ``{"dev_ppl": ..., "epoch": ...}`` (dev perplexity per token, eos included)."""
    import lightning as L
    import torch
    from torch.nn.utils.rnn import pad_sequence

    from asr.models.lm import LSTMLM, save_lm

    L.seed_everything(seed, verbose=False)
    pad, sos, eos = tokenizer.pad_id, tokenizer.sos_id, tokenizer.eos_id

    def batches(texts: list[str], shuffle: bool) -> torch.utils.data.DataLoader:
        seqs = [torch.tensor([sos, *tokenizer.encode(t), eos]) for t in texts]

        def collate(items):
            ys = pad_sequence(items, batch_first=True, padding_value=pad)
            return ys[:, :-1], ys[:, 1:].masked_fill(ys[:, 1:] == pad, -100)

        return torch.utils.data.DataLoader(seqs, batch_size=batch_size, shuffle=shuffle, collate_fn=collate)

    config = {"embed_dim": embed_dim, "hidden_size": hidden_size, "num_layers": num_layers, "dropout": dropout}

    class LMModule(L.LightningModule):
        def __init__(self) -> None:
            super().__init__()
            self.lm = LSTMLM(tokenizer.vocab_size, **config)
            self.best = (math.inf, -1, None)

        def _loss(self, batch):
            ys_in, ys_out = batch
            logits = self.lm(ys_in)
            return torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), ys_out.reshape(-1), ignore_index=-100, reduction="sum"), int((ys_out != -100).sum())

        def training_step(self, batch, _):
            loss, n = self._loss(batch)
            return loss / max(n, 1)

        def on_validation_epoch_start(self) -> None:
            self._sum, self._n = 0.0, 0

        def validation_step(self, batch, _):
            loss, n = self._loss(batch)
            self._sum, self._n = self._sum + float(loss), self._n + n

        def on_validation_epoch_end(self) -> None:
            if self.trainer.sanity_checking:
                return
            ppl = math.exp(self._sum / max(self._n, 1))
            print(f"epoch {self.current_epoch + 1}: dev perplexity {ppl:.3f}", flush=True)
            if ppl < self.best[0]:
                self.best = (ppl, self.current_epoch + 1, copy.deepcopy(self.lm.state_dict()))

        def configure_optimizers(self):
            return torch.optim.Adam(self.parameters(), lr=lr)

    module = LMModule()
    trainer = L.Trainer(max_epochs=epochs, accelerator=accelerator, devices=1, logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0)
    trainer.fit(module, batches(sentences, True), batches(dev_sentences, False))
    ppl, epoch, state = module.best
    module.lm.load_state_dict(state)
    save_lm(out, module.lm.cpu(), config, tokenizer)
    return {"dev_ppl": ppl, "epoch": epoch}


def main(argv: Sequence[str] | None = None) -> int:
    """Console script ``asr-train-lm`` (module docstring); returns the exit status."""
    ap = argparse.ArgumentParser(prog="asr-train-lm", description="Train a token LSTM language model for shallow fusion.")
    ap.add_argument("--text", required=True, help="training transcripts (Kaldi text: utt_id transcript)")
    ap.add_argument("--dev_text", required=True, help="dev transcripts (the epoch of lowest dev perplexity is kept)")
    ap.add_argument("--tokenizer", required=True, help="the ASR model's sentencepiece model")
    ap.add_argument("--out", required=True, help="where to write the LM (.pt)")
    ap.add_argument("--plain", action="store_true", help="one sentence per line instead of Kaldi text")
    ap.add_argument("--epochs", type=int, default=20)
    ap.add_argument("--batch_size", type=int, default=32)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--embed_dim", type=int, default=128)
    ap.add_argument("--hidden_size", type=int, default=256)
    ap.add_argument("--num_layers", type=int, default=1)
    ap.add_argument("--dropout", type=float, default=0.2)
    ap.add_argument("--seed", type=int, default=1)
    a = ap.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    from asr.text.tokenizer import Tokenizer

    try:
        tok = Tokenizer.from_file(a.tokenizer)
        train, dev = read_sentences(a.text, a.plain), read_sentences(a.dev_text, a.plain)
        for name in ("epochs", "batch_size", "embed_dim", "hidden_size", "num_layers"):
            if getattr(a, name) < 1:
                raise ValueError(f"--{name} must be >= 1, got {getattr(a, name)}")
    except (OSError, ValueError) as exc:
        print(f"asr-train-lm: {exc}", file=sys.stderr)
        return 2
    res = train_lm(train, dev, tok, a.out, a.epochs, a.batch_size, a.lr, a.embed_dim, a.hidden_size, a.num_layers, a.dropout, a.seed)
    print(f"language model of epoch {res['epoch']} (dev perplexity {res['dev_ppl']:.3f}) -> {a.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
