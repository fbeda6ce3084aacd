"""Training throughput and peak memory of the AN4 recipes' models, per batching / precision / compile setting.

    python scripts/bench_train.py --recipe recipes/an4 --device cuda            # after recipe stages 1-3
    python scripts/bench_train.py --recipe recipes/an4 --device cpu --steps 5 --threads 2
    python scripts/bench_train.py --device cpu --models transformer --only_b8 --bf16 --threads 1 \
        --overrides "model.encoder.d_model=192 model.encoder.ff_dim=768 ..."   # the CPU-sized Transformer

For each model (the default pBLSTM experiment ``an4/location_aware_x4_noaug`` and ``an4/transformer_ctc``) and
each setting, it runs real training steps (forward with the teacher-forced attention + CTC loss, backward,
gradient clipping at 5, Adam) on the recipe's own ``train_nodev`` fbank dumps and tokenizer, batched by the
training sampler (``LengthBucketBatchSampler``, batch order shuffled), and prints

- seconds of audio per second (and hours of audio per device-hour), utterances per second, optimiser steps per
  second, peak device memory (CUDA only), and each figure's ratio to the first row of that model (the baseline:
  batches of 8, fp32, eager), all measured in this process, one setting after the other;

The loop is the model's alone (no Lightning, no validation, no checkpoint writes, no SpecAugment): the
Trainer's own per-epoch figures are in each experiment's ``train_summary.json`` (recipes/an4/README.md, "GPU").
``--stepwise`` adds, for the RNN decoder, a row with its teacher forcing as ``U`` calls of the decoding ``step``
(embedding and output layer inside the loop: the training loop before it was hoisted); ``--compile_step`` rows
with that step compiled (``compile_decoder_step``; compile time in the last column). ``--compile`` adds rows with ``torch.compile`` on the encoder (the attention decoders' step loops are left
eager; compile time is reported, not included in the throughput). ``--count_ops`` adds, per row, the operator
calls of one training step (``torch.profiler``: ATen calls, top-level ATen calls, CUDA kernel launches), per step
and per output token: where a small-batch step is bound by calls, not arithmetic, these predict its time.

``--competing N`` measures instead how a shared CPU slows training (issue 29, "Threads that do not fight"): the
first model of ``--models``, batches of 8, fp32, on the CPU, alone and while ``N`` other busy processes
(``python -c "while True: pass"``) run, for three thread settings, each in a fresh process (OpenMP reads its
environment once, on ``import torch``): torch's defaults (one thread per core, OpenMP waiting actively),
passive OpenMP waiting with the default threads, and ``configure_threads(0)`` with passive waiting (the
project's default, :mod:`asr.utils.threads`). It prints seconds per step and the ratio with / without
competition for each; ``--threads`` does not apply there.

    python scripts/bench_train.py --recipe recipes/an4 --models pblstm --competing 1 --steps 4 --warmup 1
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import random
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from asr.data.dataset import LengthBucketBatchSampler, load_split, make_collate
from asr.features.fbank import FbankOptions, GlobalCMVN
from asr.models.asr_model import build_model
from asr.text.tokenizer import Tokenizer
from asr.utils.paths import CONF_DIR
from asr.utils.threads import PASSIVE_OMP_ENV, busy_cores, configure_threads, cpu_ticks, sample_busy_cores, set_passive_omp_env

EXPERIMENTS = {"pblstm": "an4/location_aware_x4_noaug", "transformer": "an4/transformer_ctc"}


def model_config(experiment: str, overrides: list[str] | None = None) -> dict:
    """The ``model`` config of a training experiment, as ``asr-train experiment=... <overrides>`` composes it
    (``overrides``: Hydra overrides such as ``model.encoder.d_model=192``; only their ``model`` part matters)."""
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        cfg = compose("train", overrides=[f"experiment={experiment}", *(overrides or [])])
    return OmegaConf.to_container(cfg.model, resolve=True)


def count_ops(step, device: str) -> dict:
    """Operator calls of one training step ``step()`` (forward, backward, clipping, Adam), by ``torch.profiler``:
    ``aten_calls`` every ``aten::`` call (nested ones included), ``top_aten`` those not inside another ``aten::``
    call (what the Python side dispatches), ``kernels`` CUDA kernel launches (CUDA only, else NaN). At small
    batches a step's time follows these counts, not its arithmetic (recipes/an4/README.md, "GPU")."""
    from torch.profiler import ProfilerActivity, profile

    acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.startswith("cuda") else [])
    with profile(activities=acts) as prof:
        step()
        if device.startswith("cuda"):
            torch.cuda.synchronize()
    events = prof.events()
    aten = [e for e in events if e.name.startswith("aten::")]
    # A call is top-level when no aten:: call on the same thread encloses it (profiler intervals nest).
    top, open_ends = 0, {}
    for e in sorted(aten, key=lambda e: (e.thread, e.time_range.start, -e.time_range.end)):
        if open_ends.get(e.thread, -1) < e.time_range.end:
            top += 1
            open_ends[e.thread] = e.time_range.end
    kernels = sum(1 for e in events if e.device_type == torch.autograd.DeviceType.CUDA) if device.startswith("cuda") else float("nan")
    return {"aten_calls": len(aten), "top_aten": top, "kernels": kernels}


