"""Tests for asr.data.datadir (Kaldi/ESPnet data directories)."""

from __future__ import annotations

from pathlib import Path

import pytest

from asr.data.datadir import DataDirError, Utterance, read_data_dir, write_data_dir

FILES = ("wav.scp", "text", "utt2spk", "spk2utt", "utt2dur")


def _utts(root: Path) -> list[Utterance]:
    return [
        Utterance("spkB-u2", str(root / "b2.wav"), "HELLO WORLD", "spkB", 1.23456),
        Utterance("spkA-u1", str(root / "a1.wav"), "YES", "spkA", 0.5),
        Utterance("spkB-u1", str(root / "b1.wav"), "NO", "spkB", 2.0),
        Utterance("spkA-U9", str(root / "a9.wav"), "", "spkA", 0.0),  # upper case sorts first in C locale
    ]


def test_round_trip(tmp_path):
    utts = _utts(tmp_path)
    out = write_data_dir(utts, tmp_path / "d")
    assert out == tmp_path / "d"
    for name in FILES:
        assert (out / name).is_file()
    back = read_data_dir(out)
    expected = sorted(utts, key=lambda u: u.utt_id)
    assert [u.utt_id for u in back] == [u.utt_id for u in expected]
    for got, want in zip(back, expected):
        assert got.wav == want.wav
        assert got.text == want.text
        assert got.speaker == want.speaker
        assert got.duration == pytest.approx(round(want.duration, 3))
    assert (out / "utt2dur").read_text().splitlines()[-1] == "spkB-u2 1.235"


def test_sorted_byte_order(tmp_path):
    out = write_data_dir(_utts(tmp_path), tmp_path / "d")
    ids = [line.split()[0] for line in (out / "wav.scp").read_text().splitlines()]
    assert ids == ["spkA-U9", "spkA-u1", "spkB-u1", "spkB-u2"]
    for name in ("text", "utt2spk", "utt2dur"):
        assert [line.split()[0] for line in (out / name).read_text().splitlines()] == ids
    assert (out / "spk2utt").read_text() == "spkA spkA-U9 spkA-u1\nspkB spkB-u1 spkB-u2\n"
    assert (out / "text").read_text().splitlines()[0] == "spkA-U9"  # empty transcript: id only
    assert not list(out.glob(".*tmp"))  # no temp files left behind


def test_duplicate_id_on_write(tmp_path):
    utts = _utts(tmp_path)
    utts.append(Utterance("spkA-u1", "/x.wav", "AGAIN", "spkA", 1.0))
    with pytest.raises(DataDirError, match="spkA-u1"):
        write_data_dir(utts, tmp_path / "d")
    assert not (tmp_path / "d" / "wav.scp").exists()


def test_whitespace_in_id_rejected(tmp_path):
    with pytest.raises(DataDirError):
        write_data_dir([Utterance("a b", "/x.wav", "X", "a", 1.0)], tmp_path / "d")


def test_duplicate_id_on_read(tmp_path):
    out = write_data_dir(_utts(tmp_path), tmp_path / "d")
    with open(out / "text", "a") as f:
        f.write("spkA-u1 AGAIN\n")
    with pytest.raises(DataDirError, match=r"text:5: .*duplicate") as ei:
        read_data_dir(out)
    assert ei.value.line == 5


def test_id_missing_from_wav_scp(tmp_path):
    out = write_data_dir(_utts(tmp_path), tmp_path / "d")
    lines = (out / "wav.scp").read_text().splitlines()
    (out / "wav.scp").write_text("\n".join(l for l in lines if not l.startswith("spkB-u1 ")) + "\n")
    with pytest.raises(DataDirError, match="spkB-u1") as ei:
        read_data_dir(out)
    assert Path(ei.value.path).name == "wav.scp"


def test_id_missing_from_text(tmp_path):
    out = write_data_dir(_utts(tmp_path), tmp_path / "d")
    lines = (out / "text").read_text().splitlines()
    (out / "text").write_text("\n".join(l for l in lines if not l.startswith("spkA-u1 ")) + "\n")
    with pytest.raises(DataDirError, match="spkA-u1") as ei:
        read_data_dir(out)
    assert Path(ei.value.path).name == "text"


def test_malformed_line(tmp_path):
    out = write_data_dir(_utts(tmp_path), tmp_path / "d")
    (out / "utt2spk").write_text((out / "utt2spk").read_text() + "spkC-u1\n")
    with pytest.raises(DataDirError, match=r"utt2spk:5"):
        read_data_dir(out)


def test_bad_duration(tmp_path):
    out = write_data_dir(_utts(tmp_path), tmp_path / "d")
    (out / "utt2dur").write_text((out / "utt2dur").read_text().replace("0.500", "abc"))
    with pytest.raises(DataDirError, match="utt2dur"):
        read_data_dir(out)


def test_missing_utt2dur_gives_zero(tmp_path):
    out = write_data_dir(_utts(tmp_path), tmp_path / "d")
    (out / "utt2dur").unlink()
    assert all(u.duration == 0.0 for u in read_data_dir(out))


def test_relative_paths_resolved_against_data_dir(tmp_path):
    d = tmp_path / "data" / "train"
    write_data_dir([Utterance("s-1", "../../audio/s1.wav", "HI", "s", 1.0),
                    Utterance("s-2", "s2.wav", "HO", "s", 1.0),
                    Utterance("s-3", "sox x.wav -t wav - |", "HU", "s", 1.0)], d)
    back = read_data_dir(d)
    assert back[0].wav == str(tmp_path / "audio" / "s1.wav")
    assert back[1].wav == str(d / "s2.wav")
    assert back[2].wav == "sox x.wav -t wav - |"


def test_missing_dir(tmp_path):
    with pytest.raises(DataDirError, match="nowhere"):
        read_data_dir(tmp_path / "nowhere")
