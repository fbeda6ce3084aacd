"""In-memory datasets of Kaldi data dirs: what decoding, plotting and the benchmarks use.

Training reads lhotse cut manifests instead (:mod:`asr.data.lhotse_data`, :mod:`asr.lightning.data`): a split's fbank
dump (``dump/<split>/feats.pt``, :func:`dump_features`) is held in memory whole, which is fine for a test set and
cannot scale to a training corpus (LibriSpeech 960 h: ~110 GB of fbank per copy, per DDP rank).
:class:`LengthBucketBatchSampler` (length-sorted batches under a padded-frame budget, rank-aware) is kept for
``scripts/bench_data.py``'s comparison of the two paths and for tools that batch in-memory features; lhotse's
``DynamicBucketingSampler`` replaced it in training: new batch compositions every epoch, a bounded buffer instead of a
sort of the whole split, and (measured by ``scripts/compare_samplers.py`` on AN4 train_nodev at 200 s per batch)
padding within 0.5 points of ours.
"""

from __future__ import annotations

import logging
import math
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Sequence

import torch
from torch import Tensor
from torch.utils.data import Dataset, Sampler

from asr.data.datadir import DEFAULT_MAX_BAD_FRACTION, DataDirError, Utterance, check_data_dir, read_data_dir, write_skipped
from asr.features.audio import load_audio
from asr.features.fbank import FbankOptions, compute_fbank, speed_perturb
from asr.text.tokenizer import Tokenizer

log = logging.getLogger(__name__)


@dataclass
class Batch:
    """A padded minibatch.

    Attributes
    ----------
    feats : ``(B, T, F)`` float32 fbank, zero padded
    feat_lens : ``(B,)`` int64 frames
    tokens : ``(B, U)`` int64 token ids, padded with the tokenizer's ``pad_id``
    token_lens : ``(B,)`` int64
    ids : utterance ids; texts : reference transcripts
    """

    feats: Tensor
    feat_lens: Tensor
    tokens: Tensor
    token_lens: Tensor
    ids: list[str]
    texts: list[str]

    def to(self, device: torch.device | str) -> "Batch":
        """The batch with its tensors on ``device`` (ids and texts unchanged)."""
        return Batch(self.feats.to(device), self.feat_lens.to(device), self.tokens.to(device), self.token_lens.to(device), self.ids, self.texts)


def dump_features(utts: Sequence[Utterance], out_path: str | Path, opts: FbankOptions = FbankOptions(), speed: float = 1.0) -> dict[str, Tensor]:
    """Compute fbank for every utterance and save ``{utt_id: (T, F) float32}`` atomically to ``out_path``.

    ``speed`` != 1 applies :func:`asr.features.fbank.speed_perturb` to the audio first.

    Raises ``asr.features.audio.AudioError`` naming the file if an audio file cannot be read (data
    preparation has already reported and removed unusable files).
    """
    from tqdm import tqdm

    from asr.utils.io import atomic_torch_save

    feats = {}
    desc = f"fbank {Path(out_path).parent.name}" + (f" speed {speed}" if speed != 1.0 else "")
    for u in tqdm(utts, desc=desc, unit="utt"):
        wav = speed_perturb(load_audio(u.wav, opts.sample_rate), speed, opts.sample_rate)
        feats[u.utt_id] = compute_fbank(wav, opts)
    atomic_torch_save(feats, out_path)
    return feats


