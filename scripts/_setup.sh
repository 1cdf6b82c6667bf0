#!/usr/bin/env bash
# Shared set-up for scripts/test.sh, scripts/quickstart.sh and scripts/docs.sh: a .venv with torch 2.13.0 (CPU
# build, installed first so no other torch is pulled) and molequi with its extras (MOLEQUI_EXTRAS, default
# qm,dev,docs: docs is Sphinx, for the API reference). Idempotent: re-running is cheap.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
PY="${PYTHON:-python3}"
if [ ! -x .venv/bin/python ]; then
  echo "[molequi] creating .venv with $($PY --version)"
  "$PY" -m venv .venv
fi
# shellcheck disable=SC1091
. .venv/bin/activate
STAMP=.venv/.molequi-installed
HASH="$(sha256sum pyproject.toml | cut -c1-16)"
if [ ! -f "$STAMP" ] || [ "$(cat "$STAMP")" != "$HASH" ]; then
  echo "[molequi] installing torch==2.13.0, then molequi[${MOLEQUI_EXTRAS:-qm,dev,docs}]"
  python -m pip install -q --upgrade pip
  python -m pip install -q "torch==2.13.0"
  python -m pip install -q -e ".[${MOLEQUI_EXTRAS:-qm,dev,docs}]"
  echo "$HASH" > "$STAMP"
fi
