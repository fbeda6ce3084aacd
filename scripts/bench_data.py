"""Memory and speed of the two training data paths at 1 h, 10 h and 50 h of audio (issue 29, part 5 "Measured scale").

    python scripts/bench_data.py --work /tmp/bench_data --hours 1,10,50 --steps 200       # the full measurement
    python scripts/bench_data.py --work /tmp/bench_data --hours 0.05,0.2 --steps 5        # a quick try
    python scripts/bench_data.py --work /tmp/bench_data --hours 1,10,50 --skip_build      # re-measure a built corpus

Build (once, into ``--work``, never committed; deterministic given ``--seed``): synthetic utterances of
``--min_s``-``--max_s`` seconds, each a concatenation of AN4 training utterances (``--an4``), every piece
speed-perturbed (0.9 / 1.0 / 1.1, :func:`asr.features.fbank.speed_perturb`) and volume-perturbed (-6..+6 dB), written
as 16-bit FLAC (soundfile), its transcript the pieces' transcripts joined. Utterance ``i`` depends on ``(seed, i)``
only, and the corpora are nested: the 1 h corpus is the first utterances of the 10 h one, which starts the 50 h one,
so audio and fbank are computed once. ``--distinct_h H`` generates only ``H`` hours of distinct utterances; larger
corpora repeat them in order under new utterance ids (a repeat has its own entry in ``feats.pt``, with its own copy
of the tensor, and its own cut, referencing the same stored features): what the training process holds is the
same as for distinct audio, at a fraction of the build time. Per corpus ``corpus_<h>h/``:

- ``data/``            Kaldi data dir (wav.scp, text, utt2spk, spk2utt, utt2dur)
- ``dump/feats.pt``    the old path's in-RAM features (``asr.data.dataset.dump_features``, ``--jobs`` processes)
- ``cuts.jsonl.gz``    the new path's manifest: the corpus's cuts with the lilcom fbank stored by
                       :func:`asr.data.lhotse_data.store_features` (``num_jobs=--jobs``) for the distinct utterances

plus ``token/bpe40.model`` (sentencepiece BPE, 40 pieces, trained on the AN4 transcripts) and ``cmvn.pt``.

Measure: for each corpus and path, a fresh process (``--measure``) builds the training loader of that path with
``--workers`` DataLoader workers and runs ``--steps`` training steps (forward with the attention + CTC loss,
backward, clipping at 5, Adam; no Lightning, as ``scripts/bench_train.py``) of the recipe's model
``an4/location_aware_x4_noaug`` with ``--overrides`` (default: the same pBLSTM + location-aware attention + CTC 0.3
at 32 units with all time reduction before the first layer, ``subsample=[8,1,1]``: on the CPU the packed-LSTM
backward costs time quadratic in the frames per utterance, so the recipe model takes tens of seconds per step of
8 x 15 s on the 2-core CPU, the 32-unit x4 one a few; pass ``--overrides ''`` for the recipe model itself). The model is the same for every corpus, so the growth of the peak RSS is the data path's.

- old ("in-RAM"): ``load_split`` (``feats.pt`` loaded whole) + ``LengthBucketBatchSampler`` + ``make_collate``
- new ("lhotse"): ``load_cuts`` (lazy) + ``make_sampler`` (DynamicBucketingSampler) + ``CutBatchDataset``

and reports (a) the process's peak RSS after the steps (``VmHWM``, see :func:`vm_rss_mb`; also the proportional set size of the
process and its workers at the last step, which counts pages shared after fork once), (b) loader throughput
(utterances/s with the workers, no training, one epoch after its first batch), and (c) the step time with the
loader attached (``next(loader)`` + step) vs the same batches replayed from memory: the last ``--replay`` steps, in
blocks of 8, each block replayed right after it (interleaved, so that both see the same background load), with
the fraction of the attached time spent waiting for the loader and the CPU time of the workers (all epochs) as a
fraction of the training process's CPU time over the attached steps: on a CPU with no spare core, what the loader
takes from training.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import random
import resource
import shutil
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

SR = 16000
SPEEDS = (0.9, 1.0, 1.1)
GAIN_DB = 6.0
SMALL_MODEL = ("model.encoder.hidden_size=32 model.encoder.subsample=[8,1,1] model.attention.att_dim=32 model.decoder.hidden_size=32"
               " model.decoder.embed_dim=16")
EXPERIMENT = "an4/location_aware_x4_noaug"
BUILD_STAMP = "build.json"


def hours_label(h: float) -> str:
    return f"{h:g}"


def corpus_dir(work: Path, h: float) -> Path:
    return Path(work) / f"corpus_{hours_label(h)}h"


# ---- AN4 sources ---------------------------------------------------------------------------------------------------
def an4_sources(an4_root: str | Path, part: str = "train") -> list[tuple[str, str]]:
    """``(wav path, transcript)`` of every AN4 ``part`` utterance with audio and a transcript, in fileids order."""
    from asr.data.an4 import parse_transcription_line

    root = Path(an4_root)
    texts = {}
    for line in (root / "etc" / f"an4_{part}.transcription").read_text(encoding="utf-8", errors="replace").splitlines():
        parsed = parse_transcription_line(line) if line.strip() else None
        if parsed:
            texts[parsed[0]] = parsed[1]
    out = []
    for line in (root / "etc" / f"an4_{part}.fileids").read_text(encoding="utf-8").split():
        name = line.rsplit("/", 1)[-1]
        wav = root / "wav" / f"{line}.wav"
        if name in texts and texts[name] and wav.is_file():
            out.append((str(wav), texts[name]))
    if not out:
        raise SystemExit(f"no AN4 {part} utterances found under {root}")
    return out


def load_sources(sources: list[tuple[str, str]], speeds=SPEEDS) -> dict[float, list[np.ndarray]]:
    """Every source waveform at every speed factor (float32 at 16 kHz): the only resampling the build does."""
    import torch

    from asr.features.audio import load_audio
    from asr.features.fbank import speed_perturb

    base = [load_audio(w, SR) for w, _ in sources]
    with torch.inference_mode():
        return {float(sp): [speed_perturb(x, float(sp), SR).numpy() for x in base] for sp in speeds}


# ---- the corpus plan -----------------------------------------------------------------------------------------------
@dataclass
class UttPlan:
    index: int
    utt_id: str
    speaker: str
    pieces: list[tuple[int, float, float]] = field(default_factory=list)  # (source, speed, gain)
    num_samples: int = 0
    text: str = ""

    @property
    def duration(self) -> float:
        return self.num_samples / SR


def plan_utterance(i: int, lens: dict[float, list[int]], texts: list[str], seed: int, min_s: float, max_s: float) -> UttPlan:
    """Utterance ``i``: AN4 pieces (random source, speed, gain) drawn from ``(seed, i)`` until a target length drawn
    in ``[min_s, max_s]`` is reached; a piece that would pass ``max_s`` is redrawn (a few times, then taken)."""
    rng = random.Random(f"bench-data:{seed}:{i}")
    target, cap = rng.uniform(min_s, max_s) * SR, max_s * SR
    p = UttPlan(i, *utterance_id(i))
    speeds = sorted(lens)
    misses = 0
    while p.num_samples < target:
        j, sp = rng.randrange(len(texts)), rng.choice(speeds)
        gain = 10.0 ** (rng.uniform(-GAIN_DB, GAIN_DB) / 20.0)
        n = lens[sp][j]
        if p.num_samples + n > cap and misses < 20:
            misses += 1
            continue
        p.pieces.append((j, sp, round(gain, 4)))
        p.num_samples += n
    p.text = " ".join(texts[j] for j, _, _ in p.pieces)
    return p


def plan_corpus(lens: dict[float, list[int]], texts: list[str], hours: float, seed: int, min_s: float = 10.0, max_s: float = 20.0) -> list[UttPlan]:
    """Utterances ``0, 1, ...`` until their total duration reaches ``hours``."""
    plans, total = [], 0
    while total < hours * 3600 * SR:
        plans.append(plan_utterance(len(plans), lens, texts, seed, min_s, max_s))
        total += plans[-1].num_samples
    return plans


def utterance_id(i: int) -> tuple[str, str]:
    """``(utt_id, speaker)`` of corpus utterance ``i`` (ids sort in index order; 100 utterances per speaker)."""
    group = f"syn{i // 100:04d}"
    return f"{group}-{i:07d}", group


def corpus_sizes(plans: list[UttPlan], hours: list[float]) -> dict[float, int]:
    """Utterances of each nested corpus: the shortest prefix of the sequence ``plans, plans, ...`` (the distinct
    utterances, repeated when a corpus is larger than they are) reaching ``h`` hours."""
    n, out = len(plans), {}
    lens = np.array([p.num_samples for p in plans], dtype=np.int64)
    cum, per_copy = np.cumsum(lens), int(lens.sum())
    for h in hours:
        need = int(h * 3600 * SR)
        copies, rest = divmod(need, per_copy)
        out[h] = int(copies * n + min(n, np.searchsorted(cum, rest) + 1)) if rest else int(copies * n)
    return out


def corpus_utterances(plans: list[UttPlan], n: int, audio_dir: Path) -> list:
    """The first ``n`` utterances of the corpus sequence as :class:`asr.data.datadir.Utterance`: utterance ``i`` is
    distinct utterance ``i % len(plans)`` (its audio file and transcript) under its own id."""
    from asr.data.datadir import Utterance

    out = []
    for i in range(n):
        p = plans[i % len(plans)]
        uid, spk = utterance_id(i)
        out.append(Utterance(uid, str(audio_dir / f"{p.utt_id}.flac"), p.text, spk, round(p.duration, 3)))
    return out


_SRC: dict[float, list[np.ndarray]] = {}


def render(plan: UttPlan, src: dict[float, list[np.ndarray]] | None = None) -> np.ndarray:
    """The waveform of a planned utterance (float32, clipped to [-1, 1])."""
    src = _SRC if src is None else src
    wav = np.concatenate([src[sp][j] * np.float32(g) for j, sp, g in plan.pieces])
    return np.clip(wav, -1.0, 1.0, out=wav)


def _write_flacs(args: tuple[list[UttPlan], str]) -> int:
    """Worker: write the FLACs of ``plans`` not already there with the right length; returns the number written."""
    import soundfile as sf

    plans, audio_dir = args
    n = 0
    for p in plans:
        path = Path(audio_dir) / f"{p.utt_id}.flac"
        if path.is_file():
            try:
                if sf.info(str(path)).frames == p.num_samples:
                    continue
            except RuntimeError:
                pass
        tmp = path.with_name(f".{path.name}.tmp")
        sf.write(str(tmp), render(p), SR, format="FLAC", subtype="PCM_16")
        os.replace(tmp, path)
        n += 1
    return n


def write_audio(plans: list[UttPlan], audio_dir: Path, src: dict[float, list[np.ndarray]], jobs: int = 2) -> int:
    """Write every planned utterance as ``<audio_dir>/<utt_id>.flac`` with ``jobs`` forked processes (numpy and
    soundfile only in them: no torch thread pool is forked)."""
    global _SRC
    audio_dir.mkdir(parents=True, exist_ok=True)
    _SRC = src
    shards = [(plans[j::jobs], str(audio_dir)) for j in range(jobs)]
    if jobs <= 1:
        return _write_flacs(shards[0])
    import multiprocessing as mp

    with mp.get_context("fork").Pool(jobs) as pool:
        return sum(pool.map(_write_flacs, shards))


# ---- features of the two paths -----------------------------------------------------------------------------------
def _dump_part(args: tuple[list, str]) -> str:
    """Worker (spawned): ``dump_features`` of a share of the utterances, one torch thread."""
    import torch

    from asr.data.dataset import dump_features

    torch.set_num_threads(1)
    utts, out = args
    dump_features(utts, out)
    return out


def build_old_features(distinct: list, utts_by_h: dict[float, list], work: Path, jobs: int = 2) -> None:
    """``corpus_<h>h/dump/feats.pt`` for every corpus: fbank of the distinct utterances computed once (``jobs``
    processes, each ``dump_features`` on every ``jobs``-th utterance); a corpus holds each of its utterances under its
    own id, repeated utterances as copies (their own storage, as separately computed features would be)."""
    import torch

    from asr.utils.io import atomic_torch_save

    part_dir = work / "old_parts"
    part_dir.mkdir(parents=True, exist_ok=True)
    parts = [(distinct[j::jobs], str(part_dir / f"part{j}.pt")) for j in range(jobs)]
    if jobs <= 1:
        outs = [_dump_part(parts[0])]
    else:
        import multiprocessing as mp

        with mp.get_context("spawn").Pool(jobs) as pool:
            outs = pool.map(_dump_part, parts)
    base: dict = {}
    for o in outs:
        base.update(torch.load(o, weights_only=True))
    keys = [u.utt_id for u in distinct]
    for h, us in sorted(utts_by_h.items()):
        sub = {u.utt_id: (base[keys[i]] if i < len(keys) else base[keys[i % len(keys)]].clone()) for i, u in enumerate(us)}
        atomic_torch_save(sub, corpus_dir(work, h) / "dump" / "feats.pt")
        del sub
    del base
    shutil.rmtree(part_dir, ignore_errors=True)


def build_new_features(utts_by_h: dict[float, list], work: Path, n_distinct: int, jobs: int = 2) -> dict[str, float]:
    """The lhotse path: ``cuts_from_data_dir`` + ``write_split`` of the distinct utterances (``work/distinct/data``),
    ``store_features`` (``jobs`` processes) into ``work/lhotse_feats``, CMVN to ``work/cmvn.pt``, and every corpus's
    ``cuts.jsonl.gz``: its utterances' stored cuts under their own ids (a repeated utterance: a copy of the cut,
    referencing the same stored features), sorted by id. Returns the time of each step."""
    from lhotse import CutSet
    from lhotse.utils import fastcopy

    from asr.data.lhotse_data import cuts_from_data_dir, load_cuts, store_features, write_split
    from asr.features.fbank import FbankOptions, save_cmvn_stats

    times = {}
    t = time.perf_counter()
    cuts, skipped = cuts_from_data_dir(work / "distinct" / "data")
    if skipped:
        raise SystemExit(f"cuts_from_data_dir skipped {len(skipped)} generated utterances, e.g. {skipped[0]}")
    raw = write_split(cuts, work / "lhotse_raw")
    del cuts
    times["new: cuts_from_data_dir + write_split"] = time.perf_counter() - t
    t = time.perf_counter()
    acc, skipped = store_features(raw, work / "lhotse_feats", FbankOptions(), num_jobs=jobs, progress=False)
    if skipped:
        raise SystemExit(f"store_features skipped {len(skipped)} cuts, e.g. {skipped[0]}")
    save_cmvn_stats(acc.stats(), work / "cmvn.pt")
    times[f"new: store_features (lilcom fbank, num_jobs={jobs})"] = time.perf_counter() - t
    t = time.perf_counter()
    stored = sorted(load_cuts(work / "lhotse_feats" / "cuts.jsonl.gz", lazy=False), key=lambda c: c.id)
    assert len(stored) == n_distinct, (len(stored), n_distinct)
    for h, us in sorted(utts_by_h.items()):
        out = []
        for i, u in enumerate(us):
            c = stored[i % n_distinct]
            out.append(c if i < n_distinct else fastcopy(c, id=u.utt_id, supervisions=[fastcopy(sp, id=u.utt_id, speaker=u.speaker) for sp in c.supervisions]))
        CutSet.from_cuts(out).to_file(corpus_dir(work, h) / "cuts.jsonl.gz")
    times["new: per-corpus manifests"] = time.perf_counter() - t
    return times


def build(args) -> dict[str, float]:
    """Generate the corpora, tokenizer, and both paths' features; returns the seconds of each phase."""
    from asr.data.datadir import write_data_dir
    from asr.text.tokenizer import Tokenizer

    work = Path(args.work)
    hours = sorted(args.hours)
    distinct_h = min(args.distinct_h or max(hours), max(hours))
    times: dict[str, float] = {}
    for h in hours:
        shutil.rmtree(corpus_dir(work, h), ignore_errors=True)
    for d in ("lhotse_raw", "lhotse_feats", "old_parts", "distinct", "rows"):
        shutil.rmtree(work / d, ignore_errors=True)
    t = time.perf_counter()
    sources = an4_sources(args.an4)
    src = load_sources(sources)
    lens = {sp: [len(x) for x in xs] for sp, xs in src.items()}
    texts = [s[1] for s in sources]
    plans = plan_corpus(lens, texts, distinct_h, args.seed, args.min_s, args.max_s)
    sizes = corpus_sizes(plans, hours)
    times[f"plan ({len(sources)} AN4 sources x {len(SPEEDS)} speeds loaded, {len(plans)} distinct utterances)"] = time.perf_counter() - t
    t = time.perf_counter()
    audio = work / "audio"
    written = write_audio(plans, audio, src, args.jobs)
    del src
    gc.collect()
    total_h = sum(p.num_samples for p in plans) / SR / 3600
    times[f"generate FLAC ({written} of {len(plans)} written, {total_h:.2f} h, {args.jobs} processes)"] = time.perf_counter() - t
    t = time.perf_counter()
    distinct = corpus_utterances(plans, len(plans), audio)
    write_data_dir(distinct, work / "distinct" / "data")
    utts_by_h = {}
    for h in hours:
        utts_by_h[h] = corpus_utterances(plans, sizes[h], audio)
        write_data_dir(utts_by_h[h], corpus_dir(work, h) / "data")
    Tokenizer.train(texts, work / "token" / "bpe40", "bpe", 40)
    times["Kaldi data dirs + BPE-40 tokenizer"] = time.perf_counter() - t
    t = time.perf_counter()
    build_old_features(distinct, utts_by_h, work, args.jobs)
    times[f"old: fbank -> feats.pt (dump_features, {args.jobs} processes) + per-corpus feats.pt saved"] = time.perf_counter() - t
    times.update(build_new_features(utts_by_h, work, len(plans), args.jobs))
    stamp = {"params": build_params(args), "distinct_utts": len(plans), "distinct_h": total_h, "sizes": {hours_label(h): sizes[h] for h in hours},
             "hours": {hours_label(h): sum(u.duration for u in utts_by_h[h]) / 3600 for h in hours}, "times": times}
    (work / BUILD_STAMP).write_text(json.dumps(stamp, indent=1))
    return times


