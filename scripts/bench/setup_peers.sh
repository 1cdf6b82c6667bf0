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
FAIRCHEM="fairchem-core==1.10.0"
NEQUIP="nequip==0.19.1"        # requires torch>=2.2 (unpinned), e3nn>=0.6,<0.7, lightning>=2.6, hydra-core
FAENET="faenet==0.1.3"         # the FAENet authors' implementation (Duval et al. 2023); torch unpinned

# peer_venv NAME CHECK PACKAGE...: the venv <root>/NAME with torch installed first (so that a peer's unpinned
# torch requirement is already satisfied by the CPU wheel), then $PEER_NO_DEPS (if set) without their
# dependencies, then PACKAGE... with torch pinned beside them, then the python CHECK run (it prints the
# versions); reused when its stamp records the same packages.
peer_venv() {
    local name="$1" check="$2"
    shift 2
    local venv="$ROOT/$name" stamp="$ROOT/$name/.molequi-peer"
    local no_deps="${PEER_NO_DEPS:-}"
    local want="$TORCH${no_deps:+ --no-deps $no_deps} $*"
    if [ -x "$venv/bin/python" ] && [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ]; then
        echo "$venv/bin/python"
        return 0
    fi
    mkdir -p "$ROOT"
    [ -x "$venv/bin/python" ] || "$PYTHON" -m venv "$venv"
    "$venv/bin/pip" install --quiet --disable-pip-version-check "$TORCH" >&2
    if [ -n "$no_deps" ]; then
        "$venv/bin/pip" install --quiet --disable-pip-version-check --no-deps $no_deps >&2
    fi
    "$venv/bin/pip" install --quiet --disable-pip-version-check "$TORCH" "$@" >&2
    "$venv/bin/python" -c "$check" >&2
    echo "$want" > "$stamp"
    echo "$venv/bin/python"
}

setup_mace() {
    # with torch >= 2.6, e3nn 0.4.4 only imports after `import mace`
    peer_venv mace "import mace, torch, e3nn; from mace.modules import ScaleShiftMACE; print('mace-torch', mace.__version__, 'e3nn', e3nn.__version__, 'torch', torch.__version__)" "$MACE"
}

# nequip 0.19.1 leaves torch unpinned and shares e3nn 0.6.0 / lightning with molequi's venv at the same
# versions (scripts/bench/nequip_speed.py checks that and imports nequip into molequi's process)
setup_nequip() {
    peer_venv nequip "import nequip, torch, e3nn; from nequip.model import NequIPGNNModel; print('nequip', nequip.__version__, 'e3nn', e3nn.__version__, 'torch', torch.__version__)" "$NEQUIP"
}

# fairchem-core 1.10.0 pins torch~=2.4 and pulls trainers, pymatgen, wandb, hydra, ...: torch 2.13 is installed
# first and fairchem-core without its dependencies, plus the two its SO(2) code imports (e3nn, numpy < 2).
# Only fairchem's equiformer_v2 SO(2) modules are used (scripts/bench/_fairchem_so2.py imports them without
# the package __init__ files, which need the rest).
setup_fairchem() {
    local here
    here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
    PEER_NO_DEPS="$FAIRCHEM" peer_venv fairchem "import sys; sys.path.insert(0, '$here'); from importlib.metadata import version; from _fairchem_so2 import import_so2; so2_ops, so3, _ = import_so2(); print('fairchem-core', version('fairchem-core'), 'SO2_Convolution', so2_ops.SO2_Convolution.__name__)" "e3nn>=0.5" "numpy>=1.26,<2"
}

# faenet 0.1.3 (the FAENet authors' package) leaves torch unpinned and needs torch_geometric, mendeleev and pandas
# (its atom embeddings) and torch_scatter.scatter. mendeleev is pinned to 0.14.0 (2023, the package's time: 1.x
# dropped the 'atomic_volume' column it reads) with pandas < 3 and SQLAlchemy < 2.1 (newer ones fail mendeleev's
# queries). torch_scatter has no wheel for torch 2.13 and compiling it is long, so a one-function shim
# (torch_scatter.scatter -> torch_geometric.utils.scatter, the same sum / mean / max reductions) is written into
# the venv. torch_cluster / pyg-lib are absent, so the package's radius_graph (only in its non-periodic
# base_preprocess) does not run: scripts/parity/faenet.py gives it molequi's graph through its pbc_preprocess.
setup_faenet() {
    local py
    py="$(peer_venv faenet "import torch, torch_geometric; print('torch', torch.__version__, 'torch_geometric', torch_geometric.__version__)" "$FAENET" "torch_geometric==2.8.1" "mendeleev==0.14.0" "pandas>=2,<3" "SQLAlchemy>=2,<2.1")"
    local site
    site="$("$py" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')"
    if [ ! -f "$site/torch_scatter/__init__.py" ]; then
        mkdir -p "$site/torch_scatter"
        cat > "$site/torch_scatter/__init__.py" <<'PY'
"""Shim written by molequi's scripts/bench/setup_peers.sh: torch_scatter.scatter on torch_geometric.utils.scatter."""
from torch_geometric.utils import scatter as _scatter


def scatter(src, index, dim=-1, out=None, dim_size=None, reduce="sum"):
    if out is not None:
        raise NotImplementedError("torch_scatter shim: out= is not supported")
    return _scatter(src, index, dim=dim, dim_size=dim_size, reduce=reduce)
PY
    fi
    "$py" -c "import faenet, torch_scatter; from faenet import FAENet; print('faenet', faenet.__version__)" >&2
    echo "$py"
}

peers=("$@")
[ ${#peers[@]} -gt 0 ] || peers=(mace nequip)
for peer in "${peers[@]}"; do
    case "$peer" in
        mace) setup_mace ;;
        nequip) setup_nequip ;;
        fairchem) setup_fairchem ;;
        faenet) setup_faenet ;;
        *) echo "setup_peers.sh: unknown peer '$peer' (known: mace, nequip, fairchem, faenet)" >&2; exit 2 ;;
    esac
done
