#!/usr/bin/env bash
# Decoding speed on a GPU (issue 30): the engine of asr-decode / Speech2Text (scripts/bench_decode.py --engine) on
# AN4 test with the shipped model, greedy / beam 10 / beam 10 + CTC 0.3 at batch sizes 1 ... 512: seconds in the
# search, wall seconds (audio loading and fbank included), RTF, RTFx and WER per row. On the device machine, from
# the project root (see ../shared/tools/gpu-bundle):
#   source .device/setup.sh && bash recipes/an4/local/gpu_decode.sh "$OUT"
# Settings (environment): DEVICE (cuda), BATCHES (1,8,32,128,512), SEARCHES (all; e.g. greedy), MODEL
# (models/an4_pblstm_x4), DATA (recipes/an4/data/test; made by recipe stage 1 from $AN4_ROOT when missing), LIMIT
# (0 = every utterance), THREADS (CPU threads, 2). DEVICE=cpu runs the same on a machine without a GPU (the test
# runs it so, CI-sized). Writes bench_decode.txt (the table), bench_decode.json (the rows) and gpu.txt to the folder.
set -euo pipefail
out=$(mkdir -p "${1:-/tmp/gpu_decode}" && cd "${1:-/tmp/gpu_decode}" && pwd)
root=$(cd "$(dirname "$0")/../../.." && pwd)
cd "${root}"
device=${DEVICE:-cuda}
data=${DATA:-recipes/an4/data/test}
if [ ! -f "${data}/wav.scp" ]; then
    [ -n "${AN4_ROOT:-}" ] || { echo "gpu_decode.sh: ${data} missing and AN4_ROOT not set" >&2; exit 2; }
    (cd recipes/an4 && ./run.sh --an4_root "${AN4_ROOT}" --stop_stage 1) > "${out}/stage1.log" 2>&1
fi
{ nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>/dev/null || echo "no GPU (device ${device})"
  python -c "import torch; print('torch', torch.__version__)"; } > "${out}/gpu.txt"
python scripts/bench_decode.py --engine --ckpt "${MODEL:-models/an4_pblstm_x4}" --data_dir "${data}" --device "${device}" \
    --batches "${BATCHES:-1,8,32,128,512}" --encoder_dtypes "${ENCODER_DTYPES:-float32,bfloat16}" --searches "${SEARCHES:-}" --limit "${LIMIT:-0}" --threads "${THREADS:-2}" \
    --beam 10 --ctc_weight 0.3 --work "${out}/work" --json "${out}/bench_decode.json" | tee "${out}/bench_decode.txt"
