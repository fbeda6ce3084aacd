"""Model directories are untrusted input (issue 33): verification on load, one safe reader, one loader error.

Every case works on a copy of the shipped model directory (models/an4_pblstm_x4, float16, no checksum file) in
tmp_path, changed the way a lying or hostile directory would be.
"""

from __future__ import annotations

import hashlib
import io
import os
import re
import shutil
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from safetensors.torch import load_file, save_file

ROOT = Path(__file__).resolve().parents[1]
SHIPPED = ROOT / "models/an4_pblstm_x4"
WAV = str(ROOT / "tests/data/an4/wav/an4test_clstk/fjlp/an419-fjlp-b.wav")
FILES = ("config.yaml", "model.safetensors", "cmvn.safetensors", "tokenizer.model")

pytestmark = pytest.mark.skipif(not (SHIPPED / "config.yaml").is_file(), reason="no shipped model in models/")


@pytest.fixture
def model_dir(tmp_path) -> Path:
    d = tmp_path / "model"
    d.mkdir()
    for name in FILES:
        shutil.copyfile(SHIPPED / name, d / name)
    return d


def _cfg(d: Path) -> dict:
    return yaml.safe_load((d / "config.yaml").read_text())


def _write_cfg(d: Path, cfg: dict) -> None:
    (d / "config.yaml").write_text(yaml.safe_dump(cfg, sort_keys=False))


def _edit_cfg(d: Path, fn) -> None:
    cfg = _cfg(d)
    fn(cfg)
    _write_cfg(d, cfg)


def _edit_tensors(d: Path, name: str, fn) -> None:
    tensors = load_file(str(d / name))
    fn(tensors)
    save_file({k: v.contiguous() for k, v in tensors.items()}, str(d / name))


def _write_checksums(d: Path, names=FILES) -> None:
    (d / "checksums.sha256").write_text("".join(f"{hashlib.sha256((d / n).read_bytes()).hexdigest()}  {n}\n" for n in names))


def _load(d):
    from asr.models.pretrained import load_model

    return load_model(d)


def _refused(d, match: str):
    from asr.models.pretrained import ModelLoadError

    with pytest.raises(ModelLoadError, match=match) as err:
        _load(d)
    e = err.value
    assert str(e) == f"{e.path}: {e.reason}" and "\n" not in str(e)
    return e


def test_the_shipped_copy_loads_with_verification(model_dir):
    model, tok, fbank, info = _load(model_dir)
    assert tok.vocab_size == 40 and fbank.num_mel_bins == 80 and next(model.parameters()).dtype == torch.float32


# ---- 1. directories that lie ---------------------------------------------------------------------------------
def _half_to_float(t):
    for k, v in t.items():
        if v.is_floating_point():
            t[k] = v.float()


def _one_to_int(t):
    k = sorted(t)[0]
    t[k] = t[k].to(torch.int16)


def _nan(t):
    k = sorted(t)[-1]
    t[k] = t[k].clone()
    t[k].view(-1)[3] = float("nan")


def _inf(t):
    k = sorted(t)[1]
    t[k] = t[k].clone()
    t[k].view(-1)[0] = float("-inf")


def _transposed(t):
    k = next(k for k in sorted(t) if t[k].dim() == 2 and t[k].shape[0] != t[k].shape[1])
    t[k] = t[k].t().contiguous()


def _dropped(t):
    del t[sorted(t)[0]]


def _extra(t):
    t["backdoor.weight"] = torch.zeros(3, dtype=torch.float16)


@pytest.mark.parametrize("edit, match", [
    (_half_to_float, r"model.safetensors: tensor .* is stored as F32, expected float16 \(config.yaml weights.dtype\)"),
    (_one_to_int, r"model.safetensors: tensor .* is stored as I16, expected float16"),
    (_nan, r"model.safetensors: tensor .* holds 1 NaN value"),
    (_inf, r"model.safetensors: tensor .* holds 1 infinite value"),
    (_transposed, r"model.safetensors: tensor .* has shape \[\d+, \d+\], the model of config.yaml has"),
    (_dropped, r"model.safetensors: tensors do not fit the model of config.yaml \(missing \['"),
    (_extra, r"unexpected \['backdoor.weight'\]"),
])
def test_weights_that_disagree_with_the_config_are_refused(model_dir, edit, match):
    _edit_tensors(model_dir, "model.safetensors", edit)
    _refused(model_dir, match)


