"""Model ensembles in the (joint CTC/attention) search and in ``asr-decode``, on real AN4 fbank.

Members are small random models (``conftest.tiny_ctc_model``) with different pBLSTM subsampling (×4 and ×8, so
different numbers of encoder frames); the combined per-step score is checked against a hand computation from
each member's teacher-forced attention log-probabilities and CTC label probabilities.
"""

from __future__ import annotations

import json

import pytest
import torch

from asr.cli.decode import decode
from asr.decoding.decode_dir import resume_settings as _resume_settings
from asr.decoding.search import DecodingOptions, beam_search, ctc_greedy_search, decode_batch, greedy_search
from conftest import make_ckpt, tiny_ctc_model

X4, X8 = (2, 2), (4, 2)


def _same(a, b) -> None:
    """Identical hypotheses: tokens, scores and attention to the bit."""
    assert [h.tokens for h in a] == [h.tokens for h in b]
    assert [(h.score, h.norm_score) for h in a] == [(h.score, h.norm_score) for h in b]
    assert all(torch.equal(x.attention, y.attention) for x, y in zip(a, b))


@pytest.fixture(scope="module")
def members():
    """A ×4 and a ×8 member (different weights, different encoder frame rates)."""
    return [tiny_ctc_model(seed=0, subsample=X4), tiny_ctc_model(seed=1, subsample=X8)]


@pytest.mark.parametrize("ctc_weight", [0.0, 0.3])
def test_one_member_list_equals_the_bare_model(batch, ctc_weight):
    model = tiny_ctc_model()
    xs, lens = batch
    opts = DecodingOptions(beam_size=4, ctc_weight=ctc_weight, length_penalty=1.0)
    _same(beam_search([model], xs, lens, opts), beam_search(model, xs, lens, opts))
    _same(decode_batch([model], xs, lens, opts), decode_batch(model, xs, lens, opts))
    if ctc_weight == 0:
        _same(greedy_search([model], xs, lens), greedy_search(model, xs, lens))


def test_same_model_twice_equals_the_model_alone(batch):
    """The mean of identical log-probabilities is the log-probability itself."""
    model = tiny_ctc_model()
    xs, lens = batch
    opts = DecodingOptions(beam_size=4, ctc_weight=0.3, length_penalty=1.0)
    alone, twice = beam_search(model, xs, lens, opts), beam_search([model, model], xs, lens, opts)
    assert [h.tokens for h in twice] == [h.tokens for h in alone]
    assert [h.score for h in twice] == pytest.approx([h.score for h in alone], abs=1e-6)


def test_members_with_other_frame_rates_decode_batched_as_unbatched(members, batch):
    xs, lens = batch
    first_frames = members[0].encoder.output_lengths(lens)
    assert not torch.equal(first_frames, members[1].encoder.output_lengths(lens))  # ×4 and ×8
    opts = DecodingOptions(beam_size=4, ctc_weight=0.3, length_penalty=1.0)
    hyps = beam_search(members, xs, lens, opts)
    for i, h in enumerate(hyps):
        assert h.attention.shape[1] == int(first_frames[i])  # the first member's attention
        single = beam_search(members, xs[i : i + 1, : lens[i]], lens[i : i + 1], opts)[0]
        assert single.tokens == h.tokens
        assert single.score == pytest.approx(h.score, abs=1e-4)
    alone = [beam_search(m, xs, lens, opts) for m in members]
    assert all([h.tokens for h in hyps] != [h.tokens for h in a] for a in alone)  # both members count


def _member_scores(model, xs, lens, tokens: list[int], with_eos: bool) -> tuple[float, float]:
    """``(log p_att(tokens [+ eos]), log p_ctc(tokens))`` of one utterance ``xs (1, T, F)``: the teacher-forced
    attention log-probability and the CTC label log-probability (torch's CTC loss), over the member's own frames."""
    with torch.no_grad():
        hs, hs_lens = model.encode(xs, lens)
        ys_in = torch.tensor([[model.sos_id, *tokens]])
        logits, _ = model.decoder(hs, hs_lens, ys_in)
        targets = torch.tensor(tokens + [model.eos_id])
        lp = torch.log_softmax(logits[0].float(), -1).gather(1, targets[:, None])[:, 0]
        att = float(lp.sum() if with_eos else lp[:-1].sum())
        ctc_lp = torch.log_softmax(model.ctc(hs).float(), -1).transpose(0, 1)
        nll = torch.nn.functional.ctc_loss(ctc_lp, torch.tensor([tokens]), hs_lens, torch.tensor([len(tokens)]), blank=model.pad_id, reduction="sum")
    return att, -float(nll)


