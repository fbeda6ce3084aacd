"""``asr-decode``'s run: a data dir or audio files through the :mod:`~asr.decoding.engine` into a decode folder.

The folder's format, its resume files and its lock are :mod:`asr.decoding.results`'s; this module maps engine
results onto them: a unit (an utterance, or a segment of a long recording) becomes a ``results.jsonl`` row
(:func:`~asr.decoding.results.hypothesis_row`) and an ``attention.npz`` matrix, a recording decoded in segments
one stitched row (:func:`~asr.decoding.longform.stitch`) plus its ``segments.jsonl`` lines, an input error an
``errors.tsv`` row.

Resuming: after each decoded batch its rows and attention are stored (:func:`~asr.decoding.results.save_batch`);
a decode started again with the same settings (:func:`resume_settings`) reuses a stored row when its unit has the
same reference, fbank frame count and input file signature, and decodes only the other units.
"""

from __future__ import annotations

import dataclasses
import logging
import os
from pathlib import Path
from typing import Any, Mapping

import numpy as np
import torch

from asr.data.datadir import DEFAULT_MAX_BAD_FRACTION
from asr.data.dataset import load_split
from asr.decoding.engine import Engine, EngineInput, InputResult, Unit, check_batching, check_device, check_encoder_dtype, model_sha256, utt_id_for
from asr.decoding.longform import SegmentOptions, stitch
from asr.decoding.results import (
    INPUT_KEY,
    PARTIAL_RESULTS,
    OutDirLock,
    attention_matrix,
    build_meta,
    hypothesis_row,
    input_signature,
    load_partial,
    remove_partial,
    remove_stale_outputs,
    save_batch,
    write_errors,
    write_final,
    write_meta,
    write_partial_settings,
)
from asr.decoding.search import DecodingOptions, resolve_options
from asr.utils.threads import configure_threads

__all__ = ["decode", "decode_inputs", "load_engine", "check_settings", "parallel_requested", "resume_settings", "audio_list", "given_options", "inputs_of"]

log = logging.getLogger("asr.decode")

_PARTIAL_VERSION = 1


def given_options(cfg: Mapping[str, Any]) -> dict[str, Any]:
    """The search options set in ``cfg`` (``conf/decode.yaml`` leaves them null: the model's recorded options, then
    the defaults of :class:`~asr.decoding.search.DecodingOptions`, see :func:`~asr.decoding.search.resolve_options`)."""
    return {f.name: cfg[f.name] for f in dataclasses.fields(DecodingOptions) if cfg.get(f.name) is not None}


def audio_list(cfg: Mapping[str, Any]) -> list[str]:
    """``cfg.audio`` as a list of paths: ``audio=x.wav`` (a string, no brackets) is one file, not its characters.

    Raises
    ------
    ValueError
        ``audio`` is neither a string nor a list of strings.
    """
    audio = cfg.get("audio") or []
    if isinstance(audio, (str, os.PathLike)):
        return [str(audio)]
    try:
        items = list(audio)
    except TypeError:
        raise ValueError(f"audio must be a file path or a list of them, got {audio!r}") from None
    for a in items:
        if not isinstance(a, (str, os.PathLike)):
            raise ValueError(f"audio must be a file path or a list of them; item {a!r} is {type(a).__name__}")
    return [str(a) for a in items]


def _ensemble_paths(cfg: Mapping[str, Any]) -> list[str]:
    """The ``ensemble`` checkpoints (the members after ``ckpt``)."""
    return [str(c) for c in (cfg.get("ensemble") or [])]


def resume_settings(cfg: Mapping[str, Any], opts: DecodingOptions) -> dict[str, Any]:
    """What the partial results depend on: the model (path and content hash, :func:`~asr.decoding.engine.model_sha256`),
    the ensemble's other members (likewise; the key only when ``ensemble`` is not empty), the search options and
    the data source. Batch size, ``max_frames``, threads and device are left out: batched search gives the
    per-utterance result (up to float noise)."""
    if cfg.get("data_dir"):
        source: dict[str, Any] = {"data_dir": os.path.abspath(cfg["data_dir"]), "dump_dir": os.path.abspath(cfg["dump_dir"]) if cfg.get("dump_dir") else None}
        if cfg.get("dump_dir"):
            source["dump_sig"] = input_signature(Path(cfg["dump_dir"]) / "feats.pt")
    else:
        # abspath, not resolve(): a symlink loop must become an errors.tsv row, not stop the decode here.
        source = {"audio": [os.path.abspath(str(a)) for a in audio_list(cfg)]}
    settings = {
        "version": _PARTIAL_VERSION,
        "checkpoint": str(Path(cfg["ckpt"]).resolve()),
        "checkpoint_sha256": model_sha256(cfg["ckpt"]),
        **dataclasses.asdict(opts),  # every search option
        **source,
        "longform_max_s": float(cfg.get("longform_max_s", 0) or 0),
    }
    if str(cfg.get("encoder_dtype", "float32")) != "float32":  # bf16 differs by more than float noise: a key of its own
        settings["encoder_dtype"] = str(cfg["encoder_dtype"])
    if cfg.get("lm"):
        settings["lm"] = {"path": str(Path(cfg["lm"]).resolve()), "sha256": model_sha256(cfg["lm"])}
    members = _ensemble_paths(cfg)
    if members:
        settings["ensemble"] = [{"checkpoint": str(Path(c).resolve()), "checkpoint_sha256": model_sha256(c)} for c in members]
    return settings