class ASRDataset(Dataset):
    """Utterances of a data dir with their fbank (from a dump, or computed from audio on access) and tokens.

    Parameters
    ----------
    utts : sequence of Utterance
    tokenizer : Tokenizer
    feats : dict, optional
        ``{utt_id: (T, F)}`` precomputed fbank (``dump_features``); missing ids are computed from audio.
    fbank : FbankOptions
    perturbed : list of dict, optional
        Speed-perturbed versions of ``feats`` (same keys). Each access then picks uniformly among
        ``feats`` and these (on-the-fly speed perturbation from precomputed features; training only).
    seed : int
        Seed of the variant draws. The draw for utterance ``i`` in epoch ``e`` depends on ``(seed, e, i)``
        only (no global RNG), so a run resumed at an epoch boundary draws exactly what an uninterrupted run
        draws, in any DataLoader worker. The epoch comes with the index: ``ds[(i, e)]`` (what
        :class:`LengthBucketBatchSampler` yields when shuffling); a plain ``ds[i]`` uses epoch 0.
    """

    def __init__(self, utts: Sequence[Utterance], tokenizer: Tokenizer, feats: dict[str, Tensor] | None = None, fbank: FbankOptions = FbankOptions(), perturbed: Sequence[dict[str, Tensor]] = (), seed: int = 0) -> None:
        self.seed = seed
        self.utts = list(utts)
        self.tokenizer = tokenizer
        self.feats = feats or {}
        self.variants = [self.feats, *perturbed] if perturbed else []
        self.fbank = fbank
        self.tokens = [tokenizer.encode(u.text) for u in self.utts]
        n_unk = sum(t.count(tokenizer.unk_id) for t in self.tokens)
        if n_unk:
            log.warning("%d tokens mapped to <unk> in %d utterances", n_unk, len(self.utts))

    def __len__(self) -> int:
        return len(self.utts)

    def num_frames(self, i: int) -> int:
        """Frames of utterance ``i`` (from the dump, else estimated from its duration)."""
        u = self.utts[i]
        if u.utt_id in self.feats:
            return int(self.feats[u.utt_id].shape[0])
        return max(1, int(u.duration / self.fbank.frame_shift_s))

    def variant(self, i: int, epoch: int = 0) -> int:
        """Which of ``feats`` (0) and the perturbed dumps (1, 2, ...) utterance ``i`` uses in ``epoch``."""
        if len(self.variants) < 2:
            return 0
        return random.Random(f"asr-variant:{self.seed}:{epoch}:{i}").randrange(len(self.variants))

    def __getitem__(self, item: int | tuple[int, int]) -> tuple[str, Tensor, list[int], str]:
        i, epoch = item if isinstance(item, tuple) else (item, 0)
        u = self.utts[i]
        x = self.variants[self.variant(i, epoch)].get(u.utt_id) if self.variants else self.feats.get(u.utt_id)
        if x is None:
            x = compute_fbank(load_audio(u.wav, self.fbank.sample_rate), self.fbank)
        return u.utt_id, x, self.tokens[i], u.text


def make_collate(pad_id: int):
    """Collate function padding features with 0 and tokens with ``pad_id``."""

    def collate(items: list[tuple[str, Tensor, list[int], str]]) -> Batch:
        ids, xs, ys, texts = zip(*items)
        feat_lens = torch.tensor([x.shape[0] for x in xs], dtype=torch.long)
        feats = torch.nn.utils.rnn.pad_sequence(list(xs), batch_first=True)
        token_lens = torch.tensor([len(y) for y in ys], dtype=torch.long)
        tokens = torch.full((len(ys), max(1, int(token_lens.max()))), pad_id, dtype=torch.long)
        for i, y in enumerate(ys):
            tokens[i, : len(y)] = torch.tensor(y, dtype=torch.long)
        return Batch(feats, feat_lens, tokens, token_lens, list(ids), list(texts))

    return collate


