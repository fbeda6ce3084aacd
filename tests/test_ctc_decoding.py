"""CTC prefix scoring (against a brute-force sum over all CTC paths), CTC greedy and joint CTC/attention search."""

from __future__ import annotations

import itertools
import math

import pytest
import torch

from asr.decoding.ctc import CTCPrefixScorer, ctc_greedy
from asr.decoding.search import DecodingOptions, beam_search, ctc_greedy_search, decode_batch, greedy_search
from conftest import tiny_ctc_model

BLANK, EOS = 0, 3


def _collapse(path):
    out, prev = [], None
    for p in path:
        if p != BLANK and p != prev:
            out.append(p)
        prev = p
    return tuple(out)


def _brute(logp: torch.Tensor, n: int):
    """Map labelling -> probability by enumerating all V^n paths over the first n frames of ``logp (T, V)``."""
    probs: dict[tuple, float] = {}
    v = logp.shape[1]
    for path in itertools.product(range(v), repeat=n):
        lp = sum(float(logp[t, s]) for t, s in enumerate(path))
        lab = _collapse(path)
        probs[lab] = probs.get(lab, 0.0) + math.exp(lp)
    return probs


def _prefix_prob(probs, prefix):
    return sum(p for lab, p in probs.items() if lab[: len(prefix)] == tuple(prefix))


@pytest.fixture
def ctc_example():
    torch.manual_seed(3)
    b, t, v = 2, 5, 4
    logp = torch.log_softmax(torch.randn(b, t, v) * 1.5, -1)
    lens = torch.tensor([5, 3])  # the second utterance is padded by two frames
    return logp, lens


@pytest.mark.parametrize("prefix", [[], [1], [2, 1], [1, 1]])
def test_prefix_scores_equal_brute_force_sum_over_paths(ctc_example, prefix):
    logp, lens = ctc_example
    v = logp.shape[2]
    scorer = CTCPrefixScorer(logp, lens, BLANK, EOS, beam=1)
    state = scorer.init_state()
    for tok in prefix:  # walk the prefix token by token through score/select
        psi, r = scorer.score(state)
        state = scorer.select(psi, r, torch.arange(2), torch.tensor([tok, tok]))
    psi, _ = scorer.score(state)
    for i in range(2):
        probs = _brute(logp[i], int(lens[i]))
        assert float(state.psi[i]) == pytest.approx(math.log(_prefix_prob(probs, prefix)) if prefix else 0.0, abs=1e-5)
        for c in range(v):
            if c == BLANK:
                assert psi[i, c] == float("-inf")
            elif c == EOS:  # the labelling is exactly the prefix
                p = probs.get(tuple(prefix), 0.0)
                assert float(psi[i, c]) == (pytest.approx(math.log(p), abs=1e-5) if p > 0 else float("-inf"))
            else:
                expected = _prefix_prob(probs, prefix + [c])
                if expected == 0.0:  # needs more frames than the utterance has
                    assert psi[i, c] == float("-inf")
                else:
                    assert float(psi[i, c]) == pytest.approx(math.log(expected), abs=1e-5), (prefix, c)


def test_ctc_greedy_merges_repeats_and_drops_blanks():
    logp = torch.full((1, 7, 4), -10.0)
    for t, s in enumerate([0, 1, 1, 0, 1, 2, 2]):
        logp[0, t, s] = 0.0
    (tokens, score, frames), = ctc_greedy(logp, torch.tensor([7]), BLANK)
    assert tokens == [1, 1, 2] and frames == [1, 4, 5] and score == 0.0
    (tokens, _, _), = ctc_greedy(logp, torch.tensor([3]), BLANK)  # only the valid frames count
    assert tokens == [1]


def test_joint_search_with_zero_ctc_weight_equals_attention_only(batch):
    model = tiny_ctc_model()
    xs, lens = batch
    opts = DecodingOptions(beam_size=4, ctc_weight=0.0, length_penalty=1.0)
    att = beam_search(model, xs, lens, opts)
    joint = beam_search(model, xs, lens, opts, use_ctc=True)
    assert [h.tokens for h in att] == [h.tokens for h in joint]
    assert [h.score for h in att] == pytest.approx([h.score for h in joint], abs=1e-5)


