"""Audio loading: any format libsndfile reads (WAV, FLAC, NIST SPHERE, ...) to a mono float32 tensor.

``torchaudio.load`` is deliberately not used (recent torchaudio routes it through torchcodec); files are
read with :mod:`soundfile` and resampled with :func:`torchaudio.functional.resample`.

Bad input, decided once here (see the README's "Robustness" section):

* missing path, directory, not audio, header cut short, zero samples, NaN/Inf samples, a sample rate
  outside ``[MIN_SAMPLE_RATE, MAX_SAMPLE_RATE]``: :class:`AudioError` naming the file and the reason;
* a WAV whose *data* is truncated (header intact): the samples present are loaded, as libsndfile reads them;
* digital silence (all zeros): loaded as is; Kaldi fbank with dither 0 then gives the finite energy-floor
  value (``log(FLT_EPSILON)``) in every bin, so silence is decodable;
* another sample rate: resampled to 16 kHz; stereo / multi-channel: averaged to mono with a warning.
"""

from __future__ import annotations

import math
import os
import warnings
from pathlib import Path

import numpy as np
import soundfile as sf
import torch

__all__ = ["AudioError", "load_audio", "audio_duration", "MIN_SAMPLE_RATE", "MAX_SAMPLE_RATE"]

_STEREO_MODES = ("downmix", "error")
#: File sample rates accepted by :func:`load_audio` (Hz). Below, resampling a file to 16 kHz could
#: multiply its size without bound (a 1 Hz header turns 10 MB into 160 GB); above, no real recording.
MIN_SAMPLE_RATE = 4000
MAX_SAMPLE_RATE = 384000
# torchaudio's sinc resampler builds a (new/g, orig/g)-sized kernel (g = gcd of the rates): fine for
# 8/22.05/44.1/48 kHz (at most 441), minutes of CPU for e.g. 44101 Hz. Above this, an FFT resampler is used.
_MAX_SINC_RATIO_TERM = 1000


class AudioError(ValueError):
    """An audio file is missing, unreadable, empty, or holds invalid samples.

    Parameters
    ----------
    path : str or os.PathLike
        The offending file.
    reason : str
        What is wrong with it (human readable).

    Attributes
    ----------
    path : str
        The offending file, as given.
    reason : str
        What is wrong with it.
    """

    def __init__(self, path: str | os.PathLike[str], reason: str) -> None:
        self.path = str(path)
        self.reason = reason
        super().__init__(f"{self.path}: {reason}")


def _check_file(path: Path) -> None:
    if not path.exists():
        raise AudioError(path, "file not found")
    if path.is_dir():
        raise AudioError(path, "is a directory, not an audio file")


def _sf_reason(exc: Exception) -> str:
    return f"cannot read as audio ({type(exc).__name__}: {exc})"


def audio_duration(path: str | os.PathLike[str]) -> float:
    """Duration of an audio file from its header, without decoding the samples.

    Parameters
    ----------
    path : str or os.PathLike
        Audio file in any format libsndfile reads (WAV, FLAC, NIST SPHERE, ...).

    Returns
    -------
    float
        Duration in seconds (``frames / sample_rate``); ``0.0`` for a file with no samples.

    Raises
    ------
    AudioError
        If the file does not exist, is a directory, is not readable as audio, or has a sample rate
        outside ``[MIN_SAMPLE_RATE, MAX_SAMPLE_RATE]``.
    """
    p = Path(path)
    _check_file(p)
    try:
        info = sf.info(str(p))
    except (sf.SoundFileError, RuntimeError, OSError) as exc:  # LibsndfileError subclasses SoundFileError
        raise AudioError(p, _sf_reason(exc)) from exc
    if not MIN_SAMPLE_RATE <= info.samplerate <= MAX_SAMPLE_RATE:
        raise AudioError(
            p, f"unsupported sample rate {info.samplerate} Hz (accepted: {MIN_SAMPLE_RATE}-{MAX_SAMPLE_RATE} Hz)"
        )
    return float(info.frames) / float(info.samplerate)


