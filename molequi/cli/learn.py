"""``molequi learn CONFIG.yaml [section.key=value ...]``: active learning (``molequi.train.active``)."""

from __future__ import annotations

import argparse


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "learn", help="active learning: committee MD, label uncertain frames, retrain, until stable",
        description="Active learning as CONFIG.yaml says (see configs/learn_ethanol_xtb.yaml): label the "
                    "start frames with the reference (xtb, pyscf or an ASE calculator), train a committee, "
                    "then rounds of committee NVT MD, labelling of the frames where the members' forces "
                    "disagree above select.threshold (eV/Å) and fine-tuning, until the MD stays below the "
                    "threshold for stop.stable_fs at the last temperature, or a budget runs out. "
                    "The output directory holds the labelled set (round_NNN/labelled.extxyz), state.json, "
                    "learn.csv and learn.png; rerunning the same command continues after an interruption.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="examples:\n  molequi learn configs/learn_ethanol_xtb.yaml\n"
               "  molequi learn learn.yaml stop.max_rounds=20     # continue with a larger budget\n"
               "  molequi learn learn.yaml labeller.workers=8     # label in 8 processes")
    p.add_argument("config", help="YAML configuration file (sections start, labeller, committee, md, "
                                  "select, stop)")
    p.add_argument("overrides", nargs="*", metavar="section.key=value",
                   help="override config keys; values are read as YAML (md.temperatures=[300,500])")
    p.set_defaults(func=run)


def run(args) -> int:
    from molequi.train.active import learn, load_learn_config

    result = learn(load_learn_config(args.config, args.overrides))
    print(f"{result.state['stop_reason']}: {result.state['rounds_done']} rounds, "
          f"{result.state['n_labelled']} labelled frames; committee: "
          + " ".join(str(p) for p in result.model_paths))
    return 0
