#!/usr/bin/env bash
# LibriSpeech-100 recipe: attention encoder-decoder models (Transformer, pBLSTM) trained on train-clean-100,
# validated on dev-clean, decoded on test-clean and test-other (and dev-clean). Data layer: lhotse.
#
#   ./run.sh                                                   # all stages; downloads LibriSpeech to downloads/
#   ./run.sh --corpus_dir /data/LibriSpeech                    # a copy already there (or export LIBRISPEECH_ROOT)
#   ./run.sh --corpus_dir /data/LibriSpeech --experiment librispeech_100/pblstm --train_args "trainer=gpu"
#   ./run.sh --stage 4 --train_args "trainer=ddp trainer.devices=8"          # one node, 8 GPUs
#   ./run.sh --stage 5 --device cuda --beam_size 10            # decode + score an experiment trained before
#
# Stages (ESPnet style, --stage/--stop_stage):
#   0 download the official corpus parts from openslr.org (lhotse download_librispeech; skipped when --corpus_dir /
#     $LIBRISPEECH_ROOT is given)
#   1 data preparation (lhotse prepare_librispeech) -> data/<split>/{cuts.jsonl.gz, wav.scp, text, utt2spk, spk2utt,
#     utt2dur, bad_utts.tsv when entries were skipped} for the train, dev and test splits; lhotse manifests in data/manifests
#   2 fbank of the train and dev splits stored as lilcom chunks (--features precomputed; on_the_fly: none, the loader
#     computes it) + global CMVN of the train split -> dump/<split>/{cuts.jsonl.gz,feats.*.lca}, dump/<train>/cmvn.pt
#   3 sentencepiece tokenizer on the train split's text -> data/token/<kind><vocab_size>.model
#   4 training -> exp/<name><tag>/checkpoints/{best,last,epochNNN}.ckpt
#   5 checkpoint averaging (the kept epoch checkpoints -> avg<N>.ckpt; best.ckpt when --average 0) and joint
#     CTC/attention beam search of the dev split and every test split -> exp/<name><tag>/decode_<split>_<dtag>/
#   6 scoring (WER/CER) -> .../scoring/{wer.json,result.txt,per_utt.txt}
#   7 summary: the WER/CER table of the decode folders -> exp/<name><tag>/results_<dtag>.md
# At the end (--stop_stage >= 6) the WER of each decoded split is printed, one line each.
set -euo pipefail

stage=0
stop_stage=7
corpus_dir="${LIBRISPEECH_ROOT:-}"   # the LibriSpeech folder (holding train-clean-100/, dev-clean/, ...)
download_dir=""                      # stage 0 target: <download_dir>/LibriSpeech (default: downloads/ beside run.sh)
experiment=librispeech_100/transformer
train_split=train-clean-100
dev_split=dev-clean
test_splits="test-clean test-other"
# Decoding: ESPnet librispeech_100's conf/decode_asr.yaml (beam 20, CTC weight 0.3, no LM); length penalty as
# asr.decoding.search.DecodingOptions (decode folders say _lp<x> when it is not that default).
beam_size=20
ctc_weight=0.3
length_penalty=""      # default: DecodingOptions' (read below)
longform_max_s=0       # LibriSpeech utterances are whole sentences (up to ~35 s) and the models train on them whole:
                       # never split them at pauses (asr-decode's default, 6 s, is for short-utterance models)
device=cpu             # decoding device (cuda for a GPU)
average=10             # average the N kept epoch checkpoints for decoding (0 = decode best.ckpt); ESPnet: 10 best by acc
train_args=""          # extra Hydra overrides for asr-train, e.g. "trainer=gpu" or "trainer=ddp trainer.devices=8"
decode_args=""         # extra Hydra overrides for asr-decode
tag=""                 # suffix of the experiment folder (exp/<name><tag>)
max_bad_fraction=0.05
features=precomputed   # stage 2/4: precomputed (stored lilcom fbank) or on_the_fly (fbank from audio in the loader)
nj=4                   # stage 1: threads reading the corpus; stage 2: processes computing fbank
tokenizer_kind=bpe
vocab_size=300

