#!/usr/bin/env bash
# AN4 recipe: pyramidal BLSTM + attention decoder (Listen, Attend and Spell) on CMU AN4.
#
#   ./run.sh --an4_root /path/to/an4                      # all stages, default experiment
#   ./run.sh --an4_root /path/to/an4 --experiment an4/additive --stage 4
#   ./run.sh --stage 4 --stop_stage 4 --train_args "trainer.max_epochs=1 ckpt_path=last"
#   ./run.sh --stage 5 --experiment an4/location_aware_x4_noaug --ensemble "exp/an4_pblstm_location_aware_x4" \
#       --ensemble_name x4noaug_x4       # decode two trained experiments as one ensemble -> exp/ensemble_x4noaug_x4
#
# Stages (ESPnet style, --stage/--stop_stage):
#   0 download the official corpus (skipped when --an4_root / $AN4_ROOT is given or already there)
#   1 data preparation -> data/{train_nodev,train_dev,test} (Kaldi data dirs + lhotse cuts.jsonl.gz + bad_utts.tsv reports)
#   2 fbank of train_nodev and train_dev stored as lilcom chunks (--features precomputed; on_the_fly: none, the loader
#     computes it) + global CMVN statistics of train_nodev -> dump/<split>/{cuts.jsonl.gz,feats.*.lca}, dump/train_nodev/cmvn.pt
#   3 sentencepiece tokenizer on train_nodev text -> data/token/; with --lm_weight > 0 also a token LSTM language
#     model on the train_nodev transcripts (asr-train-lm, best dev perplexity) -> exp/lm_<tokenizer>/lstm_lm.pt
#   4 training -> exp/<name>/checkpoints/{best,last,epochNNN}.ckpt
#   5 checkpoint averaging (the kept epoch checkpoints -> avg<N>.ckpt; best.ckpt when --average 0) and
#     (joint CTC/attention) beam search of train_dev and test -> exp/<name>/decode_{dev,test}_beam<K>[_ctc<w>][_avg<N>]/
#   6 scoring (WER/CER) -> .../scoring/{wer.json,result.txt,per_utt.txt}; --eval_sets true: also the robustness sets
#     (8 kHz, noise, reverberation, silence; local/make_eval_sets.py) -> exp/<name>/eval_sets_<dtag>.txt
#   7 alignment plots (worst and first utterances of test; a comparison of all trained scorers) and the
#     browsable alignment report of test (asr-inspect: <decode_test>/report/index.html)
set -euo pipefail

stage=0
stop_stage=7
an4_root="${AN4_ROOT:-}"
experiment=an4/location_aware_x4_noaug   # the best AN4 system measured so far (recipes/an4/README.md)
# Decoding defaults come from asr.decoding.search.DecodingOptions (the one home of them; its docstring says how
# they were chosen): beam size, joint CTC/attention weight (0 = attention only; needs a CTC branch) and length
# penalty (ranking score log p / (len + 1)^lp). Decode folders say _lp<x> when lp is not the default.
read -r beam_size ctc_weight length_penalty default_lp < <(python -c 'from asr.decoding.search import DecodingOptions as O; o = O(); print(o.beam_size, o.ctc_weight, o.length_penalty, o.length_penalty)')
average=5              # average the N kept epoch checkpoints for decoding (0 = decode best.ckpt)
train_args=""          # extra Hydra overrides for asr-train, e.g. "trainer.max_epochs=5"
decode_args=""         # extra Hydra overrides for asr-decode
att_window=""          # a:b = windowed (monotonic) decoding: attend to frames [peak - a, peak + b] around the previous
                       # step's attention peak (RNN decoder; decode folders say _win<a>-<b>)
hard_attention=false   # true = argmax (hard) attention context at decoding (decode folders say _hard)
tag=""                 # suffix of the experiment folder (exp/<name><tag>), e.g. _smoke
ensemble=""            # more trained experiment folders decoded together with this one (a model ensemble), e.g.
                       # "exp/an4_pblstm_location_aware_x4"; their avg<N>/best checkpoints join stage 5's
ensemble_name=""       # with --ensemble: decode folders go to exp/ensemble_<name>
max_bad_fraction=0.05
features=precomputed   # stage 2/4: precomputed (stored lilcom fbank) or on_the_fly (fbank from audio in the loader)
nj=1                   # stage 2: processes computing fbank
tokenizer_kind=bpe
vocab_size=40
lm_weight=0            # > 0: stage 3 trains an LSTM LM on the training transcripts and stage 5 fuses it with this
                       # weight (shallow fusion: (1-λ) att + λ ctc + β lm; decode folders say _lm<β>). Choose on dev.
