#!/usr/bin/env bash
# Train on one GPU machine with all its GPUs (one process; the batch is split over the GPUs).
#
#   launch/gpu.sh --config configs/grvq4.py --workdir runs/grvq4 [--data DIR] [--install]
#                 [--batch-size 64] [--config.KEY=VALUE ...] [--gpu h100|h200|a100-80g]
#                 [--gpus N] [--no-preflight] [--dry-run] [-- extra main flags]
#   launch/gpu.sh tokenize --model NAME_OR_DIR --input SOURCE --out DIR [--install]
#                 [--dry-run] [-- extra tokenize flags, e.g. --levels 1]
#
# --install sets up a virtual environment (.venv) with this checkout and jax[cuda12] first.
# Pre-flight (also under --dry-run): the train step is first compiled for --gpus GPUs of kind
# --gpu (default: those nvidia-smi lists, else 8 H100s) and the run stops if it would not fit.
# The run resumes from the latest checkpoint in --workdir; SIGTERM (e.g. `kill`) writes a
# checkpoint and exits with status 143; rerun the same command to continue. `tokenize` writes
# a token store (docs/tokenize.md); rerunning it resumes.
set -euo pipefail
# shellcheck source-path=SCRIPTDIR source=common.sh
. "$(dirname "$0")/common.sh"

ROOT=$(cd "$(dirname "$0")/.." && pwd)
CONFIG="configs/grvq4.py" WORKDIR="" DATA="" INSTALL=0 EXTRA=() BATCH="" OVERRIDES=()
GPU=h100 GPUS="" PREFLIGHT=1 MODE=train MODEL="" INPUT="" OUT=""
if [ "${1:-}" = tokenize ]; then MODE=tokenize; shift; fi
while [ $# -gt 0 ]; do
  case "$1" in
    --config) CONFIG=$2; shift 2 ;;
    --workdir) WORKDIR=$2; shift 2 ;;
    --data) DATA=$2; shift 2 ;;
    --model) MODEL=$2; shift 2 ;;
    --input) INPUT=$2; shift 2 ;;
    --out) OUT=$2; shift 2 ;;
    --install) INSTALL=1; shift ;;
    --batch-size) BATCH=$2; shift 2 ;;
    --config.*=*) OVERRIDES+=("$1"); shift ;;
    --config.*) OVERRIDES+=("$1=$2"); shift 2 ;;
    --gpu) GPU=$2; shift 2 ;;
    --gpus) GPUS=$2; shift 2 ;;
    --no-preflight) PREFLIGHT=0; shift ;;
    --dry-run) DRY_RUN=1; shift ;;
    --) shift; EXTRA=("$@"); break ;;
    -h|--help) sed -n '2,15p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) die "unknown option $1 (see --help)" ;;
  esac
done
if [ "$MODE" = tokenize ]; then
  if [ -z "$MODEL" ] || [ -z "$INPUT" ] || [ -z "$OUT" ]; then die "tokenize needs --model, --input and --out"; fi
else
  [ -n "$WORKDIR" ] || die "--workdir is required"
fi

PY="$ROOT/.venv/bin/python"
if [ "$INSTALL" = 1 ]; then
  run python3 -m venv "$ROOT/.venv"
  run "$PY" -m pip install -q -U pip
  run "$PY" -m pip install -q -e "${ROOT}[train]" "jax[cuda12]==$(pinned_jax_version)"
fi
[ -x "$PY" ] || PY=python3

ARGS=(--config="$CONFIG" --workdir="$WORKDIR")
[ -n "$DATA" ] && ARGS+=(--config.data.dir="$DATA")
[ -n "$BATCH" ] && ARGS+=(--config.batch_size="$BATCH")
ARGS+=("${OVERRIDES[@]}")
if [ "$MODE" = train ] && [ "$PREFLIGHT" = 1 ]; then
  if [ -z "$GPUS" ]; then
    GPUS=$(nvidia-smi -L 2>/dev/null | grep -c '^GPU' || true)
    [ "$GPUS" -gt 0 ] 2>/dev/null || GPUS=8
  fi
  CHECK=("${OVERRIDES[@]}")
  for a in "${EXTRA[@]}"; do [[ $a == --config.*=* ]] && CHECK+=("$a"); done
  PYTHON=$PY preflight "$GPU-$GPUS" "$CONFIG" "$BATCH" "${CHECK[@]}"
fi
# Let XLA overlap collectives with compute; keep 10 % of GPU memory for cuDNN workspaces.
export XLA_FLAGS="${XLA_FLAGS:-} --xla_gpu_enable_latency_hiding_scheduler=true"
export XLA_PYTHON_CLIENT_MEM_FRACTION=${XLA_PYTHON_CLIENT_MEM_FRACTION:-0.9}
cd "$ROOT"
if [ "$MODE" = tokenize ]; then
  run "$PY" -m hificodec_jax.tokens --model "$MODEL" --input "$INPUT" --out "$OUT" "${EXTRA[@]}"
else
  run "$PY" -m hificodec_jax.main "${ARGS[@]}" "${EXTRA[@]}"
fi
