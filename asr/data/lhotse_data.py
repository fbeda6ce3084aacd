"""The training data layer on lhotse: manifests, fbank storage and dynamic bucketing batches.

Why lhotse (https://github.com/lhotse-speech/lhotse, the data layer of icefall and NeMo): a corpus is a lazily
read ``cuts.jsonl.gz`` manifest, features are computed on the fly or read from chunked, compressed storage
(``LilcomChunkyWriter``), and :class:`lhotse.dataset.DynamicBucketingSampler` forms batches under a duration budget
from a bounded buffer of cuts, knowing rank and world size. Nothing holds a split's features in memory, so a training
process needs the same memory for 1 h as for 960 h (``scripts/bench_data.py``). What stays ours: the Kaldi fbank
(:func:`asr.features.fbank.compute_fbank`, the same front end as decoding, wrapped as a lhotse
:class:`~lhotse.features.base.FeatureExtractor`), audio loading for whole-file cuts
(:func:`asr.features.audio.load_audio`: the same checks, down-mixing and resampling as decoding), token ids, and the
``(seed, epoch)``-keyed draws that make a resumed run repeat an uninterrupted one.

Layout written by :func:`prepare_split` (stage 1, ``asr-prepare``) and :func:`store_features` (stage 2,
``asr-compute-feats``)::

    data/<split>/            Kaldi data dir (wav.scp, text, utt2spk, spk2utt, utt2dur) + cuts.jsonl.gz
    dump/<split>/cuts.jsonl.gz   the same cuts with their stored fbank (data.features=precomputed)
    dump/<split>/feats*.lca      lilcom-compressed chunked fbank
    dump/<train>/cmvn.pt         global CMVN statistics
"""

from __future__ import annotations

import logging
import math
import random
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Iterable, Iterator, Sequence

import numpy as np
import torch
from torch import Tensor

from asr.data.datadir import DEFAULT_MAX_BAD_FRACTION, DataDirError, SkippedEntry, Utterance, check_data_dir, write_data_dir, write_skipped
from asr.features.fbank import FbankOptions, compute_fbank, speed_perturb

log = logging.getLogger(__name__)

CUTS_NAME = "cuts.jsonl.gz"


# ---- the fbank as a lhotse feature extractor -------------------------------------------------------------------
@dataclass
class KaldiFbankConfig:
    """:class:`asr.features.fbank.FbankOptions` as the dataclass lhotse stores with every feature manifest."""

    num_mel_bins: int = 80
    frame_length_ms: float = 25.0
    frame_shift_ms: float = 10.0
    sample_rate: int = 16000
    dither: float = 0.0

    def options(self) -> FbankOptions:
        """The same settings as :class:`asr.features.fbank.FbankOptions`."""
        return FbankOptions(self.num_mel_bins, self.frame_length_ms, self.frame_shift_ms, self.sample_rate, self.dither)


def _register_extractor():
    from lhotse.features.base import FeatureExtractor, register_extractor

    @register_extractor
    class KaldiFbank(FeatureExtractor):
        """lhotse wrapper of :func:`asr.features.fbank.compute_fbank` (Kaldi ``compute-fbank-feats`` with
        ``snip_edges``: ``T = 1 + (N - window) // hop`` frames), so stored and on-the-fly features are the frames
        decoding computes. ``extract`` takes ``(N,)`` or ``(1, N)`` samples at any rate (resampled to the
        configured one) and returns ``(T, F)`` float32."""

        name = "asr-kaldi-fbank"
        config_type = KaldiFbankConfig

        def extract(self, samples: np.ndarray, sampling_rate: int) -> np.ndarray:
            wav = torch.as_tensor(np.asarray(samples, dtype=np.float32))
            if wav.dim() == 2:
                wav = wav.mean(0)
            opts = self.config.options()
            if int(sampling_rate) != opts.sample_rate:
                from asr.features.audio import resample_waveform

                wav = resample_waveform(wav, int(sampling_rate), opts.sample_rate)
            return compute_fbank(wav, opts).numpy()

        @property
        def frame_shift(self) -> float:
            return self.config.frame_shift_ms / 1000.0

        def feature_dim(self, sampling_rate: int) -> int:
            return self.config.num_mel_bins

    return KaldiFbank


