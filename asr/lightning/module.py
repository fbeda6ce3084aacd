"""The LightningModule: a thin wrapper that owns the model, its optimiser and the dev-set metrics."""

from __future__ import annotations

import math
from typing import Any

import lightning as L
import torch

from asr.data.dataset import Batch
from asr.decoding.search import DecodingOptions, greedy_search
from asr.metrics.wer import score
from asr.models.asr_model import AttentionASRModel, build_model
from asr.text.tokenizer import Tokenizer

#: Checkpoint key holding what ``asr-decode`` needs to rebuild model and tokenizer (plain types only,
#: so checkpoints load with ``torch.load(..., weights_only=True)``).
ASR_KEY = "asr"


class ASRLightningModule(L.LightningModule):
    """Training, validation (loss, token accuracy, greedy WER), optimiser and LR schedule.

    Parameters
    ----------
    model_cfg : dict
        The ``model`` config (plain dict), stored in every checkpoint.
    tokenizer : Tokenizer
    optim_cfg : dict
        ``lr``, ``weight_decay``, ``warmup_steps``, ``min_lr_ratio`` (cosine decay to ``lr * min_lr_ratio``).
    cmvn : GlobalCMVN, optional
        Statistics; when None the model starts with identity CMVN (the checkpoint's buffers overwrite it).
    feat_dim : int
    frame_shift_s : float
        For alignment plots.
    augment_cfg : dict, optional
        SpecAugment arguments (``conf/augment``); None or empty = no augmentation.
    """

    def __init__(self, model_cfg: dict, tokenizer: Tokenizer, optim_cfg: dict, cmvn=None, feat_dim: int = 80, frame_shift_s: float = 0.01, augment_cfg: dict | None = None) -> None:
        super().__init__()
        from asr.features.specaug import SpecAugment

        # Applied after CMVN, in training_step only; not part of the model (decoding never needs it).
        self.specaug = SpecAugment(**augment_cfg) if augment_cfg else None
        self.model_cfg, self.optim_cfg = dict(model_cfg), dict(optim_cfg)
        self.tokenizer = tokenizer
        self.feat_dim, self.frame_shift_s = feat_dim, frame_shift_s
        self.model: AttentionASRModel = build_model(
            self.model_cfg, tokenizer.vocab_size, tokenizer.sos_id, tokenizer.eos_id, tokenizer.pad_id, feat_dim, cmvn
        )
        self._dev_refs: list[str] = []
        self._dev_hyps: list[str] = []
        self._plot_item: tuple | None = None

    # ---- checkpoint payload -------------------------------------------------------------------------
    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint[ASR_KEY] = {
            "model_cfg": self.model_cfg,
            "optim_cfg": self.optim_cfg,
            "tokenizer_proto": self.tokenizer.proto,
            "feat_dim": self.feat_dim,
            "frame_shift_s": self.frame_shift_s,
        }

    # ---- steps --------------------------------------------------------------------------------------
    def training_step(self, batch: Batch, batch_idx: int) -> torch.Tensor:
        """SpecAugment (if on), teacher-forced loss; logs train/loss, train/acc, train/att_loss, train/ctc_loss, lr."""
        feats = batch.feats
        if self.specaug is not None:
            # mask normalised features so a masked value is the global mean; the model's CMVN is then undone
            cmvn = self.model.cmvn
            feats = self.specaug(cmvn(feats)) / cmvn.istd + cmvn.mean
        out = self.model(feats, batch.feat_lens, batch.tokens, batch.token_lens)
        bs = len(batch.ids)
        self.log("train/loss", out["loss"], prog_bar=True, batch_size=bs)
        self.log("train/acc", out["acc"], batch_size=bs)
        self.log("train/att_loss", out["att_loss"], batch_size=bs)
        if self.model.ctc is not None:
            self.log("train/ctc_loss", out["ctc_loss"], batch_size=bs)
        self.log("lr", self.trainer.optimizers[0].param_groups[0]["lr"], prog_bar=True, batch_size=bs)
        return out["loss"]

    def validation_step(self, batch: Batch, batch_idx: int) -> None:
        """Dev loss and token accuracy, plus greedy hypotheses collected for the corpus-level dev WER/CER."""
        out = self.model(batch.feats, batch.feat_lens, batch.tokens, batch.token_lens)
        bs = len(batch.ids)
        self.log("dev/loss", out["loss"], prog_bar=True, batch_size=bs, sync_dist=True)
        self.log("dev/acc", out["acc"], batch_size=bs, sync_dist=True)
        self.log("dev/att_loss", out["att_loss"], batch_size=bs, sync_dist=True)
        hyps = greedy_search(self.model, batch.feats, batch.feat_lens, DecodingOptions())
        self._dev_refs += batch.texts
        self._dev_hyps += [self.tokenizer.decode(h.tokens) for h in hyps]
        if batch_idx == 0:
            h = hyps[0]
            self._plot_item = (batch.ids[0], batch.texts[0], self._dev_hyps[-len(hyps)], h)

    def on_validation_epoch_end(self) -> None:
        """Log dev/wer and dev/cer (gathered over DDP ranks) and one attention plot to TensorBoard."""
        refs, hyps = self._dev_refs, self._dev_hyps
        if self.trainer.world_size > 1:
            gathered: list = [None] * self.trainer.world_size
            torch.distributed.all_gather_object(gathered, (refs, hyps))
            refs = [r for g in gathered for r in g[0]]
            hyps = [h for g in gathered for h in g[1]]
        if refs:
            res = score(refs, hyps)
            self.log("dev/wer", 100.0 * res.wer, prog_bar=True, rank_zero_only=False, sync_dist=False)
            self.log("dev/cer", 100.0 * res.cer, rank_zero_only=False, sync_dist=False)
        self._log_alignment()
        self._dev_refs, self._dev_hyps = [], []

    def _log_alignment(self) -> None:
        if self._plot_item is None or self.global_rank != 0 or self.trainer.sanity_checking:
            return
        exp = getattr(self.logger, "experiment", None)
        if exp is None or not hasattr(exp, "add_figure"):
            return
        from asr.viz.alignment import alignment_figure

        utt_id, ref, hyp, h = self._plot_item
        tokens = self.tokenizer.pieces(h.tokens)
        if h.attention.shape[0] == len(tokens) + 1:
            tokens = tokens + ["<eos>"]
        fig = alignment_figure(h.attention.float().numpy(), tokens, self.frame_shift_s, self.model.subsampling_factor, f"{utt_id}\nREF: {ref}\nHYP: {hyp}")
        exp.add_figure("dev/alignment", fig, global_step=self.global_step)
        self._plot_item = None

    # ---- optimisation -------------------------------------------------------------------------------
    def configure_optimizers(self):
        """Adam with linear warm-up and cosine decay, stepped every optimiser step."""
        cfg = self.optim_cfg
        opt = torch.optim.Adam(self.parameters(), lr=cfg.get("lr", 1e-3), weight_decay=cfg.get("weight_decay", 0.0))
        total = max(1, int(self.trainer.estimated_stepping_batches))
        warmup = min(int(cfg.get("warmup_steps", 0)), total - 1)
        floor = float(cfg.get("min_lr_ratio", 0.05))

        def factor(step: int) -> float:
            """Linear warm-up, then cosine decay to ``floor`` at the last step."""
            if step < warmup:
                return (step + 1) / warmup
            p = min(1.0, (step - warmup) / max(1, total - warmup))
            return floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * p))

        sched = torch.optim.lr_scheduler.LambdaLR(opt, factor)
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}


