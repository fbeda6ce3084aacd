"""On-the-fly waveform augmentation for channels and noise: reverberation, additive noise, band-limiting, gain.

Applied per training cut by :class:`asr.data.lhotse_data.CutBatchDataset` (after speed perturbation, before the
fbank), never stored. SpecAugment stays where it is (on CMVN-normalised batches in the Lightning module). Configured by
``data.wave_augment`` (``conf/augment/channel_noise.yaml`` sets it; absent or ``null`` = off); see
:class:`WaveAugmentConfig` for every key and its default.

The chain follows the physical path of a recording: the talker in a room (``reverb``), other sound in the room
(``noise``), a narrow channel (``band_limit``: telephone band through 8 kHz, or another low-pass), a level
(``gain``). Each transform is drawn independently with its own probability; a cut with no transform drawn keeps its
stored fbank (``data.features=precomputed``), a cut with one or more gets its fbank computed from the augmented
audio, exactly as a speed-perturbed cut does (so ``precomputed`` is accepted, and costs fbank time only for the
augmented fraction).

Determinism: every draw of a cut (which transforms, their parameters, the noise samples, the room) comes from
``random.Random("asr-augment:<seed>:<epoch>:<cut id>")`` and generators seeded from it, never from a global RNG or
the worker, so a run resumed after SIGKILL, with any number of DataLoader workers, sees the same audio as an
uninterrupted run. Simulated rooms come from a bank of ``reverb.rooms`` rooms, room ``i`` keyed on ``(seed, i)``
only and built lazily (a room takes ~0.3 s to simulate; each worker builds the ones it draws once).

Library choice (what is installed in this toolkit's environment, and why this split):

- **lhotse 1.33** (already the data layer): ``ReverbWithImpulseResponse`` convolves with an impulse response the way
  Kaldi's ``wav-reverberate`` does (output aligned on the direct path, same length, same power), and with no RIR given
  it simulates one with ``FastRandomRIRGenerator`` (FRA-RIR, Luo et al. 2022: image-source-like Dirac combs with a
  T60 and distance, no data needed). We use both, with a room's T60 drawn from ``reverb.rt60`` (FRA-RIR itself draws
  T60 in ``[0.1, max_T60]``; :class:`_RoomSimulator` fixes the draw to ours). ``Resample``/``Narrowband``/``Volume``
  exist too, but they are thin wrappers of torchaudio on numpy arrays with a process-wide resampler cache; we call
  the torchaudio functions directly on tensors. ``CutSet.mix``/``Cut.mix(snr=...)`` mixes cuts lazily at an SNR,
  but it needs the noise as cuts (no generated noise) and mixes by cut references; a noise corpus here is read
  through lhotse (:class:`NoiseCorpus`: a ``cuts.jsonl.gz`` or a Kaldi data dir) and mixed as a waveform instead,
  so generated and recorded noise share one path and one SNR definition.
- **torchaudio 2.11**: ``functional.add_noise`` (scales noise to an SNR over the whole cut, power = mean square),
  ``functional.resample`` (windowed-sinc, the same resampler decoding uses for non-16 kHz input: band-limiting is
  "resample down to twice the cut-off and back", whose anti-aliasing filter is a steep low-pass, unlike a biquad's
  12 dB/octave), ``functional.gain``.
- **Not used**: ``torch-audiomentations``, ``audiomentations`` and ``pyroomacoustics`` are not installed, and the
  project adds no dependency that is not (``requirements.lock``). audiomentations (numpy, per-sample, needs scipy)
  and torch-audiomentations (GPU batches, its own RNG) would duplicate what lhotse + torchaudio give, and neither
  keys its draws on a cut id. pyroomacoustics (image-source method, shoebox rooms with absorption) gives more
  physical rooms than FRA-RIR; with it installed, :func:`room_impulse_response` is the one place to swap it in.
  MUSAN-style recorded RIRs plug in the same way as recorded noise would (a lhotse ``rir`` Recording given to
  ``ReverbWithImpulseResponse``), not wired up yet.

Coloured noise (:func:`coloured_noise`) is white Gaussian noise shaped in the frequency domain to a ``1/f^a`` power
spectrum: white ``a=0``, pink ``a=1``, brown ``a=2`` (below 20 Hz the spectrum is held flat, and DC removed).
"""

