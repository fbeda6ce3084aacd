"""On-the-fly waveform augmentation (asr.data.augment): each transform on real AN4 audio, determinism per
(seed, epoch, cut), the dataset hook and its config."""

from __future__ import annotations

import random

import numpy as np
import pytest
import torch

from conftest import MINI_AN4

SR = 16000


@pytest.fixture(scope="module")
def wav() -> torch.Tensor:
    from asr.features.audio import load_audio

    return load_audio(sorted(MINI_AN4.glob("wav/an4_clstk/*/*.wav"))[0], SR)


def _fraction_above_db(x: torch.Tensor, hz: float) -> float:
    """Share of the energy above ``hz`` (dB)."""
    p = torch.fft.rfft(x.double()).abs().pow(2)
    f = torch.fft.rfftfreq(x.shape[0], 1.0 / SR)
    return 10 * float(torch.log10(p[f > hz].sum() / p.sum() + 1e-30))


def _snr_db(clean: torch.Tensor, noisy: torch.Tensor) -> float:
    return 10 * float(torch.log10(clean.double().pow(2).sum() / (noisy.double() - clean.double()).pow(2).sum()))


@pytest.mark.parametrize("cutoff", [4000.0, 3400.0, 6000.0])
def test_band_limit_removes_energy_above_the_cutoff(wav, cutoff):
    from asr.data.augment import band_limit

    out = band_limit(wav, SR, cutoff)
    assert out.shape == wav.shape
    before, after = _fraction_above_db(wav, cutoff * 1.02), _fraction_above_db(out, cutoff * 1.02)
    assert after < -40.0 and after < before - 15.0, (before, after)
    # the band below stays: at most 1 dB of the energy between 100 Hz and 0.9 x cut-off lost
    p_in = torch.fft.rfft(wav.double()).abs().pow(2)
    p_out = torch.fft.rfft(out.double()).abs().pow(2)
    f = torch.fft.rfftfreq(wav.shape[0], 1.0 / SR)
    keep = (f > 100) & (f < 0.9 * cutoff)
    assert abs(10 * float(torch.log10(p_out[keep].sum() / p_in[keep].sum()))) < 1.0
    assert band_limit(wav, SR, 8000.0) is wav  # at Nyquist: nothing to remove


@pytest.mark.parametrize("colour", ["white", "pink", "brown"])
@pytest.mark.parametrize("snr", [0.0, 10.0, 17.5])
def test_noise_at_the_requested_snr(wav, colour, snr):
    from asr.data.augment import add_noise, coloured_noise

    noise = coloured_noise(wav.shape[0], colour, torch.Generator().manual_seed(3))
    assert noise.shape == wav.shape and abs(float(noise.pow(2).mean()) - 1.0) < 1e-3
    assert abs(_snr_db(wav, add_noise(wav, noise, snr)) - snr) < 0.5


def test_noise_colours_have_their_spectral_slopes():
    from asr.data.augment import coloured_noise

    def low_share(c):  # energy below 500 Hz
        x = coloured_noise(SR * 4, c, torch.Generator().manual_seed(0))
        return -_fraction_above_db(x, 500.0)

    white, pink, brown = low_share("white"), low_share("pink"), low_share("brown")
    # white: 1/16 of the band below 500 Hz -> ~ -12 dB share above is ~ -0.27 dB; pink and brown pile up low
    assert white < 0.5 < pink < brown


def test_noise_from_a_corpus_at_the_requested_snr(mini_an4, wav):
    """A Kaldi data dir of recordings is a noise corpus (here: AN4 test speech, babble-like)."""
    from asr.data.augment import NoiseCorpus, WaveAugment

    corpus = NoiseCorpus(mini_an4 / "data/test")
    n1 = corpus.sample(wav.shape[0] * 2, random.Random(5))  # longer than any recording: repeated
    assert n1.shape[0] == wav.shape[0] * 2 and torch.equal(n1, corpus.sample(wav.shape[0] * 2, random.Random(5)))
    aug = WaveAugment({"noise": {"prob": 1.0, "snr_db": [5, 5], "colours": [], "corpus": str(mini_an4 / "data/test")}}, seed=1)
    plan = aug.plan(0, "x")
    assert plan.steps[0][:3] == ("noise", "corpus", 5.0)
    assert abs(_snr_db(wav, aug.apply(wav, plan)) - 5.0) < 0.5


def test_room_impulse_response_lengthens_the_decay(wav):
    from asr.data.augment import reverberate, room_impulse_response

    padded = torch.cat([wav, torch.zeros(SR)])  # one second of digital silence after the utterance
    tails = {}
    for rt60 in (0.3, 0.8):
        rir = room_impulse_response(SR, rt60, seed=11)
        assert np.array_equal(rir, room_impulse_response(SR, rt60, seed=11))  # the same room every time
        out = reverberate(padded, rir, SR)
        assert out.shape == padded.shape
        assert abs(float(out.pow(2).mean() / padded.pow(2).mean()) - 1.0) < 1e-3  # power kept (wav-reverberate)
        tail = out[wav.shape[0] + 800:wav.shape[0] + 4800]  # 50-300 ms after the end
        tails[rt60] = 10 * float(torch.log10(tail.pow(2).mean() / out[: wav.shape[0]].pow(2).mean()))
        assert rir.shape[1] >= int(0.9 * rt60 * SR)  # the response lasts about T60
    assert tails[0.3] > -80.0 and tails[0.8] > tails[0.3] + 6.0, tails  # longer T60: more energy left in the tail


