"""Greedy and batched beam search on real AN4 fbank."""

from __future__ import annotations

import pytest
import torch

from asr.decoding.search import DecodingOptions, beam_search, greedy_search
from asr.models.asr_model import build_model


def _model(kind="location_aware", seed=0):
    torch.manual_seed(seed)
    att = {"type": kind, "att_dim": 32} if kind in ("location_aware", "additive", "dot") else {"type": kind}
    cfg = {"encoder": {"type": "pblstm", "hidden_size": 32, "num_layers": 2, "subsample": [4, 2], "dropout": 0.0}, "attention": att, "decoder": {"type": "rnn", "embed_dim": 16, "hidden_size": 32}, "label_smoothing": 0.0}
    model = build_model(cfg, vocab_size=12, sos_id=2, eos_id=3, pad_id=0).eval()
    # sharpen the output layer so that hypotheses end (eos) and differ between utterances
    with torch.no_grad():
        model.decoder.output.weight.mul_(8.0)
        model.decoder.output.bias[3] += 0.5
    return model


@pytest.fixture(scope="module")
def trained(mini_an4, real_feats):
    """A tiny model trained for 60 steps on the 6 real utterances (pure torch, a few seconds)."""
    from asr.text.tokenizer import Tokenizer

    tok = Tokenizer.from_file(mini_an4 / "data/token/char.model")
    texts = dict(line.split(" ", 1) for line in (mini_an4 / "data/train_nodev/text").read_text().splitlines())
    ids = sorted(real_feats)
    torch.manual_seed(0)
    cfg = {"encoder": {"type": "pblstm", "hidden_size": 64, "num_layers": 2, "subsample": [4, 2], "dropout": 0.0}, "attention": {"type": "location_aware", "att_dim": 64, "kernel_size": 5}, "decoder": {"type": "rnn", "embed_dim": 32, "hidden_size": 64}, "label_smoothing": 0.0}
    model = build_model(cfg, tok.vocab_size, tok.sos_id, tok.eos_id, tok.pad_id)
    feats = [real_feats[k] for k in ids]
    xs, lens = torch.nn.utils.rnn.pad_sequence(feats, batch_first=True), torch.tensor([x.shape[0] for x in feats])
    toks = [torch.tensor(tok.encode(texts[k])) for k in ids]
    ys, ys_lens = torch.nn.utils.rnn.pad_sequence(toks, batch_first=True), torch.tensor([len(t) for t in toks])
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    for _ in range(60):
        opt.zero_grad()
        model(xs, lens, ys, ys_lens)["loss"].backward()
        opt.step()
    return model.eval(), xs, lens


def test_trained_model_beam_equals_greedy_and_batched_equals_single(trained):
    model, xs, lens = trained
    g = greedy_search(model, xs, lens, DecodingOptions(length_penalty=0.0, ctc_weight=0.0))
    b1 = beam_search(model, xs, lens, DecodingOptions(beam_size=1, length_penalty=0.0, ctc_weight=0.0))
    assert [h.tokens for h in g] == [h.tokens for h in b1]
    assert all(len(h.tokens) > 3 for h in g)  # a trained model emits real hypotheses, not just eos
    b4 = beam_search(model, xs, lens, DecodingOptions(beam_size=4, length_penalty=1.0, ctc_weight=0.0))
    for i in range(xs.shape[0]):
        single = beam_search(model, xs[i : i + 1, : lens[i]], lens[i : i + 1], DecodingOptions(beam_size=4, length_penalty=1.0, ctc_weight=0.0))[0]
        assert single.tokens == b4[i].tokens
        assert single.norm_score == pytest.approx(b4[i].norm_score, abs=1e-4)


@pytest.mark.parametrize("kind", ["location_aware", "additive", "dot", "general", "location"])
def test_beam_one_equals_greedy(batch, kind):
    model = _model(kind)
    xs, lens = batch
    opts = DecodingOptions(beam_size=1, max_len_ratio=1.0, length_penalty=0.0, ctc_weight=0.0)
    g = greedy_search(model, xs, lens, opts)
    b = beam_search(model, xs, lens, opts)
    assert [h.tokens for h in g] == [h.tokens for h in b]
    for hg, hb in zip(g, b):
        assert hg.score == pytest.approx(hb.score, abs=1e-4)
        torch.testing.assert_close(hg.attention, hb.attention)


@pytest.mark.parametrize("beam", [3, 5])
def test_batched_beam_equals_per_utterance_beam(batch, beam):
    model = _model()
    xs, lens = batch
    opts = DecodingOptions(beam_size=beam, max_len_ratio=1.0, length_penalty=1.0, ctc_weight=0.0)
    batched = beam_search(model, xs, lens, opts)
    for i in range(xs.shape[0]):
        single = beam_search(model, xs[i : i + 1, : lens[i]], lens[i : i + 1], opts)[0]
        assert single.tokens == batched[i].tokens
        assert single.norm_score == pytest.approx(batched[i].norm_score, abs=1e-4)
        torch.testing.assert_close(single.attention, batched[i].attention, atol=1e-5, rtol=1e-4)


def test_hypothesis_attention_shape_and_max_length(batch):
    model = _model()
    xs, lens = batch
    enc_lens = model.encoder.output_lengths(lens)
    opts = DecodingOptions(beam_size=4, max_len_ratio=0.5, min_len=2, length_penalty=1.0, ctc_weight=0.0)
    for h, s in zip(beam_search(model, xs, lens, opts), enc_lens.tolist()):
        assert h.attention.shape[1] == s
        assert h.attention.shape[0] in (len(h.tokens), len(h.tokens) + 1)
        assert len(h.tokens) <= max(2, -(-s // 2))
        torch.testing.assert_close(h.attention.sum(-1), torch.ones(h.attention.shape[0]))


def test_beam_search_finds_no_worse_raw_score_than_greedy(batch):
    model = _model(seed=1)
    xs, lens = batch
    g = greedy_search(model, xs, lens, DecodingOptions(length_penalty=0.0, ctc_weight=0.0))
    b = beam_search(model, xs, lens, DecodingOptions(beam_size=8, length_penalty=0.0, ctc_weight=0.0))
    # greedy's path is among those a wide beam explores first, so beam's best is at least as probable
    assert all(hb.score >= hg.score - 1e-4 for hg, hb in zip(g, b))
