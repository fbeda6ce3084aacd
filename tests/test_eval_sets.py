"""recipes/an4/local/make_eval_sets.py: the robustness evaluation sets built from AN4 test (issue 32 part 2)."""

from __future__ import annotations

import hashlib
import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "recipes/an4/local/make_eval_sets.py"


def _script():
    spec = importlib.util.spec_from_file_location("make_eval_sets", SCRIPT)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@pytest.fixture(scope="module")
def built(mini_an4, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("eval_sets")
    _script().build(mini_an4 / "data/test", out, num_clips=4)
    return out


def _digest(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(root.rglob("*")) if p.is_file()}


def _read(path: str) -> tuple[np.ndarray, int]:
    x, sr = sf.read(path, dtype="float64")
    return x, sr


def test_sets_are_kaldi_dirs_with_the_right_rates_lengths_and_texts(mini_an4, built):
    from asr.data.datadir import check_data_dir

    mod = _script()
    test, _ = check_data_dir(mini_an4 / "data/test", 0.0)
    clean = {u.utt_id: _read(u.wav) for u in test}
    assert {p.name for p in built.iterdir()} == set(mod.SETS)
    for name in mod.SETS:
        utts, skipped = check_data_dir(built / name, 0.0)
        assert not skipped
        if name in mod.EMPTY_SETS:  # an empty expected transcript: the id alone on its text line, read as ""
            assert len(utts) == 4 and all(u.text == "" for u in utts)
            assert (built / name / "text").read_text().splitlines() == [u.utt_id for u in utts]
            for u in utts:
                x, sr = _read(u.wav)
                assert sr == 16000 and 1.0 <= len(x) / sr <= 4.0 and abs(u.duration - len(x) / sr) < 1e-3
            continue
        assert [(u.utt_id, u.text, u.speaker) for u in utts] == [(u.utt_id, u.text, u.speaker) for u in test]
        for u in utts:
            x, sr = _read(u.wav)
            ref, ref_sr = clean[u.utt_id]
            assert sr == (8000 if name == "test_8k" else 16000) and ref_sr == 16000
            assert abs(len(x) - len(ref) * sr / ref_sr) <= 1  # same duration
            assert abs(u.duration - len(x) / sr) < 1e-3


@pytest.mark.parametrize("name,snr", [("test_noise10", 10.0), ("test_noise0", 0.0)])
def test_noise_sets_hold_the_snr(mini_an4, built, name, snr):
    from asr.data.datadir import check_data_dir

    clean = {u.utt_id: _read(u.wav)[0] for u in check_data_dir(mini_an4 / "data/test", 0.0)[0]}
    info = dict(line.split(" ", 1) for line in (built / name / "info").read_text().splitlines())
    kinds = set()
    for u in check_data_dir(built / name, 0.0)[0]:
        y, x = _read(u.wav)[0], clean[u.utt_id]
        a = float(np.dot(y, x) / np.dot(x, x))  # the speech in the mix (1 unless scaled against clipping)
        measured = 10 * np.log10(np.sum((a * x) ** 2) / np.sum((y - a * x) ** 2))
        assert abs(measured - snr) < 0.5, (u.utt_id, measured)
        kinds.add(info[u.utt_id].split()[0])
    assert kinds == {"white", "babble"}


def test_reverb_and_empty_sets(mini_an4, built):
    from asr.data.datadir import check_data_dir

    mod = _script()
    clean = {u.utt_id: _read(u.wav)[0] for u in check_data_dir(mini_an4 / "data/test", 0.0)[0]}
    for line in (built / "test_reverb/info").read_text().splitlines():
        uid, room, rt60 = line.split()
        assert 0.3 <= float(rt60.split("=")[1]) <= 0.8
        y = _read(str(built / "test_reverb/audio" / f"{uid}.flac"))[0]
        x = clean[uid]
        assert np.corrcoef(x, y)[0, 1] < 0.95  # not the dry signal (delayed, smeared)
        assert abs(10 * np.log10(np.mean(y**2) / np.mean(x**2))) < 0.5  # power kept
    for u in check_data_dir(built / "silence", 0.0)[0]:
        rms_db = 20 * np.log10(np.sqrt(np.mean(_read(u.wav)[0] ** 2)))
        assert abs(rms_db + 70) < 1.0
    speech = np.median([np.sqrt(np.mean(x**2)) for x in clean.values()])
    kinds = set()
    info = dict(line.split(" ", 1) for line in (built / "noise_only/info").read_text().splitlines())
    for u in check_data_dir(built / "noise_only", 0.0)[0]:
        assert abs(20 * np.log10(np.sqrt(np.mean(_read(u.wav)[0] ** 2)) / speech)) < 0.5
        kinds.add(info[u.utt_id].split()[0])
    assert kinds == {"white", "pink", "brown", "babble"}
    # noise_only babble: as many talkers as the set has (up to 32), not test_noise*'s 4 (module docstring)
    n_talkers = min(mod.NOISE_ONLY_BABBLE_TALKERS, len(clean) - 1)
    assert {v.split(" rms")[0] for v in info.values() if v.startswith("babble")} == {f"babble of {n_talkers} talkers"}
    assert mod.EMPTY_SETS == ("silence", "noise_only")


def test_a_second_run_writes_identical_files(mini_an4, built, tmp_path):
    before = _digest(built)
    _script().build(mini_an4 / "data/test", built, num_clips=4)  # again, over the same files
    assert _digest(built) == before
    other = tmp_path / "other"
    _script().build(mini_an4 / "data/test", other, num_clips=4)  # elsewhere: only wav.scp's absolute paths differ
    a, b = _digest(built), _digest(other)
    assert a.keys() == b.keys() and {k for k in a if a[k] != b[k]} == {f"{s}/wav.scp" for s in _script().SETS}
    _script().build(mini_an4 / "data/test", tmp_path / "seeded", seed=1, sets=("test_noise10",), num_clips=4)
    changed = _digest(tmp_path / "seeded")
    assert changed["test_noise10/info"] == a["test_noise10/info"]
    assert any(changed[k] != a[k] for k in changed if k.endswith(".flac"))  # another seed, other noise


def test_unknown_set_is_refused(mini_an4, tmp_path):
    with pytest.raises(ValueError, match="unknown set"):
        _script().build(mini_an4 / "data/test", tmp_path, sets=("test_4k",))


def test_decoding_an_empty_transcript_set_and_the_summary_lines(ctc_ckpt, built, tmp_path):
    """The decoder reads the silence set (empty references); summarize gives one parseable line per set."""
    from asr.cli.decode import decode

    out = tmp_path / "decode_silence"
    decode({"ckpt": str(ctc_ckpt), "data_dir": str(built / "silence"), "out_dir": str(out), "beam_size": 2, "max_len_ratio": 0.05, "batch_size": 8})
    line = _script().summarize(out, "silence")
    fields = dict(kv.split("=") for kv in line.split())
    assert fields["eval_set"] == "silence" and fields["n_utts"] == "4" and 0 <= int(fields["nonempty"]) <= 4
    assert fields["length_limit"].isdigit() and fields["no_speech"].isdigit()

    scored = tmp_path / "decode_test_8k"
    (scored / "scoring").mkdir(parents=True)
    (scored / "scoring/wer.json").write_text(json.dumps({"wer": 12.345, "cer": 6.0, "n_utts": 130}))
    (scored / "meta.json").write_text(json.dumps({"n_length_limit": 0, "n_no_speech": 1}))
    assert _script().summarize(scored, "test_8k") == "eval_set=test_8k n_utts=130 wer=12.35 cer=6.00 length_limit=0 no_speech=1"


def test_run_sh_scores_the_sets_only_when_asked():
    text = (ROOT / "recipes/an4/run.sh").read_text()
    assert "eval_sets=false" in text and "--eval_sets)" in text
    assert "local/make_eval_sets.py build data/test data" in text and "local/make_eval_sets.py summarize" in text