@pytest.mark.parametrize("ctc_weight", [0.0, 0.5])
def test_beam_one_score_is_the_mean_of_the_members_scores(members, batch, ctc_weight):
    """Beam 1: the returned hypothesis' score is ``(1-λ) mean_m log p_att^m(tokens + eos) + λ mean_m log p_ctc^m(tokens)``
    (the per-step CTC deltas telescope to the label probability), and differs from every member's own score.

    These random members' attention-only hypotheses run to the length limit (no eos: the attention part then
    covers the tokens only); with λ 0.5 CTC ends them (eos included)."""
    xs, lens = batch
    hyps = beam_search(members, xs, lens, DecodingOptions(beam_size=1, ctc_weight=ctc_weight, length_penalty=0.0))
    if ctc_weight == 0:  # beam 1 is the ensemble's greedy search
        assert [h.tokens for h in greedy_search(members, xs, lens)] == [h.tokens for h in hyps]
    checked = 0
    for i, h in enumerate(hyps):
        with_eos = h.attention.shape[0] == len(h.tokens) + 1  # else stopped at the length limit
        if not h.tokens or (ctc_weight > 0 and not with_eos):  # the CTC part is a label probability: needs eos
            continue
        per_member = [_member_scores(m, xs[i : i + 1, : lens[i]], lens[i : i + 1], h.tokens, with_eos) for m in members]
        own = [(1 - ctc_weight) * att + (ctc_weight * ctc if ctc_weight else 0.0) for att, ctc in per_member]
        assert h.score == pytest.approx(sum(own) / len(own), abs=2e-3)
        assert min(abs(h.score - s) for s in own) > 0.05  # the members disagree: the mean is what is checked
        checked += 1
    assert checked >= 2


def test_members_must_share_the_vocabulary_and_ctc(members, batch):
    xs, lens = batch
    with pytest.raises(ValueError, match="member 1 has vocab_size 13"):
        beam_search([members[0], tiny_ctc_model(seed=2, vocab_size=13)], xs, lens, DecodingOptions(beam_size=2, length_penalty=1.0, ctc_weight=0.0))
    other_eos = tiny_ctc_model(seed=2)
    other_eos.eos_id = 4
    with pytest.raises(ValueError, match="eos_id"):
        greedy_search([members[0], other_eos], xs, lens)
    no_ctc = tiny_ctc_model(seed=2)
    no_ctc.ctc = None
    with pytest.raises(ValueError, match=r"CTC branch; member\(s\) \[1\]"):
        beam_search([members[0], no_ctc], xs, lens, DecodingOptions(beam_size=2, ctc_weight=0.3, length_penalty=1.0))
    assert len(beam_search([members[0], no_ctc], xs, lens, DecodingOptions(beam_size=2, length_penalty=1.0, ctc_weight=0.0))) == 4  # attention only: fine
    with pytest.raises(ValueError, match="best-path"):
        ctc_greedy_search(members, xs, lens)
    # CTC-only with beam 1: an ensemble goes to the prefix-score beam search.
    opts = DecodingOptions(beam_size=1, ctc_weight=1.0, length_penalty=1.0)
    _same(decode_batch(members, xs, lens, opts), beam_search(members, xs, lens, opts))


# ---- asr-decode ---------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tok(mini_an4):
    from asr.text.tokenizer import Tokenizer

    return Tokenizer.from_file(mini_an4 / "data/token/char.model")