def test_float32_weights_load_when_the_config_says_float32(model_dir):
    _edit_tensors(model_dir, "model.safetensors", _half_to_float)
    _edit_cfg(model_dir, lambda c: c["weights"].update(dtype="float32"))
    a = _load(model_dir)[0].state_dict()
    b = _load(SHIPPED)[0].state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
    _edit_cfg(model_dir, lambda c: c["weights"].update(dtype="bfloat16"))
    _refused(model_dir, r"config.yaml: weights.dtype='bfloat16', not one of")
    _edit_cfg(model_dir, lambda c: c["weights"].update(dtype="float32", n_params=123))
    _refused(model_dir, r"config.yaml: weights.n_params=123, the model of the config has 6,148,742 parameters")


@pytest.mark.parametrize("edit, match", [
    (lambda t: t["istd"].view(-1).__setitem__(5, float("inf")), r"cmvn.safetensors: tensor istd holds 1 infinite value"),
    (lambda t: t["mean"].view(-1).__setitem__(0, float("nan")), r"cmvn.safetensors: tensor mean holds 1 NaN value"),
    (lambda t: t.update(istd=t["istd"].half()), r"cmvn.safetensors: tensor istd is stored as F16, expected float32"),
    (lambda t: t.update(istd=t["istd"][:40].clone()), r"cmvn.safetensors: tensor istd has shape \[40\], the model of config.yaml has \[80\]"),
    (lambda t: t.pop("mean"), r"cmvn.safetensors: tensors do not fit .*missing \['mean'\]"),
])
def test_cmvn_that_lies_is_refused(model_dir, edit, match):
    _edit_tensors(model_dir, "cmvn.safetensors", edit)
    _refused(model_dir, match)


def _other_tokenizer(tmp_path, kind: str):
    from asr.text.tokenizer import Tokenizer

    text = [line.split("(")[0].strip() for line in (ROOT / "tests/data/an4/etc/an4_test.transcription").read_text().splitlines()]
    return Tokenizer.train(text * 10, tmp_path / "tok" / kind, kind=kind, vocab_size=20)


@pytest.mark.parametrize("edit, match", [
    (lambda c: c["tokenizer"].update(vocab_size=41), r"tokenizer.model: a vocabulary of 40 tokens, config.yaml says tokenizer.vocab_size=41"),
    (lambda c: c["tokenizer"].update(kind="unigram"), r"tokenizer.model: a bpe tokenizer, config.yaml says tokenizer.kind='unigram'"),
    (lambda c: c["tokenizer"].update(eos_id=7), r"tokenizer.model: eos_id is 3, config.yaml says tokenizer.eos_id=7"),
    (lambda c: c["tokenizer"].update(file="other.model"), r"other.model is missing"),
])
def test_tokenizer_config_that_lies_is_refused(model_dir, edit, match):
    _edit_cfg(model_dir, edit)
    _refused(model_dir, match)


def test_tokenizer_file_of_another_model_is_refused(model_dir, tmp_path):
    tok = _other_tokenizer(tmp_path, "char")
    (model_dir / "tokenizer.model").write_bytes(tok.proto)
    _refused(model_dir, rf"tokenizer.model: a vocabulary of {tok.vocab_size} tokens, config.yaml says tokenizer.vocab_size=40")
    _edit_cfg(model_dir, lambda c: c["tokenizer"].update(vocab_size=tok.vocab_size))  # the config told to agree: the kind still differs
    _refused(model_dir, r"tokenizer.model: a char tokenizer, config.yaml says tokenizer.kind='bpe'")
    _edit_cfg(model_dir, lambda c: c["tokenizer"].update(kind="char"))  # ... and then the model is another
    _refused(model_dir, r"config.yaml: weights.n_params=6148742, the model of the config has [\d,]+ parameters")
    _edit_cfg(model_dir, lambda c: c["weights"].pop("n_params"))  # ... and its weights do not fit
    _refused(model_dir, r"model.safetensors: tensor .* has shape \[40")
    (model_dir / "tokenizer.model").write_bytes(b"\x0a\x05hello" * 10)
    _refused(model_dir, r"tokenizer.model: not a usable sentencepiece model")


