"""Issue 33: a tool deletes or replaces only what it wrote; resume keyed on content; asr-score's edge cases.

* Output folders (asr.utils.owned): every tool records what it wrote in ``<folder>/.asr-owned.json``; a re-run
  removes only those entries; a non-empty folder without a manifest is refused with one line
  ``asr-<tool>: <path>: <reason>`` (exit status 2) unless ``overwrite=true``, which removes nothing. Cases with
  pre-existing user files in every output folder of asr-decode (the decode folder, its ``plots/``, ``report/``,
  ``scoring/``), asr-inspect (``audio/``, ``figures/``), asr-export (``README.md``; a failure half-way),
  asr-plot and asr-score.
* Resume keyed on content (:func:`asr.decoding.results.input_signature`): two files' contents swapped, sizes and
  mtimes kept, are decoded again.
* asr-score: non-string fields and empty results are one-line errors, exit status 2.

Audio is real AN4 (tests/data/an4); models are tiny untrained ones.
"""

from __future__ import annotations

import errno
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from conftest import make_ckpt
from test_score_plot_cli import make_decode_dir

from asr.utils.owned import MANIFEST, OutputDirError, OwnedOutput, claim_output_dir, read_manifest, remove_owned

REPO = Path(__file__).resolve().parents[1]
AN4 = Path(__file__).parent / "data" / "an4"
WAVS = sorted((AN4 / "wav").rglob("*.wav"))
GOOD_WAV = AN4 / "wav" / "an4_clstk" / "fmjc" / "an120-fmjc-b.wav"


@pytest.fixture(scope="module")
def tiny_ckpt(tmp_path_factory):
    from asr.text.tokenizer import Tokenizer

    tok = Tokenizer.train(["HELLO WORLD", "YES NO", "ONE TWO THREE"], tmp_path_factory.mktemp("tok") / "char", kind="char")
    return make_ckpt(tok, tmp_path_factory.mktemp("ckpt") / "tiny.ckpt", seed=0)


def _decode(ckpt: Path, out: Path, **kw) -> dict:
    from asr.cli.decode import decode

    cfg = {"ckpt": str(ckpt), "out_dir": str(out), "beam_size": 2, "max_len_ratio": 0.05, "min_len": 1, "length_penalty": 0.5, "batch_size": 8, **kw}
    return decode(cfg)


