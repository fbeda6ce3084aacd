"""File names as an attacker or a careless user makes them (issue 33, class 4): TAB, newline and other control
characters, bytes that are not UTF-8, in arguments, ``--list`` files and data sources. Outputs stay one record per
line, the names come back exactly (``asr.utils.names``), and such a file is transcribed, not an abort or an error.

Audio: a real AN4 utterance from tests/data copied under the odd names (the model is the tiny conftest one; the
check is that an odd name gives the same text as a plain name of the same audio).
"""

from __future__ import annotations

import io
import json
import os
import shutil
import sys
from pathlib import Path

import pytest

from asr.utils.names import escape_field, json_line, read_path_list, unescape_field

AN4 = Path(__file__).parent / "data" / "an4"
WAV = sorted((AN4 / "wav").rglob("*.wav"))[0]

ODD = [
    "tab\there.wav",
    "new\nline.wav",
    "carriage\rreturn.wav",
    "back\\slash.wav",
    "bell\x07del\x7f.wav",
    "c1\x85\x9b.wav",
    "é ünïcode ✓.wav",
    os.fsdecode(b"latin1-\xe9t\xe9.wav"),   # not UTF-8: a surrogateescape string, as sys.argv / os.listdir give it
    os.fsdecode(b"lone-\xff\xfe.wav"),
]


@pytest.mark.parametrize("name", ODD + ["plain.wav", "", "\\x41", "\\\\", "\\t"])
def test_escape_field_is_one_printable_utf8_field_and_round_trips(name):
    e = escape_field(name)
    assert "\t" not in e and "\n" not in e and "\r" not in e
    assert all(c.isprintable() for c in e), repr(e)
    e.encode("utf-8")  # no surrogates left
    assert unescape_field(e) == name
    if "\\" not in name and all(c.isprintable() for c in name):
        assert e == name  # ordinary names are written as they are


def test_escape_field_spells_the_escapes_as_documented():
    assert escape_field("a\tb\nc\rd\\e") == "a\\tb\\nc\\rd\\\\e"
    assert escape_field("\x01\x7f\x85") == "\\x01\\x7f\\u0085"
    assert escape_field(os.fsdecode(b"\xff")) == "\\xff"
    assert os.fsencode(unescape_field("\\xe9t\\xe9")) == b"\xe9t\xe9"
    for bad in ["\\q", "x\\", "\\x4", "\\u12"]:
        with pytest.raises(ValueError, match="bad escape"):
            unescape_field(bad)


def test_json_line_is_utf8_writable_and_loads_back():
    name = os.fsdecode(b"e\xff.wav")
    line = json_line({"path": name, "text": "É"})
    line.encode("utf-8")
    assert json.loads(line) == {"path": name, "text": "É"}
    assert json_line({"text": "É ✓"}) == '{"text": "É ✓"}'  # UTF-8 text stays readable when it can


def test_read_path_list_takes_any_bytes(tmp_path, monkeypatch):
    lst = tmp_path / "list.txt"
    lst.write_bytes(b"# comment\n  a.wav  \n\nb\xff.wav\r\nc\x0bd.wav\n")
    assert read_path_list(str(lst)) == ["a.wav", os.fsdecode(b"b\xff.wav"), "c\x0bd.wav"]
    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(b"x\xfe.wav\n"), encoding="utf-8"))
    assert read_path_list("-") == [os.fsdecode(b"x\xfe.wav")]
    with pytest.raises(OSError):
        read_path_list(str(tmp_path / "missing.txt"))


@pytest.fixture
def odd_files(tmp_path):
    """The AN4 utterance under a plain name and under every ODD name."""
    d = tmp_path / "audio"
    d.mkdir()
    shutil.copy(WAV, d / "plain.wav")
    paths = []
    for name in ODD:
        p = os.path.join(str(d), name)
        shutil.copy(WAV, p)
        paths.append(p)
    return d, paths


def test_asr_transcribe_tsv_and_json_with_odd_names(ctc_model_dir, odd_files, tmp_path, capsys, monkeypatch):
    from asr.cli.transcribe import main

    d, paths = odd_files
    plain = str(d / "plain.wav")
    assert main(["--model", str(ctc_model_dir), "--beam-size", "1", "--threads", "1", plain, *paths]) == 0
    out, err = capsys.readouterr()  # capsys' stream is strict UTF-8: a raw surrogate would have raised
    lines = out.split("\n")
    assert lines[-1] == "" and len(lines) == len(paths) + 2, out  # one line per file, nothing split
    fields = [line.split("\t") for line in lines[:-1]]
    assert all(len(f) == 2 for f in fields)
    assert [unescape_field(f[0]) for f in fields] == [plain, *paths]
    assert len({f[1] for f in fields}) == 1  # the same audio gives the same text whatever its name

    # --json: the path by JSON's quoting; a --list file holding names that are not UTF-8
    lst = tmp_path / "list.txt"
    lst.write_bytes(b"".join(os.fsencode(p) + b"\n" for p in paths if "\n" not in p and "\r" not in p))
    listed = read_path_list(str(lst))
    assert main(["--model", str(ctc_model_dir), "--beam-size", "1", "--threads", "1", "--json", "--list", str(lst)]) == 0
    rows = [json.loads(x) for x in capsys.readouterr().out.splitlines()]
    assert [r["path"] for r in rows] == listed and len(listed) == len(paths) - 2
    assert {r["text"] for r in rows} == {fields[0][1]}

    # an unreadable file under an odd name: its error line is one escaped record on stderr
    bad = os.path.join(str(d), os.fsdecode(b"bad\tx\xff.wav"))
    Path(bad).write_bytes(b"not audio")
    assert main(["--model", str(ctc_model_dir), "--threads", "1", bad, plain]) == 0
    err = capsys.readouterr().err.splitlines()
    bad_lines = [x for x in err if "cannot read as audio" in x]
    assert len(bad_lines) == 1 and unescape_field(bad_lines[0].split("\t")[0]) == bad


def test_asr_decode_audio_with_odd_names(ctc_model_dir, odd_files, tmp_path):
    from asr.cli.decode import decode
    from asr.decoding.results import read_errors

    d, paths = odd_files
    bad = os.path.join(str(d), os.fsdecode(b"broken\n\xfe.wav"))
    with open(bad, "wb") as f:
        f.write(b"not audio")
    out = tmp_path / "dec"
    decode({"ckpt": str(ctc_model_dir), "out_dir": str(out), "beam_size": 1, "threads": 1, "audio": [str(d / "plain.wav"), *paths, bad]})
    rows = [json.loads(x) for x in (out / "results.jsonl").read_text(encoding="utf-8").splitlines()]
    assert sorted(r["path"] for r in rows) == sorted([str(d / "plain.wav"), *paths])
    assert len({r["utt_id"] for r in rows}) == len(rows) == len(paths) + 1
    assert all(r["utt_id"].isprintable() and " " not in r["utt_id"] for r in rows)
    assert len({r["hyp"] for r in rows}) == 1
    for trn in ("hyp.trn", "ref.trn"):
        assert len((out / trn).read_text(encoding="utf-8").splitlines()) == len(rows)
    assert [p for p, _ in read_errors(out)] == [bad]
    assert len((out / "errors.tsv").read_text(encoding="utf-8").splitlines()) == 2


def test_json_line_never_splits():
    obj = {"path": "a\x85b\u2028c\u2029d\x0be\x1cf"}
    line = json_line(obj)
    assert line.splitlines() == [line] and json.loads(line) == obj
