#!/usr/bin/env bash
# Set up (.venv, torch 2.13.0, molequi[qm,dev]) and run the main job on the shipped data:
# train MACE on rMD17 ethanol, test it, run MD with it. Results land in ./quickstart_out (or $1).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
# shellcheck source=scripts/_setup.sh
. "$ROOT/scripts/_setup.sh"
cd "$ROOT"
export MPLBACKEND=Agg
exec molequi quickstart --out "${1:-quickstart_out}"
