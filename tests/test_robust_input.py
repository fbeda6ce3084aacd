"""Bad input, end to end: broken audio, odd transcripts, inconsistent data dirs, hostile utterance ids.

Each test pins one documented behaviour (README "Robustness"). Bad files are generated in ``tmp_path``;
the only shipped data are the 10 AN4 utterances of tests/data/an4.
"""

from __future__ import annotations

import json
import logging
import math
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

from asr.data.datadir import DataDirError, Utterance, check_data_dir, read_data_dir, write_data_dir
from asr.features.audio import AudioError, load_audio
from asr.features.fbank import FbankOptions, compute_fbank

AN4 = Path(__file__).parent / "data" / "an4"
WAVS = sorted((AN4 / "wav").rglob("*.wav"))
GOOD_WAV = AN4 / "wav" / "an4_clstk" / "fmjc" / "an120-fmjc-b.wav"


def _tone(sr: int, seconds: float, amp: float = 0.3) -> np.ndarray:
    t = np.arange(int(sr * seconds)) / sr
    return (amp * np.sin(2 * np.pi * 440.0 * t)).astype(np.float32)


# ------------------------------------------------------------------------------------------------ audio


def test_truncated_wav_data_loads_what_is_there(tmp_path):
    data = (tmp_path / "full.wav")
    sf.write(str(data), _tone(16000, 1.0), 16000, subtype="PCM_16")
    raw = data.read_bytes()
    cut = tmp_path / "cut.wav"
    cut.write_bytes(raw[: 44 + 2 * 4000])  # header + 4000 of the 16000 samples
    wav = load_audio(cut)
    assert wav.numel() == 4000 and torch.isfinite(wav).all()


def test_truncated_wav_header_is_an_error(tmp_path):
    sf.write(str(tmp_path / "full.wav"), _tone(16000, 0.1), 16000, subtype="PCM_16")
    cut = tmp_path / "cut_header.wav"
    cut.write_bytes((tmp_path / "full.wav").read_bytes()[:20])
    with pytest.raises(AudioError, match="cut_header.wav"):
        load_audio(cut)


def test_zero_byte_file_is_an_error(tmp_path):
    p = tmp_path / "zero.wav"
    p.write_bytes(b"")
    with pytest.raises(AudioError, match="zero.wav"):
        load_audio(p)


def test_random_binary_is_not_audio(tmp_path):
    p = tmp_path / "noise.flac"
    p.write_bytes(np.random.default_rng(0).integers(0, 256, 5000, dtype=np.uint8).tobytes())
    with pytest.raises(AudioError, match="noise.flac"):
        load_audio(p)


def test_digital_silence_gives_finite_fbank(tmp_path):
    p = tmp_path / "silence.wav"
    sf.write(str(p), np.zeros(16000, dtype=np.int16), 16000, subtype="PCM_16")
    wav = load_audio(p)
    assert wav.numel() == 16000 and float(wav.abs().max()) == 0.0
    feats = compute_fbank(wav, FbankOptions(dither=0.0))
    assert feats.shape == (98, 80) and torch.isfinite(feats).all()
    # Kaldi floors the mel energies at FLT_EPSILON: every bin is log(FLT_EPSILON)
    assert torch.allclose(feats, torch.full_like(feats, math.log(np.finfo(np.float32).eps)), atol=1e-4)


@pytest.mark.parametrize("bad", [np.inf, -np.inf, np.nan])
def test_non_finite_samples_name_the_file(tmp_path, bad):
    p = tmp_path / "nonfinite.wav"
    x = _tone(16000, 0.1)
    x[100] = bad
    sf.write(str(p), x, 16000, subtype="FLOAT")
    with pytest.raises(AudioError, match="nonfinite.wav.*NaN or infinite"):
        load_audio(p)


def test_odd_sample_rate_is_resampled_quickly(tmp_path, monkeypatch):
    # 44101 Hz is co-prime with 16 kHz: torchaudio's sinc kernel (a 16000 x 44101 filter bank) would take
    # minutes; such rate pairs go to the FFT resampler. Checked by refusing the sinc path, not by a timer.
    import torchaudio.functional as taf

    def no_sinc(*a, **k):
        raise AssertionError("the sinc resampler must not be used for co-prime rates")

    monkeypatch.setattr(taf, "resample", no_sinc)
    p = tmp_path / "odd.wav"
    sf.write(str(p), _tone(44101, 2.0), 44101, subtype="PCM_16")
    wav = load_audio(p)
    assert wav.numel() == math.ceil(2 * 44101 * 16000 / 44101)
    spec = np.abs(np.fft.rfft(wav.numpy()))
    assert abs(np.fft.rfftfreq(wav.numel(), 1 / 16000)[spec.argmax()] - 440) < 2