while [ $# -gt 0 ]; do
    case "$1" in
        --stage) stage="$2"; shift 2 ;;
        --stop_stage) stop_stage="$2"; shift 2 ;;
        --corpus_dir) corpus_dir="$2"; shift 2 ;;
        --download_dir) download_dir="$2"; shift 2 ;;
        --experiment) experiment="$2"; shift 2 ;;
        --train_split) train_split="$2"; shift 2 ;;
        --dev_split) dev_split="$2"; shift 2 ;;
        --test_splits) test_splits="$2"; shift 2 ;;
        --beam_size) beam_size="$2"; shift 2 ;;
        --ctc_weight) ctc_weight="$2"; shift 2 ;;
        --length_penalty) length_penalty="$2"; shift 2 ;;
        --longform_max_s) longform_max_s="$2"; shift 2 ;;
        --device) device="$2"; shift 2 ;;
        --average) average="$2"; shift 2 ;;
        --train_args) train_args="$2"; shift 2 ;;
        --decode_args) decode_args="$2"; shift 2 ;;
        --tag) tag="$2"; shift 2 ;;
        --max_bad_fraction) max_bad_fraction="$2"; shift 2 ;;
        --features) features="$2"; shift 2 ;;
        --nj) nj="$2"; shift 2 ;;
        --tokenizer_kind) tokenizer_kind="$2"; shift 2 ;;
        --vocab_size) vocab_size="$2"; shift 2 ;;
        -h|--help) sed -n '2,24p' "$0"; exit 0 ;;
        *) echo "run.sh: unknown option $1 (see --help)" >&2; exit 2 ;;
    esac
done

command -v asr-train >/dev/null || { echo "run.sh: asr-train not found: put the project's virtual environment first on PATH (e.g. export PATH=/path/to/repo/.venv/bin:\$PATH)" >&2; exit 1; }
default_lp=$(python -c 'from asr.decoding.search import DecodingOptions as O; print(O().length_penalty)')
[ -n "${length_penalty}" ] || length_penalty="${default_lp}"

