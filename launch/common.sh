#!/usr/bin/env bash
# Shared helpers for the launch scripts (sourced, not run).
# DRY_RUN=1 makes `run` print each command (shell-quoted, copy-pasteable) instead of running it.

DRY_RUN=${DRY_RUN:-0}

run() {
  if [ "$DRY_RUN" = 1 ]; then
    printf '%q ' "$@"
    printf '\n'
  else
    "$@"
  fi
}

die() {
  echo "error: $*" >&2
  exit 2
}

# The jax version the project is tested with (constraints.txt), for jax[tpu] / jax[cuda12].
pinned_jax_version() {
  local root
  root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
  sed -n 's/^jax==//p' "$root/constraints.txt"
}

# Pre-flight: compile the training job for the target chips ahead of time, on this machine, and
# stop here when it would not fit in their memory (hificodec-jax compile).
#   preflight TARGET CONFIG BATCH [--config.KEY=VALUE ...]   (BATCH empty: the config's)
# Skipped, with a note, where this machine cannot compile for TARGET (no [aot] extra).
preflight() {
  local target=$1 config=$2 batch=$3 py=${PYTHON:-python3} root log out rc=0
  shift 3
  root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
  if ! (cd "$root" && "$py" -c "import hificodec_jax.cli.compile" 2>/dev/null); then
    echo "# pre-flight skipped: $py cannot import hificodec_jax (pip install -e '.[aot]')"
    return 0
  fi
  local args=(--target "$target" --config "$config" --job train --quiet "$@")
  [ -n "$batch" ] && args+=(--batch-size "$batch")
  # A full-size TPU step takes an hour of CPU time to compile: say so before the wait.
  echo "# pre-flight: compiling the train step for $target on this machine (minutes; a full-size TPU step over an hour on a few cores; --no-preflight skips)"
  log=$(mktemp)
  out=$(cd "$root" && "$py" -m hificodec_jax.cli compile "${args[@]}" 2>"$log") || rc=$?
  case $rc in
    0) echo "# pre-flight: fits on $target: $(printf '%s' "$out" | "$py" -c 'import json, sys
r = json.load(sys.stdin)
print(f"{r[\"total_bytes\"] / 2**30:.2f} of {r[\"capacity_bytes\"] / 2**30:.2f} GiB per chip")')" ;;
    3) echo "# pre-flight skipped: $(tail -n 1 "$log")" ;;
    *) echo "error: pre-flight for $target: $(tail -n 1 "$log" | sed 's/^hificodec-jax compile: //'); not launching (--no-preflight skips this check)" >&2
       rm -f "$log"
       exit 1 ;;
  esac
  rm -f "$log"
}
