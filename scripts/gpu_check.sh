#!/usr/bin/env bash
# The GPU check lives with the other measurements: bench/gpu_check.sh (same arguments).
exec "$(dirname "$0")/../bench/gpu_check.sh" "$@"
