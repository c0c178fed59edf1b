#!/usr/bin/env bash
# runpod_entrypoint.sh: one training run on a pod (or any machine), checked before it starts.
#
#   ./runpod_entrypoint.sh --model ss4rec-official --dataset ml-100k --debug --device cpu
#   ./runpod_entrypoint.sh --test-ml1m --raw https://files.grouplens.org/datasets/movielens/ml-1m.zip
#   ./runpod_entrypoint.sh --model sasrec --dataset ml-1m --data-dir data --production --wandb
#   ./runpod_entrypoint.sh --dataset kuairec-small --raw https://zenodo.org/records/18164998/files/KuaiRec.zip
#
# One layer: every step is a direct call of the ss4rec CLI (python -m ss4rec ...), so its
# messages and exit codes are the script's. Steps: environment block, optional conversion of
# a raw download (--raw: MovieLens, KuaiRec, Amazon or RecBole files), `ss4rec preflight`
# (exits non-zero on any FAIL), then `ss4rec train`. Everything of the run lands in one run
# folder, printed at start and end. Run with --help for the options.
set -euo pipefail

SCRIPT_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"

usage() {
    cat <<'EOF'
usage: runpod_entrypoint.sh [options]

Model and data
  --model NAME       ss4rec-official (default: SS4Rec + the paper config `ss4rec`),
                     ss4rec (SS4Rec, package defaults), mamba4rec (SS4Rec model_type S6-only),
                     sasrec, gru4rec, bert4rec, neumf
  --dataset NAME     ml-100k (bundled, default), ml-1m, ml-10m, ml-20m, ml-25m, ml-32m, or any
                     NAME with DATA_DIR/NAME/NAME.inter. The paper's datasets ml-1m, kuairec-big,
                     kuairec-small, amazon-sports, amazon-video-games train under their own
                     paper preset (paper-NAME) wherever the paper config is used
  --data-dir DIR     folder holding NAME/NAME.inter (default: data)
  --raw PATH|URL     a MovieLens, KuaiRec 2.0, Amazon reviews or RecBole atomic download (file,
                     folder, .zip or URL): downloaded (cached, resumable) and converted into
                     DATA_DIR/NAME first (ss4rec convert; README, Data)
  --sha256 HEX, --md5 HEX   expected checksum of a --raw download
  --config FILE      YAML config or packaged config name (repeatable; later wins)
  --set KEY=VALUE    override one config key (repeatable; wins over everything)

Presets
  --test-ml1m        ML-1M validation: dataset ml-1m, the paper config; at the end prints PASS/FAIL
                     for test HR@10 > 0.25 and NDCG@10 > 0.20 (exit 1 on FAIL; with --debug the
                     verdict is informational)
  --debug            smoke run: users with <= 40 ratings, histories of 20, one epoch, batch 512,
                     small model (hidden 32; SS4Rec d_state 8, d_P 8, expand 1), autograd
                     anomaly detection. Changes nothing else (learning rate, split, metrics)
  --production       the full paper schedule (config `ss4rec`, or paper-NAME for the paper's
                     datasets: 200 epochs, early stop 10, batch 1024, lr 1e-3, 5-core, length
                     200; 50 on Amazon) for any model; not with --debug

Run
  --dry-run          print the plan and run preflight; train nothing
  --device cpu|cuda  where to train (default: GPU when available)
  --nproc N          N processes on this pod with torch DDP: one per GPU, or with --device cpu
                     N CPU processes (gloo). Several pods: torchrun on each (README)
  --resume CKPT      continue RUN/checkpoints/MODEL-last.pth (its run folder is reused)
  --output DIR       run folder (default: runs/MODEL-DATASET-TIME)
  --notify URL       Slack/Discord webhook: start, finish, failure (default: $SS4REC_NOTIFY_URL)
  --wandb            log to Weights & Biases (key: $WANDB_API_KEY or a .env file; never printed)
  --no-wandb         do not log to W&B (default)
  --install          install first: ss4rec (pip, when it is not importable), then mamba-ssm's CUDA
                     kernels when this run uses them and a prebuilt wheel matches this torch /
                     CUDA / Python (`ss4rec kernels install`: a CPU torch skips them in one line;
                     no match: stops and says why, and the ways on)
  --build-kernels    with --install: build the kernels from source when no prebuilt wheel
                     matches (needs nvcc; this GPU's architecture only; an estimate is printed)
  -h, --help         this help

Environment: PYTHON (interpreter, default python3), SS4REC_NOTIFY_URL, WANDB_API_KEY, SS4REC_CACHE.
EOF
}

die() {  # one-line cause with the fix, then a non-zero exit
    echo "error: $*" >&2
    exit 2
}

need_value() {  # $1 option, $2 number of arguments left
    [[ "$2" -ge 2 ]] || die "$1 needs a value (see --help)"
}

MODEL="ss4rec-official"
DATASET=""
DATA_DIR="data"
RAW=""
RAW_SHA256=""
RAW_MD5=""
CONFIGS=()
SETS=()
TEST_ML1M=0
DEBUG=0
PRODUCTION=0
DRY_RUN=0
DEVICE=""
NPROC=1
RESUME=""
OUTPUT=""
NOTIFY="${SS4REC_NOTIFY_URL:-}"
WANDB=0
INSTALL=0
BUILD_KERNELS=0

# --opt=value is accepted as --opt value
ARGS=()
for arg in "$@"; do
    if [[ "$arg" == --*=* ]]; then
        ARGS+=("${arg%%=*}" "${arg#*=}")
    else
        ARGS+=("$arg")
    fi
done
set -- ${ARGS[@]+"${ARGS[@]}"}

while [[ $# -gt 0 ]]; do
    case "$1" in
        --model) need_value "$1" $#; MODEL="$2"; shift 2 ;;
        --dataset) need_value "$1" $#; DATASET="$2"; shift 2 ;;
        --data-dir) need_value "$1" $#; DATA_DIR="$2"; shift 2 ;;
        --raw) need_value "$1" $#; RAW="$2"; shift 2 ;;
        --sha256) need_value "$1" $#; RAW_SHA256="$2"; shift 2 ;;
        --md5) need_value "$1" $#; RAW_MD5="$2"; shift 2 ;;
        --config) need_value "$1" $#; CONFIGS+=("$2"); shift 2 ;;
        --set) need_value "$1" $#; SETS+=("$2"); shift 2 ;;
        --test-ml1m) TEST_ML1M=1; shift ;;
        --debug) DEBUG=1; shift ;;
        --production) PRODUCTION=1; shift ;;
        --dry-run) DRY_RUN=1; shift ;;
        --device) need_value "$1" $#; DEVICE="$2"; shift 2 ;;
        --nproc) need_value "$1" $#; NPROC="$2"; shift 2 ;;
        --resume) need_value "$1" $#; RESUME="$2"; shift 2 ;;
        --output) need_value "$1" $#; OUTPUT="$2"; shift 2 ;;
        --notify) need_value "$1" $#; NOTIFY="$2"; shift 2 ;;
        --wandb) WANDB=1; shift ;;
        --no-wandb) WANDB=0; shift ;;
        --install) INSTALL=1; shift ;;
        --build-kernels) BUILD_KERNELS=1; shift ;;
        -h|--help) usage; exit 0 ;;
        *) die "unknown option '$1' (run with --help for the list)" ;;
    esac
