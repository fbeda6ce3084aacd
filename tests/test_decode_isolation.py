"""Batch decoding that survives real recordings (issue 12): per-file isolation, no silent wrong results,
option and checkpoint limits, end detection, attention of the best hypothesis only, long-form segmentation.

Each test pins one case of README "Robustness" / "Decode your own audio". Audio is real AN4 from tests/data.
"""

from __future__ import annotations

import json
import logging
import math
import os
import signal
import struct
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

from conftest import make_ckpt, tiny_ctc_model

from asr.features.audio import AudioError, audio_duration, load_audio

AN4 = Path(__file__).parent / "data" / "an4"
WAVS = sorted((AN4 / "wav").rglob("*.wav"))
GOOD_WAV = AN4 / "wav" / "an4_clstk" / "fmjc" / "an120-fmjc-b.wav"


@pytest.fixture(scope="module")
def char_tok(tmp_path_factory):
    from asr.text.tokenizer import Tokenizer

    return Tokenizer.train(["HELLO WORLD", "YES NO", "ONE TWO THREE"], tmp_path_factory.mktemp("tok") / "char", kind="char")


@pytest.fixture(scope="module")
def tiny_ckpt(tmp_path_factory, char_tok):
    return make_ckpt(char_tok, tmp_path_factory.mktemp("ckpt") / "tiny.ckpt", seed=0)


def _decode(ckpt: Path, out: Path, **kw):
    from asr.cli.decode import decode

    cfg = {"ckpt": str(ckpt), "out_dir": str(out), "beam_size": 2, "max_len_ratio": 0.05, "min_len": 1, "length_penalty": 0.5, "batch_size": 8, **kw}
    return decode(cfg)


def _n_fbank(wav: Path) -> int:
    """Kaldi fbank frames (25 ms window, 10 ms shift, snip_edges) of a 16 kHz file."""
    return 1 + (sf.info(str(wav)).frames - 400) // 160


def _errors(out: Path) -> dict[str, str]:
    lines = (out / "errors.tsv").read_text().splitlines()
    assert lines[0] == "file\treason"
    return dict(line.split("\t", 1) for line in lines[1:])


def _rows(out: Path) -> dict[str, dict]:
    return {json.loads(x)["utt_id"]: json.loads(x) for x in (out / "results.jsonl").read_text().splitlines()}


class _Alarm:
    """Fail instead of hanging forever (a FIFO opened without a writer blocks)."""

    def __enter__(self):
        def boom(*_):
            raise TimeoutError("blocked")

        self.old = signal.signal(signal.SIGALRM, boom)
        signal.alarm(20)

    def __exit__(self, *exc):
        signal.alarm(0)
        signal.signal(signal.SIGALRM, self.old)


# ------------------------------------------------------------------------------------------------ readers


def test_fifo_is_refused_without_opening_it(tmp_path):
    fifo = tmp_path / "pipe.wav"
    os.mkfifo(fifo)
    with _Alarm(), pytest.raises(AudioError, match=r"not a regular file \(FIFO\)"):
        load_audio(fifo)
    with _Alarm(), pytest.raises(AudioError, match="not a regular file"):
        audio_duration(fifo)


def test_symlink_loop_is_named(tmp_path):
    a, b = tmp_path / "a.wav", tmp_path / "b.wav"
    a.symlink_to(b)
    b.symlink_to(a)
    with pytest.raises(AudioError, match="symlink loop"):
        load_audio(a)


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads files without read permission")
def test_unreadable_file_says_permission_denied(tmp_path):
    p = tmp_path / "locked.wav"
    p.write_bytes(GOOD_WAV.read_bytes())
    p.chmod(0)
    with pytest.raises(AudioError, match="permission denied"):
        load_audio(p)


