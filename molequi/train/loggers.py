"""Which Lightning loggers a run writes (``trainer.loggers``) and progress output that suits the terminal.

Loggers, each under the run directory::

    csv          logs/version_N/metrics.csv (always useful, no extra package; the default)
    tensorboard  tb/ event files                   (pip install tensorboard, or molequi[tensorboard])
    wandb        wandb/, offline mode: nothing leaves the machine; ``wandb sync`` uploads later
                                                   (pip install wandb)
    mlflow       mlruns/ file store                (pip install mlflow)

A logger whose package is missing is a ``ConfigError`` naming the package, raised before any data is read.

Progress (``trainer.progress_bar``): ``auto`` shows Lightning's progress bar when stderr is a terminal and
otherwise prints one line every ``trainer.log_every`` optimiser steps (a batch-queue log is not flooded with
carriage-return updates); ``true`` / ``false`` force the bar on / everything off.
"""

from __future__ import annotations

import importlib.util
import sys
import time
from pathlib import Path

from lightning.pytorch.callbacks import Callback

from molequi.errors import ConfigError

#: logger name -> (Python module it needs, pip package that provides it)
LOGGERS = {
    "csv": (None, None),
    "tensorboard": ("tensorboard", "tensorboard"),
    "wandb": ("wandb", "wandb"),
    "mlflow": ("mlflow", "mlflow"),
}


def check_loggers(names) -> None:
    """Unknown names and missing packages are ``ConfigError`` exceptions (called while the config is read)."""
    from molequi.errors import suggest

    for name in names:
        if name not in LOGGERS:
            hint = suggest(name, list(LOGGERS))
            raise ConfigError(f"trainer.loggers: unknown logger {name!r}; valid loggers: "
                              f"{', '.join(LOGGERS)}" + (f"; {hint}" if hint else ""))
        module, package = LOGGERS[name]
        if module is not None and importlib.util.find_spec(module) is None:
            raise ConfigError(f"trainer.loggers: the {name} logger needs the {package!r} package, which is "
                              f"not installed (pip install {package}, or remove {name!r} from "
                              "trainer.loggers)")
    if len(set(names)) != len(names):
        raise ConfigError(f"trainer.loggers lists a logger twice: {list(names)}")


def build_loggers(names, out: Path) -> list:
    """Lightning loggers for ``names``, all writing under the run directory ``out``."""
    check_loggers(names)
    loggers = []
    for name in names:
        if name == "csv":
            from lightning.pytorch.loggers import CSVLogger

            # flushed at every logged step, so a killed run keeps the rows of every checkpointed step
            loggers.append(CSVLogger(save_dir=str(out), name="logs", flush_logs_every_n_steps=1))
        elif name == "tensorboard":
            from lightning.pytorch.loggers import TensorBoardLogger

            loggers.append(TensorBoardLogger(save_dir=str(out), name="tb"))
        elif name == "wandb":
            from lightning.pytorch.loggers import WandbLogger

            loggers.append(WandbLogger(save_dir=str(out), offline=True, project="molequi"))
        elif name == "mlflow":
            from lightning.pytorch.loggers import MLFlowLogger

            store = (Path(out) / "mlruns").resolve()
            loggers.append(MLFlowLogger(experiment_name="molequi", tracking_uri=store.as_uri(),
                                        save_dir=str(store)))
    return loggers


def show_bar(progress_bar, stream=None) -> bool:
    """Whether Lightning's progress bar is shown for ``trainer.progress_bar`` (True / False / "auto")."""
    if progress_bar == "auto":
        stream = sys.stderr if stream is None else stream
        return bool(getattr(stream, "isatty", lambda: False)())
    return bool(progress_bar)


def wants_lines(progress_bar, stream=None) -> bool:
    """``auto`` without a terminal: one progress line every ``log_every`` steps instead of a bar."""
    return progress_bar == "auto" and not show_bar(progress_bar, stream)


class LineProgress(Callback):
    """One line per ``every`` optimiser steps (and one per validation round) on global rank 0: step, epoch,
    loss and elapsed time, for logs that are not terminals."""

    def __init__(self, every: int, stream=None):
        self.every = max(1, int(every))
        self.stream = stream
        self._t0 = None

    def _print(self, trainer, text: str) -> None:
        if trainer.is_global_zero:
            print(text, file=self.stream or sys.stdout, flush=True)

    def on_train_start(self, trainer, pl_module) -> None:
        self._t0 = time.perf_counter()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        step = trainer.global_step
        if step == 0 or step % self.every or getattr(self, "_last", None) == step:
            return
        self._last = step
        metrics = trainer.callback_metrics
        loss = metrics.get("train/loss_step", metrics.get("train/loss"))
        loss_text = f" loss {float(loss):.5g}" if loss is not None else ""
        elapsed = time.perf_counter() - (self._t0 or time.perf_counter())
        self._print(trainer, f"[molequi train] step {step} epoch {trainer.current_epoch}{loss_text} "
                             f"({elapsed:.0f} s)")

    def on_validation_end(self, trainer, pl_module) -> None:
        if trainer.sanity_checking:
            return
        vals = {k: float(v) for k, v in trainer.callback_metrics.items() if k.startswith("val/")}
        if vals:
            text = " ".join(f"{k} {v:.5g}" for k, v in sorted(vals.items()))
            self._print(trainer, f"[molequi train] validation at step {trainer.global_step}: {text}")