def test_gain(wav):
    from asr.data.augment import apply_gain

    for db in (-10.0, 6.0):
        out = apply_gain(wav, db)
        assert torch.allclose(out, wav * 10 ** (db / 20), atol=1e-6)


ALL_ON = {
    "reverb": {"prob": 0.5, "rt60": [0.3, 0.8], "rooms": 4},
    "noise": {"prob": 0.5, "snr_db": [0, 20]},
    "band_limit": {"prob": 0.5},
    "gain": {"prob": 0.5},
}


def test_draws_are_keyed_on_seed_epoch_and_cut(wav):
    from asr.data.augment import WaveAugment

    a, b = WaveAugment(ALL_ON, seed=3), WaveAugment(ALL_ON, seed=3)
    random.seed(1)
    torch.manual_seed(1)
    plans = {(e, c): a.plan(e, c) for e in range(6) for c in ("u1", "u2", "u3")}
    random.seed(2)
    torch.manual_seed(2)  # the global RNGs play no part
    assert plans == {(e, c): b.plan(e, c) for e in range(6) for c in ("u1", "u2", "u3")}
    assert len(set(plans.values())) > 10  # epochs and cuts draw differently
    assert WaveAugment(ALL_ON, seed=4).plan(0, "u1") != a.plan(0, "u1") or WaveAugment(ALL_ON, seed=4).plan(1, "u1") != a.plan(1, "u1")
    kinds = {s[0] for p in plans.values() for s in p.steps}
    assert kinds == {"reverb", "noise", "band_limit", "gain"}
    for e, c in [(0, "u1"), (1, "u2"), (5, "u3")]:  # fresh objects (own room banks) give the same audio
        assert torch.equal(a(wav, e, c), WaveAugment(ALL_ON, seed=3)(wav, e, c))


def test_no_transform_before_start_epoch():
    from asr.data.augment import WaveAugment

    every = {k: {**v, "prob": 1.0} for k, v in ALL_ON.items()}
    late, early = WaveAugment({**every, "start_epoch": 3}, seed=3), WaveAugment(every, seed=3)
    for c in ("u1", "u2", "u3"):
        assert all(not late.plan(e, c) for e in range(3))
        assert all(late.plan(e, c) == early.plan(e, c) and early.plan(e, c) for e in range(3, 6))  # same draws after


def test_config_is_checked():
    from asr.data.augment import WaveAugmentConfig

    assert not WaveAugmentConfig.from_dict(None).active and WaveAugmentConfig.from_dict(ALL_ON).active
    for bad in ({"nois": {}}, {"noise": {"snr": [0, 1]}}, {"noise": {"prob": 1.5}}, {"gain": {"db": [6, -6]}},
                {"noise": {"colours": ["purple"]}}, {"band_limit": {"cutoff_hz": [300, 7000]}},
                {"start_epoch": -1}, {"start_epoch": 1.5}, {"start_epoch": True}):
        with pytest.raises(ValueError, match="wave_augment"):
            WaveAugmentConfig.from_dict(bad)


def test_channel_noise_config_selects_specaug_and_wave_augmentation():
    from hydra import compose, initialize_config_dir

    from asr.data.augment import WaveAugmentConfig
    from asr.utils.paths import CONF_DIR

    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        on = compose("train", overrides=["augment=channel_noise", "data.wave_augment.noise.prob=0.9"])
        off = compose("train")
    assert dict(on.augment) == dict(off.augment)  # SpecAugment as the default's
    assert off.data.wave_augment is None
    cfg = WaveAugmentConfig.from_dict(dict(on.data.wave_augment))
    assert cfg.noise.prob == 0.9 and cfg.reverb.rt60 == (0.3, 0.8) and cfg.band_limit.cutoff_hz == (3400, 7000)


