#!/usr/bin/env python3
"""Windowed (monotonic) and hard attention decoding against global attention: AN4 WER, and long recordings.

    python scripts/bench_window.py --model models/an4_pblstm_x4 --recipe recipes/an4 \
        --windows 4:12,8:24,16:48 --sets train_dev,test --long 60,120,300,600 --long_window 8:24 --threads 2

1. AN4 sets (``--sets``, the recipe's ``data/<set>/text`` and ``dump/<set>/feats.pt``): every search of
   ``--searches`` (``beam10_ctc0.3`` = the toolkit default, ``greedy`` = attention-only arg-max) with global
   attention, each window ``a:b`` of ``--windows`` (``att_window_back=a att_window_ahead=b``, encoder frames) and
   hard (argmax) attention; WER, CER, word substitutions/deletions/insertions and decode seconds (one process,
   length-sorted batches of ``--batch``).
2. Long recordings (``--long``, seconds): the test set's audio concatenated in ``wav.scp`` order (whole
   utterances, the list repeated as needed, reference = their transcripts joined) into one recording of at least
   that length, fbank over the whole recording, decoded as ONE utterance (no segmentation) by global and by
   windowed (each ``a:b`` of ``--long_window``) attention-only greedy search. Each decode runs in a child process that reports
   its wall time and peak memory above what it held before decoding (``VmHWM`` after ``clear_refs``, Linux).
   Joint CTC decoding is not used here: the CTC prefix scorer is O(T) per step over the whole recording.

``--plot_dir D`` also writes the attention of global and windowed (the first ``--long_window``) greedy decoding, the window
outlined in red, for the first test utterance (``D/window_<utt>.png``, ``D/global_<utt>.png``) and for the
shortest long recording (``D/long_<s>s_{global,window}.png``).

Every row names the measured quantity; nothing is timed in a test. Results of the recipe are in
recipes/an4/README.md ("Local, windowed and hard attention").
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import torch

from asr.decoding.search import DecodingOptions, decode_batch, resolve_options
from asr.metrics.wer import score

SEARCHES = {"beam10_ctc0.3": {}, "greedy": {"beam_size": 1, "ctc_weight": 0.0}}


def _load(model_path: str):
    from asr.inference import Speech2Text

    s2t = Speech2Text.from_pretrained(model_path)
    return s2t.model, s2t.tokenizer, s2t.fbank


def _texts(path: Path) -> dict[str, str]:
    out = {}
    for line in path.read_text().splitlines():
        if line.strip():
            k, _, v = line.partition(" ")
            out[k] = v.strip()
    return out


def _decode_set(model, tok, feats: dict[str, torch.Tensor], opts: DecodingOptions, batch: int) -> tuple[dict[str, str], float]:
    ids = sorted(feats, key=lambda k: feats[k].shape[0])
    hyps: dict[str, str] = {}
    t0 = time.perf_counter()
    for i in range(0, len(ids), batch):
        chunk = ids[i : i + batch]
        xs = torch.nn.utils.rnn.pad_sequence([feats[k] for k in chunk], batch_first=True)
        lens = torch.tensor([feats[k].shape[0] for k in chunk])
        for k, h in zip(chunk, decode_batch(model, xs, lens, opts)):
            hyps[k] = tok.decode(h.tokens)
    return hyps, time.perf_counter() - t0


def _row(name: str, refs: dict[str, str], hyps: dict[str, str], secs: float) -> str:
    ids = sorted(refs)
    r = score([refs[k] for k in ids], [hyps.get(k, "") for k in ids])
    w = r.words
    return f"| {name} | {100 * r.wer:.2f} | {100 * r.cer:.2f} | {w.sub} / {w.dele} / {w.ins} | {secs:.1f} |"


def an4_sets(a: argparse.Namespace, model, tok) -> None:
    recipe = Path(a.recipe)
    windows = [tuple(int(x) for x in w.split(":")) for w in a.windows.split(",") if w]
    for set_name in a.sets.split(","):
        refs = _texts(recipe / "data" / set_name / "text")
        feats = torch.load(recipe / "dump" / set_name / "feats.pt", weights_only=True)
        missing = sorted(set(refs) - set(feats))
        print(f"\n{set_name}: {len(refs)} utterances ({len(missing)} without features: {missing[:5]})")
        print("| search | attention | WER % | CER % | S / D / I (words) | decode s |\n|---|---|---|---|---|---|")
        for sname in a.searches.split(","):
            base = SEARCHES[sname]
            variants = [("global", {})] + [(f"window {w[0]}:{w[1]}", {"att_window_back": w[0], "att_window_ahead": w[1]}) for w in windows]
            variants.append(("hard (argmax)", {"hard_attention": True}))
            for vname, extra in variants:
                opts = resolve_options(model, {**base, **extra})
                hyps, secs = _decode_set(model, tok, feats, opts, a.batch)
                print(_row(f"{sname} | {vname}", refs, hyps, secs), flush=True)
        if a.plot_dir and set_name == "test":
            utt = sorted(refs)[0]
            _plots(a, model, tok, f"an4_{utt}", feats[utt], f"{utt} | ref: {refs[utt]}")


def _build_recording(recipe: Path, seconds: float, fbank) -> tuple[torch.Tensor, str, float, int]:
    """fbank ``(T, 80)`` of the test utterances concatenated to at least ``seconds``, the joined reference, the
    duration (s) and the number of utterances."""
    from asr.features.audio import load_audio
    from asr.features.fbank import compute_fbank

    scp = [line.split(maxsplit=1) for line in (recipe / "data/test/wav.scp").read_text().splitlines() if line.strip()]
    refs = _texts(recipe / "data/test/text")
    waves, words, n, i = [], [], 0, 0
    while n < seconds * fbank.sample_rate:
        utt, path = scp[i % len(scp)]
        x = load_audio(path.strip(), fbank.sample_rate)
        waves.append(x)
        words.append(refs[utt])
        n += x.numel()
        i += 1
    wav = torch.cat(waves)
    return compute_fbank(wav, fbank), " ".join(words), wav.numel() / fbank.sample_rate, i


def _plots(a: argparse.Namespace, model, tok, name: str, x: torch.Tensor, title: str) -> None:
    """Global and windowed greedy attention of one utterance ``x (T, 80)`` as PNGs in ``a.plot_dir``."""
    from asr.viz.alignment import plot_alignment

    win = tuple(int(v) for v in a.long_window.split(",")[0].split(":"))
    for mode, extra in (("global", {}), ("window", {"att_window_back": win[0], "att_window_ahead": win[1]})):
        opts = resolve_options(model, {"beam_size": 1, "ctc_weight": 0.0, **extra})
        (h,) = decode_batch(model, x[None], torch.tensor([x.shape[0]]), opts)
        tokens = tok.pieces(h.tokens) + (["<eos>"] if h.attention.shape[0] > len(h.tokens) else [])
        label = "global attention" if mode == "global" else f"windowed decoding {win[0]}:{win[1]} frames (red)"
        out = plot_alignment(h.attention.numpy(), tokens, Path(a.plot_dir) / f"{name}_{mode}.png", 0.01, model.encoder.subsampling_factor,
                             f"{title} | {label} | greedy | hyp: {tok.decode(h.tokens)[:300]}", win if mode == "window" else None)
        print(f"wrote {out}")


def _rss_kb(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    return 0


def child(a: argparse.Namespace) -> None:
    """Decode one recording (``--child feats.pt``) and print a JSON line: hypothesis, seconds, peak memory."""
    torch.set_num_threads(a.threads)
    model, tok, _ = _load(a.model)
    x = torch.load(a.child, weights_only=True)
    extra = {} if a.child_window == "global" else dict(zip(("att_window_back", "att_window_ahead"), (int(v) for v in a.child_window.split(":"))))
    opts = resolve_options(model, {"beam_size": 1, "ctc_weight": 0.0, **extra})
    xs, lens = x[None], torch.tensor([x.shape[0]])
    with torch.no_grad():
        t0 = time.perf_counter()
        hs, _ = model.encode(xs, lens)
        enc_s = time.perf_counter() - t0
        del hs
    Path("/proc/self/clear_refs").write_text("5")  # reset the peak-RSS mark (Linux)
    before = _rss_kb("VmRSS")
    t0 = time.perf_counter()
    (h,) = decode_batch(model, xs, lens, opts)
    secs = time.perf_counter() - t0
    peak = _rss_kb("VmHWM") - before
    print(json.dumps({"hyp": tok.decode(h.tokens), "decode_s": secs, "encode_s": enc_s, "peak_mb": peak / 1024, "tokens": len(h.tokens), "enc_frames": int(h.attention.shape[1])}))


def long_recordings(a: argparse.Namespace, model, tok, fbank) -> None:
    recipe = Path(a.recipe)
    work = Path(a.work)
    work.mkdir(parents=True, exist_ok=True)
    print("\n| recording | utterances | ref words | attention | WER % | S / D / I | hyp tokens | decode s (encoder s) | peak MB above start |\n|---|---|---|---|---|---|---|---|---|")
    for sec in [float(s) for s in a.long.split(",") if s]:
        feats, ref, dur, n_utt = _build_recording(recipe, sec, fbank)
        path = work / f"long_{int(sec)}s.pt"
        torch.save(feats, path)
        if a.plot_dir and sec == min(float(s) for s in a.long.split(",") if s):
            _plots(a, model, tok, f"long_{int(sec)}s", feats, f"{dur:.0f} s of AN4 test audio ({n_utt} utterances)")
        for mode in ("global", *a.long_window.split(",")):
            out = subprocess.run(
                [sys.executable, __file__, "--model", a.model, "--child", str(path), "--child_window", mode, "--threads", str(a.threads)],
                capture_output=True, text=True,
            )
            if out.returncode != 0:
                print(f"| {dur:.0f} s | {n_utt} | {len(ref.split())} | {mode} | failed: {out.stderr.strip().splitlines()[-1:]} |", flush=True)
                continue
            r = json.loads(out.stdout.strip().splitlines()[-1])
            s = score([ref], [r["hyp"]])
            name = "global" if mode == "global" else f"window {mode}"
            print(f"| {dur:.0f} s | {n_utt} | {len(ref.split())} | {name} | {100 * s.wer:.1f} | {s.words.sub} / {s.words.dele} / {s.words.ins} | {r['tokens']} | {r['decode_s']:.1f} ({r['encode_s']:.1f}) | {r['peak_mb']:.0f} |", flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", required=True, help="an exported model dir (models/...) or a training checkpoint")
    ap.add_argument("--recipe", default="recipes/an4", help="recipe folder with data/<set> and dump/<set> (stages 1-2)")
    ap.add_argument("--sets", default="train_dev,test", help="AN4 sets for part 1 ('' = skip)")
    ap.add_argument("--searches", default="beam10_ctc0.3,greedy", help=f"out of {list(SEARCHES)}")
    ap.add_argument("--windows", default="4:12,8:24,16:48", help="a:b windows (encoder frames before:after the previous peak)")
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--long", default="", help="comma-separated long-recording lengths in seconds ('' = skip)")
    ap.add_argument("--long_window", default="8:24", help="comma-separated a:b windows for the long recordings (the first is plotted)")
    ap.add_argument("--work", default="/tmp/bench_window")
    ap.add_argument("--plot_dir", default="", help="write attention plots with the window outlined here")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--child", default="", help=argparse.SUPPRESS)
    ap.add_argument("--child_window", default="global", help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.child:
        child(a)
        return
    torch.set_num_threads(a.threads)
    model, tok, fbank = _load(a.model)
    print(f"model {a.model}, {a.threads} thread(s), torch {torch.__version__}")
    if a.sets:
        an4_sets(a, model, tok)
    if a.long:
        long_recordings(a, model, tok, fbank)


if __name__ == "__main__":
    main()
