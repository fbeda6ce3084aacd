"""Transformer encoder/decoder on real AN4 fbank: subsampling lengths, padding invariance, causality, cached
incremental decoding, build_model combinations, search, noam schedule and the head-grid plot."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from asr.decoding.search import DecodingOptions, beam_search, greedy_search
from asr.models.asr_model import build_model
from asr.models.decoders.transformer import TransformerDecoder
from asr.models.encoders.pblstm import make_pad_mask
from asr.models.encoders.transformer import Conv2dSubsampling, TransformerEncoder, sinusoidal_positions

TF_ENC = {"type": "transformer", "d_model": 32, "num_heads": 4, "ff_dim": 64, "num_layers": 2, "dropout": 0.0}
TF_DEC = {"type": "transformer", "d_model": 32, "num_heads": 4, "ff_dim": 64, "num_layers": 2, "dropout": 0.0}
PBLSTM = {"type": "pblstm", "hidden_size": 16, "num_layers": 2, "subsample": [4, 2], "dropout": 0.0}
RNN = {"type": "rnn", "embed_dim": 8, "hidden_size": 16}
ATT = {"type": "location_aware", "att_dim": 16, "kernel_size": 5}


def _pad(feats):
    lens = torch.tensor([x.shape[0] for x in feats])
    return torch.nn.utils.rnn.pad_sequence(feats, batch_first=True), lens


@pytest.fixture
def batch(real_feats):
    return _pad([real_feats[k] for k in sorted(real_feats)][:3])


def _enc(seed=0, **kw):
    torch.manual_seed(seed)
    return TransformerEncoder(80, **{k: v for k, v in {**TF_ENC, **kw}.items() if k != "type"}).eval()


def _dec(vocab=12, enc_dim=24, seed=0):
    torch.manual_seed(seed)
    return TransformerDecoder(vocab, enc_dim, d_model=32, num_heads=4, ff_dim=64, num_layers=2, dropout=0.0).eval()


def _keys(seed=0):
    g = torch.Generator().manual_seed(seed)
    hs_lens = torch.tensor([9, 4, 6])
    hs = torch.randn(3, 9, 24, generator=g)
    return hs, hs_lens


# ---- encoder -----------------------------------------------------------------------------------------


@pytest.mark.parametrize("t", [7, 8, 9, 10, 11, 15, 16, 100, 301])
def test_subsampling_lengths_match_output(t):
    sub = Conv2dSubsampling(80, 16, channels=4)
    out, lens = sub(torch.randn(1, t, 80), torch.tensor([t]))
    assert out.shape == (1, ((t - 1) // 2 - 1) // 2, 16)
    assert lens.tolist() == [out.shape[1]]
    assert TransformerEncoder.output_lengths(TransformerEncoder(80, 16, 2, 16, 1), torch.tensor([t])).item() == out.shape[1]


def test_subsampling_rejects_too_short():
    enc = _enc()
    with pytest.raises(ValueError, match="at least 7 frames"):
        enc(torch.zeros(2, 20, 80), torch.tensor([20, 6]))
    with pytest.raises(ValueError, match="at least 7 frames"):
        enc(torch.zeros(1, 5, 80), torch.tensor([5]))
    with pytest.raises(ValueError, match="need >= 7"):
        Conv2dSubsampling(5, 16)


def test_encoder_shapes_and_zero_padding(batch):
    enc = _enc()
    xs, lens = batch
    hs, hs_lens = enc(xs, lens)
    assert enc.subsampling_factor == 4 and enc.output_dim == 32
    assert hs.shape == (3, ((xs.shape[1] - 1) // 2 - 1) // 2, 32)
    assert hs_lens.tolist() == [((int(n) - 1) // 2 - 1) // 2 for n in lens]
    assert len(set(hs_lens.tolist())) > 1  # the batch really is padded
    valid = make_pad_mask(hs_lens, hs.shape[1])
    assert (hs[~valid] == 0).all() and (hs[valid].abs().sum(-1) > 0).all()


def test_encoder_padding_invariance(batch):
    enc = _enc()
    xs, lens = batch
    i = int(lens.argmin())
    xs = xs.clone()
    xs[i, lens[i] :] = 50.0  # garbage in the padding must not leak
    hs, hs_lens = enc(xs, lens)
    alone, alone_len = enc(xs[i : i + 1, : lens[i]], lens[i : i + 1])
    assert alone_len.item() == hs_lens[i].item()
    torch.testing.assert_close(alone[0], hs[i, : hs_lens[i]], atol=1e-5, rtol=1e-4)


def test_encoder_uses_positions_and_context(batch):
    """Self-attention mixes frames: changing late input frames changes early encoder outputs (unlike a conv-only net)."""
    enc = _enc()
    xs, lens = batch
    x = xs[:1, : lens[0]]
    hs, _ = enc(x, lens[:1])
    x2 = x.clone()
    x2[:, -40:] += 1.0
    hs2, _ = enc(x2, lens[:1])
    assert (hs2[0, 0] - hs[0, 0]).abs().max() > 1e-4


def test_sinusoidal_positions_values():
    pe = sinusoidal_positions(5, 8, offset=2)
    assert pe[0, 0].item() == pytest.approx(math.sin(2.0))
    assert pe[0, 1].item() == pytest.approx(math.cos(2.0))
    assert pe[3, 2].item() == pytest.approx(math.sin(5 / 10000 ** (2 / 8)))
    torch.testing.assert_close(sinusoidal_positions(7, 8)[2:], pe)


# ---- decoder ---------------------------------------------------------------------------------------------


def test_decoder_weights_sum_to_one_and_zero_on_padding():
    dec = _dec()
    hs, hs_lens = _keys()
    ys_in = torch.randint(0, 12, (3, 5))
    logits, w = dec(hs, hs_lens, ys_in)
    assert logits.shape == (3, 5, 12) and w.shape == (3, 5, 9)
    mask = make_pad_mask(hs_lens, 9)[:, None, :].expand_as(w)
    torch.testing.assert_close(w.sum(-1), torch.ones(3, 5))
    assert (w[~mask] == 0).all() and (w[mask] > 0).all()
    allw = dec.cross_attention(hs, hs_lens, ys_in)
    assert allw.shape == (2, 3, 4, 5, 9)
    torch.testing.assert_close(allw.sum(-1), torch.ones(2, 3, 4, 5))
    pad = ~make_pad_mask(hs_lens, 9)  # (B, S)
    assert (allw.permute(1, 4, 0, 2, 3)[pad] == 0).all() and (allw.permute(1, 4, 0, 2, 3)[~pad] > 0).all()
    torch.testing.assert_close(allw[-1].mean(1), w)  # forward reports the last layer's head average
    assert (allw[:, :, 0] - allw[:, :, 1]).abs().max() > 1e-4  # heads differ


def test_decoder_is_causal():
    dec = _dec()
    hs, hs_lens = _keys()
    ys_in = torch.randint(4, 12, (3, 6))
    logits, w = dec(hs, hs_lens, ys_in)
    changed = ys_in.clone()
    changed[:, 3] = (changed[:, 3] - 4 + 1) % 8 + 4
    logits2, w2 = dec(hs, hs_lens, changed)
    # ys_in[:, 3] is the input of position 3: positions 0..2 must not see it
    torch.testing.assert_close(logits2[:, :3], logits[:, :3])
    torch.testing.assert_close(w2[:, :3], w[:, :3])
    assert ((logits2[:, 3:] - logits[:, 3:]).abs().amax((0, 2)) > 1e-4).all()  # positions 3.. do see it


def test_decoder_padding_of_encoder_output_does_not_leak():
    dec = _dec()
    hs, hs_lens = _keys()
    ys_in = torch.randint(0, 12, (3, 4))
    logits, w = dec(hs, hs_lens, ys_in)
    i = 1
    alone, w1 = dec(hs[i : i + 1, : hs_lens[i]], hs_lens[i : i + 1], ys_in[i : i + 1])
    torch.testing.assert_close(alone[0], logits[i], atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(w1[0], w[i, :, : hs_lens[i]], atol=1e-6, rtol=1e-5)


def test_cached_step_equals_forward():
    dec = _dec()
    hs, hs_lens = _keys()
    ys_in = torch.randint(0, 12, (3, 7))
    logits, weights = dec(hs, hs_lens, ys_in)
    memory = dec.memory(hs, hs_lens)
    state = dec.init_state(memory)
    perm = torch.tensor([2, 0, 1])
    inv = torch.argsort(perm)
    for t in range(7):
        lo, w, state = dec.step(ys_in[:, t], state, memory)
        assert state.length == t + 1 and state.k.shape == (2, 3, 4, t + 1, 8)
        torch.testing.assert_close(lo, logits[:, t], atol=1e-5, rtol=1e-4)
        torch.testing.assert_close(w, weights[:, t], atol=1e-6, rtol=1e-5)
        # a reorder and its inverse (as beam search does) must leave the cache intact
        state = state.select(perm).select(inv)
    # selecting memory and state together gives the selected rows' results
    memory2, state2 = memory.select(perm), dec.init_state(memory.select(perm))
    lo2, w2, _ = dec.step(ys_in[perm, 0], state2, memory2)
    torch.testing.assert_close(lo2, logits[perm, 0], atol=1e-5, rtol=1e-4)


# ---- whole model -----------------------------------------------------------------------------------------


@pytest.mark.parametrize("enc", ["pblstm", "transformer"])
@pytest.mark.parametrize("dec", ["rnn", "transformer"])
def test_build_model_combinations_train(batch, enc, dec):
    cfg = {"encoder": PBLSTM if enc == "pblstm" else TF_ENC, "attention": ATT, "decoder": RNN if dec == "rnn" else TF_DEC, "label_smoothing": 0.1, "ctc_weight": 0.3}
    torch.manual_seed(0)
    model = build_model(cfg, vocab_size=10, sos_id=2, eos_id=3, pad_id=0)
    assert type(model.encoder).__name__ == ("PyramidalBLSTMEncoder" if enc == "pblstm" else "TransformerEncoder")
    assert type(model.decoder).__name__ == ("RNNAttentionDecoder" if dec == "rnn" else "TransformerDecoder")
    assert hasattr(model.decoder, "attention") == (dec == "rnn")
    xs, lens = batch
    ys, ys_lens = torch.tensor([[4, 5, 6], [7, 8, 0], [9, 0, 0]]), torch.tensor([3, 2, 1])
    out = model(xs, lens, ys, ys_lens)
    assert out["weights"].shape == (3, 4, int(out["hs_lens"].max()))
    assert out["ctc_loss"] > 0 and torch.isfinite(out["loss"])
    torch.testing.assert_close(out["loss"], 0.3 * out["ctc_loss"] + 0.7 * out["att_loss"])
    out["loss"].backward()
    assert all(p.grad is not None for p in model.parameters() if p.requires_grad)


def test_transformer_decoder_ignores_attention_group():
    cfg = {"encoder": TF_ENC, "decoder": TF_DEC}  # no "attention" key at all
    model = build_model(cfg, vocab_size=10, sos_id=2, eos_id=3, pad_id=0)
    assert model.subsampling_factor == 4
    with pytest.raises(ValueError, match="model.attention is missing: the rnn decoder takes an attention scorer"):
        build_model({"encoder": TF_ENC, "decoder": RNN}, vocab_size=10, sos_id=2, eos_id=3, pad_id=0)


@pytest.fixture(scope="module")
def tf_model(mini_an4, real_feats):
    """A tiny Transformer trained for 80 steps on the 6 real utterances (pure torch, a few seconds)."""
    from asr.text.tokenizer import Tokenizer

    tok = Tokenizer.from_file(mini_an4 / "data/token/char.model")
    texts = dict(line.split(" ", 1) for line in (mini_an4 / "data/train_nodev/text").read_text().splitlines())
    ids = sorted(real_feats)
    torch.manual_seed(0)
    cfg = {"encoder": {**TF_ENC, "conv_channels": 8}, "decoder": TF_DEC, "label_smoothing": 0.0}
    model = build_model(cfg, tok.vocab_size, tok.sos_id, tok.eos_id, tok.pad_id)
    xs, lens = _pad([real_feats[k] for k in ids])
    xs = (xs - xs.mean((0, 1))) / xs.std((0, 1))
    toks = [torch.tensor(tok.encode(texts[k])) for k in ids]
    ys, ys_lens = torch.nn.utils.rnn.pad_sequence(toks, batch_first=True), torch.tensor([len(t) for t in toks])
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    for _ in range(80):
        opt.zero_grad()
        model(xs, lens, ys, ys_lens)["loss"].backward()
        opt.step()
    return model.eval(), xs, lens


def test_beam1_equals_greedy_and_batched_equals_single(tf_model):
    model, xs, lens = tf_model
    g = greedy_search(model, xs, lens, DecodingOptions(length_penalty=0.0, ctc_weight=0.0))
    b1 = beam_search(model, xs, lens, DecodingOptions(beam_size=1, length_penalty=0.0, ctc_weight=0.0))
    assert [h.tokens for h in g] == [h.tokens for h in b1]
    assert all(len(h.tokens) > 3 for h in g)  # a trained model emits real hypotheses, not just eos
    for h, h1 in zip(g, b1):
        assert h.score == pytest.approx(h1.score, abs=1e-4)
        torch.testing.assert_close(h.attention, h1.attention, atol=1e-5, rtol=1e-4)
    b4 = beam_search(model, xs, lens, DecodingOptions(beam_size=4, length_penalty=1.0, ctc_weight=0.0))
    assert len({tuple(h.tokens) for h in b4}) > 1
    for i in range(xs.shape[0]):
        single = beam_search(model, xs[i : i + 1, : lens[i]], lens[i : i + 1], DecodingOptions(beam_size=4, length_penalty=1.0, ctc_weight=0.0))[0]
        assert single.tokens == b4[i].tokens
        assert single.norm_score == pytest.approx(b4[i].norm_score, abs=1e-4)


def test_greedy_attention_matches_teacher_forcing(tf_model):
    model, xs, lens = tf_model
    hyps = greedy_search(model, xs, lens)
    hs, hs_lens = model.encode(xs, lens)
    for i, h in enumerate(hyps):
        ys_in = torch.tensor([[model.sos_id] + h.tokens])
        n = h.attention.shape[0]
        _, w = model.decoder(hs[i : i + 1, : hs_lens[i]], hs_lens[i : i + 1], ys_in[:, :n])
        torch.testing.assert_close(w[0], h.attention, atol=1e-5, rtol=1e-4)


# ---- optimiser schedule --------------------------------------------------------------------------------


def _lightning_module(mini_an4, optim_cfg, total_steps=1000):
    from types import SimpleNamespace

    from asr.lightning.module import ASRLightningModule
    from asr.text.tokenizer import Tokenizer

    tok = Tokenizer.from_file(mini_an4 / "data/token/char.model")
    lm = ASRLightningModule({"encoder": TF_ENC, "decoder": TF_DEC}, tok, optim_cfg)
    lm._trainer = SimpleNamespace(estimated_stepping_batches=total_steps)  # all configure_optimizers reads
    return lm


def _lrs(lm, steps):
    conf = lm.configure_optimizers()
    opt, sched = conf["optimizer"], conf["lr_scheduler"]["scheduler"]
    assert conf["lr_scheduler"]["interval"] == "step"
    out = {}
    for n in range(1, max(steps) + 1):  # lr in effect at the n-th optimiser update
        if n in steps:
            out[n] = opt.param_groups[0]["lr"]
        opt.step()
        sched.step()
    return out


def test_noam_schedule_values(mini_an4):
    lm = _lightning_module(mini_an4, {"lr": 2e-3, "warmup_steps": 100, "schedule": "noam"})
    lrs = _lrs(lm, {1, 50, 100, 400, 900})
    assert lrs[1] == pytest.approx(2e-3 / 100)
    assert lrs[50] == pytest.approx(1e-3)
    assert lrs[100] == pytest.approx(2e-3)  # peak at the end of warm-up
    assert lrs[400] == pytest.approx(1e-3)  # sqrt(100 / 400) = 1/2
    assert lrs[900] == pytest.approx(2e-3 / 3)
    with pytest.raises(ValueError, match="warmup_steps >= 1"):
        _lightning_module(mini_an4, {"lr": 1e-3, "warmup_steps": 0, "schedule": "noam"}).configure_optimizers()
    with pytest.raises(ValueError, match="unknown optim.schedule"):
        _lightning_module(mini_an4, {"schedule": "linear"}).configure_optimizers()
    # warm-up in epochs on a one-step run (a smoke run): one step of warm-up, not a refusal
    one = _lightning_module(mini_an4, {"lr": 1e-3, "warmup_epochs": 5, "schedule": "noam"}, total_steps=1)
    assert _lrs(one, {1})[1] == pytest.approx(1e-3)


def test_cosine_schedule_is_default(mini_an4):
    cfg = {"lr": 1e-3, "warmup_steps": 100, "min_lr_ratio": 0.1}
    lrs = _lrs(_lightning_module(mini_an4, cfg, total_steps=1100), {50, 100, 600, 1100})
    assert lrs[50] == pytest.approx(5e-4)
    assert lrs[100] == pytest.approx(1e-3)
    assert lrs[600] == pytest.approx(1e-3 * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * 0.499))))
    assert lrs == _lrs(_lightning_module(mini_an4, {**cfg, "schedule": "cosine"}, total_steps=1100), {50, 100, 600, 1100})


# ---- cross-attention head grid -------------------------------------------------------------------------


def test_head_grid_figure_layout(tmp_path):
    from asr.viz.alignment import head_grid_figure, plot_head_grid

    rng = np.random.default_rng(0)
    w = rng.random((2, 3, 4, 20)).astype(np.float32)
    w /= w.sum(-1, keepdims=True)
    toks = ["▁A", "B", "▁C", "<eos>"]
    fig = head_grid_figure(w, toks, frame_shift_s=0.01, subsampling=4, title="u1\nREF: A B")
    heat = [ax for ax in fig.axes if ax.images and ax.get_title()]
    assert len(heat) == 2 * (3 + 1) and len(fig.axes) == 2 * 4 + 1  # + one shared colorbar
    assert [ax.get_title() for ax in heat[:4]] == ["layer 1 head 1", "layer 1 head 2", "layer 1 head 3", "layer 1 mean"]
    for ax in heat:
        assert ax.get_xlim() == pytest.approx((0.0, 20 * 0.04))
    assert [t.get_text() for t in heat[0].get_yticklabels()] == toks
    np.testing.assert_allclose(heat[7].images[0].get_array(), w[1].mean(0), rtol=1e-6)  # layer 2 mean
    p = plot_head_grid(w, toks, tmp_path / "g" / "u1_heads.png", 0.01, 4)
    assert p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and p.stat().st_size > 5000
    with pytest.raises(ValueError, match="4-D"):
        head_grid_figure(w[0], toks)
    with pytest.raises(ValueError, match="3 token labels for 4 attention rows"):
        head_grid_figure(w, toks[:3])


def _save_ckpt(path, model, model_cfg, tok):
    torch.save({"state_dict": {f"model.{k}": v for k, v in model.state_dict().items()},
                "asr": {"model_cfg": model_cfg, "tokenizer_proto": tok.proto, "feat_dim": 80, "frame_shift_s": 0.01}}, path)


def test_plot_head_grids_from_decode_dir(tmp_path, mini_an4, real_feats, tf_model):
    import json

    from asr.cli.plot import plot_head_grids
    from asr.text.tokenizer import Tokenizer

    model, _, _ = tf_model
    tok = Tokenizer.from_file(mini_an4 / "data/token/char.model")
    cfg = {"encoder": {**TF_ENC, "conv_channels": 8}, "decoder": TF_DEC, "label_smoothing": 0.0}
    _save_ckpt(tmp_path / "tf.ckpt", model, cfg, tok)
    ids = sorted(real_feats)[:2]
    d = tmp_path / "decode"
    d.mkdir()
    hyps = greedy_search(model, *_pad([real_feats[u] for u in ids]))
    rows = [{"utt_id": u, "ref": "A", "hyp": tok.decode(h.tokens), "tokens": tok.pieces(h.tokens)} for u, h in zip(ids, hyps)]
    (d / "results.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (d / "meta.json").write_text(json.dumps({"checkpoint": str(tmp_path / "tf.ckpt"), "frame_shift_s": 0.01, "subsampling": 4}))
    feats = mini_an4 / "dump/train_nodev/feats.pt"
    paths = plot_head_grids(d, ids, feats)
    assert paths == [d / "plots" / f"{u}_heads.png" for u in ids]
    assert all(p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" for p in paths)
    with pytest.raises(ValueError, match="feats="):
        plot_head_grids(d, ids)
    with pytest.raises(ValueError, match="not in"):
        plot_head_grids(d, ["nope"], feats)
    # an RNN-decoder checkpoint has no per-head cross-attention
    rnn_cfg = {"encoder": PBLSTM, "attention": ATT, "decoder": RNN}
    _save_ckpt(tmp_path / "rnn.ckpt", build_model(rnn_cfg, tok.vocab_size, tok.sos_id, tok.eos_id, tok.pad_id), rnn_cfg, tok)
    with pytest.raises(ValueError, match="needs a Transformer decoder"):
        plot_head_grids(d, ids, feats, ckpt=tmp_path / "rnn.ckpt")


# ---- the experiment config through Lightning -------------------------------------------------------------


def test_transformer_ctc_experiment_trains_decodes_and_plots_heads(mini_an4, tmp_path, caplog):
    """conf/experiment/an4/transformer_ctc.yaml (shrunk) for one epoch: noam schedule in a real Trainer,
    checkpoint round trip, beam decoding, and asr-plot's heads=true on the decode directory."""
    from hydra import compose, initialize_config_dir

    from asr.cli.decode import decode
    from asr.cli.plot import plot_head_grids
    from asr.cli.train import train
    from asr.models.checkpoint import load_checkpoint
    from asr.utils.paths import CONF_DIR

    exp = tmp_path / "exp"
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        cfg = compose("train", overrides=[
            "experiment=an4/transformer_ctc", f"data.root={mini_an4 / 'data'}", f"data.dump={mini_an4 / 'dump'}",
            "tokenizer=char", f"exp_dir={exp}", "data.batch_size=3", "data.max_duration=0", "data.speed_perturb=[]", "trainer.max_epochs=1",
            "trainer.check_val_every_n_epoch=1",
            "trainer.enable_progress_bar=false", "optim.warmup_steps=2",
            "model.encoder.d_model=32", "model.encoder.num_layers=2", "model.encoder.ff_dim=64", "model.encoder.conv_channels=8",
            "model.decoder.d_model=32", "model.decoder.num_layers=2", "model.decoder.ff_dim=64",
        ])
    assert cfg.name == "an4_transformer_ctc" and cfg.optim.schedule == "cosine" and cfg.model.ctc_weight == 0.3
    assert cfg.model.init == "xavier_uniform" and cfg.optim.warmup_epochs == 10
    with caplog.at_level("INFO", logger="asr.train"):
        summary = train(cfg)
    assert summary["epochs"] == 1
    # the log names what was built (it used to say "location_aware attention": model.attention, unused here)
    assert "model: transformer encoder, transformer decoder (multi-head cross-attention)" in caplog.text
    model, tok, meta = load_checkpoint(str(exp / "checkpoints/best.ckpt"))
    assert type(model.decoder).__name__ == "TransformerDecoder" and model.subsampling_factor == 4 and model.ctc is not None
    out = tmp_path / "decode"
    info = decode({"ckpt": str(exp / "checkpoints/best.ckpt"), "data_dir": str(mini_an4 / "data/train_nodev"),
                   "dump_dir": str(mini_an4 / "dump/train_nodev"), "audio": [], "out_dir": str(out), "beam_size": 2,
                   "max_len_ratio": 1.5, "min_len": 5, "length_penalty": 1.0, "batch_size": 3})
    assert info["n_utts"] == 6 and info["subsampling"] == 4
    utt = sorted(torch.load(mini_an4 / "dump/train_nodev/feats.pt", weights_only=True))[0]
    (png,) = plot_head_grids(out, [utt], mini_an4 / "dump/train_nodev/feats.pt")
    assert png.stat().st_size > 5000


