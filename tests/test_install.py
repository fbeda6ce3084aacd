"""The installed environment is the locked one, and torchaudio's compiled extension works with this torch.

A torchaudio patch release (2.11.1) that does not load with torch 2.11.0 once broke every fresh install while warm
machines stayed green; these tests fail on such a pair with a message naming both versions.
"""

from __future__ import annotations

import ast
import re
from importlib import metadata
from pathlib import Path

import pytest
import soundfile as sf
import torch

ROOT = Path(__file__).resolve().parents[1]
UTT = ROOT / "tests/data/an4/wav/an4test_clstk/fjlp/an419-fjlp-b.wav"


def _locked(name: str) -> str:
    m = re.search(rf"^{re.escape(name)}==([^\s;\\]+)", (ROOT / "requirements.lock").read_text(), re.M)
    assert m, f"requirements.lock has no exact pin for {name}"
    return m.group(1)


def _installed(name: str) -> str:
    return metadata.version(name).split("+")[0]  # "2.11.0+cu130" -> "2.11.0"


def _pair_message() -> str:
    return (
        f"installed torch {_installed('torch')} + torchaudio {_installed('torchaudio')}, but requirements.lock pins "
        f"torch {_locked('torch')} + torchaudio {_locked('torchaudio')}; reinstall from the lock "
        "(`make venv`, or `pip install --require-hashes -r requirements.lock && pip install --no-deps -e .`)"
    )


def test_pyproject_pins_the_compiled_pair_exactly():
    text = (ROOT / "pyproject.toml").read_text()
    for name in ("torch", "torchaudio"):
        pin = re.search(rf'"{name}==([0-9][0-9.]*)"', text)
        assert pin, f'pyproject.toml must pin "{name}==X.Y.Z" exactly (a range let torchaudio 2.11.1 in)'
        assert pin.group(1) == _locked(name), f"pyproject.toml pins {name}=={pin.group(1)}, requirements.lock {_locked(name)}: run `make lock`"


def test_installed_torch_pair_is_the_locked_one():
    assert (_installed("torch"), _installed("torchaudio")) == (_locked("torch"), _locked("torchaudio")), _pair_message()


def test_torchaudio_extension_fbank_and_resample_on_real_audio():
    try:
        import torchaudio  # loads libtorchaudio: an ABI mismatch fails here ("undefined symbol")
        from torchaudio._extension import _IS_TORCHAUDIO_EXT_AVAILABLE
    except (OSError, ImportError) as e:
        pytest.fail(f"torchaudio does not load ({e}): {_pair_message()}")
    assert _IS_TORCHAUDIO_EXT_AVAILABLE, f"torchaudio's compiled extension is missing: {_pair_message()}"
    assert torchaudio.__version__.split("+")[0] == _installed("torchaudio")

    from asr.features.fbank import FbankOptions, compute_fbank
    from asr.features.torchaudio_ops import resample

    x, sr = sf.read(UTT, dtype="float32")
    assert sr == 16000
    wav = torch.from_numpy(x)
    feats = compute_fbank(wav, FbankOptions())
    assert feats.shape == (1 + (len(x) - 400) // 160, 80)
    assert torch.isfinite(feats).all()
    # speech has more energy in the lower mel bins than silence-level floors: a broken front end gives flat rows
    assert feats.std(0).mean() > 1.0 and feats.mean() > 0.0

    down = resample(wav, 16000, 8000)
    assert abs(down.numel() - len(x) / 2) <= 1
    # a band-limited 300 Hz tone survives 16 -> 8 kHz resampling almost exactly
    t = torch.arange(16000) / 16000
    tone = torch.sin(2 * torch.pi * 300 * t)
    tone8 = resample(tone, 16000, 8000)
    ref = torch.sin(2 * torch.pi * 300 * torch.arange(8000) / 8000)
    assert torch.allclose(tone8[200:-200], ref[200:-200], atol=1e-3)
    # the utterance keeps its low-band energy (most of AN4's speech energy is below 4 kHz)
    e16 = float((wav**2).sum()) / 16000
    e8 = float((down**2).sum()) / 8000
    assert 0.5 < e8 / e16 <= 1.01


def test_only_torchaudio_ops_imports_torchaudio():
    """torchaudio's surface stays in asr/features/torchaudio_ops.py (README, "torchaudio")."""
    offenders = []
    for p in sorted((ROOT / "asr").rglob("*.py")):
        if p.name == "torchaudio_ops.py":
            continue
        for node in ast.walk(ast.parse(p.read_text(), str(p))):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else [node.module or ""] if isinstance(node, ast.ImportFrom) else []
            if any(n == "torchaudio" or n.startswith("torchaudio.") for n in names):
                offenders.append(f"{p.relative_to(ROOT)}:{node.lineno}")
    assert not offenders, f"torchaudio imported outside asr/features/torchaudio_ops.py: {offenders}"

