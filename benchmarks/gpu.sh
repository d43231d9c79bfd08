#!/usr/bin/env bash
# The GPU benchmarks (see benchmarks/gpu.py): run from the repository root on a GPU host.
set -euo pipefail
cd "$(dirname "$0")/.."
exec python benchmarks/gpu.py "$@"