def _flac_claiming(tmp_path: Path, total_samples: int) -> Path:
    """A real FLAC of an AN4 clip whose STREAMINFO claims ``total_samples`` samples."""
    x, sr = sf.read(str(GOOD_WAV), dtype="int16")
    p = tmp_path / "liar.flac"
    sf.write(str(p), x, sr, format="FLAC")
    data = bytearray(p.read_bytes())
    assert data[:4] == b"fLaC" and data[4] & 0x7F == 0  # first metadata block is STREAMINFO
    # STREAMINFO byte 10..17: sample rate (20 bits), channels-1 (3), bits-1 (5), total samples (36).
    (packed,) = struct.unpack(">Q", data[8 + 10 : 8 + 18])
    packed = (packed & ~((1 << 36) - 1)) | total_samples
    data[8 + 10 : 8 + 18] = struct.pack(">Q", packed)
    p.write_bytes(bytes(data))
    return p


def test_flac_header_claiming_huge_sample_count_is_refused_without_allocating(tmp_path):
    p = _flac_claiming(tmp_path, (1 << 36) - 1)
    size = p.stat().st_size
    with pytest.raises(AudioError, match=rf"header claims {(1 << 36) - 1} samples x 1 channel\(s\) but the file has {size} bytes"):
        load_audio(p)
    with pytest.raises(AudioError, match="header claims"):
        audio_duration(p)


def test_flac_header_claiming_a_few_more_samples_is_a_clean_error(tmp_path):
    x, _ = sf.read(str(GOOD_WAV), dtype="float32")
    p = _flac_claiming(tmp_path, x.size + 100000)  # plausible but wrong: libsndfile fails on the seek table
    with pytest.raises(AudioError, match="cannot read as audio"):
        load_audio(p)


# ------------------------------------------------------------------------------------------- decode loop


def test_decode_isolates_short_clip_fifo_symlink_loop_and_directory(tmp_path, tiny_ckpt):
    x, _ = sf.read(str(GOOD_WAV), dtype="float32")
    short = tmp_path / "click.wav"
    sf.write(str(short), x[: int(0.03 * 16000)], 16000)  # 30 ms: one fbank frame, the x8 encoder needs 8
    fifo = tmp_path / "fifo.wav"
    os.mkfifo(fifo)
    loop = tmp_path / "loop.wav"
    loop.symlink_to(loop)
    out = tmp_path / "dec"
    with _Alarm():
        info = _decode(tiny_ckpt, out, audio=[str(GOOD_WAV), str(short), str(fifo), str(loop), str(tmp_path)])
    assert info["n_utts"] == 1 and info["n_errors"] == 4
    errs = _errors(out)
    assert "too short: 0.030 s < minimum 0.095 s" in errs[str(short)]
    assert "not a regular file (FIFO)" in errs[str(fifo)]
    assert "symlink loop" in errs[str(loop)]
    assert "is a directory" in errs[str(tmp_path)]
    assert list(_rows(out)) == ["an120-fmjc-b"]


def test_decode_data_dir_dump_with_empty_nan_and_short_entries(tmp_path, tiny_ckpt):
    from asr.data.datadir import Utterance, write_data_dir
    from asr.features.fbank import FbankOptions, compute_fbank

    utts = [Utterance(f"spk-{p.stem}", str(p), "YES", "spk", 1.0) for p in WAVS[:4]]
    d = write_data_dir(utts, tmp_path / "data")
    feats = {u.utt_id: compute_fbank(load_audio(u.wav), FbankOptions()) for u in utts}
    ids = sorted(feats)
    feats[ids[0]] = feats[ids[0]][:0]
    feats[ids[1]] = feats[ids[1]].clone()
    feats[ids[1]][5, 3] = float("nan")
    feats[ids[2]] = feats[ids[2]][:5]
    (tmp_path / "dump").mkdir()
    torch.save(feats, tmp_path / "dump" / "feats.pt")
    out = tmp_path / "dec"
    info = _decode(tiny_ckpt, out, data_dir=str(d), dump_dir=str(tmp_path / "dump"), max_bad_fraction=0.0)
    assert info["n_utts"] == 1 and info["n_errors"] == 3
    reasons = " | ".join(_errors(out).values())
    assert f"utterance {ids[0]}: too short: 0 feature frames" in reasons
    assert f"utterance {ids[1]}: feature dump entry holds 1 NaN or infinite value(s)" in reasons
    assert f"utterance {ids[2]}: too short: 5 feature frames (50 ms) < minimum 8" in reasons
    assert list(_rows(out)) == [ids[3]]


