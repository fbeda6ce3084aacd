"""Audio loading: any format libsndfile reads (WAV, FLAC, NIST SPHERE, ...) to a mono float32 tensor.

``torchaudio.load`` is deliberately not used (recent torchaudio routes it through torchcodec); files are
read with :mod:`soundfile` and resampled with :func:`torchaudio.functional.resample`.

Bad input, decided once here (see the README's "Robustness" section):

* missing path, directory, not a regular file (a FIFO, device or socket: never opened, so a FIFO with no
  writer cannot hang the caller), a symlink loop, permission denied, not audio, header cut short, zero
  samples, NaN/Inf samples, a sample rate outside ``[MIN_SAMPLE_RATE, MAX_SAMPLE_RATE]``, more than
  ``MAX_DURATION_S`` of audio, a header claiming more samples than the file's size can hold
  (``MAX_SAMPLES_PER_BYTE``): :class:`AudioError` naming the file and the reason;
* samples are read in blocks of ``_READ_BLOCK`` frames, so memory follows the samples really present,
  never the count a (corrupt or hostile) header claims;
* a WAV whose *data* is truncated (header intact): the samples present are loaded, as libsndfile reads them;
* digital silence (all zeros): loaded as is; Kaldi fbank with dither 0 then gives the finite energy-floor
  value (``log(FLT_EPSILON)``) in every bin, so silence is decodable;
* another sample rate: resampled to 16 kHz; stereo / multi-channel: averaged to mono with a warning.

Input unlike what the model expects is warned about with :class:`AudioInputWarning` (a ``UserWarning``; Python's
:mod:`warnings`, so ``warnings.simplefilter("error", AudioInputWarning)`` turns it into a refusal):
:class:`~asr.decoding.engine.Engine` warns once per ``run`` call, with counts, about inputs at a LOWER sample rate
than the model's (upsampled, but the band above half their rate is missing: AN4 test at 8 kHz gives 119 % WER
with the 16 kHz AN4 model) and about integer in-memory waveforms, which :func:`waveform_to_float` scales to
``[-1, 1]`` (int8/int16/int32 by their full scale, uint8 around 128, as libsndfile reads PCM files); other
integer types (int64, unsigned 16-64 bit) and bool are refused (ValueError): their full scale is unknown.
"""

from __future__ import annotations

import errno
import math
import os
import re
import stat
import warnings
from pathlib import Path

import numpy as np
import soundfile as sf
import torch

__all__ = ["AudioError", "AudioInputWarning", "load_audio", "read_audio", "sf_path", "waveform_to_float", "audio_duration", "check_regular_file", "resample_waveform", "MIN_SAMPLE_RATE", "MAX_SAMPLE_RATE", "MAX_DURATION_S", "MAX_SAMPLES_PER_BYTE"]

_STEREO_MODES = ("downmix", "error")
#: File sample rates accepted by :func:`load_audio` (Hz). Below, resampling a file to 16 kHz could
#: multiply its size without bound (a 1 Hz header turns 10 MB into 160 GB); above, no real recording.
MIN_SAMPLE_RATE = 4000
MAX_SAMPLE_RATE = 384000
#: Longest recording :func:`load_audio` accepts (seconds): 4 h, 230 M samples at 16 kHz (0.9 GB float32).
MAX_DURATION_S = 4 * 3600.0
#: Most samples (frames x channels) a header may claim per byte of file. PCM holds at most 1 sample per
#: byte (8-bit); FLAC's densest frames (digital silence: a constant subframe of up to 65535 samples in a
#: few bytes) reach a few thousand. Above this the header is corrupt or hostile (a 46 KB FLAC claiming
#: 2^36 samples would make a plain ``sf.read`` allocate 256 GiB).
MAX_SAMPLES_PER_BYTE = 8192
# Frames read per block: memory grows with the samples actually decoded, not with the header's claim.
_READ_BLOCK = 1 << 20
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


