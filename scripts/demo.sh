#!/usr/bin/env bash
# The main job on the built-in synthetic dataset: set-up, then train + evaluate (a few minutes on a CPU).
# Extra arguments are passed on, e.g. ./scripts/demo.sh --config.train.epochs=4
# DEMO_CONFIG=configs/demo_gsv.py ./scripts/demo.sh runs the GSV demo (MS loss, tiny DINOv2 + SALAD)
set -euo pipefail
cd "$(dirname "$0")/.."
VGSSL_EXTRAS="" source scripts/env.sh
DEMO_CONFIG="${DEMO_CONFIG:-configs/demo.py}"
exec python -m vgssl_jax.main --config "$DEMO_CONFIG" --workdir "${WORKDIR:-runs/$(basename "$DEMO_CONFIG" .py)}" "$@"
