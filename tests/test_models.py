"""Encoder, attention scorers and decoder on real AN4 fbank: shapes, masks, padding invariance."""

from __future__ import annotations

import copy

import pytest
import torch

from asr.models.asr_model import build_model
from asr.models.attention import ATTENTION_TYPES, build_attention
from asr.models.decoders.rnn import RNNAttentionDecoder
from asr.models.encoders.pblstm import PyramidalBLSTMEncoder, make_pad_mask

SCORERS = sorted(ATTENTION_TYPES)
ATT_KW = {"dot": {"att_dim": 32}, "additive": {"att_dim": 32}, "location_aware": {"att_dim": 32, "kernel_size": 5}, "location": {"max_frames": 64}, "general": {}, "multihead": {"att_dim": 32, "num_heads": 4},
          "local_m": {"base": "location_aware", "att_dim": 32, "kernel_size": 5, "window": 3, "ratio": 1.5},
          "local_p": {"base": "additive", "att_dim": 32, "window": 3, "p_dim": 16}}


def _pad(feats: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    lens = torch.tensor([x.shape[0] for x in feats])
    return torch.nn.utils.rnn.pad_sequence(feats, batch_first=True), lens


@pytest.fixture
def batch(real_feats):
    feats = [real_feats[k] for k in sorted(real_feats)][:3]
    return _pad(feats)


@pytest.mark.parametrize("subsample", [[2, 2, 2], [4, 2, 1], [2, 2]])
def test_encoder_shapes_and_lengths(batch, subsample):
    torch.manual_seed(0)
    enc = PyramidalBLSTMEncoder(80, 16, len(subsample), subsample, dropout=0.0).eval()
    xs, lens = batch
    hs, hs_lens = enc(xs, lens)
    factor = enc.subsampling_factor
    assert factor == torch.tensor(subsample).prod().item()
    assert hs.shape == (3, xs.shape[1] // factor, 32)
    assert hs_lens.tolist() == [int(n) // factor for n in lens]  # floor at every layer = floor overall
    # padded encoder frames are exactly zero (packed sequences)
    assert (hs[make_pad_mask(hs_lens, hs.shape[1]).logical_not()] == 0).all()


def test_encoder_padding_invariance(batch):
    torch.manual_seed(0)
    enc = PyramidalBLSTMEncoder(80, 16, 3, [2, 2, 2], dropout=0.0).eval()
    xs, lens = batch
    hs, hs_lens = enc(xs, lens)
    i = int(lens.argmin())
    alone, alone_len = enc(xs[i : i + 1, : lens[i]], lens[i : i + 1])
    assert alone_len.item() == hs_lens[i].item()
    torch.testing.assert_close(alone[0], hs[i, : hs_lens[i]], atol=1e-5, rtol=1e-4)


def test_encoder_rejects_too_short_utterance():
    enc = PyramidalBLSTMEncoder(80, 8, 3, [2, 2, 2])
    with pytest.raises(ValueError, match="fewer than the encoder's subsampling factor 8"):
        enc(torch.zeros(2, 20, 80), torch.tensor([20, 7]))


def _keys(seed=0):
    g = torch.Generator().manual_seed(seed)
    lens = torch.tensor([7, 4, 5])
    keys = torch.randn(3, 7, 24, generator=g)
    query = torch.randn(3, 16, generator=g)
    return query, keys, lens


@pytest.mark.parametrize("kind", SCORERS)
def test_scorer_weights_sum_to_one_and_zero_on_padding(kind):
    torch.manual_seed(0)
    att = build_attention(kind, 16, 24, **ATT_KW[kind])
    query, keys, lens = _keys()
    mask = make_pad_mask(lens, 7)
    ctx, w, state = att(query, keys, att.precompute(keys), mask, att.init_state(mask))
    local = kind.startswith("local")  # their state also counts the step: (B, S + 1)
    assert ctx.shape == (3, 24) and w.shape == (3, 7) and state.shape == (3, 7 + local)
    torch.testing.assert_close(w.sum(-1), torch.ones(3))
    assert (w[~mask] == 0).all()
    if local:  # the first step's window is [p_0 - D, p_0 + D] = [0, 3] (local_m; local_p: around its own p_0)
        assert (w[:, 4:] == 0).all() if kind == "local_m" else ((w > 0).sum(-1) <= 2 * 3 + 1).all()
    else:
        assert (w[mask] > 0).all()


@pytest.mark.parametrize("kind", SCORERS)
def test_scorer_padding_invariance(kind):
    torch.manual_seed(0)
    att = build_attention(kind, 16, 24, **ATT_KW[kind])
    query, keys, lens = _keys()
    mask = make_pad_mask(lens, 7)
    # garbage in the padding must not leak into valid results
    keys = keys.masked_fill(~mask[..., None], 123.0)
    ctx, w, _ = att(query, keys, att.precompute(keys), mask, att.init_state(mask))
    i = 1
    k1 = keys[i : i + 1, : lens[i]]
    m1 = torch.ones(1, int(lens[i]), dtype=torch.bool)
    ctx1, w1, _ = att(query[i : i + 1], k1, att.precompute(k1), m1, att.init_state(m1))
    torch.testing.assert_close(w1[0], w[i, : lens[i]], atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(ctx1[0], ctx[i], atol=1e-5, rtol=1e-5)


def test_location_aware_depends_on_previous_weights():
    torch.manual_seed(0)
    att = build_attention("location_aware", 16, 24, att_dim=32, kernel_size=5)
    query, keys, lens = _keys()
    mask = make_pad_mask(lens, 7)
    prev_a = att.init_state(mask)
    prev_b = torch.zeros_like(prev_a)
    prev_b[:, 0] = 1.0
    _, wa, _ = att(query, keys, att.precompute(keys), mask, prev_a)
    _, wb, _ = att(query, keys, att.precompute(keys), mask, prev_b)
    assert (wa - wb).abs().max() > 1e-3
    # and the scorers without location terms do not
    gen = build_attention("additive", 16, 24, att_dim=32)
    _, ga, _ = gen(query, keys, gen.precompute(keys), mask, prev_a)
    _, gb, _ = gen(query, keys, gen.precompute(keys), mask, prev_b)
    torch.testing.assert_close(ga, gb)


def test_location_scorer_refuses_too_long_input():
    att = build_attention("location", 16, 24, max_frames=4)
    query, keys, lens = _keys()
    mask = make_pad_mask(lens, 7)
    with pytest.raises(ValueError, match="at most 4 encoder frames"):
        att(query, keys, None, mask, att.init_state(mask))


def test_unknown_scorer_lists_known():
    with pytest.raises(ValueError, match="location_aware"):
        build_attention("bogus", 4, 4)


@pytest.mark.parametrize("kind", SCORERS)
def test_decoder_teacher_forcing_equals_step_by_step(kind):
    torch.manual_seed(0)
    dec = RNNAttentionDecoder(12, 24, build_attention(kind, 20, 24, **ATT_KW[kind]), embed_dim=8, hidden_size=20, num_layers=2, dropout=0.0).eval()
    _, keys, lens = _keys()
    ys_in = torch.randint(0, 12, (3, 5))
    logits, weights = dec(keys, lens, ys_in)
    assert logits.shape == (3, 5, 12) and weights.shape == (3, 5, 7)
    memory = dec.memory(keys, lens)
    state = dec.init_state(memory)
    ident = torch.arange(3)
    for t in range(5):
        lo, w, state = dec.step(ys_in[:, t], state, memory)
        state = state.select(ident)  # a no-op reorder must not change anything
        torch.testing.assert_close(lo, logits[:, t])
        torch.testing.assert_close(w, weights[:, t])


@pytest.mark.parametrize("kind", SCORERS)
def test_decoder_hoisted_teacher_forcing_matches_stepwise_with_gradients(kind):
    """forward (embedding and output layer batched over all steps) == forward_stepwise (U decoding steps): outputs
    and every parameter's gradient, on a padded batch, with 2 layers and dropout: from the same seed both draw the
    same masks in the same order (embedding, between layers, a_t per step), so a seed reproduces pre-hoist runs."""
    torch.manual_seed(0)
    dec = RNNAttentionDecoder(12, 24, build_attention(kind, 20, 24, **ATT_KW[kind]), embed_dim=8, hidden_size=20, num_layers=2, dropout=0.3).train()
    _, keys, lens = _keys()
    ys_in = torch.randint(0, 12, (3, 6))
    grads = []
    for fwd in (dec.forward, dec.forward_stepwise):
        dec.zero_grad()
        k = keys.clone().requires_grad_(True)
        torch.manual_seed(7)
        logits, weights = fwd(k, lens, ys_in)
        (logits.log_softmax(-1)[..., 3].sum() + (weights * torch.arange(7.0)).sum()).backward()
        grads.append((logits.detach(), weights.detach(), k.grad, {n: p.grad.clone() for n, p in dec.named_parameters() if p.grad is not None}))
    (l1, w1, k1, g1), (l2, w2, k2, g2) = grads
    torch.testing.assert_close(l1, l2)
    torch.testing.assert_close(w1, w2)
    torch.testing.assert_close(k1, k2)
    assert g1.keys() == g2.keys() and "embed.weight" in g1 and "output.weight" in g1
    for n in g1:
        torch.testing.assert_close(g1[n], g2[n], msg=n)


def test_model_loss_and_label_smoothing(batch):
    torch.manual_seed(0)
    cfg = {"encoder": {"type": "pblstm", "hidden_size": 16, "num_layers": 2, "subsample": [4, 2], "dropout": 0.0}, "attention": {"type": "location_aware", "att_dim": 16, "kernel_size": 5}, "decoder": {"type": "rnn", "embed_dim": 8, "hidden_size": 16}, "label_smoothing": 0.1}
    model = build_model(cfg, vocab_size=10, sos_id=2, eos_id=3, pad_id=0)
    xs, lens = batch
    ys = torch.tensor([[4, 5, 6], [7, 8, 0], [9, 0, 0]])
    ys_lens = torch.tensor([3, 2, 1])
    ys_in, ys_out = model.add_sos_eos(ys, ys_lens)
    assert ys_in.tolist() == [[2, 4, 5, 6], [2, 7, 8, 0], [2, 9, 0, 0]]
    assert ys_out.tolist() == [[4, 5, 6, 3], [7, 8, 3, 0], [9, 3, 0, 0]]
    out = model(xs, lens, ys, ys_lens)
    assert int(out["n_tokens"]) == 3 + 1 + 2 + 1 + 1 + 1
    assert out["loss"] > out["nll"] * 0.5 and torch.isfinite(out["loss"])
    out["loss"].backward()
    assert all(p.grad is not None for p in model.parameters() if p.requires_grad)


def test_ctc_branch_mixes_losses(batch):
    cfg = {"encoder": {"type": "pblstm", "hidden_size": 16, "num_layers": 2, "subsample": [4, 2], "dropout": 0.0}, "attention": {"type": "dot", "att_dim": 16}, "decoder": {"type": "rnn", "embed_dim": 8, "hidden_size": 16}, "label_smoothing": 0.0}
    xs, lens = batch
    ys, ys_lens = torch.tensor([[4, 5, 6], [7, 8, 0], [9, 0, 0]]), torch.tensor([3, 2, 1])
    torch.manual_seed(0)
    plain = build_model(cfg, vocab_size=10, sos_id=2, eos_id=3, pad_id=0)
    assert plain.ctc is None and float(plain(xs, lens, ys, ys_lens)["ctc_loss"]) == 0.0
    torch.manual_seed(0)
    joint = build_model({**cfg, "ctc_weight": 0.3}, vocab_size=10, sos_id=2, eos_id=3, pad_id=0)
    out = joint(xs, lens, ys, ys_lens)
    assert out["ctc_loss"] > 0
    torch.testing.assert_close(out["loss"], 0.3 * out["ctc_loss"] + 0.7 * out["att_loss"])
    # the CTC term is the torch CTC loss with the pad id as blank, per target token
    hs, hs_lens = joint.encode(xs, lens)
    ref = torch.nn.functional.ctc_loss(joint.ctc(hs).log_softmax(-1).transpose(0, 1), ys, hs_lens, ys_lens, blank=0, reduction="sum") / 6
    torch.testing.assert_close(out["ctc_loss"], ref)
    with pytest.raises(ValueError, match="ctc_weight"):
        build_model({**cfg, "ctc_weight": 1.0}, vocab_size=10, sos_id=2, eos_id=3, pad_id=0)


def test_guided_attention_loss_values():
    """The penalty is 0 for an attention on the diagonal cell, 1 - exp(-d^2 / 2g^2) elsewhere, per utterance's
    own lengths; padded output steps do not count."""
    from asr.models.asr_model import guided_attention_loss

    # utterance 0: 2 steps over 4 frames; utterance 1: 1 valid step (of 2) over 2 frames (of 4)
    w = torch.zeros(2, 2, 4)
    w[0, 0, 1] = 1.0  # step centre 0.25, frame centre 0.375
    w[0, 1, 3] = 1.0  # 0.75 vs 0.875
    w[1, 0, 0] = 0.5  # 0.5 vs 0.25
    w[1, 0, 1] = 0.5  # 0.5 vs 0.75
    w[1, 1, 0] = 1.0  # padding step: ignored
    g = 0.3
    pen = lambda d: 1 - torch.exp(torch.tensor(-(d**2) / (2 * g * g)))  # noqa: E731
    expected = (pen(0.125) + pen(0.125) + 0.5 * pen(0.25) + 0.5 * pen(0.25)) / 3
    got = guided_attention_loss(w, torch.tensor([2, 1]), torch.tensor([4, 2]), g)
    torch.testing.assert_close(got, expected)
    diag = torch.eye(4)[None]  # 4 steps over 4 frames, exactly on the diagonal
    assert float(guided_attention_loss(diag, torch.tensor([4]), torch.tensor([4]), g)) == 0.0
    anti = torch.eye(4).flip(-1)[None]
    assert float(guided_attention_loss(anti, torch.tensor([4]), torch.tensor([4]), g)) > 0.4


def test_guided_attention_adds_to_training_loss_only(batch):
    """model.guided_attention: the weighted term joins the loss in training (and its gradient reaches the
    attention), not in eval, not when switched off by its epoch schedule; bad settings are refused."""
    cfg = {"encoder": {"type": "pblstm", "hidden_size": 16, "num_layers": 2, "subsample": [4, 2], "dropout": 0.0}, "attention": {"type": "location_aware", "att_dim": 16, "kernel_size": 5}, "decoder": {"type": "rnn", "embed_dim": 8, "hidden_size": 16, "dropout": 0.0}, "label_smoothing": 0.0, "ctc_weight": 0.3}
    xs, lens = batch
    ys, ys_lens = torch.tensor([[4, 5, 6], [7, 8, 0], [9, 0, 0]]), torch.tensor([3, 2, 1])
    torch.manual_seed(0)
    plain = build_model(cfg, vocab_size=10, sos_id=2, eos_id=3, pad_id=0).train()
    torch.manual_seed(0)
    guided = build_model({**cfg, "guided_attention": {"weight": 2.0, "sigma": 0.2, "epochs": 3}}, vocab_size=10, sos_id=2, eos_id=3, pad_id=0).train()
    assert guided.guided_attention_epochs == 3
    p, g = plain(xs, lens, ys, ys_lens), guided(xs, lens, ys, ys_lens)
    assert float(p["ga_loss"]) == 0.0 and float(g["ga_loss"]) > 0.0
    torch.testing.assert_close(g["loss"], p["loss"] + 2.0 * g["ga_loss"])
    guided.zero_grad()
    g["ga_loss"].backward()
    assert guided.decoder.attention.w.weight.grad.abs().sum() > 0  # the prior trains the scorer
    guided.guided_attention_active = False
    torch.testing.assert_close(guided(xs, lens, ys, ys_lens)["loss"], p["loss"])
    guided.guided_attention_active = True
    guided.eval()
    e = guided(xs, lens, ys, ys_lens)
    assert float(e["ga_loss"]) == 0.0
    for bad in ({"weight": -1.0}, {"weight": 1.0, "sigma": 0.0}, {"weight": 1.0, "epochs": -2}, {"weigth": 1.0}):
        with pytest.raises(ValueError, match="guided"):
            build_model({**cfg, "guided_attention": bad}, vocab_size=10, sos_id=2, eos_id=3, pad_id=0)


def test_compiled_decoder_step_matches_eager_with_gradients(real_feats):
    """compile_decoder_step: the torch.compile'd step gives the eager values and gradients (teacher forcing on
    a padded batch of real fbank encoded by a small pBLSTM) and still serves the decoding ``step``."""
    torch.manual_seed(0)
    feats = [real_feats[k] for k in sorted(real_feats)[:3]]
    xs, lens = _pad(feats)
    enc = PyramidalBLSTMEncoder(80, hidden_size=16, num_layers=2, subsample=[4, 2], dropout=0.0).eval()
    with torch.no_grad():
        hs, hs_lens = enc(xs, lens)
    def make_dec() -> RNNAttentionDecoder:
        return RNNAttentionDecoder(12, enc.output_dim, build_attention("location_aware", 20, enc.output_dim, att_dim=16, kernel_size=5), embed_dim=8, hidden_size=20, dropout=0.0).train()

    dec = make_dec()
    ys_in = torch.randint(0, 12, (3, 7))
    results = []
    for compiled in (False, True):
        if compiled:
            dec.compile_step()
        dec.zero_grad()
        logits, weights = dec(hs, hs_lens, ys_in)
        logits.log_softmax(-1)[..., 5].sum().backward()
        results.append((logits.detach(), weights.detach(), {n: p.grad.clone() for n, p in dec.named_parameters()}))
    (l1, w1, g1), (l2, w2, g2) = results
    torch.testing.assert_close(l2, l1, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(w2, w1, rtol=1e-4, atol=1e-5)
    for n in g1:
        torch.testing.assert_close(g2[n], g1[n], rtol=1e-3, atol=1e-5, msg=n)
    memory = dec.memory(hs, hs_lens)
    lo, w, _ = dec.step(ys_in[:, 0], dec.init_state(memory), memory)
    torch.testing.assert_close(lo, l1[:, 0], rtol=1e-4, atol=1e-5)
    # A deep copy of the compiled decoder steps with its own weights, not the original's.
    twin = copy.deepcopy(dec)
    with torch.no_grad():
        for p in twin.parameters():
            p.add_(0.1 * torch.randn_like(p))
    eager_twin = make_dec()
    eager_twin.load_state_dict(twin.state_dict())
    with torch.no_grad():
        lt, wt = twin(hs, hs_lens, ys_in)
        le, we = eager_twin(hs, hs_lens, ys_in)
    assert not torch.allclose(lt, l1, atol=1e-3)
    torch.testing.assert_close(lt, le, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(wt, we, rtol=1e-4, atol=1e-5)


def test_reverse_padded_reverses_within_length_and_is_its_own_inverse():
    from asr.models.encoders.pblstm import reverse_padded

    xs = torch.arange(2 * 5, dtype=torch.float32).view(2, 5, 1)
    lens = torch.tensor([5, 3])
    out = reverse_padded(xs, lens)
    assert out[0, :, 0].tolist() == [4.0, 3.0, 2.0, 1.0, 0.0]
    assert out[1, :, 0].tolist() == [7.0, 6.0, 5.0, 8.0, 9.0]  # padded frames 3, 4 stay in place
    assert torch.equal(reverse_padded(out, lens), xs)


SMALL_DEC = {"attention": {"type": "location_aware", "att_dim": 16}, "decoder": {"type": "rnn", "embed_dim": 8, "hidden_size": 16}}
BF16 = pytest.mark.skipif(not torch.ops.mkldnn._is_mkldnn_bf16_supported(), reason="CPU without native bf16")


@BF16
def test_bf16_dense_encoder_matches_packed_float32_on_real_features(batch):
    """The bf16 path (two dense LSTMs per layer, the backward one over each utterance reversed within its length)
    gives every valid frame the packed float32 output to bf16 rounding, zero at padding, and the same output for an
    utterance alone as in the padded batch."""
    from asr.models.asr_model import build_model

    torch.manual_seed(0)
    enc = PyramidalBLSTMEncoder(80, 32, 3, [2, 2, 1], dropout=0.0).eval()
    xs, lens = batch
    xs = (xs - xs.mean()) / xs.std()
    ref, ref_lens = enc(xs, lens)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        hs, hs_lens = enc(xs, lens)
        i = int(lens.argmin())
        alone, _ = enc(xs[i : i + 1, : lens[i]], lens[i : i + 1])
    assert hs.dtype == torch.bfloat16 and torch.equal(hs_lens, ref_lens)
    valid = make_pad_mask(hs_lens, hs.shape[1])
    assert (hs[~valid] == 0).all()
    err = (hs.float() - ref).abs()[valid]
    assert err.max() < 0.1 and err.mean() < 0.01, (err.max(), err.mean())
    torch.testing.assert_close(alone[0].float(), hs[i, : hs_lens[i]].float(), atol=2e-2, rtol=0)
    # a model decodes with it only when asked, gives float32 back, and never trains with it
    model = build_model({"encoder": {"type": "pblstm", "hidden_size": 32, "num_layers": 3, "subsample": [2, 2, 1], "dropout": 0.0}, **SMALL_DEC}, vocab_size=12, sos_id=1, eos_id=2, pad_id=0)
    model.eval()
    out32, _ = model.encode(xs, lens)
    model.set_encoder_dtype("bfloat16")
    out16, _ = model.encode(xs, lens)
    assert out16.dtype == torch.float32 and not torch.equal(out16, out32)
    assert (out16 - out32).abs().max() < 0.1
    assert torch.equal(model.train().encode(xs, lens)[0], out32)  # training: float32, packed, whatever was asked


def test_set_encoder_dtype_refuses_other_dtypes():
    from asr.models.asr_model import build_model

    model = build_model({"encoder": {"type": "pblstm", "hidden_size": 8, "num_layers": 1, "subsample": [2]}, **SMALL_DEC}, vocab_size=12, sos_id=1, eos_id=2, pad_id=0)
    for ok in ("float32", torch.float32, None):
        model.set_encoder_dtype(ok)
        assert model.encoder_dtype is None
    with pytest.raises(ValueError, match="float32 or bfloat16"):
        model.set_encoder_dtype(torch.float16)