done

# ---- resolve the model, dataset and presets ------------------------------------------------

PRESET_CONFIGS=()
PRESET_SETS=()
PAPER_DATASETS="ml-1m kuairec-big kuairec-small amazon-sports amazon-video-games"
case "$MODEL" in
    ss4rec-official) MODEL_NAME="SS4Rec"; PRESET_CONFIGS+=("ss4rec") ;;
    ss4rec) MODEL_NAME="SS4Rec" ;;
    mamba4rec) MODEL_NAME="SS4Rec"; PRESET_SETS+=("model_type=S6-only") ;;
    sasrec) MODEL_NAME="SASRec" ;;
    gru4rec) MODEL_NAME="GRU4Rec" ;;
    bert4rec) MODEL_NAME="BERT4Rec" ;;
    neumf) MODEL_NAME="NeuMF" ;;
    *) die "unknown model '$MODEL': use ss4rec-official, ss4rec, mamba4rec, sasrec, gru4rec, bert4rec or neumf" ;;
esac

if [[ "$TEST_ML1M" == 1 ]]; then
    [[ -z "$DATASET" || "$DATASET" == "ml-1m" ]] || die "--test-ml1m runs on ml-1m, not --dataset $DATASET: drop one of them"
    DATASET="ml-1m"
fi
DATASET="${DATASET:-ml-100k}"
if [[ "$PRODUCTION" == 1 || "$TEST_ML1M" == 1 ]]; then
    [[ "$PRODUCTION" == 0 || "$DEBUG" == 0 ]] || die "--production (full schedule) and --debug (smoke run) exclude each other: pick one"
    if [[ " ${PRESET_CONFIGS[*]-} " != *" ss4rec "* ]]; then
        PRESET_CONFIGS+=("ss4rec")
    fi