def test_checksums_are_checked_when_present(model_dir):
    _write_checksums(model_dir)
    _load(model_dir)
    data = bytearray((model_dir / "model.safetensors").read_bytes())
    data[-2] ^= 0x01  # one weight a little different: still a valid float16
    (model_dir / "model.safetensors").write_bytes(bytes(data))
    _refused(model_dir, r"model.safetensors: checksum mismatch \(sha256 [0-9a-f]{16}…, checksums.sha256 says [0-9a-f]{16}…\)")
    _write_checksums(model_dir, FILES[:3])
    _refused(model_dir, r"checksums.sha256: does not list tokenizer.model")
    _write_checksums(model_dir, FILES[1:])  # config.yaml need not be listed: it may be edited ...
    _edit_cfg(model_dir, lambda c: c["decoding"].update(beam_size=2))
    _load(model_dir)
    _edit_cfg(model_dir, lambda c: c["tokenizer"].update(vocab_size=39))  # ... and is still checked against the files
    _refused(model_dir, "config.yaml says tokenizer.vocab_size=39")
    (model_dir / "checksums.sha256").write_text("not a checksum line\n")
    _refused(model_dir, r"checksums.sha256: line 1 is not")
    _write_checksums(model_dir)
    with open(model_dir / "checksums.sha256", "a") as f:
        f.write(f"{'0' * 64}  ../../etc/passwd\n")
    _refused(model_dir, r"the name holds '..'")


def test_export_writes_checksums_that_sha256sum_accepts(ctc_model_dir, ctc_ckpt, tmp_path):
    from asr.cli.export import export
    from asr.models.pretrained import load_model

    lines = (ctc_model_dir / "checksums.sha256").read_text().splitlines()
    assert sorted(x.split("  ")[1] for x in lines) == sorted(FILES[1:])  # config.yaml stays editable
    if shutil.which("sha256sum"):
        subprocess.run(["sha256sum", "--quiet", "-c", "checksums.sha256"], cwd=ctc_model_dir, check=True)
    export(ctc_ckpt, tmp_path / "fp16", dtype="float16")
    load_model(tmp_path / "fp16")  # a float16 export is legitimate and verified as such


def test_export_refuses_values_float16_cannot_hold(ctc_ckpt, tmp_path):
    from asr.cli.export import export

    ckpt = torch.load(ctc_ckpt, weights_only=True)
    k = next(k for k in ckpt["state_dict"] if k.startswith("model.") and ckpt["state_dict"][k].is_floating_point() and "cmvn" not in k)
    ckpt["state_dict"][k].view(-1)[0] = 1e6  # finite in float32, inf in float16
    torch.save(ckpt, tmp_path / "big.ckpt")
    export(tmp_path / "big.ckpt", tmp_path / "fp32")
    with pytest.raises(ValueError, match="cannot export: tensor .* holds non-finite values as torch.float16"):
        export(tmp_path / "big.ckpt", tmp_path / "fp16", dtype="float16")
    assert not (tmp_path / "fp16").exists()


# ---- 2. one safe reader --------------------------------------------------------------------------------------
ALIAS_BOMB = "\n".join(["a: &a [x, x, x, x, x, x, x, x, x]"] + [f"{chr(98 + i)}: &{chr(98 + i)} [*{chr(97 + i)}, *{chr(97 + i)}, *{chr(97 + i)}, *{chr(97 + i)}, "
                                                               f"*{chr(97 + i)}, *{chr(97 + i)}, *{chr(97 + i)}, *{chr(97 + i)}, *{chr(97 + i)}]" for i in range(12)])


