"""Surviving crashes: atomic checkpoints, SIGKILL + resume = uninterrupted run, NaN/Inf steps skipped and capped."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from test_train import TINY, _cfg

# 6 training utterances, batch 2 -> 3 optimiser steps per epoch (one duration bucket: lhotse's DynamicCutSampler).
# Dropout, SpecAugment and on-the-fly speed perturbation stay on: every random draw must survive a resume.
RUN = [*TINY, "threads=1", "deterministic=true", "keep_checkpoints=0", "optim.warmup_steps=2", "data.num_buckets=1"]


def _ckpt(path: Path) -> dict:
    return torch.load(path, weights_only=True)


def _module_checkpoint(root: Path) -> dict:
    """A small but complete asr checkpoint (what Lightning writes, less the loop state), without training."""
    from omegaconf import OmegaConf

    from asr.lightning.module import ASRLightningModule
    from asr.text.tokenizer import Tokenizer

    cfg = _cfg(root, root / "unused", TINY)
    tok = Tokenizer.from_file(str(root / "data/token/char.model"))
    module = ASRLightningModule(OmegaConf.to_container(cfg.model, resolve=True), tok, OmegaConf.to_container(cfg.optim, resolve=True))
    ckpt = {"state_dict": module.state_dict(), "epoch": 0, "global_step": 0}
    module.on_save_checkpoint(ckpt)
    return ckpt


# ---- 1. atomic checkpoint writing -------------------------------------------------------------------
@pytest.mark.parametrize("failure", ["torch.save raises half-way", "os.replace raises"])
def test_interrupted_checkpoint_save_leaves_previous_checkpoint_usable(mini_an4, tmp_path, monkeypatch, failure):
    from asr.models.checkpoint import load_checkpoint
    from asr.utils.io import atomic_torch_save

    old = _module_checkpoint(mini_an4)
    path = tmp_path / "ckpts/last.ckpt"
    atomic_torch_save(old, path)
    new = {**old, "state_dict": {k: v + 1 if v.is_floating_point() else v for k, v in old["state_dict"].items()}, "epoch": 1}

    if failure == "torch.save raises half-way":
        def broken(obj, f, *a, **k):
            f.write(b"PK\x03\x04 half a zip file")
            raise OSError("No space left on device")

        monkeypatch.setattr(torch, "save", broken)
    else:
        def broken(src, dst):
            raise OSError("simulated crash before the rename")

        monkeypatch.setattr(os, "replace", broken)
    with pytest.raises(OSError):
        atomic_torch_save(new, path)
    monkeypatch.undo()

    model, _, meta = load_checkpoint(str(path))  # the survivor: the previous checkpoint, complete
    assert meta["model_cfg"]["encoder"]["hidden_size"] == 32
    for k, v in model.state_dict().items():
        assert torch.equal(v, old["state_dict"][f"model.{k}"]), k
    assert sorted(p.name for p in path.parent.iterdir()) == ["last.ckpt"]  # no temporary file left behind


def test_sigkill_during_checkpoint_save_keeps_previous_and_stale_temp_is_removed(mini_an4, tmp_path):
    """A real SIGKILL in the middle of torch.save: the old file survives; the orphaned temp is cleaned up later."""
    from asr.models.checkpoint import load_checkpoint
    from asr.utils.io import atomic_torch_save, remove_stale_temp_files

    path = tmp_path / "ckpts/last.ckpt"
    atomic_torch_save(_module_checkpoint(mini_an4), path)
    before = path.read_bytes()
    script = textwrap.dedent(f"""
        import os, signal, torch
        from asr.utils.io import atomic_torch_save
        def dying_save(obj, f, *a, **k):
            f.write(b"x" * 4096); f.flush()
            os.kill(os.getpid(), signal.SIGKILL)
        torch.save = dying_save
        atomic_torch_save({{"state_dict": {{}}}}, {str(path)!r})
    """)
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, timeout=120)
    assert proc.returncode == -signal.SIGKILL
    assert path.read_bytes() == before
    load_checkpoint(str(path))
    stale = [p for p in path.parent.iterdir() if p.name != "last.ckpt"]
    assert len(stale) == 1 and stale[0].name.startswith(".last.ckpt.") and stale[0].suffix == ".tmp"
    assert remove_stale_temp_files(path.parent) == stale  # what asr-train does at start-up
    assert sorted(p.name for p in path.parent.iterdir()) == ["last.ckpt"]


# ---- 2. SIGKILL mid-epoch, resume, same weights -----------------------------------------------------
def test_speed_variant_and_batch_order_are_keyed_by_seed_and_epoch(mini_an4):
    """The speed factor of a cut depends on (seed, epoch, cut id) only, whatever the global RNG; the same epoch gives
    the same batches and features; each epoch another batch order."""
    import random

    from asr.data.lhotse_data import CutBatchDataset, load_cuts, make_sampler, speed_factor
    from asr.text.tokenizer import Tokenizer

    tok = Tokenizer.from_file(str(mini_an4 / "data/token/char.model"))
    cuts = load_cuts(mini_an4 / "dump/train_nodev/cuts.jsonl.gz")
    ids = [c.id for c in cuts]
    random.seed(123)  # the global RNG plays no part
    draws = {e: [speed_factor([0.9, 1.0, 1.1], 7, e, i) for i in ids] for e in range(4)}
    random.seed(456)
    assert draws == {e: [speed_factor([0.9, 1.0, 1.1], 7, e, i) for i in ids] for e in range(4)}
    assert len({tuple(v) for v in draws.values()}) > 1 and {0.9, 1.1} <= {f for v in draws.values() for f in v}

    def epoch_batches(e: int):
        s = make_sampler(load_cuts(mini_an4 / "dump/train_nodev/cuts.jsonl.gz"), batch_size=2, seed=1, num_buckets=1)
        s.set_epoch(e)
        ds = CutBatchDataset(tok, speeds=[0.9, 1.0, 1.1], seed=7)
        return [ds[item] for item in s]

    e1, e1_again, e2 = epoch_batches(1), epoch_batches(1), epoch_batches(2)
    assert [b.ids for b in e1] == [b.ids for b in e1_again] and [b.ids for b in e1] != [b.ids for b in e2]
    for a, b in zip(e1, e1_again):
        assert torch.equal(a.feats, b.feats) and torch.equal(a.tokens, b.tokens)
    assert sorted(i for b in e1 for i in b.ids) == sorted(ids)  # every cut once per epoch
    by_id = {i: b.feats[k, : b.feat_lens[k]] for b in e1 for k, i in enumerate(b.ids)}
    plain = {c.id: c.features.num_frames for c in cuts}
    for i, f in zip(ids, draws[1]):  # perturbed cuts change length (0.9: longer, 1.1: shorter)
        n = by_id[i].shape[0]
        assert (n > plain[i]) if f == 0.9 else (n < plain[i]) if f == 1.1 else (n == plain[i])


KILLER = """
import os, signal, sys
from asr.lightning.module import ASRLightningModule

