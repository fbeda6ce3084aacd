"""Recipe stages 1-3: manifests of any corpus (``asr-prepare``), stored fbank + global CMVN (``asr-compute-feats``),
tokenizer (``asr-tokenizer``); and ``asr-dump-feats``, a split's whole fbank in one ``feats.pt`` (for decoding and
plotting small sets; training reads lhotse manifests).

All take Hydra-style ``key=value`` arguments:

    asr-prepare source=kaldi in_dir=data splits=[train_nodev,train_dev,test] out_dir=data      # Kaldi data dirs
    asr-prepare source=lhotse in_dir=manifests splits=[train,dev] out_dir=data                 # lhotse manifests
    asr-prepare source=recipe recipe=librispeech corpus_dir=/data/LibriSpeech out_dir=data \
        splits=[train-clean-100,dev-clean,test-clean,test-other]                             # a lhotse recipe
    asr-compute-feats data_root=data dump=dump splits=[train_nodev,train_dev] cmvn_split=train_nodev features=precomputed
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


def _find_manifest(in_dir: Path, kind: str, split: str) -> Path | None:
    """``<in_dir>/*<kind>*<split>.jsonl.gz`` (lhotse recipes name them ``<corpus>_<kind>_<split>.jsonl.gz``)."""
    hits = sorted(p for p in in_dir.glob(f"*{kind}*.jsonl.gz") if p.name.removesuffix(".jsonl.gz").endswith(split))
    if len(hits) > 1:
        raise SystemExit(f"asr-prepare: several {kind} manifests for split {split!r} in {in_dir}: {[h.name for h in hits]}")
    return hits[0] if hits else None


def _cuts_of_split(a: dict, split: str, recipe_parts: dict | None):
    """The CutSet of one split, from the source named in ``a`` (see :func:`prepare_main`), and entries skipped."""
    from lhotse import CutSet, load_manifest

    from asr.data.lhotse_data import cuts_from_data_dir

    src = a["source"]
    if src == "kaldi":
        return cuts_from_data_dir(Path(a["in_dir"]) / split, a["max_bad_fraction"])
    if src == "recipe":
        if split not in recipe_parts:
            raise SystemExit(f"asr-prepare: the {a['recipe']} recipe gave no split {split!r} (it gave {sorted(recipe_parts)})")
        part = recipe_parts[split]
        return CutSet.from_manifests(recordings=part.get("recordings"), supervisions=part.get("supervisions")), []
    in_dir = Path(a["in_dir"])
    cuts = _find_manifest(in_dir, "cuts", split)
    if cuts is not None:
        return load_manifest(cuts), []
    rec, sup = _find_manifest(in_dir, "recordings", split), _find_manifest(in_dir, "supervisions", split)
    if rec is None or sup is None:
        raise SystemExit(f"asr-prepare: no cuts, or recordings + supervisions, manifest for split {split!r} in {in_dir}")
    return CutSet.from_manifests(recordings=load_manifest(rec), supervisions=load_manifest(sup)), []


def prepare_main(argv: list[str] | None = None) -> int:
    """Stage 1 for any corpus: ``<out_dir>/<split>/cuts.jsonl.gz`` (lhotse) and the Kaldi data dir of each split.

    ``source``: ``kaldi`` (Kaldi data dirs ``<in_dir>/<split>``: wav.scp/text/utt2spk[/segments], validated as
    :func:`asr.data.datadir.check_data_dir` does), ``lhotse`` (``<in_dir>/*cuts*<split>.jsonl.gz`` or
    ``*recordings*<split>`` + ``*supervisions*<split>``) or ``recipe`` (lhotse's ``prepare_<recipe>`` on
    ``corpus_dir``, e.g. ``librispeech``, ``mini_librispeech``, ``commonvoice``; ``recipe_args`` are passed on, its
    manifests go to ``<out_dir>/manifests``). A cut without a recording or supervision, with a bad duration or a
    missing audio file is skipped, counted and listed in ``<out_dir>/<split>/bad_utts.tsv``; more than
    ``max_bad_fraction`` of a split fails it. Multi-supervision cuts are split into one cut per supervision.
    """
    import lhotse.recipes

    from asr.data.lhotse_data import ids_from_supervisions, validate_cuts, write_split

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    a = _args(argv, {"source": "kaldi", "in_dir": "data", "out_dir": "data", "splits": ["train_nodev", "train_dev", "test"], "recipe": "", "corpus_dir": "",
                     "recipe_args": {}, "max_bad_fraction": 0.05})
    if a["source"] not in ("kaldi", "lhotse", "recipe"):
        raise SystemExit(f"asr-prepare: source must be kaldi, lhotse or recipe, got {a['source']!r}")
    out = Path(a["out_dir"])
    parts = None
    if a["source"] == "recipe":
        fn = getattr(lhotse.recipes, f"prepare_{a['recipe']}", None)
        if not a["recipe"] or fn is None:
            known = sorted(n.removeprefix("prepare_") for n in dir(lhotse.recipes) if n.startswith("prepare_"))
            raise SystemExit(f"asr-prepare: no lhotse recipe {a['recipe']!r}; lhotse has {', '.join(known)}")
        if not Path(a["corpus_dir"]).is_dir():
            raise SystemExit(f"asr-prepare: corpus_dir not found: {a['corpus_dir']!r}")
        log.info("lhotse recipe prepare_%s on %s", a["recipe"], a["corpus_dir"])
        parts = fn(a["corpus_dir"], output_dir=str(out / "manifests"), **a["recipe_args"])
    for split in a["splits"]:
        cuts, skipped = _cuts_of_split(a, split, parts)
        if any(len(c.supervisions) > 1 for c in cuts):
            cuts = cuts.trim_to_supervisions(keep_overlapping=False)
        cuts, bad = validate_cuts(cuts, f"{split} manifest", a["max_bad_fraction"])
        cuts = ids_from_supervisions(cuts)  # CutSet.from_manifests names cuts "<recording>-<index>": utterance ids = supervision ids
        write_split(cuts, out / split, [*skipped, *bad])
        log.info("%s: %d utterances kept, %d skipped -> %s", split, len(cuts), len(skipped) + len(bad), out / split)
    return 0


def compute_feats_main(argv: list[str] | None = None) -> int:
    """Stage 2: global CMVN statistics of ``cmvn_split`` (``<dump>/<cmvn_split>/cmvn.pt``) and, with
    ``features=precomputed``, every split's fbank stored as lilcom chunks (``<dump>/<split>/feats.*.lca``) with its
    manifest ``<dump>/<split>/cuts.jsonl.gz``. ``on_the_fly`` computes only the statistics (the loader computes fbank
    from audio). ``num_jobs`` processes share each split; memory does not grow with the corpus."""
    from asr.data.lhotse_data import CUTS_NAME, store_features
    from asr.features.fbank import FbankOptions, save_cmvn_stats

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    a = _args(argv, {"data_root": "data", "dump": "dump", "splits": ["train_nodev", "train_dev"], "cmvn_split": "train_nodev", "features": "precomputed",
                     "num_mel_bins": 80, "num_jobs": 1, "threads": 0})
    if a["features"] not in ("precomputed", "on_the_fly"):
        raise SystemExit(f"asr-compute-feats: features must be precomputed or on_the_fly, got {a['features']!r}")
    from asr.utils.threads import configure_threads

    configure_threads(int(a["threads"] or 0))
    opts = FbankOptions(num_mel_bins=a["num_mel_bins"])
    store = a["features"] == "precomputed"
    splits = list(a["splits"]) if store else []
    if a["cmvn_split"] not in splits:
        splits.append(a["cmvn_split"])
    for split in splits:
        out = Path(a["dump"]) / split
        acc, _ = store_features(Path(a["data_root"]) / split / CUTS_NAME, out, opts, a["num_jobs"], store=store)
        if split == a["cmvn_split"]:
            stats = acc.stats()
            save_cmvn_stats(stats, out / "cmvn.pt")
            log.info("CMVN statistics from %s: %d frames -> %s", split, int(stats["count"]), out / "cmvn.pt")
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