from __future__ import annotations

import logging
import math
import random
import warnings
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Mapping

import numpy as np
import torch
from torch import Tensor

log = logging.getLogger(__name__)

COLOURS = {"white": 0.0, "pink": 1.0, "brown": 2.0}


# ---- configuration --------------------------------------------------------------------------------------------------
@dataclass
class ReverbConfig:
    """Simulated room reverberation. ``prob``: share of cuts reverberated; ``rt60``: range of the rooms' T60 in
    seconds (uniform); ``rooms``: size of the bank of simulated rooms the cuts draw from."""

    prob: float = 0.0
    rt60: tuple[float, float] = (0.3, 0.8)
    rooms: int = 100


@dataclass
class NoiseConfig:
    """Additive noise at a random SNR (dB, uniform in ``snr_db``, signal and noise power over the whole cut).
    ``colours``: generated noise kinds drawn from (uniformly); ``corpus``: a noise corpus (``cuts.jsonl.gz`` or a
    Kaldi data dir of noise recordings, e.g. MUSAN noise), used for ``corpus_prob`` of the noisy cuts when given."""

    prob: float = 0.0
    snr_db: tuple[float, float] = (0.0, 20.0)
    colours: tuple[str, ...] = ("white", "pink", "brown")
    corpus: str | None = None
    corpus_prob: float = 0.5


@dataclass
class BandLimitConfig:
    """Band-limiting: ``prob`` of cuts; of those, ``resample_8k`` go through 8 kHz (telephone band, cut-off 4 kHz),
    the others through a low-pass at a cut-off uniform in ``cutoff_hz`` (rounded to 100 Hz)."""

    prob: float = 0.0
    resample_8k: float = 0.5
    cutoff_hz: tuple[float, float] = (3400.0, 7000.0)


@dataclass
class GainConfig:
    """Gain of ``db`` dB (uniform in the range) for ``prob`` of the cuts (no limiter: samples may exceed 1)."""

    prob: float = 0.0
    db: tuple[float, float] = (-10.0, 6.0)


