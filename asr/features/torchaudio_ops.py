"""The project's whole use of torchaudio, in one place.

torchaudio is in maintenance mode (no release after 2.11; its 2.11.1 wheel does not load with torch 2.11.0), so
every call into it goes through this module and nothing else in ``asr`` imports it. Each function names what
would replace it if torchaudio went away (README, "torchaudio"):

========================  ==============================================  ==========================================
function                   torchaudio API                                   replacement
========================  ==============================================  ==========================================
:func:`kaldi_fbank`        ``compliance.kaldi.fbank`` (pure PyTorch ops)    ``kaldi-native-fbank`` (C++, Kaldi's code)
:func:`resample`           ``functional.resample`` (windowed sinc)          ``soxr`` or ``scipy.signal.resample_poly``
:func:`frequency_masking`  ``transforms.FrequencyMasking`` (iid masks)      ~10 lines of ``torch.randint`` + masked_fill
:func:`time_masking`       ``transforms.TimeMasking`` (iid masks, ``p``)    the same
========================  ==============================================  ==========================================

The compiled extension (``libtorchaudio``) is loaded by ``import torchaudio`` itself: a torch/torchaudio pair that
does not match fails there (``undefined symbol``), which ``tests/test_install.py`` turns into a message naming
both versions.
"""

from __future__ import annotations

from torch import Tensor, nn

__all__ = ["kaldi_fbank", "resample", "frequency_masking", "time_masking"]


def kaldi_fbank(wav: Tensor, num_mel_bins: int, frame_length_ms: float, frame_shift_ms: float, sample_rate: int, dither: float) -> Tensor:
    """Kaldi ``compute-fbank-feats`` log-mel filterbank (``snip_edges``, Povey window, energy floor 0).

    Parameters
    ----------
    wav : Tensor
        ``(1, num_samples)`` float waveform on Kaldi's 16-bit integer scale (``[-32768, 32767]``).

    Returns
    -------
    Tensor
        ``(T, num_mel_bins)`` float32, ``T = 1 + (num_samples - window) // hop``.
    """
    import torchaudio.compliance.kaldi as kaldi

    return kaldi.fbank(
        wav,
        num_mel_bins=num_mel_bins,
        frame_length=frame_length_ms,
        frame_shift=frame_shift_ms,
        sample_frequency=sample_rate,
        dither=dither,
        energy_floor=0.0,
    )


def resample(wav: Tensor, orig_freq: int, new_freq: int) -> Tensor:
    """Band-limited resampling (windowed sinc, Hann window, 6 zero crossings: torchaudio's defaults).

    ``wav (..., num_samples)`` at ``orig_freq`` Hz -> ``(..., ceil(num_samples * new_freq / orig_freq))`` at
    ``new_freq`` Hz. The filter has ``orig/g`` by ``new/g`` phases (``g = gcd``): callers with co-prime rates use
    an FFT instead (``asr.features.audio``).
    """
    import torchaudio.functional as taf

    return taf.resample(wav, orig_freq=orig_freq, new_freq=new_freq)


def resample_filtered(wav: Tensor, orig_freq: int, new_freq: int, lowpass_filter_width: int = 16) -> Tensor:
    """:func:`resample` with a longer windowed-sinc filter (``lowpass_filter_width`` zero crossings: a steeper
    anti-aliasing low-pass, what band-limiting augmentation uses)."""
    import torchaudio.functional as taf

    return taf.resample(wav, orig_freq=orig_freq, new_freq=new_freq, lowpass_filter_width=lowpass_filter_width)


def add_noise(wav: Tensor, noise: Tensor, snr_db: Tensor) -> Tensor:
    """torchaudio's ``functional.add_noise``: ``wav (..., L)`` plus ``noise (..., L)`` scaled to ``snr_db (...)`` dB."""
    import torchaudio.functional as taf

    return taf.add_noise(wav, noise, snr_db)


def gain(wav: Tensor, gain_db: float) -> Tensor:
    """torchaudio's ``functional.gain``: ``wav`` scaled by ``gain_db`` dB."""
    import torchaudio.functional as taf

    return taf.gain(wav, gain_db)


def frequency_masking(max_width: int) -> nn.Module:
    """SpecAugment frequency mask (Park et al. 2019): a module masking ``[f0, f0 + f)`` with ``f ~ U[0, max_width]``
    independently per example, on ``(B, 1, F, T)`` input."""
    import torchaudio.transforms as tat

    return tat.FrequencyMasking(max_width, iid_masks=True)


def time_masking(max_width: int, max_ratio: float) -> nn.Module:
    """SpecAugment time mask: width ``t ~ U[0, min(max_width, max_ratio * T)]`` per example, on ``(B, 1, F, T)``."""
    import torchaudio.transforms as tat

    return tat.TimeMasking(max_width, iid_masks=True, p=max_ratio)
