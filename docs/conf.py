"""Sphinx configuration of molequi's API reference (built by ``bash scripts/docs.sh``, offline, -W)."""

import os
import re
import sys

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), ".."))
sys.path.insert(0, ROOT)

project = "molequi"
author = "molequi developers"
copyright = "molequi developers, MIT licence"
release = version = "0.1.0"

extensions = [
    "sphinx.ext.autodoc",
    "sphinx.ext.autosummary",
    "sphinx.ext.napoleon",
    "sphinx.ext.viewcode",
]

# the API pages only: the Markdown pages in docs/ (architecture, formats, cluster) are read on GitHub
root_doc = "index"
exclude_patterns = ["_build", "architecture.md", "formats.md", "cluster.md"]
templates_path = ["_templates"]

# one page per module, generated from the docstrings into docs/api/generated (git-ignored)
autosummary_generate = True
# optional extras (molequi[openmm]) are not needed to document the modules that use them
autodoc_mock_imports = ["openmm", "openmmml"]
autosummary_imported_members = False
autodoc_default_options = {"members": True, "show-inheritance": True, "member-order": "bysource"}
autodoc_typehints = "description"
autodoc_typehints_format = "short"
# members are documented where they are defined; a re-export in a package's __init__ is not a second page
autodoc_inherit_docstrings = False
napoleon_google_docstring = True
napoleon_numpy_docstring = True
napoleon_use_rtype = False

# no network: no intersphinx, no remote images
html_theme = "alabaster"
html_static_path = []
html_title = "molequi API reference"
nitpicky = False
# type hints naming third-party classes (torch.Tensor, ase.Atoms) are not cross-referenced offline
suppress_warnings = ["ref.python"]


# molequi's docstrings write absolute values and norms as |x| (|E' - E|, |r_ij|): plain text, not reST
# substitutions. Escape those bars outside ``literals`` so they print as written.
_LITERAL = re.compile(r"(``.*?``)")


def _escape_bars(line: str) -> str:
    parts = _LITERAL.split(line)
    return "".join(part if part.startswith("``") else part.replace("|", "\\|") for part in parts)


def _plain_bars(app, what, name, obj, options, lines):
    lines[:] = [_escape_bars(line) for line in lines]


def setup(app):
    app.connect("autodoc-process-docstring", _plain_bars)