def test_alias_bomb_and_recursion_fail_fast(model_dir):
    from asr.utils.safe_read import UntrustedFileError, load_yaml

    assert len(ALIAS_BOMB) < 1600
    for text, match in [(ALIAS_BOMB, "anchors and aliases are not allowed"), ("&a [*a]", "anchors and aliases"),
                        ("a: &x {b: *x}", "anchors and aliases"), ("[" * 33 + "]" * 33, "nested deeper than 32"), ("[" * 5000 + "]" * 5000, "nest"),
                        ("a: 1\n---\nb: 2\n", "more than one YAML document"), ("a: [1, 2\n", "not valid YAML"),
                        ("!!python/object/apply:os.system ['true']", "not valid YAML")]:
        t0 = time.perf_counter()
        with pytest.raises(UntrustedFileError, match=match):
            load_yaml(text, "c.yaml")
        assert time.perf_counter() - t0 < 1.0
    assert load_yaml("a: {b: [1, 2.5, x]}") == {"a": {"b": [1, 2.5, "x"]}}
    (model_dir / "config.yaml").write_text(ALIAS_BOMB)
    t0 = time.perf_counter()
    _refused(model_dir, r"config.yaml: YAML anchors and aliases are not allowed \(line 1\)")
    assert time.perf_counter() - t0 < 2.0


def test_size_caps(model_dir):
    from asr.utils.safe_read import MAX_BYTES

    with open(model_dir / "config.yaml", "a") as f:
        f.write("#" * (MAX_BYTES["config"] + 1))
    _refused(model_dir, r"config.yaml: [\d,]+ bytes, more than the 1,048,576 allowed for a config file")
    shutil.copyfile(SHIPPED / "config.yaml", model_dir / "config.yaml")
    with open(model_dir / "tokenizer.model", "r+b") as f:
        f.truncate(MAX_BYTES["tokenizer"] + 1)  # sparse: costs no disk
    _refused(model_dir, r"tokenizer.model: [\d,]+ bytes, more than the 52,428,800 allowed for a tokenizer file")


@pytest.mark.parametrize("where, name, match", [
    ("tokenizer", "/dev/zero", r"model: '/dev/zero' is an absolute path; files are named relative to the folder"),
    ("tokenizer", "../../../../../../etc/passwd", r"the name holds '..'"),
    ("weights", "/etc/passwd", r"an absolute path"),
    ("weights", "sub/../../model.safetensors", r"the name holds '..'"),
    ("features", "~/cmvn.safetensors", r"an absolute path"),
    ("tokenizer", 7, r"file name 7 is not a non-empty string"),
])
def test_paths_leaving_the_directory_are_refused(model_dir, where, name, match):
    key = "cmvn" if where == "features" else "file"
    _edit_cfg(model_dir, lambda c: c[where].update({key: name}))
    _refused(model_dir, match)


def test_symlinks_must_stay_inside(model_dir, tmp_path):
    outside = tmp_path / "outside.model"
    shutil.copyfile(SHIPPED / "tokenizer.model", outside)
    (model_dir / "tokenizer.model").unlink()
    (model_dir / "tokenizer.model").symlink_to(outside)
    _refused(model_dir, rf"tokenizer.model: resolves to {outside}, outside {model_dir}")
    (model_dir / "tokenizer.model").unlink()
    (model_dir / "tokenizer.model").symlink_to("/dev/zero")
    _refused(model_dir, r"tokenizer.model: resolves to /dev/zero, outside")
    (model_dir / "tokenizer.model").unlink()
    (model_dir / "sub").mkdir()
    shutil.copyfile(SHIPPED / "tokenizer.model", model_dir / "sub/tok.model")
    (model_dir / "tokenizer.model").symlink_to("sub/tok.model")  # a link that stays inside is fine
    _load(model_dir)
    (model_dir / "tokenizer.model").unlink()
    (model_dir / "tokenizer.model").symlink_to("tokenizer.model")  # a loop
    _refused(model_dir, r"tokenizer.model: cannot resolve the path")


def test_special_files_are_refused_without_blocking(model_dir):
    (model_dir / "tokenizer.model").unlink()
    os.mkfifo(model_dir / "tokenizer.model")
    t0 = time.perf_counter()
    _refused(model_dir, r"tokenizer.model: not a regular file \(a FIFO\)")
    assert time.perf_counter() - t0 < 2.0
    (model_dir / "tokenizer.model").unlink()
    (model_dir / "tokenizer.model").mkdir()
    _refused(model_dir, r"tokenizer.model: not a regular file \(a folder\)")
    (model_dir / "tokenizer.model").rmdir()
    (model_dir / "cmvn.safetensors").unlink()
    (model_dir / "cmvn.safetensors").symlink_to("/dev/zero")
    _refused(model_dir, r"cmvn.safetensors: resolves to /dev/zero, outside")