def inputs_of(cfg: Mapping[str, Any], engine: Engine) -> tuple[list[EngineInput], list[tuple[str, str]]]:
    """The engine inputs of ``cfg``'s data dir (dumped features where the dump has them) or audio files, and the
    errors known before decoding (data dir entries skipped by :func:`~asr.data.datadir.check_data_dir`)."""
    if cfg.get("data_dir"):
        ds = load_split(cfg["data_dir"], cfg.get("dump_dir"), engine.tokenizer, engine.fbank, max_bad_fraction=float(cfg.get("max_bad_fraction", DEFAULT_MAX_BAD_FRACTION)))
        errors = [(b.file, f"utterance {b.utt_id}: {b.reason}") for b in ds.skipped]
        return [EngineInput(u.utt_id, path=u.wav, feats=ds.feats.get(u.utt_id), ref=u.text, speaker=u.speaker) for u in ds.utts], errors
    taken: set[str] = set()
    return [EngineInput(utt_id_for(p, taken), path=p) for p in audio_list(cfg)], []


def decode(cfg: Mapping[str, Any]) -> dict[str, Any]:
    """Decode per ``cfg`` (see ``conf/decode.yaml`` and :mod:`asr.cli.decode`); returns the ``meta.json`` content.

    ``ckpt`` is a training checkpoint or a model directory (``asr-export``); so is every ``ensemble`` member.
    Bad input is reported, not fatal: an input the engine cannot use becomes an ``errors.tsv`` row
    (``file<TAB>reason``; a data dir entry's reason starts with ``utterance <id>:``), and so are the data dir
    entries skipped by :func:`asr.data.datadir.check_data_dir` (at most ``max_bad_fraction``). Batches, long-form
    segmentation and error isolation are :class:`~asr.decoding.engine.Engine`'s.

    Raises
    ------
    ValueError
        A bad search option, ``batch_size``, ``max_frames`` or ``device`` (before any model is read); neither
        ``data_dir`` nor ``audio`` given; no utterance could be decoded (``errors.tsv`` is written first and the
        message names the first error); an ensemble member whose tokenizer or features differ from ``ckpt``'s or,
        with ``ctc_weight`` > 0, without a CTC branch.
    FileNotFoundError
        No model at ``ckpt`` (or an ensemble path).
    asr.data.datadir.DataDirError
        The data dir lacks a required file or has more than ``max_bad_fraction`` bad entries.
    RuntimeError
        Another ``asr-decode`` holds ``out_dir``'s lock.
    """
    if parallel_requested(cfg):
        from asr.decoding.parallel import decode_parallel  # Lightning's launchers: imported only when asked for

        return decode_parallel(cfg)
    check_settings(cfg)
    configure_threads(int(cfg.get("threads", 0) or 0))
    engine = load_engine(cfg)
    out_dir = Path(cfg["out_dir"])
    with OutDirLock(out_dir):
        remove_stale_outputs(out_dir, overwrite=bool(cfg.get("overwrite")))
        inputs, errors = inputs_of(cfg, engine)
        return decode_inputs(cfg, engine, out_dir, inputs, errors)


def parallel_requested(cfg: Mapping[str, Any]) -> bool:
    """Whether ``cfg`` asks for several processes (``num_procs`` > 1 or ``num_nodes`` > 1), or this process was
    started as one of several by torchrun (``WORLD_SIZE`` > 1) or SLURM (``SLURM_NTASKS`` > 1 inside a batch job)."""
    if int(cfg.get("num_procs", 1) or 1) > 1 or int(cfg.get("num_nodes", 1) or 1) > 1:
        return True
    if int(os.environ.get("WORLD_SIZE", "1") or 1) > 1:
        return True
    return int(os.environ.get("SLURM_NTASKS", "1") or 1) > 1 and os.environ.get("SLURM_JOB_NAME") not in ("bash", "interactive")