def run_setting(model_cfg: dict, ds, tok: Tokenizer, cmvn, device: str, batch_size: int, max_duration: float, bf16: bool, compile_: bool, steps: int, warmup: int, seed: int = 0, decoder_loop: str = "", ops: bool = False) -> dict:
    """Time ``steps`` training steps after ``warmup`` untimed ones; returns the row's figures. ``decoder_loop``:
    "" (the model's own), ``"stepwise"`` (the RNN decoder's teacher forcing as U calls of its decoding ``step``,
    the loop before the hoisted one) or ``"compiled"`` (``compile_decoder_step``). ``ops``: also count the
    operator calls of one more step on the first batch (:func:`count_ops`), per step and per output token
    (reference tokens + eos of that batch)."""
    stepwise, compile_step = decoder_loop == "stepwise", decoder_loop == "compiled"
    torch.manual_seed(seed)
    model = build_model(model_cfg, tok.vocab_size, tok.sos_id, tok.eos_id, tok.pad_id, 80, cmvn).to(device).train()
    if stepwise:
        model.decoder.forward = model.decoder.forward_stepwise
    if compile_step:
        model.decoder.compile_step()
    compile_s = 0.0
    if compile_:
        model.encoder = torch.compile(model.encoder, dynamic=True)
    opt = torch.optim.Adam(model.parameters(), lr=1e-4)
    lengths = [ds.num_frames(i) for i in range(len(ds))]
    sampler = LengthBucketBatchSampler(lengths, batch_size, int(max_duration / 0.01) if max_duration else 0, shuffle=True, seed=seed, num_replicas=1, rank=0)
    collate = make_collate(tok.pad_id)
    batches = []
    epoch = 0
    while len(batches) < steps + warmup:
        sampler.set_epoch(epoch)
        batches += [collate([ds[i] for i in b]) for b in sampler]
        epoch += 1
    batches = batches[: steps + warmup]
    amp = torch.autocast(device_type="cuda" if device.startswith("cuda") else "cpu", dtype=torch.bfloat16) if bf16 else contextlib.nullcontext()
    sync = torch.cuda.synchronize if device.startswith("cuda") else (lambda: None)
    if device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats()
    audio_s = utts = 0.0
    t0 = None

    def train_step(b) -> None:
        with amp:
            out = model(b.feats, b.feat_lens, b.tokens, b.token_lens)
        opt.zero_grad(set_to_none=True)
        out["loss"].backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 5.0)
        opt.step()

    for i, b in enumerate(batches):
        if i == warmup:
            sync()
            t0 = time.perf_counter()
        b = b.to(device)
        t_step = time.perf_counter()
        train_step(b)
        if i < warmup and (compile_ or compile_step):
            sync()
            compile_s += time.perf_counter() - t_step
        if i >= warmup:
            audio_s += float(b.feat_lens.sum()) * 0.01
            utts += len(b.ids)
    sync()
    wall = time.perf_counter() - t0
    row = {
        "audio_s_per_s": audio_s / wall,
        "audio_h_per_device_h": audio_s / wall,  # seconds per second == hours per hour
        "utts_per_s": utts / wall,
        "steps_per_s": steps / wall,
        "mean_batch_utts": utts / steps,
        "peak_mem_gib": torch.cuda.max_memory_allocated() / 2**30 if device.startswith("cuda") else float("nan"),
        "compile_warmup_s": compile_s,
    }
    if ops:
        b = batches[0].to(device)
        counts = count_ops(lambda: train_step(b), device)
        n_tokens = int(b.token_lens.sum()) + len(b.ids)
        row.update(counts)
        row.update({f"{k}_per_token": v / n_tokens for k, v in counts.items()})
    return row


