"""asr-decode over several processes (asr.decoding.parallel, issue 30): inputs sharded by duration, each process
decodes its part with the one engine, rank 0 merges; the merged folder equals the one-process decode.

Real audio: 20 AN4 test utterances when AN4_ROOT points at the corpus (CI), else the 10 clips of tests/data/an4
and the same clips cut to their first 80 % (other lengths, other batches); the shipped model."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from conftest import MINI_AN4, an4_root

ROOT = Path(__file__).resolve().parents[1]
MODEL = ROOT / "models" / "an4_pblstm_x4"


def test_shard_by_duration_balances_seconds_and_covers_every_input_once():
    from asr.decoding.parallel import shard_by_duration

    durations = [9.0, 1.0, 1.0, 1.0, 4.0, 4.0, 2.0, 0.5]
    parts = shard_by_duration(durations, 2)
    assert sorted(i for p in parts for i in p) == list(range(len(durations)))
    assert all(p == sorted(p) for p in parts)
    loads = [sum(durations[i] for i in p) for p in parts]
    assert abs(loads[0] - loads[1]) <= 0.5, loads  # by count it would be 4 + 4 inputs of 17 s and 5.5 s
    assert shard_by_duration([3.0], 3) == [[0], [], []]
    with pytest.raises(ValueError, match="at least one process"):
        shard_by_duration([1.0], 0)


@pytest.fixture(scope="module")
def twenty_utts(tmp_path_factory) -> list[str]:
    root = an4_root()
    if root is not None:
        return sorted(str(p) for p in (root / "wav" / "an4test_clstk").rglob("*.wav"))[:20]
    out = tmp_path_factory.mktemp("cut")
    wavs = sorted(str(p) for p in (MINI_AN4 / "wav").rglob("*.wav"))
    cut = []
    for w in wavs:
        x, sr = sf.read(w, dtype="float32")
        path = out / f"{Path(w).stem}-cut.wav"
        sf.write(str(path), x[: int(0.8 * len(x))], sr, subtype="PCM_16")
        cut.append(str(path))
    return wavs + cut


def _decode(out_dir: Path, audio: list[str], *extra: str, model: Path | str = MODEL) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "asr.cli.decode", f"ckpt={model}", f"audio=[{','.join(audio)}]", f"out_dir={out_dir}", "threads=1", *extra],
        capture_output=True, text=True, cwd=ROOT, timeout=600,
    )


def test_two_processes_give_the_results_of_one(twenty_utts, tmp_path):
    bad = tmp_path / "broken.wav"
    bad.write_bytes(b"RIFF not audio")
    audio = [*twenty_utts, str(bad)]
    one = _decode(tmp_path / "one", audio)
    assert one.returncode == 0, one.stderr[-2000:]
    two = _decode(tmp_path / "two", audio, "num_procs=2")
    assert two.returncode == 0, two.stderr[-2000:]
    assert "with 2 processes" in two.stdout

    def rows(d: Path) -> list[dict]:
        return [json.loads(x) for x in (d / "results.jsonl").read_text().splitlines()]

    a, b = rows(tmp_path / "one"), rows(tmp_path / "two")
    assert len(a) == 20 and [r["utt_id"] for r in a] == [r["utt_id"] for r in b]
    for x, y in zip(a, b):  # other batch compositions: the same hypotheses, scores equal up to float noise
        assert (x["hyp"], x["tokens"], x["n_frames"], x["enc_frames"]) == (y["hyp"], y["tokens"], y["n_frames"], y["enc_frames"])
        assert x["score"] == pytest.approx(y["score"], abs=1e-3)
    assert sum(1 for r in a if r["hyp"]) >= 15  # a real model on real audio: words, not empty strings
    assert (tmp_path / "one" / "hyp.trn").read_text() == (tmp_path / "two" / "hyp.trn").read_text()
    for d in ("one", "two"):  # the bad file is an error row of the merged folder too, not an abort
        lines = (tmp_path / d / "errors.tsv").read_text().splitlines()
        assert len(lines) == 2 and lines[1].startswith(str(bad))
    with np.load(tmp_path / "one" / "attention.npz") as za, np.load(tmp_path / "two" / "attention.npz") as zb:
        assert sorted(za.files) == sorted(zb.files)
        for k in za.files:
            assert za[k].shape == zb[k].shape
    meta = json.loads((tmp_path / "two" / "meta.json").read_text())
    assert meta["processes"] == 2 and meta["n_utts"] == 20 and meta["n_errors"] == 1
    assert sum(s["n_utts"] for s in meta["shards"]) == 20 and min(s["n_utts"] for s in meta["shards"]) >= 7
    assert not (tmp_path / "two" / ".shards").exists()


def test_a_failing_process_is_one_line_and_keeps_nothing_half_merged(tmp_path):
    proc = _decode(tmp_path / "d", [str(MINI_AN4 / "wav/an4test_clstk/fjlp/an419-fjlp-b.wav")], "num_procs=2", model="/nonexistent/model")
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines()[-1].startswith("asr-decode: no model at /nonexistent/model")
    assert not (tmp_path / "d" / "results.jsonl").exists()


def test_gpu_decode_script_runs_on_the_cpu(mini_an4, tmp_path):
    """recipes/an4/local/gpu_decode.sh in CI size with DEVICE=cpu: a row per search, batch size and encoder dtype,
    with WER and the hypotheses equal to float32's."""
    env = {**__import__("os").environ, "DEVICE": "cpu", "BATCHES": "1,2", "SEARCHES": "greedy,beam10", "DATA": str(mini_an4 / "data/test"), "THREADS": "1"}
    proc = subprocess.run(["bash", str(ROOT / "recipes/an4/local/gpu_decode.sh"), str(tmp_path / "out")], capture_output=True, text=True, cwd=ROOT, env=env, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    rows = json.loads((tmp_path / "out" / "bench_decode.json").read_text())
    assert [(r["search"], r["batch"], r["encoder_dtype"]) for r in rows] == [
        (s, b, d) for s in ("greedy", "beam10") for b in (1, 2) for d in ("float32", "bfloat16")]
    for r in rows:
        assert r["n_utts"] == 2 and r["audio_s"] > 1 and 0 < r["rtf_search"] <= r["rtf_wall"] and 0 <= r["wer"] <= 100
        assert r["same_hyps"] == 2  # the shipped model's texts with a bf16 encoder
    assert rows[0]["wer"] == rows[2]["wer"]  # batched = unbatched
    assert "RTFx" in (tmp_path / "out" / "bench_decode.txt").read_text()
