from __future__ import annotations

import torch

from asr.features.audio import load_audio
from asr.features.fbank import FbankOptions, GlobalCMVN, compute_cmvn_stats, compute_fbank
from asr.text.tokenizer import Tokenizer

from conftest import MINI_AN4


def _wav():
    return next(iter(sorted((MINI_AN4 / "wav/an4_clstk").rglob("*.wav"))))


def test_fbank_shape_matches_kaldi_frame_count():
    wav = load_audio(_wav())
    x = compute_fbank(wav)
    assert x.shape == (1 + (wav.numel() - 400) // 160, 80)
    assert torch.isfinite(x).all()
    # log-mel energies of speech at Kaldi's 16-bit scale are mostly positive and vary over time
    assert x.mean() > 0 and x.std(0).min() > 0.1


def test_fbank_in_blocks_equals_one_call(monkeypatch):
    """A waveform longer than ``FBANK_BLOCK_FRAMES`` frames (long-form decoding) is processed block by block
    with bounded memory; the frames equal those of one front-end call (up to float rounding), also at block edges."""
    import asr.features.fbank as fbank

    wav = torch.cat([load_audio(_wav())] * 3)
    whole = compute_fbank(wav)
    for block in (7, 100, whole.shape[0] - 1):
        monkeypatch.setattr(fbank, "FBANK_BLOCK_FRAMES", block)
        blocked = compute_fbank(wav)
        assert blocked.shape == whole.shape
        torch.testing.assert_close(blocked, whole, rtol=1e-6, atol=1e-5)  # a block of other size may round the mel product 1 ulp apart


def test_fbank_rejects_short_and_2d_input():
    import pytest

    with pytest.raises(ValueError, match="shorter than one"):
        compute_fbank(torch.zeros(100))
    with pytest.raises(ValueError, match="1-D"):
        compute_fbank(torch.zeros(2, 16000))


def test_cmvn_normalises_training_features(real_feats):
    stats = compute_cmvn_stats(real_feats)
    cmvn = GlobalCMVN(stats["mean"], stats["std"])
    allx = cmvn(torch.cat(list(real_feats.values())))
    assert torch.allclose(allx.mean(0), torch.zeros(80), atol=1e-3)
    assert torch.allclose(allx.std(0, unbiased=False), torch.ones(80), atol=1e-3)
    assert int(stats["count"]) == sum(x.shape[0] for x in real_feats.values())


def test_tokenizer_special_ids_and_round_trip(tmp_path):
    texts = ["ENTER ONE FORTY TWO", "N E I L", "RUBOUT Y Y F X ZERO"]
    for kind, size in [("char", 0), ("bpe", 32)]:
        tok = Tokenizer.train(texts, tmp_path / kind, kind, size)
        assert (tok.pad_id, tok.unk_id, tok.sos_id, tok.eos_id) == (0, 1, 2, 3)
        for t in texts:
            ids = tok.encode(t)
            assert tok.sos_id not in ids and tok.eos_id not in ids
            assert tok.decode(ids) == t
        # a checkpoint carries the bytes: a rebuilt tokenizer is identical
        again = Tokenizer(tok.proto)
        assert again.encode(texts[0]) == tok.encode(texts[0])
        # characters never seen map to <unk>
        assert tok.unk_id in tok.encode("QZ")


def test_tokenizer_decode_collapses_a_lone_word_boundary_piece(tmp_path):
    """``▁H ▁ ▁O`` (a hypothesis the AN4 model produced) decodes to ``H O``, not ``H  O``."""
    texts = ["H O U S E R", "N E I L", "ENTER ONE FORTY TWO"]
    for kind, size in [("char", 0), ("bpe", 32)]:
        tok = Tokenizer.train(texts, tmp_path / kind, kind, size)
        pieces = ["\u2581H", "\u2581", "\u2581O"] if kind == "bpe" else ["\u2581", "H", "\u2581", "\u2581", "O"]
        ids = [tok.sp.piece_to_id(p) for p in pieces]
        assert tok.unk_id not in ids, (kind, tok.pieces(ids))
        assert "  " in tok.sp.decode(ids)  # what sentencepiece itself gives
        assert tok.decode(ids) == "H O"


def test_tokenizer_file_missing_names_stage(tmp_path):
    import pytest

    with pytest.raises(FileNotFoundError, match="stage 3"):
        Tokenizer.from_file(tmp_path / "nope.model")


def test_specaug_masks_in_training_only(real_feats):
    from asr.features.specaug import SpecAugment

    torch.manual_seed(0)
    x = torch.stack([v[:140] for v in list(real_feats.values())[:3]])  # (3, 140, 80)
    aug = SpecAugment(num_freq_masks=2, freq_mask_width=20, num_time_masks=2, time_mask_width=30, max_time_ratio=0.3)
    y = aug.train()(x)
    assert y.shape == x.shape
    masked = y == 0
    assert masked.any(dim=(1, 2)).all()  # every utterance got masks of its own ...
    assert not torch.equal(masked[0], masked[1])  # ... independently drawn
    assert torch.equal(y[~masked], x[~masked])  # nothing else changes
    assert torch.equal(aug.eval()(x), x)


def test_specaug_time_warp_keeps_length_and_padding(real_feats):
    from asr.features.specaug import SpecAugment

    torch.manual_seed(1)
    feats = list(real_feats.values())[:3]
    x = torch.nn.utils.rnn.pad_sequence(feats, batch_first=True)
    lens = torch.tensor([f.shape[0] for f in feats])
    aug = SpecAugment(num_freq_masks=0, num_time_masks=0, time_warp=5).train()
    y = aug(x, lens)
    assert y.shape == x.shape
    for i, n in enumerate(lens.tolist()):
        assert torch.equal(y[i, n:], x[i, n:])  # padding untouched
        # interpolation only: every warped value lies within its bin's range in the original utterance
        assert (y[i, :n] >= x[i, :n].min(0).values - 1e-4).all() and (y[i, :n] <= x[i, :n].max(0).values + 1e-4).all()
    assert not torch.equal(y, x)  # something moved
    assert torch.equal(aug.eval()(x, lens), x)
    assert torch.equal(SpecAugment(num_freq_masks=0, num_time_masks=0).train()(x, lens), x)  # time_warp=0: identity


def test_atomic_save_leaves_previous_file_on_crash(tmp_path):
    """A save interrupted half-way (simulated by an exception inside torch.save) keeps the old checkpoint."""
    from asr.utils.io import atomic_torch_save

    path = tmp_path / "last.ckpt"
    atomic_torch_save({"w": torch.ones(3)}, path)

    class Boom:
        def __reduce__(self):
            raise KeyboardInterrupt("killed while saving")

    import pytest

    with pytest.raises(KeyboardInterrupt):
        atomic_torch_save({"w": torch.zeros(3), "x": Boom()}, path)
    assert torch.equal(torch.load(path, weights_only=True)["w"], torch.ones(3))
    assert [p.name for p in tmp_path.iterdir()] == ["last.ckpt"]  # no temporary file left behind


def test_speed_perturb_changes_length_and_dataset_mixes_speeds(mini_an4):
    from asr.features.fbank import speed_perturb

    wav = load_audio(_wav())
    for factor in (0.9, 1.1):
        out = speed_perturb(wav, factor)
        assert abs(out.numel() - wav.numel() / factor) <= 2
    assert speed_perturb(wav, 1.0) is wav

    from lhotse import CutSet

    from asr.data.lhotse_data import CutBatchDataset, load_cuts

    tok = Tokenizer.from_file(mini_an4 / "data/token/char.model")
    one = CutSet.from_cuts([next(iter(load_cuts(mini_an4 / "dump/train_nodev/cuts.jsonl.gz")))])
    ds = CutBatchDataset(tok, speeds=[0.9, 1.0, 1.1])
    frames = {ds[(epoch, one)].feats.shape[1] for epoch in range(30)}
    assert len(frames) == 3  # three speeds, three lengths, drawn anew each epoch
    assert torch.equal(ds[(7, one)].feats, ds[(7, one)].feats)  # ... but fixed for a given (seed, epoch, utterance)
    plain = CutBatchDataset(tok)
    assert len({plain[(epoch, one)].feats.shape[1] for epoch in range(5)}) == 1
