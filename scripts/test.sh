#!/usr/bin/env bash
# Set up (.venv, torch 2.13.0, molequi[qm,dev]) and run the test suite. Extra arguments go to pytest.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
# shellcheck source=scripts/_setup.sh
. "$ROOT/scripts/_setup.sh"
cd "$ROOT"
export MPLBACKEND=Agg
# two workers on two cores, one intra-op thread each: two workers with two OpenMP threads apiece on two
# cores made tests 5-40x slower (threads spinning on each other; the EDM overfit took 304 s instead of 9 s).
# pytest-xdist is in the dev extra.
export OMP_NUM_THREADS="${OMP_NUM_THREADS:-1}"
exec python -m pytest -q -n "${MOLEQUI_TEST_WORKERS:-2}" --durations=15 "$@"
