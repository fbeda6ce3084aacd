"""The Python inference API, the model directory format, asr-export and asr-transcribe, on real AN4 audio
(tests/data/an4) with tiny untrained models; and the one-owner-per-format rules (import graph, decoding defaults)."""

from __future__ import annotations

import ast
import dataclasses
import io
import json
import re
import shutil
import subprocess
import sys
import types
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from conftest import MINI_AN4, make_ckpt

ROOT = Path(__file__).resolve().parents[1]
WAVS = sorted(str(p) for p in (MINI_AN4 / "wav").rglob("*.wav"))[:4]
TEST_WAV = str(MINI_AN4 / "wav/an4test_clstk/fjlp/an419-fjlp-b.wav")


@pytest.fixture(scope="module")
def tok(mini_an4):
    from asr.text.tokenizer import Tokenizer

    return Tokenizer.from_file(mini_an4 / "data/token/char.model")


@pytest.fixture(scope="module")
def ckpt(ctc_ckpt) -> Path:
    """A tiny ×8 pBLSTM with a CTC branch (conftest)."""
    return ctc_ckpt


@pytest.fixture(scope="module")
def exported(ctc_model_dir) -> Path:
    """``ckpt`` exported (conftest)."""
    return ctc_model_dir


# ---- one owner per format --------------------------------------------------------------------------------------
# asr/decoding/parallel.py is left out: the multi-process runner uses Lightning's launchers (Fabric), and asr-decode
# imports it only when several processes are asked for (the subprocess check below imports every listed module).
NO_LIGHTNING = [
    *sorted(p for p in (ROOT / "asr/models").rglob("*.py")), *sorted(p for p in (ROOT / "asr/decoding").rglob("*.py") if p.name != "parallel.py"),
    ROOT / "asr/inference.py", ROOT / "asr/cli/decode.py", ROOT / "asr/cli/plot.py",
]


def _module(path: Path) -> str:
    return ".".join(path.relative_to(ROOT).with_suffix("").parts).removesuffix(".__init__")


def test_no_lightning_in_the_import_graph_of_inference_modules():
    """No listed module imports lightning or asr.lightning, directly (AST) or through other modules (a fresh
    interpreter imports them all and finds neither in sys.modules)."""
    for path in NO_LIGHTNING:
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else [node.module or ""] if isinstance(node, ast.ImportFrom) else []
            bad = [n for n in names if n.split(".")[0] in ("lightning", "pytorch_lightning") or n.startswith("asr.lightning")]
            assert not bad, f"{path.relative_to(ROOT)} imports {bad}"
    mods = [_module(p) for p in NO_LIGHTNING]
    code = f"import sys\nfor m in {mods!r}: __import__(m)\nprint([m for m in sys.modules if m.split('.')[0] in ('lightning', 'pytorch_lightning') or m.startswith('asr.lightning')])"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, check=True).stdout.strip()
    assert out == "[]", f"importing {mods} loads {out}"


def test_decoding_defaults_have_one_home():
    """conf/decode.yaml leaves every search option null (DecodingOptions' default) and run.sh reads them from it."""
    from asr.decoding.search import DecodingOptions

    conf = yaml.safe_load((ROOT / "conf/decode.yaml").read_text())
    for f in dataclasses.fields(DecodingOptions):
        assert f.name in conf and conf[f.name] is None, f"conf/decode.yaml sets {f.name}={conf.get(f.name)}"
    assert "from asr.decoding.search import DecodingOptions" in (ROOT / "recipes/an4/run.sh").read_text()
    o = DecodingOptions()
    assert (o.beam_size, o.ctc_weight, o.length_penalty) == (10, 0.3, 0.5)


def test_resolve_options(tok, tmp_path):
    from asr.decoding.search import resolve_options
    from asr.models.checkpoint import load_checkpoint

    no_ctc = load_checkpoint(make_ckpt(tok, tmp_path / "a.ckpt", seed=1))[0]
    assert resolve_options(no_ctc, {}).ctc_weight == 0.0  # no CTC branch: attention only
    assert resolve_options(no_ctc, {"ctc_weight": 0.5, "beam_size": "4"}).beam_size == 4
    with pytest.raises(ValueError, match="unknown decoding option.*beam"):
        resolve_options(no_ctc, {"beam": 3})


