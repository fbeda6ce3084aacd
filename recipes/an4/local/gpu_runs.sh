#!/usr/bin/env bash
# The GPU measurements of recipes/an4/README.md, "GPU" (issue 11), as they ran on one H200 in one call:
# recipe stages 1-3, scripts/bench_train.py, then trainings side by side (stages 4-7 each), logs and results
# gathered into one archive. On the device machine, from the project root (see ../shared/tools/gpu-bundle):
#   source .device/setup.sh && bash recipes/an4/local/gpu_runs.sh "$OUT"
# DRY=1 (CPU, 1 epoch, tiny limits) checks the plumbing on a machine without a GPU.
# PLAN=2026-12-04 runs the set measured on 2026-12-04 (README "GPU" tables); the default, PLAN=next, the set
# prepared on 2026-12-05 without a GPU (README "GPU: what to run next"): the decoder-step bench (eager vs the
# step loop before the hoist vs torch.compile'd step), the default pBLSTM with and without compile_decoder_step,
# and the Transformer for 200 epochs (CTC weight 0.3 and 0.5). About 9 minutes in all.
set -uo pipefail
out=$(mkdir -p "${1:-/tmp/gpu_runs}" && cd "${1:-/tmp/gpu_runs}" && pwd)
root=$(cd "$(dirname "$0")/../../.." && pwd)
cd "${root}/recipes/an4"
logs="${out}/logs"; mkdir -p "${logs}"
t0=$(date +%s)
stamp() { echo "[$(( $(date +%s) - t0 )) s] $*" | tee -a "${logs}/timeline.txt"; }
dry=${DRY:-0}
if [ "${dry}" = 1 ]; then
    dev=cpu; gpu_args="trainer.accelerator=cpu trainer.precision=32-true trainer.max_epochs=1 trainer.limit_train_batches=2 trainer.limit_val_batches=1 data.limit_dev=4"
    dec="device=cpu max_len_ratio=0.3"; bench_steps=2; maxtime=00:00:03:00
    dry_tail="trainer.max_epochs=1 trainer.check_val_every_n_epoch=1"  # after each run's own overrides
else
    dev=cuda; gpu_args=""; dry_tail=""; dec="device=cuda"; bench_steps=20; maxtime=00:00:05:10
fi

stamp "stages 1-3"
[ -f dump/train_nodev/feats.pt ] || ./run.sh --an4_root "${AN4_ROOT}" --stop_stage 3 > "${logs}/stages1-3.log" 2>&1 || { stamp "stages 1-3 failed"; tail -20 "${logs}/stages1-3.log"; }
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader > "${logs}/gpu.txt" 2>&1
python -c "import torch, torchaudio, lightning; print(torch.__version__, torchaudio.__version__, lightning.__version__)" >> "${logs}/gpu.txt" 2>&1

plan=${PLAN:-next}
if [ "${plan}" = 2026-12-04 ]; then
    stamp "bench_train (eager)"
    timeout 60 python ../../scripts/bench_train.py --recipe . --device "${dev}" --steps "${bench_steps}" --json "${out}/bench.json" > "${logs}/bench.log" 2>&1
    stamp "bench_train (compile)"
    timeout 30 python ../../scripts/bench_train.py --recipe . --device "${dev}" --steps "${bench_steps}" --compile --only_compile > "${logs}/bench_compile.log" 2>&1
else
    stamp "bench_train (pBLSTM decoder step: hoisted, stepwise, compiled)"
    # --count_ops: CUDA kernel launches per step and per output token of each loop (one profiled step per row);
    # unbuffered, so a timeout keeps the rows printed so far.
    PYTHONUNBUFFERED=1 timeout 100 python ../../scripts/bench_train.py --recipe . --device "${dev}" --models pblstm --only_b8 --steps "${bench_steps}" --stepwise --compile_step --count_ops --json "${out}/bench.json" > "${logs}/bench.log" 2>&1
    : > "${logs}/bench_compile.log"
fi
stamp "trainings"

