"""asr-decode: decode a data dir or audio files with a trained checkpoint.

    asr-decode ckpt=exp/an4_pblstm_location_aware/checkpoints/best.ckpt data_dir=data/test \
        dump_dir=dump/test out_dir=exp/an4_pblstm_location_aware/decode_test beam_size=10
    asr-decode ckpt=best.ckpt 'audio=[a.wav,b.flac]' out_dir=my_decode

Everything needed (model config, weights, CMVN, tokenizer) comes from the checkpoint. Writes to
``out_dir``: ``results.jsonl`` (per utterance: id, hyp, ref, score, tokens, frames), ``attention.npz``
(``(U + 1, S)`` weights per utterance), ``hyp.trn`` / ``ref.trn`` (sclite), ``meta.json`` (settings,
decode time, real-time factor) and ``errors.tsv`` for audio files that could not be read.
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path
from typing import Any

import hydra
import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf
from tqdm import tqdm

from asr.data.datadir import Utterance
from asr.data.dataset import ASRDataset, LengthBucketBatchSampler, load_split, make_collate
from asr.decoding.search import DecodingOptions, decode_batch
from asr.features.audio import AudioError, audio_duration, load_audio
from asr.features.fbank import FbankOptions, compute_fbank
from asr.lightning.module import load_checkpoint
from asr.metrics.wer import write_trn
from asr.utils.io import atomic_write_text
from asr.utils.paths import CONF_DIR

log = logging.getLogger("asr.decode")


def _audio_utts(paths: list[str], fbank: FbankOptions) -> tuple[list[Utterance], dict[str, torch.Tensor], list[tuple[str, str]]]:
    """Utterances for user audio files: id = file stem; unreadable files are reported, not fatal."""
    utts, feats, errors = [], {}, []
    for p in paths:
        uid = Path(p).stem
        try:
            wav = load_audio(p, fbank.sample_rate)
            feats[uid] = compute_fbank(wav, fbank)
            utts.append(Utterance(uid, str(p), "", "unknown", wav.numel() / fbank.sample_rate))
        except (AudioError, ValueError) as exc:
            log.error("skipping %s: %s", p, exc)
            errors.append((str(p), str(exc)))
    return utts, feats, errors


def decode(cfg: DictConfig | dict[str, Any]) -> dict[str, Any]:
    """Decode per ``cfg`` (see ``conf/decode.yaml``); returns the ``meta.json`` content.

    Raises
    ------
    ValueError
        Neither ``data_dir`` nor ``audio`` given, or no utterance could be read.
    """
    cfg = OmegaConf.create(cfg) if isinstance(cfg, dict) else cfg
    if cfg.get("threads"):
        torch.set_num_threads(int(cfg.threads))
    device = torch.device(cfg.get("device", "cpu"))
    model, tok, meta = load_checkpoint(cfg.ckpt)
    model.to(device)
    fbank = FbankOptions(num_mel_bins=meta.get("feat_dim", 80), frame_shift_ms=1000 * meta.get("frame_shift_s", 0.01))
    errors: list[tuple[str, str]] = []
    if cfg.get("data_dir"):
        ds = load_split(cfg.data_dir, cfg.get("dump_dir"), tok, fbank)
    elif cfg.get("audio"):
        utts, feats, errors = _audio_utts(list(cfg.audio), fbank)
        ds = ASRDataset(utts, tok, feats, fbank)
    else:
        raise ValueError("asr-decode needs data_dir=<Kaldi data dir> or audio=[file,...]")
    if len(ds) == 0:
        raise ValueError("no utterance to decode")
    sampler = LengthBucketBatchSampler([ds.num_frames(i) for i in range(len(ds))], int(cfg.batch_size), shuffle=False, num_replicas=1, rank=0)
    loader = torch.utils.data.DataLoader(ds, batch_sampler=sampler, collate_fn=make_collate(tok.pad_id))
    opts = DecodingOptions(int(cfg.beam_size), float(cfg.max_len_ratio), int(cfg.min_len), float(cfg.length_penalty))
    out_dir = Path(cfg.out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    rows: dict[str, dict] = {}
    atts: dict[str, np.ndarray] = {}
    audio_s = 0.0
    t0 = time.perf_counter()
    for batch in tqdm(loader, desc=f"decode beam={opts.beam_size}", unit="batch"):
        batch = batch.to(device)
        hyps = decode_batch(model, batch.feats, batch.feat_lens, opts)
        enc_lens = model.encoder.output_lengths(batch.feat_lens)
        for i, h in enumerate(hyps):
            uid = batch.ids[i]
            att = h.attention.float().numpy()
            if att.shape[0] == len(h.tokens):  # stopped at the length limit without eos: empty eos row
                att = np.concatenate([att, np.zeros((1, att.shape[1]), dtype=att.dtype)], 0)
            atts[uid] = att.astype(np.float32)
            rows[uid] = {
                "utt_id": uid,
                "ref": batch.texts[i],
                "hyp": tok.decode(h.tokens),
                "score": round(h.score, 4),
                "norm_score": round(h.norm_score, 4),
                "tokens": tok.pieces(h.tokens),
                "n_frames": int(batch.feat_lens[i]),
                "enc_frames": int(enc_lens[i]),
            }
            audio_s += int(batch.feat_lens[i]) * fbank.frame_shift_s
    elapsed = time.perf_counter() - t0
    ids = sorted(rows)
    atomic_write_text("".join(json.dumps(rows[u]) + "\n" for u in ids), out_dir / "results.jsonl")
    np.savez_compressed(out_dir / "attention.npz", **{u: atts[u] for u in ids})
    write_trn(out_dir / "hyp.trn", {u: rows[u]["hyp"] for u in ids})
    write_trn(out_dir / "ref.trn", {u: rows[u]["ref"] for u in ids})
    if errors:
        atomic_write_text("file\treason\n" + "".join(f"{p}\t{r}\n" for p, r in errors), out_dir / "errors.tsv")
    info = {
        "checkpoint": str(cfg.ckpt),
        "attention": meta["model_cfg"]["attention"]["type"],
        "frame_shift_s": fbank.frame_shift_s,
        "subsampling": model.subsampling_factor,
        "beam_size": opts.beam_size,
        "max_len_ratio": opts.max_len_ratio,
        "length_penalty": opts.length_penalty,
        "n_utts": len(ids),
        "n_errors": len(errors),
        "decode_s": round(elapsed, 2),
        "audio_s": round(audio_s, 2),
        "rtf": round(elapsed / max(audio_s, 1e-9), 4),
        "device": str(device),
        "threads": torch.get_num_threads(),
    }
    atomic_write_text(json.dumps(info, indent=2) + "\n", out_dir / "meta.json")
    print(f"decoded {len(ids)} utterances ({audio_s:.1f} s of audio) in {elapsed:.1f} s, RTF {info['rtf']:.4f} -> {out_dir}")
    return info


@hydra.main(version_base="1.3", config_path=str(CONF_DIR), config_name="decode")
def main(cfg: DictConfig) -> None:
    """Console script ``asr-decode``."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    decode(cfg)


if __name__ == "__main__":
    main()
