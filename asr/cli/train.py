"""asr-train: train an attention encoder-decoder with Lightning, configured by Hydra.

    asr-train experiment=an4/location_aware            # from recipes/an4 after stages 1-3
    asr-train experiment=an4/location_aware ckpt_path=last   # resume
    asr-train trainer=ddp trainer.accelerator=cpu trainer.devices=2

Writes ``<exp_dir>/checkpoints/{best,last}.ckpt`` (best = lowest dev WER, last = end of the latest epoch;
both written atomically, so a run killed at any moment resumes from the last completed epoch with
``ckpt_path=last``, re-running the interrupted epoch from its start), TensorBoard logs under
``<exp_dir>/tb``, ``<exp_dir>/config.yaml`` (the resolved config) and ``<exp_dir>/train_summary.json``.
"""

from __future__ import annotations

import json
import logging
import math
import os
import time
from pathlib import Path
from typing import Any

import hydra
import lightning as L
import torch
from lightning.pytorch.callbacks import Callback, LearningRateMonitor, ModelCheckpoint, TQDMProgressBar
from lightning.pytorch.loggers import TensorBoardLogger
from lightning.pytorch.plugins.io import TorchCheckpointIO
from omegaconf import DictConfig, OmegaConf

from asr.lightning.data import ASRDataModule
from asr.features.fbank import FbankOptions, GlobalCMVN
from asr.lightning.csv_log import ResumableCSVLogger
from asr.lightning.module import ASRLightningModule
from asr.models.asr_model import decoder_uses_attention
from asr.models.checkpoint import ASR_KEY, model_state_dict, read_checkpoint
from asr.text.tokenizer import Tokenizer
from asr.utils.io import atomic_torch_save, atomic_write_text, remove_stale_temp_files
from asr.utils.paths import CONF_DIR
from asr.utils.threads import configure_threads

log = logging.getLogger("asr.train")


class WallClock(Callback):
    """Training wall time in seconds summed over interrupted and resumed runs (kept in the checkpoints), so a
    resumed experiment reports its whole training time, not only the last process's."""

    def __init__(self) -> None:
        self.before = 0.0  # seconds of earlier runs (restored from the checkpoint)
        self.start = time.time()

    @property
    def elapsed(self) -> float:
        """Seconds of training so far, earlier runs included."""
        return self.before + time.time() - self.start

    def on_fit_start(self, trainer, pl_module) -> None:
        self.start = time.time()

    def state_dict(self) -> dict[str, float]:
        return {"elapsed_s": self.elapsed}

    def load_state_dict(self, state_dict: dict[str, float]) -> None:
        self.before = float(state_dict.get("elapsed_s", 0.0))


class AdaptiveThreads(Callback):
    """``threads=0`` (auto): re-choose the intra-op threads at every epoch start (:func:`asr.utils.threads.configure_threads`:
    the cores not busy with other processes), so load that starts or stops during training is followed within an
    epoch. Measured on a 2-core Xeon VM (``scripts/bench_train.py --competing 1``): with torch's default 2 spinning
    threads one other busy process made a step 6-12x slower; with the auto count 0.97-1.95x."""

    def __init__(self, workers: int = 0) -> None:
        self.workers = workers

    def on_train_epoch_start(self, trainer, pl_module) -> None:
        configure_threads(0, workers=self.workers)


class AtomicCheckpointIO(TorchCheckpointIO):
    """Checkpoints written to a temporary file and renamed: a crash never leaves a truncated checkpoint.

    Loading (resume) is always ``weights_only=True``: a checkpoint holding other pickled objects is refused
    with ``ValueError`` and nothing in it runs.
    """

    def save_checkpoint(self, checkpoint: dict[str, Any], path, storage_options=None) -> None:
        atomic_torch_save(checkpoint, path)

    def load_checkpoint(self, path, map_location=None, weights_only=None):
        try:
            return torch.load(path, map_location=map_location or "cpu", weights_only=True)
        except FileNotFoundError:
            raise
        except Exception as exc:  # pickle.UnpicklingError and friends: never fall back to unsafe loading
            raise ValueError(f"refusing to resume from {path}: not loadable with weights_only=True ({exc})") from exc


