"""Tests for asr.data.an4 (AN4 -> Kaldi data directories)."""

from __future__ import annotations

import csv
import os
import shutil
from pathlib import Path

import pytest
import soundfile as sf

from asr.data.an4 import DataPrepError, main, make_utt_id, normalize_transcript, prepare_an4
from asr.data.datadir import read_data_dir

AN4 = Path(__file__).parent / "data" / "an4"


def _bad_rows(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f, delimiter="\t"))


def test_helpers():
    assert make_utt_id("an251-fash-b", "fash") == "fash-an251-b"
    assert make_utt_id("cen1-flmm2-b", "flmm2") == "flmm2-cen1-b"
    assert normalize_transcript("<s>  RUBOUT  G </s>") == "RUBOUT G"
    assert normalize_transcript("<s> </s>") == ""


def test_mini_corpus(tmp_path):
    out = tmp_path / "data"
    reports = prepare_an4(AN4, out, dev_size=2, progress=False)
    assert {k: r.n_kept for k, r in reports.items()} == {"train_nodev": 6, "train_dev": 2, "test": 2}
    assert all(r.n_skipped == 0 and not r.bad for r in reports.values())
    for split in ("train_nodev", "train_dev", "test"):
        for name in ("wav.scp", "text", "utt2spk", "spk2utt", "utt2dur", "bad_utts.tsv"):
            assert (out / split / name).is_file(), (split, name)
        assert _bad_rows(out / split / "bad_utts.tsv") == []
    dev = read_data_dir(out / "train_dev")
    nodev = read_data_dir(out / "train_nodev")
    test = read_data_dir(out / "test")
    # ESPnet: first dev_size good train utterances by id go to train_dev
    all_train = sorted(u.utt_id for u in dev + nodev)
    assert [u.utt_id for u in dev] == all_train[:2] == ["fmjc-an120-b", "mbmg-an270-b"]
    assert [u.utt_id for u in test] == ["fjlp-an419-b", "miry-cen6-b"]
    by_id = {u.utt_id: u for u in dev + nodev + test}
    assert by_id["fmjc-an120-b"].text == "RUBOUT Y Y F X ZERO"
    assert by_id["fjlp-an419-b"].text == "J P E G FOUR"
    assert by_id["mrab-cen1-b"].speaker == "mrab"
    for u in by_id.values():
        assert Path(u.wav).is_absolute() and Path(u.wav).is_file()
        assert u.duration == pytest.approx(sf.info(u.wav).duration, abs=1e-3)
        assert u.duration > 0


def _fake_corpus(root: Path) -> Path:
    """Copy of the mini corpus with problems: .sph audio, missing audio, empty transcript, orphan transcript."""
    corpus = root / "an4"
    shutil.copytree(AN4, corpus)
    train = corpus / "wav" / "an4_clstk"
    # two utterances as NIST SPHERE instead of WAV
    for spk, name in (("mbmg", "an270-mbmg-b"), ("mrab", "cen1-mrab-b")):
        wav = train / spk / f"{name}.wav"
        data, sr = sf.read(str(wav), dtype="int16")
        sf.write(str(wav.with_suffix(".sph")), data, sr, format="NIST", subtype="PCM_16")
        wav.unlink()
    # missing audio
    (train / "meht" / "cen8-meht-b.wav").unlink()
    # empty transcript, and a transcript with no fileid
    trans = corpus / "etc" / "an4_train.transcription"
    text = trans.read_text().replace("<s> ONE ELEVEN </s> (cen3-mmtm-b)", "<s> </s> (cen3-mmtm-b)")
    trans.write_text(text + "<s> GHOST WORDS </s> (an999-zzzz-b)\n")
    return corpus


