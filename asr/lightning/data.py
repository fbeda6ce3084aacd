"""The LightningDataModule: train and dev loaders over :mod:`asr.data.dataset` (training only)."""

from __future__ import annotations

import lightning as L
from torch.utils.data import DataLoader

from asr.data.dataset import ASRDataset, LengthBucketBatchSampler, make_collate


class ASRDataModule(L.LightningDataModule):
    """Train and dev loaders with length bucketing.

    Parameters
    ----------
    train, dev : ASRDataset
    batch_size : int
        Utterances per batch per device (effective batch = ``batch_size x devices x accumulate_grad_batches``).
    max_frames : int
        Cap on padded frames per batch (0 = none).
    num_workers : int
    seed : int
    length_jitter : float
        Training batches only: new length-sorted batch compositions every epoch (``LengthBucketBatchSampler``).
    sortagrad : int
        Training batches only: the first ``sortagrad`` epochs shortest first (``LengthBucketBatchSampler``).
    """

    def __init__(self, train: ASRDataset, dev: ASRDataset, pad_id: int, batch_size: int = 32, max_frames: int = 0, num_workers: int = 0, seed: int = 0, length_jitter: float = 0.0, sortagrad: int = 0) -> None:
        super().__init__()
        self.train_set, self.dev_set = train, dev
        self.collate = make_collate(pad_id)
        self.batch_size, self.max_frames, self.num_workers, self.seed = batch_size, max_frames, num_workers, seed
        self.length_jitter, self.sortagrad = length_jitter, sortagrad
        self._train_sampler: LengthBucketBatchSampler | None = None

    def _loader(self, ds: ASRDataset, shuffle: bool) -> DataLoader:
        sampler = LengthBucketBatchSampler([ds.num_frames(i) for i in range(len(ds))], self.batch_size, self.max_frames, shuffle=shuffle, seed=self.seed,
                                           length_jitter=self.length_jitter if shuffle else 0.0, sortagrad=self.sortagrad if shuffle else 0)
        if shuffle and self.trainer is not None:
            # a resumed run: DataLoader workers take their first indices before any epoch-start hook runs
            sampler.set_epoch(self.trainer.current_epoch)
        return DataLoader(ds, batch_sampler=sampler, collate_fn=self.collate, num_workers=self.num_workers, persistent_workers=self.num_workers > 0)

    def train_dataloader(self) -> DataLoader:
        return self._loader(self.train_set, True)

    def val_dataloader(self) -> DataLoader:
        return self._loader(self.dev_set, False)