_EXTRACTOR_CLS = None


def fbank_extractor(opts: FbankOptions = FbankOptions()):
    """The lhotse :class:`~lhotse.features.base.FeatureExtractor` computing our fbank with ``opts``."""
    global _EXTRACTOR_CLS
    if _EXTRACTOR_CLS is None:
        _EXTRACTOR_CLS = _register_extractor()
    return _EXTRACTOR_CLS(KaldiFbankConfig(**asdict(opts)))


# ---- manifests --------------------------------------------------------------------------------------------------
def _recording(rec_id: str, path: str):
    """A lhotse Recording of one audio file (header read with soundfile; channel 0 declared, the file's channels
    are down-mixed when loaded whole by :func:`cut_waveform`)."""
    import soundfile as sf
    from lhotse import AudioSource, Recording

    from asr.features.audio import check_regular_file

    check_regular_file(path)
    info = sf.info(path)
    if info.frames <= 0 or info.samplerate <= 0:
        raise ValueError(f"no samples ({info.frames} frames at {info.samplerate} Hz)")
    return Recording(
        id=rec_id, sources=[AudioSource(type="file", channels=[0], source=str(path))], sampling_rate=int(info.samplerate),
        num_samples=int(info.frames), duration=info.frames / info.samplerate,
    )


def _read_pairs(path: Path) -> dict[str, str]:
    out: dict[str, str] = {}
    if path.is_file():
        for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
            parts = line.strip().split(maxsplit=1)
            if parts:
                out[parts[0]] = parts[1] if len(parts) > 1 else ""
    return out


def _segment_utterances(d: Path) -> tuple[list[tuple[str, str, float, float, str, str]], list[SkippedEntry]]:
    """``(utt_id, recording path, start, end, text, speaker)`` of a data dir with a Kaldi ``segments`` file
    (``<utt> <recording> <start> <end>``, wav.scp keyed by recording), and the entries left out."""
    wavs, texts, spks = _read_pairs(d / "wav.scp"), _read_pairs(d / "text"), _read_pairs(d / "utt2spk")
    good, skipped = [], []
    for uid, rest in sorted(_read_pairs(d / "segments").items()):
        f = rest.split()
        reason = None
        if len(f) != 3:
            reason = "segments line is not '<utt> <recording> <start> <end>'"
        elif f[0] not in wavs:
            reason = f"recording {f[0]} not in wav.scp"
        elif uid not in texts:
            reason = "not in text"
        else:
            try:
                start, end = float(f[1]), float(f[2])
                if not (math.isfinite(start) and math.isfinite(end) and 0 <= start < end):
                    reason = f"bad segment times {f[1]} {f[2]}"
            except ValueError:
                reason = f"bad segment times {f[1]} {f[2]}"
        if wavs.get(f[0] if f else "", "").rstrip().endswith("|"):
            reason = "Kaldi pipe commands are not run"
        if reason:
            skipped.append(SkippedEntry(uid, str(d / "segments"), reason))
            continue
        path = Path(wavs[f[0]])
        path = path if path.is_absolute() else (d.resolve() / path)
        good.append((uid, str(path), float(f[1]), float(f[2]), " ".join(texts[uid].split()), spks.get(uid, uid)))
    return good, skipped


