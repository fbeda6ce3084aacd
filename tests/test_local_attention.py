"""Local attention (Luong local-m / local-p), windowed decoding and hard attention (issue 15): window masks at
the utterance edges and on padding, equivalence with the global scorer when the window covers everything,
batched = unbatched, windowed decoding of a trained AN4 model, hard attention's context."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from asr.decoding.search import DecodingOptions, beam_search, greedy_search, resolve_options
from asr.models.attention import LocalAttention, build_attention, harden
from asr.models.decoders.rnn import AttentionConstraint, RNNAttentionDecoder
from asr.models.encoders.pblstm import make_pad_mask

ROOT = Path(__file__).resolve().parents[1]
SHIPPED = ROOT / "models/an4_pblstm_x4"
LA = {"att_dim": 32, "kernel_size": 5}


def _inputs(seed=0, lens=(30, 12, 21), dq=16, dk=24):
    g = torch.Generator().manual_seed(seed)
    lens = torch.tensor(lens)
    keys = torch.randn(len(lens), int(lens.max()), dk, generator=g)
    query = torch.randn(len(lens), dq, generator=g)
    return query, keys, lens, make_pad_mask(lens, keys.shape[1])


def test_local_m_window_follows_t_and_is_clipped_at_the_utterance_end():
    """local-m at step t attends only to |s - min(t * ratio, S_b - 1)| <= D and never to padding."""
    torch.manual_seed(0)
    att = build_attention("local_m", 16, 24, base="additive", att_dim=32, window=3, ratio=2.0).eval()
    query, keys, lens, mask = _inputs()
    state = att.init_state(mask)
    memory = att.precompute(keys)
    frames = torch.arange(keys.shape[1])
    for t in range(20):
        _, w, state = att(query, keys, memory, mask, state)
        for b in range(3):
            p = min(2.0 * t, int(lens[b]) - 1)
            inside = ((frames - p).abs() <= 3) & (frames < lens[b])
            assert (w[b][~inside] == 0).all(), (t, b)
            assert (w[b][inside] > 0).all(), (t, b)
            torch.testing.assert_close(w[b].sum(), torch.tensor(1.0))
        assert state[:, -1].tolist() == [t + 1.0] * 3  # the step counter


def test_local_p_window_and_gaussian():
    """local-p: weights only within D of the predicted p_t in [0, S_b], never on padding; with equal base scores
    (a zero scorer) the weights are the renormalised Gaussian exp(-(s - p)^2 / (2 (D/2)^2))."""
    torch.manual_seed(0)
    att = build_attention("local_p", 16, 24, base="general", window=4, p_dim=8).eval()
    query, keys, lens, mask = _inputs()
    with torch.no_grad():
        att.base.W_a.weight.zero_()  # every base score 0
    _, w, _ = att(query, keys, None, mask, att.init_state(mask))
    p = att.position(query, lens, torch.zeros(3))
    assert ((p >= 0) & (p <= lens)).all()
    s = torch.arange(keys.shape[1]).float()
    for b in range(3):
        inside = ((s - p[b]).abs() <= 4) & (s < lens[b])
        g = torch.exp(-((s - p[b]) ** 2) / (2 * 2.0**2)) * inside
        torch.testing.assert_close(w[b], g / g.sum())
    # an extreme prediction (p = S_b) still leaves valid frames in the window
    with torch.no_grad():
        att.v_p.weight.fill_(0.0)
        att.v_p.weight[0, 0] = 1e4
        att.W_p.weight.fill_(1.0)
    _, w, _ = att(query.abs() + 1, keys, None, mask, att.init_state(mask))
    torch.testing.assert_close(w.sum(-1), torch.ones(3))
    assert (w[~mask] == 0).all()


@pytest.mark.parametrize("base,kw", [("location_aware", LA), ("additive", {"att_dim": 32}), ("dot", {"att_dim": 32}), ("general", {})])
def test_local_m_with_a_window_over_everything_equals_its_base(base, kw):
    """D >= T: local-m is the global base scorer (same weights and context at every step)."""
    torch.manual_seed(0)
    local = build_attention("local_m", 16, 24, base=base, window=64, ratio=3.0, **kw).eval()
    glob = build_attention(base, 16, 24, **kw).eval()
    glob.load_state_dict(local.base.state_dict())
    query, keys, lens, mask = _inputs()
    s_l, s_g = local.init_state(mask), glob.init_state(mask)
    for t in range(6):
        q = query * (t + 1) / 3
        c_l, w_l, s_l = local(q, keys, local.precompute(keys), mask, s_l)
        c_g, w_g, s_g = glob(q, keys, glob.precompute(keys), mask, s_g)
        torch.testing.assert_close(w_l, w_g)
        torch.testing.assert_close(c_l, c_g)


@pytest.mark.parametrize("kind", ["local_m", "local_p"])
def test_local_decoder_batched_equals_unbatched(kind):
    """Teacher-forced decoding of a padded batch = each utterance alone (the window uses each one's own length)."""
    torch.manual_seed(0)
    kw = {"window": 3, "ratio": 1.5} if kind == "local_m" else {"window": 3, "p_dim": 8}
    dec = RNNAttentionDecoder(12, 24, build_attention(kind, 20, 24, base="location_aware", **LA, **kw), embed_dim=8, hidden_size=20, dropout=0.0).eval()
    _, keys, lens, mask = _inputs(lens=(30, 12, 21))
    keys = keys.masked_fill(~mask[..., None], 7.0)  # padding garbage must not leak
    ys_in = torch.randint(0, 12, (3, 9))
    logits, weights = dec(keys, lens, ys_in)
    for b in range(3):
        n = int(lens[b])
        lo1, w1 = dec(keys[b : b + 1, :n], lens[b : b + 1], ys_in[b : b + 1])
        torch.testing.assert_close(lo1[0], logits[b], atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(w1[0], weights[b, :, :n], atol=1e-6, rtol=1e-5)


def test_local_attention_rejects_bad_settings():
    with pytest.raises(ValueError, match="base scorer"):
        build_attention("local_m", 16, 24, base="multihead")
    with pytest.raises(ValueError, match=">= 1 frame"):
        build_attention("local_p", 16, 24, base="dot", window=0)
    with pytest.raises(ValueError, match="ratio"):
        build_attention("local_m", 16, 24, base="dot", ratio=0)
    with pytest.raises(ValueError, match="hard="):
        build_attention("dot", 16, 24, hard="reinforce")
    assert isinstance(build_attention("local_m", 16, 24, base="dot"), LocalAttention)


# ---- hard attention -------------------------------------------------------------------------------------------
@pytest.mark.parametrize("kind,kw", [("location_aware", LA), ("dot", {"att_dim": 32}), ("local_p", {"base": "additive", "att_dim": 32, "window": 5})])
def test_hard_attention_context_is_the_encoder_frame_at_the_argmax(kind, kw):
    torch.manual_seed(0)
    att = build_attention(kind, 16, 24, **kw).eval()
    query, keys, lens, mask = _inputs()
    state = att.init_state(mask)
    _, soft, _ = att(query, keys, att.precompute(keys), mask, state)
    ctx, w, new_state = att(query, keys, att.precompute(keys), mask, state, hard=True)
    idx = soft.argmax(-1)
    torch.testing.assert_close(ctx, keys[torch.arange(3), idx], rtol=0, atol=0)
    assert (w == torch.nn.functional.one_hot(idx, keys.shape[1]).float()).all()
    torch.testing.assert_close(new_state[:, : keys.shape[1]], soft)  # the state stays soft


def test_multihead_hard_attention_takes_each_heads_argmax():
    torch.manual_seed(0)
    att = build_attention("multihead", 16, 24, att_dim=32, num_heads=4).eval()
    query, keys, lens, mask = _inputs()
    mem = att.precompute(keys)
    ctx, w, _ = att(query, keys, mem, mask, att.init_state(mask), hard=True)
    b, s, _ = keys.shape
    k, v = mem.view(b, s, 2, 4, 8).permute(2, 0, 3, 1, 4)
    scores = (att.mha.w_q(query).view(b, 4, 1, 8) @ k.transpose(-1, -2)).squeeze(2).masked_fill(~mask[:, None], float("-inf"))
    idx = scores.argmax(-1)  # (B, h)
    expected = att.mha.w_o(v[torch.arange(b)[:, None], torch.arange(4)[None, :], idx].reshape(b, 32))
    torch.testing.assert_close(ctx, expected)
    assert (w[~mask] == 0).all() and torch.allclose(w.sum(-1), torch.ones(3))


def test_straight_through_hard_training():
    """hard: st — training samples one frame per step (one-hot forward, never padding) and the soft weights'
    gradient reaches the scorer; eval takes the argmax."""
    torch.manual_seed(0)
    att = build_attention("additive", 16, 24, att_dim=32, hard="st").train()
    query, keys, lens, mask = _inputs()
    ctx, w, _ = att(query, keys, att.precompute(keys), mask, att.init_state(mask))
    assert torch.equal(w.detach(), w.detach().round()) and (w.detach().sum(-1) == 1).all() and (w.detach()[~mask] == 0).all()
    (ctx * torch.randn_like(ctx)).sum().backward()
    assert att.W.weight.grad is not None and att.W.weight.grad.abs().sum() > 0
    att.eval()
    ctx_e, _, soft = att(query, keys, att.precompute(keys), mask, att.init_state(mask))
    torch.testing.assert_close(ctx_e, keys[torch.arange(3), soft.argmax(-1)], rtol=0, atol=0)
    samples = torch.stack([harden(torch.tensor([[0.0, 0.25, 0.75]]), sample=True) for _ in range(200)])
    assert samples[..., 0].sum() == 0 and 100 < samples[..., 2].sum() < 200


# ---- windowed decoding ----------------------------------------------------------------------------------------
def _decoder(kind="location_aware", **kw):
    torch.manual_seed(0)
    return RNNAttentionDecoder(12, 24, build_attention(kind, 20, 24, **kw), embed_dim=8, hidden_size=20, dropout=0.0).eval()


@pytest.mark.parametrize("kind,kw", [("location_aware", LA), ("location", {"max_frames": 64}), ("multihead", {"att_dim": 32, "num_heads": 4}), ("general", {})])
def test_window_wider_than_the_utterance_changes_nothing(kind, kw):
    dec = _decoder(kind, **kw)
    _, keys, lens, _ = _inputs()
    ys = torch.randint(0, 12, (3, 7))
    memory = dec.memory(keys, lens)
    s_free, s_win = dec.init_state(memory), dec.init_state(memory)
    wide = AttentionConstraint(window=(40, 40))
    for t in range(7):
        lo_f, w_f, s_free = dec.step(ys[:, t], s_free, memory)
        lo_w, w_w, s_win = dec.step(ys[:, t], s_win, memory, wide)
        torch.testing.assert_close(lo_w, lo_f, rtol=0, atol=0)
        torch.testing.assert_close(w_w, w_f, rtol=0, atol=0)


@pytest.mark.parametrize("kind,kw", [("location_aware", LA), ("location", {"max_frames": 64}), ("additive", {"att_dim": 32})])
def test_window_around_the_previous_peak(kind, kw):
    """Each step's weights lie in [m - a, m + b] (shifted inside the utterance at its edges; m the previous peak, 0
    at the first step), sum to 1, and eos is blocked until the window holds the last frame."""
    dec = _decoder(kind, **kw)
    _, keys, lens, _ = _inputs()
    memory = dec.memory(keys, lens)
    state = dec.init_state(memory)
    c = AttentionConstraint(window=(2, 4), eos_id=3)
    peak = torch.zeros(3, dtype=torch.long)
    for t in range(12):
        y = torch.randint(4, 12, (3,))
        logits, w, state = dec.step(y, state, memory, c)
        lo = (peak - 2).clamp(min=0).clamp(max=keys.shape[1] - 7)
        for b in range(3):
            frames = torch.arange(keys.shape[1])
            outside = (frames < lo[b]) | (frames > lo[b] + 6)
            assert (w[b][outside] == 0).all()
            assert (w[b][frames >= lens[b]] == 0).all()
            reaches_end = bool(lo[b] + 7 >= lens[b])
            assert bool(torch.isinf(logits[b, 3])) == (not reaches_end)
        torch.testing.assert_close(w.sum(-1), torch.ones(3))
        peak = w.argmax(-1)


def test_windowed_and_hard_decoding_refused_where_not_implemented():
    dec = _decoder("local_m", base="dot", att_dim=32, window=2)
    _, keys, lens, _ = _inputs()
    memory = dec.memory(keys, lens)
    with pytest.raises(ValueError, match="already local"):
        dec.step(torch.zeros(3, dtype=torch.long), dec.init_state(memory), memory, AttentionConstraint(window=(1, 1)))
    with pytest.raises(ValueError, match="both att_window_back and att_window_ahead"):
        DecodingOptions(att_window_back=3)
    with pytest.raises(ValueError, match="true or false"):
        resolve_options(None, {"hard_attention": "maybe"})
    assert resolve_options(None, {"hard_attention": "true", "att_window_back": "2", "att_window_ahead": "5"}).constraint(3) == AttentionConstraint((2, 5), True, 3)
    assert DecodingOptions().constraint(3) is None


@pytest.fixture(scope="module")
def shipped(mini_an4):
    if not (SHIPPED / "config.yaml").is_file():
        pytest.skip("no shipped model in models/")
    from asr.features.fbank import FbankOptions  # noqa: F401  (the import path the loader needs)
    from asr.inference import Speech2Text

    s2t = Speech2Text.from_pretrained(SHIPPED)
    feats = torch.load(mini_an4 / "dump/train_nodev/feats.pt", weights_only=True)
    xs = [feats[k] for k in sorted(feats)][:4]
    xs_pad = torch.nn.utils.rnn.pad_sequence(xs, batch_first=True)
    return s2t.model, xs_pad, torch.tensor([x.shape[0] for x in xs])


def test_windowed_decoding_of_the_trained_model_equals_global_when_wide(shipped):
    """The AN4 model (real audio): a window wider than every utterance gives the unconstrained hypotheses and
    scores, in greedy and in joint CTC/attention beam search; a 10/20-frame window keeps every step's weights
    inside it."""
    model, xs, lens = shipped
    for base in (DecodingOptions(beam_size=1, ctc_weight=0.0), DecodingOptions(beam_size=4)):
        wide = DecodingOptions(**{**base.__dict__, "att_window_back": 2000, "att_window_ahead": 2000})
        search = greedy_search if base.beam_size == 1 else beam_search
        free, win = search(model, xs, lens, base), search(model, xs, lens, wide)
        assert [h.tokens for h in win] == [h.tokens for h in free] and all(len(h.tokens) > 3 for h in free)
        assert [h.score for h in win] == pytest.approx([h.score for h in free], abs=1e-5)
    narrow = greedy_search(model, xs, lens, DecodingOptions(beam_size=1, ctc_weight=0.0, att_window_back=10, att_window_ahead=20))
    from asr.viz.alignment import alignment_figure, window_bounds

    for h in narrow:
        att = h.attention
        bounds = window_bounds(att.numpy(), 10, 20)  # what the plots outline
        assert (bounds[:, 1] - bounds[:, 0] == 30).all()
        for u in range(att.shape[0]):
            nz = att[u].nonzero().flatten()
            assert bounds[u, 0] <= int(nz.min()) and int(nz.max()) <= bounds[u, 1], u
    fig = alignment_figure(att.numpy(), [str(t) for t in h.tokens] + ["<eos>"], 0.01, 4, "window", window=(10, 20))
    assert len(fig.axes[0].lines) == 2  # the two window edges


def test_hard_decoding_of_the_trained_model(shipped):
    """Argmax context on the trained soft-attention model: one-hot attention rows, a transcript that still
    overlaps the soft one (the context of a peaked location_aware alignment is close to its argmax frame)."""
    model, xs, lens = shipped
    soft = greedy_search(model, xs, lens, DecodingOptions(beam_size=1, ctc_weight=0.0))
    hard = greedy_search(model, xs, lens, DecodingOptions(beam_size=1, ctc_weight=0.0, hard_attention=True))
    for h in hard:
        assert ((h.attention == 0) | (h.attention == 1)).all() and (h.attention.sum(-1) == 1).all()
    same = sum(a.tokens == b.tokens for a, b in zip(soft, hard))
    assert same >= 2, [(a.tokens, b.tokens) for a, b in zip(soft, hard)]


def _tiny_model(att: dict, seed: int = 0):
    from asr.models.asr_model import build_model

    torch.manual_seed(seed)
    cfg = {"encoder": {"type": "pblstm", "hidden_size": 32, "num_layers": 2, "subsample": [2, 2], "dropout": 0.0}, "attention": att,
           "decoder": {"type": "rnn", "embed_dim": 16, "hidden_size": 32}, "label_smoothing": 0.0}
    model = build_model(cfg, vocab_size=12, sos_id=2, eos_id=3, pad_id=0).eval()
    with torch.no_grad():  # sharpen the output layer so that hypotheses differ between utterances; eos less likely
        model.decoder.output.weight.mul_(8.0)
        model.decoder.output.bias[3] -= 2.0
    return model


@pytest.mark.parametrize("att,extra", [
    ({"type": "local_m", "base": "location_aware", "att_dim": 32, "kernel_size": 5, "window": 4, "ratio": 3.0}, {}),
    ({"type": "local_p", "base": "additive", "att_dim": 32, "window": 4, "p_dim": 16}, {}),
    ({"type": "location_aware", "att_dim": 32, "kernel_size": 5}, {"att_window_back": 3, "att_window_ahead": 6, "att_window_restart": False}),
    ({"type": "location_aware", "att_dim": 32, "kernel_size": 5}, {"hard_attention": True}),
])
def test_local_windowed_hard_beam_search_batched_equals_single_and_beam1_equals_greedy(batch, att, extra):
    """Real AN4 fbank, B x K hypotheses in one tensor program: each utterance's result is the one it gets alone."""
    model = _tiny_model(att)
    xs, lens = batch
    one = DecodingOptions(beam_size=1, max_len_ratio=1.0, length_penalty=0.0, ctc_weight=0.0, **extra)
    g, b1 = greedy_search(model, xs, lens, one), beam_search(model, xs, lens, one)
    assert [h.tokens for h in g] == [h.tokens for h in b1]
    torch.testing.assert_close([h.attention for h in g], [h.attention for h in b1])
    opts = DecodingOptions(beam_size=4, max_len_ratio=1.0, length_penalty=1.0, ctc_weight=0.0, **extra)
    batched = beam_search(model, xs, lens, opts)
    assert any(len(h.tokens) > 2 for h in batched)
    for i in range(xs.shape[0]):
        single = beam_search(model, xs[i : i + 1, : lens[i]], lens[i : i + 1], opts)[0]
        assert single.tokens == batched[i].tokens
        assert single.norm_score == pytest.approx(batched[i].norm_score, abs=1e-4)
        torch.testing.assert_close(single.attention, batched[i].attention, atol=1e-5, rtol=1e-4)


def test_windowed_greedy_restarts_at_an_early_eos(batch):
    """An eos before the window reaches the last frame starts a new utterance there (greedy search): the
    hypothesis goes on to the end of the audio, restart steps emit no token and get no attention row; without
    restarts that eos is blocked; a (re)start must emit a token before it may end again."""
    model = _tiny_model({"type": "location_aware", "att_dim": 32, "kernel_size": 5})
    with torch.no_grad():
        model.decoder.output.bias[3] += 6.0  # eos is the model's favourite token after the first one
    xs, lens = batch
    enc_lens = model.encoder.output_lengths(lens)
    base = dict(beam_size=1, max_len_ratio=1.0, length_penalty=0.0, ctc_weight=0.0, att_window_back=1, att_window_ahead=3)
    free = greedy_search(model, xs, lens, DecodingOptions(**{k: v for k, v in base.items() if not k.startswith("att_")}))
    assert max(len(h.tokens) for h in free) <= 2  # unconstrained: the model ends at once
    rs = greedy_search(model, xs, lens, DecodingOptions(**base))
    block = greedy_search(model, xs, lens, DecodingOptions(**base, att_window_restart=False))
    for h_rs, h_block, s in zip(rs, block, enc_lens.tolist()):
        assert h_rs.attention.shape[0] in (len(h_rs.tokens), len(h_rs.tokens) + 1)
        assert eos_free(h_rs.tokens) and eos_free(h_block.tokens)
        assert len(h_rs.tokens) > 3
        if h_rs.attention.shape[0] == len(h_rs.tokens) + 1:  # it ended with eos: its window held the last frame
            assert h_rs.attention[-1].nonzero().min() >= s - 5
    assert [h.tokens for h in rs] != [h.tokens for h in block]


def eos_free(tokens):
    return 3 not in tokens


def test_windowed_beam_search_with_ctc_never_fails_when_nothing_can_finish():
    """Windowed joint CTC/attention beam search on short real clips: eos is blocked until the window reaches the
    last frame while CTC allows no more tokens than frames, so every extension can score -inf before anything
    finished. Each utterance still gets a hypothesis (then the empty one, score -inf, marked as stopped by the
    length limit) instead of an exception that took its whole batch down (44 of these 48 searches raised before)."""
    from asr.features.audio import load_audio
    from asr.features.fbank import compute_fbank
    from conftest import MINI_AN4, tiny_ctc_model

    model = tiny_ctc_model()
    wavs = sorted((MINI_AN4 / "wav").rglob("*.wav"))[:4]
    n_empty = 0
    for w in wavs:
        x = compute_fbank(load_audio(w))
        for n in (24, 32, 40, 64):
            for win in ((0, 0), (0, 1), (1, 1)):
                opts = DecodingOptions(beam_size=4, ctc_weight=0.5, max_len_ratio=3.0, min_len=1, att_window_back=win[0], att_window_ahead=win[1])
                (h,) = beam_search(model, x[None, :n], torch.tensor([n]), opts)
                if h.score == float("-inf"):
                    assert h.tokens == [] and h.reached_limit and h.attention.shape[0] == 0
                    n_empty += 1
                else:
                    assert h.tokens or not h.reached_limit
    assert n_empty > 0  # the case this test is about did occur