def fbank_options(cfg: DictConfig) -> FbankOptions:
    """FbankOptions from the ``features`` config group."""
    f = cfg.features
    return FbankOptions(f.num_mel_bins, f.frame_length_ms, f.frame_shift_ms, f.sample_rate, f.dither)


def batch_frame_budget(data_cfg: DictConfig, fb: FbankOptions) -> int:
    """Padded frames per batch (``B x T_max``) from ``data.max_frames`` and ``data.max_duration`` (seconds).

    The smaller non-zero of the two wins; 0 = no budget (``data.batch_size`` utterances per batch only).

    Raises
    ------
    ValueError
        A negative or non-finite budget.
    """
    frames = int(data_cfg.get("max_frames") or 0)
    seconds = float(data_cfg.get("max_duration") or 0)
    if frames < 0 or not math.isfinite(seconds) or seconds < 0:
        raise ValueError(f"data.max_frames ({frames}) and data.max_duration ({seconds} s) must be >= 0")
    from_duration = int(seconds / fb.frame_shift_s)
    return min(b for b in (frames, from_duration) if b > 0) if (frames or from_duration) else 0


def cut_manifest(data_cfg: DictConfig, split: str) -> Path:
    """The ``cuts.jsonl.gz`` a split trains from: ``<data.dump>/<split>/`` (stored fbank, written by stage 2) with
    ``data.features=precomputed``, ``<data.root>/<split>/`` (fbank computed from audio in the loader) with
    ``on_the_fly``.

    Raises
    ------
    ValueError
        Another ``data.features`` value.
    """
    from asr.data.lhotse_data import CUTS_NAME

    kind = str(data_cfg.get("features", "precomputed"))
    if kind not in ("precomputed", "on_the_fly"):
        raise ValueError(f"data.features must be precomputed or on_the_fly, got {kind!r}")
    return Path(data_cfg.dump if kind == "precomputed" else data_cfg.root) / split / CUTS_NAME


def report_cut_texts(path: Path, tokenizer: Tokenizer, limit: int = 0) -> dict[str, int]:
    """Warn about training transcripts with characters the tokenizer maps to ``<unk>`` and about empty ones
    (:func:`asr.data.dataset.report_text_problems`), reading the manifest lazily (texts only, one pass)."""
    from types import SimpleNamespace

    from asr.data.dataset import report_text_problems
    from asr.data.lhotse_data import load_cuts

    cuts = load_cuts(path)
    if limit:
        cuts = cuts.subset(first=limit)
    rows = [SimpleNamespace(utt_id=c.id, text=" ".join(s.text or "" for s in c.supervisions).strip()) for c in cuts]
    return report_text_problems(rows, tokenizer, path)


def init_model_from(model: torch.nn.Module, path: str | os.PathLike[str], tokenizer: Tokenizer) -> None:
    """Initialise ``model`` with the weights of the training checkpoint at ``path`` (ESPnet's ``--init_param``):
    a new run (epoch 0, fresh optimiser and LR schedule) that starts from a trained model, e.g. a second
    cosine cycle (SGDR, Loshchilov & Hutter 2017, arXiv 1608.03983) or fine-tuning. Every weight is taken,
    the CMVN statistics (model buffers) included, so the model sees its inputs normalised as it was trained.

    Raises
    ------
    FileNotFoundError
        No file at ``path``.
    ValueError
        Not an ``asr`` checkpoint or not loadable with ``weights_only=True``; trained with another tokenizer
        (token ids would mean other tokens); or its weights do not fit ``model`` (missing, unexpected or
        differently shaped tensors, named in the message).
    """
    ckpt = read_checkpoint(path)
    if ckpt[ASR_KEY].get("tokenizer_proto") != tokenizer.proto:
        raise ValueError(f"init_param {path}: trained with another tokenizer than the {tokenizer.vocab_size}-token one of this run")
    state, own = model_state_dict(ckpt), model.state_dict()
    problems = [f"missing {k}" for k in sorted(own.keys() - state.keys())] + [f"unexpected {k}" for k in sorted(state.keys() - own.keys())]
    problems += [f"{k}: {tuple(state[k].shape)} in the checkpoint, {tuple(own[k].shape)} in the model" for k in sorted(own.keys() & state.keys()) if state[k].shape != own[k].shape]
    if problems:
        more = f" (and {len(problems) - 5} more)" if len(problems) > 5 else ""
        raise ValueError(f"init_param {path} does not fit this model: {'; '.join(problems[:5])}{more}")
    model.load_state_dict(state)


