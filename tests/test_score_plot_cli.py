"""asr-score / asr-plot on a small fake decode directory (functions and console entry points)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from asr.cli.plot import choose_compare_utt, plot_compare, plot_decode_dir
from asr.cli.score import score_decode_dir
from asr.metrics.wer import write_trn

REPO = Path(__file__).resolve().parents[1]

# u1: 1 sub + 1 del (2 errors / 4), u2: 1 ins (1 / 6), u3: correct (0 / 2)
#  -> WER = 3 / 12 = 25 %, sentence errors 2 / 3
REFS = {"u1": "A B C D", "u2": "E F G H I J", "u3": "K L"}
HYPS = {"u1": "A X C", "u2": "E F G H I J K", "u3": "K L"}


def make_decode_dir(d: Path, hyps: dict[str, str] = HYPS, attention: str = "dot", subsampling: int = 8) -> Path:
    d.mkdir(parents=True)
    rng = np.random.default_rng(0)
    arrays = {}
    with (d / "results.jsonl").open("w") as f:
        for uid, ref in REFS.items():
            tokens = ["▁" + w for w in hyps[uid].split()]
            enc = (12 + len(tokens)) * 8 // subsampling
            w = rng.random((len(tokens) + 1, enc)).astype(np.float32)
            arrays[uid] = w / w.sum(1, keepdims=True)
            row = {"utt_id": uid, "ref": ref, "hyp": hyps[uid], "score": -1.0, "tokens": tokens,
                   "n_frames": enc * subsampling, "enc_frames": enc}
            f.write(json.dumps(row) + "\n")
    np.savez(d / "attention.npz", **arrays)
    (d / "meta.json").write_text(json.dumps({"frame_shift_s": 0.01, "subsampling": subsampling, "attention": attention,
                                             "checkpoint": "x.ckpt", "beam_size": 1}))
    write_trn(d / "ref.trn", REFS)
    write_trn(d / "hyp.trn", hyps)
    return d


def run_cli(module: str, args: list[str], cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    proc = subprocess.run([sys.executable, "-m", module, *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    return proc


def test_score_decode_dir_writes_reports(tmp_path):
    d = make_decode_dir(tmp_path / "dec")
    r = score_decode_dir(d)
    assert r.wer == pytest.approx(0.25)
    js = json.loads((d / "scoring" / "wer.json").read_text())
    assert js["wer"] == pytest.approx(25.0)
    assert js["words"] == {"sub": 1, "del": 1, "ins": 1, "hits": 10, "n_ref": 12}
    assert js["n_utts"] == 3 and js["n_sent_err"] == 2
    assert js["ser"] == pytest.approx(200 / 3)
    assert "25.00" in (d / "scoring" / "result.txt").read_text()
    listing = (d / "scoring" / "per_utt.txt").read_text()
    assert listing.index("(u1)") < listing.index("(u2)") < listing.index("(u3)")  # most errors first


def test_score_falls_back_to_trn(tmp_path):
    d = make_decode_dir(tmp_path / "dec")
    (d / "results.jsonl").unlink()
    r = score_decode_dir(d, tmp_path / "out")
    assert (r.words.sub, r.words.dele, r.words.ins, r.words.n_ref) == (1, 1, 1, 12)
    assert (tmp_path / "out" / "wer.json").is_file()
    (d / "ref.trn").unlink()
    with pytest.raises(FileNotFoundError):
        score_decode_dir(d)


def test_score_cli(tmp_path):
    d = make_decode_dir(tmp_path / "dec")
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    proc = run_cli("asr.cli.score", [f"decode_dir={d}"], cwd)
    assert f"WER 25.00 % (sub 1, del 1, ins 1 / 12 words)" in proc.stdout
    assert f"[{d}]" in proc.stdout
    assert (d / "scoring" / "wer.json").is_file()
    assert list(cwd.iterdir()) == []  # no outputs/, .hydra/ or log file


def test_plot_decode_dir_worst_n(tmp_path):
    d = make_decode_dir(tmp_path / "dec")
    paths = plot_decode_dir(d, utt_ids=["u3"], worst_n=1)
    assert [p.name for p in paths] == ["u3.png", "u1.png"]
    assert all(p.stat().st_size > 1000 for p in paths)
    with pytest.raises(ValueError, match="nope"):
        plot_decode_dir(d, utt_ids=["nope"])


def test_plot_cli_and_compare(tmp_path):
    d1 = make_decode_dir(tmp_path / "dot")
    # second model also gets u1 right; u3 is right in both
    d2 = make_decode_dir(tmp_path / "loc", hyps={**HYPS, "u1": "A B C D"}, attention="location_aware")
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    proc = run_cli("asr.cli.plot", [f"decode_dir={d1}", "worst_n=2"], cwd)
    pngs = sorted(p.name for p in (d1 / "plots").glob("*.png"))
    assert pngs == ["u1.png", "u2.png"]
    assert str(d1 / "plots" / "u1.png") in proc.stdout
    assert list(cwd.iterdir()) == []

    # u1: wrong in d1; u2: wrong in both; u3: right in both -> u3
    assert choose_compare_utt([d1, d2]) == "u3"
    proc = run_cli("asr.cli.plot", [f"compare_dirs=[{d1},{d2}]"], cwd)
    out = d1 / "plots" / "compare_u3.png"
    assert out.is_file() and out.stat().st_size > 1000
    assert str(out) in proc.stdout
    assert list(cwd.iterdir()) == []


def test_compare_fallback_and_labels(tmp_path):
    bad = {"u1": "Z", "u2": "Z", "u3": "Z"}
    d1 = make_decode_dir(tmp_path / "a", hyps=bad)
    d2 = make_decode_dir(tmp_path / "b")
    assert choose_compare_utt([d1, d2]) == "u1"  # nothing right in both -> first common utt
    p = plot_compare([d1, d2], ["A", "B"], "u2", tmp_path / "c.png")
    assert p.stat().st_size > 1000
    # a x4 model beside a x8 one (the recipe's comparison figure once both exist): drawn, not refused
    d4 = make_decode_dir(tmp_path / "x4", subsampling=4)
    assert plot_compare([d2, d4], ["x8", "x4"], "u2", tmp_path / "c48.png").stat().st_size > 1000
    with pytest.raises(ValueError):
        plot_compare([d1, d2], ["only one"], "u2", tmp_path / "c.png")


def test_compare_labels_name_the_experiments_when_scorers_repeat(tmp_path, monkeypatch):
    import asr.cli.plot as plot_cli

    seen = []
    monkeypatch.setattr(plot_cli, "plot_comparison", lambda panels, out, **kw: seen.append([p[0] for p in panels]) or Path(out))
    a = make_decode_dir(tmp_path / "exp_a" / "decode_test", attention="location_aware")
    b = make_decode_dir(tmp_path / "exp_b" / "decode_test", attention="location_aware")
    c = make_decode_dir(tmp_path / "exp_c" / "decode_test", attention="dot")
    plot_compare([a, c], None, "u2", tmp_path / "ac.png")
    plot_compare([a, b], None, "u2", tmp_path / "ab.png")
    assert [t.split()[0] for t in seen[0]] == ["location_aware", "dot"]
    assert [t.split()[0] for t in seen[1]] == ["exp_a/decode_test", "exp_b/decode_test"]
