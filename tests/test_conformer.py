"""Conformer encoder (Gulati et al. 2020, arXiv 2005.08100) on real AN4 fbank: output shapes and lengths, padding
invariance, batched = unbatched, relative-position attention against a brute-force computation, the convolution
module's masking, both decoders through build_model (a few steps lower the loss), and its typed config."""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path

import pytest
import torch
import yaml

from asr.models.asr_model import build_model
from asr.models.config import ModelConfig
from asr.models.encoders.conformer import ConformerEncoder, ConvolutionModule, relative_positions
from asr.models.interfaces import Encoder
from asr.models.layers import MultiHeadAttention, make_pad_mask, sinusoidal_positions

ROOT = Path(__file__).resolve().parents[1]
CF_ENC = {"type": "conformer", "d_model": 32, "num_heads": 4, "ff_dim": 64, "num_layers": 2, "dropout": 0.0, "conv_kernel": 7, "conv_channels": 8}
TF_DEC = {"type": "transformer", "d_model": 32, "num_heads": 4, "ff_dim": 64, "num_layers": 2, "dropout": 0.0}
RNN = {"type": "rnn", "embed_dim": 8, "hidden_size": 16}
ATT = {"type": "location_aware", "att_dim": 16, "kernel_size": 5}


def _enc(seed: int = 0, **kw) -> ConformerEncoder:
    torch.manual_seed(seed)
    enc = ConformerEncoder(80, **{k: v for k, v in {**CF_ENC, **kw}.items() if k != "type"})
    # non-trivial BatchNorm running statistics, so that evaluation mode really normalises
    for m in enc.modules():
        if isinstance(m, torch.nn.BatchNorm1d):
            m.running_mean.uniform_(-0.5, 0.5)
            m.running_var.uniform_(0.5, 2.0)
    return enc.eval()


def _garbage_padded(batch):
    xs, lens = batch
    xs = xs.clone()
    for i, n in enumerate(lens.tolist()):
        xs[i, n:] = 50.0  # garbage in the padding must not leak
    return xs, lens


# ---- encoder ------------------------------------------------------------------------------------------


