"""The LightningDataModule: train and dev loaders over lhotse cut manifests (training only).

Batches come from :func:`asr.data.lhotse_data.make_sampler` (lhotse's ``DynamicBucketingSampler``: duration
buckets, a new batch composition every epoch, each DDP rank its own batches) and are built in DataLoader workers by
:class:`asr.data.lhotse_data.CutBatchDataset` (stored or on-the-fly fbank, per-cut speed perturbation, tokens). The
manifests are read lazily: memory does not grow with the corpus.
"""

from __future__ import annotations

from pathlib import Path

import lightning as L
from torch.utils.data import DataLoader

from asr.data.lhotse_data import CutBatchDataset, EpochSampler, load_cuts, make_sampler
from asr.features.fbank import FbankOptions


class ASRDataModule(L.LightningDataModule):
    """Train and dev loaders.

    Parameters
    ----------
    train_cuts, dev_cuts : str or Path
        ``cuts.jsonl.gz`` manifests (with stored features, ``dump/<split>/``, or without, ``data/<split>/``).
    tokenizer : asr.text.tokenizer.Tokenizer
    fbank : FbankOptions
    batch_size : int
        Cap on utterances per batch per device (lhotse ``max_cuts``; 0 = none).
    max_duration : float
        Seconds of audio per batch per device (0 = none; then ``batch_size`` alone sizes batches). Effective batch
        = ``max_duration x devices x accumulate_grad_batches``.
    num_workers : int
        DataLoader worker processes building batches (features, perturbation, padding).
    seed : int
        Shuffling (``seed + epoch``) and speed-perturbation draws (``(seed, epoch, cut)``).
    speeds : sequence of float
        Speed perturbation factors for training cuts (``()`` = off).
    num_buckets, buffer_size : int
        lhotse's duration buckets and the number of cuts held for shuffling and bucketing.
    limit_train, limit_dev : int
        > 0: the first N cuts only (smoke runs).
    wave_augment : dict, optional
        Waveform augmentation of training cuts (``data.wave_augment``, :mod:`asr.data.augment`; None = off); dev
        cuts are never augmented.
    """

    def __init__(self, train_cuts: str | Path, dev_cuts: str | Path, tokenizer, fbank: FbankOptions = FbankOptions(), batch_size: int = 32, max_duration: float = 0.0,
                 num_workers: int = 0, seed: int = 0, speeds=(), num_buckets: int = 10, buffer_size: int = 20000, limit_train: int = 0, limit_dev: int = 0, wave_augment=None) -> None:
        super().__init__()
        self.train_cuts, self.dev_cuts = Path(train_cuts), Path(dev_cuts)
        for p in (self.train_cuts, self.dev_cuts):
            load_cuts(p)  # fails early, naming the manifest and the stage that writes it
        self.tokenizer, self.fbank = tokenizer, fbank
        self.batch_size, self.max_duration, self.num_workers, self.seed = batch_size, max_duration, num_workers, seed
        self.speeds, self.num_buckets, self.buffer_size = tuple(speeds), num_buckets, buffer_size
        self.limit_train, self.limit_dev = limit_train, limit_dev
        self.wave_augment = dict(wave_augment) if wave_augment else None
        if self.wave_augment:
            from asr.data.augment import WaveAugmentConfig

            WaveAugmentConfig.from_dict(self.wave_augment)  # a bad key or range fails here, not in a worker
        self.train_sampler: EpochSampler | None = None

    def _cuts(self, path: Path, limit: int):
        cuts = load_cuts(path)
        return cuts.subset(first=limit) if limit else cuts

    def _ranks(self) -> tuple[int | None, int | None]:
        if self.trainer is None:
            return None, None
        return self.trainer.world_size, self.trainer.global_rank

    def _loader(self, sampler: EpochSampler, speeds, wave_augment=None) -> DataLoader:
        ds = CutBatchDataset(self.tokenizer, self.fbank, speeds, self.seed, wave_augment)
        return DataLoader(ds, sampler=sampler, batch_size=None, num_workers=self.num_workers, persistent_workers=False)

    def train_dataloader(self) -> DataLoader:
        world, rank = self._ranks()
        sampler = make_sampler(self._cuts(self.train_cuts, self.limit_train), self.batch_size, self.max_duration, shuffle=True, seed=self.seed,
                               num_buckets=self.num_buckets, world_size=world, rank=rank, buffer_size=self.buffer_size)
        if self.trainer is not None:
            # a resumed run: the first epoch's iterator may be created before any epoch-start hook runs
            sampler.set_epoch(self.trainer.current_epoch)
        self.train_sampler = sampler
        return self._loader(sampler, self.speeds, self.wave_augment)

    def val_dataloader(self) -> DataLoader:
        world, rank = self._ranks()
        sampler = make_sampler(self._cuts(self.dev_cuts, self.limit_dev), self.batch_size, self.max_duration, shuffle=False, seed=self.seed,
                               num_buckets=self.num_buckets, world_size=world, rank=rank, buffer_size=self.buffer_size)
        return self._loader(sampler, ())
