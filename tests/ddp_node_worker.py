"""asr-train with a record of what each rank trained on, for tests/test_ddp_nodes.py (run by torchrun or plainly).

    python tests/ddp_node_worker.py RECORD_DIR <asr-train overrides...>

Every training batch appends one JSON line to ``RECORD_DIR/rank<global rank>.jsonl``: epoch, batch index, optimiser
step, the utterance ids, the loss (before Lightning divides it for gradient accumulation), the learning rate, and
how the rank sees the job (world size, global/local/node rank, the sampler's rank and world size, the launcher's
environment). Rank 0 also saves the model weights before the first optimiser step (``RECORD_DIR/step0.pt``) and after it
(``step1.pt``).
Otherwise it is plain ``asr-train`` (``asr.cli.train.main``).
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import torch

from asr.lightning.module import ASRLightningModule

RECORD_DIR = Path(sys.argv.pop(1))
RECORD_DIR.mkdir(parents=True, exist_ok=True)
LAUNCH_ENV = {k: os.environ.get(k) for k in ("RANK", "LOCAL_RANK", "GROUP_RANK", "WORLD_SIZE", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")}

_training_step = ASRLightningModule.training_step
_on_train_batch_end = ASRLightningModule.on_train_batch_end


def _save_weights(self, name: str) -> None:
    if self.trainer.global_rank == 0 and not (RECORD_DIR / name).exists():
        torch.save({k: v.detach().clone() for k, v in self.model.state_dict().items()}, RECORD_DIR / name)


def training_step(self, batch, batch_idx):
    if self.global_step == 0:
        _save_weights(self, "step0.pt")
    loss = _training_step(self, batch, batch_idx)
    trainer = self.trainer
    sampler = trainer.train_dataloader.sampler.sampler  # EpochSampler -> lhotse's sampler
    row = {
        "epoch": self.current_epoch, "batch_idx": batch_idx, "global_step": self.global_step, "ids": list(batch.ids),
        "loss": None if loss is None else float(loss.detach()), "lr": trainer.optimizers[0].param_groups[0]["lr"],
        "world_size": trainer.world_size, "global_rank": trainer.global_rank, "local_rank": trainer.local_rank,
        "node_rank": trainer.node_rank, "num_nodes": trainer.num_nodes, "sampler_rank": sampler.rank,
        "sampler_world_size": sampler.world_size, "cluster": type(getattr(trainer.strategy, "cluster_environment", None)).__name__, "env": LAUNCH_ENV,
    }
    with open(RECORD_DIR / f"rank{trainer.global_rank}.jsonl", "a") as f:
        f.write(json.dumps(row) + "\n")
    return loss


def on_train_batch_end(self, outputs, batch, batch_idx):
    _on_train_batch_end(self, outputs, batch, batch_idx)
    if self.global_step == 1:
        _save_weights(self, "step1.pt")


ASRLightningModule.training_step = training_step
ASRLightningModule.on_train_batch_end = on_train_batch_end

from asr.cli.train import main  # noqa: E402

main()