def test_transformer_ctc_cpu_experiment_is_the_measured_override_set():
    """conf/experiment/an4/transformer_ctc_cpu.yaml composes to exactly the config of the README's CPU runs
    (an4/transformer_ctc plus their override list), apart from its name: the recipe rows stay reproducible
    with the short command, and a setting dropped from (or added to) the file fails here."""
    from hydra import compose, initialize_config_dir
    from omegaconf import OmegaConf

    from asr.utils.paths import CONF_DIR

    readme_overrides = [  # recipes/an4/README.md, the `T` overrides of the bf16 CPU runs, and their schedule
        "model.encoder.d_model=192", "model.encoder.ff_dim=768", "model.encoder.conv_channels=64",
        "model.decoder.d_model=192", "model.decoder.ff_dim=768", "model.decoder.num_layers=3",
        "data.max_duration=0", "data.batch_size=8", "optim.warmup_epochs=null", "model.encoder.num_layers=6",
        "augment=specaug", "model.decoder.dropout=0.3", "optim.lr=1e-3", "trainer.precision=bf16-mixed",
        "keep_checkpoints=10", "optim.warmup_steps=1000", "trainer.max_epochs=150",
    ]
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        short = OmegaConf.to_container(compose("train", overrides=["experiment=an4/transformer_ctc_cpu"]))
        long = OmegaConf.to_container(compose("train", overrides=["experiment=an4/transformer_ctc", *readme_overrides]))
    assert short.pop("name") == "an4_transformer_ctc_cpu" and long.pop("name") == "an4_transformer_ctc"
    assert short.pop("exp_dir") == "exp/${name}" and long.pop("exp_dir") == "exp/${name}"
    assert short == long
    assert short["augment"]["num_freq_masks"] == 2 and short["model"]["decoder"]["dropout"] == 0.3
