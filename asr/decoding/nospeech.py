"""No-speech decision: is there anything to transcribe in a stretch of fbank features?

Without it, the attention decoder always says something: digital silence transcribed as "N", white noise as
"SX SXX SIX" (models/an4_pblstm_x4). :class:`~asr.decoding.engine.Engine` skips the search of a unit whose
:func:`modulation_depth_db` is below ``DecodingOptions.no_speech_db`` (default 6 dB; 0 = off) and gives it an
empty hypothesis.

The rule: speech is modulated (syllables come and go at 3-8 Hz, with pauses between words), silence, hum,
tones and steady noise are not. The statistic is the spread, ``q99 - q10`` in dB, of the frame energy in the
lowest quarter of the mel bands (20 of 80 bins: up to about 640 Hz, where voiced speech has most of its energy and
white noise little of its), smoothed over 100 ms (10 frames) so that the frame-to-frame estimation noise of a
stationary noise does not count as modulation. It needs only the fbank, so it holds for every model, with or
without a CTC branch, and a quantile at 99 % keeps a short word in a long stretch of silence (1 % of its frames
suffice).

Measured (issue 32; models/an4_pblstm_x4's front end: 16 kHz, 80 bins, 10 ms hop):

=========================================================  ================
clips                                                      depth (dB)
=========================================================  ================
digital silence, 50 Hz hum, 1 kHz tone                     0.0
white noise at -100 to 0 dBFS, brown noise (3 s)           0.5-2.9
AN4 speech: 10 clips of tests/data/an4 + 40 of AN4 test    21.5-56 (median 41)
the same in white noise at 20 / 10 / 5 / 0 dB SNR          >= 21.3 / 19.9 / 16.9 / 12.7
=========================================================  ================

6 dB sits twice above the noise and half below the noisiest speech. Rejected alternative: the fraction of encoder
frames where the CTC blank posterior exceeds 0.5 (same clips): speech 0.22-0.79, digital silence 0.97, low white
noise 0.96, but loud white noise 0.01 (the CTC branch emits tokens on most frames of it) and a short word in a 6 s
segment would score as silence does (0.97); it separates neither loud noise nor long pauses.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

__all__ = ["modulation_depth_db", "is_no_speech", "SMOOTH_FRAMES", "LOW_BAND_FRACTION"]

#: Frames of the moving average over the band energy (100 ms at a 10 ms hop).
SMOOTH_FRAMES = 10
#: Fraction of the mel bins, from the lowest, whose energy is measured.
LOW_BAND_FRACTION = 0.25
_DB = 10.0 / math.log(10.0)


def modulation_depth_db(feats: Tensor) -> float:
    """Energy modulation depth of a stretch of log-mel fbank features.

    Parameters
    ----------
    feats : Tensor
        ``(T, F)`` log-mel filterbank (natural log of mel energies, as :func:`~asr.features.fbank.compute_fbank`
        gives them, before CMVN), ``T >= 1`` frames, ``F >= 1`` bins.

    Returns
    -------
    float
        In dB: ``q99 - q10`` over frames of ``10 log10`` of the energy summed over the lowest
        ``ceil(LOW_BAND_FRACTION * F)`` mel bins, moving-averaged (linear energy) over ``min(SMOOTH_FRAMES, T)``
        frames. 0 for digital silence (every bin at the energy floor); about 1-3 for stationary noise; 20-60
        for clean speech (module docstring).

    Raises
    ------
    ValueError
        ``feats`` is not 2-D or has no frame or bin, or holds NaN/Inf.
    """
    if feats.dim() != 2 or feats.shape[0] < 1 or feats.shape[1] < 1:
        raise ValueError(f"feats must be (T, F) with T, F >= 1, got shape {tuple(feats.shape)}")
    x = feats.detach().to("cpu", torch.float64)
    if not bool(torch.isfinite(x).all()):
        raise ValueError("feats hold NaN or infinite values")
    bins = max(1, math.ceil(LOW_BAND_FRACTION * x.shape[1]))
    e = torch.logsumexp(x[:, :bins], -1)
    lin = (e - e.max()).exp()  # relative energy in (0, 1]: no overflow whatever the level
    k = min(SMOOTH_FRAMES, lin.numel())
    smooth = torch.nn.functional.avg_pool1d(lin[None, None], k, 1).flatten().clamp_min(1e-300).log() * _DB
    q = torch.quantile(smooth, torch.tensor([0.10, 0.99], dtype=smooth.dtype))
    return float(q[1] - q[0])


def is_no_speech(feats: Tensor, threshold_db: float) -> bool:
    """Whether ``feats`` hold no speech: :func:`modulation_depth_db` below ``threshold_db``.

    Parameters
    ----------
    feats : Tensor
        ``(T, F)`` log-mel fbank (see :func:`modulation_depth_db`).
    threshold_db : float
        ``DecodingOptions.no_speech_db``; 0 (or less) never decides no speech.

    Returns
    -------
    bool

    Raises
    ------
    ValueError
        As :func:`modulation_depth_db`.
    """
    if threshold_db <= 0:
        return False
    return modulation_depth_db(feats) < threshold_db