def load_audio(
    path: str | os.PathLike[str],
    target_sample_rate: int = 16000,
    stereo: str = "downmix",
) -> torch.Tensor:
    """Load an audio file as a mono float32 waveform at ``target_sample_rate``.

    Parameters
    ----------
    path : str or os.PathLike
        Audio file in any format libsndfile reads (WAV, FLAC, NIST SPHERE, OGG, ...).
    target_sample_rate : int, default 16000
        Output sample rate in Hz. Files at another rate are resampled with
        :func:`torchaudio.functional.resample` (band-limited sinc interpolation); the output then has
        ``ceil(num_samples * target_sample_rate / file_rate)`` samples.
    stereo : {"downmix", "error"}, default "downmix"
        What to do with a multi-channel file: ``"downmix"`` averages the channels and emits a
        :class:`UserWarning` naming the file; ``"error"`` raises :class:`AudioError`.

    Returns
    -------
    torch.Tensor
        Shape ``(num_samples,)``, dtype ``float32``, values in ``[-1, 1]`` (integer PCM is scaled by
        libsndfile to that range; floating-point files whose peak exceeds 1 are clipped with a warning,
        as are tiny resampling overshoots, silently).

    Raises
    ------
    AudioError
        If the file is missing, a directory, not readable as audio (e.g. its header is cut short), has
        zero samples, contains NaN or infinite samples, has a sample rate outside
        ``[MIN_SAMPLE_RATE, MAX_SAMPLE_RATE]``, or has several channels while ``stereo="error"``. These
        (and the ``ValueError`` below) are the only exceptions raised for any file content.
    ValueError
        If ``stereo`` is not one of the accepted values or ``target_sample_rate`` is not positive.
    """
    if stereo not in _STEREO_MODES:
        raise ValueError(f"stereo must be one of {_STEREO_MODES}, got {stereo!r}")
    if int(target_sample_rate) <= 0:
        raise ValueError(f"target_sample_rate must be positive, got {target_sample_rate}")
    p = Path(path)
    _check_file(p)
    try:
        # (frames, channels), float32; PCM is scaled to [-1, 1) by libsndfile.
        data, sample_rate = sf.read(str(p), dtype="float32", always_2d=True)
    except (sf.SoundFileError, RuntimeError, OSError) as exc:
        raise AudioError(p, _sf_reason(exc)) from exc

    num_frames, num_channels = data.shape
    if num_frames == 0 or num_channels == 0:
        raise AudioError(p, "contains no samples (empty audio)")
    if not MIN_SAMPLE_RATE <= sample_rate <= MAX_SAMPLE_RATE:
        raise AudioError(
            p, f"unsupported sample rate {sample_rate} Hz (accepted: {MIN_SAMPLE_RATE}-{MAX_SAMPLE_RATE} Hz)"
        )
    finite = np.isfinite(data)
    if not finite.all():
        n_bad = int(data.size - np.count_nonzero(finite))
        raise AudioError(p, f"contains {n_bad} NaN or infinite sample(s)")

    if num_channels > 1:
        if stereo == "error":
            raise AudioError(p, f"has {num_channels} channels; a mono file is required (stereo='error')")
        warnings.warn(f"{p}: {num_channels} channels, downmixed to mono by averaging", UserWarning, stacklevel=2)
        mono = data.mean(axis=1, dtype=np.float32)
    else:
        mono = data[:, 0]

    peak = float(np.abs(mono).max())
    if peak > 1.0:
        warnings.warn(f"{p}: peak amplitude {peak:.3g} > 1, clipped to [-1, 1]", UserWarning, stacklevel=2)

    wav = torch.from_numpy(np.ascontiguousarray(mono, dtype=np.float32))
    if sample_rate != target_sample_rate:
        wav = _resample(wav, int(sample_rate), int(target_sample_rate))
    return wav.clamp_(-1.0, 1.0).contiguous()


def _resample(wav: torch.Tensor, orig: int, new: int) -> torch.Tensor:
    """Band-limited resampling; torchaudio's sinc filter for usual rate pairs, FFT for co-prime ones."""
    g = math.gcd(orig, new)
    if max(orig // g, new // g) <= _MAX_SINC_RATIO_TERM:
        from asr.features.torchaudio_ops import resample  # lazy: torchaudio's import is slow, needed only here

        return resample(wav, orig, new)
    n_out = max(1, math.ceil(wav.numel() * new / orig))
    spec = torch.fft.rfft(wav.double())
    # irfft with n=n_out truncates (downsampling: ideal low-pass) or zero-pads (upsampling) the spectrum.
    return (torch.fft.irfft(spec, n=n_out) * (n_out / wav.numel())).float()