class LengthBucketBatchSampler(Sampler[list[int]]):
    """Batches of utterances of similar length, at most ``max_frames`` padded frames or ``batch_size`` each.

    Utterances are sorted by length and cut into batches (little padding); with ``shuffle`` the batch order is
    reshuffled every epoch from ``seed + epoch``, and every index is yielded as ``(index, epoch)`` so that
    :class:`ASRDataset` keys its per-epoch draws on the epoch even inside DataLoader workers. Lightning only
    calls ``set_epoch`` on a *sampler*, never on a batch sampler: the training module calls it at every epoch
    start (``ASRLightningModule.on_train_epoch_start``); the order is fixed lazily, at the first batch. Distributed: every rank gets the same number of batches
    (the list is padded by repeating batches), rank ``r`` taking batches ``r, r + W, ...``, so the effective
    batch is ``world_size x`` one rank's batch.

    Parameters
    ----------
    lengths : sequence of int
        Frames per utterance.
    batch_size : int
        Maximum utterances per batch.
    max_frames : int
        Maximum of ``B * T_max`` per batch (0 = no limit); a longer single utterance gets its own batch.
    length_jitter : float
        0 (default): the same length-sorted batches every epoch, in a new order. ``j > 0`` (with ``shuffle``):
        every epoch sorts by ``length x (1 + u)``, ``u ~ U(-j, j)`` drawn from ``(seed, epoch)``, before cutting,
        so neighbours of similar length meet in new batch compositions each epoch (lhotse's bucketing does this
        by shuffling inside buckets); the budget is still checked on the true lengths. The number of batches can
        then differ by a few from ``len()`` (the unjittered count).
    sortagrad : int
        With ``shuffle``: the first ``sortagrad`` epochs (0-based epochs ``< sortagrad``) go through the batches
        shortest first, unshuffled and unjittered; later epochs as above. SortaGrad, Amodei et al. 2016
        (Deep Speech 2, arXiv 1512.02595, §3.1), also ESPnet's ``--sortagrad``: short utterances first is a
        curriculum for the alignment. 0 (default) = off.

    Raises
    ------
    ValueError
        ``batch_size < 1``, ``length_jitter`` outside ``[0, 1)`` or ``sortagrad < 0``.
    """

    def __init__(self, lengths: Sequence[int], batch_size: int, max_frames: int = 0, shuffle: bool = True, seed: int = 0, num_replicas: int | None = None, rank: int | None = None, length_jitter: float = 0.0, sortagrad: int = 0) -> None:
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        if int(sortagrad) < 0:
            raise ValueError(f"sortagrad (epochs shortest-first) must be >= 0, got {sortagrad}")
        self.sortagrad = int(sortagrad)
        if not 0.0 <= float(length_jitter) < 1.0:
            raise ValueError(f"length_jitter must be in [0, 1), got {length_jitter}")
        if num_replicas is None or rank is None:
            dist = torch.distributed.is_available() and torch.distributed.is_initialized()
            num_replicas = torch.distributed.get_world_size() if dist else 1
            rank = torch.distributed.get_rank() if dist else 0
        self.num_replicas, self.rank = num_replicas, rank
        self.shuffle, self.seed, self.epoch = shuffle, seed, 0
        self.lengths, self.batch_size, self.max_frames, self.length_jitter = list(lengths), batch_size, max_frames, float(length_jitter)
        self.batches = self._cut(sorted(range(len(self.lengths)), key=lambda i: (self.lengths[i], i)))

    def _cut(self, order: Sequence[int]) -> list[list[int]]:
        """Consecutive runs of ``order`` within ``batch_size`` utterances and ``max_frames`` padded frames."""
        batches: list[list[int]] = []
        cur: list[int] = []
        t_max = 0
        for i in order:
            t = max(t_max, self.lengths[i])
            if cur and (len(cur) + 1 > self.batch_size or (self.max_frames and (len(cur) + 1) * t > self.max_frames)):
                batches.append(cur)
                cur, t = [], self.lengths[i]
            cur.append(i)
            t_max = t
        if cur:
            batches.append(cur)
        return batches

    def set_epoch(self, epoch: int) -> None:
        """Called by the training loop so each epoch gets another order."""
        self.epoch = epoch

    def __iter__(self) -> Iterator[list[int]] | Iterator[list[tuple[int, int]]]:
        # A generator: nothing is drawn until the first batch is requested, which is after the epoch start
        # (Lightning creates the iterator before on_train_epoch_start when a run starts or resumes).
        epoch = self.epoch
        batches = list(self.batches)
        reorder = self.shuffle and epoch >= self.sortagrad  # SortaGrad epochs keep the shortest-first order
        if reorder and self.length_jitter > 0:
            rng = random.Random(f"asr-length-jitter:{self.seed}:{epoch}")
            keys = [n * (1.0 + rng.uniform(-self.length_jitter, self.length_jitter)) for n in self.lengths]
            batches = self._cut(sorted(range(len(keys)), key=lambda i: (keys[i], i)))
        if reorder:
            random.Random(self.seed + epoch).shuffle(batches)
        per_rank = math.ceil(len(batches) / self.num_replicas)
        batches += batches[: per_rank * self.num_replicas - len(batches)]
        for b in batches[self.rank :: self.num_replicas]:
            yield [(i, epoch) for i in b] if self.shuffle else list(b)

    def __len__(self) -> int:
        return math.ceil(len(self.batches) / self.num_replicas)