common="trainer=gpu threads=2 trainer.enable_progress_bar=false +trainer.max_time=${maxtime} ${gpu_args}"
tf_big="model.encoder.d_model=256 model.encoder.ff_dim=2048 model.encoder.conv_channels=256 model.decoder.d_model=256 model.decoder.ff_dim=2048 model.decoder.num_layers=6"
tf_common="model.init=xavier_uniform data.max_duration=200 optim.warmup_epochs=10 trainer.max_epochs=100 trainer.check_val_every_n_epoch=5 keep_checkpoints_by=step"
train() {  # tag experiment train_args...
    local tag=$1 exp=$2; shift 2
    ./run.sh --stage 4 --experiment "${exp}" --tag "_${tag}" --train_args "${common} $* ${dry_tail}" --decode_args "${dec}" > "${logs}/${tag}.log" 2>&1
    stamp "${tag} done (rc $?)"
}
if [ "${plan}" = 2026-12-04 ]; then
    train gpuP1 an4/location_aware_x4_noaug "data.max_duration=60 optim.lr=2e-3 optim.warmup_epochs=1 trainer.max_epochs=12" &
    train gpuP2 an4/location_aware_x4_noaug "data.max_duration=120 optim.lr=3e-3 optim.warmup_epochs=2 trainer.max_epochs=30 model.ctc_weight=0.5" &
    train gpuP3 an4/location_aware_x4_noaug "data.max_duration=60 optim.lr=3e-3 optim.warmup_epochs=1 trainer.max_epochs=16 model.ctc_weight=0.5" &
    train gpuT1 an4/transformer_ctc "${tf_big} ${tf_common} optim.lr=1e-3 augment=none" &
    train gpuT2 an4/transformer_ctc "${tf_big} ${tf_common} optim.lr=2e-3 augment=specaug_mild" &
    train gpuT3 an4/transformer_ctc "${tf_common} optim.lr=2e-3 augment=none" &
else
    # transformer_ctc.yaml already holds tf_big and tf_common's settings (100 epochs); these run it for 200 and get
    # 6 minutes (the pBLSTM runs take about 3 of them); a row stopped by max_time says so in its epochs column
    [ "${dry}" = 1 ] || common="${common/max_time=00:00:05:10/max_time=00:00:06:00}"
    train gpuP4 an4/location_aware_x4_noaug "compile_decoder_step=true" &
    train gpuP5 an4/location_aware_x4_noaug "" &
    train gpuT4 an4/transformer_ctc "trainer.max_epochs=200 trainer.check_val_every_n_epoch=10" &
    train gpuT5 an4/transformer_ctc "trainer.max_epochs=200 trainer.check_val_every_n_epoch=10 model.ctc_weight=0.5" &
fi
wait
stamp "all done"

# Gather: configs, summaries, metrics, scoring, a few plots (no checkpoints).
cd exp
find . -maxdepth 1 -name '*gpu*' -type d | while read -r d; do
    mkdir -p "${out}/exp/${d}"
    cp "${d}"/{config.yaml,train_summary.json} "${out}/exp/${d}/" 2>/dev/null
    find "${d}" -name 'metrics.csv' -not -path '*decode*' | head -1 | xargs -r -I{} cp {} "${out}/exp/${d}/metrics.csv"
    for dd in "${d}"/decode_*; do
        [ -d "${dd}" ] || continue
        mkdir -p "${out}/exp/${dd}"
        cp -r "${dd}"/{meta.json,hyp.trn,ref.trn,scoring} "${out}/exp/${dd}/" 2>/dev/null
        { ls "${dd}"/plots/*heads*.png 2>/dev/null | head -2; ls "${dd}"/plots/*.png 2>/dev/null | grep -v heads | head -3; } | xargs -r -I{} cp {} "${out}/exp/${dd}/"
    done
done
cd "${out}"; tar czf results.tgz exp logs bench.json 2>/dev/null; cp logs/bench.log logs/bench_compile.log logs/timeline.txt . ; rm -rf exp logs
ls -la "${out}"
