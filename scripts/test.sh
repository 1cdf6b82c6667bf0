#!/usr/bin/env bash
# Set up (.venv, torch 2.13.0, molequi[qm,dev]) and run the test suite. Extra arguments go to pytest.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
# shellcheck source=scripts/_setup.sh
. "$ROOT/scripts/_setup.sh"
cd "$ROOT"
export MPLBACKEND=Agg
# two workers on two cores; pytest-xdist is in the dev extra
exec python -m pytest -q -n "${MOLEQUI_TEST_WORKERS:-2}" --durations=15 "$@"