# --competing: thread settings compared, each run in a fresh process (label, passive OpenMP wait, configure_threads)
THREAD_MODES = {"default": ("torch default threads, active wait", False), "passive": ("torch default threads, passive wait", True),
                "auto": ("configure_threads(0), passive wait", True)}
OMP_VARS = ("OMP_NUM_THREADS", "OMP_WAIT_POLICY", "GOMP_SPINCOUNT", "MKL_NUM_THREADS", *PASSIVE_OMP_ENV)


def competing_run(args, mode: str, n_busy: int) -> dict:
    """One ``--competing`` measurement: start ``n_busy`` busy-looping processes, run this script in a fresh process
    with thread setting ``mode`` (:data:`THREAD_MODES`) on the first model of ``--models`` (b8, fp32, CPU), stop
    them; returns the child's row (``steps_per_s``, the thread counts it ran with, ...)."""
    env = {k: v for k, v in os.environ.items() if k not in OMP_VARS}  # the thread settings are the mode's alone
    if THREAD_MODES[mode][1]:
        set_passive_omp_env(env)
    cpus = os.sched_getaffinity(0)
    ticks0, t0, children0 = cpu_ticks(Path("/proc/stat").read_text(), cpus), time.perf_counter(), _children_cpu_s()
    busy = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(n_busy)]
    try:
        time.sleep(1.0)  # let them start spinning before the child looks at the load
        with tempfile.TemporaryDirectory() as tmp:
            out = Path(tmp) / "row.json"
            cmd = [sys.executable, __file__, "--recipe", args.recipe, "--device", "cpu", "--models", args.models.split(",")[0],
                   "--steps", str(args.steps), "--warmup", str(args.warmup), "--only_b8", "--overrides", args.overrides,
                   "--thread_mode", mode, "--json", str(out)]
            subprocess.run(cmd, env=env, check=True, stdout=subprocess.DEVNULL)
            row = json.loads(out.read_text())[0]
    finally:
        for p in busy:
            p.kill()
            p.wait()
    # cores used by processes not started here (another user's jobs) during the run: nonzero = a disturbed figure
    ticks1, wall = cpu_ticks(Path("/proc/stat").read_text(), cpus), time.perf_counter() - t0
    row["background"] = busy_cores(ticks0, ticks1, len(cpus), _children_cpu_s() - children0, wall)
    return row


def _children_cpu_s() -> float:
    """CPU seconds (user + system) of this process's waited-for children."""
    ru = resource.getrusage(resource.RUSAGE_CHILDREN)
    return ru.ru_utime + ru.ru_stime