@dataclass
class WaveAugmentConfig:
    """All waveform transforms; every one off (``prob`` 0) by default. ``start_epoch``: no transform is drawn in the
    epochs before it (0-based), so that an attention model first learns to align on clean audio: with the transforms
    from epoch 0, the AN4 default model's dev WER was still 60 % after 20 epochs (recipes/an4/README.md)."""

    reverb: ReverbConfig = field(default_factory=ReverbConfig)
    noise: NoiseConfig = field(default_factory=NoiseConfig)
    band_limit: BandLimitConfig = field(default_factory=BandLimitConfig)
    gain: GainConfig = field(default_factory=GainConfig)
    start_epoch: int = 0

    @classmethod
    def from_dict(cls, d: Mapping[str, Any] | None) -> "WaveAugmentConfig":
        """From ``data.wave_augment`` (a plain dict). Unknown keys, probabilities outside ``[0, 1]``, empty or
        reversed ranges and unknown noise colours raise ``ValueError``."""
        d = dict(d or {})
        parts = {"reverb": ReverbConfig, "noise": NoiseConfig, "band_limit": BandLimitConfig, "gain": GainConfig}
        start_epoch = d.pop("start_epoch", 0)
        unknown = sorted(set(d) - set(parts))
        if unknown:
            raise ValueError(f"data.wave_augment: unknown key(s) {unknown}; known: {sorted([*parts, 'start_epoch'])}")
        out = {}
        for name, typ in parts.items():
            sub = dict(d.get(name) or {})
            known = {f.name for f in fields(typ)}
            bad = sorted(set(sub) - known)
            if bad:
                raise ValueError(f"data.wave_augment.{name}: unknown key(s) {bad}; known: {sorted(known)}")
            for k, v in sub.items():
                if isinstance(v, (list, tuple)):
                    sub[k] = tuple(v)
            out[name] = typ(**sub)
        cfg = cls(**out, start_epoch=start_epoch)
        cfg.check()
        return cfg

    def check(self) -> None:
        """Raise ``ValueError`` naming the setting when one is out of range (see :meth:`from_dict`)."""
        if isinstance(self.start_epoch, bool) or not isinstance(self.start_epoch, int) or self.start_epoch < 0:
            raise ValueError(f"data.wave_augment.start_epoch must be an integer >= 0, got {self.start_epoch!r}")
        for name in ("reverb", "noise", "band_limit", "gain"):
            p = getattr(self, name).prob
            if not 0.0 <= float(p) <= 1.0:
                raise ValueError(f"data.wave_augment.{name}.prob must be in [0, 1], got {p}")
        for name, rng in (("reverb.rt60", self.reverb.rt60), ("noise.snr_db", self.noise.snr_db), ("band_limit.cutoff_hz", self.band_limit.cutoff_hz), ("gain.db", self.gain.db)):
            if len(rng) != 2 or not (math.isfinite(rng[0]) and math.isfinite(rng[1])) or rng[0] > rng[1]:
                raise ValueError(f"data.wave_augment.{name} must be [low, high] with low <= high, got {list(rng)}")
        if self.reverb.rt60[0] <= 0 or self.reverb.rooms < 1:
            raise ValueError("data.wave_augment.reverb: rt60 must be > 0 and rooms >= 1")
        if self.band_limit.cutoff_hz[0] < 1000:
            raise ValueError(f"data.wave_augment.band_limit.cutoff_hz starts below 1 kHz: {list(self.band_limit.cutoff_hz)}")
        bad = [c for c in self.noise.colours if c not in COLOURS]
        if bad or (not self.noise.colours and not self.noise.corpus):
            raise ValueError(f"data.wave_augment.noise.colours: {list(self.noise.colours)} (known: {sorted(COLOURS)}; at least one unless a corpus is given)")

    @property
    def active(self) -> bool:
        """Whether any transform can be drawn."""
        return any(getattr(self, n).prob > 0 for n in ("reverb", "noise", "band_limit", "gain"))


# ---- the transforms (pure functions of the waveform and their parameters) ----------------------------------------------
def band_limit(wav: Tensor, sample_rate: int, cutoff_hz: float) -> Tensor:
    """``wav (N,)`` low-passed at ``cutoff_hz``: resampled to ``2 * cutoff_hz`` and back to ``sample_rate`` with
    torchaudio's windowed-sinc resampler (its anti-aliasing filter, rolloff 0.99, is the low-pass), same length.
    ``cutoff_hz = 4000`` is the 8 kHz telephone band. A cut-off at or above Nyquist returns ``wav``."""
    from asr.features.torchaudio_ops import resample_filtered

    low = int(round(2 * cutoff_hz))
    if low >= sample_rate:
        return wav
    n = wav.shape[-1]
    down = resample_filtered(wav, sample_rate, low, lowpass_filter_width=16)
    up = resample_filtered(down, low, sample_rate, lowpass_filter_width=16)
    if up.shape[-1] >= n:
        return up[..., :n]
    return torch.nn.functional.pad(up, (0, n - up.shape[-1]))


def coloured_noise(n: int, colour: str, generator: torch.Generator, sample_rate: int = 16000) -> Tensor:
    """``(n,)`` float32 noise with a ``1/f^a`` power spectrum (white 0, pink 1, brown 2), zero mean, unit RMS."""
    a = COLOURS[colour]
    white = torch.randn(n, generator=generator, dtype=torch.float64)
    if a:
        spec = torch.fft.rfft(white)
        f = torch.fft.rfftfreq(n, 1.0 / sample_rate, dtype=torch.float64).clamp_min(20.0)
        spec = spec * f.pow(-a / 2)
        spec[0] = 0
        white = torch.fft.irfft(spec, n)
    white = white - white.mean()
    rms = white.pow(2).mean().sqrt()
    return (white / rms.clamp_min(1e-12)).float()