@pytest.mark.parametrize("sr", [1000, 500000])
def test_absurd_sample_rate_is_an_error(tmp_path, sr):
    p = tmp_path / f"sr{sr}.wav"
    sf.write(str(p), _tone(sr, 0.05), sr, subtype="PCM_16")
    with pytest.raises(AudioError, match=f"sr{sr}.wav.*unsupported sample rate"):
        load_audio(p)


# ------------------------------------------------------------------------------------------------ text


@pytest.fixture(scope="module")
def char_tok(tmp_path_factory):
    from asr.text.tokenizer import Tokenizer

    d = tmp_path_factory.mktemp("tok")
    return Tokenizer.train(["HELLO WORLD", "YES NO", "ONE TWO THREE"], d / "char", kind="char")


def test_tokenizer_whitespace_normalised_and_empty(char_tok):
    assert char_tok.encode("YES  NO\t \t") == char_tok.encode("YES NO")
    assert char_tok.encode(" \t ") == [] and char_tok.encode("") == []


def test_tokenizer_unknown_chars_map_to_unk_and_are_listed(char_tok):
    ids = char_tok.encode("YÉS NO€")
    assert ids.count(char_tok.unk_id) == 2
    assert char_tok.unknown_chars("YÉS NO€") == ["É", "€"]
    assert char_tok.unknown_chars("YES NO") == []


def _dir(tmp_path: Path, n: int = 4, texts: dict[str, str] | None = None) -> Path:
    utts = [Utterance(f"spk-u{i:02d}", f"u{i:02d}.wav", (texts or {}).get(f"spk-u{i:02d}", "YES NO"), "spk", 1.0) for i in range(n)]
    return write_data_dir(utts, tmp_path / "d")


def test_load_split_counts_unknown_chars_and_empty_transcripts(tmp_path, char_tok, caplog):
    from asr.data.dataset import load_split, report_text_problems

    d = _dir(tmp_path, texts={"spk-u01": "YÉS", "spk-u02": "", "spk-u03": "N€ N€"})
    with caplog.at_level(logging.WARNING):
        ds = load_split(d, None, char_tok)
    assert len(ds) == 4 and ds.utts[2].text == ""
    msg = caplog.text
    assert "2 of 4 utterances have 3 character(s) unknown to the tokenizer" in msg
    assert "spk-u01" in msg and "spk-u03" in msg and "'€' x2" in msg
    assert "1 utterance(s) with an empty transcript, e.g. spk-u02" in msg
    assert report_text_problems(ds.utts, char_tok) == {"unk_utts": 2, "unk_chars": 3, "empty": 1}


def test_transcript_trailing_spaces_and_tabs_normalised(tmp_path):
    d = _dir(tmp_path)
    lines = (d / "text").read_text().splitlines()
    lines[0] = lines[0].replace("YES NO", "YES \t NO \t ")
    lines[1] = lines[1].replace(" YES NO", "\tYES NO\r")
    (d / "text").write_text("\n".join(lines) + "\n")
    assert [u.text for u in read_data_dir(d)] == ["YES NO"] * 4


def test_non_utf8_transcript_line_skipped_with_file_and_line(tmp_path, caplog):
    d = _dir(tmp_path, n=30)
    raw = (d / "text").read_bytes().split(b"\n")
    raw[4] = raw[4].replace(b"YES", b"Y\xffS")
    (d / "text").write_bytes(b"\n".join(raw))
    with caplog.at_level(logging.WARNING):
        utts, skipped = check_data_dir(d, max_bad_fraction=0.05)
    assert len(utts) == 29
    assert [(s.utt_id, Path(s.file.rsplit(":", 1)[0]).name, s.file.rsplit(":", 1)[1]) for s in skipped] == [("spk-u04", "text", "5")]
    assert "not valid UTF-8" in skipped[0].reason and "0xff" in skipped[0].reason
    assert "29 utterances kept, 1 skipped" in caplog.text
    with pytest.raises(DataDirError, match=r"text:5: not valid UTF-8") as ei:
        read_data_dir(d, max_bad_fraction=0.0)
    assert ei.value.line == 5


