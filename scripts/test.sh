#!/usr/bin/env bash
# Set-up, then the test suite (fast: tiny models and images). Extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/env.sh test
exec python -m pytest -n "${PYTEST_WORKERS:-2}" "$@"