def add_noise(wav: Tensor, noise: Tensor, snr_db: float) -> Tensor:
    """``wav + s * noise`` with ``s`` such that ``10 log10(sum wav^2 / sum (s noise)^2) = snr_db``
    (torchaudio ``functional.add_noise``). A silent ``wav`` or ``noise`` is returned unchanged."""
    from asr.features.torchaudio_ops import add_noise as ta_add_noise

    if float(wav.pow(2).sum()) <= 0 or float(noise.pow(2).sum()) <= 0:
        return wav
    return ta_add_noise(wav.unsqueeze(0), noise.unsqueeze(0), torch.tensor([float(snr_db)])).squeeze(0)


def apply_gain(wav: Tensor, gain_db: float) -> Tensor:
    """``wav`` scaled by ``gain_db`` dB (torchaudio ``functional.gain``)."""
    from asr.features.torchaudio_ops import gain

    return gain(wav, float(gain_db))


def _room_simulator_cls():
    from lhotse.augmentation.utils import FastRandomRIRGenerator

    class _FixedFirstDraw:
        """A numpy Generator stand-in whose first ``uniform`` draw is ``value`` (FRA-RIR's T60 draw), later ones the
        wrapped generator's."""

        def __init__(self, value: float, rng: np.random.Generator) -> None:
            self.value, self.rng, self.used = float(value), rng, False

        def uniform(self, low=0.0, high=1.0, size=None):
            if not self.used:
                self.used = True
                return np.full(size if size is not None else (), self.value)
            return self.rng.uniform(low, high, size)

    @dataclass
    class _RoomSimulator(FastRandomRIRGenerator):
        """lhotse's FRA-RIR generator with the room's T60 given (``t60``) instead of drawn in ``[0.1, max_T60]``."""

        t60: float = 0.5

        def __post_init__(self):
            super().__post_init__()
            self.max_T60 = max(self.max_T60, self.t60)
            self.room_rng = _FixedFirstDraw(self.t60, self.room_rng)

    return _RoomSimulator


def room_impulse_response(sample_rate: int, rt60: float, seed: int) -> np.ndarray:
    """``(1, L)`` float impulse response of a simulated room with T60 ``rt60`` s (lhotse's FRA-RIR generator),
    the same for the same arguments on any machine (its torch draws run under a forked, seeded torch RNG, on one
    thread). Takes ~0.5 s at 16 kHz (the generator works at 64x the sample rate)."""
    rng = np.random.default_rng(seed)
    room_seed, source_seed, torch_seed = (int(x) for x in rng.integers(0, 2**31 - 1, size=3))
    gen = _room_simulator_cls()(sr=int(sample_rate), t60=float(rt60), room_seed=room_seed, source_seed=source_seed)
    threads = torch.get_num_threads()
    try:  # one thread: the generator's scatter of reflections is not repeatable across thread counts
        torch.set_num_threads(1)
        with torch.random.fork_rng(devices=[]), warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)  # lhotse 1.33: np.ceil of a 0-d tensor (NumPy 2)
            torch.manual_seed(torch_seed)
            return np.asarray(gen(nsource=1), dtype=np.float32)
    finally:
        torch.set_num_threads(threads)


