"""``molequi data <action>``: look at and prepare datasets.

Actions are listed in ``ACTIONS`` (module paths with ``register(subparsers)``), so dataset-specific tools
(LMDB conversion, Hamiltonian labels) add themselves with one line.
"""

from __future__ import annotations

import importlib

ACTIONS: list[str] = [
    "molequi.cli.data_info",
    "molequi.cli.data_lmdb",
    "molequi.cli.data_hamiltonian",
]


def register(sub) -> None:
    parser = sub.add_parser("data", help="inspect and prepare datasets",
                            description="Inspect and prepare datasets (see the actions below).")
    actions = parser.add_subparsers(dest="action", metavar="ACTION")
    for name in ACTIONS:
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError as exc:
            if exc.name == name:
                continue
            raise
        module.register(actions)
    parser.set_defaults(func=lambda args: parser.print_help() or 2)
