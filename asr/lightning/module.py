"""The LightningModule: a thin wrapper that owns the model, its optimiser and the dev-set metrics."""

from __future__ import annotations

import hashlib
import logging
import math
import random
from typing import Any

import lightning as L
import numpy as np
import torch

from asr.data.dataset import Batch
from asr.decoding.search import DecodingOptions, greedy_search
from asr.metrics.wer import score
from asr.models.asr_model import AttentionASRModel, build_model
from asr.models.checkpoint import ALLOWED_OPTIMIZERS, ASR_KEY, MAX_MODEL_PARAMS, check_model_size, check_stored_config, checkpoint_payload, load_checkpoint
from asr.text.tokenizer import Tokenizer

log = logging.getLogger(__name__)

# The checkpoint format has one owner, asr.models.checkpoint; these names stay importable from here.
__all__ = ["ASRLightningModule", "TrainingDivergedError", "epoch_seed", "ASR_KEY", "ALLOWED_OPTIMIZERS", "check_stored_config", "check_model_size", "MAX_MODEL_PARAMS", "load_checkpoint"]


def warmup_steps(optim_cfg: dict, total: int, max_epochs: int) -> int:
    """Warm-up length in optimiser steps, at most ``total - 1`` (the decay needs a step).

    ``optim.warmup_epochs`` x steps per epoch (``total / max_epochs``) when set, so that the warm-up covers the same
    share of training whatever the batch size (batches sized by ``data.max_duration`` give far fewer steps per
    epoch than batches of 8); else ``optim.warmup_steps``.
    """
    epochs = optim_cfg.get("warmup_epochs")
    if epochs:
        steps = int(round(float(epochs) * total / max(1, max_epochs)))
    else:
        steps = int(optim_cfg.get("warmup_steps", 0))
    return max(0, min(steps, total - 1))


class TrainingDivergedError(RuntimeError):
    """Too many optimiser steps in a row had a non-finite loss or gradient (``max_bad_steps``)."""


