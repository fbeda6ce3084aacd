"""Resumable decoding on real AN4 audio: a decode killed half-way continues where it stopped and its final
files equal those of an uninterrupted decode; a truncated partial line is re-decoded; other settings start over.

The model is a tiny untrained one (fixed seed) with the mini_an4 char tokenizer, decoded over the 6
train_nodev utterances; an interruption is a ``KeyboardInterrupt`` raised by ``decode_batch``.
"""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

import numpy as np
import pytest

import asr.decoding.decode_dir as decode_dir
import asr.decoding.engine as engine_mod
from asr.cli.decode import PARTIAL_DIR, PARTIAL_RESULTS, decode
from conftest import make_ckpt

N_UTTS = 6  # train_nodev of the mini_an4 fixture


@pytest.fixture(scope="module")
def ckpt(mini_an4, tmp_path_factory) -> Path:
    from asr.text.tokenizer import Tokenizer

    tok = Tokenizer.from_file(mini_an4 / "data/token/char.model")
    return make_ckpt(tok, tmp_path_factory.mktemp("ckpt") / "tiny.ckpt", seed=0)


def _cfg(ckpt: Path, mini_an4: Path, out: Path, **kw) -> dict:
    return {"ckpt": str(ckpt), "data_dir": str(mini_an4 / "data/train_nodev"), "dump_dir": str(mini_an4 / "dump/train_nodev"),
            "out_dir": str(out), "beam_size": 2, "max_len_ratio": 0.5, "min_len": 1, "length_penalty": 0.5, "batch_size": 2, **kw}


@pytest.fixture(scope="module")
def reference(ckpt, mini_an4, tmp_path_factory) -> Path:
    """An uninterrupted decode, all 6 utterances in one batch (another batch composition than the tests')."""
    out = tmp_path_factory.mktemp("reference")
    info = decode(_cfg(ckpt, mini_an4, out, batch_size=N_UTTS))
    assert info["n_utts"] == N_UTTS and info["resumed_utts"] == 0 and info["n_batches"] == 1
    return out


def _interrupt_after(monkeypatch, n_batches: int) -> list[int]:
    """Make ``decode_batch`` raise KeyboardInterrupt on call ``n_batches + 1``; returns the batch sizes seen."""
    real, sizes = engine_mod.decode_batch, []

    def fake(model, feats, feat_lens, opts, **kw):
        if len(sizes) == n_batches:
            raise KeyboardInterrupt
        sizes.append(int(feats.shape[0]))
        return real(model, feats, feat_lens, opts, **kw)

    monkeypatch.setattr(engine_mod, "decode_batch", fake)
    return sizes


def _partial_rows(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / PARTIAL_RESULTS).read_text().splitlines()]


def _assert_same_final_files(out: Path, ref: Path) -> None:
    """results.jsonl, hyp.trn, ref.trn byte for byte; attention arrays close; no partial files left."""
    for name in ("results.jsonl", "hyp.trn", "ref.trn"):
        assert (out / name).read_bytes() == (ref / name).read_bytes(), name
    with np.load(out / "attention.npz") as a, np.load(ref / "attention.npz") as b:
        assert sorted(a.files) == sorted(b.files) and len(a.files) == N_UTTS
        for k in a.files:
            assert a[k].shape == b[k].shape and a[k].dtype == np.float32
            np.testing.assert_allclose(a[k], b[k], rtol=1e-4, atol=1e-5)
    assert not (out / PARTIAL_RESULTS).exists() and not (out / PARTIAL_DIR).exists()
    meta, ref_meta = json.loads((out / "meta.json").read_text()), json.loads((ref / "meta.json").read_text())
    for key in ("n_utts", "beam_size", "max_len_ratio", "length_penalty", "ctc_weight", "n_errors"):
        assert meta[key] == ref_meta[key], key