eval_sets=false        # stage 6: also build (local/make_eval_sets.py, once), decode and score the robustness sets of AN4
                       # test (data/{test_8k,test_noise10,test_noise0,test_reverb,silence,noise_only}); one parseable
                       # line per set, also in <decode_exp>/eval_sets_<dtag>.txt

while [ $# -gt 0 ]; do
    case "$1" in
        --stage) stage="$2"; shift 2 ;;
        --stop_stage) stop_stage="$2"; shift 2 ;;
        --an4_root) an4_root="$2"; shift 2 ;;
        --experiment) experiment="$2"; shift 2 ;;
        --beam_size) beam_size="$2"; shift 2 ;;
        --ctc_weight) ctc_weight="$2"; shift 2 ;;
        --average) average="$2"; shift 2 ;;
        --length_penalty) length_penalty="$2"; shift 2 ;;
        --train_args) train_args="$2"; shift 2 ;;
        --decode_args) decode_args="$2"; shift 2 ;;
        --att_window) att_window="$2"; shift 2 ;;
        --hard_attention) hard_attention="$2"; shift 2 ;;
        --tag) tag="$2"; shift 2 ;;
        --ensemble) ensemble="$2"; shift 2 ;;
        --ensemble_name) ensemble_name="$2"; shift 2 ;;
        --max_bad_fraction) max_bad_fraction="$2"; shift 2 ;;
        --features) features="$2"; shift 2 ;;
        --nj) nj="$2"; shift 2 ;;
        --eval_sets) eval_sets="$2"; shift 2 ;;
        --lm_weight) lm_weight="$2"; shift 2 ;;
        -h|--help) sed -n '2,20p' "$0"; exit 0 ;;
        *) echo "run.sh: unknown option $1 (see --help)" >&2; exit 2 ;;
    esac
done

