#!/usr/bin/env python3
"""Decoding speed of each search against attention greedy search, measured in one process.

Engine mode (``--engine``): the pipeline of ``asr-decode``/``Speech2Text`` (:class:`asr.decoding.engine.Engine`:
audio loading, fbank, length-sorted batches, search) on a Kaldi data dir, for each search (greedy, beam
``--beam``, beam + CTC ``--ctc_weight``) and each batch size of ``--batches``, one row each: seconds in the search
(``decode s``), wall seconds of the whole run (loading and fbank included), RTF of both (seconds / seconds of audio),
RTFx (audio / wall) and WER; ``--encoder_dtypes float32,bfloat16`` runs each row once per encoder compute dtype
(:meth:`asr.models.asr_model.AttentionASRModel.set_encoder_dtype`) and counts the hypotheses equal to the first
dtype's (``same hyps``); ``--procs 1,2`` adds rows of ``asr-decode num_procs=N`` (child processes, 1 thread
each unless ``--threads``; wall time from the command's start, start-up included) with their throughput ratio to
one process::

    python scripts/bench_decode.py --engine --ckpt models/an4_pblstm_x4 --data_dir recipes/an4/data/test \
        --batches 8,32 --threads 2 --procs 1,2 --json bench_engine.json

    python scripts/bench_decode.py --ckpt recipes/an4/exp/an4_pblstm_ctc/checkpoints/avg5.ckpt \
        --feats recipes/an4/dump/test/feats.pt --utts 64 --batch 16 --threads 1

Times greedy, attention beam search, joint CTC/attention beam search and CTC greedy over the same
utterances (length-sorted batches of ``--batch``), ``--repeats`` interleaved rounds, and prints the median
seconds per round, the real-time factor (decode time / audio time, 10 ms frames) and the ratio to greedy.

Long-form mode (``--longform``): builds recordings of the given lengths by concatenating the AN4 test audio of
``--wav_scp`` (in order, repeated), decodes each with ``asr-decode`` in a child process (its defaults: long-form
segmentation at ``longform_max_s``) at ``--beam`` + CTC ``--ctc_weight``, and reports the child's peak RSS
(``os.wait4``), wall time and RTF; then decodes the AN4 test data dir (``--data_dir``/``--dump_dir``) greedily and
at the same beam and reports time and WER of both::

    python scripts/bench_decode.py --longform 60,600,1800 --ckpt exp/an4_pblstm_location_aware/checkpoints/avg5.ckpt \
        --wav_scp recipes/an4/data/test/wav.scp --data_dir recipes/an4/data/test --dump_dir recipes/an4/dump/test \
        --beam 10 --ctc_weight 0.3 --threads 2 --work /tmp/bench_longform
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

from asr.decoding.search import DecodingOptions, decode_batch
from asr.models.checkpoint import load_checkpoint


def _concat_recording(wav_scp: Path, seconds: float, out: Path) -> float:
    """Write ``out`` (16 kHz PCM16): the files of ``wav_scp`` in order, repeated, cut to ``seconds``; returns its
    duration (s)."""
    import numpy as np
    import soundfile as sf

    from asr.features.audio import load_audio

    paths = [line.split(maxsplit=1)[1].strip() for line in wav_scp.read_text().splitlines() if line.strip()]
    need, parts, n, i = int(seconds * 16000), [], 0, 0
    while n < need:
        x = load_audio(paths[i % len(paths)]).numpy()
        parts.append(x)
        n += x.size
        i += 1
    sf.write(str(out), np.concatenate(parts)[:need], 16000, subtype="PCM_16")
    return need / 16000


def _run_decode(overrides: list[str], threads: int) -> tuple[dict, float, float]:
    """``asr-decode`` in a child process; returns its meta.json, wall seconds and peak RSS (GB)."""
    env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
    t0 = time.perf_counter()
    proc = subprocess.Popen([sys.executable, "-m", "asr.cli.decode", *overrides, f"threads={threads}"], env=env, stdout=subprocess.DEVNULL)
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - t0
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"asr-decode {' '.join(overrides)} failed (exit {os.waitstatus_to_exitcode(status)})")
    out_dir = next(o.split("=", 1)[1] for o in overrides if o.startswith("out_dir="))
    return json.loads(Path(out_dir, "meta.json").read_text()), wall, usage.ru_maxrss / 1024**2


def longform(a: argparse.Namespace) -> None:
    """The long-form and AN4-test measurements of the module docstring."""
    from asr.cli.score import score_decode_dir

    work = Path(a.work)
    work.mkdir(parents=True, exist_ok=True)
    search = [f"beam_size={a.beam}", f"ctc_weight={a.ctc_weight}"]
    print(f"{'recording':<12} {'segments':>8} {'peak RSS GB':>11} {'wall s':>8} {'decode s':>9} {'RTF':>7}")
    for sec in [float(x) for x in a.longform.split(",") if x]:
        wav = work / f"an4test_{int(sec)}s.wav"
        dur = _concat_recording(Path(a.wav_scp), sec, wav)
        meta, wall, rss = _run_decode([f"ckpt={a.ckpt}", f"audio=[{wav}]", f"out_dir={work / f'dec_{int(sec)}s'}", "resume=false", *search], a.threads)
        print(f"{dur:>10.0f} s {meta['n_segments']:>8} {rss:>11.2f} {wall:>8.1f} {meta['decode_s']:>9.1f} {meta['rtf']:>7.4f}", flush=True)
    if a.data_dir:
        print(f"\nAN4 test ({a.data_dir}): {'search':<22} {'decode s':>9} {'RTF':>7} {'WER %':>7} {'peak RSS GB':>11}")
        base = None
        for name, opts in (("greedy", ["beam_size=1", "ctc_weight=0"]), (f"beam{a.beam} ctc{a.ctc_weight:g}", search)):
            d = work / f"an4test_{name.replace(' ', '_')}"
            dump = [f"dump_dir={a.dump_dir}"] if a.dump_dir else []
            meta, _, rss = _run_decode([f"ckpt={a.ckpt}", f"data_dir={a.data_dir}", *dump, f"out_dir={d}", "resume=false", *opts], a.threads)
            wer = 100 * score_decode_dir(d).wer
            base = base or meta["decode_s"]
            print(f"{'':<28}{name:<22} {meta['decode_s']:>9.1f} {meta['rtf']:>7.4f} {wer:>7.2f} {rss:>11.2f}  ({meta['decode_s'] / base:.2f} x greedy)", flush=True)


def engine_rows(a: argparse.Namespace) -> list[dict]:
    """The rows of engine mode (module docstring); printed as they come, returned for ``--json``."""
    import dataclasses

    from asr.decoding.decode_dir import inputs_of
    from asr.decoding.engine import Engine, check_encoder_dtype
    from asr.metrics.wer import score

    if a.device.startswith("cuda"):
        sync = torch.cuda.synchronize
    else:
        sync = lambda: None  # noqa: E731
    engine = Engine.load(a.ckpt, device=a.device, batch_size=1, max_frames=0)
    inputs, skipped = inputs_of({"data_dir": a.data_dir}, engine)
    if a.limit:
        inputs = inputs[: a.limit]
    refs = [i.ref for i in inputs]
    searches = [("greedy", {"beam_size": 1, "ctc_weight": 0.0}), (f"beam{a.beam}", {"beam_size": a.beam, "ctc_weight": 0.0})]
    if engine.model.ctc is not None and a.ctc_weight > 0:
        searches.append((f"beam{a.beam}+ctc{a.ctc_weight:g}", {"beam_size": a.beam, "ctc_weight": a.ctc_weight}))
    if a.searches:
        searches = [s for s in searches if s[0] in a.searches.split(",")]
    list(engine.run(inputs[:2], batch_size=2))  # warm-up (first-call allocations, CUDA context)
    rows = []
    device = torch.cuda.get_device_name() if a.device.startswith("cuda") else f"CPU ({os.cpu_count()} cores), {torch.get_num_threads()} thread(s)"
    print(f"{len(inputs)} utterances of {a.data_dir}{f' ({len(skipped)} skipped by the data dir check)' if skipped else ''}; {device}")
    print(f"{'search':<18} {'encoder':<9} {'batch':>5} {'decode s':>9} {'wall s':>7} {'RTF search':>10} {'RTF wall':>9} {'RTFx':>7} {'WER %':>6} {'same hyps':>9}")
    first_hyps: dict[tuple[str, int], list[str]] = {}
    for (name, opts), enc_dtype, bs in [(s, d, int(b)) for s in searches for b in a.batches.split(",") if b for d in a.encoder_dtypes.split(",")]:
        options = dataclasses.replace(engine.options, **opts)
        for m in engine.models:  # same process, same inputs: the first dtype listed is the baseline
            m.set_encoder_dtype(check_encoder_dtype(enc_dtype, engine.device))
        engine.stats.update({k: type(v)(0) for k, v in engine.stats.items()})
        sync()
        t0 = time.perf_counter()
        res = list(engine.run(inputs, options=options, batch_size=bs))
        sync()
        wall = time.perf_counter() - t0
        hyps = [" ".join(engine.tokenizer.decode(u.hyp.tokens) for u in r.units if u.hyp is not None) for r in res]
        audio = engine.stats["audio_s"]
        wer = 100 * score(refs, hyps).wer
        same = sum(x == y for x, y in zip(first_hyps.setdefault((name, bs), hyps), hyps))
        row = {"search": name, "encoder_dtype": enc_dtype, "same_hyps": same, "batch": bs, "decode_s": round(engine.stats["decode_s"], 3), "wall_s": round(wall, 3), "audio_s": round(audio, 1),
               "rtf_search": round(engine.stats["decode_s"] / audio, 5), "rtf_wall": round(wall / audio, 5), "rtfx": round(audio / wall, 1), "wer": round(wer, 2),
               "device": device, "n_utts": len(inputs)}
        rows.append(row)
        print(f"{name:<18} {enc_dtype:<9} {bs:>5} {row['decode_s']:>9.2f} {wall:>7.2f} {row['rtf_search']:>10.4f} {row['rtf_wall']:>9.4f} {row['rtfx']:>7.1f} {wer:>6.2f} "
              f"{same:>5}/{len(hyps)}", flush=True)
    for n in [int(x) for x in a.procs.split(",") if x]:
        out_dir = Path(a.work) / f"procs{n}"
        threads = a.threads if a.threads else 1
        t0 = time.perf_counter()
        proc = subprocess.run([sys.executable, "-m", "asr.cli.decode", f"ckpt={a.ckpt}", f"data_dir={a.data_dir}", f"out_dir={out_dir}", "resume=false",
                               f"num_procs={n}", f"threads={threads}", f"device={a.device}", f"beam_size={a.beam}", f"ctc_weight={a.ctc_weight}"],
                              env={**os.environ, "OMP_NUM_THREADS": str(threads)}, capture_output=True, text=True)
        wall = time.perf_counter() - t0
        if proc.returncode:
            raise SystemExit(f"asr-decode num_procs={n} failed: {proc.stderr[-1000:]}")
        meta = json.loads((out_dir / "meta.json").read_text())
        row = {"search": f"beam{a.beam}+ctc{a.ctc_weight:g}", "procs": n, "threads": threads, "wall_s": round(wall, 2), "decode_s": meta["decode_s"], "audio_s": meta["audio_s"]}
        rows.append(row)
        base = next(r for r in rows if r.get("procs") == 1) if any(r.get("procs") == 1 for r in rows) else row
        print(f"asr-decode num_procs={n} ({threads} thread each): wall {wall:.1f} s (start-up included), decode {meta['decode_s']:.1f} s (slowest process); "
              f"throughput x{base['wall_s'] / wall:.2f} wall, x{base['decode_s'] / meta['decode_s']:.2f} decode vs 1 process", flush=True)
    if a.json:
        Path(a.json).write_text(json.dumps(rows, indent=1) + "\n")
    return rows


def entrypoints(a: argparse.Namespace) -> None:
    """One long recording (whole AN4 utterances of ``--data_dir`` one after another, repeated, until ``--entrypoints``
    seconds) through the three entry points, each in a child process (``--threads`` threads): peak RSS (``os.wait4``),
    wall seconds, RTF (wall / audio), WER against the utterances' transcripts joined, and whether the three texts are
    identical. Compare the WER with the per-utterance WER of the same search on ``--data_dir``."""
    import numpy as np
    import soundfile as sf

    from asr.features.audio import load_audio
    from asr.metrics.wer import score

    work = Path(a.work)
    work.mkdir(parents=True, exist_ok=True)
    d = Path(a.data_dir)
    texts = dict(line.split(" ", 1) for line in (d / "text").read_text().splitlines() if " " in line)
    utts = [line.split(maxsplit=1) for line in (d / "wav.scp").read_text().splitlines() if line.strip()]
    need, parts, refs, n, i = int(float(a.entrypoints) * 16000), [], [], 0, 0
    while n < need:
        uid, path = utts[i % len(utts)]
        x = load_audio(path.strip()).numpy()
        parts.append(x)
        refs.append(texts.get(uid, "").strip())
        n += x.size
        i += 1
    wav = work / f"long_{int(float(a.entrypoints))}s.wav"
    sf.write(str(wav), np.concatenate(parts), 16000, subtype="PCM_16")
    dur, ref = n / 16000, " ".join(refs)
    opts = {"beam_size": a.beam, "ctc_weight": a.ctc_weight}
    env = {**os.environ, "OMP_NUM_THREADS": str(a.threads)}
    s2t_out, tr_out, dec_dir = work / "s2t.txt", work / "transcribe.tsv", work / "decode"
    runs = {
        "Speech2Text.transcribe": [sys.executable, "-c", "import sys; from asr import Speech2Text; "
                                   f"r = Speech2Text.from_pretrained({a.ckpt!r}, threads={a.threads}, beam_size={a.beam}, ctc_weight={a.ctc_weight}).transcribe([{str(wav)!r}])[0]; "
                                   f"open({str(s2t_out)!r}, 'w').write(r.text)"],
        "asr-transcribe": [sys.executable, "-m", "asr.cli.transcribe", "--model", a.ckpt, "--threads", str(a.threads), "--beam-size", str(a.beam), "--ctc-weight", str(a.ctc_weight), str(wav)],
        "asr-decode": [sys.executable, "-m", "asr.cli.decode", f"ckpt={a.ckpt}", f"audio={wav}", f"out_dir={dec_dir}", "overwrite=true", "resume=false", f"threads={a.threads}",
                       *(f"{k}={v}" for k, v in opts.items())],
    }
    hyps = {}
    print(f"{dur:.0f} s recording ({i} AN4 utterances of {d}), beam {a.beam} + CTC {a.ctc_weight:g}, {a.threads} thread(s)")
    print(f"{'entry point':<24} {'peak RSS GB':>11} {'wall s':>7} {'RTF':>7} {'WER %':>6}")
    for name, cmd in runs.items():
        t0 = time.perf_counter()
        out = open(tr_out, "w") if name == "asr-transcribe" else subprocess.DEVNULL
        proc = subprocess.Popen(cmd, env=env, stdout=out, stderr=subprocess.DEVNULL)
        _, status, usage = os.wait4(proc.pid, 0)
        wall = time.perf_counter() - t0
        if os.waitstatus_to_exitcode(status) != 0:
            raise SystemExit(f"{name} failed (exit {os.waitstatus_to_exitcode(status)})")
        if name == "Speech2Text.transcribe":
            hyps[name] = s2t_out.read_text()
        elif name == "asr-transcribe":
            hyps[name] = tr_out.read_text().rstrip("\n").split("\t", 1)[1]
        else:
            hyps[name] = json.loads((dec_dir / "results.jsonl").read_text().splitlines()[0])["hyp"]
        wer = 100 * score([ref], [hyps[name]]).wer
        print(f"{name:<24} {usage.ru_maxrss / 1024**2:>11.2f} {wall:>7.1f} {wall / dur:>7.4f} {wer:>6.2f}", flush=True)
    print("identical text across the three:", len(set(hyps.values())) == 1)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--ckpt", required=True)
    ap.add_argument("--feats", help="feats.pt of a dump dir (utterance id -> (T, 80) fbank); the search comparison")
    ap.add_argument("--longform", default="", help="comma-separated recording lengths in seconds (long-form mode)")
    ap.add_argument("--wav_scp", default="recipes/an4/data/test/wav.scp")
    ap.add_argument("--data_dir", default="", help="AN4 test data dir for the greedy vs beam time/WER (long-form mode)")
    ap.add_argument("--dump_dir", default="")
    ap.add_argument("--work", default="bench_longform")
    ap.add_argument("--utts", type=int, default=64)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--beam", type=int, default=10)
    ap.add_argument("--ctc_weight", type=float, default=0.5)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--entrypoints", default="", help="seconds: one recording of --data_dir's utterances through the 3 entry points")
    ap.add_argument("--engine", action="store_true", help="engine mode: --data_dir through the decoding engine (module docstring)")
    ap.add_argument("--encoder_dtypes", default="float32", help="engine mode: encoder compute dtypes (comma-separated, e.g. float32,bfloat16); "
                    "'same hyps' counts hypotheses equal to the first dtype's")
    ap.add_argument("--batches", default="8,32", help="engine mode: batch sizes (comma-separated)")
    ap.add_argument("--searches", default="", help="engine mode: only these searches (greedy, beam<K>, beam<K>+ctc<λ>; default all)")
    ap.add_argument("--procs", default="", help="engine mode: also asr-decode with these process counts, e.g. 1,2")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--limit", type=int, default=0, help="engine mode: first N utterances only (0 = all)")
    ap.add_argument("--json", default="", help="engine mode: write the rows here")
    a = ap.parse_args()
    if a.entrypoints:
        entrypoints(a)
        return
    if a.engine:
        if not a.data_dir:
            ap.error("--engine needs --data_dir")
        torch.set_num_threads(a.threads)
        engine_rows(a)
        return
    if a.longform:
        longform(a)
        return
    if not a.feats:
        ap.error("--feats is needed unless --longform is given")
    torch.set_num_threads(a.threads)
    model, _, _ = load_checkpoint(a.ckpt)
    feats = torch.load(a.feats, weights_only=True)
    items = sorted(feats.values(), key=lambda x: x.shape[0])[: a.utts]
    batches = []
    for i in range(0, len(items), a.batch):
        chunk = items[i : i + a.batch]
        batches.append((torch.nn.utils.rnn.pad_sequence(chunk, batch_first=True), torch.tensor([x.shape[0] for x in chunk])))
    audio_s = sum(x.shape[0] for x in items) * 0.01
    searches = {"greedy": DecodingOptions(beam_size=1, length_penalty=0.5, ctc_weight=0.0), f"beam{a.beam}": DecodingOptions(beam_size=a.beam, length_penalty=0.5, ctc_weight=0.0)}
    if model.ctc is not None:
        searches[f"beam{a.beam} joint ctc{a.ctc_weight:g}"] = DecodingOptions(beam_size=a.beam, length_penalty=0.5, ctc_weight=a.ctc_weight)
        searches["ctc greedy"] = DecodingOptions(beam_size=1, ctc_weight=1.0)
    times: dict[str, list[float]] = {k: [] for k in searches}
    for _ in range(a.repeats):
        for name, opts in searches.items():
            t0 = time.perf_counter()
            for xs, lens in batches:
                decode_batch(model, xs, lens, opts)
            times[name].append(time.perf_counter() - t0)
    base = statistics.median(times["greedy"])
    print(f"{len(items)} utterances, {audio_s:.1f} s audio, batch {a.batch}, {a.threads} thread(s), {a.repeats} rounds")
    print(f"{'search':<26} {'median s':>9} {'RTF':>8} {'x greedy':>9}")
    for name, ts in times.items():
        m = statistics.median(ts)
        print(f"{name:<26} {m:9.2f} {m / audio_s:8.4f} {m / base:9.2f}")


if __name__ == "__main__":
    main()