def test_non_utf8_trn_line_names_file_and_line(tmp_path):
    from asr.metrics.wer import read_trn

    p = tmp_path / "hyp.trn"
    p.write_bytes(b"YES (a)\nN\xc3O (b)\n")
    with pytest.raises(ValueError, match=r"hyp.trn:2: not valid UTF-8"):
        read_trn(p)
    p.write_bytes(b"YES \t (a)\t \r\nNO  NO (b)\n")
    assert read_trn(p) == {"a": "YES", "b": "NO NO"}


def _fake_an4(root: Path, train_lines: list[bytes], fileids: list[str]) -> Path:
    (root / "etc").mkdir(parents=True)
    for part in ("train", "test"):
        (root / "etc" / f"an4_{part}.fileids").write_text("\n".join(fileids) + "\n")
        (root / "etc" / f"an4_{part}.transcription").write_bytes(b"\n".join(train_lines) + b"\n")
    for f in fileids:
        (root / "wav" / f).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(GOOD_WAV, root / "wav" / f"{f}.wav")
    return root


def test_an4_non_utf8_and_dotdot_lines_skipped_and_reported(tmp_path):
    from asr.data.an4 import MALFORMED_FILEID, NOT_UTF8, DataPrepError, prepare_an4

    ids = [f"an4_clstk/spk{i}/an{i}-spk{i}-b" for i in range(4)]
    lines = [f"<s> YES \t NO </s> \t (an{i}-spk{i}-b)  ".encode() for i in range(4)]
    lines[1] = b"<s> Y\xe9S </s> (an1-spk1-b)"  # latin-1, not UTF-8
    corpus = _fake_an4(tmp_path / "an4", lines, ids + ["an4_clstk/../../../etc/passwd"])
    with pytest.raises(DataPrepError, match="too many bad utterances"):
        prepare_an4(corpus, tmp_path / "data", dev_size=0, max_bad_fraction=0.2, progress=False)
    reports = prepare_an4(corpus, tmp_path / "data", dev_size=0, max_bad_fraction=0.6, progress=False)
    rep = reports["train_nodev"]
    assert rep.n_kept == 3
    assert rep.reasons[NOT_UTF8] == 1 and rep.reasons[MALFORMED_FILEID] == 1
    tsv = rep.report_path.read_text()
    assert "an4_train.transcription:2" in tsv and "0xe9" in tsv and "passwd" in tsv
    texts = read_data_dir(tmp_path / "data" / "train_nodev")
    assert {u.text for u in texts} == {"YES NO"}  # tabs and trailing spaces normalised


# ------------------------------------------------------------------------------------------------ manifests


def test_duplicate_ids_skipped_and_reported_within_limit(tmp_path, caplog):
    d = _dir(tmp_path, n=30)
    with open(d / "wav.scp", "a") as f:
        f.write("spk-u07 other.wav\n")
    report = tmp_path / "skipped.tsv"
    with caplog.at_level(logging.WARNING):
        utts = read_data_dir(d, max_bad_fraction=0.05, report=report)
    assert len(utts) == 29 and "spk-u07" not in {u.utt_id for u in utts}  # both lines dropped: which is right?
    rows = report.read_text().splitlines()
    assert rows[0] == "utt_id\tfile\treason"
    uid, file, reason = rows[1].split("\t")
    assert uid == "spk-u07" and file.endswith("wav.scp:31") and "duplicate id (first on line 8)" in reason
    assert "29 utterances kept, 1 skipped" in caplog.text
    with pytest.raises(DataDirError, match=r"wav.scp:31: duplicate id.*1 of 30 utterances bad"):
        read_data_dir(d, max_bad_fraction=0.02)


def test_id_in_text_only_and_in_wav_scp_only(tmp_path):
    d = _dir(tmp_path, n=20)
    with open(d / "text", "a") as f:
        f.write("spk-zz-text-only HELLO\n")
    wav = (d / "wav.scp").read_text().splitlines()
    (d / "wav.scp").write_text("\n".join(l for l in wav if not l.startswith("spk-u03 ")) + "\n")
    utts, skipped = check_data_dir(d, max_bad_fraction=0.1)
    assert len(utts) == 19
    by_id = {s.utt_id: s for s in skipped}
    assert set(by_id) == {"spk-u03", "spk-zz-text-only"}
    assert Path(by_id["spk-u03"].file).name == "wav.scp" and "not in wav.scp" in by_id["spk-u03"].reason
    assert "is in text but not in wav.scp" in by_id["spk-zz-text-only"].reason
    with pytest.raises(DataDirError, match="2 of 21 utterances bad"):
        check_data_dir(d, max_bad_fraction=0.05)


