"""``molequi train CONFIG.yaml [section.key=value ...] [--resume [yes|no|auto]]``."""

from __future__ import annotations

import argparse


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "train", help="train a model from a YAML config",
        description="Train a model as CONFIG.yaml says (write one with `molequi init-config mace`). "
                    "The run directory (trainer.output) receives config.yaml, checkpoints/last.ckpt and "
                    "best.ckpt, "
                    "CSV and TensorBoard logs, metrics.json and model.pt (the model for inference).",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="examples:\n  molequi train run.yaml\n"
               "  molequi train run.yaml optim.lr=1e-3 trainer.max_epochs=100\n"
               "  molequi train run.yaml --resume        # continue after an interruption\n"
               "  molequi train run.yaml --resume auto   # continue if checkpoints/last.ckpt exists,\n"
               "                                         # else start fresh\n"
               "                                         # (what a job script that may be requeued wants)\n\n"
               "In a requeued SLURM job (SLURM_RESTART_COUNT >= 1) a plain rerun behaves as --resume auto.")
    p.add_argument("config", help="YAML configuration file")
    p.add_argument("overrides", nargs="*", metavar="section.key=value",
                   help="override config keys; values are read as YAML "
                        "(trainer.devices=2, optim.ema_decay=null)")
    p.add_argument("--resume", nargs="?", const="yes", default="no", choices=("yes", "no", "auto"),
                   help="yes (the default when the flag is given alone): continue the run in trainer.output "
                        "from checkpoints/last.ckpt (same step, optimiser, scheduler, EMA, RNG state and "
                        "data order); auto: continue if that checkpoint exists, start fresh if not; "
                        "no (default without the flag): start fresh, refusing a directory with checkpoints")
    p.set_defaults(func=run)


def run(args) -> int:
    from molequi.config import load_config
    from molequi.train.run import train

    cfg = load_config(args.config, args.overrides)
    result = train(cfg, resume=args.resume)
    if result.module.trainer.is_global_zero:
        print(f"model written to {result.model_path} (step {result.global_step})")
        for split, metrics in result.metrics.items():
            shown = {k: v for k, v in metrics.items() if not k.startswith("forces_mae_meV_A_")}
            print(f"{split}: " + ", ".join(f"{k} {v:.4g}" for k, v in shown.items()))
    return 0