fi
# The paper's five datasets: the paper setting is the official config for that dataset.
if [[ " $PAPER_DATASETS " == *" $DATASET "* ]]; then
    for i in ${PRESET_CONFIGS[@]+"${!PRESET_CONFIGS[@]}"}; do
        [[ "${PRESET_CONFIGS[$i]}" != "ss4rec" ]] || PRESET_CONFIGS[$i]="paper-$DATASET"
    done
fi
[[ "$NPROC" =~ ^[1-9][0-9]*$ ]] || die "--nproc '$NPROC': use a whole number >= 1"
[[ -z "$DEVICE" || "$DEVICE" == "cpu" || "$DEVICE" == "cuda" ]] || die "--device '$DEVICE': use cpu or cuda"
[[ "$BUILD_KERNELS" == 0 || "$INSTALL" == 1 ]] || die "--build-kernels is a choice of --install: add --install"

if [[ -z "${PYTHON:-}" ]]; then
    PYTHON="$(command -v python3 || command -v python || true)"
    [[ -n "$PYTHON" ]] || die "no python3 on PATH: install Python 3.10+ or set PYTHON=/path/to/python"
fi

# ---- installation ---------------------------------------------------------------------------

# ss4rec first, so the CPU path works whatever happens to the kernels; then the kernels, whose
# decisions (pinned pair, prebuilt wheel or not, source build only when asked) are Python's:
# ss4rec.ssm.kernels. find_spec, not import: answers in milliseconds instead of loading torch.
if ! "$PYTHON" -c "import importlib.util, sys; sys.exit(importlib.util.find_spec('ss4rec') is None)" >/dev/null 2>&1; then
    if [[ "$INSTALL" == 1 ]]; then
        echo "ss4rec is not importable by $PYTHON: installing $SCRIPT_DIR"
        "$PYTHON" -m pip install "$SCRIPT_DIR"
    else
        die "ss4rec is not importable by $PYTHON: rerun with --install, or $PYTHON -m pip install '$SCRIPT_DIR'"
    fi
elif [[ "$INSTALL" == 1 ]]; then
    echo "ss4rec is already installed for $PYTHON"
fi
if [[ "$INSTALL" == 1 ]]; then
    KERNELS_CMD=("$PYTHON" -m ss4rec kernels install)
    [[ "$BUILD_KERNELS" == 0 ]] || KERNELS_CMD+=(--build-kernels)
    if [[ "$MODEL_NAME" != "SS4Rec" ]]; then
        KERNELS_CMD+=(--skip "$MODEL has no Mamba layer")
    elif [[ "$DEVICE" == "cpu" ]]; then
        KERNELS_CMD+=(--skip "the run is on --device cpu")
    else
        for s in ${SETS[@]+"${SETS[@]}"}; do
            [[ "${s// /}" != "mamba_backend=torch" ]] || { KERNELS_CMD+=(--skip "--set mamba_backend=torch"); break; }
        done
    fi
    "${KERNELS_CMD[@]}"
fi

# ---- data: bundled, present, or converted from --raw ----------------------------------------