def test_model_error_on_one_utterance_is_an_errors_row(tmp_path, tiny_ckpt, monkeypatch):
    import asr.decoding.engine as dec

    real = dec.decode_batch
    bad_len = _n_fbank(WAVS[1])

    def flaky(models, xs, lens, opts, **kw):
        if bool((lens == bad_len).any()):
            raise RuntimeError("simulated model failure")
        return real(models, xs, lens, opts, **kw)

    monkeypatch.setattr(dec, "decode_batch", flaky)
    out = tmp_path / "dec"
    info = _decode(tiny_ckpt, out, audio=[str(p) for p in WAVS[:3]])
    assert info["n_utts"] == 2 and info["n_errors"] == 1
    assert "decoding failed (RuntimeError: simulated model failure)" in _errors(out)[str(WAVS[1])]
    assert WAVS[1].stem not in _rows(out)


def test_audio_without_brackets_is_one_file(tmp_path, tiny_ckpt):
    info = _decode(tiny_ckpt, tmp_path / "dec", audio=str(GOOD_WAV))
    assert info["n_utts"] == 1 and info["n_errors"] == 0


def test_resume_redecodes_a_changed_input_file(tmp_path, tiny_ckpt, monkeypatch):
    import asr.decoding.engine as dec
    from asr.decoding.results import PARTIAL_RESULTS

    a, b = tmp_path / "a.wav", tmp_path / "b.wav"
    a.write_bytes(WAVS[0].read_bytes())
    b.write_bytes(WAVS[1].read_bytes())
    out = tmp_path / "dec"
    real, calls = dec._decode_isolated, []

    def dies_on_second(*args, **kw):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real(*args, **kw)

    monkeypatch.setattr(dec, "_decode_isolated", dies_on_second)
    with pytest.raises(KeyboardInterrupt):
        _decode(tiny_ckpt, out, audio=[str(a), str(b)], batch_size=1)
    done = [json.loads(x)["utt_id"] for x in (out / PARTIAL_RESULTS).read_text().splitlines()]
    assert len(done) == 1
    first = tmp_path / f"{done[0]}.wav"
    first.write_bytes(WAVS[2].read_bytes())  # same path, other audio
    seen: list[str] = []

    def spy(models, xs, lens, opts, *args, **kw):
        seen.append(int(lens[0]))
        return real(models, xs, lens, opts, *args, **kw)

    monkeypatch.setattr(dec, "_decode_isolated", spy)
    info = _decode(tiny_ckpt, out, audio=[str(a), str(b)], batch_size=1)
    assert info["resumed_utts"] == 0 and len(seen) == 2  # the changed file is not reused
    assert _rows(out)[done[0]]["n_frames"] == _n_fbank(WAVS[2])


def test_second_decode_into_a_busy_out_dir_refuses(tmp_path, tiny_ckpt):
    from asr.decoding.results import OutDirLock

    out = tmp_path / "dec"
    with OutDirLock(out):
        with pytest.raises(RuntimeError, match=f"out_dir {out} is in use by another asr-decode \\(pid {os.getpid()}\\)"):
            _decode(tiny_ckpt, out, audio=[str(GOOD_WAV)])
    assert _decode(tiny_ckpt, out, audio=[str(GOOD_WAV)])["n_utts"] == 1  # released


