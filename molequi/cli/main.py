"""``molequi <verb>``: thin entry points that parse arguments, build a config and call the library.

Each verb lives in its own module with ``register(subparsers)`` (adds its parser, sets ``func``); the
modules import nothing heavy at import time, so ``molequi --help`` is fast. Add a verb by adding a line to
``VERBS``.
"""

from __future__ import annotations

import argparse
import importlib
import sys

from molequi import __version__
from molequi.errors import MolequiError

# verb modules, in the order --help lists them
VERBS: list[str] = [
    "molequi.cli.data",
    "molequi.cli.train",
    "molequi.cli.learn",
    "molequi.cli.eval",
    "molequi.cli.init_config",
    "molequi.cli.quickstart",
    "molequi.cli.md",
    "molequi.cli.relax",
    "molequi.cli.predict",
    "molequi.cli.scf_guess",
    "molequi.cli.generate",
    "molequi.cli.distill",
    "molequi.cli.import_",
    "molequi.cli.export",
]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="molequi",
        description="Equivariant neural networks for molecules and materials. Units: eV, Å, eV/Å, fs.",
    )
    parser.add_argument("--version", action="version", version=f"molequi {__version__}")
    sub = parser.add_subparsers(dest="verb", metavar="VERB")
    for name in VERBS:
        try:
            module = importlib.import_module(name)
        except Exception as exc:  # never drop a verb silently: a broken verb module is a broken install
            raise ImportError(f"molequi: the verb module {name} failed to import ({type(exc).__name__}: "
                              f"{exc}); reinstall molequi or report the bug", name=name) from exc
        module.register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        return int(args.func(args) or 0)
    except MolequiError as exc:
        print(f"molequi {args.verb}: error: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