def test_shapes_lengths_and_zero_padding(batch):
    enc = _enc()
    xs, lens = batch
    hs, hs_lens = enc(xs, lens)
    assert isinstance(enc, Encoder) and enc.subsampling_factor == 4 and enc.output_dim == 32
    assert hs.shape == (4, ((xs.shape[1] - 1) // 2 - 1) // 2, 32)
    assert hs_lens.tolist() == [((int(n) - 1) // 2 - 1) // 2 for n in lens] == enc.output_lengths(lens).tolist()
    assert len(set(hs_lens.tolist())) > 1  # the batch really is padded
    valid = make_pad_mask(hs_lens, hs.shape[1])
    assert (hs[~valid] == 0).all() and (hs[valid].abs().sum(-1) > 0).all()
    assert torch.isfinite(hs).all()


@pytest.mark.parametrize("conv_norm", ["batch_norm", "layer_norm"])
def test_padding_invariance_and_batched_equals_unbatched(batch, conv_norm):
    """Every utterance alone gives what it gives in the padded batch (garbage in the padding), eval mode."""
    enc = _enc(conv_norm=conv_norm)
    xs, lens = _garbage_padded(batch)
    with torch.no_grad():
        hs, hs_lens = enc(xs, lens)
        for i in range(len(lens)):
            alone, alone_len = enc(xs[i : i + 1, : lens[i]], lens[i : i + 1])
            assert alone_len.item() == hs_lens[i].item()
            torch.testing.assert_close(alone[0], hs[i, : hs_lens[i]], atol=1e-5, rtol=1e-5)


def test_training_mode_batchnorm_counts_valid_frames_only(batch):
    """In training the conv module's BatchNorm statistics come from valid frames: more padding (and garbage in it)
    changes neither the outputs nor the running statistics."""
    xs, lens = _garbage_padded(batch)
    outs, stats = [], []
    for extra in (0, 37):
        enc = _enc(dropout=0.0).train()
        x = torch.cat([xs, torch.full((xs.shape[0], extra, 80), -9.0)], 1)
        hs, hs_lens = enc(x, lens)
        valid = make_pad_mask(hs_lens, hs.shape[1])
        outs.append(hs[valid])
        stats.append(torch.cat([enc.layers[0].conv.norm.running_mean, enc.layers[0].conv.norm.running_var]))
    torch.testing.assert_close(outs[0], outs[1], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(stats[0], stats[1])


def test_conv_module_does_not_see_padded_frames():
    torch.manual_seed(0)
    conv = ConvolutionModule(8, kernel_size=5).eval()
    x = torch.randn(1, 12, 8)
    valid = make_pad_mask(torch.tensor([7]), 12)
    y = conv(x, valid)
    x2 = x.clone()
    x2[:, 7:] = 1e3
    torch.testing.assert_close(conv(x2, valid)[:, :7], y[:, :7])
    torch.testing.assert_close(conv(x[:, :7], valid[:, :7]), y[:, :7])
    with pytest.raises(ValueError, match="odd"):
        ConvolutionModule(8, kernel_size=4)
    with pytest.raises(ValueError, match="conv_norm"):
        ConvolutionModule(8, norm="group_norm")


def test_encoder_uses_positions_and_context(batch):
    """Attention mixes frames (changing late input changes early output), and relative positions matter: with
    every u, v, W_R zeroed the output changes."""
    enc = _enc()
    xs, lens = batch
    x = xs[:1, : lens[0]]
    with torch.no_grad():
        hs, _ = enc(x, lens[:1])
        x2 = x.clone()
        x2[:, -40:] += 1.0
        hs2, _ = enc(x2, lens[:1])
        assert (hs2[0, 0] - hs[0, 0]).abs().max() > 1e-4
        for layer in enc.layers:
            layer.self_att.linear_pos.weight.zero_()
        hs3, _ = enc(x, lens[:1])
        assert (hs3 - hs).abs().max() > 1e-4


# ---- relative-position attention ------------------------------------------------------------------------


def test_relative_positions_values():
    pe = relative_positions(4, 6)
    assert pe.shape == (1, 7, 6)
    for c in range(7):  # row c encodes relative position 3 - c
        torch.testing.assert_close(pe[0, c], sinusoidal_positions(1, 6, offset=3 - c)[0])
    assert pe[0, 3].tolist() == sinusoidal_positions(1, 6)[0].tolist()  # relative position 0


def test_rel_shift_indexing():
    t = 5
    x = torch.randn(2, 3, t, 2 * t - 1)
    out = MultiHeadAttention.rel_shift(x)
    assert out.shape == (2, 3, t, t)
    for i in range(t):
        for j in range(t):
            assert torch.equal(out[..., i, j], x[..., i, t - 1 - i + j])


@pytest.mark.parametrize("need_weights", [False, True])
def test_rel_attention_equals_brute_force(need_weights):
    """``attend_rel`` against score(i, j) = ((q_i + u) . k_j + (q_i + v) . W_R r_{i-j}) / sqrt(d_k), computed
    one (batch, head, i, j) at a time, with a padded key."""
    torch.manual_seed(0)
    b, t, d, h = 2, 5, 8, 2
    dk = d // h
    mha = MultiHeadAttention(d, h, rel_pos=True).eval()
    with torch.no_grad():
        mha.pos_bias_u.normal_()
        mha.pos_bias_v.normal_()
    x = torch.randn(b, t, d)
    lens = torch.tensor([5, 3])
    mask = make_pad_mask(lens, t)[:, None, None, :]
    with torch.no_grad():
        k, v = mha.project_kv(x)
        out, w = mha.attend_rel(x, k, v, relative_positions(t, d), mask, need_weights=need_weights)
        q = mha.w_q(x).view(b, t, h, dk)
        kk, vv = (y.view(b, t, h, dk) for y in mha.w_kv(x).chunk(2, -1))
        ref = torch.zeros(b, t, d)
        for bi in range(b):
            ctx = torch.zeros(t, h, dk)
            for hi in range(h):
                for i in range(t):
                    scores = torch.full((t,), float("-inf"))
                    for j in range(lens[bi]):
                        r = mha.linear_pos(sinusoidal_positions(1, d, offset=i - j)[0]).view(h, dk)[hi]
                        scores[j] = ((q[bi, i, hi] + mha.pos_bias_u[hi]) @ kk[bi, j, hi] + (q[bi, i, hi] + mha.pos_bias_v[hi]) @ r) / math.sqrt(dk)
                    p = torch.softmax(scores, 0)
                    if w is not None:
                        torch.testing.assert_close(w[bi, hi, i], p, atol=1e-6, rtol=1e-5)
                    ctx[i, hi] = p @ vv[bi, :, hi]
            ref[bi] = mha.w_o(ctx.reshape(t, d))
    torch.testing.assert_close(out, ref, atol=1e-5, rtol=1e-5)


def test_plain_attention_is_unchanged_by_the_option():
    """``rel_pos=False`` (the default) keeps the state dict of plain attention; ``rel_pos=True`` only adds."""
    plain = MultiHeadAttention(16, 4).state_dict()
    assert set(plain) == {f"{n}.{p}" for n in ("w_q", "w_kv", "w_o") for p in ("weight", "bias")}
    rel = MultiHeadAttention(16, 4, rel_pos=True).state_dict()
    assert set(rel) - set(plain) == {"linear_pos.weight", "pos_bias_u", "pos_bias_v"} and set(plain) <= set(rel)
    with pytest.raises(RuntimeError, match="rel_pos=True"):
        MultiHeadAttention(16, 4).attend_rel(torch.randn(1, 3, 16), *MultiHeadAttention(16, 4).project_kv(torch.randn(1, 3, 16)), relative_positions(3, 16), None)


# ---- whole model and config ---------------------------------------------------------------------------------


@pytest.mark.parametrize("dec", ["rnn", "transformer"])
def test_build_model_with_either_decoder_trains(batch, dec):
    cfg = {"encoder": CF_ENC, "attention": ATT, "decoder": RNN if dec == "rnn" else TF_DEC, "label_smoothing": 0.1, "ctc_weight": 0.3, "init": "xavier_uniform"}
    torch.manual_seed(0)
    model = build_model(cfg, vocab_size=10, sos_id=2, eos_id=3, pad_id=0)
    assert type(model.encoder).__name__ == "ConformerEncoder"
    assert type(model.decoder).__name__ == ("RNNAttentionDecoder" if dec == "rnn" else "TransformerDecoder")
    xs, lens = batch
    ys, ys_lens = torch.tensor([[4, 5, 6], [7, 8, 0], [9, 0, 0], [5, 5, 0]]), torch.tensor([3, 2, 1, 2])
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    model.train()
    losses = []
    for _ in range(6):
        opt.zero_grad()
        out = model(xs, lens, ys, ys_lens)
        assert torch.isfinite(out["loss"]) and out["ctc_loss"] > 0
        out["loss"].backward()
        assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)
        assert model.encoder.layers[0].self_att.pos_bias_u.grad.abs().sum() > 0
        opt.step()
        losses.append(float(out["loss"].detach()))
    assert losses[-1] < 0.8 * losses[0], losses


def test_config_round_trip_and_unknown_key():
    conf = yaml.safe_load((ROOT / "conf/model/encoder/conformer.yaml").read_text())
    d = {"encoder": conf, "decoder": yaml.safe_load((ROOT / "conf/model/decoder/transformer.yaml").read_text()), "ctc_weight": 0.3}
    mc = ModelConfig.from_dict(d)
    assert mc.encoder.type == "conformer" and mc.encoder.conv_kernel == conf["conv_kernel"] and mc.encoder.conv_norm == "batch_norm"
    assert ModelConfig.from_dict(mc.to_dict()) == mc
    assert {f.name for f in dataclasses.fields(mc.encoder)} == {"type", "d_model", "num_heads", "ff_dim", "num_layers", "dropout", "conv_kernel", "conv_norm", "conv_channels"}
    # the defaults are filled (stored whole)
    assert ModelConfig.from_dict({**d, "encoder": {"type": "conformer"}}).to_dict()["encoder"]["conv_kernel"] == 31
    with pytest.raises(ValueError, match=r"model.encoder \(conformer\): unknown key\(s\) \['cnn_module_kernel'\]"):
        ModelConfig.from_dict({**d, "encoder": {**conf, "cnn_module_kernel": 15}})


def test_an4_experiment_composes_and_builds():
    """conf/experiment/an4/conformer_ctc.yaml composes with asr-train's config and builds the Conformer + Transformer
    decoder model; parameter count of the AN4 encoder for the record."""
    from hydra import compose, initialize_config_dir
    from omegaconf import OmegaConf

    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        cfg = compose("train", overrides=["experiment=an4/conformer_ctc"])
    model_cfg = OmegaConf.to_container(cfg.model, resolve=True)
    mc = ModelConfig.from_dict(model_cfg)
    assert mc.encoder.type == "conformer" and mc.decoder.type == "transformer" and mc.ctc_weight == 0.3
    model = build_model(mc, vocab_size=44, sos_id=2, eos_id=3, pad_id=0)
    assert isinstance(model.encoder, ConformerEncoder) and len(model.encoder.layers) == mc.encoder.num_layers