def report_text_problems(utts: Sequence[Utterance], tokenizer: Tokenizer, where: str | Path = "") -> dict[str, int]:
    """Warn about transcripts the tokenizer cannot represent fully, and about empty ones.

    Characters the tokenizer has never seen are mapped to ``<unk>`` by :meth:`Tokenizer.encode`; here they
    are counted and a warning names the characters and a few utterance ids. Empty transcripts are kept
    (an utterance to decode needs none; in training the target is just ``<eos>``) and counted too.

    Returns
    -------
    dict
        ``unk_utts`` (utterances with an unknown character), ``unk_chars`` (such characters, with
        repeats) and ``empty`` (utterances with an empty transcript).
    """
    unk_ids, n_chars, seen, empty = [], 0, {}, []
    for u in utts:
        if not u.text.strip():
            empty.append(u.utt_id)
            continue
        bad = tokenizer.unknown_chars(u.text)
        if bad:
            unk_ids.append(u.utt_id)
            n_chars += len(bad)
            for c in bad:
                seen[c] = seen.get(c, 0) + 1
    prefix = f"{where}: " if str(where) else ""
    if unk_ids:
        chars = ", ".join(f"{c!r} x{n}" for c, n in sorted(seen.items(), key=lambda kv: -kv[1])[:10])
        log.warning(
            "%s%d of %d utterances have %d character(s) unknown to the tokenizer, mapped to <unk> (%s), e.g. %s",
            prefix, len(unk_ids), len(utts), n_chars, chars, ", ".join(unk_ids[:5]),
        )
    if empty:
        log.warning("%s%d utterance(s) with an empty transcript, e.g. %s", prefix, len(empty), ", ".join(empty[:5]))
    return {"unk_utts": len(unk_ids), "unk_chars": n_chars, "empty": len(empty)}


def load_split(data_dir: str | Path, dump_dir: str | Path | None, tokenizer: Tokenizer, fbank: FbankOptions = FbankOptions(), limit: int = 0, speeds: Sequence[float] = (), max_bad_fraction: float = DEFAULT_MAX_BAD_FRACTION, report: str | Path | None = None) -> ASRDataset:
    """Dataset of a data dir, with features from ``<dump_dir>/feats.pt`` when it exists.

    ``limit`` > 0 keeps only the first ``limit`` utterances (debugging and smoke runs). ``speeds``: speed
    perturbation factors whose dumps (``feats_sp<factor>.pt``, written by ``asr-dump-feats speeds=...``) are
    mixed in (1.0 is the plain dump). Bad entries of the data dir are skipped and reported as
    :func:`asr.data.datadir.read_data_dir` does (``max_bad_fraction``, ``report``); unknown characters and
    empty transcripts are counted with a warning (:func:`report_text_problems`). The returned dataset's
    ``skipped`` attribute lists the data dir entries left out.

    Raises
    ------
    FileNotFoundError
        A requested speed-perturbed dump is missing.
    asr.data.datadir.DataDirError
        The data dir is missing a required file or has more than ``max_bad_fraction`` bad utterances.
    """
    try:
        utts, skipped = check_data_dir(data_dir, max_bad_fraction)
    except DataDirError:
        if report is not None:  # too many bad entries: list them all before failing
            read_data_dir(data_dir, max_bad_fraction, report)
        raise
    if report is not None and skipped:
        write_skipped(report, skipped)
    if limit:
        utts = utts[:limit]
    report_text_problems(utts, tokenizer, data_dir)
    feats = None
    if dump_dir is not None and (Path(dump_dir) / "feats.pt").is_file():
        feats = torch.load(Path(dump_dir) / "feats.pt", weights_only=True)
    perturbed = []
    for sp in speeds:
        if float(sp) == 1.0:
            continue
        f = Path(dump_dir or ".") / f"feats_sp{float(sp)}.pt"
        if not f.is_file():
            raise FileNotFoundError(f"speed-perturbed features missing: {f} (run asr-dump-feats with speeds=[{sp}])")
        perturbed.append(torch.load(f, weights_only=True))
    ds = ASRDataset(utts, tokenizer, feats, fbank, perturbed)
    ds.skipped = skipped  # the data dir entries left out (asr.data.datadir.SkippedEntry), for reports
    return ds


def __getattr__(name: str):
    """``ASRDataModule`` moved to :mod:`asr.lightning.data` (this module stays free of Lightning, so
    decoding and inference do not import it); the old import path still works."""
    if name == "ASRDataModule":
        from asr.lightning.data import ASRDataModule

        return ASRDataModule
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