def compare_competing(args) -> None:
    """``--competing N``: seconds per training step alone and with ``N`` busy processes, per thread setting."""
    n = args.competing
    print(f"{args.models.split(',')[0]} ({EXPERIMENTS[args.models.split(',')[0]]}), b8 fp32, {os.cpu_count()} CPUs; {args.steps} timed steps per run;"
          f" busy cores before: {sample_busy_cores()[0]:.2f} (/proc/stat), load average {os.getloadavg()[0]:.2f}")
    print("background: cores used by other users' processes during the run (alone / shared; > 0.1 = a disturbed figure)")
    print(f"{'threads':<38}{'alone s/step':>13}{f'+{n} busy s/step':>17}{'ratio':>7}{'background':>12}  intra, inter-op threads alone / +{n}")
    rows = []
    for mode, (label, _) in THREAD_MODES.items():
        alone, shared = competing_run(args, mode, 0), competing_run(args, mode, n)
        a, b = 1 / alone["steps_per_s"], 1 / shared["steps_per_s"]
        print(f"{label:<38}{a:>13.3f}{b:>17.3f}{b / a:>7.2f}{alone['background']:>6.2f} /{shared['background']:>4.2f}"
              f"  {alone['intra']}, {alone['interop']} / {shared['intra']}, {shared['interop']}"
              + (f" (busy cores seen: {alone['busy']:.2f} / {shared['busy']:.2f})" if mode == "auto" else ""))
        rows.append({"mode": mode, "competing": n, "alone": alone, "shared": shared, "ratio": b / a})
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1))


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--recipe", default="recipes/an4", help="recipe folder after stages 1-3 (data/, dump/, data/token/)")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--models", default="pblstm,transformer")
    ap.add_argument("--steps", type=int, default=30, help="timed steps per setting")
    ap.add_argument("--warmup", type=int, default=3, help="untimed steps first (cuDNN autotune, compile)")
    ap.add_argument("--max_duration", type=float, default=240.0, help="seconds of padded audio per dynamic batch")
    ap.add_argument("--compile", action="store_true", help="also rows with torch.compile on the encoder")
    ap.add_argument("--only_compile", action="store_true", help="the eager baseline row and the compile row only")
    ap.add_argument("--stepwise", action="store_true", help="also a row with the RNN decoder's step-by-step teacher forcing")
    ap.add_argument("--compile_step", action="store_true", help="also rows with the RNN decoder's step compiled (compile_decoder_step)")
    ap.add_argument("--only_b8", action="store_true", help="rows with batches of 8 only")
    ap.add_argument("--bf16", action="store_true", help="also bf16 autocast rows on the CPU (always on CUDA): "
                    "CPUs with AMX or AVX512-BF16 run the matrix products in bf16 (trainer.precision=bf16-mixed)")
    ap.add_argument("--overrides", default="", help="Hydra overrides for every model's config, space-separated, "
                    "e.g. the CPU-sized Transformer: 'model.encoder.d_model=192 model.encoder.num_layers=6 ...'")
    ap.add_argument("--count_ops", action="store_true", help="also count operator calls (ATen, top-level ATen, CUDA kernels) of one step, per output token")
    ap.add_argument("--threads", type=int, default=0)
    ap.add_argument("--competing", type=int, default=0, help="instead: step time alone vs with this many busy processes, per thread setting")
    ap.add_argument("--thread_mode", choices=list(THREAD_MODES), default="", help=argparse.SUPPRESS)  # a --competing child
    ap.add_argument("--json", type=Path, default=None, help="also write the rows here")
    args = ap.parse_args(argv)
    if args.competing:
        return compare_competing(args)
    if args.thread_mode == "auto":
        threads = configure_threads(0)
    else:
        if args.threads:
            torch.set_num_threads(args.threads)
        threads = {"intra": torch.get_num_threads(), "interop": torch.get_num_interop_threads(), "busy": None}
    torch.backends.cudnn.benchmark = False
    recipe = Path(args.recipe)
    tok_model = sorted((recipe / "data/token").glob("*.model"))[0]
    tok = Tokenizer.from_file(tok_model)
    cmvn = GlobalCMVN.from_file(recipe / "dump/train_nodev/cmvn.pt") if (recipe / "dump/train_nodev/cmvn.pt").is_file() else None
    ds = load_split(recipe / "data/train_nodev", recipe / "dump/train_nodev", tok, FbankOptions())
    # the CPU's vector capability says whether the bf16 rows can win (AMX / AVX512-BF16) or are emulated (AVX2)
    cpu = f"CPU ({torch.backends.cpu.get_cpu_capability()}, {'native' if torch.ops.mkldnn._is_mkldnn_bf16_supported() else 'no native'} bf16)"
    gpu = torch.cuda.get_device_name() if args.device.startswith("cuda") else cpu
    print(f"device: {gpu}; torch {torch.__version__}; {len(ds)} utterances of train_nodev; {args.steps} timed steps per row")
    # (label, batch size, max duration, bf16, compile encoder, decoder loop: "" | "stepwise" | "compiled")
    loops = [""] + ["stepwise"] * args.stepwise + ["compiled"] * args.compile_step
    settings = [
        (f"{name} fp32{' ' + loop if loop else ''}".replace("compiled", "compiled step"), bs, md, False, False, loop)
        for name, bs, md in (("b8", 8, 0.0), (f"{args.max_duration:g}s", 1000, args.max_duration))
        for loop in loops
    ]
    if args.device.startswith("cuda") or args.bf16:
        settings += [("b8 bf16", 8, 0.0, True, False, ""), (f"{args.max_duration:g}s bf16", 1000, args.max_duration, True, False, "")]
    if args.compile:
        settings += [(f"{args.max_duration:g}s {'bf16' if args.device.startswith('cuda') else 'fp32'} compile", 1000, args.max_duration, args.device.startswith("cuda"), True, "")]
    if args.only_compile:
        settings = [settings[0], settings[-1]] if args.compile else settings[:1]
    if args.only_b8:
        settings = [s for s in settings if s[1] == 8]
    rows = []
    for name in args.models.split(","):
        cfg = model_config(EXPERIMENTS[name], args.overrides.split())
        base = None
        print(f"\n{name} ({EXPERIMENTS[name]})")
        print(f"{'setting':<22}{'audio s/s':>10}{'h/dev-h':>9}{'utt/s':>8}{'steps/s':>9}{'B mean':>8}{'peak GiB':>10}{'x audio/s':>10}{'compile s':>10}")
        for label, bs, md, bf16, comp, loop in settings:
            if loop and cfg["decoder"].get("type", "rnn") != "rnn":
                continue
            try:
                r = run_setting(cfg, ds, tok, cmvn, args.device, bs, md, bf16, comp, args.steps, args.warmup, decoder_loop=loop, ops=args.count_ops)
            except Exception as e:  # one failing setting (e.g. compile) must not lose the others
                print(f"{label:<22}failed: {type(e).__name__}: {str(e)[:200]}")
                continue
            base = base or r
            print(f"{label:<22}{r['audio_s_per_s']:>10.0f}{r['audio_h_per_device_h']:>9.0f}{r['utts_per_s']:>8.1f}{r['steps_per_s']:>9.2f}{r['mean_batch_utts']:>8.1f}{r['peak_mem_gib']:>10.2f}{r['audio_s_per_s'] / base['audio_s_per_s']:>10.2f}{r['compile_warmup_s']:>10.1f}")
            if args.count_ops:
                print(f"{'':<22}ops of one step: {r['aten_calls']} ATen calls, {r['top_aten']} top-level, {r['kernels']} CUDA kernels;"
                      f" per output token {r['aten_calls_per_token']:.0f} / {r['top_aten_per_token']:.0f} / {r['kernels_per_token']:.0f}")
            rows.append({"model": name, "setting": label, "device": gpu, **r, **{k: threads[k] for k in ("intra", "interop", "busy")}})
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