def test_fresh_decode_removes_stale_outputs(tmp_path, tiny_ckpt):
    out = tmp_path / "dec"
    _decode(tiny_ckpt, out, audio=[str(GOOD_WAV), str(tmp_path / "gone.wav")])
    from asr.cli.score import score_decode_dir
    from asr.utils.owned import OwnedOutput

    score_decode_dir(out, max_missing_fraction=1.0)  # asr-score's scoring/ of the earlier results
    with OwnedOutput(out / "report", "asr-inspect"):  # an asr-inspect report of them
        (out / "report" / "index.html").write_text("<html></html>")
    (out / "plots").mkdir()  # the user's own folder, not written by an asr tool: kept (tests/test_output_safety.py)
    (out / "plots" / "mine.png").write_bytes(b"png")
    assert (out / "errors.tsv").exists() and (out / "scoring" / "wer.json").exists()
    _decode(tiny_ckpt, out, audio=[str(GOOD_WAV)])
    assert not (out / "errors.tsv").exists() and not (out / "scoring").exists() and not (out / "report").exists()
    assert (out / "results.jsonl").exists() and (out / "plots" / "mine.png").read_bytes() == b"png"


# ---------------------------------------------------------------------------------------- options, limits


@pytest.mark.parametrize("kw, match", [
    ({"beam_size": 2.7}, "beam_size must be an integer"),
    ({"beam_size": 100000}, "beam_size must be <= 256"),
    ({"beam_size": True}, "beam_size must be an integer"),
    ({"length_penalty": float("nan")}, "length_penalty must be a finite number"),
    ({"max_len_ratio": -1.0}, "max_len_ratio must be > 0"),
    ({"min_len": -2}, "min_len must be >= 0"),
    ({"ctc_weight": "0.3"}, "ctc_weight must be a finite number"),
])
def test_decoding_options_are_validated(kw, match):
    from asr.decoding.search import DecodingOptions

    with pytest.raises(ValueError, match=match):
        DecodingOptions(**kw)


def test_decode_refuses_bad_max_frames_and_nan_penalty(tmp_path, tiny_ckpt):
    with pytest.raises(ValueError, match="max_frames must be an integer >= 0"):
        _decode(tiny_ckpt, tmp_path / "d1", audio=[str(GOOD_WAV)], max_frames=-5)
    with pytest.raises(ValueError, match="length_penalty must be a finite number"):
        _decode(tiny_ckpt, tmp_path / "d2", audio=[str(GOOD_WAV)], length_penalty=float("nan"))
    assert not (tmp_path / "d2" / "results.jsonl").exists()


def test_checkpoint_config_asking_for_a_huge_model_is_refused_before_allocating(tmp_path, char_tok):
    from asr.models.checkpoint import load_checkpoint

    p = make_ckpt(char_tok, tmp_path / "a.ckpt", seed=0)
    ck = torch.load(p, weights_only=True)
    ck["asr"]["model_cfg"]["encoder"]["hidden_size"] = 40000
    torch.save(ck, tmp_path / "huge.ckpt")
    with pytest.raises(ValueError, match=r"refusing .*huge.ckpt: its stored config describes [\d,]+ parameters, more than the limit|refusing .*huge.ckpt: its stored config gives"):
        load_checkpoint(str(tmp_path / "huge.ckpt"))
    ck["asr"]["model_cfg"]["encoder"]["hidden_size"] = 24  # small, but not the stored tensors
    torch.save(ck, tmp_path / "other.ckpt")
    with pytest.raises(ValueError, match=r"its stored config gives [\d,]+ parameters but its tensors do not match"):
        load_checkpoint(str(tmp_path / "other.ckpt"))
    ck["asr"]["model_cfg"]["encoder"]["num_layers"] = 10**9
    torch.save(ck, tmp_path / "deep.ckpt")
    with pytest.raises(ValueError, match="num_layers=1000000000 exceeds the sanity limit 1000"):
        load_checkpoint(str(tmp_path / "deep.ckpt"))


