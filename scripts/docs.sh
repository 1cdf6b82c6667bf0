#!/usr/bin/env bash
# Build the API reference from the docstrings: Sphinx (autodoc + napoleon), offline, warnings are errors.
# Output: docs/_build/html/index.html (git-ignored). Sets up .venv like scripts/test.sh (scripts/_setup.sh:
# torch 2.13.0, then molequi with its extras, the `docs` extra, i.e. Sphinx, included by default).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
# shellcheck source=scripts/_setup.sh
. "$ROOT/scripts/_setup.sh"
cd "$ROOT"
if ! python -c "import sphinx" 2>/dev/null; then
    echo "docs: Sphinx is missing from .venv (MOLEQUI_EXTRAS=${MOLEQUI_EXTRAS:-} without docs?): installing the docs extra"
    python -m pip install -q -e ".[docs]"
fi
# per-module pages are generated from the current modules every time (a removed module leaves no page)
rm -rf docs/api/generated
export MPLBACKEND=Agg OMP_NUM_THREADS="${OMP_NUM_THREADS:-1}"
exec python -m sphinx -W --keep-going -q -b html docs docs/_build/html "$@"
