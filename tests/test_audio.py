"""Tests for asr.features.audio (soundfile-based loading, resampling, error handling)."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

from asr.features.audio import AudioError, audio_duration, load_audio

AN4 = Path(__file__).parent / "data" / "an4"
WAV = AN4 / "wav" / "an4_clstk" / "fmjc" / "an120-fmjc-b.wav"


def _tone(sr: int, seconds: float = 0.5, channels: int = 1) -> np.ndarray:
    t = np.arange(int(sr * seconds)) / sr
    x = 0.5 * np.sin(2 * np.pi * 440.0 * t).astype(np.float32)
    return x if channels == 1 else np.stack([x] * channels, axis=1)


def test_load_real_wav():
    info = sf.info(str(WAV))
    wav = load_audio(WAV)
    assert wav.dtype == torch.float32
    assert wav.shape == (info.frames,)
    assert info.samplerate == 16000
    assert float(wav.abs().max()) <= 1.0
    assert float(wav.abs().max()) > 0.0  # not silent
    assert math.isclose(audio_duration(WAV), info.frames / 16000)


@pytest.mark.parametrize("sr", [8000, 22050, 44100])
def test_resampled_to_16k(tmp_path, sr):
    path = tmp_path / f"tone_{sr}.wav"
    sf.write(str(path), _tone(sr, 0.5), sr, subtype="PCM_16")
    wav = load_audio(path, target_sample_rate=16000)
    assert wav.dim() == 1 and wav.dtype == torch.float32
    assert abs(wav.numel() - 8000) <= 80  # 0.5 s at 16 kHz, +-1%
    assert float(wav.abs().max()) <= 1.0
    # the 440 Hz tone survives: dominant FFT bin at 440 Hz
    spec = np.abs(np.fft.rfft(wav.numpy()))
    freq = np.fft.rfftfreq(wav.numel(), 1 / 16000)[spec.argmax()]
    assert abs(freq - 440) < 5


def test_stereo_downmix_warns(tmp_path):
    path = tmp_path / "stereo.wav"
    left = _tone(16000, 0.25)
    data = np.stack([left, np.zeros_like(left)], axis=1)
    sf.write(str(path), data, 16000, subtype="FLOAT")
    with pytest.warns(UserWarning, match="stereo.wav"):
        wav = load_audio(path)
    assert wav.shape == (left.shape[0],)
    np.testing.assert_allclose(wav.numpy(), left / 2, atol=1e-6)


def test_stereo_error(tmp_path):
    path = tmp_path / "stereo.wav"
    sf.write(str(path), _tone(16000, 0.1, channels=2), 16000)
    with pytest.raises(AudioError, match="stereo.wav") as ei:
        load_audio(path, stereo="error")
    assert "channels" in ei.value.reason
    with pytest.raises(ValueError):
        load_audio(path, stereo="left")


def test_missing_file(tmp_path):
    path = tmp_path / "nope.wav"
    with pytest.raises(AudioError, match="nope.wav") as ei:
        load_audio(path)
    assert ei.value.path == str(path)
    with pytest.raises(AudioError, match="nope.wav"):
        audio_duration(path)


def test_text_file_is_not_audio(tmp_path):
    path = tmp_path / "notes.wav"
    path.write_text("this is not audio\n" * 10)
    with pytest.raises(AudioError, match="notes.wav"):
        load_audio(path)
    with pytest.raises(AudioError, match="notes.wav"):
        audio_duration(path)


def test_zero_length_wav(tmp_path):
    path = tmp_path / "empty.wav"
    sf.write(str(path), np.zeros(0, dtype=np.float32), 16000, subtype="PCM_16")
    assert audio_duration(path) == 0.0
    with pytest.raises(AudioError, match="empty.wav") as ei:
        load_audio(path)
    assert "no samples" in ei.value.reason


def test_nan_samples(tmp_path):
    path = tmp_path / "nan.wav"
    x = _tone(16000, 0.1)
    x[10] = np.nan
    sf.write(str(path), x, 16000, subtype="FLOAT")
    with pytest.raises(AudioError, match="nan.wav") as ei:
        load_audio(path)
    assert "NaN" in ei.value.reason


def test_nist_sphere(tmp_path):
    data, sr = sf.read(str(WAV), dtype="int16")
    path = tmp_path / "an120-fmjc-b.sph"
    sf.write(str(path), data, sr, format="NIST", subtype="PCM_16")
    assert sf.info(str(path)).format == "NIST"
    wav = load_audio(path)
    ref = load_audio(WAV)
    assert wav.shape == ref.shape
    torch.testing.assert_close(wav, ref)
    assert math.isclose(audio_duration(path), data.shape[0] / sr)