def test_unsorted_files_read_like_sorted(tmp_path):
    d = _dir(tmp_path, n=6)
    want = read_data_dir(d)
    rng = np.random.default_rng(1)
    for name in ("wav.scp", "text", "utt2spk", "utt2dur"):
        lines = (d / name).read_text().splitlines()
        (d / name).write_text("\n".join(lines[i] for i in rng.permutation(len(lines))) + "\n")
    assert read_data_dir(d) == want


def test_relative_wav_paths_follow_the_data_dir_not_the_cwd(tmp_path, monkeypatch):
    d = _dir(tmp_path, n=2)
    before = {p.name: p.read_bytes() for p in d.iterdir()}
    monkeypatch.chdir(tmp_path.parent)
    utts = read_data_dir(os.path.relpath(d))
    assert [u.wav for u in utts] == [str(d / "u00.wav"), str(d / "u01.wav")]
    assert {p.name: p.read_bytes() for p in d.iterdir()} == before  # reading writes nothing


def test_plot_file_names_cannot_escape_out_dir(tmp_path):
    from asr.cli.plot import plot_decode_dir, safe_file_stem

    hostile = ["../../escaped", "a/b", "..", "/abs/path", "ok-id", ".hidden"]
    d = tmp_path / "work" / "dec"
    d.mkdir(parents=True)
    rows = [{"utt_id": u, "ref": "A B", "hyp": "A", "tokens": ["A"]} for u in hostile]
    (d / "results.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    np.savez(d / "attention.npz", **{u: np.full((2, 5), 0.2, dtype=np.float32) for u in hostile})
    (d / "meta.json").write_text(json.dumps({"frame_shift_s": 0.01, "subsampling": 1}))
    out = tmp_path / "work" / "dec" / "plots"
    paths = plot_decode_dir(d, utt_ids=hostile, worst_n=0, out_dir=out)
    assert len(paths) == len(set(paths)) == len(hostile)
    for p in paths:
        assert p.parent == out and p.is_file()
    assert sorted(x.name for x in out.iterdir()) == sorted(p.name for p in paths)
    assert not (tmp_path / "escaped.png").exists() and not (tmp_path / "work" / "escaped.png").exists()
    assert safe_file_stem("ok-id") == "ok-id" and safe_file_stem("a/b") != safe_file_stem("a_b")


# ------------------------------------------------------------------------------------------------ decoding


@pytest.fixture(scope="module")
def tiny_ckpt(tmp_path_factory, char_tok):
    """An untrained tiny model saved the way training saves it (no Lightning fit needed)."""
    from hydra import compose, initialize_config_dir
    from omegaconf import OmegaConf

    from asr.lightning.module import ASRLightningModule
    from asr.utils.paths import CONF_DIR

    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        cfg = compose("train", overrides=["model.encoder.hidden_size=16", "model.encoder.num_layers=2", "model.encoder.subsample=[4,2]",
                                          "model.decoder.hidden_size=16", "model.decoder.embed_dim=8"])
    torch.manual_seed(0)
    module = ASRLightningModule(OmegaConf.to_container(cfg.model, resolve=True), char_tok, OmegaConf.to_container(cfg.optim, resolve=True))
    ckpt = {"state_dict": module.state_dict()}
    module.on_save_checkpoint(ckpt)
    path = tmp_path_factory.mktemp("ckpt") / "tiny.ckpt"
    torch.save(ckpt, path)
    return path


def _decode(ckpt: Path, out: Path, **kw):
    from asr.cli.decode import decode

    cfg = {"ckpt": str(ckpt), "out_dir": str(out), "beam_size": 2, "max_len_ratio": 0.05, "min_len": 1, "length_penalty": 0.5, "batch_size": 8, **kw}
    return decode(cfg)


def test_decode_audio_one_good_one_missing_one_not_audio(tmp_path, tiny_ckpt):
    bad = tmp_path / "notes.wav"
    bad.write_text("not audio at all\n")
    out = tmp_path / "dec"
    info = _decode(tiny_ckpt, out, audio=[str(GOOD_WAV), str(tmp_path / "missing.wav"), str(bad)])
    assert info["n_utts"] == 1 and info["n_errors"] == 2
    rows = [json.loads(x) for x in (out / "results.jsonl").read_text().splitlines()]
    assert [r["utt_id"] for r in rows] == ["an120-fmjc-b"]
    errs = (out / "errors.tsv").read_text().splitlines()
    assert errs[0] == "file\treason" and len(errs) == 3
    assert errs[1].startswith(f"{tmp_path / 'missing.wav'}\t") and "file not found" in errs[1]
    assert errs[2].startswith(f"{bad}\t") and "cannot read as audio" in errs[2]


def test_decode_all_bad_names_the_errors(tmp_path, tiny_ckpt):
    with pytest.raises(ValueError, match="no utterance to decode: 1 error.*missing.wav"):
        _decode(tiny_ckpt, tmp_path / "dec", audio=[str(tmp_path / "missing.wav")])
    assert "missing.wav" in (tmp_path / "dec" / "errors.tsv").read_text()


def test_decode_stems_with_spaces_parens_and_repeats(tmp_path, tiny_ckpt):
    a = tmp_path / "x" / "my take (1).wav"
    b = tmp_path / "y" / "my take (1).wav"
    for p in (a, b):
        p.parent.mkdir()
        shutil.copy(GOOD_WAV, p)
    out = tmp_path / "dec"
    info = _decode(tiny_ckpt, out, audio=[str(a), str(b)])
    assert info["n_utts"] == 2 and info["n_errors"] == 0
    ids = [line.rsplit("(", 1)[1].rstrip(")") for line in (out / "hyp.trn").read_text().splitlines()]
    assert ids == ["my_take__1_", "my_take__1_-2"]


def test_decode_stereo_8k_and_silence(tmp_path, tiny_ckpt):
    stereo, low, silent = tmp_path / "stereo.wav", tmp_path / "low.wav", tmp_path / "silent.wav"
    x, _ = sf.read(str(GOOD_WAV), dtype="float32")
    sf.write(str(stereo), np.stack([x, x], 1), 16000)
    sf.write(str(low), x[::2], 8000)
    sf.write(str(silent), np.zeros(16000, dtype=np.int16), 16000)
    with pytest.warns(UserWarning, match="stereo.wav: 2 channels"):
        info = _decode(tiny_ckpt, tmp_path / "dec", audio=[str(stereo), str(low), str(silent)])
    assert info["n_utts"] == 3 and info["n_errors"] == 0


def test_decode_data_dir_with_missing_audio_and_bad_entry(tmp_path, tiny_ckpt):
    utts = [Utterance(f"spk-{p.stem}", str(p), "YES", "spk", 1.0) for p in WAVS]
    utts.append(Utterance("spk-gone", "gone.wav", "NO", "spk", 1.0))  # relative: resolved against the dir
    d = write_data_dir(utts, tmp_path / "data")
    wav_scp = (d / "wav.scp").read_bytes()
    out = tmp_path / "dec"
    info = _decode(tiny_ckpt, out, data_dir=str(d), max_bad_fraction=0.0)
    assert info["n_utts"] == len(WAVS) and info["n_errors"] == 1
    err = (out / "errors.tsv").read_text().splitlines()[1]
    assert err.startswith(f"{d / 'gone.wav'}\tutterance spk-gone: ") and "file not found" in err
    assert (d / "wav.scp").read_bytes() == wav_scp and not (d / "gone.wav").exists()


def test_decode_60_second_utterance_and_max_frames(tmp_path, tiny_ckpt):
    from hydra import compose, initialize_config_dir

    from asr.utils.paths import CONF_DIR

    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        cfg = compose("decode", overrides=["ckpt=x", "out_dir=y"])
    assert cfg.max_frames > 6000  # a 60 s utterance (6000 frames) fits; it only caps *batches*
    x, _ = sf.read(str(GOOD_WAV), dtype="float32")
    long = tmp_path / "long.wav"
    sf.write(str(long), np.tile(x, math.ceil(60 * 16000 / x.size))[: 60 * 16000], 16000, subtype="PCM_16")
    out = tmp_path / "dec"
    info = _decode(tiny_ckpt, out, audio=[str(GOOD_WAV), str(long)], max_frames=6500)
    assert info["n_utts"] == 2 and info["max_frames"] == 6500
    assert info["n_batches"] == 2  # 2 x 5998 padded frames > 6500: the long one is decoded alone
    row = {json.loads(r)["utt_id"]: json.loads(r) for r in (out / "results.jsonl").read_text().splitlines()}["long"]
    assert row["n_frames"] == 5998 and row["enc_frames"] >= 5998 // 8
    info = _decode(tiny_ckpt, tmp_path / "dec2", audio=[str(GOOD_WAV), str(long)], max_frames=0)
    assert info["n_batches"] == 1
