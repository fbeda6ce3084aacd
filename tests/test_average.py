"""Checkpoint averaging (asr-average)."""

from __future__ import annotations

import pytest
import torch

from asr.cli.average import average_checkpoints, average_state_dicts, find_epoch_checkpoints, main
from asr.models.asr_model import build_model
from asr.text.tokenizer import Tokenizer

CFG = {"encoder": {"type": "pblstm", "hidden_size": 8, "num_layers": 1, "subsample": [2], "dropout": 0.0}, "attention": {"type": "dot"}, "decoder": {"type": "rnn", "embed_dim": 4, "hidden_size": 8}, "label_smoothing": 0.0, "ctc_weight": 0.3}


def _write_ckpts(mini_an4, tmp_path, n=3):
    tok = Tokenizer.from_file(mini_an4 / "data/token/char.model")
    paths = []
    for i in range(n):
        torch.manual_seed(i)
        model = build_model(CFG, tok.vocab_size, tok.sos_id, tok.eos_id, tok.pad_id)
        sd = {f"model.{k}": v for k, v in model.state_dict().items()}
        p = tmp_path / "exp/checkpoints" / f"epoch{i:03d}.ckpt"
        p.parent.mkdir(parents=True, exist_ok=True)
        torch.save({"state_dict": sd, "epoch": i, "asr": {"model_cfg": CFG, "optim_cfg": {}, "tokenizer_proto": tok.proto, "feat_dim": 80, "frame_shift_s": 0.01}}, p)
        paths.append(p)
    return paths


def test_averaged_checkpoint_is_the_elementwise_mean_and_loads(mini_an4, tmp_path):
    from asr.models.checkpoint import load_checkpoint

    paths = _write_ckpts(mini_an4, tmp_path)
    out = tmp_path / "avg.ckpt"
    summary = average_checkpoints(paths, out)
    assert summary["epochs"] == [0, 1, 2]
    sds = [torch.load(p, weights_only=True)["state_dict"] for p in paths]
    avg = torch.load(out, weights_only=True)["state_dict"]
    for k, v in avg.items():
        if v.is_floating_point():
            torch.testing.assert_close(v, (sds[0][k] + sds[1][k] + sds[2][k]) / 3, rtol=1e-6, atol=1e-7)
    assert not torch.equal(avg["model.ctc.weight"], sds[0]["model.ctc.weight"])
    model, _, _ = load_checkpoint(str(out))  # a normal checkpoint for asr-decode
    torch.testing.assert_close(model.ctc.weight, avg["model.ctc.weight"])


def test_average_cli_finds_epoch_checkpoints_and_takes_the_last_n(mini_an4, tmp_path):
    paths = _write_ckpts(mini_an4, tmp_path)
    assert find_epoch_checkpoints(tmp_path / "exp") == paths
    main([f"exp_dir={tmp_path / 'exp'}", "n=2"])
    out = tmp_path / "exp/checkpoints/avg2.ckpt"
    assert torch.load(out, weights_only=True)["averaged_from"] == [str(p) for p in paths[1:]]


def test_average_refuses_mismatched_inputs(tmp_path):
    with pytest.raises(ValueError, match="shapes"):
        average_state_dicts([{"w": torch.zeros(2)}, {"w": torch.zeros(3)}])
    with pytest.raises(ValueError, match="different parameters"):
        average_state_dicts([{"w": torch.zeros(2)}, {"v": torch.zeros(2)}])
    bad = tmp_path / "x.ckpt"
    torch.save({"weights": torch.zeros(1)}, bad)
    with pytest.raises(ValueError, match="not an asr training checkpoint"):
        average_checkpoints([bad], tmp_path / "o.ckpt")