def test_fake_corpus_problems_reported(tmp_path):
    corpus = _fake_corpus(tmp_path)
    out = tmp_path / "data"
    reports = prepare_an4(corpus, out, dev_size=2, max_bad_fraction=0.5, progress=False)
    # 8 train fileids: 2 bad (missing audio, empty transcript) + 1 orphan transcript
    assert reports["train_nodev"].n_kept + reports["train_dev"].n_kept == 6
    assert reports["train_dev"].n_kept == 2 and reports["train_nodev"].n_kept == 4
    assert reports["test"].n_kept == 2 and reports["test"].n_skipped == 0
    rep = reports["train_nodev"]
    assert rep.n_skipped == 3
    assert dict(rep.reasons) == {"missing audio": 1, "empty transcript": 1, "no fileid": 1}
    rows = _bad_rows(out / "train_nodev" / "bad_utts.tsv")
    assert {(r["utt_id"], r["reason"]) for r in rows} == {
        ("meht-cen8-b", "missing audio"),
        ("mmtm-cen3-b", "empty transcript"),
        ("zzzz-an999-b", "no fileid"),
    }
    assert all(r["file"] for r in rows)
    kept = read_data_dir(out / "train_dev") + read_data_dir(out / "train_nodev")
    ids = {u.utt_id for u in kept}
    assert ids == {"fmjc-an120-b", "mbmg-an270-b", "mjes-cen6-b", "mmal-an323-b", "mnfe-cen2-b", "mrab-cen1-b"}
    sph = [u for u in kept if u.wav.endswith(".sph")]
    assert {u.utt_id for u in sph} == {"mbmg-an270-b", "mrab-cen1-b"}
    assert all(u.duration > 0 for u in kept)


def test_fake_corpus_threshold(tmp_path, capsys):
    corpus = _fake_corpus(tmp_path)
    out = tmp_path / "data"
    with pytest.raises(DataPrepError, match=r"train: 3 of 9") as ei:
        prepare_an4(corpus, out, dev_size=2, max_bad_fraction=0.01, progress=False)
    assert "bad_utts.tsv" in str(ei.value)
    # reports are written before raising
    assert len(_bad_rows(out / "train_nodev" / "bad_utts.tsv")) == 3
    # the console script turns it into exit code 1
    rc = main([f"corpus_dir={corpus}", f"out_dir={out}", "dev_size=2", "max_bad_fraction=0.01", "progress=false"])
    assert rc == 1
    assert "too many bad utterances" in capsys.readouterr().err


def test_unreadable_audio_and_malformed_line(tmp_path):
    corpus = tmp_path / "an4"
    shutil.copytree(AN4, corpus)
    (corpus / "wav" / "an4test_clstk" / "miry" / "cen6-miry-b.wav").write_text("not audio")
    trans = corpus / "etc" / "an4_test.transcription"
    trans.write_text(trans.read_text() + "THIS LINE HAS NO ID\n")
    reports = prepare_an4(corpus, tmp_path / "data", dev_size=2, max_bad_fraction=1.0, progress=False)
    assert reports["test"].n_kept == 1
    assert dict(reports["test"].reasons) == {"unreadable audio": 1, "malformed transcript line": 1}


def test_main_cli(tmp_path):
    out = tmp_path / "data"
    assert main([f"corpus_dir={AN4}", f"out_dir={out}", "dev_size=2", "progress=false"]) == 0
    assert len(read_data_dir(out / "train_nodev")) == 6
    assert main([f"corpus_dir={tmp_path / 'missing'}", f"out_dir={out}"]) == 1
    assert main(["bogus=1", f"corpus_dir={AN4}"]) == 2


@pytest.mark.an4
@pytest.mark.skipif(not os.environ.get("AN4_ROOT") or not Path(os.environ["AN4_ROOT"]).is_dir(),
                    reason="AN4_ROOT not set to the real AN4 corpus")
def test_real_corpus(tmp_path):
    reports = prepare_an4(os.environ["AN4_ROOT"], tmp_path / "data", progress=False)
    assert {k: r.n_kept for k, r in reports.items()} == {"train_nodev": 848, "train_dev": 100, "test": 130}
    assert all(r.n_skipped == 0 for r in reports.values())
    test = read_data_dir(tmp_path / "data" / "test")
    assert test[0].utt_id == "fcaw-an406-b" and test[0].text == "RUBOUT G M E F THREE NINE"