def test_average_refuses_other_tokenizer_and_bad_n(tmp_path, char_tok, caplog):
    from asr.cli.average import average_checkpoints, main
    from asr.text.tokenizer import Tokenizer

    other = Tokenizer.train(["ABC DEF", "GHI JKL", "MNO PQR"], tmp_path / "other", kind="char")
    a = make_ckpt(char_tok, tmp_path / "a.ckpt", seed=0)
    b = make_ckpt(other, tmp_path / "b.ckpt", seed=1)
    if torch.load(a, weights_only=True)["asr"]["model_cfg"] == torch.load(b, weights_only=True)["asr"]["model_cfg"]:
        with pytest.raises(ValueError, match="different tokenizer"):
            average_checkpoints([a, b], tmp_path / "avg.ckpt")
    c = make_ckpt(char_tok, tmp_path / "c.ckpt", seed=1)
    ck = torch.load(c, weights_only=True)
    ck["asr"]["frame_shift_s"] = 0.02
    torch.save(ck, c)
    with pytest.raises(ValueError, match="different frame shift"):
        average_checkpoints([a, c], tmp_path / "avg.ckpt")
    with pytest.raises(SystemExit, match="n must be an integer >= 0"):
        main([f"ckpts=[{a},{a}]", "n=-1", f"out={tmp_path / 'x.ckpt'}"])
    with caplog.at_level(logging.WARNING):  # more asked for than kept (a short run): all of them, with a warning
        main([f"ckpts=[{a},{a}]", "n=3", f"out={tmp_path / 'x.ckpt'}"])
    assert "n=3 but only 2 checkpoint(s) found: averaging those 2" in caplog.text
    assert (tmp_path / "x.ckpt").is_file()


def test_score_reports_unreadable_missing_and_extra(tmp_path, caplog):
    from asr.cli.score import score_decode_dir

    d = tmp_path / "dec"
    d.mkdir()
    (d / "results.jsonl").write_text(json.dumps({"utt_id": "u1", "ref": "A B", "hyp": "A B"}) + "\n")
    (d / "errors.tsv").write_text("file\treason\n" + "".join(f"/x/{i}.wav\tnot audio\n" for i in range(9)))
    with pytest.raises(ValueError, match="9 of 10 utterances have no hypothesis .*90.0 % > max_missing_fraction 5.0 %"):
        score_decode_dir(d)
    score_decode_dir(d, max_missing_fraction=0.95)
    cov = json.loads((d / "scoring" / "wer.json").read_text())["coverage"]
    assert cov["n_unreadable"] == 9 and cov["n_expected"] == 10
    assert "9 unreadable (errors.tsv) of 10 expected" in (d / "scoring" / "result.txt").read_text()
    t = tmp_path / "trn"
    t.mkdir()
    (t / "ref.trn").write_text("".join(f"A B (u{i})\n" for i in range(10)))
    (t / "hyp.trn").write_text("".join(f"A B (u{i})\n" for i in range(9)) + "C (zz)\n")
    with pytest.raises(ValueError, match="1 of 10 utterances have no hypothesis"):
        score_decode_dir(t)
    r = score_decode_dir(t, max_missing_fraction=0.1)
    assert r.words.dele == 2  # the missing one is scored as deletions
    cov = json.loads((t / "scoring" / "wer.json").read_text())["coverage"]
    assert cov["missing_ids"] == ["u9"] and cov["extra_ids"] == ["zz"]


def test_score_summary_line_warns(tmp_path):
    from asr.cli.score import _score, summary_line

    d = tmp_path / "dec"
    d.mkdir()
    (d / "results.jsonl").write_text("".join(json.dumps({"utt_id": f"u{i}", "ref": "A", "hyp": "A"}) + "\n" for i in range(30)))
    (d / "errors.tsv").write_text("file\treason\n/x/1.wav\tnot audio\n")
    result, cov = _score(d, None, 0.05)
    assert summary_line(result, d, cov).endswith("WARNING: 1 unreadable (errors.tsv) of 31 expected utterances")
    assert "WARNING" not in summary_line(result, d)


