#!/usr/bin/env bash
# Train on several GPU nodes under SLURM: one process per node, each using all its GPUs.
#
#   launch/slurm.sh --nodes 2 --gpus-per-node 8 --config configs/grvq4.py \
#                   --workdir /shared/runs/grvq4 [--data /shared/data/libritts] \
#                   [--partition P] [--time 48:00:00] [--account A] [--batch-size 64]
#                   [--config.KEY=VALUE ...] [--gpu h100|h200|a100-80g] [--no-preflight]
#                   [--dry-run]
#   launch/slurm.sh tokenize --nodes 4 --model NAME_OR_DIR --input SOURCE --out /shared/tokens
#                   [same SLURM options] [-- extra tokenize flags, e.g. --levels 1]
#
# Submits launch/slurm_job.sbatch. The workdir and data must be on a filesystem every node
# sees (or gs://). Jobs are requeueable: SLURM sends SIGTERM 120 s before a preemption or the
# time limit, the trainer checkpoints and exits, and the requeued job resumes from there.
# Pre-flight (also under --dry-run): the train step is first compiled here for the nodes' GPUs
# (--gpu, default h100) and nothing is queued if it would not fit in their memory.
# A requeued tokenize job skips the units already committed (docs/tokenize.md).
set -euo pipefail
# shellcheck source-path=SCRIPTDIR source=common.sh
. "$(dirname "$0")/common.sh"

ROOT=$(cd "$(dirname "$0")/.." && pwd)
NODES=1 GPUS=8 CONFIG="configs/grvq4.py" WORKDIR="" DATA="" SB=() BATCH="" OVERRIDES=()
GPU=h100 PREFLIGHT=1 MODE=train MODEL="" INPUT="" OUT="" EXTRA=()
if [ "${1:-}" = tokenize ]; then MODE=tokenize; shift; fi
while [ $# -gt 0 ]; do
  case "$1" in
    --nodes) NODES=$2; shift 2 ;;
    --gpus-per-node) GPUS=$2; shift 2 ;;
    --config) CONFIG=$2; shift 2 ;;
    --workdir) WORKDIR=$2; shift 2 ;;
    --data) DATA=$2; shift 2 ;;
    --model) MODEL=$2; shift 2 ;;
    --input) INPUT=$2; shift 2 ;;
    --out) OUT=$2; shift 2 ;;
    --partition) SB+=(--partition="$2"); shift 2 ;;
    --time) SB+=(--time="$2"); shift 2 ;;
    --account) SB+=(--account="$2"); shift 2 ;;
    --batch-size) BATCH=$2; shift 2 ;;
    --config.*=*) OVERRIDES+=("$1"); shift ;;
    --config.*) OVERRIDES+=("$1=$2"); shift 2 ;;
    --gpu) GPU=$2; shift 2 ;;
    --no-preflight) PREFLIGHT=0; shift ;;
    --dry-run) DRY_RUN=1; shift ;;
    --) shift; EXTRA=("$@"); break ;;
    -h|--help) sed -n '2,17p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) die "unknown option $1 (see --help)" ;;
  esac
done
if [ "$MODE" = tokenize ]; then
  if [ -z "$MODEL" ] || [ -z "$INPUT" ] || [ -z "$OUT" ]; then die "tokenize needs --model, --input and --out"; fi
  run sbatch --nodes="$NODES" --ntasks-per-node=1 --gpus-per-node="$GPUS" \
    --job-name="hificodec-tokenize" "${SB[@]}" \
    --export=ALL,HFC_ROOT="$ROOT",HFC_MODE=tokenize,HFC_MODEL="$MODEL",HFC_INPUT="$INPUT",HFC_OUT="$OUT",HFC_EXTRA="${EXTRA[*]}" \
    "$ROOT/launch/slurm_job.sbatch"
  exit 0
fi
[ -n "$WORKDIR" ] || die "--workdir is required (shared by all nodes)"
[ "$PREFLIGHT" = 1 ] && preflight "$GPU-$((NODES * GPUS))" "$CONFIG" "$BATCH" "${OVERRIDES[@]}"
# Trainer flags after the script's name reach hificodec_jax.main (slurm_job.sbatch).
PASS=("${OVERRIDES[@]}")
[ -n "$BATCH" ] && PASS+=(--config.batch_size="$BATCH")

run sbatch --nodes="$NODES" --ntasks-per-node=1 --gpus-per-node="$GPUS" \
  --job-name="hificodec-$(basename "$CONFIG" .py)" "${SB[@]}" \
  --export=ALL,HFC_ROOT="$ROOT",HFC_CONFIG="$CONFIG",HFC_WORKDIR="$WORKDIR",HFC_DATA="$DATA" \
  "$ROOT/launch/slurm_job.sbatch" "${PASS[@]}"