@pytest.fixture(scope="module")
def ckpts(tok, tmp_path_factory):
    """``(×4, ×8)`` checkpoints with CTC branches and the mini_an4 tokenizer."""
    d = tmp_path_factory.mktemp("ens_ckpts")
    return (
        make_ckpt(tok, d / "x4.ckpt", seed=1, overrides=("model.encoder.subsample=[2,2]", "model.ctc_weight=0.3")),
        make_ckpt(tok, d / "x8.ckpt", seed=0, overrides=("model.ctc_weight=0.3",)),
    )


def _decode_cfg(ckpt, mini_an4, out, *overrides: str):
    """``asr-decode``'s config composed by Hydra from command-line style overrides."""
    from hydra import compose, initialize_config_dir

    from asr.utils.paths import CONF_DIR

    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        return compose("decode", overrides=[f"ckpt={ckpt}", f"data_dir={mini_an4 / 'data/train_nodev'}", f"dump_dir={mini_an4 / 'dump/train_nodev'}",
                                            f"out_dir={out}", "beam_size=2", "ctc_weight=0.3", "max_len_ratio=0.5", "min_len=1", "batch_size=4", *overrides])


def test_asr_decode_ensemble_writes_meta_and_resume_settings(ckpts, mini_an4, tmp_path):
    from asr.utils.io import file_sha256 as _file_sha256
    from asr.models.checkpoint import load_checkpoint

    x4, x8 = ckpts
    cfg = _decode_cfg(x4, mini_an4, tmp_path / "ens", f"ensemble=[{x8}]")
    info = decode(cfg)
    meta = json.loads((tmp_path / "ens/meta.json").read_text())
    assert meta == info and meta["ensemble"] == [str(x4), str(x8)] and meta["subsampling"] == 4
    settings = _resume_settings(cfg, DecodingOptions(beam_size=2, max_len_ratio=0.5, min_len=1, ctc_weight=0.3, length_penalty=1.0))
    assert settings["ensemble"] == [{"checkpoint": str(x8.resolve()), "checkpoint_sha256": _file_sha256(x8)}]
    first = load_checkpoint(str(x4))[0]
    rows = [json.loads(line) for line in (tmp_path / "ens/results.jsonl").read_text().splitlines()]
    assert len(rows) == 6
    for r in rows:  # the first member's encoder frames
        assert r["enc_frames"] == int(first.encoder.output_lengths(torch.tensor([r["n_frames"]]))[0])

    single = decode(_decode_cfg(x4, mini_an4, tmp_path / "single"))
    assert "ensemble" not in single and "ensemble" not in _resume_settings(_decode_cfg(x4, mini_an4, tmp_path / "single"), DecodingOptions())
    hyps = [json.loads(line)["score"] for line in (tmp_path / "single/results.jsonl").read_text().splitlines()]
    assert hyps != [r["score"] for r in rows]


@pytest.mark.parametrize("what", ["tokenizer", "frame_shift", "no_ctc"])
def test_asr_decode_refuses_a_mismatched_member(ckpts, tok, mini_an4, tmp_path, what):
    from asr.text.tokenizer import Tokenizer

    other = tmp_path / "other.ckpt"
    if what == "tokenizer":  # a char tokenizer of other text: other pieces
        make_ckpt(Tokenizer.train(["XYZ QQQ ZYX"], tmp_path / "tok/char", kind="char"), other, seed=2, overrides=("model.ctc_weight=0.3",))
        match = r"tokenizer differs .*vocab_size"
    elif what == "frame_shift":
        ckpt = torch.load(make_ckpt(tok, other, seed=2, overrides=("model.ctc_weight=0.3",)), weights_only=True)
        ckpt["asr"]["frame_shift_s"] = 0.02
        torch.save(ckpt, other)
        match = "frame_shift_s 0.02 differs from 0.01"
    else:
        make_ckpt(tok, other, seed=2)
        match = "has no CTC branch"
    with pytest.raises(ValueError, match=match) as err:
        decode(_decode_cfg(ckpts[0], mini_an4, tmp_path / "dec", f"ensemble=[{other}]"))
    assert str(other) in str(err.value)
    assert not (tmp_path / "dec").exists()  # refused before decoding anything