def test_interrupted_decode_resumes_and_matches_uninterrupted(ckpt, mini_an4, reference, tmp_path, monkeypatch):
    out = tmp_path / "dec"
    sizes = _interrupt_after(monkeypatch, 1)
    with pytest.raises(KeyboardInterrupt):
        decode(_cfg(ckpt, mini_an4, out))
    assert sizes == [2]
    # The partial files hold exactly the first batch: the 2 shortest utterances, rows and attention.
    ref_rows = {r["utt_id"]: r for r in map(json.loads, (reference / "results.jsonl").read_text().splitlines())}
    shortest = sorted(ref_rows, key=lambda u: (ref_rows[u]["n_frames"], u))[:2]
    rows = _partial_rows(out)
    assert sorted(r["utt_id"] for r in rows) == sorted(shortest)
    assert all(r["_shard"] == 0 for r in rows)
    with np.load(out / PARTIAL_DIR / "attention_0.npz") as z:
        assert sorted(z.files) == sorted(shortest)
    assert sorted(p.name for p in (out / PARTIAL_DIR).iterdir()) == ["attention_0.npz", "settings.json"]
    assert not (out / "results.jsonl").exists() and not (out / "attention.npz").exists()

    monkeypatch.undo()
    calls = _interrupt_after(monkeypatch, 99)  # counts only
    info = decode(_cfg(ckpt, mini_an4, out))
    assert info["resumed_utts"] == 2 and info["n_utts"] == N_UTTS and info["n_batches"] == 2
    assert sum(calls) == N_UTTS - 2  # the 2 done utterances were not decoded again
    assert json.loads((out / "meta.json").read_text())["resumed_utts"] == 2
    _assert_same_final_files(out, reference)


def test_truncated_last_partial_line_is_ignored_and_redecoded(ckpt, mini_an4, reference, tmp_path, monkeypatch):
    out = tmp_path / "dec"
    _interrupt_after(monkeypatch, 2)
    with pytest.raises(KeyboardInterrupt):
        decode(_cfg(ckpt, mini_an4, out))
    part = out / PARTIAL_RESULTS
    text = part.read_text()
    lines = text.splitlines(keepends=True)
    assert len(lines) == 4
    lost = json.loads(lines[-1])["utt_id"]
    part.write_text("".join(lines[:-1]) + lines[-1][: len(lines[-1]) // 2])  # killed mid-write: half a line, no newline

    monkeypatch.undo()
    calls = _interrupt_after(monkeypatch, 99)
    seen: list[str] = []
    real_save = decode_dir.save_batch
    monkeypatch.setattr(decode_dir, "save_batch", lambda o, s, rows, atts, f: (seen.extend(r["utt_id"] for r in rows), real_save(o, s, rows, atts, f)))
    info = decode(_cfg(ckpt, mini_an4, out))
    assert info["resumed_utts"] == 3 and info["n_utts"] == N_UTTS
    assert sum(calls) == 3 and lost in seen  # the utterance of the truncated line was decoded again
    _assert_same_final_files(out, reference)


@pytest.mark.parametrize("change", ["beam_size", "length_penalty", "checkpoint", "ensemble", "resume_false"])
def test_changed_settings_start_over(ckpt, mini_an4, tmp_path, monkeypatch, caplog, change):
    from asr.text.tokenizer import Tokenizer

    my_ckpt = Path(shutil.copy(ckpt, tmp_path / "model.ckpt"))
    out = tmp_path / "dec"
    _interrupt_after(monkeypatch, 1)
    with pytest.raises(KeyboardInterrupt):
        decode(_cfg(my_ckpt, mini_an4, out))
    assert len(_partial_rows(out)) == 2
    monkeypatch.undo()

    kw: dict = {}
    if change == "beam_size":
        kw = {"beam_size": 3}
    elif change == "length_penalty":
        kw = {"length_penalty": 1.0}
    elif change == "checkpoint":  # same path, other weights
        make_ckpt(Tokenizer.from_file(mini_an4 / "data/token/char.model"), my_ckpt, seed=1)
    elif change == "ensemble":  # decoded together with another model
        kw = {"ensemble": [str(make_ckpt(Tokenizer.from_file(mini_an4 / "data/token/char.model"), tmp_path / "other.ckpt", seed=1))]}
    else:
        kw = {"resume": False}
    fresh = tmp_path / "fresh"
    ref_info = decode(_cfg(my_ckpt, mini_an4, fresh, **kw))
    calls = _interrupt_after(monkeypatch, 99)
    with caplog.at_level(logging.WARNING, logger="asr.decode"):
        info = decode(_cfg(my_ckpt, mini_an4, out, **kw))
    assert info["resumed_utts"] == 0 and sum(calls) == N_UTTS and info["n_batches"] == 3
    if change != "resume_false":
        assert any("other settings" in r.getMessage() for r in caplog.records)
    assert ref_info["n_utts"] == N_UTTS
    _assert_same_final_files(out, fresh)