def epoch_seed(seed: int, epoch: int, rank: int = 0) -> int:
    """The 32-bit seed of the global RNGs (torch, numpy, random) for one epoch on one rank."""
    return int.from_bytes(hashlib.sha256(f"asr-epoch:{seed}:{epoch}:{rank}".encode()).digest()[:4], "little")


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
    seed : int
        Base seed: at every epoch start torch, numpy and random are reseeded from ``(seed, epoch, rank)``
        (SpecAugment masks, dropout), so a run resumed at an epoch boundary repeats an uninterrupted run.
    fbank : FbankOptions or dict, optional
        The full front-end settings, stored in checkpoints (``asr.models.checkpoint``) for export and inference.
    max_bad_steps : int
        Optimiser steps with a non-finite loss or gradient are skipped (weights and optimiser state
        untouched) and counted (``train/skipped_steps``); this many in a row stop training with
        :class:`TrainingDivergedError`. 0 = never stop.
    """

    def __init__(self, model_cfg: dict, tokenizer: Tokenizer, optim_cfg: dict, cmvn=None, feat_dim: int = 80, frame_shift_s: float = 0.01, augment_cfg: dict | None = None, seed: int = 0, max_bad_steps: int = 20, fbank=None) -> None:
        super().__init__()
        self.fbank = fbank
        self.seed, self.max_bad_steps = int(seed), int(max_bad_steps)
        self.skipped_steps = 0  # optimiser steps skipped for a non-finite loss or gradient, in all
        self._bad_in_a_row = 0
        self._bad_reason: str | None = None  # set by training_step, consumed by on_before_optimizer_step
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
        checkpoint[ASR_KEY] = checkpoint_payload(self.model_cfg, self.optim_cfg, self.tokenizer, self.feat_dim, self.frame_shift_s, self.fbank)
        checkpoint["asr_skipped_steps"] = self.skipped_steps

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        self.skipped_steps = int(checkpoint.get("asr_skipped_steps", 0))

    # ---- steps --------------------------------------------------------------------------------------
    def on_train_epoch_start(self) -> None:
        """Give the sampler the epoch (Lightning does it too; a resumed run's loader is built before this hook)."""
        loader = self.trainer.train_dataloader
        for sampler in (getattr(loader, "sampler", None), getattr(loader, "batch_sampler", None)):
            if callable(getattr(sampler, "set_epoch", None)):
                sampler.set_epoch(self.current_epoch)
        ga_epochs = getattr(self.model, "guided_attention_epochs", 0)
        self.model.guided_attention_active = ga_epochs == 0 or self.current_epoch < ga_epochs

    def on_train_batch_start(self, batch: Batch, batch_idx: int) -> None:
        """At an epoch's first batch, reseed torch, numpy and random from ``(seed, epoch, rank)``.

        Lightning saves ``last.ckpt`` at epoch ends and a resumed run re-runs the interrupted epoch from its
        start; with these seeds (and the sampler's and dataset's own ``(seed, epoch)``-keyed draws) that epoch
        sees the same batches, speed variants, SpecAugment masks and dropout as without the crash. Not done
        in ``on_train_epoch_start``: creating the DataLoader iterator draws from torch's global RNG, after
        that hook in an uninterrupted run but before it in a resumed one.
        """
        if batch_idx == 0:
            s = epoch_seed(self.seed, self.current_epoch, self.global_rank)
            random.seed(s)
            np.random.seed(s)
            torch.manual_seed(s)  # also every CUDA device

    def training_step(self, batch: Batch, batch_idx: int) -> torch.Tensor | None:
        """SpecAugment (if on), teacher-forced loss; logs train/loss, train/acc, train/att_loss, train/ctc_loss, lr.

        A non-finite loss returns None (single process: Lightning then skips backward and the update; under
        DDP the loss is still returned so that every rank runs backward, and the update is skipped on all
        ranks in :meth:`on_before_optimizer_step`).
        """
        if batch is None:  # every utterance of the batch failed to load (CutBatchDataset warned about each)
            return None
        feats = batch.feats
        if self.specaug is not None:
            # mask normalised features so a masked value is the global mean; the model's CMVN is then undone
            cmvn = self.model.cmvn
            feats = self.specaug(cmvn(feats), batch.feat_lens) / cmvn.istd + cmvn.mean
        out = self.model(feats, batch.feat_lens, batch.tokens, batch.token_lens)
        bs = len(batch.ids)
        if not torch.isfinite(out["loss"]).all():
            self._bad_reason = f"non-finite loss ({out['loss'].item()})"
            return out["loss"] if self.trainer.world_size > 1 else None
        self.log("train/loss", out["loss"], prog_bar=True, batch_size=bs)
        self.log("train/acc", out["acc"], batch_size=bs)
        self.log("train/att_loss", out["att_loss"], batch_size=bs)
        if self.model.ctc is not None:
            self.log("train/ctc_loss", out["ctc_loss"], batch_size=bs)
        if self.model.guided_attention > 0 and self.model.guided_attention_active:
            self.log("train/ga_loss", out["ga_loss"], batch_size=bs)
        self.log("lr", self.trainer.optimizers[0].param_groups[0]["lr"], prog_bar=True, batch_size=bs)
        return out["loss"]

    def on_before_optimizer_step(self, optimizer) -> None:
        """Skip the update when the loss or any gradient is non-finite (all gradients set to None, so the
        optimiser leaves weights and state alone), count it, and stop after ``max_bad_steps`` in a row.

        Raises
        ------
        TrainingDivergedError
            ``max_bad_steps`` consecutive skipped steps (the message names the count and the setting).
        """
        reason, self._bad_reason = self._bad_reason, None
        params = [p for p in self.parameters() if p.grad is not None]
        if reason is None and params and not bool(torch.stack([p.grad.isfinite().all() for p in params]).all()):
            reason = "non-finite gradient"
        bad = self.trainer.strategy.reduce_boolean_decision(reason is not None, all=False)  # any rank
        if not bad:
            self._bad_in_a_row = 0
            return
        for p in self.parameters():
            p.grad = None
        self.skipped_steps += 1
        self._bad_in_a_row += 1
        log.warning("step %d skipped: %s (%d in a row, %d in all)", self.global_step, reason or "non-finite loss or gradient on another rank", self._bad_in_a_row, self.skipped_steps)
        if self.max_bad_steps > 0 and self._bad_in_a_row >= self.max_bad_steps:
            raise TrainingDivergedError(
                f"training stopped at step {self.global_step}: {self._bad_in_a_row} optimiser steps in a row had a "
                f"non-finite loss or gradient (max_bad_steps={self.max_bad_steps}; {self.skipped_steps} skipped in all). "
                "Check the data and lower optim.lr, or raise max_bad_steps."
            )

    def on_train_batch_end(self, outputs, batch: Batch, batch_idx: int) -> None:
        if batch is not None:
            self.log("train/skipped_steps", float(self.skipped_steps), batch_size=len(batch.ids))

    def validation_step(self, batch: Batch, batch_idx: int) -> None:
        """Dev loss and token accuracy, plus greedy hypotheses collected for the corpus-level dev WER/CER."""
        if batch is None:
            return
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
        """Adam with a learning-rate factor stepped every optimiser step; ``optim_cfg["schedule"]`` picks it.

        ``cosine`` (default): linear warm-up over ``warmup_steps``, then cosine decay to ``min_lr_ratio`` at
        the last step. ``noam`` (Vaswani et al. 2017, eq. 3, normalised so the peak is ``lr``):
        ``min(n / warmup_steps, sqrt(warmup_steps / n))`` at optimiser step ``n = 1, 2, ...``: linear
        warm-up to ``lr`` at ``n = warmup_steps``, then inverse square-root decay (``lr / 2`` at 4x warm-up);
        ``min_lr_ratio`` is not used.

        Raises
        ------
        ValueError
            Unknown ``schedule``, or ``noam`` with ``warmup_steps < 1``.
        """
        cfg = self.optim_cfg
        schedule = str(cfg.get("schedule", "cosine"))
        if schedule not in ("cosine", "noam"):
            raise ValueError(f"unknown optim.schedule {schedule!r}; choose cosine or noam")
        opt = torch.optim.Adam(self.parameters(), lr=cfg.get("lr", 1e-3), weight_decay=cfg.get("weight_decay", 0.0))
        total = max(1, int(self.trainer.estimated_stepping_batches))
        warmup = warmup_steps(cfg, total, int(getattr(self.trainer, "max_epochs", None) or 1))
        floor = float(cfg.get("min_lr_ratio", 0.05))

        def factor(step: int) -> float:
            """Linear warm-up, then cosine decay to ``floor`` at the last step."""
            if step < warmup:
                return (step + 1) / warmup
            p = min(1.0, (step - warmup) / max(1, total - warmup))
            return floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * p))

        # noam: not capped; warm-up given in epochs is at least one step (a one-step run would otherwise get 0)
        noam_warmup = max(1, warmup) if cfg.get("warmup_epochs") else int(cfg.get("warmup_steps", 0))
        if schedule == "noam" and noam_warmup < 1:
            raise ValueError(f"optim.schedule=noam needs warmup_steps >= 1, got {noam_warmup}")

        def noam(step: int) -> float:
            """Peak 1 at step ``warmup - 1`` (the ``warmup``-th update), inverse square root after."""
            n = step + 1
            return min(n / noam_warmup, math.sqrt(noam_warmup / n))

        sched = torch.optim.lr_scheduler.LambdaLR(opt, noam if schedule == "noam" else factor)
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}