def test_decode_meta_is_built_from_the_options_and_plot_reads_it(ckpt, mini_an4, tmp_path):
    from asr.cli.decode import decode
    from asr.decoding.results import read_meta, read_results

    out = tmp_path / "dec"
    decode({"ckpt": str(ckpt), "data_dir": str(mini_an4 / "data/test"), "dump_dir": str(mini_an4 / "dump/test"), "out_dir": str(out), "beam_size": 2, "min_len": 3, "batch_size": 2})
    meta = json.loads((out / "meta.json").read_text())
    assert {"beam_size": 2, "min_len": 3, "ctc_weight": 0.3, "length_penalty": 0.5, "max_len_ratio": 1.5}.items() <= meta.items()
    assert meta["dump_dir"] == str(mini_an4 / "dump/test") and read_meta(out) == meta
    assert meta["end_detect_m"] == 3 and meta["end_detect_d"] == -10.0  # issue 12's options, from the dataclass
    assert meta["longform_max_s"] == 0.0 and meta["n_segmented"] == 0
    assert len(read_results(out)) == 2


def test_read_meta_fills_what_old_folders_did_not_record(tmp_path):
    from asr.decoding.results import read_meta

    (tmp_path / "meta.json").write_text(json.dumps({"beam_size": 10, "frame_shift_s": 0.01, "subsampling": 8}))
    meta = read_meta(tmp_path)
    assert meta["ctc_weight"] == 0.0 and meta["length_penalty"] == 0.5 and meta["min_len"] == 5


def test_ctc_align_forced_path():
    from asr.decoding.ctc import ctc_align

    lp = torch.full((6, 3), -10.0)
    for t, c in enumerate([0, 1, 1, 0, 2, 0]):
        lp[t, c] = 0.0
    lp = lp.log_softmax(-1)
    assert ctc_align(lp, [1, 2], 0) == [(1, 2), (4, 4)]
    assert ctc_align(lp, [1, 1], 0) == [(1, 2), (4, 4)]  # a repeat needs a blank between: the cheapest path
    assert ctc_align(lp[:2], [1, 1], 0) is None  # 2 frames cannot hold "1 blank 1"
    assert ctc_align(lp, [], 0) == []


# ---- model directory, Speech2Text --------------------------------------------------------------------------------
def test_export_writes_the_model_directory(exported, tok):
    cfg = yaml.safe_load((exported / "config.yaml").read_text())
    # .asr-owned.json: what asr-export wrote (asr.utils.owned; tests/test_output_safety.py)
    assert sorted(p.name for p in exported.iterdir()) == [".asr-owned.json", "README.md", "checksums.sha256", "cmvn.safetensors", "config.yaml", "model.safetensors", "tokenizer.model"]
    assert cfg["format"] == 1 and cfg["tokenizer"]["kind"] == "char" and cfg["tokenizer"]["vocab_size"] == tok.vocab_size
    assert cfg["features"] == {"num_mel_bins": 80, "frame_length_ms": 25.0, "frame_shift_ms": 10.0, "sample_rate": 16000, "dither": 0.0, "cmvn": "cmvn.safetensors"}
    assert cfg["decoding"]["ctc_weight"] == 0.3 and cfg["model"]["encoder"]["type"] == "pblstm"
    card = (exported / "README.md").read_text()
    assert card.startswith("---\nlicense: apache-2.0") and "pblstm encoder" in card and "CTC branch (weight 0.3)" in card


