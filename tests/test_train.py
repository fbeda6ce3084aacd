"""Configs, Lightning training, resume, DDP on CPU, decode → score → plot, and overfitting on real AN4 audio."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir

from asr.utils.paths import CONF_DIR

EXPERIMENTS = sorted(p.stem for p in (CONF_DIR / "experiment/an4").glob("*.yaml"))
TINY = [
    "model.encoder.hidden_size=32",
    "model.encoder.num_layers=2",
    "model.encoder.subsample=[4,2]",
    "model.decoder.hidden_size=32",
    "model.decoder.embed_dim=16",
    "trainer.enable_progress_bar=false",
    "trainer.log_every_n_steps=1",
]


def _cfg(root: Path, exp_dir: Path, overrides: list[str]):
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        return compose(
            "train",
            overrides=[
                f"data.root={root / 'data'}",
                f"data.dump={root / 'dump'}",
                "tokenizer=char",
                f"exp_dir={exp_dir}",
                *overrides,
            ],
        )


def test_experiment_configs_exist_for_every_scorer():
    assert {"location", "location_aware", "additive", "dot", "general"} <= set(EXPERIMENTS)


@pytest.mark.parametrize("experiment", EXPERIMENTS)
@pytest.mark.parametrize("trainer", ["cpu", "gpu", "ddp"])
def test_every_experiment_config_composes_and_instantiates(tmp_path, experiment, trainer):
    from omegaconf import OmegaConf

    from asr.models.asr_model import build_model

    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        cfg = compose("train", overrides=[f"experiment=an4/{experiment}", f"trainer={trainer}"])
    model = build_model(OmegaConf.to_container(cfg.model, resolve=True), 40, 2, 3, 0)
    if experiment.startswith(("transformer", "conformer")):
        assert cfg.name == f"an4_{experiment}" and model.subsampling_factor == 4 and model.ctc is not None
    elif experiment.startswith("pblstm"):
        assert cfg.name == f"an4_{experiment}" and model.subsampling_factor == 8 and model.ctc is not None
    else:  # the scorer experiments: an4/<scorer>[_reg|_noaug|_mildaug|_mildaug_sp|_x4|_x4_noaug|_x4_channel]
        assert cfg.name == f"an4_pblstm_{experiment}"
        scorer = re.sub(r"_(reg|noaug|mildaug|mildaug_sp|x4|x4_noaug|x4_channel)$", "", experiment)
        if scorer == "hard":  # straight-through hard attention over the location_aware scorer
            assert cfg.model.attention.type == "location_aware" and cfg.model.attention.hard == "st"
            assert model.decoder.attention.hard_train == "st"
        else:
            assert cfg.model.attention.type == scorer
        if experiment.endswith("_noaug"):  # the augmentation ablation: no SpecAugment, no speed perturbation
            assert not cfg.augment and list(cfg.data.speed_perturb) == []
        if "_mildaug" in experiment:  # half ESPnet's mask widths; speed perturbation only in _sp
            assert (cfg.augment.freq_mask_width, cfg.augment.time_mask_width, cfg.trainer.max_epochs) == (15, 20, 70)
            assert list(cfg.data.speed_perturb) == ([0.9, 1.0, 1.1] if experiment.endswith("_sp") else [])
        assert model.subsampling_factor == (4 if "_x4" in experiment else 8)
        if "_x4" in experiment:
            assert list(cfg.model.encoder.subsample) == [2, 2, 1]
        if experiment.endswith("_channel"):  # waveform augmentation from epoch 5, SpecAugment off, no speed perturbation
            assert cfg.data.wave_augment.start_epoch == 5 and cfg.data.wave_augment.noise.prob > 0
            assert cfg.augment.num_freq_masks == 0 and cfg.augment.num_time_masks == 0 and list(cfg.data.speed_perturb) == []
            # the dev-chosen draws: a competing talker from the recipe's training data as half the noise, 48 epochs
            assert cfg.data.wave_augment.noise.corpus == "data/train_nodev" and cfg.trainer.max_epochs == 48
            assert list(cfg.data.wave_augment.noise.snr_db) == [5, 20] and cfg.data.wave_augment.reverb.prob == 0.2
        if experiment.endswith("_x4"):
            assert cfg.augment.freq_mask_width == 15 and list(cfg.data.speed_perturb) == [0.9, 1.0, 1.1]
    if trainer == "ddp":
        assert cfg.trainer.strategy == "ddp" and cfg.trainer.devices == 2


def test_train_one_epoch_then_decode_score_plot(mini_an4, tmp_path, caplog):
    from asr.cli.decode import decode
    from asr.cli.plot import plot_decode_dir
    from asr.cli.score import score_decode_dir
    from asr.cli.train import train
    from asr.models.checkpoint import load_checkpoint

    exp = tmp_path / "exp"
    with caplog.at_level("INFO", logger="asr.train"):
        summary = train(_cfg(mini_an4, exp, [*TINY, "trainer.max_epochs=1", "data.batch_size=3", "data.num_buckets=1"]))
    assert summary["epochs"] == 1
    assert "model: pblstm encoder, rnn decoder (location_aware attention)" in caplog.text
    best = exp / "checkpoints/best.ckpt"
    assert best.is_file() and (exp / "checkpoints/last.ckpt").is_file()
    # checkpoints load with weights_only=True and rebuild the model, tokenizer and CMVN
    model, tok, meta = load_checkpoint(str(best))
    assert meta["model_cfg"]["attention"]["type"] == "location_aware"
    assert not torch.allclose(model.cmvn.mean, torch.zeros(80))
    metrics = (exp / "csv/metrics.csv").read_text()
    assert "dev/wer" in metrics and "dev/loss" in metrics and "train/loss" in metrics
    assert any((exp / "tb").glob("events.out.tfevents.*"))

    out = tmp_path / "decode"
    info = decode({"ckpt": str(best), "data_dir": str(mini_an4 / "data/test"), "dump_dir": None, "audio": [], "out_dir": str(out), "beam_size": 3, "max_len_ratio": 1.5, "min_len": 5, "length_penalty": 1.0, "batch_size": 2})
    assert info["n_utts"] == 2 and info["subsampling"] == 8 and info["rtf"] > 0
    rows = [json.loads(x) for x in (out / "results.jsonl").read_text().splitlines()]
    assert [r["ref"] for r in rows] == ["J P E G FOUR", "ONE FIVE TWO ONE THREE"]
    res = score_decode_dir(out)
    assert 0 <= res.cer and res.words.n_ref == 10
    pngs = plot_decode_dir(out, worst_n=2)
    assert len(pngs) == 2 and all(p.stat().st_size > 1000 for p in pngs)


def test_decode_user_audio_reports_bad_file_and_decodes_the_rest(mini_an4, tmp_path):
    from asr.cli.decode import decode
    from asr.cli.train import train

    exp = tmp_path / "exp"
    train(_cfg(mini_an4, exp, [*TINY, "trainer.max_epochs=1", "data.batch_size=6"]))
    wavs = sorted(str(p) for p in (Path(__file__).parent / "data/an4/wav/an4test_clstk").rglob("*.wav"))
    bad = tmp_path / "not_audio.wav"
    bad.write_text("hello")
    out = tmp_path / "dec"
    info = decode({"ckpt": str(exp / "checkpoints/last.ckpt"), "audio": [*wavs, str(bad)], "out_dir": str(out), "beam_size": 2, "max_len_ratio": 1.0, "min_len": 1, "length_penalty": 1.0, "batch_size": 4})
    assert info["n_utts"] == 2 and info["n_errors"] == 1
    assert "not_audio.wav" in (out / "errors.tsv").read_text()


def test_guided_attention_for_the_first_epoch(mini_an4, tmp_path):
    """model.guided_attention.epochs=1: the prior is logged (and > 0) in epoch 0's steps only; the checkpoint keeps
    the setting and loads."""
    import csv

    from asr.cli.train import train
    from asr.models.checkpoint import load_checkpoint

    exp = tmp_path / "exp"
    over = ["trainer.max_epochs=2", "data.batch_size=3", "model.guided_attention.weight=0.5", "model.guided_attention.epochs=1"]
    assert train(_cfg(mini_an4, exp, [*TINY, *over]))["epochs"] == 2
    rows = list(csv.DictReader((exp / "csv/metrics.csv").open()))
    ga = {int(r["step"]): float(r["train/ga_loss"]) for r in rows if r.get("train/ga_loss")}
    loss_epochs = {int(r["step"]): int(r["epoch"]) for r in rows if r.get("train/loss")}
    assert ga and all(v > 0 for v in ga.values())
    assert {loss_epochs[s] for s in ga} == {0} and 1 in loss_epochs.values()  # epoch 1 trains without the prior
    model, _, meta = load_checkpoint(str(exp / "checkpoints/last.ckpt"))
    assert meta["model_cfg"]["guided_attention"] == {"weight": 0.5, "sigma": 0.3, "epochs": 1}
    assert model.guided_attention == 0.5 and model.guided_attention_epochs == 1


def test_resume_from_last_checkpoint(mini_an4, tmp_path):
    from asr.cli.train import train

    exp = tmp_path / "exp"
    train(_cfg(mini_an4, exp, [*TINY, "trainer.max_epochs=1", "data.batch_size=3", "data.num_buckets=1"]))
    first = torch.load(exp / "checkpoints/last.ckpt", weights_only=True)
    assert first["epoch"] == 0 and first["global_step"] == 2
    summary = train(_cfg(mini_an4, exp, [*TINY, "trainer.max_epochs=2", "data.batch_size=3", "data.num_buckets=1", "ckpt_path=last"]))
    second = torch.load(exp / "checkpoints/last.ckpt", weights_only=True)
    assert summary["epochs"] == 2 and second["global_step"] == 4  # continued, not restarted
    # training time adds up over the two runs; the epoch checkpoints of both runs are kept and average into a
    # checkpoint asr-decode loads
    assert summary["train_wall_s"] > summary["last_run_wall_s"] > 0
    from asr.cli.average import average_checkpoints, find_epoch_checkpoints
    from asr.models.checkpoint import load_checkpoint

    kept = find_epoch_checkpoints(exp)
    assert [p.name for p in kept] == ["epoch000.ckpt", "epoch001.ckpt"]
    average_checkpoints(kept, exp / "checkpoints/avg2.ckpt")
    model, _, _ = load_checkpoint(str(exp / "checkpoints/avg2.ckpt"))
    w = [torch.load(p, weights_only=True)["state_dict"]["model.decoder.output.weight"] for p in kept]
    torch.testing.assert_close(model.decoder.output.weight, (w[0] + w[1]) / 2)


def test_init_param_starts_a_new_run_from_trained_weights(mini_an4, tmp_path):
    """init_param (ESPnet's --init_param): the new run starts at epoch 0 with a fresh optimiser from the given
    checkpoint's weights (lr 0 keeps them, so the new run's checkpoint holds exactly those weights); a checkpoint of
    another size or tokenizer is refused with a message naming the file and what does not fit."""
    from asr.cli.train import train

    first, second = tmp_path / "first", tmp_path / "second"
    train(_cfg(mini_an4, first, [*TINY, "trainer.max_epochs=1", "data.batch_size=3", "data.num_buckets=1", "seed=1"]))
    src = first / "checkpoints/last.ckpt"
    summary = train(_cfg(mini_an4, second, [*TINY, "trainer.max_epochs=1", "data.batch_size=3", "data.num_buckets=1", "seed=2", "optim.lr=0", f"init_param={src}"]))
    assert summary["epochs"] == 1
    a, b = torch.load(src, weights_only=True), torch.load(second / "checkpoints/last.ckpt", weights_only=True)
    assert b["epoch"] == 0 and b["global_step"] == 2  # a new run, not a resume
    assert a["state_dict"].keys() == b["state_dict"].keys()
    for k, v in a["state_dict"].items():
        torch.testing.assert_close(b["state_dict"][k], v, rtol=0, atol=0, msg=k)

    bigger = [o.replace("hidden_size=32", "hidden_size=48") for o in TINY]
    with pytest.raises(ValueError, match=r"last\.ckpt does not fit this model: .* in the checkpoint, .* in the model"):
        train(_cfg(mini_an4, tmp_path / "third", [*bigger, "trainer.max_epochs=1", f"init_param={src}"]))
    other_tok = tmp_path / "other_tok.ckpt"
    a["asr"]["tokenizer_proto"] = a["asr"]["tokenizer_proto"] + b"x"
    torch.save(a, other_tok)
    with pytest.raises(ValueError, match="other_tok.ckpt: trained with another tokenizer"):
        train(_cfg(mini_an4, tmp_path / "fourth", [*TINY, "trainer.max_epochs=1", f"init_param={other_tok}"]))


def test_cpu_precision_trains_fp32_where_the_cpu_has_no_native_bf16(mini_an4, tmp_path, monkeypatch, caplog):
    """bf16 asked for on a CPU without AMX / AVX512-BF16 (oneDNN would emulate it at ~0.2x the speed) trains in
    32-true with a warning; with native bf16, or on a GPU, the configured precision is kept."""
    from asr.cli.train import cpu_precision, train

    assert cpu_precision("bf16-mixed", "cpu", bf16_supported=False) == "32-true"
    assert cpu_precision("bf16-true", "cpu", bf16_supported=False) == "32-true"
    assert cpu_precision("bf16-mixed", "cpu", bf16_supported=True) == "bf16-mixed"
    assert cpu_precision("bf16-mixed", "gpu", bf16_supported=False) == "bf16-mixed"
    assert cpu_precision("32-true", "cpu", bf16_supported=False) == "32-true"
    assert cpu_precision("bf16-mixed", "auto", bf16_supported=False) == ("bf16-mixed" if torch.cuda.is_available() else "32-true")

    for native, expected in ((False, "32-true"), (True, "bf16-mixed")):
        monkeypatch.setattr(torch.ops.mkldnn, "_is_mkldnn_bf16_supported", lambda native=native: native)
        caplog.clear()
        with caplog.at_level("WARNING", logger="asr.train"):
            summary = train(_cfg(mini_an4, tmp_path / f"exp_{native}", [*TINY, "trainer.max_epochs=1", "data.batch_size=3", "data.limit_train=6", "data.limit_dev=3", "trainer.precision=bf16-mixed"]))
        assert summary["precision"] == expected
        assert ("CPU without native bf16" in caplog.text) == (not native)


@pytest.mark.parametrize("batching", [("data.batch_size=1",), ("data.batch_size=1000", "data.max_duration=2.0")], ids=["count", "duration"])
def test_ddp_two_cpu_processes(mini_an4, tmp_path, batching):
    """trainer=ddp with 2 CPU processes (gloo): each rank gets its own share of the batches (1 utterance each:
    by count, or by 2 s of padded audio, which no two of these 1.5-2.1 s utterances fit in together)."""
    exp = tmp_path / "exp"
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "asr.cli.train", "trainer=ddp", "trainer.accelerator=cpu", "trainer.devices=2", "trainer.max_epochs=1", *batching, "threads=1",
           f"data.root={mini_an4 / 'data'}", f"data.dump={mini_an4 / 'dump'}", "tokenizer=char", f"exp_dir={exp}", *TINY]
    proc = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "distributed_backend=gloo" in proc.stderr + proc.stdout
    ckpt = torch.load(exp / "checkpoints/last.ckpt", weights_only=True)
    # 6 training utterances, batch 1 per rank, 2 ranks -> 3 optimiser steps in the epoch
    assert ckpt["global_step"] == 3


@pytest.mark.slow
def test_overfit_real_utterances_reaches_wer_zero(mini_an4, tmp_path):
    """6 real AN4 utterances, trained on and decoded: the model must learn them exactly."""
    from asr.cli.decode import decode
    from asr.cli.score import score_decode_dir
    from asr.cli.train import train

    exp = tmp_path / "exp"
    overrides = [
        "model.encoder.hidden_size=64", "model.encoder.num_layers=2", "model.encoder.subsample=[4,2]", "model.encoder.dropout=0.0",
        "model.decoder.hidden_size=64", "model.decoder.embed_dim=32", "model.decoder.dropout=0.0", "model.label_smoothing=0.0",
        "data.dev=train_nodev", "data.batch_size=6", "trainer.max_epochs=150", "trainer.check_val_every_n_epoch=25",
        "optim.lr=3e-3", "optim.warmup_steps=10", "trainer.enable_progress_bar=false",
    ]
    summary = train(_cfg(mini_an4, exp, overrides))
    assert summary["best_dev_wer"] == 0.0
    out = tmp_path / "decode"
    decode({"ckpt": summary["best_checkpoint"], "data_dir": str(mini_an4 / "data/train_nodev"), "out_dir": str(out), "beam_size": 4, "max_len_ratio": 1.5, "min_len": 5, "length_penalty": 1.0, "batch_size": 6})
    res = score_decode_dir(out)
    assert res.wer == 0.0 and res.cer == 0.0