def cuts_from_data_dir(data_dir: str | Path, max_bad_fraction: float = DEFAULT_MAX_BAD_FRACTION, report: str | Path | None = None):
    """A lhotse CutSet (one cut per utterance, one supervision each) of a Kaldi data dir.

    Utterances are read and validated by :func:`asr.data.datadir.check_data_dir` (or, with a ``segments`` file,
    cut from their recordings); an utterance whose audio cannot be opened (missing, not a regular file, no
    samples, a Kaldi pipe) is skipped too. Every skipped entry is counted in a warning and listed in ``report``
    (TSV ``utt_id  file  reason``) when given.

    Returns
    -------
    cuts : lhotse.CutSet
        In utterance-id order; cut ids are utterance ids.
    skipped : list of SkippedEntry

    Raises
    ------
    asr.data.datadir.DataDirError
        A required file is missing, or more than ``max_bad_fraction`` of the utterances are unusable.
    """
    from lhotse import CutSet, RecordingSet, SupervisionSegment, SupervisionSet

    d = Path(data_dir)
    recordings, sups, skipped = {}, [], []
    if (d / "segments").is_file():
        utts, skipped = _segment_utterances(d)
        n_total = len(utts) + len(skipped)
        for uid, path, start, end, text, spk in utts:
            rec_id = f"rec:{path}"
            try:
                rec = recordings.get(rec_id) or _recording(rec_id, path)
            except Exception as exc:  # noqa: BLE001 - any unreadable file is reported, not fatal
                skipped.append(SkippedEntry(uid, path, f"audio unreadable: {exc}"))
                continue
            if end > rec.duration + 0.01:
                skipped.append(SkippedEntry(uid, str(d / "segments"), f"segment ends at {end} s, after the recording's {rec.duration:.3f} s"))
                continue
            recordings[rec_id] = rec
            sups.append(SupervisionSegment(id=uid, recording_id=rec_id, start=start, duration=round(end - start, 6), channel=0, text=text, speaker=spk))
    else:
        utts, skipped = check_data_dir(d, max_bad_fraction)
        n_total = len(utts) + len(skipped)
        for u in utts:
            if u.wav.rstrip().endswith("|"):
                skipped.append(SkippedEntry(u.utt_id, str(d / "wav.scp"), "Kaldi pipe commands are not run"))
                continue
            try:
                rec = _recording(u.utt_id, u.wav)
            except Exception as exc:  # noqa: BLE001
                skipped.append(SkippedEntry(u.utt_id, u.wav, f"audio unreadable: {exc}"))
                continue
            recordings[rec.id] = rec
            sups.append(SupervisionSegment(id=u.utt_id, recording_id=rec.id, start=0.0, duration=rec.duration, channel=0, text=u.text, speaker=u.speaker))
    _check_fraction(skipped, n_total, max_bad_fraction, d)
    if report is not None and skipped:
        write_skipped(report, skipped)
    cuts = CutSet.from_manifests(recordings=RecordingSet.from_recordings(recordings.values()), supervisions=SupervisionSet.from_segments(sups))
    cuts = cuts.trim_to_supervisions(keep_overlapping=False) if (d / "segments").is_file() else cuts
    return ids_from_supervisions(cuts), skipped


def ids_from_supervisions(cuts):
    """The cuts renamed to their first supervision's id (the utterance id), sorted in byte order as data dirs and
    decode folders are. ``CutSet.from_manifests`` names cuts ``<recording>-<index>``; this undoes that.

    Returns an eager ``lhotse.CutSet``; each cut must have at least one supervision (``IndexError`` otherwise)."""
    from lhotse import CutSet

    out = [c.with_id(c.supervisions[0].id) for c in cuts]
    return CutSet.from_cuts(sorted(out, key=lambda c: c.id.encode("utf-8")))


def _check_fraction(skipped: Sequence[SkippedEntry], n_total: int, max_bad_fraction: float, where: Path) -> None:
    if not skipped:
        return
    first = ", ".join(f"{s.utt_id} ({s.reason})" for s in skipped[:3])
    log.warning("%s: %d of %d utterances skipped, e.g. %s", where, len(skipped), n_total, first)
    if n_total and len(skipped) / n_total > max_bad_fraction:
        raise DataDirError(f"{len(skipped)} of {n_total} utterances unusable (more than max_bad_fraction={max_bad_fraction}), e.g. {first}", where)


