"""The one decoding engine (issue 30): asr-decode, Speech2Text.transcribe and asr-transcribe are its callers, so a
long recording gives the same words through each; per-input isolation, bounded chunks, per-call options and the
one-line refusals. Real AN4 audio (tests/data/an4), tiny untrained models with a CTC branch."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

from conftest import MINI_AN4

ROOT = Path(__file__).resolve().parents[1]
WAVS = sorted(str(p) for p in (MINI_AN4 / "wav").rglob("*.wav"))
TEST_WAV = str(MINI_AN4 / "wav/an4test_clstk/fjlp/an419-fjlp-b.wav")
FAST = {"beam_size": 2, "max_len_ratio": 0.3, "min_len": 1}


@pytest.fixture(scope="module")
def long_wav(tmp_path_factory) -> Path:
    """About 20 s: the AN4 clips one after the other with 0.4 s of silence between them."""
    parts = []
    for w in WAVS:
        x, sr = sf.read(w, dtype="float32")
        parts += [x, np.zeros(int(0.4 * sr), dtype=np.float32)]
    audio = np.concatenate(parts)
    path = tmp_path_factory.mktemp("long") / "long.wav"
    sf.write(str(path), audio, 16000, subtype="PCM_16")
    assert len(audio) / 16000 > 15
    return path


@pytest.fixture(scope="module")
def fast_dir(ctc_model_dir, tmp_path_factory) -> Path:
    """``ctc_model_dir`` with FAST recorded as its decoding options (so every entry point uses them by default)."""
    import shutil

    import yaml

    out = Path(shutil.copytree(ctc_model_dir, tmp_path_factory.mktemp("fast") / "tiny"))
    cfg = yaml.safe_load((out / "config.yaml").read_text())
    cfg["decoding"].update(FAST)
    (out / "config.yaml").write_text(yaml.safe_dump(cfg, sort_keys=False))
    return out


def test_long_recording_gives_the_same_words_through_every_entry_point(fast_dir, long_wav, tmp_path, capsys):
    from asr import Speech2Text
    from asr.cli.decode import decode
    from asr.cli.transcribe import main

    (r,) = Speech2Text.from_pretrained(fast_dir).transcribe([str(long_wav)])
    assert r.error is None and len(r.segments) >= 3  # decoded in segments of at most 6 s
    duration = sf.info(str(long_wav)).duration
    assert abs(r.duration - duration) < 0.01
    for a, b in zip(r.segments, r.segments[1:]):
        assert a.end <= b.start + 1e-6  # in time order, in seconds from the start of the recording
    assert r.segments[-1].end > 10.0 and r.segments[-1].end <= duration + 1e-6
    starts = [w.start for w in r.words]
    assert starts == sorted(starts) and all(w.start <= w.end for w in r.words)

    info = decode({"ckpt": str(fast_dir), "audio": [str(long_wav)], "out_dir": str(tmp_path / "d"), "longform_max_s": 6.0, "batch_size": 4})
    row = json.loads((tmp_path / "d/results.jsonl").read_text())
    assert info["n_segmented"] == 1 and info["n_segments"] == len(row["segments"]) == len(r.segments)
    assert row["hyp"] == r.text and info["beam_size"] == FAST["beam_size"]
    assert [(s["start"], s["end"]) for s in row["segments"]] == sorted((s["start"], s["end"]) for s in row["segments"])
    capsys.readouterr()

    assert main(["--model", str(fast_dir), str(long_wav)]) == 0
    assert capsys.readouterr().out == f"{long_wav}\t{r.text}\n"


def test_asr_decode_takes_a_model_directory_as_well_as_a_checkpoint(ctc_ckpt, ctc_model_dir, tmp_path):
    from asr.cli.decode import decode

    for name, model in (("ckpt", ctc_ckpt), ("dir", ctc_model_dir)):
        decode({"ckpt": str(model), "audio": WAVS[:3], "out_dir": str(tmp_path / name), **FAST})
    assert (tmp_path / "ckpt/results.jsonl").read_text() == (tmp_path / "dir/results.jsonl").read_text()


def test_from_pretrained_of_a_missing_relative_directory_says_where_it_looked(tmp_path, monkeypatch):
    from asr import Speech2Text

    monkeypatch.chdir(tmp_path)
    monkeypatch.setitem(sys.modules, "huggingface_hub", None)
    with pytest.raises(FileNotFoundError) as err:
        Speech2Text.from_pretrained("models/an4_pblstm_x4")
    msg = str(err.value)
    assert msg.startswith("no model directory or checkpoint at models/an4_pblstm_x4") and str(tmp_path / "models/an4_pblstm_x4") in msg


def test_options_per_call_and_beam_1_is_greedy(ctc_model_dir):
    from asr import Speech2Text
    from asr.decoding.search import DecodingOptions, greedy_search

    s2t = Speech2Text.from_pretrained(ctc_model_dir, **FAST)
    per_call = s2t.transcribe(WAVS[:3], beam_size=1, ctc_weight=0.0)
    loaded = Speech2Text.from_pretrained(ctc_model_dir, **{**FAST, "beam_size": 1, "ctc_weight": 0.0}).transcribe(WAVS[:3])
    assert [r.token_ids for r in per_call] == [r.token_ids for r in loaded]
    assert s2t.options.beam_size == 2  # the call did not change the object's options
    feats = [s2t.engine.features(s2t._input(0, w, None))[0] for w in WAVS[:3]]
    for f, r in zip(feats, per_call):
        (g,) = greedy_search(s2t.model, f[None], torch.tensor([f.shape[0]]), DecodingOptions(**{**FAST, "beam_size": 1, "ctc_weight": 0.0}))
        assert g.tokens == r.token_ids


def test_nbest_texts_are_distinct_and_timestamps_false_leaves_words_empty(ctc_model_dir):
    from asr import Speech2Text

    s2t = Speech2Text.from_pretrained(ctc_model_dir, beam_size=6, max_len_ratio=0.3, min_len=1)
    (r,) = s2t.transcribe(TEST_WAV, nbest=4)
    texts = [n.text for n in r.nbest]
    assert len(texts) == len(set(texts)) and 1 <= len(texts) <= 4 and texts[0] == r.text
    (q,) = s2t.transcribe([TEST_WAV], timestamps=False)
    assert q.words == [] and q.segments == [] and q.timestamps == "none" and q.text == r.text


def test_bad_inputs_are_error_results_and_others_are_transcribed(ctc_model_dir, tmp_path):
    from asr import Speech2Text

    x, _ = sf.read(TEST_WAV, dtype="float32")
    short = tmp_path / "click.wav"
    sf.write(str(short), x[: int(0.03 * 16000)], 16000)
    s2t = Speech2Text.from_pretrained(ctc_model_dir, **FAST)
    good, missing, click, nan = s2t.transcribe([TEST_WAV, str(tmp_path / "missing.wav"), str(short), np.full(16000, np.nan, dtype=np.float32)], sample_rate=16000)
    assert good.error is None and good.text == s2t.transcribe(TEST_WAV)[0].text
    assert "file not found" in missing.error and missing.text == ""
    assert click.error == "too short: 0.030 s < minimum 0.095 s"
    assert "NaN" in nan.error


def test_engine_chunks_keep_input_order_and_results(ctc_model_dir):
    from asr.decoding.engine import Engine, EngineInput

    big = Engine.load(ctc_model_dir, options=FAST, batch_size=3)
    small = Engine.load(ctc_model_dir, options=FAST, batch_size=3, chunk_frames=1)  # one input per chunk
    inputs = [EngineInput(f"u{i}", path=w) for i, w in enumerate(WAVS)]
    a, b = list(big.run(inputs)), list(small.run(inputs))
    assert [r.key for r in a] == [r.key for r in b] == [f"u{i}" for i in range(len(WAVS))]
    assert [u.hyp.tokens for r in a for u in r.units] == [u.hyp.tokens for r in b for u in r.units]
    assert small.stats["n_batches"] == len(WAVS) and big.stats["n_batches"] == -(-len(WAVS) // 3)


def test_one_line_refusals(ctc_model_dir, capsys):
    from asr import Speech2Text
    from asr.cli.transcribe import main

    s2t = Speech2Text.from_pretrained(ctc_model_dir, beam_size=1)
    with pytest.raises(ValueError, match=r"^batch_size must be an integer >= 1, got 0$"):
        s2t.transcribe(TEST_WAV, batch_size=0)
    with pytest.raises(ValueError, match=r"^nbest=3 needs beam_size >= 3 \(decoding with beam_size=1\)$"):
        s2t.transcribe(TEST_WAV, nbest=3)
    assert main(["--model", str(ctc_model_dir), "--batch-size", "0", TEST_WAV]) == 2
    assert capsys.readouterr().err == "asr-transcribe: batch_size must be an integer >= 1, got 0\n"
    assert main(["--model", str(ctc_model_dir), "--beam-size", "1", "--nbest", "3", "--json", TEST_WAV]) == 2
    assert capsys.readouterr().err == "asr-transcribe: nbest=3 needs beam_size >= 3 (decoding with beam_size=1)\n"
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="no CUDA GPU is available"):
            Speech2Text.from_pretrained(ctc_model_dir, device="cuda")
        assert main(["--model", str(ctc_model_dir), "--device", "cuda", TEST_WAV]) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and "no CUDA GPU is available" in err


SHIPPED = ROOT / "models/an4_pblstm_x4"


@pytest.mark.skipif(not torch.ops.mkldnn._is_mkldnn_bf16_supported(), reason="CPU without native bf16")
def test_bf16_encoder_gives_the_shipped_models_texts_through_every_entry_point(tmp_path, capsys):
    """``encoder_dtype=bfloat16`` (Speech2Text, asr-transcribe, asr-decode) gives the float32 texts of the shipped
    model on real AN4 audio (greedy and beam + CTC); a bad name is a one-line refusal."""
    from asr import Speech2Text
    from asr.cli.decode import decode
    from asr.cli.transcribe import main

    for opts in ({"beam_size": 1, "ctc_weight": 0.0}, {"beam_size": 4, "ctc_weight": 0.3}):
        ref = [r.text for r in Speech2Text.from_pretrained(SHIPPED, threads=None, **opts).transcribe(WAVS)]
        s2t = Speech2Text.from_pretrained(SHIPPED, threads=None, encoder_dtype="bfloat16", **opts)
        assert s2t.model.encoder_dtype is torch.bfloat16
        assert [r.text for r in s2t.transcribe(WAVS)] == ref and any(ref)
    assert main(["--model", str(SHIPPED), "--threads", "1", "--beam-size", "4", "--ctc-weight", "0.3", "--encoder-dtype", "bfloat16", *WAVS]) == 0
    assert [line.split("\t", 1)[1] for line in capsys.readouterr().out.splitlines()] == ref
    decode({"ckpt": str(SHIPPED), "audio": WAVS, "out_dir": str(tmp_path / "d"), "beam_size": 4, "ctc_weight": 0.3, "encoder_dtype": "bfloat16", "threads": 1})
    rows = [json.loads(line) for line in (tmp_path / "d/results.jsonl").read_text().splitlines()]
    assert sorted(r["hyp"] for r in rows) == sorted(ref)
    with pytest.raises(ValueError, match=r"^encoder_dtype must be one of float32, bfloat16, got 'float16'$"):
        decode({"ckpt": str(SHIPPED), "audio": WAVS, "out_dir": str(tmp_path / "e"), "encoder_dtype": "float16"})
    with pytest.raises(ValueError, match=r"^encoder_dtype must be one of float32, bfloat16, got 'half'$"):
        Speech2Text.from_pretrained(SHIPPED, threads=None, encoder_dtype="half")


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without a GPU")
def test_asr_decode_device_cuda_without_gpu_is_one_line(ctc_model_dir, tmp_path):
    proc = subprocess.run([sys.executable, "-m", "asr.cli.decode", f"ckpt={ctc_model_dir}", f"audio={TEST_WAV}", f"out_dir={tmp_path / 'd'}", "device=cuda"],
                          capture_output=True, text=True, cwd=ROOT)
    assert proc.returncode == 2 and proc.stderr.strip().splitlines() == [proc.stderr.strip()]
    assert proc.stderr.startswith("asr-decode: device 'cuda': no CUDA GPU is available")


def test_timestamps_run_the_encoder_once_per_batch(ctc_model_dir, monkeypatch):
    """The CTC posteriors for timestamps and the search share one encoder pass; the times are those of a separate
    pass (as Speech2Text computed them before issue 30)."""
    from asr import Speech2Text
    from asr.decoding.search import Hypothesis, ctc_log_probs
    from asr.inference import _word_spans

    s2t = Speech2Text.from_pretrained(ctc_model_dir, **FAST)
    real, calls = s2t.model.encode, []
    monkeypatch.setattr(s2t.model, "encode", lambda xs, lens: calls.append(1) or real(xs, lens))
    (r,) = s2t.transcribe([TEST_WAV])
    assert len(calls) == 1 and r.timestamps == "ctc"
    monkeypatch.undo()
    x, _ = s2t.engine.features(s2t._input(0, TEST_WAV, None))
    hs, hs_lens = s2t.model.encode(x[None], torch.tensor([x.shape[0]]))
    h = Hypothesis(r.token_ids, r.score, r.norm_score, torch.zeros(len(r.token_ids) + 1, int(hs_lens[0])))
    spans, how = s2t.engine.token_spans(h, ctc_log_probs(s2t.model, hs)[0], int(hs_lens[0]), r.duration)
    assert how == "ctc" and r.words == _word_spans(r.tokens, spans)


def test_all_inputs_bad_leaves_errors_tsv_and_no_partial_files(ctc_model_dir, tmp_path):
    from asr.cli.decode import decode

    out = tmp_path / "d"
    with pytest.raises(ValueError, match="no utterance to decode: 1 error"):
        decode({"ckpt": str(ctc_model_dir), "audio": [str(tmp_path / "missing.wav")], "out_dir": str(out), **FAST})
    assert (out / "errors.tsv").is_file() and not (out / ".partial").exists() and not (out / "results.partial.jsonl").exists()


def test_threads_per_entry_point_and_nbest_without_json_is_said_to_be_ignored(ctc_model_dir, capsys, monkeypatch):
    from asr import Speech2Text
    from asr.cli.transcribe import main

    before = torch.get_num_threads()
    try:
        monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
        Speech2Text.from_pretrained(ctc_model_dir, threads=1)
        assert torch.get_num_threads() == 1
        s2t = Speech2Text.from_pretrained(ctc_model_dir)  # auto: within the usable cores
        assert 1 <= torch.get_num_threads() <= (len(__import__("os").sched_getaffinity(0))) and s2t.threads["reason"]
        torch.set_num_threads(1)
        Speech2Text.from_pretrained(ctc_model_dir, threads=None)  # left alone
        assert torch.get_num_threads() == 1
        with pytest.raises(ValueError, match="threads must be an integer >= 0"):
            Speech2Text.from_pretrained(ctc_model_dir, threads=-1)
        assert main(["--model", str(ctc_model_dir), "--threads", "1", "--beam-size", "2", "--nbest", "2", TEST_WAV]) == 0
        out = capsys.readouterr()
        assert torch.get_num_threads() == 1
        assert out.err.splitlines()[0] == "asr-transcribe: --nbest 2 is ignored without --json (a plain line holds the best text only)"
        assert len(out.out.splitlines()) == 1 and out.out.startswith(TEST_WAV + "\t")
    finally:
        torch.set_num_threads(before)


def test_a_file_named_like_a_segment_of_a_long_recording_fails_alone(fast_dir, long_wav, tmp_path):
    """``x-seg0000.wav`` beside a long ``x.wav``: the long recording's segment ids would collide with the short
    file's id, so that recording gets an error row and the short file (and the rest) is still decoded (issue 33)."""
    import shutil

    from asr.cli.decode import decode

    x = tmp_path / "x.wav"
    shutil.copy(long_wav, x)
    clash = tmp_path / "x-seg0000.wav"
    shutil.copy(TEST_WAV, clash)
    out = tmp_path / "d"
    meta = decode({"ckpt": str(fast_dir), "audio": [str(x), str(clash), TEST_WAV], "out_dir": str(out), "threads": 1, "longform_max_s": 6.0})
    rows = [json.loads(r) for r in (out / "results.jsonl").read_text().splitlines()]
    assert sorted(r["utt_id"] for r in rows) == sorted(["x-seg0000", Path(TEST_WAV).stem])
    errors = (out / "errors.tsv").read_text().splitlines()
    assert len(errors) == 2 and errors[1].startswith(str(x)) and "x-seg0000" in errors[1] and "rename one" in errors[1]
    assert meta["n_errors"] == 1
