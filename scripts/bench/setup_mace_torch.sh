#!/usr/bin/env bash
# The mace-torch venv for scripts/bench/mace_speed.py and md_speed.py: built by setup_peers.sh (torch==2.13.0
# first, then mace-torch==0.3.16; mace-torch pins e3nn 0.4.4, which must not share a venv with molequi's
# e3nn 0.6) and made reachable at ${MACE_VENV:-$HOME/.cache/molequi/mace-venv} by a symlink.
#
#   bash scripts/bench/setup_mace_torch.sh
set -euo pipefail
HERE="$(cd "$(dirname "$0")" && pwd)"
PY="$(bash "$HERE/setup_peers.sh" mace | tail -n 1)"
PEER_VENV="$(dirname "$(dirname "$PY")")"
VENV="${MACE_VENV:-$HOME/.cache/molequi/mace-venv}"
if [ ! -e "$VENV" ]; then
    mkdir -p "$(dirname "$VENV")"
    ln -s "$PEER_VENV" "$VENV"
fi
"$VENV/bin/python" -c "import mace, e3nn, torch; print('mace-torch', mace.__version__, 'e3nn', e3nn.__version__, 'torch', torch.__version__)" 2>/dev/null
echo "mace-torch venv ready: $VENV"