def validate_cuts(cuts, where: str | Path, max_bad_fraction: float = DEFAULT_MAX_BAD_FRACTION):
    """Cuts of a lhotse manifest that training and decoding can use, and the entries left out.

    A cut is skipped (with its id and the reason) when it has no recording, no supervision, a duration that is
    not a positive finite number, or an audio file that does not exist. Supervision texts are normalised to
    single spaces (an absent text becomes ``""``, counted by the training set's warning like any empty
    transcript).

    Raises
    ------
    asr.data.datadir.DataDirError
        More than ``max_bad_fraction`` of the cuts are unusable, or there are none.
    """
    from lhotse import CutSet

    good, skipped, n = [], [], 0
    for c in cuts:
        n += 1
        reason = None
        if not c.has_recording:
            reason = "no recording"
        elif not c.supervisions:
            reason = "no supervision"
        elif not (math.isfinite(c.duration) and c.duration > 0):
            reason = f"duration {c.duration}"
        else:
            for s in c.recording.sources:
                if s.type == "file" and not Path(s.source).is_file():
                    reason = f"audio file not found: {s.source}"
                elif s.type == "command":
                    reason = "command audio sources are not run"
        if reason:
            skipped.append(SkippedEntry(c.id, str(where), reason))
            continue
        for s in c.supervisions:
            s.text = " ".join((s.text or "").split())
        good.append(c)
    if not good:
        raise DataDirError(f"no usable cut among {n}", where)
    _check_fraction(skipped, n, max_bad_fraction, Path(where))
    return CutSet.from_cuts(good), skipped


def utterances_of(cuts) -> list[Utterance]:
    """The Kaldi data dir view of whole-recording cuts (one single-file recording each): what ``asr-decode``,
    ``asr-tokenizer`` and ``asr-inspect`` read. Cuts that are segments of a recording are left out (a data dir
    without ``segments`` cannot hold them); their count is logged."""
    utts, partial = [], 0
    for c in cuts:
        rec = c.recording
        whole = len(rec.sources) == 1 and rec.sources[0].type == "file" and c.start == 0 and abs(c.duration - rec.duration) < 1e-3
        if not whole:
            partial += 1
            continue
        s = c.supervisions[0]
        text = " ".join(" ".join(x.text or "" for x in c.supervisions).split())
        utts.append(Utterance(c.id, rec.sources[0].source, text, s.speaker or c.id, round(c.duration, 3)))
    if partial:
        log.warning("%d cut(s) are segments of a longer recording: in cuts.jsonl.gz only, not in the Kaldi data dir", partial)
    return utts