def check_settings(cfg: Mapping[str, Any]) -> SegmentOptions:
    """Refuse a bad search option, ``batch_size``, ``max_frames``, ``device`` or a missing input (ValueError), before
    any model is read; returns the long-form segmentation options."""
    given = given_options(cfg)
    resolve_options(None, given)  # bad option values fail here, before any model is read
    check_batching(cfg.get("batch_size", 16), cfg.get("max_frames", 0) or 0)
    check_device(cfg.get("device", "cpu"))
    check_encoder_dtype(str(cfg.get("encoder_dtype", "float32")))
    longform_max_s = float(cfg.get("longform_max_s", 0) or 0)
    if not cfg.get("data_dir") and not audio_list(cfg):
        raise ValueError("asr-decode needs data_dir=<Kaldi data dir> or audio=[file,...]")
    return SegmentOptions(max_s=longform_max_s, min_s=min(float(cfg.get("longform_min_s", 3.0)), longform_max_s))


def load_engine(cfg: Mapping[str, Any], device: str | None = None) -> Engine:
    """The :class:`~asr.decoding.engine.Engine` of ``cfg`` (``ckpt``, ``ensemble``, search options, batching,
    long-form segmentation) on ``device`` (default ``cfg.device``). Raises as :func:`check_settings` and
    :meth:`~asr.decoding.engine.Engine.load`."""
    seg = check_settings(cfg)
    return Engine.load(
        cfg["ckpt"], _ensemble_paths(cfg), given_options(cfg), lm=cfg.get("lm") or None, device=device or cfg.get("device", "cpu"), batch_size=cfg.get("batch_size", 16),
        max_frames=cfg.get("max_frames", 0) or 0, segments=seg, encoder_dtype=str(cfg.get("encoder_dtype", "float32")),
    )


def decode_inputs(
    cfg: Mapping[str, Any], engine: Engine, out_dir: Path, inputs: list[EngineInput], errors: list[tuple[str, str]],
    part: tuple[int, int] | None = None, all_keys: set[str] | None = None,
) -> dict[str, Any]:
    """Decode ``inputs`` into the locked, cleaned folder ``out_dir`` and return its ``meta.json`` content; ``errors``
    are ``(file, reason)`` rows known before decoding.

    ``part=(rank, world_size)``: ``out_dir`` is one process's part of a parallel decode
    (:mod:`asr.decoding.parallel`): recorded in the resume settings, and a part without a decodable input is
    written (errors only) instead of refused. ``all_keys``: the ids of the whole job, which a long recording's
    segment ids must not repeat (default: those of ``inputs``).

    Raises
    ------
    ValueError
        Nothing decodable (not for a part): ``errors.tsv`` is written first and the message names the first error.
    """
    settings = resume_settings(cfg, engine.options)
    if part is not None:
        settings["part"] = list(part)
    stored: dict[str, dict] = {}
    atts: dict[str, np.ndarray] = {}
    shard = 0
    if cfg.get("resume", True):
        stored, atts, shard = load_partial(out_dir, settings, None)
    else:
        remove_partial(out_dir)
    write_partial_settings(out_dir, settings)
    sigs = {inp.key: input_signature(inp.path) if inp.path else "" for inp in inputs}
    rows: dict[str, dict] = {}
    shift = engine.fbank.frame_shift_s

    def cached(res: InputResult, unit: Unit) -> dict | None:
        row = stored.get(unit.unit_id)
        if row is not None and (row.get("ref"), row.get("n_frames"), row.get(INPUT_KEY)) == (res.input.ref, unit.n_frames, sigs[res.key]):
            rows[unit.unit_id] = row
            return row
        return None

    part_file = open(out_dir / PARTIAL_RESULTS, "a", encoding="utf-8")

    def on_batch(done: list[tuple[InputResult, Unit]]) -> None:
        nonlocal shard
        batch_rows, batch_atts = [], {}
        for res, unit in done:
            if unit.hyp is None:
                continue
            batch_atts[unit.unit_id] = attention_matrix(unit.hyp)
            row = hypothesis_row(unit.unit_id, res.input.ref, engine.tokenizer.decode(unit.hyp.tokens), unit.hyp, engine.tokenizer.pieces(unit.hyp.tokens), unit.n_frames, unit.enc_frames)
            batch_rows.append({**row, INPUT_KEY: sigs[res.key]})
        save_batch(out_dir, shard, batch_rows, batch_atts, part_file)
        shard += 1
        atts.update(batch_atts)
        rows.update((r["utt_id"], r) for r in batch_rows)

    final: dict[str, dict] = {}
    seg_lines: list[dict] = []
    n_segmented = n_segments = 0
    with part_file:
        for res in engine.run(inputs, cached=cached, on_batch=on_batch, all_keys=all_keys):
            what = f"utterance {res.key}: " if cfg.get("data_dir") else ""
            where = res.input.path or res.key
            if res.error is not None:
                log.error("skipping %s: %s", where, res.error)
                errors.append((where, what + res.error))
                continue
            errors += [(where, f"utterance {u.unit_id}: {u.error}") for u in res.units if u.error]
            named = {} if cfg.get("data_dir") else {"path": res.input.path}  # audio files: the name as given
            if not res.segmented:
                if res.key in rows:
                    final[res.key] = {**rows[res.key], **named}
                continue
            n_segmented, n_segments = n_segmented + 1, n_segments + len(res.units)
            seg_rows = [rows.get(u.unit_id) for u in res.units]
            if all(r is None for r in seg_rows):
                continue
            final[res.key] = {**stitch(res.key, res.input.ref, seg_rows, [(u.start, u.end) for u in res.units], shift), **named}
            seg_lines += [{"utt_id": res.key, **{k: v for k, v in sg.items() if k != "tokens"}} for sg in final[res.key]["segments"]]
    if not final and part is None:
        remove_partial(out_dir)  # nothing decoded: no partial row to keep
        if errors:
            write_errors(errors, out_dir)
            raise ValueError(f"no utterance to decode: {len(errors)} error(s), e.g. {errors[0][0]}: {errors[0][1]}; see {out_dir / 'errors.tsv'}")
        raise ValueError("no utterance to decode")
    ids = write_final(out_dir, final, {u: atts[u] for u in rows}, seg_lines)
    if errors:
        write_errors(errors, out_dir)
    resumed = sum(1 for r in rows.values() if r is stored.get(r["utt_id"]))
    info = _meta(cfg, engine, n_utts=len(ids), resumed_utts=resumed, n_errors=len(errors), n_segmented=n_segmented, n_segments=n_segments)
    write_meta(info, out_dir)
    remove_partial(out_dir)
    if part is not None:
        return info
    # Counts in the user's units: utterances. Long recordings are decoded as several segments, so the number of
    # decoded items can exceed the number of utterances; say so rather than print a larger count.
    units = f" as {len(rows)} decoding units ({n_segmented} long recording(s) split into {n_segments} segments)" if n_segmented else ""
    reused = f", {resumed} unit(s) resumed from an earlier run" if resumed else ""
    quiet = f", {info['n_no_speech']} without speech (empty text)" if info["n_no_speech"] else ""
    print(
        f"decoded {len(ids)} utterances{units}{reused} ({info['audio_s']:.1f} s of audio newly decoded) in {info['decode_s']:.1f} s, RTF {info['rtf']:.4f}; "
        f"{info['n_length_limit']} hypotheses stopped at the length limit{quiet} -> {out_dir}"
    )
    return info