def test_export_card_names_each_decoded_set_and_no_machine_path(ckpt, mini_an4, tmp_path):
    """The card's results: one row per decode folder named by its set (decode_<set>_beam...), a set of clips without
    reference words (silence) as the count of non-empty hypotheses; the checkpoint path without the machine's
    absolute prefix (``exp/...`` or the file name)."""
    from asr.cli.decode import decode
    from asr.cli.export import export, portable_path
    from asr.cli.score import score_decode_dir

    assert portable_path("/home/u/work/recipes/an4/exp/run/checkpoints/avg5.ckpt") == "exp/run/checkpoints/avg5.ckpt"
    assert portable_path("/tmp/x/model.ckpt") == "model.ckpt" and portable_path("../m/model.ckpt") == "../m/model.ckpt"
    wavs = sorted((mini_an4 / "data").rglob("*.wav"))[:2] or sorted((Path(__file__).parent / "data/an4/wav").rglob("*.wav"))[:2]
    exp = tmp_path / "exp" / "run"
    (exp / "checkpoints").mkdir(parents=True)
    shutil.copy(ckpt, exp / "checkpoints" / "avg5.ckpt")
    dirs = []
    for name in ("test_8k", "silence"):
        d = exp / f"decode_{name}_beam2_ctc0.3_avg5"
        decode({"ckpt": str(exp / "checkpoints/avg5.ckpt"), "out_dir": str(d), "beam_size": 2, "threads": 1, "audio": [str(w) for w in wavs]})
        if name == "test_8k":  # references: give the rows a text to score against
            rows = [json.loads(x) for x in (d / "results.jsonl").read_text().splitlines()]
            (d / "results.jsonl").write_text("".join(json.dumps({**r, "ref": "A B"}) + "\n" for r in rows))
            score_decode_dir(d)
        dirs.append(d)
    out = tmp_path / "model"
    export(exp / "checkpoints" / "avg5.ckpt", out, decode_dirs=dirs)
    card = (out / "README.md").read_text()
    assert "| test_8k (`decode_test_8k_beam2_ctc0.3_avg5`) |" in card
    assert re.search(r"\| silence \(`decode_silence_beam2_ctc0.3_avg5`\) \| — \(\d of 2 hypotheses not empty\) \|", card)
    assert "`exp/run/checkpoints/avg5.ckpt`" in card and str(tmp_path) not in card
    assert str(tmp_path) not in (out / "config.yaml").read_text()


def test_loading_a_model_directory_runs_no_pickle(exported, monkeypatch):
    import pickle

    from asr.models.pretrained import load_model_dir

    def refuse(*a, **k):
        raise AssertionError("pickle used")

    monkeypatch.setattr(torch, "load", refuse)
    monkeypatch.setattr(pickle, "loads", refuse)
    monkeypatch.setattr(pickle, "load", refuse)
    model, tok, cfg = load_model_dir(exported)
    assert cfg["fbank"].num_mel_bins == 80 and not model.training


def test_exported_directory_decodes_bit_identically_to_the_checkpoint(exported, ckpt, mini_an4, tmp_path):
    from asr import Speech2Text
    from asr.cli.decode import decode

    a = Speech2Text.from_pretrained(exported, beam_size=3).transcribe(WAVS, batch_size=1)
    b = Speech2Text.from_pretrained(ckpt, beam_size=3).transcribe(WAVS, batch_size=1)
    assert [(r.text, r.token_ids, r.score, r.norm_score) for r in a] == [(r.text, r.token_ids, r.score, r.norm_score) for r in b]
    # ... and to asr-decode (one search implementation): same hypotheses and scores (results.jsonl rounds to 4 digits)
    decode({"ckpt": str(ckpt), "audio": WAVS, "out_dir": str(tmp_path / "d"), "beam_size": 3, "batch_size": 1})
    rows = {json.loads(x)["utt_id"]: json.loads(x) for x in (tmp_path / "d/results.jsonl").read_text().splitlines()}
    for path, r in zip(WAVS, a):
        row = rows[Path(path).stem]
        assert (row["hyp"], row["score"], row["tokens"]) == (r.text, round(r.score, 4), r.tokens)


