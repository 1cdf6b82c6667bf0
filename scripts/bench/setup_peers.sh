#!/usr/bin/env bash
# Build the virtual environments of the reference ("peer") packages that molequi is checked against,
# each separate from molequi's own venv because their pins conflict with it (mace-torch pins e3nn 0.4.4,
# molequi needs e3nn 0.6).
#
#   bash scripts/bench/setup_peers.sh            # all peers under ${MOLEQUI_PEERS:-$HOME/.cache/molequi/peers}
#   bash scripts/bench/setup_peers.sh mace       # one peer
#
# Each venv is <root>/<peer>; it prints the venv's python on the last line. Idempotent: a venv whose
# stamp file records the same pinned versions is reused without touching the network.
set -euo pipefail
ROOT="${MOLEQUI_PEERS:-$HOME/.cache/molequi/peers}"
PYTHON="${PYTHON:-python3}"
TORCH="torch==2.13.0"          # the only torch allowed: any other request pulls the CUDA build (GBs)
MACE="mace-torch==0.3.16"

setup_mace() {
    local venv="$ROOT/mace" stamp="$ROOT/mace/.molequi-peer"
    local want="$TORCH $MACE"
    if [ -x "$venv/bin/python" ] && [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ]; then
        echo "$venv/bin/python"
        return 0
    fi
    mkdir -p "$ROOT"
    [ -x "$venv/bin/python" ] || "$PYTHON" -m venv "$venv"
    # torch first, so that mace-torch's unpinned torch requirement is already satisfied
    "$venv/bin/pip" install --quiet --disable-pip-version-check "$TORCH" >&2
    "$venv/bin/pip" install --quiet --disable-pip-version-check "$TORCH" "$MACE" >&2
    # with torch >= 2.6, e3nn 0.4.4 only imports after `import mace`
    "$venv/bin/python" -c "import mace, torch, e3nn; from mace.modules import ScaleShiftMACE; print('mace-torch', mace.__version__, 'e3nn', e3nn.__version__, 'torch', torch.__version__)" >&2
    echo "$want" > "$stamp"
    echo "$venv/bin/python"
}

peers=("$@")
[ ${#peers[@]} -gt 0 ] || peers=(mace)
for peer in "${peers[@]}"; do
    case "$peer" in
        mace) setup_mace ;;
        *) echo "setup_peers.sh: unknown peer '$peer' (known: mace)" >&2; exit 2 ;;
    esac
done
