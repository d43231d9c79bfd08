#!/usr/bin/env bash
# The main job on the built-in synthetic dataset: set-up, then train + evaluate (a few minutes on a CPU).
# Extra arguments are passed on, e.g. ./scripts/demo.sh --config.train.epochs=4
set -euo pipefail
cd "$(dirname "$0")/.."
VGSSL_EXTRAS="" source scripts/env.sh
exec python -m vgssl_jax.main --config configs/demo.py --workdir "${WORKDIR:-runs/demo}" "$@"