# -------------------------------------------------------------------------------------------- beam search


def test_end_detected_rule():
    from asr.decoding.search import end_detected

    ended = [(3, -2.0), (5, -15.0), (6, -14.0), (7, -20.0)]
    assert end_detected(ended, 7, 3, -10.0)
    assert not end_detected(ended, 7, 4, -10.0)  # nothing ended at step 4
    assert not end_detected(ended + [(6, -5.0)], 7, 3, -10.0)  # one at step 6 is close to the best
    assert not end_detected(ended, 7, 0, -10.0)


def test_end_detection_stops_early_with_the_same_result(batch, monkeypatch):
    """A scripted decoder whose best hypothesis is ``4 5 6 <eos>`` and whose later steps are uniform (a model
    babbling after the end): without end detection the search runs on until the length-normalised bound
    gives up (29 steps here); with it, it stops a few steps after the end, with the same hypothesis."""
    import asr.decoding.search as search

    model = tiny_ctc_model(seed=3)
    xs, lens = batch
    steps = []

    def scripted(members, y, lam):
        t = len(steps)
        steps.append(t)
        logits = torch.zeros(y.shape[0], model.decoder.vocab_size)
        if t < 3:
            logits[:, 4 + t] = 2.0
        elif t == 3:
            logits[:, model.eos_id] = 2.0
        return torch.log_softmax(logits, -1), torch.zeros(y.shape[0], 1)

    monkeypatch.setattr(search, "_ensemble_step", scripted)
    opts = dict(beam_size=4, max_len_ratio=3.0, length_penalty=1.0, ctc_weight=0.0)  # the exact bound cannot stop it; attention only (the scripted decoder)
    off = search.beam_search(model, xs, lens, search.DecodingOptions(**opts, end_detect_m=0))
    n_off = len(steps)
    steps.clear()
    on = search.beam_search(model, xs, lens, search.DecodingOptions(**opts))
    assert len(steps) <= 10 < n_off
    assert [h.tokens for h in on] == [h.tokens for h in off] == [[4, 5, 6]] * len(lens)


def test_beam_attention_is_that_of_the_best_hypothesis(batch):
    """Attention is no longer kept during the search: the recomputed weights of a K=1 beam search equal
    those greedy search records while searching."""
    from asr.decoding.search import DecodingOptions, beam_search, greedy_search

    model = tiny_ctc_model(seed=1)
    xs, lens = batch
    opts = DecodingOptions(beam_size=1, max_len_ratio=1.0, length_penalty=0.0, ctc_weight=0.0)
    g, b = greedy_search(model, xs, lens, opts), beam_search(model, xs, lens, opts)
    for hg, hb in zip(g, b):
        assert hb.tokens == hg.tokens
        assert hb.attention.shape == hg.attention.shape
        torch.testing.assert_close(hb.attention, hg.attention, atol=1e-5, rtol=1e-4)


# ------------------------------------------------------------------------------------------------ long form


def _with_gaps(tmp_path: Path, n: int, gap_s: float = 0.8) -> tuple[Path, list[tuple[float, float]]]:
    """AN4 clips joined by ``gap_s`` of low noise; returns the file and the gaps (seconds)."""
    rng = np.random.default_rng(0)
    parts, gaps, t = [], [], 0.0
    for i in range(n):
        x, _ = sf.read(str(WAVS[i % len(WAVS)]), dtype="float32")
        parts.append(x)
        t += x.size / 16000
        g = (1e-4 * rng.standard_normal(int(gap_s * 16000))).astype(np.float32)
        parts.append(g)
        gaps.append((t, t + gap_s))
        t += gap_s
    p = tmp_path / "long.wav"
    sf.write(str(p), np.concatenate(parts), 16000, subtype="PCM_16")
    return p, gaps[:-1]