def test_hugging_face_snapshot_links_into_blobs_are_accepted(tmp_path):
    repo = tmp_path / "models--someone--an4"
    (repo / "blobs").mkdir(parents=True)
    snap = repo / "snapshots" / "abc123"
    snap.mkdir(parents=True)
    for name in FILES:
        blob = repo / "blobs" / hashlib.sha256(name.encode()).hexdigest()
        shutil.copyfile(SHIPPED / name, blob)
        (snap / name).symlink_to(os.path.relpath(blob, snap))
    _load(snap)
    (snap / "tokenizer.model").unlink()
    (snap / "tokenizer.model").symlink_to(SHIPPED / "tokenizer.model")  # anywhere else: still refused
    _refused(snap, "outside")


def test_safe_reader_unit(tmp_path):
    from asr.utils.safe_read import MissingFileError, UntrustedFileError, read_bytes, read_text

    (tmp_path / "a.txt").write_text("hi")
    assert read_bytes(tmp_path, "a.txt") == b"hi"
    with pytest.raises(MissingFileError, match="b.txt: no such file") as e:
        read_bytes(tmp_path, "b.txt")
    assert isinstance(e.value, FileNotFoundError) and isinstance(e.value, ValueError)
    (tmp_path / "bad.txt").write_bytes(b"\xff\xfe")
    with pytest.raises(UntrustedFileError, match="not UTF-8"):
        read_text(tmp_path, "bad.txt")
    for name in ("", "a\x00b", "a\\b", None):
        with pytest.raises(UntrustedFileError):
            read_bytes(tmp_path, name)


def _npz(path: Path, arrays: dict) -> Path:
    np.savez(path, **arrays)
    return path


def _npy_header_only(shape, dtype="<f4") -> bytes:
    buf = io.BytesIO()
    np.lib.format.write_array_header_1_0(buf, {"descr": dtype, "fortran_order": False, "shape": shape})
    return buf.getvalue()


def test_safe_npz_shapes_reads_headers_before_allocation(tmp_path):
    from asr.utils.safe_read import MissingFileError, UntrustedFileError, safe_npz_shapes

    ok = _npz(tmp_path / "ok.npz", {"u1": np.zeros((3, 7), np.float32), "u2": np.ones(4, np.int64)})
    assert safe_npz_shapes(ok, 100) == {"u1": ((3, 7), np.dtype("float32")), "u2": ((4,), np.dtype("int64"))}
    with pytest.raises(UntrustedFileError, match=r"member 'u1.npy' of shape \(3, 7\) holds 21 elements, more than the 20 allowed"):
        safe_npz_shapes(ok, 20)
    with pytest.raises(UntrustedFileError, match="more than 22 elements in all"):
        safe_npz_shapes(ok, 100, max_total_elements=22)
    lying = tmp_path / "lying.npz"  # 3.7 GiB announced, a few bytes stored
    with zipfile.ZipFile(lying, "w") as z:
        z.writestr("u1.npy", _npy_header_only((31000, 32000)) + b"\0" * 16)
    with pytest.raises(UntrustedFileError, match=r"announces \(31000, 32000\) float32 but stores only"):
        safe_npz_shapes(lying, 10**10)
    with pytest.raises(UntrustedFileError, match="holds 992,000,000 elements"):
        safe_npz_shapes(lying, 10**6)
    bomb = tmp_path / "bomb.npz"  # honest but huge once decompressed: refused by the element limit
    np.savez_compressed(bomb, u1=np.zeros((2000, 2000), np.float32))
    assert bomb.stat().st_size < 100_000
    with pytest.raises(UntrustedFileError, match="more than the 1,000,000 allowed"):
        safe_npz_shapes(bomb, 1_000_000)
    objs = tmp_path / "objs.npz"
    np.savez(objs, u1=np.array([{"a": 1}], dtype=object))
    with pytest.raises(UntrustedFileError, match="holds Python objects"):
        safe_npz_shapes(objs, 100)
    (tmp_path / "text.npz").write_text("not a zip")
    with pytest.raises(UntrustedFileError, match="not an npz archive"):
        safe_npz_shapes(tmp_path / "text.npz", 100)
    with zipfile.ZipFile(tmp_path / "junk.npz", "w") as z:
        z.writestr("u1.npy", b"junk" * 10)
    with pytest.raises(UntrustedFileError, match="is not a .npy array"):
        safe_npz_shapes(tmp_path / "junk.npz", 100)
    os.mkfifo(tmp_path / "fifo.npz")
    with pytest.raises(UntrustedFileError, match="not a regular file"):
        safe_npz_shapes(tmp_path / "fifo.npz", 100)
    with pytest.raises(MissingFileError):
        safe_npz_shapes(tmp_path / "none.npz", 100)


