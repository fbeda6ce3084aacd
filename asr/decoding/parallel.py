"""``asr-decode`` over many processes, GPUs and nodes: the inputs sharded by duration, one engine per process,
one merge.

    asr-decode ckpt=models/an4_pblstm_x4 data_dir=data/test out_dir=exp/decode_test num_procs=2 threads=1   # 2 CPU processes
    asr-decode ckpt=... data_dir=... out_dir=... device=cuda num_procs=8                                    # 8 GPUs, this machine
    torchrun --nnodes 2 --nproc-per-node 8 ... -m asr.cli.decode ckpt=... out_dir=... device=cuda num_nodes=2
    srun --ntasks-per-node 8 asr-decode ckpt=... out_dir=... device=cuda num_procs=8 num_nodes=4          # SLURM

How: every process reads the input list (a data dir or audio files; cheap), assigns the inputs to processes by
duration (:func:`shard_by_duration`: longest first to the least loaded, so every process gets about the same
seconds of audio, not the same count), and decodes its share with the same
:func:`~asr.decoding.decode_dir.decode_inputs` as one process into its own decode folder,
``out_dir/.shards/<rank>-of-<world>/`` (its own lock, partial files and resume). When all are done, rank 0 merges
the parts (:func:`merge_shards`) into ``out_dir`` (results in id order, attention, segments, errors, one
``meta.json`` with the totals and every shard's figures) and removes the parts. A killed job started again with the
same settings and process count resumes every shard where it stopped; another process count starts over.
Across nodes, ``out_dir`` must be on a file system all nodes see.

Why Lightning Fabric and not ``Trainer.predict``: the engine already does what a predict loop would add (batches
under a frame budget, long-form segmentation, error isolation, streaming with bounded memory), while
``Trainer.predict`` shards with a ``DistributedSampler`` by count (padding the last batches with repeated
inputs) and collects the predictions in memory. Fabric gives Lightning's part that matters here: its launchers
(processes spawned on one machine) and cluster environments (torchrun, SLURM, ...), process groups and barriers.
Ray Data was not tried: it is not a dependency, and a shared file system plus a process group suffices.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import stat
import time
from collections.abc import Mapping, Sequence
from datetime import timedelta
from pathlib import Path
from typing import Any

from asr.decoding.engine import EngineInput
from asr.decoding.results import (
    META,
    SEGMENTS,
    OutDirLock,
    read_attention,
    read_errors,
    read_meta,
    read_results,
    remove_stale_outputs,
    write_errors,
    write_final,
    write_meta,
)

__all__ = ["shard_by_duration", "input_seconds", "decode_parallel", "merge_shards", "SHARDS_DIR"]

log = logging.getLogger("asr.decode")

#: How processes are started on one machine: ``fork`` where the OS has it (the parent has run no torch op yet, so
#: no OpenMP pool is copied; 2 processes on AN4 test: 10.0 s wall against 14.9 s with ``spawn``, which imports torch
#: and Lightning again in every child), else ``spawn``; ``ASR_DECODE_START_METHOD`` overrides it.
_START_METHOD = "fork" if "fork" in __import__("multiprocessing").get_all_start_methods() else "spawn"

#: Where the processes of a parallel decode write their parts, inside ``out_dir``.
SHARDS_DIR = ".shards"


def shard_by_duration(durations: Sequence[float], n: int) -> list[list[int]]:
    """Split inputs among ``n`` processes with about equal total duration (longest-processing-time-first greedy:
    each input, longest first, goes to the process with the least so far; ties to the lowest rank).

    Parameters
    ----------
    durations : sequence of float
        Seconds (or any cost) per input.
    n : int
        Processes (>= 1).

    Returns
    -------
    list of list of int
        Per process, its input indices in increasing order (every index in exactly one list; a process may get none).

    Raises
    ------
    ValueError
        ``n`` < 1.
    """
    if n < 1:
        raise ValueError(f"need at least one process, got {n}")
    load, parts = [0.0] * n, [[] for _ in range(n)]
    for i in sorted(range(len(durations)), key=lambda i: (-float(durations[i]), i)):
        r = min(range(n), key=lambda r: (load[r], r))
        parts[r].append(i)
        load[r] += float(durations[i])
    return [sorted(p) for p in parts]


def input_seconds(inp: EngineInput, frame_shift_s: float, sample_rate: int) -> float:
    """Duration of an input for sharding, without decoding it: features' frames x ``frame_shift_s``, a waveform's
    samples / ``sample_rate``, an audio file's header (``soundfile.info``; regular files only, so a FIFO is
    never opened here). 0 for what cannot be measured (the engine reports it as an error when it decodes it)."""
    if inp.error is not None:
        return 0.0
    if inp.feats is not None:
        return float(inp.feats.shape[0]) * frame_shift_s
    if inp.wav is not None:
        return inp.wav.numel() / sample_rate
    if inp.path is None:
        return 0.0
    try:
        if not stat.S_ISREG(os.stat(inp.path).st_mode):
            return 0.0
        import soundfile as sf

        from asr.features.audio import sf_path

        info = sf.info(sf_path(inp.path))
        return info.frames / info.samplerate if info.samplerate else 0.0
    except Exception:  # noqa: BLE001 -- any unreadable file: the engine gives its error when it gets to it
        return 0.0


def _plain(cfg: Mapping[str, Any]) -> dict[str, Any]:
    """``cfg`` as plain Python containers (picklable for spawned processes)."""
    try:
        from omegaconf import DictConfig, OmegaConf

        if isinstance(cfg, DictConfig):
            return OmegaConf.to_container(cfg, resolve=True)  # type: ignore[return-value]
    except ImportError:  # pragma: no cover - hydra brings omegaconf
        pass
    return dict(cfg)


def _launched_externally() -> bool:
    """Whether torchrun or SLURM started this process as one of several."""
    from asr.decoding.decode_dir import parallel_requested

    return parallel_requested({})


def decode_parallel(cfg: Mapping[str, Any]) -> dict[str, Any] | None:
    """:func:`asr.decoding.decode_dir.decode` over ``num_procs`` processes per node on ``num_nodes`` nodes (module
    docstring). Launched here (spawned processes) unless torchrun or SLURM started this process as one of several.
    Returns the merged ``meta.json`` content in the process of rank 0, None in the others.

    Raises
    ------
    ValueError
        As :func:`~asr.decoding.decode_dir.check_settings`; ``num_procs``/``num_nodes`` below 1.
    FileNotFoundError
        No model at ``ckpt``.
    RuntimeError
        A process failed (the message names its rank and error; finished parts are kept for a resume), or
        another decode holds ``out_dir``'s lock.
    """
    from lightning.fabric import Fabric
    from lightning.fabric.strategies import DDPStrategy

    from asr.decoding.decode_dir import check_settings

    check_settings(cfg)
    num_procs, num_nodes = int(cfg.get("num_procs", 1) or 1), int(cfg.get("num_nodes", 1) or 1)
    if num_procs < 1 or num_nodes < 1:
        raise ValueError(f"num_procs and num_nodes must be >= 1, got {num_procs} and {num_nodes}")
    for path in [cfg["ckpt"], *(cfg.get("ensemble") or [])]:
        if not Path(path).exists():
            raise FileNotFoundError(f"no model at {path} (looked in {Path(path).absolute().parent})")
    gpu = str(cfg.get("device", "cpu")).startswith("cuda")
    external = _launched_externally()
    if external:
        num_procs = int(os.environ.get("LOCAL_WORLD_SIZE") or os.environ.get("SLURM_NTASKS_PER_NODE", "").split("(")[0] or num_procs)
    strategy = DDPStrategy(
        process_group_backend="nccl" if gpu else "gloo", timeout=timedelta(days=7),  # ranks wait for the slowest at the merge
        **({} if external else {"start_method": os.environ.get("ASR_DECODE_START_METHOD", _START_METHOD)}),
    )
    fabric = Fabric(accelerator="cuda" if gpu else "cpu", devices=num_procs, num_nodes=num_nodes, strategy=strategy)
    out = fabric.launch(_rank_main, _plain(cfg))
    if isinstance(out, dict) and "error" in out:
        raise RuntimeError(out["error"])
    return out


def _rank_main(fabric: Any, cfg: dict[str, Any]) -> dict[str, Any] | None:
    """One process of :func:`decode_parallel`: decode its shard, then (rank 0) merge. Never raises, so that no
    process is left waiting at a barrier: an error is returned (rank 0) as ``{"error": message}``."""
    import torch
    import torch.distributed as dist

    from asr.decoding.decode_dir import decode_inputs, inputs_of, load_engine
    from asr.utils.threads import usable_cpus

    t0 = time.perf_counter()
    rank, world = fabric.global_rank, fabric.world_size
    out_dir, shards = Path(cfg["out_dir"]), Path(cfg["out_dir"]) / SHARDS_DIR
    lock, ready = None, "ok"
    if rank == 0:
        try:
            lock = OutDirLock(out_dir).__enter__()
            remove_stale_outputs(out_dir, overwrite=bool(cfg.get("overwrite")))
            for old in shards.glob("*-of-*") if shards.is_dir() else []:
                if not old.name.endswith(f"-of-{world}"):  # parts of a run with another process count: not resumable
                    shutil.rmtree(old, ignore_errors=True)
        except Exception as exc:  # noqa: BLE001
            ready = str(exc)
    ready = fabric.broadcast(ready, src=0)
    if ready != "ok":
        return {"error": ready} if rank == 0 else None
    status: dict[str, Any] = {"rank": rank, "ok": True}
    try:
        threads = int(cfg.get("threads", 0) or 0) or max(1, usable_cpus() // max(1, fabric.world_size // int(cfg.get("num_nodes", 1) or 1)))
        torch.set_num_threads(threads)
        engine = load_engine(cfg, device=str(fabric.device))
        inputs, errors = inputs_of(cfg, engine)
        f = engine.fbank
        mine = shard_by_duration([input_seconds(i, f.frame_shift_s, f.sample_rate) for i in inputs], world)[rank]
        part = shards / f"{rank}-of-{world}"
        with OutDirLock(part):
            remove_stale_outputs(part)
            info = decode_inputs(cfg, engine, part, [inputs[i] for i in mine], errors if rank == 0 else [], part=(rank, world), all_keys={i.key for i in inputs})
        status.update(n_inputs=len(mine), decode_s=info["decode_s"], audio_s=info["audio_s"], threads=threads)
        log.info("rank %d/%d: %d inputs, %.1f s of audio decoded in %.1f s", rank, world, len(mine), info["audio_s"], info["decode_s"])
    except Exception as exc:  # noqa: BLE001 -- reported by rank 0, after every process has finished
        status.update(ok=False, error=f"rank {rank}: {type(exc).__name__}: {exc}")
    gathered: list[Any] = [None] * world
    dist.all_gather_object(gathered, status)
    if rank != 0:
        return None
    try:
        failed = [s["error"] for s in gathered if not s["ok"]]
        if failed:
            return {"error": f"{len(failed)} of {world} decoding process(es) failed (finished parts kept in {shards} for a resume): {'; '.join(failed)}"}
        return merge_shards(out_dir, world, gathered, wall_s=time.perf_counter() - t0)
    except Exception as exc:  # noqa: BLE001
        return {"error": f"merging the parts in {shards}: {type(exc).__name__}: {exc}"}
    finally:
        if lock is not None:
            lock.__exit__(None, None, None)


def merge_shards(out_dir: str | Path, world: int, shard_status: Sequence[Mapping[str, Any]] = (), wall_s: float | None = None) -> dict[str, Any]:
    """Merge the parts ``out_dir/.shards/<rank>-of-<world>/`` into ``out_dir``: results (id order), attention,
    segments and errors as one process writes them (:func:`~asr.decoding.results.write_final`), and ``meta.json``
    with summed counts, ``decode_s`` of the slowest process (so ``rtf`` is that of the job: wall time of
    decoding / audio), ``processes`` and per-process figures (``shards``). Removes the parts. Returns the meta.

    Raises
    ------
    ValueError
        No part holds a decoded utterance (``errors.tsv`` is written first; the message names the first error).
    FileNotFoundError
        A part is missing its ``meta.json``.
    """
    out_dir = Path(out_dir)
    parts = [out_dir / SHARDS_DIR / f"{r}-of-{world}" for r in range(world)]
    rows: dict[str, dict] = {}
    atts: dict[str, Any] = {}
    seg_lines: list[dict] = []
    errors: list[tuple[str, str]] = []
    metas = []
    for part in parts:
        metas.append(read_meta(part) if (part / META).is_file() else None)
        if metas[-1] is None:
            raise FileNotFoundError(f"{part / META}: a part of the parallel decode is missing")
        if (part / "results.jsonl").is_file():
            rows.update((r["utt_id"], r) for r in read_results(part))
            atts.update(read_attention(part))
        if (part / SEGMENTS).is_file():
            seg_lines += [json.loads(x) for x in (part / SEGMENTS).read_text(encoding="utf-8").splitlines() if x.strip()]
        errors += read_errors(part)
    if not rows:
        if errors:
            write_errors(errors, out_dir)
            raise ValueError(f"no utterance to decode: {len(errors)} error(s), e.g. {errors[0][0]}: {errors[0][1]}; see {out_dir / 'errors.tsv'}")
        raise ValueError("no utterance to decode")
    ids = write_final(out_dir, rows, atts, seg_lines)
    if errors:
        write_errors(errors, out_dir)
    meta = dict(metas[0])
    for k in ("n_utts", "resumed_utts", "n_errors", "n_segmented", "n_segments", "n_batches", "n_length_limit", "n_no_speech"):
        meta[k] = sum(int(m.get(k, 0) or 0) for m in metas)
    meta["n_utts"] = len(ids)
    meta["audio_s"] = round(sum(float(m.get("audio_s", 0)) for m in metas), 2)
    meta["decode_s"] = round(max(float(m.get("decode_s", 0)) for m in metas), 2)
    meta["rtf"] = round(meta["decode_s"] / meta["audio_s"], 4) if meta["audio_s"] else 0.0
    meta["processes"] = world
    if wall_s is not None:
        meta["wall_s"] = round(wall_s, 2)
    by_rank = {int(s["rank"]): s for s in shard_status}
    meta["shards"] = [
        {"rank": r, "n_utts": m.get("n_utts", 0), "audio_s": m.get("audio_s", 0), "decode_s": m.get("decode_s", 0), "threads": by_rank.get(r, {}).get("threads", m.get("threads"))}
        for r, m in enumerate(metas)
    ]
    meta.pop("threads", None)
    write_meta(meta, out_dir)
    shutil.rmtree(out_dir / SHARDS_DIR, ignore_errors=True)
    print(f"decoded {len(ids)} utterances with {world} processes ({meta['audio_s']:.1f} s of audio newly decoded) in {meta['decode_s']:.1f} s "
          f"(slowest process), RTF {meta['rtf']:.4f} -> {out_dir}")
    return meta