cd "$(dirname "$0")"
# Make relative corpus paths given on the command line work after the cd.
case "${an4_root}" in /*|"") ;; *) an4_root="${OLDPWD}/${an4_root}" ;; esac

log() { echo "[$(date '+%F %T')] $*"; }

name=$(echo "${experiment}" | tr '/' '_')
# Scorer experiments (an4/additive, ...) are pBLSTM ones; names that say their encoder keep it.
case "${name}" in an4_pblstm_*|an4_transformer_*) ;; *) name="${name/an4_/an4_pblstm_}" ;; esac
exp_dir="exp/${name}${tag}"
token_model="data/token/${tokenizer_kind}${vocab_size}.model"
common_train=(experiment="${experiment}" exp_dir="${exp_dir}" tokenizer.kind="${tokenizer_kind}" tokenizer.vocab_size="${vocab_size}" data.features="${features}")

if [ "${stage}" -le 0 ] && [ "${stop_stage}" -ge 0 ]; then
    if [ -z "${an4_root}" ]; then
        log "stage 0: downloading AN4 to downloads/"
        local/download_an4.sh downloads
        an4_root="$(pwd)/downloads/an4"
    else
        log "stage 0: skipped, corpus at ${an4_root}"
    fi
fi
[ -n "${an4_root}" ] || an4_root="$(pwd)/downloads/an4"

if [ "${stage}" -le 1 ] && [ "${stop_stage}" -ge 1 ]; then
    log "stage 1: data preparation from ${an4_root}"
    asr-prepare-an4 corpus_dir="${an4_root}" out_dir=data max_bad_fraction="${max_bad_fraction}" progress=false
    # lhotse manifests (data/<split>/cuts.jsonl.gz) of the Kaldi data dirs: what training reads
    asr-prepare source=kaldi in_dir=data out_dir=data "splits=[train_nodev,train_dev,test]" max_bad_fraction="${max_bad_fraction}"
fi

if [ "${stage}" -le 2 ] && [ "${stop_stage}" -ge 2 ]; then
    log "stage 2: fbank features (${features}) and global CMVN"
    asr-compute-feats data_root=data dump=dump "splits=[train_nodev,train_dev]" cmvn_split=train_nodev features="${features}" num_jobs="${nj}"
fi

if [ "${stage}" -le 3 ] && [ "${stop_stage}" -ge 3 ]; then
    log "stage 3: ${tokenizer_kind} tokenizer (${vocab_size})"
    asr-tokenizer text=data/train_nodev/text kind="${tokenizer_kind}" vocab_size="${vocab_size}" model="${token_model}"
fi
lm_file="exp/lm_${tokenizer_kind}${vocab_size}/lstm_lm.pt"
if [ "${stage}" -le 3 ] && [ "${stop_stage}" -ge 3 ] && [ "${lm_weight}" != 0 ] && [ "${lm_weight}" != 0.0 ]; then
    log "stage 3: LSTM language model on data/train_nodev/text -> ${lm_file}"
    asr-train-lm --text data/train_nodev/text --dev_text data/train_dev/text --tokenizer "${token_model}" --out "${lm_file}"
fi

if [ "${stage}" -le 4 ] && [ "${stop_stage}" -ge 4 ]; then
    log "stage 4: training ${experiment} -> ${exp_dir}"
    # shellcheck disable=SC2086
    asr-train "${common_train[@]}" ${train_args}
fi

# Decode folder suffix: beam, CTC weight (when joint), length penalty (when not the default) and averaging (when used),
# e.g. beam10_ctc0.5_avg5 or beam10_ctc0.3_lp1.0_avg5.
dtag="beam${beam_size}"
[ "${ctc_weight}" != 0 ] && [ "${ctc_weight}" != 0.0 ] && dtag="${dtag}_ctc${ctc_weight}"
[ "${length_penalty}" != "${default_lp}" ] && dtag="${dtag}_lp${length_penalty}"
if [ -n "${att_window}" ]; then
    [[ "${att_window}" =~ ^[0-9]+:[0-9]+$ ]] || { echo "run.sh: --att_window must be a:b (encoder frames), got ${att_window}" >&2; exit 2; }
    dtag="${dtag}_win${att_window/:/-}"
    decode_args="${decode_args} att_window_back=${att_window%%:*} att_window_ahead=${att_window##*:}"
fi
if [ "${hard_attention}" = true ]; then dtag="${dtag}_hard"; decode_args="${decode_args} hard_attention=true"; fi
if [ "${lm_weight}" != 0 ] && [ "${lm_weight}" != 0.0 ]; then dtag="${dtag}_lm${lm_weight}"; decode_args="${decode_args} lm=${lm_file} lm_weight=${lm_weight}"; fi
ckpt="${exp_dir}/checkpoints/best.ckpt"
if [ "${average}" -gt 0 ]; then dtag="${dtag}_avg${average}"; ckpt="${exp_dir}/checkpoints/avg${average}.ckpt"; fi
# An ensemble (--ensemble): the members' checkpoints of the same kind (avg<N> or best), decode folders of its own.
decode_exp="${exp_dir}"
members=()
if [ -n "${ensemble}" ]; then
    [ -n "${ensemble_name}" ] || { echo "run.sh: --ensemble needs --ensemble_name" >&2; exit 2; }
    decode_exp="exp/ensemble_${ensemble_name}"
    for m in ${ensemble}; do members+=("${m%/}"); done
fi
decode_dirs=()
for split in dev test; do decode_dirs+=("${decode_exp}/decode_${split}_${dtag}"); done

if [ "${stage}" -le 5 ] && [ "${stop_stage}" -ge 5 ]; then
    member_ckpts=()
    for d in "${exp_dir}" "${members[@]}"; do
        [ -d "${d}/checkpoints" ] || { echo "run.sh: no trained experiment in ${d}" >&2; exit 1; }
        c="${d}/checkpoints/$(basename "${ckpt}")"
        if [ "${average}" -gt 0 ]; then
            log "stage 5: averaging the last ${average} kept epoch checkpoints -> ${c}"
            asr-average exp_dir="${d}" n="${average}" out="${c}"
        fi
        [ "${d}" = "${exp_dir}" ] || member_ckpts+=("${c}")
    done
    ens_args=()
    [ "${#member_ckpts[@]}" -gt 0 ] && ens_args=("ensemble=[$(IFS=,; echo "${member_ckpts[*]}")]")
    for split in dev test; do
        data_split=${split}; [ "${split}" = dev ] && data_split=train_dev
        log "stage 5: decoding ${data_split} (beam ${beam_size}, ctc_weight ${ctc_weight}, ${ckpt} ${member_ckpts[*]})"
        # shellcheck disable=SC2086
        asr-decode ckpt="${ckpt}" "${ens_args[@]}" data_dir="data/${data_split}" \
            out_dir="${decode_exp}/decode_${split}_${dtag}" beam_size="${beam_size}" ctc_weight="${ctc_weight}" \
            length_penalty="${length_penalty}" ${decode_args}
    done
fi

if [ "${stage}" -le 6 ] && [ "${stop_stage}" -ge 6 ]; then
    for d in "${decode_dirs[@]}"; do
        log "stage 6: scoring ${d}"
        asr-score decode_dir="${d}"
    done
    if [ "${eval_sets}" = true ]; then
        eval_names=(test_8k test_noise10 test_noise0 test_reverb silence noise_only)
        missing=()
        for s in "${eval_names[@]}"; do [ -f "data/${s}/text" ] || missing+=("${s}"); done
        if [ "${#missing[@]}" -gt 0 ]; then
            log "stage 6: building evaluation sets ${missing[*]} from data/test"
            python local/make_eval_sets.py build data/test data --sets "$(IFS=,; echo "${missing[*]}")"
        fi
        eval_ckpts=()
        for m in "${members[@]}"; do eval_ckpts+=("${m}/checkpoints/$(basename "${ckpt}")"); done
        eval_ens=()
        [ "${#eval_ckpts[@]}" -gt 0 ] && eval_ens=("ensemble=[$(IFS=,; echo "${eval_ckpts[*]}")]")
        summary="${decode_exp}/eval_sets_${dtag}.txt"
        : > "${summary}.tmp"
        for s in "${eval_names[@]}"; do
            d="${decode_exp}/decode_${s}_${dtag}"
            log "stage 6: decoding and scoring ${s} -> ${d}"
            # shellcheck disable=SC2086
            asr-decode ckpt="${ckpt}" "${eval_ens[@]}" data_dir="data/${s}" out_dir="${d}" beam_size="${beam_size}" \
                ctc_weight="${ctc_weight}" length_penalty="${length_penalty}" ${decode_args}
            # silence / noise_only: no reference words (WER undefined); summarize counts non-empty hypotheses
            case "${s}" in silence|noise_only) ;; *) asr-score decode_dir="${d}" ;; esac
            python local/make_eval_sets.py summarize "${d}" "${s}" >> "${summary}.tmp"
        done
        mv "${summary}.tmp" "${summary}"
        log "stage 6: evaluation sets (${summary}):"
        cat "${summary}"
    fi
fi

if [ "${stage}" -le 7 ] && [ "${stop_stage}" -ge 7 ]; then
    test_dir="${decode_exp}/decode_test_${dtag}"
    log "stage 7: alignment plots -> ${test_dir}/plots"
    heads=()  # Transformer decoder: also every layer's and head's cross-attention (<utt>_heads.png)
    grep -q '"decoder": "transformer"' "${test_dir}/meta.json" && heads=(heads=true)
    asr-plot decode_dir="${test_dir}" worst_n=5 first_n=3 "${heads[@]}"
    # The browsable report beside the plots: every utterance, its audio, attention and diagnostics.
    log "stage 7: alignment report -> ${test_dir}/report/index.html"
    asr-inspect decode_dir="${test_dir}" out_dir="${test_dir}/report" data_dir=data/test teacher_forced=true
    # One figure comparing every scorer trained so far on the same test utterance.
    mapfile -t others < <(ls -d exp/an4_pblstm_*/decode_test_"${dtag}" 2>/dev/null | grep -v _smoke || true)
    if [ -z "${tag}" ] && [ -z "${ensemble}" ] && [ "${#others[@]}" -ge 2 ]; then
        list=$(IFS=,; echo "${others[*]}")
        asr-plot "compare_dirs=[${list}]" out_dir=exp/plots
    fi
fi

if [ "${stop_stage}" -ge 6 ] && [ -f "${decode_exp}/decode_test_${dtag}/scoring/wer.json" ]; then
    log "results (${experiment}, ${dtag}):"
    for d in "${decode_dirs[@]}"; do
        [ -f "${d}/scoring/result.txt" ] && { echo "== ${d}"; cat "${d}/scoring/result.txt"; }
    done
    report="${decode_exp}/decode_test_${dtag}/report/index.html"
    if [ -f "${report}" ]; then echo "alignment report (open in a browser): $(pwd)/${report}"; fi
fi