def train(cfg: DictConfig) -> dict[str, Any]:
    """Train from a composed config; returns a summary (best checkpoint, best dev WER, epochs, wall time).

    Raises
    ------
    FileNotFoundError
        Tokenizer model, CMVN statistics or data dirs missing (the message names the recipe stage).
    ValueError
        ``ckpt_path`` is not loadable with ``weights_only=True`` (refused; nothing in it runs); ``init_param``
        does not fit the model (`init_model_from`).
    asr.lightning.module.TrainingDivergedError
        ``max_bad_steps`` optimiser steps in a row had a non-finite loss or gradient.
    """
    workers = int(cfg.data.get("num_workers") or 0)
    configure_threads(int(cfg.threads or 0), workers=workers)
    L.seed_everything(cfg.seed, workers=True)
    exp_dir = Path(cfg.exp_dir)
    exp_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_text(OmegaConf.to_yaml(cfg, resolve=True), exp_dir / "config.yaml")

    tokenizer = Tokenizer.from_file(cfg.tokenizer.model)
    cmvn = GlobalCMVN.from_file(cfg.features.cmvn)
    fb = fbank_options(cfg)
    d = cfg.data
    train_cuts, dev_cuts = cut_manifest(d, d.train), cut_manifest(d, d.dev)
    log.info("train cuts %s, dev cuts %s (data.features=%s); vocabulary %d", train_cuts, dev_cuts, d.get("features", "precomputed"), tokenizer.vocab_size)
    report_cut_texts(train_cuts, tokenizer, int(d.limit_train or 0))
    max_duration = batch_frame_budget(d, fb) * fb.frame_shift_s
    dm = ASRDataModule(
        train_cuts, dev_cuts, tokenizer, fb, int(d.batch_size), max_duration, int(d.num_workers), int(cfg.seed), list(d.get("speed_perturb") or []),
        int(d.get("num_buckets", 10)), int(d.get("buffer_size", 20000)), int(d.limit_train or 0), int(d.limit_dev or 0),
        wave_augment=OmegaConf.to_container(d.wave_augment, resolve=True) if d.get("wave_augment") else None,
    )

    model_cfg = OmegaConf.to_container(cfg.model, resolve=True)
    augment = OmegaConf.to_container(cfg.augment, resolve=True) if cfg.get("augment") else None
    module = ASRLightningModule(
        model_cfg, tokenizer, OmegaConf.to_container(cfg.optim, resolve=True), cmvn, fb.num_mel_bins, fb.frame_shift_s, augment,
        seed=int(cfg.seed), max_bad_steps=int(cfg.get("max_bad_steps", 20)), fbank=fb,
    )
    if cfg.get("init_param"):
        init_model_from(module.model, cfg.init_param, tokenizer)
        log.info("model initialised from %s (a resumed run restores its own weights over it)", cfg.init_param)
    if cfg.get("compile_decoder_step"):
        if not callable(getattr(module.model.decoder, "compile_step", None)):
            raise ValueError(f"compile_decoder_step: the {type(module.model.decoder).__name__} has no step loop to compile (RNN decoders only)")
        module.model.decoder.compile_step()
    n_params = sum(p.numel() for p in module.model.parameters())
    dec_type = model_cfg["decoder"]["type"]
    # build_model's own test of whether model.attention is used
    attention = f'{model_cfg["attention"]["type"]} attention' if decoder_uses_attention(module.model.decoder) else "multi-head cross-attention"
    log.info("model: %s encoder, %s decoder (%s), %.2f M parameters", model_cfg["encoder"]["type"], dec_type, attention, n_params / 1e6)

    ckpt_dir = exp_dir / "checkpoints"
    # global rank 0 only: torchrun sets RANK, srun SLURM_PROCID (neither sets NODE_RANK)
    if os.environ.get("RANK", os.environ.get("SLURM_PROCID", "0")) == "0" and os.environ.get("LOCAL_RANK", "0") == "0":
        for tmp in remove_stale_temp_files(ckpt_dir):
            log.warning("removed %s, left by a run killed while saving", tmp)
    best_cb = ModelCheckpoint(dirpath=ckpt_dir, filename="best", monitor="dev/wer", mode="min", save_top_k=1, enable_version_counter=False)
    # last.ckpt at the end of every epoch. Not ModelCheckpoint(save_last=True) on best_cb: Lightning 2.6 only
    # refreshes "last" when that callback saved a top-k checkpoint, i.e. when dev WER improved. Saved at
    # train-epoch end, after validation, so it holds best_cb's updated state.
    last_cb = ModelCheckpoint(dirpath=ckpt_dir, filename="last", monitor=None, save_top_k=1, save_on_train_epoch_end=True, enable_version_counter=False)
    clock = WallClock()
    callbacks = [best_cb, LearningRateMonitor("epoch"), clock]
    if not cfg.threads and "OMP_NUM_THREADS" not in os.environ:
        callbacks.append(AdaptiveThreads(workers))
    keep = int(cfg.get("keep_checkpoints", 0))
    if keep > 0:
        # The N best epochs by dev token accuracy (ESPnet's criterion), dev loss or dev WER, or the last N ("step"),
        # kept for checkpoint averaging
        # (asr-average); named by epoch.
        monitor = str(cfg.get("keep_checkpoints_by", "dev/acc"))
        if monitor not in ("dev/acc", "dev/loss", "dev/wer", "step"):
            raise ValueError(f"keep_checkpoints_by must be dev/acc, dev/loss, dev/wer or step, got {monitor!r}")
        callbacks.append(
            ModelCheckpoint(
                dirpath=ckpt_dir, filename="epoch{epoch:03d}", monitor=monitor, mode="max" if monitor in ("step", "dev/acc") else "min",
                save_top_k=keep, auto_insert_metric_name=False, enable_version_counter=False,
            )
        )
    callbacks.append(last_cb)  # after the other checkpoint callbacks: its file carries their final state
    trainer_kwargs = OmegaConf.to_container(cfg.trainer, resolve=True)
    trainer_kwargs["precision"] = cpu_precision(trainer_kwargs.get("precision", "32-true"), str(trainer_kwargs.get("accelerator", "auto")))
    ckpt_path = cfg.ckpt_path
    if ckpt_path == "last":
        ckpt_path = str(ckpt_dir / "last.ckpt") if (ckpt_dir / "last.ckpt").is_file() else None
        log.info("resuming from %s", ckpt_path or "nothing (no last.ckpt yet): starting fresh")
    # csv/metrics.csv keeps the rows of the epochs the resumed checkpoint holds (Lightning's CSVLogger deletes them)
    resumed_epoch = int(AtomicCheckpointIO().load_checkpoint(ckpt_path)["epoch"]) if ckpt_path else None  # safe load
    trainer = L.Trainer(
        **trainer_kwargs,
        default_root_dir=str(exp_dir),
        deterministic=bool(cfg.deterministic),
        use_distributed_sampler=False,  # lhotse's sampler shards by rank itself
        callbacks=callbacks
        + ([TQDMProgressBar(refresh_rate=5)] if trainer_kwargs.get("enable_progress_bar", True) else []),
        logger=[TensorBoardLogger(str(exp_dir), name="tb", version=""), ResumableCSVLogger(str(exp_dir), "csv", keep_until_epoch=resumed_epoch)],
        plugins=[AtomicCheckpointIO()],
    )
    t0 = time.time()
    trainer.fit(module, datamodule=dm, ckpt_path=ckpt_path)
    wall = time.time() - t0
    summary = {
        "name": cfg.name,
        "best_checkpoint": best_cb.best_model_path,
        "best_dev_wer": float(best_cb.best_model_score) if best_cb.best_model_score is not None else None,
        "epochs": int(trainer.current_epoch),
        "train_wall_s": round(clock.elapsed, 1),  # all runs of this experiment (resumes included)
        "last_run_wall_s": round(wall, 1),
        "n_params": n_params,
        "precision": str(trainer_kwargs["precision"]),  # as trained (cpu_precision may have replaced bf16)
        "machine": _machine(),
    }
    if trainer.is_global_zero:
        atomic_write_text(json.dumps(summary, indent=2) + "\n", exp_dir / "train_summary.json")
        log.info("done: %s", summary)
    return summary


