"""Property-based tests: parsers and the audio loader raise only their documented error types.

Each property runs ~100-200 examples with no deadline, so the whole file stays a few seconds.
Documented errors: ``load_audio`` / ``audio_duration`` -> ``AudioError``; ``check_data_dir`` /
``read_data_dir`` -> ``DataDirError``; ``read_trn`` -> ``ValueError``; the AN4 line readers -> none
(bad lines are reported); ``parse_transcription_line`` -> none.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

hypothesis = pytest.importorskip("hypothesis")
from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from asr.data.an4 import BadUtterance, _read_fileids, _read_transcription, parse_transcription_line  # noqa: E402
from asr.data.datadir import DataDirError, check_data_dir  # noqa: E402
from asr.features.audio import AudioError, audio_duration, load_audio  # noqa: E402
from asr.metrics.wer import read_trn  # noqa: E402

FAST = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])

# text that looks like the real thing: ids, words, parentheses, <s>, tabs, \r, odd unicode, stray bytes
_PIECES = st.sampled_from(
    [b"spk-u1", b"spk-u2", b" ", b"\t", b"\n", b"\r\n", b"(", b")", b"<s>", b"</s>", b"YES", b"an4_clstk/",
     b"/", b"..", b"1.5", b"-3", b"nan", b"inf", b"\xff", b"\xc3", "é".encode(), b"\x00", b"|"]
)
TEXTY = st.one_of(st.binary(max_size=300), st.lists(_PIECES, max_size=40).map(b"".join))


@pytest.fixture(scope="module")
def work(tmp_path_factory) -> Path:
    """One folder per module; every example overwrites (or removes) the files it uses."""
    return tmp_path_factory.mktemp("fuzz")


def _put(path: Path, content: bytes | None) -> Path:
    if content is None:
        path.unlink(missing_ok=True)
    else:
        path.write_bytes(content)
    return path


@FAST
@given(st.text(max_size=200))
def test_parse_transcription_line_never_raises(line):
    out = parse_transcription_line(line)
    if out is not None:
        name, text = out
        assert name and not any(c.isspace() or c in "()" for c in name)
        assert text == " ".join(text.split()) and "<s>" not in text.split()


@FAST
@given(TEXTY, TEXTY)
def test_an4_list_readers_report_never_raise(work, fileids, transcription):
    d = work
    _put(d / "f", fileids)
    _put(d / "t", transcription)
    bad: list[BadUtterance] = []
    entries = _read_fileids(d / "f", bad)
    texts = _read_transcription(d / "t", bad)
    for e in entries.values():
        assert ".." not in e.rel.split("/")
    for name, (text, where) in texts.items():
        assert where.startswith(str(d / "t") + ":")
    assert all(b.reason for b in bad)


@FAST
@given(TEXTY, TEXTY, TEXTY, st.one_of(st.none(), TEXTY), st.one_of(st.none(), TEXTY), st.floats(0, 1))
def test_data_dir_reader_raises_only_data_dir_error(work, wav_scp, text, utt2spk, utt2dur, spk2utt, frac):
    d = work / "data"
    d.mkdir(exist_ok=True)
    for name, content in (("wav.scp", wav_scp), ("text", text), ("utt2spk", utt2spk), ("utt2dur", utt2dur), ("spk2utt", spk2utt)):
        _put(d / name, content)
    try:
        utts, skipped = check_data_dir(d, frac)
    except DataDirError as exc:
        assert str(d) in str(exc)
        return
    ids = [u.utt_id for u in utts]
    assert ids == sorted(ids, key=lambda s: s.encode("utf-8")) and len(set(ids)) == len(ids)
    assert not {s.utt_id for s in skipped} & set(ids)
    for u in utts:
        assert u.utt_id and not any(c.isspace() for c in u.utt_id)
        assert u.text == " ".join(u.text.split()) and u.duration >= 0


@FAST
@given(TEXTY)
def test_trn_reader_raises_only_value_error(work, content):
    d = work
    _put(d / "x.trn", content)
    try:
        out = read_trn(d / "x.trn")
    except ValueError as exc:
        assert "x.trn:" in str(exc)
        return
    assert all(isinstance(k, str) and isinstance(v, str) for k, v in out.items())


def _wav_bytes(fmt: str, subtype: str, sr: int = 16000) -> bytes:
    import io

    buf = io.BytesIO()
    sf.write(buf, (0.1 * np.sin(np.arange(800) / 5)).astype(np.float32), sr, format=fmt, subtype=subtype)
    return buf.getvalue()


_SEEDS = [_wav_bytes("WAV", "PCM_16"), _wav_bytes("WAV", "FLOAT"), _wav_bytes("FLAC", "PCM_16"), _wav_bytes("NIST", "PCM_16"), _wav_bytes("WAV", "PCM_U8", 8000)]


@st.composite
def _audio_bytes(draw):
    kind = draw(st.sampled_from(["random", "mutated", "cut"]))
    if kind == "random":
        return draw(st.binary(max_size=2000))
    seed = bytearray(draw(st.sampled_from(_SEEDS)))
    if kind == "cut":
        return bytes(seed[: draw(st.integers(0, len(seed)))])
    for _ in range(draw(st.integers(1, 12))):  # overwrite a few bytes, mostly in the header
        pos = draw(st.integers(0, min(len(seed) - 1, draw(st.sampled_from([64, len(seed) - 1])))))
        seed[pos] = draw(st.integers(0, 255))
    return bytes(seed)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(_audio_bytes(), st.sampled_from([".wav", ".flac", ".sph", ""]))
def test_audio_loader_raises_only_audio_error(work, data, ext):
    p = _put(work / f"fuzz{ext}", data)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)  # clipping / downmix warnings are expected here
            wav = load_audio(p)
    except AudioError as exc:
        assert exc.path == str(p) and exc.reason
    else:
        assert wav.ndim == 1 and wav.numel() > 0 and bool(wav.isfinite().all()) and float(wav.abs().max()) <= 1.0
    try:
        assert audio_duration(p) >= 0.0
    except AudioError as exc:
        assert exc.path == str(p)
