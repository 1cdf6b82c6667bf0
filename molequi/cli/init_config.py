"""``molequi init-config MODEL [--task TASK] [-o FILE]``: print a complete, commented default config."""

from __future__ import annotations

import argparse


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "init-config", help="print a complete default YAML config for a model, every key commented",
        description="Print a complete default training configuration for MODEL, with a comment above every "
                    "key. Edit it (at least data.root) and run `molequi train FILE`.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="example:\n  molequi init-config mace > ethanol.yaml")
    p.add_argument("model", help="model name (see molequi.models.MODELS), e.g. mace or egnn")
    p.add_argument("--task", default="energy_forces",
                   help="task name (energy_forces, property, hamiltonian, diffusion); default energy_forces")
    p.add_argument("-o", "--output", metavar="FILE", help="write to FILE instead of printing")
    p.set_defaults(func=run)


def run(args) -> int:
    from molequi.config import default_yaml

    text = default_yaml(args.model, args.task)
    if args.output:
        from molequi.io import atomic_write_text

        atomic_write_text(args.output, text)
        print(f"wrote {args.output}")
    else:
        print(text, end="")
    return 0