cd "$(dirname "$0")"
# Make relative paths given on the command line work after the cd.
case "${corpus_dir}" in /*|"") ;; *) corpus_dir="${OLDPWD}/${corpus_dir}" ;; esac
case "${download_dir}" in /*) ;; "") download_dir="$(pwd)/downloads" ;; *) download_dir="${OLDPWD}/${download_dir}" ;; esac

log() { echo "[$(date '+%F %T')] $*"; }
join() { local IFS=,; echo "$*"; }

read -r -a tests <<< "${test_splits}"
# Every split once, in order: train, dev, tests (dev-clean may also be a test split).
splits=()
for s in "${train_split}" "${dev_split}" "${tests[@]}"; do
    [[ " ${splits[*]} " == *" ${s} "* ]] || splits+=("${s}")
done
# Decoded: the dev split, then the test splits.
decode_splits=("${dev_split}")
for s in "${tests[@]}"; do [ "${s}" = "${dev_split}" ] || decode_splits+=("${s}"); done

name=$(echo "${experiment}" | tr '/' '_')
exp_dir="exp/${name}${tag}"
# Where asr-train looks for the tokenizer: conf/tokenizer/bpe.yaml's ${data.root}/token/${tokenizer.kind}${tokenizer.vocab_size}.model
# with data.root=data (conf/data/librispeech_100.yaml), given the same kind and size below.
token_model="data/token/${tokenizer_kind}${vocab_size}.model"
common_train=(experiment="${experiment}" exp_dir="${exp_dir}" data.train="${train_split}" data.dev="${dev_split}"
              tokenizer.kind="${tokenizer_kind}" tokenizer.vocab_size="${vocab_size}" data.features="${features}")

if [ "${stage}" -le 0 ] && [ "${stop_stage}" -ge 0 ]; then
    if [ -z "${corpus_dir}" ]; then
        log "stage 0: downloading LibriSpeech ${splits[*]} from openslr.org to ${download_dir}"
        python -c 'import sys; from lhotse.recipes import download_librispeech; download_librispeech(sys.argv[1], dataset_parts=sys.argv[2:])' \
            "${download_dir}" "${splits[@]}"
        corpus_dir="${download_dir}/LibriSpeech"
    else
        log "stage 0: skipped, corpus at ${corpus_dir}"
    fi
fi
[ -n "${corpus_dir}" ] || corpus_dir="${download_dir}/LibriSpeech"

if [ "${stage}" -le 1 ] && [ "${stop_stage}" -ge 1 ]; then
    log "stage 1: data preparation of ${splits[*]} from ${corpus_dir}"
    for s in "${splits[@]}"; do
        [ -d "${corpus_dir}/${s}" ] || { echo "run.sh: no ${corpus_dir}/${s} (the LibriSpeech folder holds one folder per split)" >&2; exit 1; }
    done
    asr-prepare source=recipe recipe=librispeech corpus_dir="${corpus_dir}" out_dir=data "splits=[$(join "${splits[@]}")]" \
        "recipe_args.dataset_parts=[$(join "${splits[@]}")]" recipe_args.num_jobs="${nj}" max_bad_fraction="${max_bad_fraction}"
fi

if [ "${stage}" -le 2 ] && [ "${stop_stage}" -ge 2 ]; then
    log "stage 2: fbank features (${features}) of ${train_split} and ${dev_split}, global CMVN of ${train_split}"
    asr-compute-feats data_root=data dump=dump "splits=[$(join "${train_split}" "${dev_split}")]" cmvn_split="${train_split}" \
        features="${features}" num_jobs="${nj}"
fi

if [ "${stage}" -le 3 ] && [ "${stop_stage}" -ge 3 ]; then
    log "stage 3: ${tokenizer_kind} tokenizer (${vocab_size}) on data/${train_split}/text -> ${token_model}"
    asr-tokenizer text="data/${train_split}/text" kind="${tokenizer_kind}" vocab_size="${vocab_size}" model="${token_model}"
fi

if [ "${stage}" -le 4 ] && [ "${stop_stage}" -ge 4 ]; then
    log "stage 4: training ${experiment} -> ${exp_dir}"
    # shellcheck disable=SC2086
    asr-train "${common_train[@]}" ${train_args}
fi

# Decode folder suffix: beam, CTC weight (when joint), length penalty (when not the default) and averaging (when used),
# e.g. beam20_ctc0.3_avg10.
dtag="beam${beam_size}"
[ "${ctc_weight}" != 0 ] && [ "${ctc_weight}" != 0.0 ] && dtag="${dtag}_ctc${ctc_weight}"
[ "${length_penalty}" != "${default_lp}" ] && dtag="${dtag}_lp${length_penalty}"
ckpt="${exp_dir}/checkpoints/best.ckpt"
if [ "${average}" -gt 0 ]; then dtag="${dtag}_avg${average}"; ckpt="${exp_dir}/checkpoints/avg${average}.ckpt"; fi
decode_dirs=()
for s in "${decode_splits[@]}"; do decode_dirs+=("${exp_dir}/decode_${s}_${dtag}"); done

if [ "${stage}" -le 5 ] && [ "${stop_stage}" -ge 5 ]; then
    [ -d "${exp_dir}/checkpoints" ] || { echo "run.sh: no trained experiment in ${exp_dir}" >&2; exit 1; }
    if [ "${average}" -gt 0 ]; then
        log "stage 5: averaging the ${average} kept epoch checkpoints -> ${ckpt}"
        asr-average exp_dir="${exp_dir}" n="${average}" out="${ckpt}"
    fi
    for s in "${decode_splits[@]}"; do
        log "stage 5: decoding ${s} (beam ${beam_size}, ctc_weight ${ctc_weight}, ${ckpt}, ${device})"
        # shellcheck disable=SC2086
        asr-decode ckpt="${ckpt}" data_dir="data/${s}" out_dir="${exp_dir}/decode_${s}_${dtag}" beam_size="${beam_size}" \
            ctc_weight="${ctc_weight}" length_penalty="${length_penalty}" longform_max_s="${longform_max_s}" device="${device}" \
            ${decode_args}
    done
fi

if [ "${stage}" -le 6 ] && [ "${stop_stage}" -ge 6 ]; then
    for d in "${decode_dirs[@]}"; do
        log "stage 6: scoring ${d}"
        asr-score decode_dir="${d}"
    done
fi

# "<split>  WER x %  CER y %  (n utts, m words)  <decode dir>" per decoded split, or the markdown table (--md).
summary() {
    python - "$@" <<'EOF'
import json, sys
from pathlib import Path
md, args = sys.argv[1] == "--md", sys.argv[2:]
rows = []
for split, d in zip(args[0::2], args[1::2]):
    f = Path(d) / "scoring" / "wer.json"
    if not f.is_file():
        continue
    r = json.loads(f.read_text())
    fmt = lambda x: "n/a" if x is None else f"{x:.2f}"
    rows.append((split, fmt(r["wer"]), fmt(r["cer"]), r["n_utts"], r["n_words"], d))
if md:
    print("| split | WER % | CER % | utterances | words | decode folder |\n|---|---|---|---|---|---|")
    for row in rows:
        print("| " + " | ".join(str(x) for x in row) + " |")
else:
    for s, w, c, n, nw, d in rows:
        print(f"{s:<16} WER {w} %  CER {c} %  ({n} utts, {nw} words)  {d}")
EOF
}
pairs=()
for s in "${decode_splits[@]}"; do pairs+=("${s}" "${exp_dir}/decode_${s}_${dtag}"); done

if [ "${stage}" -le 7 ] && [ "${stop_stage}" -ge 7 ]; then
    report="${exp_dir}/results_${dtag}.md"
    log "stage 7: WER/CER summary -> ${report}"
    {
        echo "# ${experiment}${tag}: ${dtag}"
        echo
        echo "Checkpoint \`${ckpt}\`; joint CTC/attention beam search (beam ${beam_size}, CTC weight ${ctc_weight}, length penalty ${length_penalty}), no LM."
        echo
        summary --md "${pairs[@]}"
    } > "${report}.tmp"
    mv "${report}.tmp" "${report}"
    cat "${report}"
fi

if [ "${stop_stage}" -ge 6 ]; then
    log "results (${experiment}${tag}, ${dtag}):"
    summary --lines "${pairs[@]}"
fi
