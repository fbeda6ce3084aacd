"""A CSV metrics logger that survives resumed training.

Lightning's ``CSVLogger`` deletes an existing ``metrics.csv`` when its writer starts (Lightning 2.6,
``lightning.fabric.loggers.csv_logs._ExperimentWriter._check_log_dir_exists``), so a run resumed with
``ckpt_path=last`` in the same folder loses every row of the epochs before the resume. ``ResumableCSVLogger``
keeps those rows instead: the rows of epochs up to the resumed checkpoint's epoch stay, the rows of the
interrupted epoch (which the resumed run trains again from its start) are dropped, and new rows are appended,
so ``metrics.csv`` reads as one uninterrupted run.
"""

from __future__ import annotations

import csv
import os
import warnings

from lightning.fabric.loggers.logger import rank_zero_experiment
from lightning.pytorch.loggers import CSVLogger
from lightning.pytorch.loggers.csv_logs import ExperimentWriter


class _KeepingExperimentWriter(ExperimentWriter):
    """Lightning's CSV writer, except that an existing ``metrics.csv`` is trimmed to the epochs
    ``<= keep_until_epoch`` instead of deleted (``keep_until_epoch`` None: deleted, as Lightning does)."""

    def __init__(self, log_dir: str, keep_until_epoch: int | None) -> None:
        path = os.path.join(log_dir, self.NAME_METRICS_FILE)
        kept: list[dict[str, str]] = []
        header: list[str] = []
        if keep_until_epoch is not None and os.path.isfile(path):
            with open(path, newline="") as f:
                reader = csv.DictReader(f)
                header = list(reader.fieldnames or [])
                rows = list(reader)
            # rows are in time order: keep up to the last one of the resumed checkpoint's epochs (rows without an
            # epoch, such as the learning-rate monitor's at an epoch start, go with what they follow)
            ends = [i for i, r in enumerate(rows) if r.get("epoch") and float(r["epoch"]) <= keep_until_epoch]
            kept = rows[: ends[-1] + 1] if ends else []
        with warnings.catch_warnings():
            if header:  # its "previous log files ... will be deleted" warning is not true here
                warnings.filterwarnings("ignore", message="Experiment logs directory")
            super().__init__(log_dir)  # removes metrics.csv
        if header:
            with open(path, "w", newline="") as f:
                writer = csv.DictWriter(f, fieldnames=header)
                writer.writeheader()
                writer.writerows(kept)
            # the writer appends under these columns and rewrites the file when a new one appears
            self.metrics_keys = sorted(header)


class ResumableCSVLogger(CSVLogger):
    """``CSVLogger`` writing ``<save_dir>/<name>/metrics.csv`` (``version=""``) that keeps the rows of the
    epochs ``<= keep_until_epoch`` already in that file: pass the epoch stored in the checkpoint a run
    resumes from, or None for a fresh run (the old file is then replaced, as by ``CSVLogger``)."""

    def __init__(self, save_dir: str, name: str, keep_until_epoch: int | None) -> None:
        super().__init__(save_dir, name=name, version="")
        self._keep_until_epoch = keep_until_epoch

    @property
    @rank_zero_experiment  # as CSVLogger: other DDP ranks get a no-op writer
    def experiment(self) -> ExperimentWriter:  # type: ignore[override]
        """The CSV writer, created on first use (rank 0 only); it trims or replaces ``metrics.csv`` then."""
        if self._experiment is None:
            os.makedirs(self.root_dir, exist_ok=True)
            self._experiment = _KeepingExperimentWriter(self.log_dir, self._keep_until_epoch)
        return self._experiment
