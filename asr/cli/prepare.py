"""Recipe stages 2 and 3: fbank dumps + global CMVN (``asr-dump-feats``), tokenizer (``asr-tokenizer``).

Both take Hydra-style ``key=value`` arguments:

    asr-dump-feats data_root=data dump=dump splits=[train_nodev,train_dev,test] cmvn_split=train_nodev speeds=[0.9,1.1]
    asr-tokenizer text=data/train_nodev/text kind=bpe vocab_size=40 model=data/token/bpe40.model
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path

from omegaconf import OmegaConf

log = logging.getLogger("asr.prepare")


def _args(argv: list[str] | None, defaults: dict) -> dict:
    cfg = OmegaConf.merge(OmegaConf.create(defaults), OmegaConf.from_dotlist(list(sys.argv[1:] if argv is None else argv)))
    unknown = set(cfg.keys()) - set(defaults)
    if unknown:
        raise SystemExit(f"unknown option(s): {sorted(unknown)}; known: {sorted(defaults)}")
    return OmegaConf.to_container(cfg, resolve=True)


def dump_feats_main(argv: list[str] | None = None) -> int:
    """Compute fbank for each split into ``<dump>/<split>/feats.pt``, CMVN stats of ``cmvn_split`` and its
    speed-perturbed dumps ``feats_sp<factor>.pt`` (``speeds=[]`` for none)."""
    import torch

    from asr.data.datadir import read_data_dir
    from asr.data.dataset import dump_features
    from asr.features.fbank import FbankOptions, compute_cmvn_stats, save_cmvn_stats

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    a = _args(argv, {"data_root": "data", "dump": "dump", "splits": ["train_nodev", "train_dev", "test"], "cmvn_split": "train_nodev", "num_mel_bins": 80, "threads": 0, "speeds": [0.9, 1.1]})
    if a["threads"]:
        torch.set_num_threads(a["threads"])
    opts = FbankOptions(num_mel_bins=a["num_mel_bins"])
    for split in a["splits"]:
        feats = dump_features(read_data_dir(Path(a["data_root"]) / split), Path(a["dump"]) / split / "feats.pt", opts)
        log.info("%s: %d utterances, %d frames", split, len(feats), sum(x.shape[0] for x in feats.values()))
        if split == a["cmvn_split"]:
            stats = compute_cmvn_stats(feats)
            save_cmvn_stats(stats, Path(a["dump"]) / split / "cmvn.pt")
            log.info("CMVN statistics from %s: %d frames", split, int(stats["count"]))
            # speed-perturbed copies of the training split only (CMVN stays from the original audio)
            utts = read_data_dir(Path(a["data_root"]) / split)
            for sp in a["speeds"]:
                if float(sp) != 1.0:
                    dump_features(utts, Path(a["dump"]) / split / f"feats_sp{float(sp)}.pt", opts, float(sp))
    return 0


def tokenizer_main(argv: list[str] | None = None) -> int:
    """Train the sentencepiece tokenizer on a Kaldi ``text`` file (utterance ids stripped)."""
    from asr.text.tokenizer import Tokenizer

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    a = _args(argv, {"text": "data/train_nodev/text", "kind": "bpe", "vocab_size": 40, "model": "data/token/bpe40.model"})
    lines = [ln.split(maxsplit=1)[1] if len(ln.split(maxsplit=1)) > 1 else "" for ln in Path(a["text"]).read_text(encoding="utf-8").splitlines()]
    model = Path(a["model"])
    tok = Tokenizer.train(lines, model.with_suffix(""), a["kind"], a["vocab_size"])
    log.info("tokenizer %s: %d tokens -> %s", a["kind"], tok.vocab_size, model)
    return 0


if __name__ == "__main__":
    sys.exit(dump_feats_main())