def test_segments_are_cut_in_pauses(tmp_path):
    from asr.decoding.longform import SegmentOptions, find_segments
    from asr.features.fbank import FbankOptions, compute_fbank

    p, gaps = _with_gaps(tmp_path, 12)
    feats = compute_fbank(load_audio(p), FbankOptions())
    opts = SegmentOptions(max_s=8.0, min_s=3.0)
    segs = find_segments(feats, opts)
    assert segs[0][0] == 0 and segs[-1][1] == feats.shape[0] and len(segs) > 2
    assert all(a[1] == b[0] for a, b in zip(segs, segs[1:]))
    assert all(e - s <= 800 for s, e in segs)
    for _, cut in segs[:-1]:
        assert any(g0 - 0.05 <= cut * 0.01 <= g1 + 0.05 for g0, g1 in gaps), f"cut at {cut * 0.01:.2f} s is not in a pause"
    assert find_segments(feats[:700], opts) == [(0, 700)]


def test_long_recording_decodes_as_segments_with_times_and_plots(tmp_path, tiny_ckpt, capsys):
    from asr.cli.plot import plot_decode_dir

    p, _ = _with_gaps(tmp_path, 18)
    dur = sf.info(str(p)).duration
    assert dur > 45
    out = tmp_path / "dec"
    info = _decode(tiny_ckpt, out, audio=[str(p), str(GOOD_WAV)], longform_max_s=20.0, longform_min_s=10.0)
    assert info["n_utts"] == 2 and info["n_segmented"] == 1 and info["n_segments"] >= 3
    n_units = 1 + info["n_segments"]  # the summary line counts utterances, and says how many segments were decoded
    assert f"decoded 2 utterances as {n_units} decoding units (1 long recording(s) split into {info['n_segments']} segments)" in capsys.readouterr().out
    row = _rows(out)["long"]
    segs = row["segments"]
    assert len(segs) == info["n_segments"] and segs[0]["start"] == 0.0
    assert abs(segs[-1]["end"] - row["n_frames"] * 0.01) < 1e-6 and abs(segs[-1]["end"] - dur) < 0.05
    assert all(0 < s["end"] - s["start"] <= 20.0 for s in segs)
    assert row["hyp"] == " ".join(s["hyp"] for s in segs if s["hyp"])
    lines = [json.loads(x) for x in (out / "segments.jsonl").read_text().splitlines()]
    assert [x["seg_id"] for x in lines] == [s["seg_id"] for s in segs]
    with np.load(out / "attention.npz") as z:
        assert set(z.files) == {"an120-fmjc-b", *(s["seg_id"] for s in segs)}
    pngs = plot_decode_dir(out, utt_ids=[segs[1]["seg_id"]], worst_n=0)
    assert pngs and pngs[0].name == f"{segs[1]['seg_id']}.png" and pngs[0].exists()
    assert "an120-fmjc-b" in (out / "hyp.trn").read_text() and "(long)" in (out / "hyp.trn").read_text()


@pytest.mark.slow
def test_thirty_minute_recording_decodes_in_bounded_memory(tmp_path, tiny_ckpt):
    import resource

    x = np.concatenate([sf.read(str(w), dtype="float32")[0] for w in WAVS])
    n = 1800 * 16000
    p = tmp_path / "long.wav"
    sf.write(str(p), np.tile(x, math.ceil(n / x.size))[:n], 16000, subtype="PCM_16")
    out = tmp_path / "dec"
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    info = _decode(tiny_ckpt, out, audio=[str(p)], beam_size=4, longform_max_s=20.0, max_len_ratio=0.2)
    grown_mb = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 1024
    assert info["n_segments"] >= 90 and info["n_errors"] == 0
    assert grown_mb < 1500