class AudioInputWarning(UserWarning):
    """Audio unlike what the model expects (module docstring): a lower sample rate than the model's, or an
    integer in-memory waveform scaled to ``[-1, 1]``."""


#: Full scale of the integer sample types :func:`waveform_to_float` accepts: ``(offset, scale)``, float = (x - offset) / scale.
_INT_SCALE = {"int8": (0.0, 128.0), "uint8": (128.0, 128.0), "int16": (0.0, 32768.0), "int32": (0.0, 2147483648.0)}


def waveform_to_float(x: "np.ndarray | torch.Tensor") -> tuple[torch.Tensor, str | None]:
    """An in-memory waveform as float32, integer PCM scaled to ``[-1, 1]``.

    Parameters
    ----------
    x : numpy array or torch tensor (or anything ``np.asarray`` takes)
        Samples of any shape. Floating point: taken as they are (expected in ``[-1, 1]``). int8, int16, int32:
        divided by their full scale (128, 32768, 2**31); uint8: ``(x - 128) / 128`` (8-bit WAV's offset binary).

    Returns
    -------
    (Tensor, str or None)
        The float32 samples (same shape) and, when they were integers, the name of their dtype (``"int16"``),
        else None.

    Raises
    ------
    ValueError
        bool, complex, or an integer type without a known full scale (int64, uint16, uint32, uint64): convert to
        float in ``[-1, 1]`` (or int16) first.
    """
    t = x if isinstance(x, torch.Tensor) else torch.as_tensor(np.asarray(x))
    name = str(t.dtype).removeprefix("torch.")
    if t.dtype.is_floating_point:
        return t.float(), None
    if name in _INT_SCALE:
        offset, scale = _INT_SCALE[name]
        return ((t.double() - offset) / scale).float(), name
    raise ValueError(
        f"in-memory waveform of type {name}: its full scale is unknown (accepted: float in [-1, 1], or int8/int16/int32/uint8 PCM, "
        "scaled by their full scale); convert it to float (or int16) first"
    )


def check_regular_file(path: str | os.PathLike[str]) -> os.stat_result:
    """``os.stat`` of ``path`` (following symlinks) if it is a readable regular file.

    Nothing is opened before the file type is known, so a FIFO without a writer cannot block the caller.

    Returns
    -------
    os.stat_result
        The file's status (``st_size`` in bytes, ``st_mtime_ns``).

    Raises
    ------
    AudioError
        The reason: ``file not found``, ``symlink loop``, ``permission denied``, ``is a directory, not an
        audio file``, ``not a regular file (FIFO|character device|block device|socket)``.
    """
    p = Path(path)
    try:
        st = os.stat(p)
    except FileNotFoundError:
        raise AudioError(p, "file not found") from None
    except PermissionError:
        raise AudioError(p, "permission denied (cannot stat the file)") from None
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise AudioError(p, "symlink loop (too many levels of symbolic links)") from None
        raise AudioError(p, f"cannot stat the file ({exc.strerror or exc})") from None
    mode = st.st_mode
    if stat.S_ISDIR(mode):
        raise AudioError(p, "is a directory, not an audio file")
    if not stat.S_ISREG(mode):
        kind = "FIFO" if stat.S_ISFIFO(mode) else "character device" if stat.S_ISCHR(mode) else "block device" if stat.S_ISBLK(mode) else "socket" if stat.S_ISSOCK(mode) else "special file"
        raise AudioError(p, f"not a regular file ({kind})")
    if not os.access(p, os.R_OK):
        raise AudioError(p, "permission denied (file is not readable)")
    return st


_check_file = check_regular_file


def _check_header(path: Path, frames: int, channels: int, sample_rate: int, size: int) -> None:
    """Refuse a header whose sample count cannot be true (more than ``MAX_SAMPLES_PER_BYTE`` per byte of
    the ``size``-byte file) or whose duration exceeds ``MAX_DURATION_S``."""
    claimed = int(frames) * max(int(channels), 1)
    if claimed > MAX_SAMPLES_PER_BYTE * max(size, 1):
        raise AudioError(path, f"header claims {frames} samples x {channels} channel(s) but the file has {size} bytes (corrupt or hostile header)")
    if frames / sample_rate > MAX_DURATION_S:
        raise AudioError(path, f"header claims {frames / sample_rate:.0f} s of audio, more than the {MAX_DURATION_S:.0f} s limit")