def cpu_precision(precision: str | int, accelerator: str, bf16_supported: bool | None = None) -> str | int:
    """The Lightning ``precision`` to train with: ``precision`` itself, except bf16 on a CPU that cannot compute in
    bf16, where it is ``"32-true"`` (with a warning).

    bf16 autocast pays on a CPU with AMX or AVX512-BF16 (1.19x faster steps for the CPU Transformer,
    ``scripts/bench_train.py --bf16``); on a CPU without them (AVX2 only, e.g. an AMD EPYC without AVX-512) oneDNN
    emulates bf16 and the same step runs 0.21x as fast as fp32 (same bench, 1 thread, batches of 8, AMD EPYC; recipes/an4/README.md,
    section "Session 15"). An experiment file that asks for bf16 (``an4/transformer_ctc_cpu``) must not become 5x slower on
    such a machine without a word.

    Args:
        precision: ``trainer.precision`` as configured (``"bf16-mixed"``, ``"bf16-true"``, ``"32-true"``, ``16``...).
        accelerator: ``trainer.accelerator`` (``"cpu"``, ``"gpu"``, ``"auto"``...); ``"auto"`` counts as CPU when no
            CUDA device is visible.
        bf16_supported: whether this CPU computes bf16 natively; ``None``: ask oneDNN
            (``torch.ops.mkldnn._is_mkldnn_bf16_supported``).
    Returns:
        ``precision`` unchanged, or ``"32-true"`` for bf16 on a CPU without native bf16.
    """
    on_cpu = accelerator == "cpu" or (accelerator == "auto" and not torch.cuda.is_available())
    if not (on_cpu and str(precision).startswith("bf16")):
        return precision
    if bf16_supported is None:
        bf16_supported = bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    if bf16_supported:
        return precision
    log.warning(
        "trainer.precision=%s asked for on a CPU without native bf16 (capability %s: no AMX / AVX512-BF16): oneDNN would "
        "emulate it at ~0.2x the speed of fp32; training in 32-true instead",
        precision, torch.backends.cpu.get_cpu_capability(),
    )
    return "32-true"


def _machine() -> str:
    if torch.cuda.is_available():
        return torch.cuda.get_device_name(0)
    model = ""
    try:  # Linux: the CPU's model name, so that a figure can say which CPU gave it
        model = next((ln.split(":", 1)[1].strip() for ln in Path("/proc/cpuinfo").read_text().splitlines() if ln.startswith("model name")), "")
    except OSError:
        pass
    return f"CPU x{os.cpu_count()}{' ' + model if model else ''} ({torch.backends.cpu.get_cpu_capability()}; {torch.get_num_threads()} torch threads)"


@hydra.main(version_base="1.3", config_path=str(CONF_DIR), config_name="train")
def main(cfg: DictConfig) -> None:
    """Console script ``asr-train`` (Hydra overrides on the command line)."""
    train(cfg)


if __name__ == "__main__":
    main()
