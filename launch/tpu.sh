#!/usr/bin/env bash
# Train on a Cloud TPU VM or pod slice.
#
#   launch/tpu.sh up     --name codec --zone us-central2-b --accelerator v4-32 \
#                        --config configs/grvq4.py --workdir gs://BUCKET/runs/grvq4 \
#                        --data gs://BUCKET/data/libritts [--batch-size 64] [--config.KEY=VALUE]
#                        [--spot] [--queued] [--no-preflight] [--dry-run]
#   launch/tpu.sh logs   --name codec --zone us-central2-b      # follow worker 0's log
#   launch/tpu.sh delete --name codec --zone us-central2-b [--queued]
#   launch/tpu.sh tokenize --name codec --zone us-central2-b --model hificodec-16k-320d \
#                        --input /mnt/corpus/manifest.jsonl --out /mnt/tokens
#
# Commands: create (VM or queued resource), install (this checkout + jax[tpu] on every worker),
# train (start main on every worker: --worker=all), up (= create, install, train), logs,
# status, delete, tokenize (the tokenize job on every worker, each taking its share of the
# units; --input and --out on storage every worker sees; rerun to resume). --dry-run prints
# the gcloud commands instead of running them.
# Pre-flight (up, train; also under --dry-run): the train step is first compiled here for the
# accelerator, batch and config (needs this checkout installed with the [aot] extra); a job that
# would not fit in the chips' memory stops the script before anything is created.
# Resuming: run `train` (or `up` after a preemption) with the same --workdir: every start
# resumes from the latest checkpoint there. Spot VMs get SIGTERM before they go away; the
# trainer then writes a final checkpoint.
set -euo pipefail
# shellcheck source-path=SCRIPTDIR source=common.sh
. "$(dirname "$0")/common.sh"

usage() { sed -n '2,24p' "$0" | sed 's/^# \{0,1\}//'; exit "${1:-0}"; }

CMD=${1:-}
[ -n "$CMD" ] || usage 2
shift
NAME="" ZONE="" ACCEL="v4-8" VERSION="" CONFIG="configs/grvq4.py" WORKDIR="" DATA=""
PROJECT="" SPOT=0 QUEUED=0 BATCH="" PREFLIGHT=1 OVERRIDES=() MODEL="" INPUT="" OUT=""
while [ $# -gt 0 ]; do
  case "$1" in
    --name) NAME=$2; shift 2 ;;
    --zone) ZONE=$2; shift 2 ;;
    --accelerator) ACCEL=$2; shift 2 ;;
    --version) VERSION=$2; shift 2 ;;
    --config) CONFIG=$2; shift 2 ;;
    --workdir) WORKDIR=$2; shift 2 ;;
    --data) DATA=$2; shift 2 ;;
    --model) MODEL=$2; shift 2 ;;
    --input) INPUT=$2; shift 2 ;;
    --out) OUT=$2; shift 2 ;;
    --project) PROJECT=$2; shift 2 ;;
    --spot) SPOT=1; shift ;;
    --queued) QUEUED=1; shift ;;
    --batch-size) BATCH=$2; shift 2 ;;
    --config.*=*) OVERRIDES+=("$1"); shift ;;
    --config.*) OVERRIDES+=("$1=$2"); shift 2 ;;
    --no-preflight) PREFLIGHT=0; shift ;;
    --dry-run) DRY_RUN=1; shift ;;
    -h|--help) usage 0 ;;
    *) die "unknown option $1 (see --help)" ;;
  esac
done
[ -n "$NAME" ] || die "--name is required"
[ -n "$ZONE" ] || die "--zone is required"

# TPU software version for the accelerator generation (override with --version).
if [ -z "$VERSION" ]; then
  case "$ACCEL" in
    v4-*) VERSION=tpu-ubuntu2204-base ;;
    v5litepod-*|v5e-*) VERSION=v2-alpha-tpuv5-lite ;;
    v5p-*) VERSION=v2-alpha-tpuv5 ;;
    v6e-*) VERSION=v2-alpha-tpuv6e ;;
    *) die "no default --version for $ACCEL; pass one" ;;
  esac
fi

GC=(gcloud compute tpus)
COMMON=(--zone="$ZONE")
[ -n "$PROJECT" ] && COMMON+=(--project="$PROJECT")
SSH=("${GC[@]}" tpu-vm ssh "$NAME" "${COMMON[@]}" --worker=all)