def write_split(cuts, out_dir: str | Path, skipped: Sequence[SkippedEntry] = ()) -> Path:
    """Write ``<out_dir>/cuts.jsonl.gz`` and the Kaldi data dir of ``cuts`` (and ``bad_utts.tsv`` for ``skipped``)."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    tmp = out / f".{CUTS_NAME}.tmp.jsonl.gz"
    cuts.to_file(tmp)
    tmp.replace(out / CUTS_NAME)
    utts = utterances_of(cuts)
    if utts:
        write_data_dir(utts, out)
    if skipped:
        write_skipped(out / "bad_utts.tsv", skipped)
    return out / CUTS_NAME


def load_cuts(path: str | Path, lazy: bool = True):
    """A CutSet read from a ``cuts.jsonl.gz`` (lazily by default: memory does not grow with the manifest).

    Raises
    ------
    FileNotFoundError
        No such manifest (the message names the recipe stage that writes it).
    """
    from lhotse import CutSet

    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"cut manifest not found: {p} (written by the recipe's stage 1, asr-prepare, or stage 2, asr-compute-feats)")
    return CutSet.from_jsonl_lazy(p) if lazy else CutSet.from_file(p)


# ---- audio and features of one cut -------------------------------------------------------------------------------
def cut_waveform(cut, sample_rate: int) -> Tensor:
    """``(N,)`` float32 waveform of a cut at ``sample_rate``.

    A cut covering a whole single-file recording is read by :func:`asr.features.audio.load_audio` (the checks,
    down-mixing and resampling decoding uses); a segment of a recording by lhotse (channels averaged).

    Raises
    ------
    asr.features.audio.AudioError or any lhotse/soundfile error naming the file.
    """
    from asr.features.audio import load_audio, resample_waveform

    rec = cut.recording
    if len(rec.sources) == 1 and rec.sources[0].type == "file" and cut.start == 0 and abs(cut.duration - rec.duration) < 1e-3:
        return load_audio(rec.sources[0].source, sample_rate)
    samples = torch.as_tensor(np.asarray(cut.load_audio(), dtype=np.float32))
    wav = samples.mean(0) if samples.dim() == 2 else samples
    return resample_waveform(wav, int(rec.sampling_rate), sample_rate) if int(rec.sampling_rate) != sample_rate else wav


def cut_fbank(cut, opts: FbankOptions, speed: float = 1.0, augment=None) -> Tensor:
    """``(T, F)`` fbank of a cut: its stored features when it has them (``speed`` 1, no ``augment``), else computed
    from its audio (speed-perturbed by ``speed`` first, :func:`asr.features.fbank.speed_perturb`, then passed
    through ``augment``, a ``(N,) -> (N,)`` waveform callable such as a bound :class:`asr.data.augment.WaveAugment`
    plan)."""
    if augment is not None:
        return compute_fbank(augment(speed_perturb(cut_waveform(cut, opts.sample_rate), speed, opts.sample_rate)), opts)
    if speed == 1.0 and cut.has_features:
        f = cut.features
        if abs(f.start - cut.start) < 1e-3 and abs(f.duration - cut.duration) < 1e-3:
            return torch.from_numpy(np.asarray(f.load(), dtype=np.float32))  # stored per cut: exactly its frames
        return torch.from_numpy(np.asarray(cut.load_features(), dtype=np.float32))
    return compute_fbank(speed_perturb(cut_waveform(cut, opts.sample_rate), speed, opts.sample_rate), opts)


# ---- feature storage and CMVN (stage 2) --------------------------------------------------------------------------
class CMVNAccumulator:
    """Streaming sums for global CMVN (float64): ``add`` one ``(T, F)`` matrix at a time, ``stats()`` gives what
    :func:`asr.features.fbank.compute_cmvn_stats` gives for all of them at once."""

    def __init__(self) -> None:
        self.s: Tensor | None = None
        self.ss: Tensor | None = None
        self.n = 0

    def add(self, x: Tensor) -> None:
        """Accumulate one ``(T, F)`` fbank matrix (frames x bins)."""
        x = x.double()
        if self.s is None:
            self.s, self.ss = torch.zeros(x.shape[-1], dtype=torch.float64), torch.zeros(x.shape[-1], dtype=torch.float64)
        self.s += x.sum(0)
        self.ss += (x * x).sum(0)
        self.n += x.shape[0]

    def merge(self, other: "CMVNAccumulator") -> None:
        """Add the sums of ``other`` (e.g. another ``store_features`` job's) to these."""
        if other.s is None:
            return
        if self.s is None:
            self.s, self.ss, self.n = other.s.clone(), other.ss.clone(), other.n
            return
        self.s += other.s
        self.ss += other.ss
        self.n += other.n

    def stats(self) -> dict[str, Tensor]:
        """``{"mean": (F,), "std": (F,), "count": ()}`` as :func:`asr.features.fbank.compute_cmvn_stats` returns.
        Raises ``ValueError`` when nothing was added."""
        if not self.n:
            raise ValueError("CMVN statistics need at least one frame")
        mean = self.s / self.n
        var = (self.ss / self.n - mean * mean).clamp_min(1e-10)
        return {"mean": mean.float(), "std": var.sqrt().float(), "count": torch.tensor(self.n)}


def _store_shard(args: tuple) -> tuple[str, CMVNAccumulator, list[SkippedEntry], int]:
    """Worker of :func:`store_features`: every ``num_jobs``-th cut from ``job``, stored in its own files."""
    cuts_path, out_dir, opts, job, num_jobs, store, threads = args
    from lhotse import CutSet, Features
    from lhotse.features.io import LilcomChunkyWriter

    if threads:
        torch.set_num_threads(threads)
    out = Path(out_dir)
    acc, skipped, n = CMVNAccumulator(), [], 0
    shard = out / f".cuts.{job}.jsonl.gz"
    extractor = fbank_extractor(opts)
    writer = LilcomChunkyWriter(out / f"feats.{job}.lca") if store else None
    try:
        with CutSet.open_writer(shard) as cut_writer:
            for i, cut in enumerate(CutSet.from_jsonl_lazy(cuts_path)):
                if i % num_jobs != job:
                    continue
                try:
                    x = cut_fbank(cut.drop_features(), opts)
                except Exception as exc:  # noqa: BLE001 - one bad file never stops the dump
                    skipped.append(SkippedEntry(cut.id, cut.recording.sources[0].source if cut.has_recording else "", f"fbank failed: {exc}"))
                    continue
                acc.add(x)
                n += 1
                if writer is not None:
                    key = writer.write(cut.id, x.numpy())
                    cut.features = Features(
                        type=extractor.name, num_frames=int(x.shape[0]), num_features=int(x.shape[1]), frame_shift=opts.frame_shift_s,
                        sampling_rate=opts.sample_rate, start=cut.start, duration=cut.duration, storage_type=writer.name,
                        storage_path=str(writer.storage_path), storage_key=key, recording_id=cut.recording_id, channels=0,
                    )
                cut_writer.write(cut)
    finally:
        if writer is not None:
            writer.close()
    return str(shard), acc, skipped, n


def store_features(cuts_path: str | Path, out_dir: str | Path, opts: FbankOptions = FbankOptions(), num_jobs: int = 1, store: bool = True, progress: bool = True) -> tuple[CMVNAccumulator, list[SkippedEntry]]:
    """Compute the fbank of every cut of ``cuts_path``: stored (``store``) in ``<out_dir>/feats.<job>.lca``
    (lilcom-compressed chunks) with ``<out_dir>/cuts.jsonl.gz`` referencing them, and summed for CMVN.

    Streams: cuts are read lazily, ``num_jobs`` processes take every ``num_jobs``-th cut each, and memory does not
    grow with the corpus. A cut whose audio cannot be read is left out of the output manifest, counted and
    listed in ``<out_dir>/bad_cuts.tsv``. With ``store=False`` (``data.features=on_the_fly``) only the CMVN sums
    are computed.

    Returns
    -------
    acc : CMVNAccumulator
    skipped : list of SkippedEntry
    """
    from lhotse import CutSet

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    num_jobs = max(1, int(num_jobs))
    jobs = [(str(cuts_path), str(out), opts, j, num_jobs, store, 1 if num_jobs > 1 else 0) for j in range(num_jobs)]
    if num_jobs == 1:
        results = [_store_shard(jobs[0])]
    else:
        import multiprocessing as mp

        with mp.get_context("spawn").Pool(num_jobs) as pool:
            results = pool.map(_store_shard, jobs)
    acc, skipped, n = CMVNAccumulator(), [], 0
    for _, a, s, k in results:
        acc.merge(a)
        skipped += s
        n += k
    if store:
        tmp = out / f".{CUTS_NAME}.tmp.jsonl.gz"
        with CutSet.open_writer(tmp) as w:
            for shard, *_ in results:
                for c in CutSet.from_jsonl_lazy(shard):
                    w.write(c)
        tmp.replace(out / CUTS_NAME)
    for shard, *_ in results:
        Path(shard).unlink(missing_ok=True)
    if skipped:
        write_skipped(out / "bad_cuts.tsv", skipped)
        log.warning("%s: %d cut(s) left out (fbank failed), listed in %s", cuts_path, len(skipped), out / "bad_cuts.tsv")
    log.info("%s: fbank of %d cuts%s", cuts_path, n, f" -> {out / CUTS_NAME}" if store else " (CMVN only)")
    return acc, skipped


# ---- training batches ----------------------------------------------------------------------------------------------
def speed_factor(factors: Sequence[float], seed: int, epoch: int, cut_id: str) -> float:
    """The speed factor of ``cut_id`` in ``epoch``: uniform over ``factors``, keyed on ``(seed, epoch, cut id)``
    only (no global RNG), so a resumed run draws what an uninterrupted one does, in any DataLoader worker."""
    if len(factors) < 2:
        return float(factors[0]) if factors else 1.0
    return float(factors[random.Random(f"asr-speed:{seed}:{epoch}:{cut_id}").randrange(len(factors))])


class EpochSampler(torch.utils.data.Sampler):
    """A lhotse sampler whose batches come with their epoch: yields ``(epoch, CutSet)``.

    The dataset keys its per-cut draws (speed perturbation) on the epoch, which DataLoader workers cannot see
    otherwise. ``set_epoch`` (called by Lightning at every epoch start, and by :class:`asr.lightning.data.ASRDataModule`
    when a loader is built for a resumed run) reaches the wrapped sampler, whose shuffling is seeded by
    ``seed + epoch``. ``len()`` is the number of batches of epoch 0, counted once by a dry run over the manifest
    (other epochs may differ by a few batches); Lightning needs it for the LR schedule's length.
    """

    def __init__(self, sampler, count: bool = True) -> None:
        self.sampler = sampler
        self.epoch = 0
        self._len: int | None = None
        if count:
            self._len = sum(1 for _ in self._dry_run())

    def _dry_run(self):
        import copy

        s = copy.deepcopy(self.sampler)
        s.set_epoch(0)
        return iter(s)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)
        self.sampler.set_epoch(int(epoch))

    def __iter__(self) -> Iterator[tuple[int, Any]]:
        epoch = self.epoch
        self.sampler.set_epoch(epoch)
        for cuts in self.sampler:
            yield epoch, cuts

    def __len__(self) -> int:
        if self._len is None:
            raise TypeError("this sampler was built without counting its batches")
        return self._len

    def state_dict(self) -> dict[str, Any]:
        return {"epoch": self.epoch, "sampler": self.sampler.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.epoch = int(state["epoch"])
        self.sampler.load_state_dict(state["sampler"])


class CutBatchDataset(torch.utils.data.Dataset):
    """Map ``(epoch, CutSet)`` from :class:`EpochSampler` to a padded :class:`asr.data.dataset.Batch`.

    Features: the stored fbank of each cut, or computed from its audio (on the fly, and always for a
    speed-perturbed or waveform-augmented cut: perturbation and augmentation are applied to the audio, per cut and
    epoch, never stored). Tokens:
    ``tokenizer.encode`` of the supervision text(s). A cut whose audio or features cannot be loaded is left out of
    its batch with a warning naming the cut and the reason (``self.failed`` counts them in this process); a batch
    left empty gives ``None`` (the training step skips it).

    Parameters
    ----------
    tokenizer : asr.text.tokenizer.Tokenizer
    fbank : FbankOptions
    speeds : sequence of float
        Speed perturbation factors drawn per cut and epoch (:func:`speed_factor`); ``()`` = off.
    seed : int
    wave_augment : dict or asr.data.augment.WaveAugmentConfig, optional
        Waveform augmentation (reverberation, noise, band-limiting, gain; ``data.wave_augment``), drawn per
        ``(seed, epoch, cut)`` by :class:`asr.data.augment.WaveAugment` and applied after speed perturbation. A cut
        with any transform drawn gets its fbank computed from the augmented audio, whether or not it has stored
        features (as a speed-perturbed cut does). None, empty or all probabilities 0 = off.
    """

    def __init__(self, tokenizer, fbank: FbankOptions = FbankOptions(), speeds: Sequence[float] = (), seed: int = 0, wave_augment=None) -> None:
        self.tokenizer, self.fbank, self.speeds, self.seed = tokenizer, fbank, tuple(float(s) for s in speeds), int(seed)
        self.failed = 0
        self.wave_augment = None
        if wave_augment:
            from asr.data.augment import WaveAugment, WaveAugmentConfig, describe

            cfg = wave_augment if isinstance(wave_augment, WaveAugmentConfig) else WaveAugmentConfig.from_dict(wave_augment)
            if cfg.active:
                self.wave_augment = WaveAugment(cfg, self.seed, fbank.sample_rate)
                log.info("waveform augmentation: %s", describe(cfg))

    def _augment(self, epoch: int, cut_id: str):
        """The waveform callable of ``cut_id``'s draws in ``epoch``, or None (nothing drawn: stored fbank usable)."""
        if self.wave_augment is None:
            return None
        plan = self.wave_augment.plan(epoch, cut_id)
        if not plan:
            return None
        aug = self.wave_augment
        return lambda wav: aug.apply(wav, plan)

    def __getitem__(self, item):
        from asr.data.dataset import make_collate

        epoch, cuts = item if isinstance(item, tuple) else (0, item)
        rows = []
        for cut in cuts:
            try:
                x = cut_fbank(cut, self.fbank, speed_factor(self.speeds, self.seed, epoch, cut.id), self._augment(epoch, cut.id))
                if not torch.isfinite(x).all():
                    raise ValueError("non-finite fbank values")
            except Exception as exc:  # noqa: BLE001 - a bad file costs its utterance, never the run
                self.failed += 1
                src = cut.recording.sources[0].source if cut.has_recording else "?"
                log.warning("skipped utterance %s (%s): %s", cut.id, src, exc)
                continue
            text = " ".join(" ".join(s.text or "" for s in cut.supervisions).split())
            rows.append((cut.id, x, self.tokenizer.encode(text), text))
        if not rows:
            return None
        rows.sort(key=lambda r: -r[1].shape[0])
        return make_collate(self.tokenizer.pad_id)(rows)


def make_sampler(cuts, batch_size: int = 0, max_duration: float = 0.0, shuffle: bool = True, seed: int = 0, num_buckets: int = 10,
                 world_size: int | None = None, rank: int | None = None, buffer_size: int = 20000, count: bool = True) -> EpochSampler:
    """lhotse's :class:`~lhotse.dataset.DynamicBucketingSampler` over ``cuts`` (duration buckets, a new batch
    composition every epoch, each rank its own batches), wrapped in :class:`EpochSampler`.

    ``batch_size`` caps cuts per batch (``max_cuts``; 0 = none), ``max_duration`` the seconds of audio per batch
    (0 = none); at least one must be set. ``world_size``/``rank`` default to torch.distributed's. ``num_buckets`` is
    capped at the number of cuts; 1 gives lhotse's ``DynamicCutSampler`` (no buckets: batches in shuffled order).

    Raises
    ------
    ValueError
        Neither ``batch_size`` nor ``max_duration`` is positive.
    """
    from lhotse.dataset import DynamicBucketingSampler, DynamicCutSampler

    if not (batch_size and batch_size > 0) and not (max_duration and max_duration > 0):
        raise ValueError(f"a batch needs a size: data.batch_size ({batch_size}) or data.max_duration ({max_duration} s) must be > 0")
    n_cuts = sum(1 for _ in cuts)  # lhotse needs num_buckets <= cuts (a pass over the manifest, not the audio)
    if not n_cuts:
        raise ValueError("no cuts to sample batches from")
    num_buckets = max(1, min(int(num_buckets), n_cuts))
    limits = {"max_duration": float(max_duration) if max_duration and max_duration > 0 else None, "max_cuts": int(batch_size) if batch_size and batch_size > 0 else None}
    if num_buckets == 1:  # one bucket: lhotse's bucketing sampler needs two or more; the plain dynamic sampler is that case
        s = DynamicCutSampler(cuts, **limits, shuffle=shuffle, seed=seed, world_size=world_size, rank=rank, drop_last=False)
    else:
        s = DynamicBucketingSampler(
            cuts, **limits, shuffle=shuffle, seed=seed, num_buckets=num_buckets, world_size=world_size, rank=rank, buffer_size=buffer_size,
            num_cuts_for_bins_estimate=min(buffer_size, 10000), drop_last=False,
        )
    return EpochSampler(s, count=count)