def test_float16_export_is_half_the_size_and_close(ckpt, exported, tmp_path):
    from asr import Speech2Text
    from asr.cli.export import export

    export(ckpt, tmp_path / "fp16", dtype="float16")
    assert (tmp_path / "fp16/model.safetensors").stat().st_size < 0.55 * (exported / "model.safetensors").stat().st_size
    s16, s32 = Speech2Text.from_pretrained(tmp_path / "fp16"), Speech2Text.from_pretrained(exported)
    for (k, v16), v32 in zip(s16.model.state_dict().items(), s32.model.state_dict().values()):
        assert v16.dtype == v32.dtype and torch.equal(v16, v32.half().to(v32.dtype)), k
    with pytest.raises(ValueError, match="dtype must be one of"):
        export(ckpt, tmp_path / "int4", dtype="int4")


def test_result_fields_timestamps_nbest_attention(exported):
    from asr import Speech2Text

    s2t = Speech2Text.from_pretrained(exported, beam_size=4)
    (r,) = s2t.transcribe(TEST_WAV, nbest=3, return_attention=True)
    assert r.path == TEST_WAV and r.timestamps == "ctc" and r.duration > 1.0
    assert r.attention.shape[0] == len(r.tokens) + 1 and r.tokens == s2t.tokenizer.pieces(r.token_ids)
    assert 1 <= len(r.nbest) <= 3 and (r.nbest[0].text, r.nbest[0].score) == (r.text, r.score)
    assert [n.norm_score for n in r.nbest] == sorted((n.norm_score for n in r.nbest), reverse=True)
    ends = [0.0]
    for w in r.words:
        assert ends[-1] <= w.start <= w.end <= r.duration + 1e-6
        ends.append(w.end)
    assert "".join(w.text for w in r.words) == r.text.replace(" ", "")
    if r.words:
        assert (r.segments[0].start, r.segments[0].end) == (r.words[0].start, r.words[-1].end)
    json.dumps(r.to_dict())


def test_attention_peak_timestamps_without_ctc(tok, tmp_path):
    from asr import Speech2Text
    from asr.cli.export import export

    export(make_ckpt(tok, tmp_path / "noctc.ckpt", seed=3), tmp_path / "noctc")
    s2t = Speech2Text.from_pretrained(tmp_path / "noctc", beam_size=2)
    assert s2t.options.ctc_weight == 0.0
    (r,) = s2t.transcribe([TEST_WAV])
    assert r.timestamps == "attention"
    assert all(0 <= w.start <= w.end <= r.duration + 1e-6 for w in r.words)


def test_transcribe_arrays_at_another_rate(exported):
    import soundfile as sf

    from asr import Speech2Text

    s2t = Speech2Text.from_pretrained(exported, beam_size=2)
    wav, sr = sf.read(TEST_WAV, dtype="float32")
    ref = s2t.transcribe([TEST_WAV])[0]
    assert s2t.transcribe([wav], sample_rate=sr)[0].text == ref.text
    r8 = s2t.transcribe(torch.from_numpy(wav[::2].copy()), sample_rate=8000)[0]  # resampled to 16 kHz
    assert abs(r8.duration - ref.duration) < 0.01
    with pytest.raises(ValueError, match="sample_rate"):
        s2t.transcribe([wav])
    with pytest.raises(ValueError, match="1-D"):
        s2t.transcribe([np.zeros((2, 1600), dtype=np.float32)], sample_rate=16000)


def test_from_pretrained_hub_id_uses_huggingface_hub(exported, monkeypatch, tmp_path):
    from asr import Speech2Text

    calls = []
    fake = types.ModuleType("huggingface_hub")
    fake.snapshot_download = lambda repo_id, revision=None, cache_dir=None: calls.append((repo_id, revision, cache_dir)) or str(exported)
    monkeypatch.setitem(sys.modules, "huggingface_hub", fake)
    monkeypatch.chdir(tmp_path)
    s2t = Speech2Text.from_pretrained("someone/an4-model", revision="v1", beam_size=2)
    assert calls == [("someone/an4-model", "v1", None)] and s2t.options.beam_size == 2
    monkeypatch.setitem(sys.modules, "huggingface_hub", None)  # not installed: import fails
    with pytest.raises(FileNotFoundError, match=r"pip install 'asr\[hub\]'"):
        Speech2Text.from_pretrained("someone/an4-model")
    with pytest.raises(FileNotFoundError, match="no model directory"):
        Speech2Text.from_pretrained("nowhere/at/all")