def test_ctc_weight_changes_the_search_and_batched_equals_per_utterance(batch):
    model = tiny_ctc_model()
    xs, lens = batch
    opts = DecodingOptions(beam_size=4, ctc_weight=0.5, length_penalty=1.0)
    joint = beam_search(model, xs, lens, opts)
    att = beam_search(model, xs, lens, DecodingOptions(beam_size=4, length_penalty=1.0, ctc_weight=0.0))
    assert [h.score for h in joint] != pytest.approx([h.score for h in att], abs=1e-3)
    for i in range(xs.shape[0]):
        single = beam_search(model, xs[i : i + 1, : lens[i]], lens[i : i + 1], opts)[0]
        assert single.tokens == joint[i].tokens
        assert single.score == pytest.approx(joint[i].score, abs=1e-4)


def test_ctc_only_beam_scores_are_ctc_label_probabilities(batch):
    """λ = 1: a finished hypothesis' score is log p_ctc(labelling), checked against torch's CTC loss."""
    model = tiny_ctc_model()
    xs, lens = batch
    hyps = beam_search(model, xs, lens, DecodingOptions(beam_size=3, ctc_weight=1.0, length_penalty=0.0))
    hs, hs_lens = model.encode(xs, lens)
    logp = torch.log_softmax(model.ctc(hs), -1).transpose(0, 1)
    for i, h in enumerate(hyps):
        if not h.tokens:
            continue
        nll = torch.nn.functional.ctc_loss(logp[:, i : i + 1], torch.tensor([h.tokens]), hs_lens[i : i + 1], torch.tensor([len(h.tokens)]), blank=0, reduction="sum")
        assert h.score == pytest.approx(-float(nll), abs=1e-3)


def test_decode_batch_dispatch_and_errors(batch):
    model = tiny_ctc_model()
    xs, lens = batch
    g = decode_batch(model, xs, lens, DecodingOptions(beam_size=1, ctc_weight=1.0, length_penalty=1.0))
    assert [h.tokens for h in g] == [h.tokens for h in ctc_greedy_search(model, xs, lens)]
    assert all(h.attention.shape[0] == len(h.tokens) + 1 for h in g)
    a = decode_batch(model, xs, lens, DecodingOptions(beam_size=1, length_penalty=1.0, ctc_weight=0.0))
    assert [h.tokens for h in a] == [h.tokens for h in greedy_search(model, xs, lens)]
    model.ctc = None
    with pytest.raises(ValueError, match="CTC branch"):
        decode_batch(model, xs, lens, DecodingOptions(beam_size=2, ctc_weight=0.3, length_penalty=1.0))
    with pytest.raises(ValueError, match="ctc_weight"):
        DecodingOptions(ctc_weight=1.5)