KILL_AT = int(sys.argv.pop(1))

_orig = ASRLightningModule.on_train_batch_start

def on_train_batch_start(self, batch, batch_idx):
    _orig(self, batch, batch_idx)
    if self.global_step == KILL_AT:
        sys.stdout.write(f"KILL epoch={self.current_epoch} step={self.global_step}\\n"); sys.stdout.flush()
        os.kill(os.getpid(), signal.SIGKILL)

ASRLightningModule.on_train_batch_start = on_train_batch_start
from asr.cli.train import main
main()
"""


@pytest.mark.parametrize("batching", [
    ("data.batch_size=2",),
    ("data.batch_size=1000", "data.max_duration=4.4"),
    # on-the-fly waveform augmentation (issue 32): rooms, noise, band-limiting and gain drawn per (seed, epoch, cut)
    ("data.batch_size=2", "augment=channel_noise", "data.wave_augment.reverb.rooms=2", "data.wave_augment.reverb.prob=0.5", "data.wave_augment.noise.prob=0.8", "data.wave_augment.band_limit.prob=0.5"),
], ids=["count", "duration", "channel_noise"])
def test_sigkill_mid_epoch_then_resume_equals_uninterrupted_run(mini_an4, tmp_path, batching):
    """asr-train killed with SIGKILL inside epoch 2 (step 7 of 9), resumed with ckpt_path=last: same final weights.

    Both batchings give 3 batches of 2 of the 6 training utterances: 2 per batch, or 4.4 s of audio per batch
    (the dynamic batches of ``data.max_duration``; utterances of 1.5-2.1 s: two fit, three never do).

    Lightning semantics this relies on (checked here): last.ckpt is written at every epoch end (so at the
    kill it holds epoch 1, step 6) and a resumed run re-runs the interrupted epoch from its start.
    """
    from asr.cli.train import train

    from asr.lightning.module import ASRLightningModule

    ref_exp, exp = tmp_path / "ref", tmp_path / "killed"
    seen = []
    orig_start = ASRLightningModule.on_train_batch_start

    def start(self, batch, batch_idx):
        orig_start(self, batch, batch_idx)
        seen.append((self.current_epoch, self.trainer.train_dataloader.sampler.epoch))

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(ASRLightningModule, "on_train_batch_start", start)
        train(_cfg(mini_an4, ref_exp, [*RUN, *batching, "trainer.max_epochs=3"]))
    assert all(e == sampler_epoch for e, sampler_epoch in seen) and len(seen) == 9  # a new batch order every epoch
    ref = _ckpt(ref_exp / "checkpoints/last.ckpt")
    assert ref["epoch"] == 2 and ref["global_step"] == 9  # last.ckpt = the final epoch, improved dev WER or not

    script = tmp_path / "killer.py"
    script.write_text(KILLER)
    args = [f"data.root={mini_an4 / 'data'}", f"data.dump={mini_an4 / 'dump'}", "tokenizer=char", f"exp_dir={exp}", *RUN, *batching, "trainer.max_epochs=3"]
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, str(script), "7", *args], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == -signal.SIGKILL, proc.stderr[-3000:]
    assert "KILL epoch=2 step=7" in proc.stdout
    at_kill = _ckpt(exp / "checkpoints/last.ckpt")
    assert at_kill["epoch"] == 1 and at_kill["global_step"] == 6  # the end of epoch 1, not mid-epoch

    summary = train(_cfg(mini_an4, exp, [*RUN, *batching, "trainer.max_epochs=3", "ckpt_path=last"]))
    assert summary["epochs"] == 3
    got = _ckpt(exp / "checkpoints/last.ckpt")
    assert got["global_step"] == 9  # epoch 2 re-run from its start: 3 more steps, not 2
    assert got["state_dict"].keys() == ref["state_dict"].keys()
    for k, v in ref["state_dict"].items():
        torch.testing.assert_close(got["state_dict"][k], v, rtol=1e-5, atol=1e-6, msg=lambda m, k=k: f"{k}: {m}")
    for a, b in zip(got["optimizer_states"][0]["state"].values(), ref["optimizer_states"][0]["state"].values()):
        torch.testing.assert_close(a["exp_avg"], b["exp_avg"], rtol=1e-5, atol=1e-6)
    # csv/metrics.csv reads as the uninterrupted run's: the rows of epochs 0-1 survive the resume (Lightning's
    # CSVLogger deletes them) and the killed epoch 2 is logged once
    assert _csv_rows(exp) == _csv_rows(ref_exp)
    assert [e for e, s, keys in _csv_rows(exp) if "dev/wer" in keys] == ["0", "1", "2"]
    if "augment=channel_noise" in batching:  # the augmentation was on in both runs (not an accidental no-op)
        import yaml

        for d in (ref_exp, exp):
            aug = yaml.safe_load((d / "config.yaml").read_text())["data"]["wave_augment"]
            assert aug["noise"]["prob"] == 0.8 and aug["reverb"]["rooms"] == 2


def _csv_rows(exp: Path) -> list[tuple[str, str, tuple[str, ...]]]:
    """(epoch, step, logged columns) of every row of ``exp/csv/metrics.csv``."""
    import csv

    with (exp / "csv/metrics.csv").open(newline="") as f:
        return [(r["epoch"], r["step"], tuple(sorted(k for k, v in r.items() if v not in ("", None)))) for r in csv.DictReader(f)]


# ---- 3. NaN / Inf steps -----------------------------------------------------------------------------
def _poison(monkeypatch, bad_calls: set[int] | None, how: str = "loss"):
    """Make the model's training forward return a NaN loss (or a finite loss with NaN gradients) on the
    given 0-based training calls (None = every call)."""
    from asr.models.asr_model import AttentionASRModel

    orig = AttentionASRModel.forward
    calls = {"n": 0}

    def forward(self, *args, **kwargs):
        out = orig(self, *args, **kwargs)
        if self.training:
            n = calls["n"]
            calls["n"] += 1
            if bad_calls is None or n in bad_calls:
                if how == "loss":
                    out["loss"] = out["loss"] * float("nan")
                else:
                    out["loss"].register_hook(lambda g: g * float("inf"))
        return out

    monkeypatch.setattr(AttentionASRModel, "forward", forward)


def _record_weights(monkeypatch):
    """Snapshots of the model weights before and after every training batch: {batch: (before, after)}."""
    from asr.lightning.module import ASRLightningModule

    snaps: dict[int, list] = {}
    orig_start, orig_end = ASRLightningModule.on_train_batch_start, ASRLightningModule.on_train_batch_end

    def start(self, batch, batch_idx):
        orig_start(self, batch, batch_idx)
        snaps[self.global_step] = [{k: v.detach().clone() for k, v in self.model.state_dict().items()}]

    def end(self, outputs, batch, batch_idx):
        snaps[self.global_step - 1].append({k: v.detach().clone() for k, v in self.model.state_dict().items()})
        orig_end(self, outputs, batch, batch_idx)

    monkeypatch.setattr(ASRLightningModule, "on_train_batch_start", start)
    monkeypatch.setattr(ASRLightningModule, "on_train_batch_end", end)
    return snaps


def _same(a: dict, b: dict) -> bool:
    return all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.parametrize("how", ["loss", "gradient"])
def test_non_finite_steps_are_skipped_and_counted(mini_an4, tmp_path, monkeypatch, how):
    from asr.cli.train import train

    _poison(monkeypatch, {1, 2}, how)  # steps 1 and 2 of 6 (batch 1): two bad steps in a row < max_bad_steps=3
    snaps = _record_weights(monkeypatch)
    exp = tmp_path / "exp"
    summary = train(_cfg(mini_an4, exp, [*TINY, "data.batch_size=1", "trainer.max_epochs=1", "max_bad_steps=3", "keep_checkpoints=0", "augment=none"]))
    assert summary["epochs"] == 1
    assert sorted(snaps) == [0, 1, 2, 3, 4, 5]
    for step, (before, after) in snaps.items():
        assert _same(before, after) == (step in (1, 2)), step  # weights untouched exactly over the skipped steps
    last = _ckpt(exp / "checkpoints/last.ckpt")
    assert last["asr_skipped_steps"] == 2
    assert all(torch.isfinite(v).all() for v in last["state_dict"].values() if v.is_floating_point())
    # Adam took 4 updates, not 6: the skipped steps left the optimiser state alone as well
    assert {int(s["step"]) for s in last["optimizer_states"][0]["state"].values()} == {4}
    import csv

    rows = list(csv.DictReader((exp / "csv/metrics.csv").open()))
    skipped = [float(r["train/skipped_steps"]) for r in rows if r.get("train/skipped_steps")]
    assert skipped == [0.0, 1.0, 2.0, 2.0, 2.0, 2.0]


def test_training_stops_after_max_bad_steps_in_a_row(mini_an4, tmp_path, monkeypatch):
    from asr.cli.train import train
    from asr.lightning.module import TrainingDivergedError

    _poison(monkeypatch, None)
    with pytest.raises(TrainingDivergedError, match=r"3 optimiser steps in a row .*non-finite.*max_bad_steps=3") as e:
        train(_cfg(mini_an4, tmp_path / "exp", [*TINY, "data.batch_size=1", "trainer.max_epochs=2", "max_bad_steps=3", "keep_checkpoints=0"]))
    assert "3 skipped in all" in str(e.value)


def test_bad_steps_counter_resets_after_a_good_step(mini_an4, tmp_path, monkeypatch):
    """Bad steps that are not consecutive never stop training, however many there are."""
    from asr.cli.train import train

    _poison(monkeypatch, {0, 1, 3, 4})  # 2 in a row, a good one, 2 in a row; max_bad_steps=3
    exp = tmp_path / "exp"
    train(_cfg(mini_an4, exp, [*TINY, "data.batch_size=1", "trainer.max_epochs=1", "max_bad_steps=3", "keep_checkpoints=0"]))
    assert _ckpt(exp / "checkpoints/last.ckpt")["asr_skipped_steps"] == 4