create() {
  local extra=()
  [ "$SPOT" = 1 ] && extra+=(--spot)
  if [ "$QUEUED" = 1 ]; then
    run "${GC[@]}" queued-resources create "$NAME" --node-id="$NAME" "${COMMON[@]}" \
      --accelerator-type="$ACCEL" --runtime-version="$VERSION" "${extra[@]}"
    if [ "$DRY_RUN" = 1 ]; then
      echo "# (waits until the queued resource is ACTIVE)"
    else
      until [ "$("${GC[@]}" queued-resources describe "$NAME" "${COMMON[@]}" \
        --format='value(state.state)')" = ACTIVE ]; do sleep 30; done
    fi
  else
    run "${GC[@]}" tpu-vm create "$NAME" "${COMMON[@]}" --accelerator-type="$ACCEL" \
      --version="$VERSION" "${extra[@]}"
  fi
}

install() {
  local root tarball jax_version
  root=$(cd "$(dirname "$0")/.." && pwd)
  tarball=${TMPDIR:-/tmp}/hificodec_jax-$$.tar.gz
  jax_version=$(pinned_jax_version)
  # The committed state of this checkout (commit first), copied to every worker.
  run git -C "$root" archive --format=tar.gz -o "$tarball" HEAD
  run "${GC[@]}" tpu-vm scp "$tarball" "$NAME:hificodec_jax.tar.gz" "${COMMON[@]}" --worker=all
  run "${SSH[@]}" --command="set -e && rm -rf ~/hificodec_jax && mkdir -p ~/hificodec_jax \
&& tar xzf ~/hificodec_jax.tar.gz -C ~/hificodec_jax && python3 -m venv ~/venv \
&& ~/venv/bin/pip install -q -U pip \
&& ~/venv/bin/pip install -q -e \"\$HOME/hificodec_jax[train,gcs]\" 'jax[tpu]==$jax_version'"
  [ "$DRY_RUN" = 1 ] || rm -f "$tarball"
}

train() {
  [ -n "$WORKDIR" ] || die "--workdir is required (a gs:// path shared by all workers)"
  local flags=()
  [ -n "$DATA" ] && flags+=("--config.data.tfds_dir=$DATA")
  [ -n "$BATCH" ] && flags+=("--config.batch_size=$BATCH")
  flags+=("${OVERRIDES[@]}")
  # Every worker runs the same command; jax.distributed.initialize() finds the others itself.
  run "${SSH[@]}" --command="cd ~/hificodec_jax && nohup ~/venv/bin/python -m hificodec_jax.main \
--config=$CONFIG --workdir=$WORKDIR ${flags[*]@Q} --distributed > ~/train.log 2>&1 &"
}

check() {
  [ "$PREFLIGHT" = 1 ] || return 0
  [ -n "$WORKDIR" ] || die "--workdir is required (a gs:// path shared by all workers)"
  preflight "$ACCEL" "$CONFIG" "$BATCH" "${OVERRIDES[@]}"
}

tokenize() {
  if [ -z "$MODEL" ] || [ -z "$INPUT" ] || [ -z "$OUT" ]; then die "tokenize needs --model, --input and --out"; fi
  run "${SSH[@]}" --command="cd ~/hificodec_jax && nohup ~/venv/bin/python -m hificodec_jax.tokens \
--model=$MODEL --input=$INPUT --out=$OUT --distributed --no-progress > ~/tokenize.log 2>&1 &"
}

case "$CMD" in
  create) create ;;
  tokenize) tokenize ;;
  install) install ;;
  train) check; train ;;
  up) check; create; install; train ;;
  logs) run "${GC[@]}" tpu-vm ssh "$NAME" "${COMMON[@]}" --worker=0 --command="tail -n 200 -F ~/train.log" ;;
  status)
    if [ "$QUEUED" = 1 ]; then run "${GC[@]}" queued-resources describe "$NAME" "${COMMON[@]}"
    else run "${GC[@]}" tpu-vm describe "$NAME" "${COMMON[@]}"; fi ;;
  delete)
    if [ "$QUEUED" = 1 ]; then run "${GC[@]}" queued-resources delete "$NAME" "${COMMON[@]}" --force --quiet
    else run "${GC[@]}" tpu-vm delete "$NAME" "${COMMON[@]}" --quiet; fi ;;
  *) die "unknown command $CMD (see --help)" ;;
esac