def load_checkpoint(path: str, map_location: str = "cpu") -> tuple[AttentionASRModel, Tokenizer, dict]:
    """Rebuild model and tokenizer from a training checkpoint, loading with ``weights_only=True``.

    Returns
    -------
    model : AttentionASRModel in eval mode
    tokenizer : Tokenizer
    meta : dict (``model_cfg``, ``frame_shift_s``, ...)

    Raises
    ------
    FileNotFoundError
        No file at ``path``.
    ValueError
        The file is not an ``asr`` checkpoint (no ``"asr"`` entry) or refuses to load safely.
    """
    from pathlib import Path

    if not Path(path).is_file():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    try:
        ckpt = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as exc:  # pickle.UnpicklingError and friends: refuse, never fall back to unsafe loading
        raise ValueError(f"refusing to load checkpoint {path}: not loadable with weights_only=True ({exc})") from exc
    if ASR_KEY not in ckpt:
        raise ValueError(f"{path} is not an asr checkpoint (no '{ASR_KEY}' entry)")
    meta = ckpt[ASR_KEY]
    tok = Tokenizer(meta["tokenizer_proto"])
    model = build_model(meta["model_cfg"], tok.vocab_size, tok.sos_id, tok.eos_id, tok.pad_id, meta.get("feat_dim", 80))
    state = {k[len("model."):]: v for k, v in ckpt["state_dict"].items() if k.startswith("model.")}
    model.load_state_dict(state)
    model.eval()
    return model, tok, meta
