"""Untrusted checkpoints: pickled code never runs, stored configs build only registered types."""

from __future__ import annotations

import os

import pytest
import torch

from test_crash_resume import _module_checkpoint
from test_train import TINY, _cfg


class _Payload:
    """Unpickling this runs ``touch <marker>`` (what a malicious checkpoint would do)."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (os.system, (f"touch '{self.marker}'",))


@pytest.fixture
def malicious_ckpt(mini_an4, tmp_path):
    marker = tmp_path / "pwned"
    ckpt = _module_checkpoint(mini_an4)
    ckpt["asr"]["frame_shift_s"] = _Payload(marker)  # a valid checkpoint otherwise
    path = tmp_path / "evil.ckpt"
    torch.save(ckpt, path)
    return path, marker


def test_payload_is_live_when_loaded_unsafely(malicious_ckpt):
    """Sanity check of the fixture: ``weights_only=False`` would run it."""
    path, marker = malicious_ckpt
    torch.load(path, weights_only=False)
    assert marker.exists()


def test_load_checkpoint_refuses_pickled_code(malicious_ckpt):
    from asr.models.checkpoint import load_checkpoint

    path, marker = malicious_ckpt
    with pytest.raises(ValueError, match="refusing to load checkpoint .*weights_only=True"):
        load_checkpoint(str(path))
    assert not marker.exists()


def test_resume_refuses_pickled_code(malicious_ckpt, mini_an4, tmp_path):
    from asr.cli.train import train

    path, marker = malicious_ckpt
    with pytest.raises(ValueError, match="refusing to resume from .*weights_only=True"):
        train(_cfg(mini_an4, tmp_path / "exp", [*TINY, "trainer.max_epochs=1", "keep_checkpoints=0", f"ckpt_path={path}"]))
    assert not marker.exists()


@pytest.mark.parametrize(
    "where, edit, key_path",
    [
        ("model_cfg", lambda c: c["encoder"].update(_target_="os.system"), "model.encoder._target_"),
        ("model_cfg", lambda c: c.update(_target_="os.system"), "model._target_"),
        ("model_cfg", lambda c: c["encoder"].update(subsample=[{"_target_": "os.system", "command": "true"}]), r"model.encoder.subsample\[0\]._target_"),
        ("optim_cfg", lambda c: c.update(_target_="torch.optim.LBFGS"), "optim._target_"),
    ],
)
def test_stored_config_with_target_is_refused(mini_an4, tmp_path, where, edit, key_path):
    from asr.models.checkpoint import load_checkpoint

    ckpt = _module_checkpoint(mini_an4)
    edit(ckpt["asr"][where])
    path = tmp_path / "target.ckpt"
    torch.save(ckpt, path)  # plain data: loads with weights_only=True, so the config check must catch it
    with pytest.raises(ValueError, match=rf"refusing .*'{key_path}'.*not allowed"):
        load_checkpoint(str(path))


@pytest.mark.parametrize("name, ok", [("adam", True), ("torch.optim.AdamW", True), ("SGD", True), ("torch.optim.LBFGS", False), ("os.system", False)])
def test_stored_optimiser_must_be_allowed(mini_an4, tmp_path, name, ok):
    from asr.models.checkpoint import load_checkpoint

    ckpt = _module_checkpoint(mini_an4)
    ckpt["asr"]["optim_cfg"]["optimizer"] = name
    path = tmp_path / "opt.ckpt"
    torch.save(ckpt, path)
    if ok:
        load_checkpoint(str(path))
    else:
        with pytest.raises(ValueError, match=r"optim.optimizer=.* is not an allowed optimiser"):
            load_checkpoint(str(path))


def test_unknown_encoder_type_in_checkpoint_is_refused(mini_an4, tmp_path):
    from asr.models.checkpoint import load_checkpoint

    ckpt = _module_checkpoint(mini_an4)
    ckpt["asr"]["model_cfg"]["encoder"]["type"] = "subprocess.Popen"
    path = tmp_path / "unknown.ckpt"
    torch.save(ckpt, path)
    with pytest.raises(ValueError, match="unknown encoder type 'subprocess.Popen'"):
        load_checkpoint(str(path))


def test_build_model_refuses_target_before_building(mini_an4):
    from omegaconf import OmegaConf

    from asr.models.asr_model import build_model

    cfg = OmegaConf.to_container(_cfg(mini_an4, mini_an4 / "unused", TINY).model, resolve=True)
    cfg["attention"]["_target_"] = "os.system"
    with pytest.raises(ValueError, match=r"'model.attention._target_'"):
        build_model(cfg, 30, 1, 2, 0)