# ---- 3. one loader error, one CLI line -----------------------------------------------------------------------
def _bad_yaml(d):
    (d / "config.yaml").write_text("model: [unclosed\n")


def _recursive_yaml(d):
    (d / "config.yaml").write_text("&a [*a]\n")


def _no_model_key(d):
    _edit_cfg(d, lambda c: c.pop("model"))


def _tokenizer_list(d):
    _edit_cfg(d, lambda c: c.update(tokenizer=["tokenizer.model"]))


def _truncated_weights(d):
    with open(d / "model.safetensors", "r+b") as f:
        f.truncate(1000)


def _garbage_weights(d):
    (d / "model.safetensors").write_bytes(b"\xff" * 64)


def _fifo_tokenizer(d):
    (d / "tokenizer.model").unlink()
    os.mkfifo(d / "tokenizer.model")


def _checksum_mismatch(d):
    _write_checksums(d)
    _edit_cfg(d, lambda c: c["decoding"].update(beam_size=1))


def _not_utf8(d):
    (d / "config.yaml").write_bytes(b"format: 1\nmodel: \xff\n")


def _bad_features(d):
    _edit_cfg(d, lambda c: c["features"].update(num_mel_bins="80"))


CASES = {
    "missing config": (lambda d: (d / "config.yaml").unlink(), "config.yaml is missing"),
    "missing cmvn": (lambda d: (d / "cmvn.safetensors").unlink(), "cmvn.safetensors is missing"),
    "bad yaml": (_bad_yaml, "not valid YAML"),
    "alias bomb": (lambda d: (d / "config.yaml").write_text(ALIAS_BOMB), "anchors and aliases"),
    "recursion": (_recursive_yaml, "anchors and aliases"),
    "not utf-8": (_not_utf8, "not UTF-8"),
    "no model key": (_no_model_key, "stored model config is NoneType, not a mapping"),
    "tokenizer a list": (_tokenizer_list, "'tokenizer' is list, not a mapping"),
    "bad features": (_bad_features, r"features.num_mel_bins='80' is not a int"),
    "wrong dtype": (lambda d: _edit_tensors(d, "model.safetensors", _half_to_float), "stored as F32"),
    "NaN weights": (lambda d: _edit_tensors(d, "model.safetensors", _nan), "NaN"),
    "inf istd": (lambda d: _edit_tensors(d, "cmvn.safetensors", lambda t: t["istd"].view(-1).__setitem__(0, float("inf"))), "infinite"),
    "vocab size": (lambda d: _edit_cfg(d, lambda c: c["tokenizer"].update(vocab_size=30)), "vocabulary of 40"),
    "kind": (lambda d: _edit_cfg(d, lambda c: c["tokenizer"].update(kind="char")), "a bpe tokenizer"),
    "garbage tokenizer": (lambda d: (d / "tokenizer.model").write_bytes(b"\x00garbage"), "not a usable sentencepiece model"),
    "truncated weights": (_truncated_weights, "model.safetensors: not a readable safetensors file"),
    "garbage weights": (_garbage_weights, "model.safetensors: not a readable safetensors file"),
    "escape": (lambda d: _edit_cfg(d, lambda c: c["tokenizer"].update(file="../tokenizer.model")), "holds '..'"),
    "absolute": (lambda d: _edit_cfg(d, lambda c: c["weights"].update(file=str(SHIPPED / "model.safetensors"))), "an absolute path"),
    "fifo": (_fifo_tokenizer, "a FIFO"),
    "dev zero": (lambda d: _edit_cfg(d, lambda c: c["tokenizer"].update(file="/dev/zero")), "'/dev/zero' is an absolute path"),
    "checksum": (_checksum_mismatch, "config.yaml: checksum mismatch"),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_every_malformed_directory_is_one_line_and_exit_2(model_dir, case, capsys):
    from asr import Speech2Text
    from asr.cli.transcribe import main
    from asr.models.pretrained import ModelLoadError

    edit, match = CASES[case]
    edit(model_dir)
    assert main(["--model", str(model_dir), WAV]) == 2
    out, err = capsys.readouterr()
    lines = err.strip().splitlines()
    assert out == "" and len(lines) == 1, err
    assert lines[0].startswith(f"asr-transcribe: cannot load the model: {model_dir}") and "Traceback" not in err
    with pytest.raises(ModelLoadError) as e:
        Speech2Text.from_pretrained(model_dir)
    assert match in str(e.value) or re.search(match, str(e.value)), str(e.value)
    assert lines[0] == f"asr-transcribe: cannot load the model: {e.value}"


def test_cli_in_a_subprocess_for_an_alias_bomb(model_dir):
    (model_dir / "config.yaml").write_text(ALIAS_BOMB)
    r = subprocess.run([sys.executable, "-m", "asr.cli.transcribe", "--model", str(model_dir), WAV], capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert r.returncode == 2 and r.stdout == ""
    assert r.stderr.strip() == f"asr-transcribe: cannot load the model: {model_dir / 'config.yaml'}: YAML anchors and aliases are not allowed (line 1)"


def test_malformed_checkpoints_map_to_the_same_error(tmp_path, ctc_ckpt):
    from asr.models.pretrained import ModelFileNotFoundError, ModelLoadError, load_model

    ckpt = torch.load(ctc_ckpt, weights_only=True)
    loop: list = []
    loop.append(loop)
    ckpt["asr"]["model_cfg"]["encoder"]["subsample"] = loop
    torch.save(ckpt, tmp_path / "loop.ckpt")
    with pytest.raises(ModelLoadError, match=r"loop.ckpt: .*(self-referencing|RecursionError)"):
        load_model(tmp_path / "loop.ckpt")
    ckpt = torch.load(ctc_ckpt, weights_only=True)
    del ckpt["asr"]["tokenizer_proto"]
    torch.save(ckpt, tmp_path / "nokey.ckpt")
    with pytest.raises(ModelLoadError, match=r"nokey.ckpt: KeyError: 'tokenizer_proto'"):
        load_model(tmp_path / "nokey.ckpt")
    ckpt = torch.load(ctc_ckpt, weights_only=True)
    k = next(k for k in ckpt["state_dict"] if k.startswith("model.") and "cmvn" not in k)
    ckpt["state_dict"][k].view(-1)[0] = float("nan")
    torch.save(ckpt, tmp_path / "nan.ckpt")
    with pytest.raises(ModelLoadError, match=rf"nan.ckpt: tensor {k.removeprefix('model.')} holds 1 NaN value"):
        load_model(tmp_path / "nan.ckpt")
    load_model(tmp_path / "nan.ckpt", verify=False)  # the finite check is part of verification
    with pytest.raises(ModelFileNotFoundError, match="no model directory or checkpoint") as e:
        load_model(tmp_path / "none.ckpt")
    assert isinstance(e.value, FileNotFoundError)


def test_errors_pickle_for_worker_processes():
    import pickle

    from asr.models.pretrained import ModelFileNotFoundError, ModelLoadError

    for cls in (ModelLoadError, ModelFileNotFoundError):
        e = pickle.loads(pickle.dumps(cls(Path("/x/config.yaml"), "bad")))
        assert type(e) is cls and str(e) == "/x/config.yaml: bad" and e.reason == "bad"


# ---- 4. cost -----------------------------------------------------------------------------------------------------
