#!/usr/bin/env bash
# Creates (or reuses) .venv with Python >= 3.12 and installs vgssl_jax into it.
# Usage: VGSSL_EXTRAS=test source scripts/env.sh    (extras: "" for the package alone, "test")
# The caller's own arguments are never read here (a sourced script sees them as "$@").
# Set PYTHON=/path/to/python3.12 to choose the interpreter, VGSSL_VENV to place the venv
# elsewhere, VGSSL_SETUP_DRY_RUN=1 to print what would be installed instead of installing.
set -euo pipefail
REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${VGSSL_VENV:-$REPO/.venv}"
EXTRAS="${VGSSL_EXTRAS:-}"
DRY_RUN="${VGSSL_SETUP_DRY_RUN:-0}"

version_ok() { "$1" -c 'import sys; sys.exit(0 if sys.version_info >= (3, 12) else 1)' 2>/dev/null; }

find_python() {
  local candidates=()
  [ -n "${PYTHON:-}" ] && candidates+=("$PYTHON")
  candidates+=(python3.14 python3.13 python3.12 python3 python)
  local pyenv_root="${PYENV_ROOT:-$HOME/.pyenv}"
  for p in $(ls -d "$pyenv_root"/versions/3.1[2-9]*/bin/python 2>/dev/null | sort -rV); do
    candidates+=("$p")
  done
  for c in "${candidates[@]}"; do
    if command -v "$c" >/dev/null 2>&1 && version_ok "$(command -v "$c")"; then
      command -v "$c"; return 0
    fi
  done
  return 1
}

if [ ! -x "$VENV/bin/python" ] || ! version_ok "$VENV/bin/python"; then
  PY="$(find_python)" || { echo "error: Python >= 3.12 not found; install it or set PYTHON=/path/to/python3.12" >&2; exit 1; }
  if [ "$DRY_RUN" = 1 ]; then
    echo "setup: would create $VENV with $("$PY" --version)" >&2
  else
    echo "creating $VENV with $("$PY" --version)" >&2
    rm -rf "$VENV"
    "$PY" -m venv "$VENV"
    "$VENV/bin/python" -m pip install -q --upgrade pip
  fi
fi

# One install stamp per extra set, kept side by side (the demo's and the tests' do not
# undo each other); a stamp is stale when the package metadata or the pins change.
NAME="${EXTRAS//,/_}"
HASH="$(cat "$REPO/pyproject.toml" "$REPO/constraints.txt" | sha256sum | cut -c1-16)"
STAMP="$VENV/.installed-${NAME:-base}-$HASH"
if [ ! -f "$STAMP" ]; then
  SPEC="$REPO"
  [ -n "$EXTRAS" ] && SPEC="$REPO[$EXTRAS]"
  if [ "$DRY_RUN" = 1 ]; then
    echo "setup: would install $SPEC" >&2
  else
    "$VENV/bin/python" -m pip install -q -c "$REPO/constraints.txt" -e "$SPEC"
    rm -f "$VENV/.installed-${NAME:-base}-"*
    touch "$STAMP"
  fi
fi
export PATH="$VENV/bin:$PATH"
