"""asr-decode: decode a data dir or audio files with a trained checkpoint.

    asr-decode ckpt=exp/an4_pblstm_location_aware/checkpoints/best.ckpt data_dir=data/test \
        dump_dir=dump/test out_dir=exp/an4_pblstm_location_aware/decode_test beam_size=10
    asr-decode ckpt=best.ckpt 'audio=[a.wav,b.flac]' out_dir=my_decode
    asr-decode ckpt=exp/a/checkpoints/avg5.ckpt 'ensemble=[exp/b/checkpoints/avg5.ckpt]' data_dir=... out_dir=...

Everything needed (model config, weights, CMVN, tokenizer) comes from the checkpoint. Writes to
``out_dir``: ``results.jsonl`` (per utterance: id, hyp, ref, score, tokens, frames), ``attention.npz``
(``(U + 1, S)`` weights per utterance), ``hyp.trn`` / ``ref.trn`` (sclite), ``meta.json`` (settings,
decode time, real-time factor) and ``errors.tsv`` for audio files that could not be read.

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
from asr.decoding.results import (
    PARTIAL_DIR,
    PARTIAL_RESULTS,
    attention_matrix,
    build_meta,
    hypothesis_row,
    load_partial,
    remove_partial,
    save_batch,
    write_errors,
    write_final,
    write_meta,
    write_partial_settings,
)
from asr.decoding.search import DecodingOptions, decode_batch, resolve_options
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


def _audio_utts(paths: list[str], fbank: FbankOptions) -> tuple[list[Utterance], dict[str, torch.Tensor], list[tuple[str, str]]]:
    """Utterances for user audio files (id: see `_utt_id_for`); unreadable files are reported, not fatal."""
    utts, feats, errors = [], {}, []
    taken: set[str] = set()
    for p in paths:
        uid = _utt_id_for(str(p), taken)
        try:
            wav = load_audio(p, fbank.sample_rate)
            feats[uid] = compute_fbank(wav, fbank)
            utts.append(Utterance(uid, str(p), "", "unknown", wav.numel() / fbank.sample_rate))
        except (AudioError, ValueError) as exc:
            log.error("skipping %s: %s", p, exc)
            errors.append((str(p), str(exc)))
    return utts, feats, errors


def _check_data_dir_audio(ds: ASRDataset, fbank: FbankOptions) -> tuple[list[Utterance], dict[str, torch.Tensor], list[tuple[str, str]]]:
    """Features of the data dir utterances missing from the dump, computed now so that an unreadable
    audio file is reported (and its utterance left out) instead of stopping the decoding halfway."""
    utts, feats, errors = [], dict(ds.feats), []
    for u in ds.utts:
        if u.utt_id not in feats:
            try:
                feats[u.utt_id] = compute_fbank(load_audio(u.wav, fbank.sample_rate), fbank)
            except (AudioError, ValueError) as exc:
                log.error("skipping utterance %s: %s", u.utt_id, exc)
                errors.append((u.wav, f"utterance {u.utt_id}: {exc}"))
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
        source: dict[str, Any] = {"data_dir": str(Path(cfg.data_dir).resolve()), "dump_dir": str(Path(cfg.dump_dir).resolve()) if cfg.get("dump_dir") else None}
    else:
        source = {"audio": [str(Path(str(a)).resolve()) for a in cfg.audio]}
    settings = {
        "version": _PARTIAL_VERSION,
        "checkpoint": str(Path(cfg.ckpt).resolve()),
        "checkpoint_sha256": _file_sha256(cfg.ckpt),
        **dataclasses.asdict(opts),  # every search option
        **source,
    }
    members = _ensemble_paths(cfg)
    if members:
        settings["ensemble"] = [{"checkpoint": str(Path(c).resolve()), "checkpoint_sha256": _file_sha256(c)} for c in members]
    return settings


def _given_options(cfg: DictConfig) -> dict[str, Any]:
    """The search options set in ``cfg`` (``conf/decode.yaml`` leaves them null: the defaults of
    :class:`~asr.decoding.search.DecodingOptions`, see :func:`~asr.decoding.search.resolve_options`)."""
    return {f.name: cfg[f.name] for f in dataclasses.fields(DecodingOptions) if cfg.get(f.name) is not None}


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
    """
    cfg = OmegaConf.create(cfg) if isinstance(cfg, dict) else cfg
    if cfg.get("threads"):
        torch.set_num_threads(int(cfg.threads))
    device = torch.device(cfg.get("device", "cpu"))
    model, tok, meta = load_checkpoint(cfg.ckpt)
    opts = resolve_options([model], _given_options(cfg))
    models = [m.to(device) for m in _load_members(cfg, model, tok, meta, opts)]
    fbank = fbank_options(meta)
    errors: list[tuple[str, str]] = []
    out_dir = Path(cfg.out_dir)
    if cfg.get("data_dir"):
        ds = load_split(cfg.data_dir, cfg.get("dump_dir"), tok, fbank, max_bad_fraction=float(cfg.get("max_bad_fraction", DEFAULT_MAX_BAD_FRACTION)))
        errors = [(b.file, f"utterance {b.utt_id}: {b.reason}") for b in ds.skipped]
        utts, feats, audio_errors = _check_data_dir_audio(ds, fbank)
        errors += audio_errors
        ds = ASRDataset(utts, tok, feats, fbank)
    elif cfg.get("audio"):
        utts, feats, errors = _audio_utts(list(cfg.audio), fbank)
        ds = ASRDataset(utts, tok, feats, fbank)
    else:
        raise ValueError("asr-decode needs data_dir=<Kaldi data dir> or audio=[file,...]")
    if len(ds) == 0:
        if errors:
            write_errors(errors, out_dir)
            raise ValueError(f"no utterance to decode: {len(errors)} error(s), e.g. {errors[0][0]}: {errors[0][1]}; see {out_dir / 'errors.tsv'}")
        raise ValueError("no utterance to decode")
    max_frames = int(cfg.get("max_frames", 0) or 0)
    out_dir.mkdir(parents=True, exist_ok=True)
    settings = _resume_settings(cfg, opts)
    rows: dict[str, dict] = {}
    atts: dict[str, np.ndarray] = {}
    shard = 0
    if cfg.get("resume", True):
        wanted = {u.utt_id: (u.text, ds.num_frames(i)) for i, u in enumerate(ds.utts)}
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
            hyps = decode_batch(models, batch.feats, batch.feat_lens, opts)
            enc_lens = model.encoder.output_lengths(batch.feat_lens)  # the first member's
            batch_rows, batch_atts = [], {}
            for i, h in enumerate(hyps):
                uid = batch.ids[i]
                batch_atts[uid] = attention_matrix(h)
                batch_rows.append(hypothesis_row(uid, batch.texts[i], tok.decode(h.tokens), h, tok.pieces(h.tokens), int(batch.feat_lens[i]), int(enc_lens[i])))
                audio_s += int(batch.feat_lens[i]) * fbank.frame_shift_s
            save_batch(out_dir, shard, batch_rows, batch_atts, part_file)
            shard += 1
            atts.update(batch_atts)
            rows.update((r["utt_id"], r) for r in batch_rows)
    elapsed = time.perf_counter() - t0
    ids = write_final(out_dir, rows, atts)
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
        n_batches=len(sampler),
        decode_s=round(elapsed, 2),
        audio_s=round(audio_s, 2),
        rtf=round(elapsed / audio_s, 4) if audio_s else 0.0,
        device=str(device),
        threads=torch.get_num_threads(),
    )
    write_meta(info, out_dir)
    remove_partial(out_dir)
    reused = f" + {resumed} resumed" if resumed else ""
    print(f"decoded {len(ids) - resumed} utterances{reused} ({audio_s:.1f} s of audio) in {elapsed:.1f} s, RTF {info['rtf']:.4f} -> {out_dir}")
    return info


@hydra.main(version_base="1.3", config_path=str(CONF_DIR), config_name="decode")
def main(cfg: DictConfig) -> None:
    """Console script ``asr-decode``."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    decode(cfg)


if __name__ == "__main__":
    main()
