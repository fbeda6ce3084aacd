"""Audio loading: any format libsndfile reads (WAV, FLAC, NIST SPHERE, ...) to a mono float32 tensor.

``torchaudio.load`` is deliberately not used (recent torchaudio routes it through torchcodec); files are
read with :mod:`soundfile` and resampled with :func:`torchaudio.functional.resample`.
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path

import numpy as np
import soundfile as sf
import torch

__all__ = ["AudioError", "load_audio", "audio_duration"]

_STEREO_MODES = ("downmix", "error")


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
        If the file does not exist, is a directory, or is not readable as audio.
    """
    p = Path(path)
    _check_file(p)
    try:
        info = sf.info(str(p))
    except (sf.SoundFileError, RuntimeError, OSError) as exc:  # LibsndfileError subclasses SoundFileError
        raise AudioError(p, _sf_reason(exc)) from exc
    if info.samplerate <= 0:
        raise AudioError(p, f"invalid sample rate {info.samplerate}")
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
        If the file is missing, a directory, not readable as audio, has zero samples, contains NaN or
        infinite samples, or has several channels while ``stereo="error"``.
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
    if sample_rate <= 0:
        raise AudioError(p, f"invalid sample rate {sample_rate}")
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
        import torchaudio.functional as taf  # lazy: torchaudio import is slow and only needed here

        wav = taf.resample(wav, orig_freq=int(sample_rate), new_freq=int(target_sample_rate))
    return wav.clamp_(-1.0, 1.0).contiguous()