def test_prefix_scores_of_long_peaky_utterances_equal_the_log_domain_sum():
    """``score`` sums ``phi_{t-1} + x_t(c)`` over frames as a float64 matrix product out of the log domain (each
    factor scaled by its maximum): on 300-frame utterances with confident posteriors (log-probabilities down to
    about -60 per frame, hundreds of nats between frames' terms) every prefix score equals the log-domain
    logsumexp over frames of the returned state, repeated token included, to 1e-4."""
    torch.manual_seed(0)
    b, t, v = 2, 300, 6
    logp = torch.log_softmax(torch.randn(b, t, v) * 12.0, -1)
    lens = torch.tensor([300, 211])
    k = 2
    scorer = CTCPrefixScorer(logp, lens, BLANK, EOS, beam=k)
    state = scorer.init_state()
    for step in range(6):
        psi, r = scorer.score(state)
        # reference: psi(g + c) = logsumexp_t phi_{t-1}(g, c) + x_t(c) in float64, phi from the state
        x = scorer.x.double()  # (T, N, V)
        rb, rn = state.r[:, 0].double(), state.r[:, 1].double()
        total = torch.logaddexp(rb, rn)
        start = torch.where(state.last < 0, 0.0, float("-inf")).double()
        phi = torch.cat([start[None], total[:-1]], 0)[:, :, None].expand(-1, -1, v).clone()
        phi_rb = torch.cat([start[None], rb[:-1]], 0)
        for i, last in enumerate(state.last.tolist()):
            if last >= 0:
                phi[:, i, last] = phi_rb[:, i]
        ref = torch.logsumexp(phi + x, 0)
        cols = [c for c in range(v) if c not in (BLANK, EOS)]
        got, want = psi[:, cols].double(), ref[:, cols]
        assert torch.equal(torch.isinf(got), torch.isinf(want)), step
        fin = torch.isfinite(want)
        assert fin.any() and float((got[fin] - want[fin]).abs().max()) < 1e-4, step
        terms = (phi + x)[:, :, cols]
        assert float(terms[torch.isfinite(terms)].max() - terms[torch.isfinite(terms)].min()) > 500  # a wide range
        best = psi.masked_fill(torch.arange(v)[None] == EOS, float("-inf")).argmax(-1)  # extend by each row's best token
        state = scorer.select(psi, r, torch.arange(b * k), best)


def test_keep_drops_rows_and_leaves_the_kept_scores_unchanged(ctc_example):
    """``CTCPrefixScorer.keep`` (beam search dropping done utterances): the kept rows score every extension as
    in the full scorer, also after the frames past the longest kept utterance are cut off."""
    logp, lens = ctc_example
    k = 2
    scorer = CTCPrefixScorer(logp, lens, BLANK, EOS, beam=k)
    state = scorer.init_state()
    for toks in ([1, 2, 1, 1], [2, 1, 1, 2]):
        psi, r = scorer.score(state)
        state = scorer.select(psi, r, torch.arange(2 * k), torch.tensor(toks))
    full_psi, _ = scorer.score(state)
    for utt in (1, 0):  # utterance 1 has 3 of the 5 frames: its rows keep only 3
        part = CTCPrefixScorer(logp, lens, BLANK, EOS, beam=k)
        part.x, part.lens = scorer.x, scorer.lens
        rows = torch.arange(utt * k, utt * k + k)
        kept = part.keep(state, rows)
        assert part.x.shape[:2] == (int(lens[utt]), k) and kept.r.shape[0] == int(lens[utt])
        psi, r = part.score(kept)
        torch.testing.assert_close(psi, full_psi[rows])
        torch.testing.assert_close(kept.psi, state.psi[rows])


def test_beam_search_drops_done_utterances_with_unchanged_results(batch, monkeypatch):
    """Once an utterance's search is done its rows leave the batch (later steps run on fewer rows), and every
    utterance gets the hypothesis and score it gets when decoded alone."""
    import asr.decoding.search as search

    model = tiny_ctc_model()
    xs, lens = batch
    k = 3
    rows_per_step = []
    step = search._Member.step

    def counting(self, y):
        rows_per_step.append(y.shape[0])
        return step(self, y)

    monkeypatch.setattr(search._Member, "step", counting)
    opts = DecodingOptions(beam_size=k, ctc_weight=0.3, length_penalty=0.5)
    batched = beam_search(model, xs, lens, opts)
    assert rows_per_step[0] == k * len(lens) and min(rows_per_step) < k * len(lens)
    assert rows_per_step == sorted(rows_per_step, reverse=True)
    for i in range(xs.shape[0]):
        single = beam_search(model, xs[i : i + 1, : lens[i]], lens[i : i + 1], opts)[0]
        assert single.tokens == batched[i].tokens
        assert single.score == pytest.approx(batched[i].score, abs=1e-4)
        torch.testing.assert_close(single.attention, batched[i].attention, atol=1e-5, rtol=1e-4)
