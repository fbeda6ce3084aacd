"""asr-decode: decode a data dir or audio files with a trained checkpoint.

    asr-decode ckpt=exp/an4_pblstm_location_aware/checkpoints/best.ckpt data_dir=data/test \
        dump_dir=dump/test out_dir=exp/an4_pblstm_location_aware/decode_test beam_size=10
    asr-decode ckpt=best.ckpt 'audio=[a.wav,b.flac]' out_dir=my_decode
    asr-decode ckpt=exp/a/checkpoints/avg5.ckpt 'ensemble=[exp/b/checkpoints/avg5.ckpt]' data_dir=... out_dir=...

Everything needed (model config, weights, CMVN, tokenizer) comes from the checkpoint. Writes to
``out_dir``: ``results.jsonl`` (per utterance: id, hyp, ref, score, tokens, frames), ``attention.npz``
(``(U + 1, S)`` weights per utterance), ``hyp.trn`` / ``ref.trn`` (sclite), ``meta.json`` (settings,
decode time, real-time factor), ``errors.tsv`` for inputs that could not be read or decoded and, for
recordings longer than ``longform_max_s`` (split at pauses, :mod:`asr.decoding.longform`), ``segments.jsonl``.
The folder's format has one owner, :mod:`asr.decoding.results`: the decode holds its lock
(:class:`~asr.decoding.results.OutDirLock`) and first removes an earlier decode's final outputs.

Decoding is resumable. While it runs, every finished batch is stored at once: first its attention
matrices as ``out_dir/.partial/attention_<n>.npz`` (written atomically), then its rows appended to
``out_dir/results.partial.jsonl`` (flushed and fsynced). An utterance counts as done only when its row is
complete and its attention is in its shard. A decode that is killed and started again with the same
settings (``resume=true``, the default; the settings are kept in ``out_dir/.partial/settings.json``)
decodes only the utterances not done yet, and the final files are the same as those of an uninterrupted
run. The final files are written once, at the end, after which the partial files are removed.

Ensembles: ``ensemble=[ckpt, ...]`` names more checkpoints decoded together with ``ckpt`` (the first member),
their scores combined at every search step (:mod:`asr.decoding.search`). The members must have the same
tokenizer (vocabulary pieces and special ids) and feature settings (``feat_dim``, frame shift) as ``ckpt``;
their architectures and encoder frame rates may differ. CMVN is part of each model (its statistics are buffers
in the checkpoint, applied in ``AttentionASRModel.encode``) and the dataset gives un-normalised fbank, so
members trained with different CMVN statistics are each normalised with their own. The first member gives the
tokenizer, the features, the attention weights (``attention.npz``, plots) and ``enc_frames``.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import os
import time
from pathlib import Path
from typing import Any

import hydra
import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf
from tqdm import tqdm

from asr.data.datadir import DEFAULT_MAX_BAD_FRACTION, Utterance
from asr.data.dataset import ASRDataset, LengthBucketBatchSampler, load_split, make_collate
from asr.decoding.longform import SegmentOptions, find_segments, segment_id, stitch
from asr.decoding.results import (
    INPUT_KEY,
    PARTIAL_DIR,
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
from asr.decoding.search import DecodingOptions, Hypothesis, decode_batch, resolve_options
from asr.features.audio import AudioError, audio_duration, load_audio
from asr.features.fbank import FbankOptions, compute_fbank
from asr.models.checkpoint import fbank_options, load_checkpoint
from asr.models.asr_model import AttentionASRModel
from asr.text.tokenizer import Tokenizer
from asr.utils.io import file_sha256 as _file_sha256
from asr.utils.paths import CONF_DIR

log = logging.getLogger("asr.decode")


def _utt_id_for(path: str, taken: set[str]) -> str:
    """Utterance id of a user audio file: its stem with whitespace and ``()`` replaced by ``_`` (an sclite
    trn line cannot hold them), made unique with ``-2``, ``-3``, ... when two files share a stem."""
    stem = "".join("_" if (c.isspace() or c in "()") else c for c in Path(path).stem) or "utt"
    uid, k = stem, 1
    while uid in taken:
        k += 1
        uid = f"{stem}-{k}"
    taken.add(uid)
    return uid


def _min_samples(fbank: FbankOptions, min_frames: int) -> int:
    """Samples of the shortest waveform giving ``min_frames`` fbank frames (one window + hops)."""
    return math.ceil(fbank.sample_rate * (fbank.frame_length_ms + (min_frames - 1) * fbank.frame_shift_ms) / 1000)


def _too_short(n_samples: int, fbank: FbankOptions, min_frames: int) -> str | None:
    """``"too short: N ms < minimum M ms"`` when a waveform of ``n_samples`` gives fewer than ``min_frames``
    fbank frames (the fewest the encoder needs for one output frame), else None."""
    need = _min_samples(fbank, min_frames)
    if n_samples >= need:
        return None
    return f"too short: {1000 * n_samples / fbank.sample_rate:.0f} ms < minimum {1000 * need / fbank.sample_rate:.0f} ms"


def _load_fbank(path: str, fbank: FbankOptions, min_frames: int) -> torch.Tensor:
    """``(T, F)`` fbank of an audio file, refusing one too short for the model.

    Raises
    ------
    AudioError
        As :func:`load_audio`, or ``too short: N ms < minimum M ms``.
    """
    wav = load_audio(path, fbank.sample_rate)
    short = _too_short(wav.numel(), fbank, min_frames)
    if short:
        raise AudioError(path, short)
    return compute_fbank(wav, fbank)


def _audio_utts(paths: list[str], fbank: FbankOptions, min_frames: int = 1) -> tuple[list[Utterance], dict[str, torch.Tensor], list[tuple[str, str]]]:
    """Utterances for user audio files (id: see `_utt_id_for`); unreadable or too short files (fewer than
    ``min_frames`` fbank frames) are reported, not fatal."""
    utts, feats, errors = [], {}, []
    taken: set[str] = set()
    for p in paths:
        uid = _utt_id_for(str(p), taken)
        try:
            feats[uid] = _load_fbank(p, fbank, min_frames)
            wav_s = (feats[uid].shape[0] - 1) * fbank.frame_shift_s + fbank.frame_length_ms / 1000
            utts.append(Utterance(uid, str(p), "", "unknown", wav_s))
        except (AudioError, ValueError) as exc:
            log.error("skipping %s: %s", p, exc)
            errors.append((str(p), str(exc)))
    return utts, feats, errors


def _feats_problem(x: torch.Tensor, feat_dim: int, min_frames: int, frame_shift_s: float) -> str | None:
    """Why a dumped ``(T, F)`` feature matrix cannot be decoded (wrong shape, too few frames, NaN/Inf), or None."""
    if x.ndim != 2 or x.shape[1] != feat_dim:
        return f"feature dump entry has shape {tuple(x.shape)}, expected (T, {feat_dim})"
    if x.shape[0] < min_frames:
        return f"too short: {x.shape[0]} feature frames ({1000 * x.shape[0] * frame_shift_s:.0f} ms) < minimum {min_frames} ({1000 * min_frames * frame_shift_s:.0f} ms)"
    if not bool(torch.isfinite(x).all()):
        return f"feature dump entry holds {int((~torch.isfinite(x)).sum())} NaN or infinite value(s)"
    return None


def _check_data_dir_audio(ds: ASRDataset, fbank: FbankOptions, min_frames: int = 1) -> tuple[list[Utterance], dict[str, torch.Tensor], list[tuple[str, str]]]:
    """Features of the data dir utterances missing from the dump, computed now so that an unreadable
    audio file is reported (and its utterance left out) instead of stopping the decoding halfway; dumped
    features with fewer than ``min_frames`` frames, the wrong dimension or NaN/Inf values are reported too."""
    utts, feats, errors = [], dict(ds.feats), []
    for u in ds.utts:
        if u.utt_id not in feats:
            try:
                feats[u.utt_id] = _load_fbank(u.wav, fbank, min_frames)
            except (AudioError, ValueError) as exc:
                log.error("skipping utterance %s: %s", u.utt_id, exc)
                errors.append((u.wav, f"utterance {u.utt_id}: {exc}"))
                continue
        else:
            problem = _feats_problem(feats[u.utt_id], fbank.num_mel_bins, min_frames, fbank.frame_shift_s)
            if problem:
                log.error("skipping utterance %s: %s", u.utt_id, problem)
                errors.append((u.wav, f"utterance {u.utt_id}: {problem}"))
                del feats[u.utt_id]
                continue
        utts.append(u)
    return utts, feats, errors


_PARTIAL_VERSION = 1


def _resume_settings(cfg: DictConfig, opts: DecodingOptions) -> dict[str, Any]:
    """What the partial results depend on: the checkpoint (path and content hash), the ensemble's other
    checkpoints (likewise; the key only when ``ensemble`` is not empty), the search options and the data
    source. Batch size, ``max_frames``, threads and device are left out: batched search gives the
    per-utterance result (up to float noise)."""
    if cfg.get("data_dir"):
        source: dict[str, Any] = {"data_dir": os.path.abspath(cfg.data_dir), "dump_dir": os.path.abspath(cfg.dump_dir) if cfg.get("dump_dir") else None}
        if cfg.get("dump_dir"):
            source["dump_sig"] = input_signature(Path(cfg.dump_dir) / "feats.pt")
    else:
        # abspath, not resolve(): a symlink loop must become an errors.tsv row, not stop the decode here.
        source = {"audio": [os.path.abspath(str(a)) for a in _audio_list(cfg)]}
    settings = {
        "version": _PARTIAL_VERSION,
        "checkpoint": str(Path(cfg.ckpt).resolve()),
        "checkpoint_sha256": _file_sha256(cfg.ckpt),
        **dataclasses.asdict(opts),  # every search option
        **source,
        "longform_max_s": float(cfg.get("longform_max_s", 0) or 0),
    }
    members = _ensemble_paths(cfg)
    if members:
        settings["ensemble"] = [{"checkpoint": str(Path(c).resolve()), "checkpoint_sha256": _file_sha256(c)} for c in members]
    return settings


def _given_options(cfg: DictConfig) -> dict[str, Any]:
    """The search options set in ``cfg`` (``conf/decode.yaml`` leaves them null: the defaults of
    :class:`~asr.decoding.search.DecodingOptions`, see :func:`~asr.decoding.search.resolve_options`)."""
    return {f.name: cfg[f.name] for f in dataclasses.fields(DecodingOptions) if cfg.get(f.name) is not None}


def _audio_list(cfg: DictConfig) -> list[str]:
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


def min_input_frames(models: list[AttentionASRModel], limit: int = 4096) -> int:
    """Fewest feature frames every member's encoder turns into at least one encoder frame (its subsampling).

    Raises
    ------
    ValueError
        No count up to ``limit`` works.
    """
    for n in range(1, limit + 1):
        if all(int(m.encoder.output_lengths(torch.tensor([n]))[0]) >= 1 for m in models):
            return n
    raise ValueError(f"no input of up to {limit} frames gives an encoder frame")


def _decode_isolated(models: list[AttentionASRModel], xs: torch.Tensor, lens: torch.Tensor, opts: DecodingOptions) -> list[Hypothesis | Exception]:
    """:func:`decode_batch`, one failure not taking the others down: when the batch fails it is decoded one
    utterance at a time and an utterance that fails alone gets its exception in place of a hypothesis."""
    try:
        return list(decode_batch(models, xs, lens, opts))
    except Exception as exc:  # noqa: BLE001 -- any model error of one input must not stop the others
        if xs.shape[0] == 1:
            return [exc]
        log.warning("batch of %d failed (%s: %s): decoding its utterances one by one", xs.shape[0], type(exc).__name__, exc)
    out: list[Hypothesis | Exception] = []
    for i in range(xs.shape[0]):
        n = int(lens[i])
        try:
            out.append(decode_batch(models, xs[i : i + 1, :n], lens[i : i + 1], opts)[0])
        except Exception as exc:  # noqa: BLE001
            out.append(exc)
    return out


def _ensemble_paths(cfg: DictConfig) -> list[str]:
    """The ``ensemble`` checkpoints (the members after ``ckpt``)."""
    return [str(c) for c in (cfg.get("ensemble") or [])]


def _vocab_difference(a: Tokenizer, b: Tokenizer) -> str | None:
    """How tokenizer ``b`` differs from ``a`` in what decoding depends on (size, special ids, the piece of
    every id), or None when it does not."""
    if a.vocab_size != b.vocab_size:
        return f"vocab_size {b.vocab_size} instead of {a.vocab_size}"
    for name in ("pad_id", "unk_id", "sos_id", "eos_id"):
        if getattr(a, name) != getattr(b, name):
            return f"{name} {getattr(b, name)} instead of {getattr(a, name)}"
    for i in range(a.vocab_size):
        if a.sp.id_to_piece(i) != b.sp.id_to_piece(i):
            return f"token {i} is {b.sp.id_to_piece(i)!r} instead of {a.sp.id_to_piece(i)!r}"
    return None


def _load_members(cfg: DictConfig, first: AttentionASRModel, tok: Tokenizer, meta: dict[str, Any], opts: DecodingOptions) -> list[AttentionASRModel]:
    """All ensemble members: ``first`` (the model of ``ckpt``, with tokenizer ``tok`` and ``meta``) and the
    models of the ``ensemble`` checkpoints, checked against it.

    Raises
    ------
    ValueError
        A member's tokenizer or feature settings (``feat_dim``, ``frame_shift_s``) differ from those of
        ``ckpt``, or, with an ensemble and ``ctc_weight`` > 0, a member has no CTC branch; the message names
        the checkpoint and what differs.
    """
    models = [first]
    for path in _ensemble_paths(cfg):
        model, member_tok, member_meta = load_checkpoint(path)
        diff = _vocab_difference(tok, member_tok)
        if diff:
            raise ValueError(f"ensemble checkpoint {path}: its tokenizer differs from that of ckpt {cfg.ckpt} ({diff}); members must share one tokenizer")
        for key, default in (("feat_dim", 80), ("frame_shift_s", 0.01)):
            if member_meta.get(key, default) != meta.get(key, default):
                raise ValueError(
                    f"ensemble checkpoint {path}: {key} {member_meta.get(key, default)} differs from {meta.get(key, default)} of ckpt {cfg.ckpt}; members must share the features"
                )
        models.append(model)
    if len(models) > 1 and opts.ctc_weight > 0:
        for path, model in zip([cfg.ckpt, *_ensemble_paths(cfg)], models):
            if model.ctc is None:
                raise ValueError(f"checkpoint {path} has no CTC branch: ensemble decoding with ctc_weight > 0 needs one in every member")
    return models


def decode(cfg: DictConfig | dict[str, Any]) -> dict[str, Any]:
    """Decode per ``cfg`` (see ``conf/decode.yaml``); returns the ``meta.json`` content.

    Bad input is reported, not fatal: an audio file that cannot be used (missing, not audio, empty,
    NaN/Inf samples, shorter than one 25 ms window, ...) is listed with the reason in
    ``<out_dir>/errors.tsv`` (``file<TAB>reason``) and the other utterances are still decoded; so are
    the data dir entries skipped by :func:`asr.data.datadir.check_data_dir` (at most ``max_bad_fraction``,
    default 0.05, of them). User audio files get their stem as utterance id (whitespace and ``()``
    replaced by ``_``; ``-2``, ``-3`` appended to repeated stems). Batches hold at most ``batch_size``
    utterances and, when ``max_frames`` > 0, at most ``max_frames`` padded feature frames (a longer single
    utterance is decoded alone), which bounds memory for long recordings.

    Resuming (module docstring): after each batch its attention goes to ``.partial/attention_<n>.npz``
    and its rows to ``results.partial.jsonl``. With ``resume`` true (the default) partial files made with
    the same settings (checkpoint content, ensemble checkpoints' content, beam_size, max_len_ratio, min_len,
    length_penalty, ctc_weight, data source; see ``.partial/settings.json``) are read first, a truncated last
    line ignored, and only the other utterances are decoded; partial files of other settings are removed with a warning, as they
    are with ``resume`` false. The final files (``results.jsonl`` sorted by id, ``attention.npz``,
    ``hyp.trn``, ``ref.trn``, ``errors.tsv``, ``meta.json``) are written at the end from both, then the
    partial files are removed. ``meta.json`` counts the reused utterances in ``resumed_utts``; its
    ``n_batches``, ``decode_s``, ``audio_s`` and ``rtf`` describe this run's decoding only.

    Robustness (issue 12): the search options and ``max_frames`` are checked before the checkpoint is read;
    inputs too short for the encoder's subsampling and bad dumped features become ``errors.tsv`` rows; a
    model error on one utterance fails only that one (the batch is decoded again utterance by utterance);
    a partial row is reused only when its input file's size and mtime are unchanged
    (:func:`~asr.decoding.results.input_signature`).

    With ``ensemble`` (module docstring) every batch is decoded by all members together; ``meta.json`` then
    lists them all under ``ensemble`` (``ckpt`` first), and its other model fields (``attention``,
    ``encoder``, ``subsampling``, ...), ``enc_frames`` and the attention weights are those of ``ckpt``.

    Raises
    ------
    ValueError
        Neither ``data_dir`` nor ``audio`` given, or no utterance could be read (``errors.tsv`` is
        written first and the message names the first error); an ``ensemble`` checkpoint whose tokenizer or
        feature settings differ from those of ``ckpt``, or (``ctc_weight`` > 0) an ensemble member without a
        CTC branch (the message names the checkpoint and the difference; raised before anything is decoded).
    asr.data.datadir.DataDirError
        The data dir lacks a required file or has more than ``max_bad_fraction`` bad entries.
    RuntimeError
        Another ``asr-decode`` holds ``out_dir``'s lock.
    """
    cfg = OmegaConf.create(cfg) if isinstance(cfg, dict) else cfg
    if cfg.get("threads"):
        torch.set_num_threads(int(cfg.threads))
    device = torch.device(cfg.get("device", "cpu"))
    given = _given_options(cfg)
    resolve_options(None, given)  # bad option values fail here, before any checkpoint is read
    max_frames = cfg.get("max_frames", 0) or 0
    if isinstance(max_frames, bool) or not isinstance(max_frames, int) or max_frames < 0:
        raise ValueError(f"max_frames must be an integer >= 0 (0: no cap), got {max_frames!r}")
    longform_max_s = float(cfg.get("longform_max_s", 0) or 0)
    audio_paths = _audio_list(cfg)
    model, tok, meta = load_checkpoint(cfg.ckpt)
    opts = resolve_options([model], given)
    fbank = fbank_options(meta)
    seg_opts = SegmentOptions(max_s=longform_max_s, min_s=min(float(cfg.get("longform_min_s", 3.0)), longform_max_s), frame_shift_s=fbank.frame_shift_s)
    models = [m.to(device) for m in _load_members(cfg, model, tok, meta, opts)]
    min_frames = min_input_frames(models)
    out_dir = Path(cfg.out_dir)
    with OutDirLock(out_dir):
        remove_stale_outputs(out_dir)
        return _decode_locked(cfg, opts, seg_opts, max_frames, audio_paths, models, tok, meta, fbank, min_frames, out_dir, device)


def _decode_locked(
    cfg: DictConfig, opts: DecodingOptions, seg_opts: SegmentOptions, max_frames: int, audio_paths: list[str], models: list[AttentionASRModel],
    tok: Tokenizer, meta: dict[str, Any], fbank: FbankOptions, min_frames: int, out_dir: Path, device: torch.device,
) -> dict[str, Any]:
    """The body of :func:`decode` once ``out_dir`` is locked and cleaned."""
    model = models[0]
    errors: list[tuple[str, str]] = []
    if cfg.get("data_dir"):
        ds = load_split(cfg.data_dir, cfg.get("dump_dir"), tok, fbank, max_bad_fraction=float(cfg.get("max_bad_fraction", DEFAULT_MAX_BAD_FRACTION)))
        errors = [(b.file, f"utterance {b.utt_id}: {b.reason}") for b in ds.skipped]
        utts, feats, audio_errors = _check_data_dir_audio(ds, fbank, min_frames)
        errors += audio_errors
    elif audio_paths:
        utts, feats, errors = _audio_utts(audio_paths, fbank, min_frames)
    else:
        raise ValueError("asr-decode needs data_dir=<Kaldi data dir> or audio=[file,...]")
    if not utts:
        if errors:
            write_errors(errors, out_dir)
            raise ValueError(f"no utterance to decode: {len(errors)} error(s), e.g. {errors[0][0]}: {errors[0][1]}; see {out_dir / 'errors.tsv'}")
        raise ValueError("no utterance to decode")
    # Long recordings become segments, decoded as utterances of their own (asr.decoding.longform).
    units: list[Utterance] = []
    parents: dict[str, tuple[Utterance, list[tuple[int, int]]]] = {}
    sig_of: dict[str, str] = {}
    taken = {u.utt_id for u in utts}
    for u in utts:
        sig = input_signature(u.wav)
        bounds = find_segments(feats[u.utt_id], seg_opts)
        if len(bounds) == 1:
            units.append(u)
            sig_of[u.utt_id] = sig
            continue
        parents[u.utt_id] = (u, bounds)
        x = feats.pop(u.utt_id)
        for k, (a, b) in enumerate(bounds):
            sid = segment_id(u.utt_id, k)
            if sid in taken:
                raise ValueError(f"segment id {sid} of the long recording {u.wav} is also an utterance id; rename one")
            feats[sid] = x[a:b]
            units.append(Utterance(sid, u.wav, "", u.speaker, (b - a) * fbank.frame_shift_s))
            sig_of[sid] = sig
    if parents:
        log.info("%d recording(s) longer than %g s split into %d segments", len(parents), seg_opts.max_s, sum(len(b) for _, b in parents.values()))
    ds = ASRDataset(units, tok, feats, fbank)
    wav_of = {u.utt_id: u.wav for u in units}
    out_dir.mkdir(parents=True, exist_ok=True)
    settings = _resume_settings(cfg, opts)
    rows: dict[str, dict] = {}
    atts: dict[str, np.ndarray] = {}
    shard = 0
    if cfg.get("resume", True):
        wanted = {u.utt_id: (u.text, ds.num_frames(i), sig_of[u.utt_id]) for i, u in enumerate(ds.utts)}
        rows, atts, shard = load_partial(out_dir, settings, wanted)
        if rows:
            log.info("resuming %s: %d of %d utterances already decoded", out_dir, len(rows), len(ds))
    else:
        remove_partial(out_dir)
    resumed = len(rows)
    write_partial_settings(out_dir, settings)
    todo = [i for i, u in enumerate(ds.utts) if u.utt_id not in rows]
    ds_todo = ASRDataset([ds.utts[i] for i in todo], tok, ds.feats, fbank)
    sampler = LengthBucketBatchSampler([ds_todo.num_frames(i) for i in range(len(ds_todo))], int(cfg.batch_size), max_frames, shuffle=False, num_replicas=1, rank=0)
    loader = torch.utils.data.DataLoader(ds_todo, batch_sampler=sampler, collate_fn=make_collate(tok.pad_id))
    audio_s = 0.0
    t0 = time.perf_counter()
    with open(out_dir / PARTIAL_RESULTS, "a", encoding="utf-8") as part_file:
        for batch in tqdm(loader, desc=f"decode beam={opts.beam_size}", unit="batch"):
            batch = batch.to(device)
            hyps = _decode_isolated(models, batch.feats, batch.feat_lens, opts)
            enc_lens = model.encoder.output_lengths(batch.feat_lens)  # the first member's
            batch_rows, batch_atts = [], {}
            for i, h in enumerate(hyps):
                uid = batch.ids[i]
                audio_s += int(batch.feat_lens[i]) * fbank.frame_shift_s
                if isinstance(h, Exception):
                    log.error("decoding %s failed: %s: %s", uid, type(h).__name__, h)
                    errors.append((wav_of[uid], f"utterance {uid}: decoding failed ({type(h).__name__}: {h})"))
                    continue
                batch_atts[uid] = attention_matrix(h)
                row = hypothesis_row(uid, batch.texts[i], tok.decode(h.tokens), h, tok.pieces(h.tokens), int(batch.feat_lens[i]), int(enc_lens[i]))
                batch_rows.append({**row, INPUT_KEY: sig_of[uid]})
            save_batch(out_dir, shard, batch_rows, batch_atts, part_file)
            shard += 1
            atts.update(batch_atts)
            rows.update((r["utt_id"], r) for r in batch_rows)
    elapsed = time.perf_counter() - t0
    seg_ids = {segment_id(p, k) for p, (_, b) in parents.items() for k in range(len(b))}
    final = {uid: r for uid, r in rows.items() if uid not in seg_ids}
    seg_lines = []
    for pid, (u, bounds) in parents.items():
        seg_rows = [rows.get(segment_id(pid, k)) for k in range(len(bounds))]
        if all(r is None for r in seg_rows):
            continue
        final[pid] = stitch(pid, u.text, seg_rows, bounds, fbank.frame_shift_s)
        seg_lines += [{"utt_id": pid, **{k: v for k, v in sg.items() if k != "tokens"}} for sg in final[pid]["segments"]]
    ids = write_final(out_dir, final, {u: atts[u] for u in rows}, seg_lines)
    if errors:
        write_errors(errors, out_dir)
    info = build_meta(
        opts,
        checkpoint=str(cfg.ckpt),
        **({"ensemble": [str(cfg.ckpt), *_ensemble_paths(cfg)]} if len(models) > 1 else {}),
        attention=meta["model_cfg"]["attention"]["type"],
        encoder=meta["model_cfg"]["encoder"]["type"],
        decoder=meta["model_cfg"]["decoder"]["type"],
        frame_shift_s=fbank.frame_shift_s,
        subsampling=model.subsampling_factor,
        data_dir=str(cfg.data_dir) if cfg.get("data_dir") else None,
        dump_dir=str(cfg.dump_dir) if cfg.get("data_dir") and cfg.get("dump_dir") else None,
        n_utts=len(ids),
        resumed_utts=resumed,
        n_errors=len(errors),
        max_frames=max_frames,
        longform_max_s=seg_opts.max_s,
        longform_min_s=seg_opts.min_s,
        n_segmented=len(parents),
        n_segments=sum(len(b) for _, b in parents.values()),
        n_batches=len(sampler),
        decode_s=round(elapsed, 2),
        audio_s=round(audio_s, 2),
        rtf=round(elapsed / audio_s, 4) if audio_s else 0.0,
        device=str(device),
        threads=torch.get_num_threads(),
    )
    write_meta(info, out_dir)
    remove_partial(out_dir)
    # Counts in the user's units: utterances of the data dir. Long recordings are decoded as several segments,
    # so the number of decoded items can exceed the number of utterances; say so rather than print a larger count.
    units = f" as {len(rows)} decoding units ({len(parents)} long recording(s) split into {info['n_segments']} segments)" if parents else ""
    reused = f", {resumed} unit(s) resumed from an earlier run" if resumed else ""
    print(f"decoded {len(ids)} utterances{units}{reused} ({audio_s:.1f} s of audio newly decoded) in {elapsed:.1f} s, RTF {info['rtf']:.4f} -> {out_dir}")
    return info


@hydra.main(version_base="1.3", config_path=str(CONF_DIR), config_name="decode")
def main(cfg: DictConfig) -> None:
    """Console script ``asr-decode``."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    decode(cfg)


if __name__ == "__main__":
    main()