def test_model_directory_refusals(exported, tmp_path):
    import shutil

    from asr.models.pretrained import load_model_dir

    bad = tmp_path / "bad"
    shutil.copytree(exported, bad)
    cfg = yaml.safe_load((bad / "config.yaml").read_text())
    cfg["model"]["encoder"]["_target_"] = "os.system"
    (bad / "config.yaml").write_text(yaml.safe_dump(cfg))
    with pytest.raises(ValueError, match="_target_"):
        load_model_dir(bad)
    (bad / "model.safetensors").unlink()
    with pytest.raises(FileNotFoundError, match="model.safetensors is missing"):
        load_model_dir(bad)


# ---- asr-transcribe ------------------------------------------------------------------------------------------------
def test_asr_transcribe_lines_json_list_and_exit_codes(exported, tmp_path, capsys, monkeypatch):
    from asr.cli.transcribe import main

    bad = tmp_path / "not_audio.wav"
    bad.write_text("hello")
    assert main(["--model", str(exported), "--beam-size", "2", WAVS[0], str(bad), WAVS[1]]) == 0
    out, err = capsys.readouterr()
    lines = out.splitlines()
    assert [x.split("\t")[0] for x in lines] == [WAVS[0], WAVS[1]] and all(x.count("\t") == 1 for x in lines)
    assert err.startswith(f"{bad}\tcannot read as audio")
    assert main(["--model", str(exported), str(bad), str(tmp_path / "missing.wav")]) == 1
    assert "file not found" in capsys.readouterr().err
    monkeypatch.setattr(sys, "stdin", io.StringIO(f"{WAVS[2]}\n\n{WAVS[3]}\n"))
    assert main(["--model", str(exported), "--beam-size", "2", "--json", "--list", "-"]) == 0
    rows = [json.loads(x) for x in capsys.readouterr().out.splitlines()]
    assert [r["path"] for r in rows] == WAVS[2:4] and all({"text", "tokens", "score", "words", "segments"} <= r.keys() for r in rows)
    assert main(["--model", str(exported)]) == 2


def test_asr_transcribe_matches_speech2text(exported):
    from asr import Speech2Text

    out = subprocess.run([sys.executable, "-m", "asr.cli.transcribe", "--model", str(exported), "--beam-size", "2", *WAVS[:2]], capture_output=True, text=True, cwd=ROOT, check=True).stdout
    expected = Speech2Text.from_pretrained(exported, beam_size=2).transcribe(WAVS[:2])
    assert out.splitlines() == [f"{p}\t{r.text}" for p, r in zip(WAVS[:2], expected)]


SHIPPED = ROOT / "models/an4_pblstm_x4"


@pytest.mark.skipif(not (SHIPPED / "config.yaml").is_file(), reason="no shipped model in models/")
def test_shipped_model_transcribes_the_test_utterances():
    """The AN4 model in models/ (<= 15 MB) loads from its directory and recognises the two test utterances of
    tests/data/an4 (WER < 30 %: a trained model, not a random one)."""
    from asr import Speech2Text
    from asr.data.an4 import parse_transcription_line
    from asr.metrics.wer import score

    assert (SHIPPED / "model.safetensors").stat().st_size <= 15e6
    refs = dict(parse_transcription_line(x) for x in (MINI_AN4 / "etc/an4_test.transcription").read_text().splitlines())
    wavs = [str(MINI_AN4 / f"wav/{i.strip()}.wav") for i in (MINI_AN4 / "etc/an4_test.fileids").read_text().split()]
    results = Speech2Text.from_pretrained(SHIPPED).transcribe(wavs)
    assert score([refs[Path(w).stem] for w in wavs], [r.text for r in results]).wer < 0.3