def _meta(cfg: Mapping[str, Any], engine: Engine, **counts: Any) -> dict[str, Any]:
    """``meta.json``: the model's description, the search options, the data source and run statistics
    (``n_length_limit``: newly decoded units whose best hypothesis stopped at the length limit, ``max_len_ratio``,
    instead of eos; ``n_no_speech``: units decided to hold no speech, given an empty text)."""
    model_cfg, stats = engine.info["model_cfg"], engine.stats
    members = _ensemble_paths(cfg)
    return build_meta(
        engine.options,
        checkpoint=str(cfg["ckpt"]),
        **({"lm": str(cfg["lm"])} if cfg.get("lm") else {}),
        **({"ensemble": [str(cfg["ckpt"]), *members]} if members else {}),
        attention=model_cfg["attention"]["type"],
        encoder=model_cfg["encoder"]["type"],
        decoder=model_cfg["decoder"]["type"],
        frame_shift_s=engine.fbank.frame_shift_s,
        subsampling=engine.model.subsampling_factor,
        data_dir=str(cfg["data_dir"]) if cfg.get("data_dir") else None,
        dump_dir=str(cfg["dump_dir"]) if cfg.get("data_dir") and cfg.get("dump_dir") else None,
        **counts,
        max_frames=engine.max_frames,
        longform_max_s=engine.segments.max_s,
        longform_min_s=engine.segments.min_s,
        n_batches=stats["n_batches"],
        decode_s=round(stats["decode_s"], 2),
        audio_s=round(stats["audio_s"], 2),
        rtf=round(stats["decode_s"] / stats["audio_s"], 4) if stats["audio_s"] else 0.0,
        n_length_limit=stats["n_length_limit"],
        n_no_speech=stats["n_no_speech"],
        device=str(engine.device),
        threads=torch.get_num_threads(),
    )