def reverberate(wav: Tensor, rir: np.ndarray, sample_rate: int = 16000) -> Tensor:
    """``wav (N,)`` convolved with ``rir (1, L)`` by lhotse's ``ReverbWithImpulseResponse`` (Kaldi
    ``wav-reverberate``: aligned on the RIR's peak, same length, same power as ``wav``)."""
    from lhotse.augmentation import ReverbWithImpulseResponse

    rir = np.asarray(rir, dtype=np.float32)
    rir = rir / max(float(np.abs(rir).max()), 1e-12) / ReverbWithImpulseResponse.RIR_SCALING_FACTOR  # lhotse rescales by 2^-15
    t = ReverbWithImpulseResponse(rir_generator=lambda nsource=1: rir)
    out = t(wav.numpy().astype(np.float32)[None, :], sample_rate)
    return torch.from_numpy(np.ascontiguousarray(out[0], dtype=np.float32))


# ---- noise corpus -------------------------------------------------------------------------------------------------------
class NoiseCorpus:
    """Recorded noise (e.g. MUSAN ``noise``): a lhotse ``cuts.jsonl.gz`` or a Kaldi data dir of noise recordings
    (transcripts ignored; an empty ``text`` per line is fine). :meth:`sample` gives ``n`` samples of one recording
    from a random offset, repeated when shorter than ``n``."""

    def __init__(self, path: str | Path, sample_rate: int = 16000) -> None:
        from asr.data.lhotse_data import cuts_from_data_dir, load_cuts

        p = Path(path)
        cuts = load_cuts(p, lazy=False) if p.is_file() else cuts_from_data_dir(p)[0]
        self.cuts = sorted(cuts, key=lambda c: c.id)
        if not self.cuts:
            raise ValueError(f"noise corpus {p}: no recordings")
        self.path, self.sample_rate = p, int(sample_rate)

    def __len__(self) -> int:
        return len(self.cuts)

    def sample(self, n: int, rng: random.Random) -> Tensor:
        from asr.data.lhotse_data import cut_waveform

        cut = self.cuts[rng.randrange(len(self.cuts))]
        x = cut_waveform(cut, self.sample_rate)
        if x.shape[0] < n:
            x = x.repeat(n // max(1, x.shape[0]) + 1)
        start = rng.randrange(x.shape[0] - n + 1)
        return x[start:start + n]


# ---- per-cut draws and application --------------------------------------------------------------------------------------
@dataclass(frozen=True)
class AugmentPlan:
    """The transforms drawn for one cut in one epoch, in the order applied: ``("reverb", room)``,
    ``("noise", source, snr_db, noise_seed)`` (source a colour or ``"corpus"``), ``("band_limit", cutoff_hz)``,
    ``("gain", db)``."""

    steps: tuple[tuple, ...]

    def __bool__(self) -> bool:
        return bool(self.steps)


class WaveAugment:
    """Draws (:meth:`plan`) and applies (:meth:`apply`, or call with ``(wav, epoch, cut_id)``) the transforms of
    :class:`WaveAugmentConfig` to ``(N,)`` waveforms at ``sample_rate``, keyed on ``(seed, epoch, cut id)``."""

    def __init__(self, cfg: WaveAugmentConfig | Mapping[str, Any] | None, seed: int = 0, sample_rate: int = 16000) -> None:
        self.cfg = cfg if isinstance(cfg, WaveAugmentConfig) else WaveAugmentConfig.from_dict(cfg)
        self.seed, self.sample_rate = int(seed), int(sample_rate)
        self.corpus = NoiseCorpus(self.cfg.noise.corpus, self.sample_rate) if self.cfg.noise.corpus else None
        self._rooms: dict[int, np.ndarray] = {}

    def plan(self, epoch: int, cut_id: str) -> AugmentPlan:
        """The transforms of ``cut_id`` in ``epoch`` (an empty plan is falsy; always empty before ``start_epoch``)."""
        c = self.cfg
        if epoch < c.start_epoch:
            return AugmentPlan(())
        r = random.Random(f"asr-augment:{self.seed}:{epoch}:{cut_id}")
        # every draw is made whatever the probabilities, so one transform's settings never shift another's draws
        u = [r.random() for _ in range(4)]
        room = r.randrange(c.reverb.rooms)
        use_corpus = r.random() < c.noise.corpus_prob
        colour = r.choice(c.noise.colours) if c.noise.colours else None
        snr = r.uniform(*c.noise.snr_db)
        noise_seed = r.getrandbits(63)
        narrow = r.random() < c.band_limit.resample_8k
        cutoff = 4000.0 if narrow else round(r.uniform(*c.band_limit.cutoff_hz) / 100.0) * 100.0
        gain = r.uniform(*c.gain.db)
        steps: list[tuple] = []
        if u[0] < c.reverb.prob:
            steps.append(("reverb", room))
        if u[1] < c.noise.prob:
            src = "corpus" if self.corpus is not None and (use_corpus or colour is None) else colour
            steps.append(("noise", src, snr, noise_seed))
        if u[2] < c.band_limit.prob:
            steps.append(("band_limit", cutoff))
        if u[3] < c.gain.prob:
            steps.append(("gain", gain))
        return AugmentPlan(tuple(steps))

    def room(self, i: int) -> np.ndarray:
        """Impulse response of room ``i`` of the bank (T60 uniform in ``reverb.rt60``, keyed on ``(seed, i)``)."""
        if i not in self._rooms:
            r = random.Random(f"asr-room:{self.seed}:{i}")
            lo, hi = self.cfg.reverb.rt60
            self._rooms[i] = room_impulse_response(self.sample_rate, r.uniform(lo, hi), r.getrandbits(62))
        return self._rooms[i]

    def apply(self, wav: Tensor, plan: AugmentPlan) -> Tensor:
        """``wav (N,)`` with ``plan``'s transforms applied (same length)."""
        x = wav.float()
        for step in plan.steps:
            kind = step[0]
            if kind == "reverb":
                x = reverberate(x, self.room(step[1]), self.sample_rate)
            elif kind == "noise":
                _, src, snr, noise_seed = step
                if src == "corpus":
                    noise = self.corpus.sample(x.shape[0], random.Random(noise_seed))
                else:
                    noise = coloured_noise(x.shape[0], src, torch.Generator().manual_seed(noise_seed), self.sample_rate)
                x = add_noise(x, noise, snr)
            elif kind == "band_limit":
                x = band_limit(x, self.sample_rate, step[1])
            elif kind == "gain":
                x = apply_gain(x, step[1])
        return x

    def __call__(self, wav: Tensor, epoch: int, cut_id: str) -> Tensor:
        return self.apply(wav, self.plan(epoch, cut_id))


def describe(cfg: WaveAugmentConfig) -> str:
    """One line for the training log."""
    parts = []
    if cfg.reverb.prob:
        parts.append(f"reverb p={cfg.reverb.prob:g} rt60={list(cfg.reverb.rt60)} ({cfg.reverb.rooms} rooms)")
    if cfg.noise.prob:
        src = "+".join(cfg.noise.colours) + (f" / corpus {cfg.noise.corpus}" if cfg.noise.corpus else "")
        parts.append(f"noise p={cfg.noise.prob:g} snr={list(cfg.noise.snr_db)} dB ({src})")
    if cfg.band_limit.prob:
        parts.append(f"band-limit p={cfg.band_limit.prob:g} (8 kHz {cfg.band_limit.resample_8k:g}, else low-pass {list(cfg.band_limit.cutoff_hz)} Hz)")
    if cfg.gain.prob:
        parts.append(f"gain p={cfg.gain.prob:g} {list(cfg.gain.db)} dB")
    if parts and cfg.start_epoch:
        parts.append(f"from epoch {cfg.start_epoch}")
    return "; ".join(parts) or "off"


__all__ = [
    "COLOURS", "AugmentPlan", "BandLimitConfig", "GainConfig", "NoiseConfig", "NoiseCorpus", "ReverbConfig", "WaveAugment", "WaveAugmentConfig",
    "add_noise", "apply_gain", "band_limit", "coloured_noise", "describe", "reverberate", "room_impulse_response",
]