def test_dataset_yields_augmented_batches_from_stored_features(mini_an4):
    """data.features=precomputed: cuts that draw a transform get fbank from the augmented audio, the others keep
    their stored fbank; the same (seed, epoch) gives the same batch."""
    from lhotse import CutSet

    from asr.data.lhotse_data import CutBatchDataset, load_cuts
    from asr.text.tokenizer import Tokenizer

    tok = Tokenizer.from_file(mini_an4 / "data/token/char.model")
    cuts = CutSet.from_cuts(list(load_cuts(mini_an4 / "dump/train_nodev/cuts.jsonl.gz")))
    assert all(c.has_features for c in cuts)
    plain = CutBatchDataset(tok)[(0, cuts)]
    zero = CutBatchDataset(tok, wave_augment={"noise": {"prob": 0.0}})
    assert zero.wave_augment is None and torch.equal(zero[(0, cuts)].feats, plain.feats)

    every = {"noise": {"prob": 1.0, "snr_db": [0, 5]}, "band_limit": {"prob": 1.0, "resample_8k": 1.0}}
    ds = CutBatchDataset(tok, seed=5, wave_augment=every)
    out = ds[(2, cuts)]
    assert out.ids == plain.ids and torch.equal(out.feat_lens, plain.feat_lens) and ds.failed == 0
    for k in range(len(out.ids)):
        n = int(out.feat_lens[k])
        a, p = out.feats[k, :n], plain.feats[k, :n]
        assert (a - p).abs().mean() > 0.5  # noisy: every utterance changed
        # band-limited through 8 kHz: the top mel bins (above 4 kHz) lose most of their energy relative to the rest
        assert (a[:, -10:].mean() - a[:, :20].mean()) < (p[:, -10:].mean() - p[:, :20].mean())
    again = CutBatchDataset(tok, seed=5, wave_augment=every)[(2, cuts)]
    assert torch.equal(again.feats, out.feats)
    assert not torch.equal(ds[(3, cuts)].feats, out.feats)  # another epoch, other noise

    half = CutBatchDataset(tok, seed=5, wave_augment={"gain": {"prob": 0.5, "db": [6, 6]}})
    drawn = {c.id: bool(half.wave_augment.plan(1, c.id)) for c in cuts}
    assert 0 < sum(drawn.values()) < len(drawn)
    b = half[(1, cuts)]
    for k, i in enumerate(b.ids):
        n = int(b.feat_lens[k])
        j = plain.ids.index(i)
        same = torch.equal(b.feats[k, :n], plain.feats[j, :n])
        assert same != drawn[i]


def test_datamodule_passes_augmentation_to_training_only(mini_an4):
    from asr.lightning.data import ASRDataModule
    from asr.text.tokenizer import Tokenizer

    tok = Tokenizer.from_file(mini_an4 / "data/token/char.model")
    dump = mini_an4 / "dump"
    every = {"noise": {"prob": 1.0, "snr_db": [0, 0]}}
    dm = ASRDataModule(dump / "train_nodev/cuts.jsonl.gz", dump / "train_dev/cuts.jsonl.gz", tok, batch_size=2, wave_augment=every)
    assert dm.train_dataloader().dataset.wave_augment is not None
    assert dm.val_dataloader().dataset.wave_augment is None
    with pytest.raises(ValueError, match="wave_augment"):
        ASRDataModule(dump / "train_nodev/cuts.jsonl.gz", dump / "train_dev/cuts.jsonl.gz", tok, wave_augment={"noise": {"prob": 2}})


def test_augmented_batches_repeat_after_a_mid_epoch_resume_and_in_workers(mini_an4):
    """What exact resume needs of the data: a sampler restored mid-epoch, in a fresh process-like state (new
    dataset, new room bank, DataLoader workers), yields the batches, augmented audio included, of an
    uninterrupted epoch."""
    from torch.utils.data import DataLoader

    from asr.data.lhotse_data import CutBatchDataset, load_cuts, make_sampler
    from asr.text.tokenizer import Tokenizer

    tok = Tokenizer.from_file(mini_an4 / "data/token/char.model")
    cuts = mini_an4 / "dump/train_nodev/cuts.jsonl.gz"
    aug = {**ALL_ON, "noise": {"prob": 0.7}, "reverb": {"prob": 0.5, "rooms": 2}}

    def sampler():
        s = make_sampler(load_cuts(cuts), batch_size=2, seed=1, num_buckets=1)
        s.set_epoch(3)
        return s

    ds = CutBatchDataset(tok, speeds=[0.9, 1.0, 1.1], seed=7, wave_augment=aug)
    assert sum(bool(ds.wave_augment.plan(3, c.id)) for c in load_cuts(cuts)) >= 3
    full = [ds[item] for item in sampler()]
    s = sampler()
    it = iter(s)
    first = ds[next(it)]
    state = s.state_dict()
    resumed = sampler()
    resumed.load_state_dict(state)
    fresh = CutBatchDataset(tok, speeds=[0.9, 1.0, 1.1], seed=7, wave_augment=aug)
    rest = [fresh[item] for item in resumed]
    assert [b.ids for b in [first, *rest]] == [b.ids for b in full]
    for a, b in zip([first, *rest], full):
        assert torch.equal(a.feats, b.feats)
    workers = list(DataLoader(CutBatchDataset(tok, speeds=[0.9, 1.0, 1.1], seed=7, wave_augment=aug), sampler=sampler(), batch_size=None, num_workers=2))
    for a, b in zip(workers, full):
        assert a.ids == b.ids and torch.equal(a.feats, b.feats)