def _cli(args: list[str], cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    return subprocess.run([sys.executable, "-m", f"asr.cli.{args[0]}", *args[1:]], cwd=cwd, env=env, capture_output=True, text=True, timeout=300)


def _one_line_error(proc: subprocess.CompletedProcess, tool: str, path: Path | str, *words: str) -> None:
    assert proc.returncode == 2, proc.stderr[-2000:]
    lines = [x for x in proc.stderr.splitlines() if x.startswith(f"{tool}: ")]
    assert len(lines) == 1 and "Traceback" not in proc.stderr, proc.stderr[-2000:]
    assert lines[0].startswith(f"{tool}: {path}: "), lines[0]
    for w in words:
        assert w in lines[0], lines[0]


def _tree(d: Path) -> dict[str, bytes]:
    return {str(p.relative_to(d)): p.read_bytes() for p in sorted(d.rglob("*")) if p.is_file()}


# ------------------------------------------------------------------------------------ asr.utils.owned itself


def test_manifest_lists_only_what_was_written_and_removes_only_that(tmp_path):
    out = tmp_path / "o"
    out.mkdir()
    (out / "user.txt").write_text("mine")
    with OwnedOutput(out, "asr-x", overwrite=True):
        (out / "a.txt").write_text("a")
        (out / "sub").mkdir()
        (out / "sub" / "b.txt").write_text("b")
    assert sorted(read_manifest(out)["asr-x"]) == ["a.txt", "sub/", "sub/b.txt"]
    (out / "sub" / "user2.txt").write_text("mine too")  # the user adds a file inside the tool's folder
    removed = remove_owned(out, "asr-x")
    assert sorted(removed) == ["a.txt", "sub/b.txt"]
    assert (out / "user.txt").read_text() == "mine" and (out / "sub" / "user2.txt").read_text() == "mine too"
    assert read_manifest(out)["asr-x"] == ["sub/"]  # still listed: removed once it is empty


def test_hostile_manifest_entries_are_ignored(tmp_path):
    victim = tmp_path / "victim.txt"
    victim.write_text("keep")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (elsewhere / "x.txt").write_text("keep")
    out = tmp_path / "o"
    out.mkdir()
    (out / "link").symlink_to(elsewhere)
    (out / MANIFEST).write_text(json.dumps({"version": 1, "tools": {"asr-decode": [
        "../victim.txt", str(victim), "link/x.txt", "./../victim.txt", "", 3, None, MANIFEST, "link"]}}))
    remove_owned(out)
    assert victim.read_text() == "keep" and (elsewhere / "x.txt").read_text() == "keep"
    assert not (out / "link").exists() and (elsewhere / "x.txt").exists()  # the listed symlink itself is unlinked, not followed
    (out / MANIFEST).write_text("[1, 2")
    with pytest.raises(OutputDirError, match="not a valid ownership manifest"):
        claim_output_dir(out, "asr-decode")


def test_claim_refuses_a_non_empty_folder_without_manifest(tmp_path):
    out = tmp_path / "o"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    with pytest.raises(OutputDirError, match=f"^{out}: not empty and not written by asr-x \\(holds notes.txt\\)"):
        claim_output_dir(out, "asr-x")
    claim_output_dir(out, "asr-x", overwrite=True)
    assert (out / "notes.txt").read_text() == "mine" and read_manifest(out) == {"asr-x": []}
    claim_output_dir(out, "asr-x")  # now it has a manifest: accepted, nothing removed
    assert (out / "notes.txt").read_text() == "mine"
    f = tmp_path / "file"
    f.write_text("x")
    with pytest.raises(OutputDirError, match="exists and is not a folder"):
        claim_output_dir(f, "asr-x")


# ------------------------------------------------------------------------------------------------ asr-decode


def test_decode_refuses_a_users_folder_and_overwrite_keeps_its_files(tmp_path, tiny_ckpt):
    out = tmp_path / "mine"
    out.mkdir()
    (out / "notes.txt").write_text("my notes")
    (out / "plots").mkdir()
    (out / "plots" / "fig.png").write_bytes(b"png")
    before = _tree(out)
    with pytest.raises(OutputDirError, match=f"{out}: not empty and not written by asr-decode"):
        _decode(tiny_ckpt, out, audio=[str(GOOD_WAV)])
    assert _tree(out) == before
    proc = _cli(["decode", f"ckpt={tiny_ckpt}", f"audio={GOOD_WAV}", f"out_dir={out}", "max_len_ratio=0.05", "min_len=1"], tmp_path)
    _one_line_error(proc, "asr-decode", out, "not empty and not written by asr-decode", "overwrite=true")
    assert _tree(out) == before
    proc = _cli(["decode", f"ckpt={tiny_ckpt}", f"audio={GOOD_WAV}", f"out_dir={out}", "max_len_ratio=0.05", "min_len=1", "overwrite=true"], tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    after = _tree(out)
    assert all(after[k] == v for k, v in before.items())  # the user's files, untouched
    assert "results.jsonl" in after and "meta.json" in after
    assert {"results.jsonl", "attention.npz", "hyp.trn", "ref.trn", "meta.json"} <= set(read_manifest(out)["asr-decode"])


def test_redecode_keeps_user_plots_report_and_top_level_files(tmp_path, tiny_ckpt):
    out = tmp_path / "dec"
    _decode(tiny_ckpt, out, audio=[str(GOOD_WAV), str(tmp_path / "gone.wav")])
    assert (out / "errors.tsv").is_file()
    for sub in ("plots", "report", "scoring"):  # the user's own folders of the tools' names, no manifest
        (out / sub).mkdir()
        (out / sub / "mine.txt").write_text(sub)
    (out / "README.txt").write_text("what this decode was for")
    _decode(tiny_ckpt, out, audio=[str(GOOD_WAV)])
    assert not (out / "errors.tsv").exists()  # the decode's own stale file is removed
    for sub in ("plots", "report", "scoring"):
        assert (out / sub / "mine.txt").read_text() == sub
    assert (out / "README.txt").read_text() == "what this decode was for"


def test_redecode_removes_tool_outputs_but_not_user_files_inside_them(tmp_path, tiny_ckpt):
    from asr.cli.score import score_decode_dir

    out = tmp_path / "dec"
    _decode(tiny_ckpt, out, audio=[str(GOOD_WAV)])
    score_decode_dir(out)
    with OwnedOutput(out / "plots", "asr-plot", clean=False):
        (out / "plots" / "u.png").write_bytes(b"plot")
    (out / "plots" / "annotated.png").write_bytes(b"user")  # the user's file in asr-plot's folder
    _decode(tiny_ckpt, out, audio=[str(GOOD_WAV)])
    assert not (out / "scoring").exists() and not (out / "plots" / "u.png").exists()
    assert (out / "plots" / "annotated.png").read_bytes() == b"user"


def test_resume_files_do_not_make_a_folder_foreign(tmp_path, tiny_ckpt):
    """A folder holding only a decode's lock and partial files (e.g. of a decode killed under an older version)
    is not refused: resuming keeps working."""
    out = tmp_path / "dec"
    out.mkdir()
    (out / ".decode.lock").write_text("1\n")
    (out / ".partial").mkdir()
    (out / "results.partial.jsonl").write_text("")
    assert _decode(tiny_ckpt, out, audio=[str(GOOD_WAV)])["n_utts"] == 1


# ------------------------------------------------------------------------------------------------ asr-inspect


def test_inspect_refuses_and_keeps_user_audio_and_figures(tmp_path):
    from asr.viz.report import build_report

    d = make_decode_dir(tmp_path / "dec")
    rep = tmp_path / "rep"
    for sub in ("audio", "figures", "utts"):
        (rep / sub).mkdir(parents=True)
        (rep / sub / "mine.bin").write_bytes(sub.encode())
    before = _tree(rep)
    with pytest.raises(OutputDirError, match=f"{rep}: not empty and not written by asr-inspect"):
        build_report(d, rep, use_model=False, audio=False, jobs=1)
    assert _tree(rep) == before
    build_report(d, rep, use_model=False, audio=False, jobs=1, overwrite=True)
    assert (rep / "index.html").is_file() and all((rep / k).read_bytes() == v for k, v in before.items())
    (rep / "utts" / "u1.html").write_text("stale")  # a report file: the next report replaces it
    build_report(d, rep, use_model=False, audio=False, jobs=1)  # it has a manifest now: no overwrite needed
    assert all((rep / k).read_bytes() == v for k, v in before.items())
    assert (rep / "utts" / "u1.html").read_text() != "stale"


def test_inspect_rerun_removes_its_stale_pages_only(tmp_path):
    from asr.viz.report import build_report

    d = make_decode_dir(tmp_path / "dec")
    build_report(d, None, use_model=False, audio=False, jobs=1)
    rep = d / "report"
    assert (rep / "utts" / "u3.html").is_file()
    (rep / "figures" / "my_notes.txt").write_text("mine")
    rows = [json.loads(x) for x in (d / "results.jsonl").read_text().splitlines()]
    (d / "results.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows if r["utt_id"] != "u3"))
    build_report(d, None, use_model=False, audio=False, jobs=1)
    assert not (rep / "utts" / "u3.html").exists()  # a page of the earlier report, no longer produced
    assert (rep / "figures" / "my_notes.txt").read_text() == "mine"


def test_inspect_cli_one_line_error(tmp_path):
    d = make_decode_dir(tmp_path / "dec")
    (d / "report").mkdir()
    (d / "report" / "index.html").write_text("my page")
    proc = _cli(["inspect", f"decode_dir={d}", "use_model=false", "audio=false", "jobs=1"], tmp_path)
    _one_line_error(proc, "asr-inspect", d / "report", "not written by asr-inspect")
    assert (d / "report" / "index.html").read_text() == "my page"


# ------------------------------------------------------------------------------------------------ asr-plot, asr-score


def test_plot_refuses_a_users_folder_and_adds_beside_it_with_overwrite(tmp_path):
    d = make_decode_dir(tmp_path / "dec")
    (d / "plots").mkdir()
    (d / "plots" / "u1.txt").write_text("mine")
    proc = _cli(["plot", f"decode_dir={d}", "worst_n=1"], tmp_path)
    _one_line_error(proc, "asr-plot", d / "plots", "not written by asr-plot")
    assert sorted(p.name for p in (d / "plots").iterdir()) == ["u1.txt"]
    proc = _cli(["plot", f"decode_dir={d}", "worst_n=1", "overwrite=true"], tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert (d / "plots" / "u1.txt").read_text() == "mine" and (d / "plots" / "u1.png").is_file()
    proc = _cli(["plot", f"decode_dir={d}", "worst_n=0", "utt_ids=[u2]"], tmp_path)  # owned now: adds to it
    assert proc.returncode == 0 and (d / "plots" / "u1.png").is_file() and (d / "plots" / "u2.png").is_file()


def test_score_refuses_a_users_folder(tmp_path):
    from asr.cli.score import score_decode_dir

    d = make_decode_dir(tmp_path / "dec")
    s = tmp_path / "s"
    s.mkdir()
    (s / "wer.json").write_text("my own wer")
    with pytest.raises(OutputDirError, match=f"{s}: not empty and not written by asr-score"):
        score_decode_dir(d, s)
    assert (s / "wer.json").read_text() == "my own wer"
    (s / "wer.json").rename(s / "keep.json")
    score_decode_dir(d, s, overwrite=True)
    assert (s / "keep.json").read_text() == "my own wer" and json.loads((s / "wer.json").read_text())["n_utts"] == 3


@pytest.mark.parametrize("row, reason", [
    ({"utt_id": "u1", "ref": 3, "hyp": "A"}, "ref is int, not a string"),
    ({"utt_id": "u1", "ref": "A", "hyp": None}, "hyp is NoneType, not a string"),
    ({"utt_id": "u1", "ref": "A", "hyp": ["A", "B"]}, "hyp is list, not a string"),
    ({"utt_id": 7, "ref": "A", "hyp": "A"}, "utt_id is int, not a string"),
])
def test_score_non_string_fields_are_a_one_line_error(tmp_path, row, reason):
    from asr.cli.score import score_decode_dir

    d = tmp_path / "dec"
    d.mkdir()
    (d / "results.jsonl").write_text(json.dumps({"utt_id": "u0", "ref": "A", "hyp": "A"}) + "\n" + json.dumps(row) + "\n")
    with pytest.raises(ValueError, match=f"{d / 'results.jsonl'}:2: {reason}"):
        score_decode_dir(d)
    if row["utt_id"] == "u1" and row["ref"] == 3:  # one run of the console script per kind of error is enough
        proc = _cli(["score", f"decode_dir={d}"], tmp_path)
        _one_line_error(proc, "asr-score", f"{d / 'results.jsonl'}:2", reason)
    assert not (d / "scoring").exists()


@pytest.mark.parametrize("content", ["", "\n\n  \n"])
def test_score_empty_results_is_nothing_to_score(tmp_path, content):
    d = tmp_path / "dec"
    d.mkdir()
    (d / "results.jsonl").write_text(content)
    proc = _cli(["score", f"decode_dir={d}"], tmp_path)
    _one_line_error(proc, "asr-score", d / "results.jsonl", "nothing to score")
    assert "WER" not in proc.stdout and not (d / "scoring").exists()


def test_score_empty_trn_is_nothing_to_score(tmp_path):
    from asr.cli.score import score_decode_dir

    d = tmp_path / "dec"
    d.mkdir()
    (d / "ref.trn").write_text("")
    (d / "hyp.trn").write_text("")
    with pytest.raises(ValueError, match=f"{d / 'ref.trn'}: nothing to score"):
        score_decode_dir(d)


# ------------------------------------------------------------------------------------------------ asr-export


def test_export_refuses_a_folder_with_a_users_readme(tmp_path, tiny_ckpt, capsys):
    from asr.cli.export import export, main

    out = tmp_path / "model"
    out.mkdir()
    (out / "README.md").write_text("my readme")
    with pytest.raises(OutputDirError, match=f"{out}: is not empty and was not written by asr-export \\(README.md\\)"):
        export(tiny_ckpt, out)
    with pytest.raises(SystemExit) as e:
        main([f"ckpt={tiny_ckpt}", f"out_dir={out}"])
    assert e.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"asr-export: {out}: ")
    assert _tree(out) == {"README.md": b"my readme"}
    assert [p.name for p in tmp_path.iterdir()] == ["model"]  # no temporary sibling left


def test_export_overwrite_replaces_its_names_and_keeps_other_user_files(tmp_path, tiny_ckpt):
    from asr.cli.export import export
    from asr.models.pretrained import load_model_dir

    out = tmp_path / "model"
    out.mkdir()
    (out / "README.md").write_text("my readme")
    (out / "LICENSE.user").write_text("my licence")
    export(tiny_ckpt, out, overwrite=True)
    assert (out / "README.md").read_text() != "my readme"  # an exported name: replaced (documented)
    assert (out / "LICENSE.user").read_text() == "my licence"  # moved into the new directory
    assert "LICENSE.user" not in read_manifest(out)["asr-export"]
    load_model_dir(out)
    export(tiny_ckpt, out, dtype="float16", overwrite=True)  # again: the user's file still kept
    assert (out / "LICENSE.user").read_text() == "my licence"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model"]


def test_reexport_over_own_export_and_refusal_once_the_user_adds_a_file(tmp_path, tiny_ckpt):
    from asr.cli.export import export

    out = tmp_path / "model"
    export(tiny_ckpt, out)
    first = _tree(out)
    export(tiny_ckpt, out, dtype="float16")  # its own directory: replaced without overwrite
    assert set(_tree(out)) == set(first)
    (out / "notes.md").write_text("mine")
    with pytest.raises(OutputDirError, match="holds files asr-export did not write \\(notes.md\\)"):
        export(tiny_ckpt, out)
    assert (out / "notes.md").read_text() == "mine"


def test_export_failing_half_way_leaves_the_old_model_directory_whole(tmp_path, tiny_ckpt, monkeypatch):
    import asr.cli.export as ex

    out = tmp_path / "model"
    ex.export(tiny_ckpt, out)
    before = _tree(out)
    real = ex.save_model_dir

    def disk_full(out_dir, *a, **kw):
        real(out_dir, *a, **kw)  # new weights, config, tokenizer written into the temporary folder ...
        raise OSError(errno.ENOSPC, "No space left on device", str(Path(out_dir) / "tokenizer.model"))

    monkeypatch.setattr(ex, "save_model_dir", disk_full)
    with pytest.raises(OSError, match="No space left"):
        ex.export(tiny_ckpt, out, dtype="float16")
    assert _tree(out) == before  # ... never beside the old ones
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model"]
    with pytest.raises(SystemExit) as e:
        ex.main([f"ckpt={tiny_ckpt}", f"out_dir={out}", "dtype=float16"])
    assert e.value.code == 2 and _tree(out) == before


def test_export_into_a_file_is_refused(tmp_path, tiny_ckpt):
    from asr.cli.export import export

    f = tmp_path / "model"
    f.write_text("not a folder")
    with pytest.raises(OutputDirError, match="exists and is not a folder"):
        export(tiny_ckpt, f)
    assert f.read_text() == "not a folder"


# ------------------------------------------------------------------------------------------------ resume by content


def test_input_signature_follows_content_not_mtime(tmp_path):
    from asr.decoding.results import SIGNATURE_BLOCK, input_signature

    a, b = tmp_path / "a.bin", tmp_path / "b.bin"
    rng = np.random.default_rng(0)
    big = rng.integers(0, 256, 3 * SIGNATURE_BLOCK, dtype=np.uint8).tobytes()
    a.write_bytes(big)
    b.write_bytes(big)
    st = os.stat(a)
    assert input_signature(a) == input_signature(b)  # same content, other mtime: same key
    for where in (0, len(big) - 1):  # a change in the first or the last block, size and mtime kept
        changed = bytearray(big)
        changed[where] ^= 0xFF
        a.write_bytes(bytes(changed))
        os.utime(a, ns=(st.st_atime_ns, st.st_mtime_ns))
        assert input_signature(a) != input_signature(b)
    small = tmp_path / "s.bin"
    small.write_bytes(b"x" * 100)
    assert input_signature(small).startswith("100:") and input_signature(tmp_path / "missing") == ""
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    assert input_signature(fifo).startswith("special:")  # not read: no hang


def test_resume_after_swapping_contents_with_same_size_and_mtime(tmp_path, tiny_ckpt, monkeypatch):
    import asr.decoding.engine as dec
    from asr.decoding.results import PARTIAL_RESULTS

    # Two real utterances cut to the same length: WAV files of equal size, different audio.
    x, y = (sf.read(str(w), dtype="int16")[0] for w in (WAVS[0], WAVS[1]))
    n = min(len(x), len(y))
    a, b = tmp_path / "a.wav", tmp_path / "b.wav"
    sf.write(str(a), x[:n], 16000, subtype="PCM_16")
    sf.write(str(b), y[:n], 16000, subtype="PCM_16")
    assert a.stat().st_size == b.stat().st_size and a.read_bytes() != b.read_bytes()
    out = tmp_path / "dec"
    real, calls = dec._decode_isolated, []

    def dies_on_second(*args, **kw):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real(*args, **kw)

    monkeypatch.setattr(dec, "_decode_isolated", dies_on_second)
    with pytest.raises(KeyboardInterrupt):
        _decode(tiny_ckpt, out, audio=[str(a), str(b)], batch_size=1, max_len_ratio=0.2)
    assert len((out / PARTIAL_RESULTS).read_text().splitlines()) == 1
    monkeypatch.setattr(dec, "_decode_isolated", real)
    # Swap the contents, keeping each file's size and modification time.
    sa, sb = os.stat(a), os.stat(b)
    da, db = a.read_bytes(), b.read_bytes()
    a.write_bytes(db)
    b.write_bytes(da)
    os.utime(a, ns=(sa.st_atime_ns, sa.st_mtime_ns))
    os.utime(b, ns=(sb.st_atime_ns, sb.st_mtime_ns))
    info = _decode(tiny_ckpt, out, audio=[str(a), str(b)], batch_size=1, max_len_ratio=0.2)
    assert info["resumed_utts"] == 0  # the stored row belongs to the other content
    fresh = tmp_path / "fresh"
    _decode(tiny_ckpt, fresh, audio=[str(a), str(b)], batch_size=1, max_len_ratio=0.2)
    rows = {r["utt_id"]: r for r in map(json.loads, (out / "results.jsonl").read_text().splitlines())}
    ref = {r["utt_id"]: r for r in map(json.loads, (fresh / "results.jsonl").read_text().splitlines())}
    assert rows.keys() == ref.keys() == {"a", "b"}
    for u in rows:
        assert rows[u]["hyp"] == ref[u]["hyp"] and rows[u]["score"] == pytest.approx(ref[u]["score"], abs=1e-3)