if [[ -z "$RAW" && "$DATASET" != "ml-100k" && ! -f "$DATA_DIR/$DATASET/$DATASET.inter" ]]; then
    missing="dataset $DATASET not found at $DATA_DIR/$DATASET/$DATASET.inter"
    amazon="http://snap.stanford.edu/data/amazon/productGraph/categoryFiles/ratings"
    case "$DATASET" in
        ml-1m|ml-10m|ml-20m|ml-25m|ml-32m)
            url="https://files.grouplens.org/datasets/movielens/$DATASET.zip"
            die "$missing: pass --raw PATH/TO/$DATASET.zip (the GroupLens zip, from $url) or --raw $url to download and convert it" ;;
        kuairec-big|kuairec-small)
            die "$missing: pass --raw PATH/TO/KuaiRec.zip or --raw https://zenodo.org/records/18164998/files/KuaiRec.zip (KuaiRec 2.0; --dataset picks the matrix)" ;;
        amazon-sports)
            die "$missing: pass --raw ${amazon}_Sports_and_Outdoors.csv (the Amazon 2014 ratings-only file) or a local path; 2018/2023 review files and RecBole's Amazon zips work too" ;;
        amazon-video-games)
            die "$missing: pass --raw ${amazon}_Video_Games.csv (the Amazon 2014 ratings-only file) or a local path; 2018/2023 review files and RecBole's Amazon zips work too" ;;
    esac
    die "$missing: pass --raw PATH (a MovieLens, KuaiRec, Amazon or RecBole download: file, folder, .zip or URL) to convert it, or --data-dir DIR holding $DATASET/$DATASET.inter"
fi
[[ -z "$RAW_SHA256$RAW_MD5" || -n "$RAW" ]] || die "--sha256/--md5 check a --raw download: add --raw URL or drop them"

# ---- W&B: the key comes from the environment or .env and is never echoed ---------------------

if [[ "$WANDB" == 1 ]]; then
    if [[ -z "${WANDB_API_KEY:-}" ]]; then
        for env_file in "$PWD/.env" "$SCRIPT_DIR/.env"; do
            if [[ -f "$env_file" ]]; then
                key="$(sed -n -E 's/^[[:space:]]*(export[[:space:]]+)?WANDB_API_KEY[[:space:]]*=[[:space:]]*//p' "$env_file" | tail -n 1)"
                key="${key%\"}"; key="${key#\"}"; key="${key%\'}"; key="${key#\'}"
                if [[ -n "$key" ]]; then
                    export WANDB_API_KEY="$key"
                    break
                fi
            fi
        done
    fi
    # Offline W&B (WANDB_MODE=offline or disabled) writes locally and needs no key.
    if [[ "${WANDB_MODE:-}" != "offline" && "${WANDB_MODE:-}" != "disabled" ]]; then
        [[ -n "${WANDB_API_KEY:-}" ]] || die "--wandb needs a W&B key: export WANDB_API_KEY=... or put WANDB_API_KEY=... in ./.env (or WANDB_MODE=offline, or --no-wandb)"
    fi
    PRESET_SETS+=("log_wandb=True")
fi

# ---- the run folder and the commands ---------------------------------------------------------

if [[ -n "$RESUME" ]]; then
    [[ -f "$RESUME" ]] || die "--resume $RESUME: no such checkpoint (expected RUN/checkpoints/MODEL-last.pth)"
    RUN_DIR="${OUTPUT:-$(cd "$(dirname "$RESUME")/.." && pwd)}"
else
    suffix=""
    [[ "$DEBUG" == 0 ]] || suffix="-debug"
    RUN_DIR="${OUTPUT:-runs/$MODEL-$DATASET-$(date +%Y%m%d-%H%M%S)$suffix}"
fi
mkdir -p "$RUN_DIR"
RUN_DIR="$(cd "$RUN_DIR" && pwd)"

# Presets first, then the user's --config and --set: the user's choices win.
CONFIG_ARGS=(--model "$MODEL_NAME" --dataset "$DATASET")
[[ "$DATASET" == "ml-100k" && -z "$RAW" ]] || CONFIG_ARGS+=(--data-path "$DATA_DIR")
for c in ${PRESET_CONFIGS[@]+"${PRESET_CONFIGS[@]}"} ${CONFIGS[@]+"${CONFIGS[@]}"}; do CONFIG_ARGS+=(--config "$c"); done
for s in ${PRESET_SETS[@]+"${PRESET_SETS[@]}"} ${SETS[@]+"${SETS[@]}"}; do CONFIG_ARGS+=(--set "$s"); done
[[ -z "$DEVICE" ]] || CONFIG_ARGS+=(--device "$DEVICE")
[[ "$DEBUG" == 0 ]] || CONFIG_ARGS+=(--debug)

