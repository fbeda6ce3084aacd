"""Any corpus in (issue 29): asr-prepare from Kaldi data dirs (with and without segments), lhotse manifests and lhotse
recipes; stored and on-the-fly fbank; bad entries skipped and counted, never fatal for one utterance."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
import soundfile as sf
import torch

from asr.data.datadir import Utterance, read_data_dir, write_data_dir


def test_kaldi_dir_to_cuts_skips_and_reports_missing_audio(mini_an4, tmp_path, caplog):
    from asr.cli.prepare import prepare_main
    from asr.data.lhotse_data import load_cuts

    utts = read_data_dir(mini_an4 / "data/train_nodev")
    bad = Utterance("zz-missing-1", str(tmp_path / "nowhere.wav"), "HELLO", "zz", 1.0)
    write_data_dir([*utts, bad], tmp_path / "in/train")
    with caplog.at_level(logging.WARNING):
        assert prepare_main(["source=kaldi", f"in_dir={tmp_path / 'in'}", f"out_dir={tmp_path / 'out'}", "splits=[train]", "max_bad_fraction=0.5"]) == 0
    cuts = load_cuts(tmp_path / "out/train/cuts.jsonl.gz", lazy=False)
    assert sorted(c.id for c in cuts) == sorted(u.utt_id for u in utts)
    assert {c.id: c.supervisions[0].text for c in cuts} == {u.utt_id: u.text for u in utts}
    report = (tmp_path / "out/train/bad_utts.tsv").read_text()
    assert "zz-missing-1" in report and "1 of 7 utterances skipped" in caplog.text
    # the Kaldi data dir written beside the cuts is the one decoding reads
    assert [u.utt_id for u in read_data_dir(tmp_path / "out/train")] == sorted(u.utt_id for u in utts)
    # too many bad entries: the split fails, naming the counts
    with pytest.raises(Exception, match="1 of 7 utterances unusable"):
        prepare_main(["source=kaldi", f"in_dir={tmp_path / 'in'}", f"out_dir={tmp_path / 'out2'}", "splits=[train]", "max_bad_fraction=0.0"])


def test_kaldi_dir_with_segments_cuts_each_segment(mini_an4, tmp_path):
    """A recording of two AN4 utterances back to back, described by a segments file: two cuts whose fbank is that of
    the corresponding stretch of audio."""
    from asr.data.lhotse_data import cuts_from_data_dir, cut_fbank, cut_waveform
    from asr.features.audio import load_audio
    from asr.features.fbank import FbankOptions, compute_fbank

    utts = read_data_dir(mini_an4 / "data/train_nodev")[:2]
    a, b = (load_audio(u.wav, 16000) for u in utts)
    d = tmp_path / "seg"
    d.mkdir()
    sf.write(d / "rec.flac", torch.cat([a, b]).numpy(), 16000)
    ta, tb = a.numel() / 16000, (a.numel() + b.numel()) / 16000
    (d / "wav.scp").write_text("rec1 rec.flac\n")
    (d / "segments").write_text(f"spk-u1 rec1 0.0 {ta}\nspk-u2 rec1 {ta} {tb}\nspk-u3 rec1 5.0 4.0\n")
    (d / "text").write_text(f"spk-u1 {utts[0].text}\nspk-u2 {utts[1].text}\nspk-u3 X\n")
    (d / "utt2spk").write_text("spk-u1 spk\nspk-u2 spk\nspk-u3 spk\n")
    cuts, skipped = cuts_from_data_dir(d, max_bad_fraction=0.5)
    assert [c.id for c in cuts] == ["spk-u1", "spk-u2"] and [s.utt_id for s in skipped] == ["spk-u3"]
    assert "bad segment times" in skipped[0].reason
    c2 = cuts["spk-u2"]
    assert abs(c2.start - ta) < 1e-6 and abs(c2.duration - b.numel() / 16000) < 1e-3
    wav = cut_waveform(c2, 16000)
    assert abs(wav.numel() - b.numel()) <= 1 and torch.allclose(wav[: b.numel() - 1], b[: wav.numel()][: b.numel() - 1], atol=1e-4)
    x = cut_fbank(c2, FbankOptions())
    ref = compute_fbank(b)
    assert abs(x.shape[0] - ref.shape[0]) <= 1
    n = min(x.shape[0], ref.shape[0])
    assert (x[:n] - ref[:n]).abs().mean() < 1e-2


def test_lhotse_manifests_in(mini_an4, tmp_path):
    """source=lhotse: recordings + supervisions manifests named as lhotse recipes name them; a supervision whose
    audio file is gone is skipped and reported."""
    from lhotse import RecordingSet, SupervisionSet

    from asr.cli.prepare import prepare_main
    from asr.data.lhotse_data import cuts_from_data_dir, load_cuts

    cuts, _ = cuts_from_data_dir(mini_an4 / "data/train_nodev")
    recs = RecordingSet.from_recordings(c.recording for c in cuts)
    first = next(iter(recs)).id
    recs = RecordingSet.from_recordings([_moved(r, tmp_path / "gone.wav") if r.id == first else r for r in recs])
    sups = SupervisionSet.from_segments(s for c in cuts for s in c.supervisions)
    m = tmp_path / "manifests"
    m.mkdir()
    recs.to_file(m / "mycorpus_recordings_train.jsonl.gz")
    sups.to_file(m / "mycorpus_supervisions_train.jsonl.gz")
    assert prepare_main(["source=lhotse", f"in_dir={m}", f"out_dir={tmp_path / 'out'}", "splits=[train]", "max_bad_fraction=0.5"]) == 0
    out = load_cuts(tmp_path / "out/train/cuts.jsonl.gz", lazy=False)
    assert len(out) == len(cuts) - 1
    assert "audio file not found" in (tmp_path / "out/train/bad_utts.tsv").read_text()
    with pytest.raises(SystemExit, match="no cuts, or recordings"):
        prepare_main(["source=lhotse", f"in_dir={m}", f"out_dir={tmp_path / 'out'}", "splits=[dev]"])


def _moved(rec, path: Path):
    from lhotse import AudioSource

    return rec.__class__(id=rec.id, sources=[AudioSource(type="file", channels=[0], source=str(path))], sampling_rate=rec.sampling_rate,
                         num_samples=rec.num_samples, duration=rec.duration, channel_ids=rec.channel_ids)


def test_unknown_lhotse_recipe_lists_the_known_ones(tmp_path):
    from asr.cli.prepare import prepare_main

    with pytest.raises(SystemExit, match="no lhotse recipe 'nosuchcorpus'.*librispeech"):
        prepare_main(["source=recipe", "recipe=nosuchcorpus", f"corpus_dir={tmp_path}", f"out_dir={tmp_path / 'o'}"])


def test_stored_features_equal_computed_and_bad_audio_is_left_out(mini_an4, tmp_path, caplog):
    """Stage 2 on a manifest with one unreadable file: the others are stored (lilcom: within half a tick, 2^-6, of the
    fbank decoding computes), the bad one is listed in bad_cuts.tsv, CMVN covers exactly the stored frames."""
    from asr.data.lhotse_data import CMVNAccumulator, cut_fbank, cuts_from_data_dir, load_cuts, store_features, write_split
    from asr.features.fbank import FbankOptions, compute_cmvn_stats

    cuts, _ = cuts_from_data_dir(mini_an4 / "data/train_nodev")
    junk = tmp_path / "junk.wav"
    junk.write_bytes(b"RIFF\x00\x00\x00\x00WAVEjunk")
    bad = _moved(cuts[0].recording, junk)
    from lhotse import CutSet

    broken = cuts[0].with_id("zz-broken")
    broken.recording = bad
    write_split(CutSet.from_cuts([*cuts, broken]), tmp_path / "data/train")
    with caplog.at_level(logging.WARNING):
        acc, skipped = store_features(tmp_path / "data/train/cuts.jsonl.gz", tmp_path / "dump/train", FbankOptions(), num_jobs=2)
    assert [s.utt_id for s in skipped] == ["zz-broken"] and "zz-broken" in (tmp_path / "dump/train/bad_cuts.tsv").read_text()
    stored = load_cuts(tmp_path / "dump/train/cuts.jsonl.gz", lazy=False)
    assert sorted(c.id for c in stored) == sorted(c.id for c in cuts)
    feats = {}
    for c in stored:
        x, ref = cut_fbank(c, FbankOptions()), cut_fbank(c.drop_features(), FbankOptions())
        assert x.shape == ref.shape and (x - ref).abs().max() <= 2 ** -6 + 1e-6
        feats[c.id] = ref
    want = compute_cmvn_stats(feats)
    got = acc.stats()
    assert int(got["count"]) == int(want["count"])
    torch.testing.assert_close(got["mean"], want["mean"], rtol=1e-5, atol=1e-5)
    assert isinstance(acc, CMVNAccumulator)


def test_on_the_fly_batches_skip_an_unreadable_file(mini_an4, tmp_path, caplog):
    from lhotse import CutSet

    from asr.data.lhotse_data import CutBatchDataset, cuts_from_data_dir
    from asr.text.tokenizer import Tokenizer

    tok = Tokenizer.from_file(str(mini_an4 / "data/token/char.model"))
    cuts, _ = cuts_from_data_dir(mini_an4 / "data/train_nodev")
    gone = cuts[1].with_id("zz-gone")
    gone.recording = _moved(cuts[1].recording, tmp_path / "deleted.wav")
    ds = CutBatchDataset(tok)
    with caplog.at_level(logging.WARNING):
        batch = ds[(0, CutSet.from_cuts([cuts[0], gone, cuts[2]]))]
    assert sorted(batch.ids) == sorted([cuts[0].id, cuts[2].id]) and ds.failed == 1
    assert "zz-gone" in caplog.text and "deleted.wav" in caplog.text
    assert ds[(0, CutSet.from_cuts([gone]))] is None  # nothing left: the training step skips the batch
    # rows are padded, longest first, tokens of the supervision text
    assert batch.feat_lens.tolist() == sorted(batch.feat_lens.tolist(), reverse=True)
    assert batch.tokens.shape[0] == 2 and batch.texts[0] in {cuts[0].supervisions[0].text, cuts[2].supervisions[0].text}


def test_train_on_the_fly_features(mini_an4, tmp_path):
    """data.features=on_the_fly trains from data/<split>/cuts.jsonl.gz (no stored fbank needed)."""
    from test_train import TINY, _cfg

    from asr.cli.train import train

    summary = train(_cfg(mini_an4, tmp_path / "exp", [*TINY, "trainer.max_epochs=1", "data.batch_size=3", "data.features=on_the_fly", "data.speed_perturb=[]"]))
    assert summary["epochs"] == 1 and (tmp_path / "exp/checkpoints/last.ckpt").is_file()
    with pytest.raises(ValueError, match="data.features must be precomputed or on_the_fly"):
        train(_cfg(mini_an4, tmp_path / "exp2", [*TINY, "data.features=lilcom"]))
