"""asr-decode: decode a data dir or audio files with a trained checkpoint.

    asr-decode ckpt=exp/an4_pblstm_location_aware/checkpoints/best.ckpt data_dir=data/test \
        dump_dir=dump/test out_dir=exp/an4_pblstm_location_aware/decode_test beam_size=10
    asr-decode ckpt=best.ckpt 'audio=[a.wav,b.flac]' out_dir=my_decode
    asr-decode ckpt=exp/a/checkpoints/avg5.ckpt 'ensemble=[exp/b/checkpoints/avg5.ckpt]' data_dir=... out_dir=...
    asr-decode ckpt=models/an4_pblstm_x4 'audio=[meeting.wav]' out_dir=my_decode     # a model directory (asr-export)

``ckpt`` (and every ``ensemble`` member) is a training checkpoint or a model directory; everything needed (model
config, weights, CMVN, tokenizer; a model directory's recorded search options) comes from it. This module only
handles the arguments: the decoding is :class:`asr.decoding.engine.Engine`'s (the same engine as
``Speech2Text.transcribe`` and ``asr-transcribe``), the run into the folder :func:`asr.decoding.decode_dir.decode`'s. Writes to
``out_dir``: ``results.jsonl`` (per utterance: id, hyp, ref, score, tokens, frames), ``attention.npz``
(``(U + 1, S)`` weights per utterance), ``hyp.trn`` / ``ref.trn`` (sclite), ``meta.json`` (settings,
decode time, real-time factor), ``errors.tsv`` for inputs that could not be read or decoded and, for
recordings longer than ``longform_max_s`` (split at pauses, :mod:`asr.decoding.longform`), ``segments.jsonl``.
The folder's format has one owner, :mod:`asr.decoding.results`: the decode holds its lock
(:class:`~asr.decoding.results.OutDirLock`) and first removes an earlier decode's final outputs, only those its
ownership manifest ``out_dir/.asr-owned.json`` lists (:mod:`asr.utils.owned`): a file the user put there, or a
``plots/``/``report/``/``scoring/`` folder no asr tool wrote, is never removed. A non-empty ``out_dir`` without
that manifest (a folder of the user's, or a decode folder of a version without manifests) is refused with a
one-line error unless ``overwrite=true``, which writes the decode's own files beside what is there (replacing
files of the same names, removing nothing).

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

import logging
import sys

import hydra
from omegaconf import DictConfig

from asr.data.datadir import DataDirError
from asr.decoding.decode_dir import decode
from asr.decoding.results import DECODE_TOOL, PARTIAL_DIR, PARTIAL_RESULTS, RESUME_NAMES
from asr.utils.owned import check_output_dir, claim_output_dir, read_manifest
from asr.utils.paths import CONF_DIR

__all__ = ["decode", "main", "PARTIAL_DIR", "PARTIAL_RESULTS"]


@hydra.main(version_base="1.3", config_path=str(CONF_DIR), config_name="decode")
def main(cfg: DictConfig) -> None:
    """Console script ``asr-decode`` (settings: ``conf/decode.yaml``). A refused setting or ``out_dir``, a missing
    model or data dir, or nothing decodable ends it with a one-line ``asr-decode: ...`` message and exit status 2.
    ``overwrite=true`` claims a non-empty ``out_dir`` that has no ownership manifest (module docstring)."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    try:
        if cfg.get("out_dir"):
            # Checked before the model is read and the folder locked (the decode checks again, holding the lock).
            check_output_dir(cfg.out_dir, DECODE_TOOL, overwrite=bool(cfg.get("overwrite")), ignore=RESUME_NAMES)
        if cfg.get("overwrite") and cfg.get("out_dir") and read_manifest(cfg.out_dir) is None:
            # Claimed here, before the decode's lock: a folder some decode is writing already has a manifest.
            claim_output_dir(cfg.out_dir, DECODE_TOOL, overwrite=True, ignore=RESUME_NAMES)
        decode(cfg)
    except (ValueError, FileNotFoundError, DataDirError, RuntimeError) as exc:
        print(f"asr-decode: {exc}", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    main()
