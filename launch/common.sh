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