def sf_path(path: str | os.PathLike[str]) -> str | bytes:
    """``path`` as soundfile should get it: the OS's bytes on POSIX, so that a name that is not valid UTF-8 (held by
    Python as a ``surrogateescape`` string, e.g. from ``sys.argv`` or ``os.listdir``) opens the file the OS named
    instead of failing to encode; the string on Windows (soundfile opens it with the wide-character API)."""
    return str(path) if os.name == "nt" else os.fsencode(path)


def _sf_reason(exc: Exception) -> str:
    # libsndfile's "Error opening b'<path>': " repeats the path that AudioError already gives (as bytes: sf_path)
    msg = re.sub(r"^Error opening (b?'.*?'|b?\".*?\"): ", "", str(exc), count=1, flags=re.S)
    return f"cannot read as audio ({type(exc).__name__}: {msg})"


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
        If the file does not exist, is not a readable regular file (:func:`check_regular_file`), is not
        readable as audio, has a sample rate outside ``[MIN_SAMPLE_RATE, MAX_SAMPLE_RATE]``, or a header
        claiming an impossible sample count (:data:`MAX_SAMPLES_PER_BYTE`, :data:`MAX_DURATION_S`).
    """
    p = Path(path)
    st = _check_file(p)
    try:
        info = sf.info(sf_path(p))
    except (sf.SoundFileError, RuntimeError, OSError) as exc:  # LibsndfileError subclasses SoundFileError
        raise AudioError(p, _sf_reason(exc)) from exc
    if not MIN_SAMPLE_RATE <= info.samplerate <= MAX_SAMPLE_RATE:
        raise AudioError(
            p, f"unsupported sample rate {info.samplerate} Hz (accepted: {MIN_SAMPLE_RATE}-{MAX_SAMPLE_RATE} Hz)"
        )
    if info.frames > 0:
        _check_header(p, info.frames, info.channels, info.samplerate, st.st_size)
    return float(info.frames) / float(info.samplerate)


def load_audio(
    path: str | os.PathLike[str],
    target_sample_rate: int = 16000,
    stereo: str = "downmix",
) -> torch.Tensor:
    """Load an audio file as a mono float32 waveform at ``target_sample_rate``: :func:`read_audio`'s waveform.
    Parameters, returns and raises as :func:`read_audio`'s (the file's sample rate left out)."""
    return _read_audio(path, target_sample_rate, stereo)[0]


def read_audio(
    path: str | os.PathLike[str],
    target_sample_rate: int = 16000,
    stereo: str = "downmix",
) -> tuple[torch.Tensor, int]:
    """Load an audio file as a mono float32 waveform at ``target_sample_rate``, and say the file's own rate.

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
    (torch.Tensor, int)
        The waveform: shape ``(num_samples,)``, dtype ``float32``, values in ``[-1, 1]`` (integer PCM is scaled by
        libsndfile to that range; floating-point files whose peak exceeds 1 are clipped with a warning,
        as are tiny resampling overshoots, silently); and the file's sample rate in Hz (before resampling).

    Raises
    ------
    AudioError
        If the file is missing, not a readable regular file (:func:`check_regular_file`: a directory,
        FIFO, device, symlink loop, no read permission), not readable as audio (e.g. its header is cut
        short), has a header claiming an impossible sample count or more than :data:`MAX_DURATION_S`, has
        zero samples, contains NaN or infinite samples, has a sample rate outside
        ``[MIN_SAMPLE_RATE, MAX_SAMPLE_RATE]``, or has several channels while ``stereo="error"``. These
        (and the ``ValueError`` below) are the only exceptions raised for any file content.
    ValueError
        If ``stereo`` is not one of the accepted values or ``target_sample_rate`` is not positive.
    """
    return _read_audio(path, target_sample_rate, stereo)


def _read_audio(path: str | os.PathLike[str], target_sample_rate: int, stereo: str) -> tuple[torch.Tensor, int]:
    """:func:`read_audio` (its warnings point at the caller of the public function)."""
    if stereo not in _STEREO_MODES:
        raise ValueError(f"stereo must be one of {_STEREO_MODES}, got {stereo!r}")
    if int(target_sample_rate) <= 0:
        raise ValueError(f"target_sample_rate must be positive, got {target_sample_rate}")
    p = Path(path)
    st = _check_file(p)
    try:
        with sf.SoundFile(sf_path(p)) as f:
            sample_rate, claimed, channels = f.samplerate, f.frames, f.channels
            if not MIN_SAMPLE_RATE <= sample_rate <= MAX_SAMPLE_RATE:
                raise AudioError(p, f"unsupported sample rate {sample_rate} Hz (accepted: {MIN_SAMPLE_RATE}-{MAX_SAMPLE_RATE} Hz)")
            if claimed > 0:
                _check_header(p, claimed, channels, sample_rate, st.st_size)
            # (frames, channels), float32; PCM is scaled to [-1, 1) by libsndfile. Read block by block:
            # a header may claim far more frames than there are.
            max_frames = int(MAX_DURATION_S * max(sample_rate, 1)) + 1
            blocks, total = [], 0
            while True:
                block = f.read(min(_READ_BLOCK, max_frames + 1 - total), dtype="float32", always_2d=True)
                if block.shape[0] == 0:
                    break
                blocks.append(block)
                total += block.shape[0]
                if total > max_frames:
                    raise AudioError(p, f"longer than the {MAX_DURATION_S:.0f} s limit")
        data = np.concatenate(blocks, 0) if blocks else np.zeros((0, channels), dtype=np.float32)
    except (sf.SoundFileError, RuntimeError, OSError, MemoryError) as exc:
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
        warnings.warn(f"{p}: {num_channels} channels, downmixed to mono by averaging", UserWarning, stacklevel=3)
        mono = data.mean(axis=1, dtype=np.float32)
    else:
        mono = data[:, 0]

    peak = float(np.abs(mono).max())
    if peak > 1.0:
        warnings.warn(f"{p}: peak amplitude {peak:.3g} > 1, clipped to [-1, 1]", UserWarning, stacklevel=3)

    wav = torch.from_numpy(np.ascontiguousarray(mono, dtype=np.float32))
    if sample_rate != target_sample_rate:
        wav = _resample(wav, int(sample_rate), int(target_sample_rate))
    return wav.clamp_(-1.0, 1.0).contiguous(), int(sample_rate)


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


def resample_waveform(wav: torch.Tensor, orig_sample_rate: int, new_sample_rate: int) -> torch.Tensor:
    """Resample a waveform given in memory the way :func:`load_audio` resamples files.

    Parameters
    ----------
    wav : ``(num_samples,)`` float waveform; orig_sample_rate, new_sample_rate : Hz.

    Returns
    -------
    ``(ceil(num_samples * new / orig),)`` float32 (``wav`` itself when the rates are equal).

    Raises
    ------
    ValueError
        A rate outside ``[MIN_SAMPLE_RATE, MAX_SAMPLE_RATE]``.
    """
    for rate in (orig_sample_rate, new_sample_rate):
        if not MIN_SAMPLE_RATE <= int(rate) <= MAX_SAMPLE_RATE:
            raise ValueError(f"unsupported sample rate {rate} Hz (accepted: {MIN_SAMPLE_RATE}-{MAX_SAMPLE_RATE} Hz)")
    if int(orig_sample_rate) == int(new_sample_rate):
        return wav
    return _resample(wav.float(), int(orig_sample_rate), int(new_sample_rate))