PREFLIGHT_CMD=("$PYTHON" -m ss4rec preflight "${CONFIG_ARGS[@]}" --output "$RUN_DIR" --nproc "$NPROC")
TRAIN_CMD=("$PYTHON" -m ss4rec train "${CONFIG_ARGS[@]}" --output "$RUN_DIR" --nproc "$NPROC")
[[ -z "$RESUME" ]] || TRAIN_CMD+=(--resume "$RESUME")
# The webhook URL is a secret: it travels in the environment, never on a command line.
if [[ -n "$NOTIFY" ]]; then export SS4REC_NOTIFY_URL="$NOTIFY"; else unset SS4REC_NOTIFY_URL; fi

echo "run folder: $RUN_DIR"
{
    echo "plan"
    echo "  model       $MODEL -> $MODEL_NAME"
    echo "  dataset     $DATASET$([[ "$DATASET" == "ml-100k" && -z "$RAW" ]] && echo ' (bundled with RecBole)')"
    [[ -z "$RAW" ]] || echo "  convert     $RAW -> $DATA_DIR/$DATASET"
    echo "  presets     $([[ "$TEST_ML1M" == 1 ]] && echo -n 'test-ml1m ')$([[ "$PRODUCTION" == 1 ]] && echo -n 'production ')$([[ "$DEBUG" == 1 ]] && echo -n 'debug ')$([[ "$DRY_RUN" == 1 ]] && echo -n 'dry-run')"
    echo "  notify      $([[ -n "$NOTIFY" ]] && echo 'on (webhook from --notify / SS4REC_NOTIFY_URL)' || echo off)"
    echo "  wandb       $([[ "$WANDB" == 1 ]] && echo on || echo off)"
    echo "  preflight   ${PREFLIGHT_CMD[*]}"
    echo "  train       ${TRAIN_CMD[*]}"
} | tee "$RUN_DIR/plan.txt"

# ---- steps ------------------------------------------------------------------------------------

if [[ -n "$RAW" ]]; then
    "$PYTHON" -m ss4rec.pipeline.envinfo  # the environment block comes first, before any download
    # --raw with --dataset NAME asks for exactly this conversion: it replaces an earlier DATA_DIR/NAME.
    CONVERT_CMD=("$PYTHON" -m ss4rec convert "$RAW" "$DATA_DIR" --name "$DATASET" --overwrite)
    [[ -z "$RAW_SHA256" ]] || CONVERT_CMD+=(--sha256 "$RAW_SHA256")
    [[ -z "$RAW_MD5" ]] || CONVERT_CMD+=(--md5 "$RAW_MD5")
    "${CONVERT_CMD[@]}"
    PREFLIGHT_CMD+=(--no-env)
fi

"${PREFLIGHT_CMD[@]}"
if [[ "$DRY_RUN" == 1 ]]; then
    echo "dry run: preflight passed, nothing trained; run folder: $RUN_DIR"
    exit 0
fi

"${TRAIN_CMD[@]}"
echo "run folder: $RUN_DIR"

if [[ "$TEST_ML1M" == 1 ]]; then
    # exit 0: PASS (or a --debug run, whose verdict is informational); exit 1: FAIL
    "$PYTHON" - "$RUN_DIR/results.json" "$DEBUG" <<'PY'
import json, sys
test = json.load(open(sys.argv[1], encoding="utf-8"))["test"]
hr, ndcg = test.get("hit@10", float("nan")), test.get("ndcg@10", float("nan"))
ok = hr > 0.25 and ndcg > 0.20
debug = sys.argv[2] == "1"
print(f"ML-1M check: HR@10 {hr:.4f} (> 0.25), NDCG@10 {ndcg:.4f} (> 0.20): {'PASS' if ok else 'FAIL'}"
      + (" (debug run: thresholds apply to a full --test-ml1m run, not enforced)" if debug else ""))
sys.exit(0 if ok or debug else 1)
PY
fi
