"""Kaldi-compatible log-mel filterbank front end and global CMVN.

Source: Kaldi ``compute-fbank-feats`` as re-implemented by ``torchaudio.compliance.kaldi.fbank``;
global mean/variance normalisation as ESPnet's ``GlobalMVN`` (statistics from the training set).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor, nn

from asr.features.torchaudio_ops import kaldi_fbank, resample


@dataclass(frozen=True)
class FbankOptions:
    """Front-end settings.

    Attributes
    ----------
    num_mel_bins : int
        Feature dimension F (80).
    frame_length_ms, frame_shift_ms : float
        Analysis window and hop in milliseconds (25 / 10).
    sample_rate : int
        Expected waveform rate in Hz; ``asr.features.audio.load_audio`` resamples to it.
    dither : float
        Kaldi dither (0 for deterministic features).
    """

    num_mel_bins: int = 80
    frame_length_ms: float = 25.0
    frame_shift_ms: float = 10.0
    sample_rate: int = 16000
    dither: float = 0.0

    @property
    def frame_shift_s(self) -> float:
        """Hop between feature frames in seconds."""
        return self.frame_shift_ms / 1000.0


#: Frames per front-end call in :func:`compute_fbank` (60 s at a 10 ms hop).
FBANK_BLOCK_FRAMES = 6000


def compute_fbank(wav: Tensor, opts: FbankOptions = FbankOptions()) -> Tensor:
    """Log-mel filterbank features of one utterance.

    Parameters
    ----------
    wav : Tensor
        ``(num_samples,)`` float waveform in [-1, 1] at ``opts.sample_rate``.
    opts : FbankOptions

    Returns
    -------
    Tensor
        ``(T, F)`` float32, ``T = 1 + (num_samples - window) // hop`` frames (Kaldi ``snip_edges``).
        A long waveform is processed in blocks of ``FBANK_BLOCK_FRAMES`` frames (each frame depends only on
        its own window, so the frames are those of one call up to float rounding), which keeps the front end's working memory
        (framed copies and spectra, ~6 KB per frame) bounded: one call on 30 min of audio peaked at +1.1 GB.

    Raises
    ------
    ValueError
        If ``wav`` is not 1-D or is shorter than one analysis window.

    Examples
    --------
    >>> compute_fbank(torch.zeros(16000) + 1e-3).shape
    torch.Size([98, 80])
    """
    if wav.dim() != 1:
        raise ValueError(f"compute_fbank expects a 1-D waveform, got shape {tuple(wav.shape)}")
    window = int(opts.sample_rate * opts.frame_length_ms / 1000)
    if wav.numel() < window:
        raise ValueError(f"waveform has {wav.numel()} samples, shorter than one {opts.frame_length_ms} ms window")
    hop = int(opts.sample_rate * opts.frame_shift_ms / 1000)
    n_frames = 1 + (wav.numel() - window) // hop
    blocks = []
    for first in range(0, n_frames, FBANK_BLOCK_FRAMES):
        last = min(first + FBANK_BLOCK_FRAMES, n_frames)  # frames first..last-1 read samples first*hop..(last-1)*hop+window
        # Kaldi works on 16-bit integer sample values; scale so energies match Kaldi's.
        chunk = wav[first * hop : (last - 1) * hop + window].float().unsqueeze(0) * 32768.0
        blocks.append(kaldi_fbank(chunk, opts.num_mel_bins, opts.frame_length_ms, opts.frame_shift_ms, opts.sample_rate, opts.dither))
    return blocks[0] if len(blocks) == 1 else torch.cat(blocks)


def speed_perturb(wav: Tensor, factor: float, sample_rate: int = 16000) -> Tensor:
    """Speed perturbation (Ko et al. 2015, "Audio augmentation for speech recognition"; Kaldi/ESPnet's
    ``sox speed``): play ``wav`` ``factor`` times faster, changing duration and pitch together.

    Implemented as resampling from ``sample_rate * factor`` to ``sample_rate`` with
    ``torchaudio.functional.resample``.

    Parameters
    ----------
    wav : Tensor
        ``(num_samples,)`` waveform.
    factor : float
        > 1 speeds up (fewer samples), < 1 slows down; 1.0 returns ``wav`` unchanged.

    Returns
    -------
    Tensor
        ``(round(num_samples / factor),)`` (± 1 sample) waveform.
    """
    if factor <= 0:
        raise ValueError(f"speed factor must be positive, got {factor}")
    if factor == 1.0:
        return wav
    return resample(wav, int(round(sample_rate * factor)), sample_rate)


class GlobalCMVN(nn.Module):
    """Global cepstral mean and variance normalisation, ``(x - mean) / std`` per feature dimension.

    The statistics are buffers, so they travel inside every checkpoint of a model that owns this module.

    Parameters
    ----------
    mean, std : Tensor
        ``(F,)`` statistics computed on the training set (``train_nodev``) by :func:`compute_cmvn_stats`.
    """

    def __init__(self, mean: Tensor, std: Tensor) -> None:
        super().__init__()
        if mean.shape != std.shape or mean.dim() != 1:
            raise ValueError(f"CMVN mean/std must be (F,) of equal shape, got {tuple(mean.shape)} / {tuple(std.shape)}")
        self.register_buffer("mean", mean.float().clone())
        self.register_buffer("istd", 1.0 / std.float().clamp_min(1e-5))

    @classmethod
    def identity(cls, dim: int) -> "GlobalCMVN":
        """CMVN that leaves features unchanged (mean 0, std 1), a placeholder before loading a state dict."""
        return cls(torch.zeros(dim), torch.ones(dim))

    @classmethod
    def from_file(cls, path: str | Path) -> "GlobalCMVN":
        """Load statistics saved by :func:`save_cmvn_stats`. Raises FileNotFoundError naming the file."""
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"CMVN statistics file not found: {path} (run the recipe's stage 2)")
        stats = torch.load(path, weights_only=True)
        return cls(stats["mean"], stats["std"])

    def forward(self, xs: Tensor) -> Tensor:
        """Normalise ``xs`` of shape ``(..., F)``; padding stays garbage and must be masked downstream."""
        return (xs - self.mean) * self.istd


def compute_cmvn_stats(feats: "list[Tensor] | dict[str, Tensor]") -> dict[str, Tensor]:
    """Mean and standard deviation per dimension over all frames of a feature set.

    Parameters
    ----------
    feats : list of Tensor or dict of Tensor
        Each ``(T_i, F)``. Accumulated in float64.

    Returns
    -------
    dict
        ``{"mean": (F,), "std": (F,), "count": ()}`` float32 / int64 tensors.
    """
    items = list(feats.values()) if isinstance(feats, dict) else list(feats)
    if not items:
        raise ValueError("compute_cmvn_stats needs at least one utterance")
    dim = items[0].shape[-1]
    s = torch.zeros(dim, dtype=torch.float64)
    ss = torch.zeros(dim, dtype=torch.float64)
    n = 0
    for x in items:
        x = x.double()
        s += x.sum(0)
        ss += (x * x).sum(0)
        n += x.shape[0]
    mean = s / n
    var = (ss / n - mean * mean).clamp_min(1e-10)
    return {"mean": mean.float(), "std": var.sqrt().float(), "count": torch.tensor(n)}


def save_cmvn_stats(stats: dict[str, Tensor], path: str | Path) -> Path:
    """Save CMVN statistics atomically (temporary file + rename)."""
    from asr.utils.io import atomic_torch_save

    return atomic_torch_save(stats, path)
