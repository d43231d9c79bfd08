#!/usr/bin/env bash
# Set-up, then the test suite (fast: tiny models and images). Extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
VGSSL_EXTRAS=test source scripts/env.sh
exec python -m pytest -n "${PYTEST_WORKERS:-2}" "$@"