def build_params(args) -> dict:
    return {"hours": sorted(args.hours), "distinct_h": args.distinct_h, "seed": args.seed, "min_s": args.min_s, "max_s": args.max_s, "an4": str(Path(args.an4).resolve())}


# ---- one measurement (a fresh process) -----------------------------------------------------------------------------
def vm_rss_mb(pid: int | str = "self", field: str = "VmRSS") -> float:
    """``VmRSS`` (resident now) or ``VmHWM`` (peak resident) of a process from ``/proc/<pid>/status``, MB.

    The peak is ``VmHWM``, not ``getrusage(...).ru_maxrss``: Linux folds the high-water mark of the memory a process
    had before ``execve`` into its ``ru_maxrss``, and ``subprocess`` starts children with ``vfork`` + ``exec``, so a
    child's ``ru_maxrss`` is at least the launching process's peak (here the build's, several GB). ``VmHWM`` belongs
    to the memory map, which ``exec`` creates afresh."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    return float("nan")


def pss_mb(pid: int | str = "self") -> float:
    """Proportional set size (pages shared with other processes counted in shares), MB; NaN if unreadable."""
    try:
        for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
            if line.startswith("Pss:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return float("nan")


def model_config(overrides: list[str]) -> dict:
    from hydra import compose, initialize_config_dir
    from omegaconf import OmegaConf

    from asr.utils.paths import CONF_DIR

    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        cfg = compose("train", overrides=[f"experiment={EXPERIMENT}", *overrides])
    return OmegaConf.to_container(cfg.model, resolve=True)


def make_loader(path: str, corpus: Path, tok, workers: int, batch_size: int, seed: int):
    """``(loader, sampler, number of utterances)`` of the old or new training data path for ``corpus``."""
    from torch.utils.data import DataLoader

    from asr.features.fbank import FbankOptions

    if path == "old":
        from asr.data.dataset import LengthBucketBatchSampler, load_split, make_collate

        ds = load_split(corpus / "data", corpus / "dump", tok, FbankOptions())
        lengths = [ds.num_frames(i) for i in range(len(ds))]
        sampler = LengthBucketBatchSampler(lengths, batch_size, 0, shuffle=True, seed=seed, num_replicas=1, rank=0)
        return DataLoader(ds, batch_sampler=sampler, collate_fn=make_collate(tok.pad_id), num_workers=workers), sampler, len(ds)
    if path == "new":
        from asr.data.lhotse_data import CutBatchDataset, load_cuts, make_sampler

        cuts = load_cuts(corpus / "cuts.jsonl.gz")
        sampler = make_sampler(cuts, batch_size, 0.0, shuffle=True, seed=seed, world_size=1, rank=0)
        n = sum(1 for _ in cuts)
        return DataLoader(CutBatchDataset(tok, FbankOptions(), (), seed), sampler=sampler, batch_size=None, num_workers=workers), sampler, n
    raise ValueError(f"path must be old or new, got {path!r}")


def measure(path: str, corpus: Path, work: Path, steps: int = 200, replay: int = 48, tput_batches: int = 100, workers: int = 2,
            batch_size: int = 8, overrides: str = SMALL_MODEL, threads: int = 1, seed: int = 0) -> dict:
    """One (path, corpus) measurement; meant to run alone in a fresh process (its peak RSS is the figure)."""
    import torch

    from asr.features.fbank import GlobalCMVN
    from asr.models.asr_model import build_model
    from asr.text.tokenizer import Tokenizer

    if threads:
        torch.set_num_threads(threads)
    corpus, work = Path(corpus), Path(work)
    row: dict = {"path": path, "corpus": corpus.name, "workers": workers, "threads": torch.get_num_threads(), "steps": steps}
    row["rss_start_mb"] = vm_rss_mb()
    t = time.perf_counter()
    tok = Tokenizer.from_file(work / "token" / "bpe40.model")
    loader, sampler, n_utts = make_loader(path, corpus, tok, workers, batch_size, seed)
    row.update(utts=n_utts, load_s=time.perf_counter() - t, rss_loaded_mb=vm_rss_mb(), peak_rss_loaded_mb=vm_rss_mb(field="VmHWM"))
    row["data_file_mb"] = (corpus / ("dump/feats.pt" if path == "old" else "cuts.jsonl.gz")).stat().st_size / 2**20
    torch.manual_seed(seed)
    cfg = model_config(overrides.split())
    model = build_model(cfg, tok.vocab_size, tok.sos_id, tok.eos_id, tok.pad_id, 80, GlobalCMVN.from_file(work / "cmvn.pt")).train()
    opt = torch.optim.Adam(model.parameters(), lr=1e-4)
    row["model_params"] = sum(p.numel() for p in model.parameters())
    row["model"] = "recipe default" if not overrides.strip() else overrides

    def train_step(b) -> None:
        out = model(b.feats, b.feat_lens, b.tokens, b.token_lens)
        opt.zero_grad(set_to_none=True)
        out["loss"].backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 5.0)
        opt.step()

    # (a), and (c): the last `replay` steps, in blocks of `block`, each block replayed from memory right after it
    # (interleaved, so both halves see the same background load; the loader stays open, its queue full)
    block, replay = 8, min(replay, steps)
    epoch, it, pss = 0, None, {}
    step_s, wait_s, pending, pairs, audio_s, none_batches, cpu_attached = [], [], [], [], 0.0, 0, 0.0
    while len(step_s) < steps:
        if it is None:
            sampler.set_epoch(epoch)
            it = iter(loader)
        c0, t0 = time.process_time(), time.perf_counter()
        try:
            b = next(it)
        except StopIteration:
            it, epoch = None, epoch + 1
            continue
        t1 = time.perf_counter()
        if b is None:
            none_batches += 1
            continue
        train_step(b)
        dt = time.perf_counter() - t0
        cpu_attached += time.process_time() - c0
        step_s.append(dt)
        wait_s.append(t1 - t0)
        audio_s += float(b.feat_lens.sum()) * 0.01
        if len(step_s) > steps - replay:
            pending.append((b, dt, t1 - t0))
        if len(step_s) == steps:  # memory of the training process and its workers at the last step
            pids = [w.pid for w in getattr(it, "_workers", [])]
            pss = {"pss_main_mb": pss_mb(), "pss_workers_mb": sum(pss_mb(p) for p in pids), "rss_workers_mb": [vm_rss_mb(p) for p in pids]}
        if pending and (len(pending) == block or len(step_s) == steps):
            for pb, pdt, pw in pending:
                r0 = time.perf_counter()
                train_step(pb)
                pairs.append((pdt, time.perf_counter() - r0, pw))
            pending = []
    row["peak_rss_mb"] = vm_rss_mb(field="VmHWM")
    row["ru_maxrss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # includes the launcher's peak (vm_rss_mb)
    row.update(pss)
    del it
    gc.collect()
    ru = resource.getrusage(resource.RUSAGE_CHILDREN)  # the workers of every epoch, all stopped now
    row["worker_peak_rss_mb"] = ru.ru_maxrss / 1024  # forked workers: their own peaks (pages shared with the parent included)
    row.update(epochs=epoch + 1, none_batches=none_batches, mean_step_s=float(np.mean(step_s)), train_audio_s_per_step=audio_s / len(step_s),
               wait_fraction=float(np.sum(wait_s) / np.sum(step_s)), train_cpu_s=cpu_attached, loader_cpu_s=ru.ru_utime + ru.ru_stime,
               loader_cpu_share=(ru.ru_utime + ru.ru_stime) / cpu_attached)
    attached, preloaded = float(sum(p[0] for p in pairs)), float(sum(p[1] for p in pairs))
    row.update(replay_steps=len(pairs), attached_tail_s=attached, preloaded_tail_s=preloaded, step_ratio=attached / preloaded,
               tail_wait_fraction=float(sum(p[2] for p in pairs)) / attached)
    # (b) loader throughput, no training: one epoch (up to tput_batches batches) after its first batch
    sampler.set_epoch(epoch + 1)
    t0 = time.perf_counter()
    it = iter(loader)
    n_b = n_u = 0
    first = None
    for b in it:
        if first is None:
            first = time.perf_counter()
            continue
        n_b += 1
        n_u += len(b.ids) if b is not None else 0
        if n_b >= tput_batches:
            break
    end = time.perf_counter()
    del it
    row.update(tput_first_batch_s=(first or end) - t0, tput_batches=n_b, tput_utts=n_u, loader_utt_per_s=n_u / (end - first) if n_b else float("nan"))
    return row


def run_child(args, path: str, h: float) -> dict:
    """``--measure`` in a fresh process (passive OpenMP waiting, as the project's training sets it)."""
    from asr.utils.threads import set_passive_omp_env

    env = dict(os.environ)
    set_passive_omp_env(env)
    out = Path(args.work) / "rows" / f"{path}_{hours_label(h)}h.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.unlink(missing_ok=True)
    cmd = [sys.executable, __file__, "--measure", path, "--corpus", str(corpus_dir(args.work, h)), "--work", str(args.work), "--steps", str(args.steps),
           "--replay", str(args.replay), "--tput_batches", str(args.tput_batches), "--workers", str(args.workers), "--batch_size", str(args.batch_size),
           "--overrides", args.overrides, "--threads", str(args.threads), "--seed", str(args.seed), "--json", str(out)]
    t = time.perf_counter()
    subprocess.run(cmd, env=env, check=True)
    row = json.loads(out.read_text())
    row.update(hours=h, wall_s=time.perf_counter() - t)
    return row


# ---- report --------------------------------------------------------------------------------------------------------
def table(rows: list[dict], stamp: dict | None = None) -> str:
    """The markdown table: one line per (corpus, path), growth relative to the smallest corpus of the same path."""
    base = {}
    for r in sorted(rows, key=lambda r: r["hours"]):
        base.setdefault(r["path"], r)
    real_h = (stamp or {}).get("hours", {})
    lines = ["| corpus h | utterances | path | peak RSS MB | RSS growth vs " + f"{hours_label(min(r['hours'] for r in rows))} h"
             + " | RSS after load MB | PSS main+workers MB | loader utt/s (2 workers) | step loader / preloaded | loader wait | loader CPU / training CPU | load s | s/step |",
             "|---:|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    names = {"old": "old (in-RAM feats.pt)", "new": "new (lhotse, lilcom)"}
    for r in sorted(rows, key=lambda r: (r["hours"], r["path"] != "old")):
        g = r["peak_rss_mb"] / base[r["path"]]["peak_rss_mb"] - 1
        h = real_h.get(hours_label(r["hours"]))
        lines.append(f"| {hours_label(r['hours'])}{f' ({h:.2f})' if h else ''} | {r['utts']} | {names.get(r['path'], r['path'])} | {r['peak_rss_mb']:.0f} | {g * 100:+.1f} % | {r['rss_loaded_mb']:.0f} |"
                     f" {r.get('pss_main_mb', float('nan')) + r.get('pss_workers_mb', float('nan')):.0f} | {r['loader_utt_per_s']:.0f} | {r['step_ratio']:.3f} |"
                     f" {r['tail_wait_fraction'] * 100:.1f} % | {r['loader_cpu_share'] * 100:.1f} % | {r['load_s']:.1f} | {r['mean_step_s']:.2f} |")
    return "\n".join(lines)


def verdict(rows: list[dict]) -> list[str]:
    out = []
    for path in ("new", "old"):
        rs = sorted((r for r in rows if r["path"] == path), key=lambda r: r["hours"])
        if len(rs) < 2:
            continue
        lo, hi = rs[0], rs[-1]
        g = hi["peak_rss_mb"] / lo["peak_rss_mb"] - 1
        per_h = (hi["peak_rss_mb"] - lo["peak_rss_mb"]) / (hi["hours"] - lo["hours"])
        file_per_h = (hi["data_file_mb"] - lo["data_file_mb"]) / (hi["hours"] - lo["hours"])
        what = "feats.pt" if path == "old" else "cuts.jsonl.gz"
        out.append(f"{path}: peak RSS {lo['peak_rss_mb']:.0f} MB at {hours_label(lo['hours'])} h -> {hi['peak_rss_mb']:.0f} MB at {hours_label(hi['hours'])} h"
                   f" ({g * 100:+.1f} %, {per_h:.1f} MB per added hour; RSS after loading {lo['rss_loaded_mb']:.0f} -> {hi['rss_loaded_mb']:.0f} MB;"
                   f" {what} {file_per_h:.2f} MB per added hour)" + (f"; done-criterion (<= 10 %): {'met' if g <= 0.10 else 'NOT met'}" if path == "new" else ""))
    worst = max((r["step_ratio"] for r in rows), default=float("nan"))
    out.append(f"step time with the loader attached / preloaded: worst {worst:.3f} (criterion <= 1.10: {'met' if worst <= 1.10 else 'NOT met'});"
               f" time waiting for the loader at most {max(r['tail_wait_fraction'] for r in rows) * 100:.1f} %;"
               f" loader CPU at most {max(r['loader_cpu_share'] for r in rows) * 100:.1f} % of the training process's")
    return out


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--work", type=Path, required=True, help="scratch folder for the corpora (never commit it)")
    ap.add_argument("--hours", type=lambda s: [float(x) for x in s.split(",")], default=[1.0, 10.0, 50.0], help="corpus sizes, comma-separated")
    ap.add_argument("--an4", default=os.environ.get("AN4_ROOT") or str(Path(__file__).resolve().parents[2] / "shared/data/an4"),
                    help="AN4 root (etc/, wav/); default $AN4_ROOT, else ../shared/data/an4 beside the repository")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--min_s", type=float, default=10.0, help="shortest generated utterance (s)")
    ap.add_argument("--max_s", type=float, default=20.0, help="longest generated utterance (s)")
    ap.add_argument("--distinct_h", type=float, default=0.0, help="hours of distinct generated utterances (0 = the largest corpus);"
                    " larger corpora repeat them under new ids (to fit the build into the time budget)")
    ap.add_argument("--jobs", type=int, default=2, help="processes for generation and fbank")
    ap.add_argument("--steps", type=int, default=200, help="training steps per measurement")
    ap.add_argument("--replay", type=int, default=48, help="last steps replayed from memory (in blocks of 8) for the step-time ratio")
    ap.add_argument("--tput_batches", type=int, default=100, help="batches timed for the loader throughput (at most one epoch)")
    ap.add_argument("--workers", type=int, default=2, help="DataLoader workers")
    ap.add_argument("--batch_size", type=int, default=8, help="utterances per batch (the recipe's)")
    ap.add_argument("--threads", type=int, default=1, help="torch intra-op threads of the training process")
    ap.add_argument("--overrides", default=SMALL_MODEL, help=f"Hydra overrides of {EXPERIMENT}'s model ('' = the recipe model)")
    ap.add_argument("--paths", default="old,new")
    ap.add_argument("--build_only", action="store_true", help="build the corpora and stop")
    ap.add_argument("--skip_build", action="store_true", help="reuse the corpora built by an earlier run with the same parameters")
    ap.add_argument("--measure", choices=["old", "new"], help=argparse.SUPPRESS)  # a measurement child
    ap.add_argument("--corpus", type=Path, help=argparse.SUPPRESS)
    ap.add_argument("--json", type=Path, default=None, help="also write the rows (or, with --measure, the row) here")
    args = ap.parse_args(argv)
    if args.measure:
        row = measure(args.measure, args.corpus, args.work, args.steps, args.replay, args.tput_batches, args.workers, args.batch_size, args.overrides, args.threads, args.seed)
        (args.json.write_text(json.dumps(row, indent=1)) if args.json else print(json.dumps(row, indent=1)))
        return
    import torch

    torch.set_num_threads(1)
    t_all = time.perf_counter()
    args.work.mkdir(parents=True, exist_ok=True)
    stamp_path = args.work / BUILD_STAMP
    if args.skip_build:
        stamp = json.loads(stamp_path.read_text()) if stamp_path.is_file() else None
        if not stamp or stamp["params"] != build_params(args):
            raise SystemExit(f"--skip_build: no build with these parameters in {args.work} ({stamp_path})")
        build_times, reused = stamp["times"], True
    else:
        build_times, reused = build(args), False
        stamp = json.loads(stamp_path.read_text())
    t_build = time.perf_counter() - t_all
    if args.build_only:
        for k, v in build_times.items():
            print(f"  {k}: {v:.0f} s")
        return
    rows = []
    for h in sorted(args.hours):
        for path in args.paths.split(","):
            rows.append(run_child(args, path, h))
            r = rows[-1]
            print(f"[{time.strftime('%H:%M:%S')}] {path} {hours_label(h)} h: peak RSS {r['peak_rss_mb']:.0f} MB, {r['mean_step_s']:.2f} s/step,"
                  f" ratio {r['step_ratio']:.3f}, loader {r['loader_utt_per_s']:.0f} utt/s ({r['wall_s']:.0f} s)", flush=True)
    t_total = time.perf_counter() - t_all
    cpu = next((ln.split(":", 1)[1].strip() for ln in Path("/proc/cpuinfo").read_text().splitlines() if ln.startswith("model name")), "?")
    r0 = rows[0]
    print(f"\ncommand: python {' '.join([Path(sys.argv[0]).as_posix(), *(argv if argv is not None else sys.argv[1:])])}")
    print(f"machine: {cpu}, {os.cpu_count()} CPUs; torch {torch.__version__}; model {EXPERIMENT}"
          f" {'(recipe default)' if not args.overrides.strip() else 'with ' + args.overrides} ({r0['model_params'] / 1e6:.2f} M parameters);"
          f" batches of {args.batch_size} utterances of {args.min_s:g}-{args.max_s:g} s; {args.steps} steps; {args.workers} workers; {args.threads} torch thread(s)\n")
    print(table(rows, stamp))
    print()
    for line in verdict(rows):
        print(line)
    print(f"\nphases{' (build reused from ' + str(stamp_path) + ')' if reused else ''}:")
    for k, v in build_times.items():
        print(f"  {k}: {v:.0f} s")
    for r in rows:
        print(f"  measure {r['path']} {hours_label(r['hours'])} h: {r['wall_s']:.0f} s")
    print(f"  build {t_build:.0f} s, total {t_total:.0f} s ({t_total / 60:.1f} min)")
    if args.json:
        args.json.write_text(json.dumps({"rows": rows, "build": stamp, "total_s": t_total}, indent=1))


if __name__ == "__main__":
    main()
