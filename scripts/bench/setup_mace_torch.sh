#!/usr/bin/env bash
# Create a separate virtual environment with the reference mace-torch package, for
# scripts/bench/mace_speed.py. mace-torch pins e3nn 0.4.4, which must not share a venv with molequi
# (e3nn 0.6). With torch >= 2.6, e3nn 0.4.4 only imports after `import mace`.
#
#   bash scripts/bench/setup_mace_torch.sh            # venv at ${MACE_VENV:-$HOME/.cache/molequi/mace-venv}
set -euo pipefail
VENV="${MACE_VENV:-$HOME/.cache/molequi/mace-venv}"
PYTHON="${PYTHON:-python3}"
if [ ! -x "$VENV/bin/python" ]; then
    mkdir -p "$(dirname "$VENV")"
    "$PYTHON" -m venv "$VENV"
fi
# torch is pinned: any other version request pulls the CUDA build (gigabytes)
"$VENV/bin/pip" install --quiet "torch==2.13.0" mace-torch
"$VENV/bin/python" -c "import mace, e3nn, torch; from mace.modules import MACE; print('mace-torch', getattr(mace, '__version__', '?'), 'e3nn', e3nn.__version__, 'torch', torch.__version__)"
echo "mace-torch venv ready: $VENV"
