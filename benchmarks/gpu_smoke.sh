#!/usr/bin/env bash
# One command on a GPU machine (pip install -e .[gpu]): one PASS/FAIL line per check.
#   benchmarks/gpu_smoke.sh [--list | --dry-run | --only NAME,...] [--workdir DIR]
set -euo pipefail
cd "$(dirname "$0")/.."
exec python benchmarks/gpu_smoke.py "$@"
