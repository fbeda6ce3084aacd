"""scripts/bench_data.py's building blocks at a tiny scale: the deterministic corpus plan, the nested (and repeated)
corpora, both data paths' files, one in-process measurement per path and the report. Structure only, no timings."""

from __future__ import annotations

import argparse
import importlib.util
import json
import sys
from pathlib import Path

import soundfile as sf
import torch

from conftest import MINI_AN4

TINY_MODEL = ("model.encoder.hidden_size=8 model.encoder.subsample=[8,1,1] model.attention.att_dim=8 model.attention.kernel_size=5"
              " model.decoder.hidden_size=8 model.decoder.embed_dim=4")


def load_bench():
    """scripts/bench_data.py as module ``bench_data``, registered in sys.modules (its dataclass needs that)."""
    spec = importlib.util.spec_from_file_location("bench_data", Path(__file__).resolve().parents[1] / "scripts" / "bench_data.py")
    mod = importlib.util.module_from_spec(spec)
    sys.modules["bench_data"] = mod
    spec.loader.exec_module(mod)
    return mod


def test_plan_is_deterministic_nested_and_bounded():
    bench = load_bench()
    lens = {sp: [int(n / sp) for n in (16000, 24000, 40000, 8000)] for sp in bench.SPEEDS}
    texts = ["A", "B C", "D", "E F G"]
    a = bench.plan_corpus(lens, texts, 0.05, seed=3, min_s=4.0, max_s=8.0)
    assert [asdict_(p) for p in a] == [asdict_(p) for p in bench.plan_corpus(lens, texts, 0.05, seed=3, min_s=4.0, max_s=8.0)]
    assert [asdict_(p) for p in a] != [asdict_(p) for p in bench.plan_corpus(lens, texts, 0.05, seed=4, min_s=4.0, max_s=8.0)]
    assert sum(p.duration for p in a) >= 0.05 * 3600 and all(4.0 <= p.duration <= 8.0 for p in a)
    for p in a:  # the transcript is the pieces' transcripts, the length their speed-perturbed lengths
        assert p.text == " ".join(texts[j] for j, _, _ in p.pieces)
        assert p.num_samples == sum(lens[sp][j] for j, sp, _ in p.pieces)
        assert all(10 ** (-6 / 20) <= g <= 10 ** (6 / 20) for _, _, g in p.pieces)
    sizes = bench.corpus_sizes(a, [0.01, 0.05, 0.15])
    assert sizes[0.01] < sizes[0.05] == len(a) < sizes[0.15]  # nested; beyond the distinct utterances, repeats
    assert sizes[0.15] in (3 * len(a), 3 * len(a) - 1) or sizes[0.15] <= 3 * len(a)
    ids = [bench.utterance_id(i)[0] for i in range(250)]
    assert ids == sorted(ids) and len(set(ids)) == 250


def asdict_(p):
    return (p.utt_id, p.pieces, p.num_samples, p.text)


def test_build_and_measure_both_paths(tmp_path):
    bench = load_bench()
    args = argparse.Namespace(work=tmp_path, hours=[0.005, 0.01, 0.02], distinct_h=0.01, an4=str(MINI_AN4), seed=0, min_s=4.0, max_s=8.0, jobs=1)
    times = bench.build(args)
    assert any(k.startswith("generate FLAC") for k in times) and all(v >= 0 for v in times.values())
    stamp = json.loads((tmp_path / bench.BUILD_STAMP).read_text())
    assert stamp["params"] == bench.build_params(args)
    sizes = {float(k): v for k, v in stamp["sizes"].items()}
    assert sizes[0.005] < sizes[0.01] < sizes[0.02] and sizes[0.01] == stamp["distinct_utts"]
    flacs = sorted((tmp_path / "audio").glob("*.flac"))
    assert len(flacs) == stamp["distinct_utts"]  # repeats share the distinct utterances' audio
    info = sf.info(str(flacs[0]))
    assert info.samplerate == 16000 and info.format == "FLAC" and info.duration >= 4.0
    from asr.data.lhotse_data import load_cuts

    for h, n in sizes.items():
        d = bench.corpus_dir(tmp_path, h)
        assert len((d / "data" / "text").read_text().splitlines()) == n
        feats = torch.load(d / "dump" / "feats.pt", weights_only=True)
        cuts = list(load_cuts(d / "cuts.jsonl.gz"))
        assert len(feats) == len(cuts) == n and sorted(feats) == [c.id for c in cuts]
        assert all(c.has_features for c in cuts) and next(iter(feats.values())).shape[1] == 80
    # a repeated utterance: the same features under its own id, its own storage in feats.pt
    big = torch.load(bench.corpus_dir(tmp_path, 0.02) / "dump" / "feats.pt", weights_only=True)
    first, rep = bench.utterance_id(0)[0], bench.utterance_id(sizes[0.01])[0]
    assert torch.equal(big[first], big[rep]) and big[first].data_ptr() != big[rep].data_ptr()

    rows = []
    for h in (0.005, 0.02):
        for path in ("old", "new"):
            r = bench.measure(path, bench.corpus_dir(tmp_path, h), tmp_path, steps=2, replay=1, tput_batches=3, workers=0, batch_size=2, overrides=TINY_MODEL, threads=1)
            assert r["utts"] == sizes[h] and r["peak_rss_mb"] > 0 and r["replay_steps"] == 1
            assert r["step_ratio"] > 0 and 0 <= r["wait_fraction"] <= 1 and r["loader_utt_per_s"] > 0
            r["hours"] = h
            rows.append(r)
    md = bench.table(rows, stamp).splitlines()
    assert md[0].startswith("| corpus h | utterances | path | peak RSS MB |") and len(md) == 2 + len(rows)
    assert all(line.count("|") == md[0].count("|") for line in md)
    lines = bench.verdict(rows)
    assert lines[0].startswith("new: peak RSS") and "done-criterion" in lines[0] and lines[1].startswith("old: peak RSS")
