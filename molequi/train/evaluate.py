"""Evaluate a trained force field on labelled structures: metrics (eV units), per-structure errors, plots.

Metric definitions (the component MAE that MACE / NequIP report)::

    energy_mae  = mean_s |E_s^pred - E_s|                  eV
    energy_rmse = sqrt(mean_s (E_s^pred - E_s)^2)          eV
    energy_mae_per_atom, energy_rmse_per_atom              the same of (E^pred - E) / n_s, eV/atom
    forces_mae  = mean_{i,a} |F_ia^pred - F_ia|            eV/Å, over all force components
    forces_rmse = sqrt(mean_{i,a} (F_ia^pred - F_ia)^2)    eV/Å
    forces_mae_<El>                                        forces_mae restricted to atoms of element El
"""

from __future__ import annotations

import csv
import io
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from molequi import keys as K


@dataclass
class Predictions:
    """Per-structure and per-atom reference and predicted labels (eV, eV/Å), as NumPy arrays."""

    n_atoms: np.ndarray  # (S,)
    energy_true: np.ndarray  # (S,) eV
    energy_pred: np.ndarray  # (S,) eV
    numbers: np.ndarray  # (N,) atomic numbers of all atoms, structure after structure
    forces_true: np.ndarray | None  # (N, 3) eV/Å
    forces_pred: np.ndarray  # (N, 3) eV/Å

    def metrics(self) -> dict[str, float]:
        from ase.data import chemical_symbols

        out: dict[str, float] = {"n_structures": int(len(self.n_atoms)), "n_atoms": int(self.n_atoms.sum())}
        if np.isfinite(self.energy_true).all():
            de = self.energy_pred - self.energy_true
            dea = de / self.n_atoms
            out.update(energy_mae=float(np.abs(de).mean()), energy_rmse=float(np.sqrt((de**2).mean())),
                       energy_mae_per_atom=float(np.abs(dea).mean()),
                       energy_rmse_per_atom=float(np.sqrt((dea**2).mean())))
        if self.forces_true is not None:
            df = self.forces_pred - self.forces_true
            out.update(forces_mae=float(np.abs(df).mean()), forces_rmse=float(np.sqrt((df**2).mean())))
            for z in sorted(set(self.numbers.tolist())):
                out[f"forces_mae_{chemical_symbols[z]}"] = float(np.abs(df[self.numbers == z]).mean())
        return out

    def per_structure_csv(self) -> str:
        """CSV text: index, n_atoms, energy (true, pred, error), force MAE and max error per structure."""
        buf = io.StringIO()
        w = csv.writer(buf)
        w.writerow(["index", "n_atoms", "energy_true_eV", "energy_pred_eV", "energy_error_eV",
                    "energy_error_eV_per_atom", "forces_mae_eV_A", "forces_max_abs_error_eV_A"])
        start = 0
        for s, n in enumerate(self.n_atoms.tolist()):
            if self.forces_true is not None:
                df = np.abs(self.forces_pred[start:start + n] - self.forces_true[start:start + n])
                fmae, fmax = float(df.mean()), float(df.max())
            else:
                fmae = fmax = math.nan
            de = self.energy_pred[s] - self.energy_true[s]
            w.writerow([s, n, f"{self.energy_true[s]:.8f}", f"{self.energy_pred[s]:.8f}", f"{de:.8f}",
                        f"{de / n:.8f}", f"{fmae:.8f}", f"{fmax:.8f}"])
            start += n
        return buf.getvalue()


def predict(model: torch.nn.Module, records: Sequence, cutoff: float | None, *, batch_size: int = 32,
            device: str | torch.device = "cpu", progress: bool = False) -> Predictions:
    """Energies and forces of ``model`` on ``records`` (graphs built here with ``cutoff``), through the
    package's one batched inference loop ``molequi.calculators.predict.model_outputs``."""
    from molequi.calculators.calculator import model_dtype
    from molequi.calculators.predict import model_outputs
    from molequi.train.data import with_graphs

    dtype = model_dtype(model)  # a parameter-free model (Lennard-Jones) has buffers only
    graphs = with_graphs(records, cutoff)
    n_atoms, e_true, e_pred, numbers, f_true, f_pred = [], [], [], [], [], []
    has_forces = all(K.FORCES in g for g in graphs)
    model.eval()
    for batch, out, _ in model_outputs(model, graphs, batch_size=batch_size, device=device, dtype=dtype,
                                       progress=progress, desc="evaluating"):
        counts = torch.bincount(batch[K.BATCH], minlength=batch.num_graphs)
        n_atoms.append(counts.cpu().numpy())
        e_pred.append(out[K.ENERGY].detach().double().cpu().numpy())
        e_true.append(batch[K.ENERGY].reshape(-1).double().cpu().numpy() if K.ENERGY in batch
                      else np.full(batch.num_graphs, np.nan))
        numbers.append(batch[K.NUMBERS].cpu().numpy())
        f_pred.append(out[K.FORCES].detach().double().cpu().numpy())
        if has_forces:
            f_true.append(batch[K.FORCES].double().cpu().numpy())
    return Predictions(n_atoms=np.concatenate(n_atoms), energy_true=np.concatenate(e_true),
                       energy_pred=np.concatenate(e_pred), numbers=np.concatenate(numbers),
                       forces_true=np.concatenate(f_true) if has_forces else None,
                       forces_pred=np.concatenate(f_pred))


def read_eval_data(path: str | Path, energy_key: str | None = None, forces_key: str | None = None) -> list:
    """Labelled structures from ``path``: an rMD17/MD17 ``.npz`` or any file ``read_structures`` reads."""
    path = Path(path)
    if path.suffix == ".npz":
        from molequi.data.rmd17_npz import read_rmd17_npz

        return read_rmd17_npz(path)
    from molequi.data.readers import read_structures

    return read_structures(path, energy_key=energy_key, forces_key=forces_key)


def _figure_path_save(fig, path: Path) -> None:
    from molequi.io import atomic_write_bytes

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=120, bbox_inches="tight")
    atomic_write_bytes(path, buf.getvalue())


def parity_plot(pred: Predictions, path: str | Path, title: str = "") -> None:
    """Energy (per atom, relative to the mean) and force-component parity plots side by side as a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    m = pred.metrics()
    fig, axes = plt.subplots(1, 2, figsize=(10, 4.6))
    ax = axes[0]
    if np.isfinite(pred.energy_true).all():
        ref = pred.energy_true.mean()
        x, y = pred.energy_true - ref, pred.energy_pred - ref
        ax.scatter(x, y, s=6, alpha=0.6)
        lo, hi = float(min(x.min(), y.min())), float(max(x.max(), y.max()))
        ax.plot([lo, hi], [lo, hi], "k--", lw=0.8)
        ax.set_title(f"energy  MAE {m['energy_mae'] * 1e3:.2f} meV  "
                     f"({m['energy_mae_per_atom'] * 1e3:.2f} meV/atom)")
    ax.set_xlabel("reference energy - mean (eV)")
    ax.set_ylabel("predicted energy - mean (eV)")
    ax = axes[1]
    if pred.forces_true is not None:
        x, y = pred.forces_true.reshape(-1), pred.forces_pred.reshape(-1)
        ax.scatter(x, y, s=2, alpha=0.3)
        lo, hi = float(min(x.min(), y.min())), float(max(x.max(), y.max()))
        ax.plot([lo, hi], [lo, hi], "k--", lw=0.8)
        ax.set_title(f"force components  MAE {m['forces_mae'] * 1e3:.1f} meV/Å")
    ax.set_xlabel("reference force (eV/Å)")
    ax.set_ylabel("predicted force (eV/Å)")
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    _figure_path_save(fig, Path(path))
    plt.close(fig)


def read_run_metrics(run_dir: str | Path) -> list[dict[str, float]]:
    """All rows of ``<run>/logs/version_*/metrics.csv`` (later versions continue earlier ones on resume)."""
    rows: list[dict[str, float]] = []
    for csv_path in sorted(Path(run_dir).glob("logs/version_*/metrics.csv"),
                           key=lambda p: int(p.parent.name.split("_")[-1])):
        with open(csv_path, newline="") as fh:
            for row in csv.DictReader(fh):
                rows.append({k: float(v) for k, v in row.items() if v not in ("", None)})
    return rows


def learning_curve(run_dir: str | Path, path: str | Path) -> None:
    """Training loss per step and validation force / energy MAE per validation round, as a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = read_run_metrics(run_dir)
    fig, axes = plt.subplots(1, 2, figsize=(10, 4.2))
    tr = [(r["step"], r["train/loss_step"]) for r in rows if "train/loss_step" in r]
    if tr:
        axes[0].plot(*zip(*tr), lw=0.8, label="train loss (per step)")
    va = [(r["step"], r["val/loss"]) for r in rows if "val/loss" in r]
    if va:
        axes[0].plot(*zip(*va), "o-", ms=3, label="validation loss")
    axes[0].set_yscale("log")
    axes[0].set_xlabel("optimiser step")
    axes[0].set_ylabel("loss")
    axes[0].legend()
    for key, label in (("val/forces_mae_meV_A", "forces MAE (meV/Å)"),
                       ("val/energy_mae_meV", "energy MAE (meV)")):
        pts = [(r["step"], r[key]) for r in rows if key in r]
        if pts:
            axes[1].plot(*zip(*pts), "o-", ms=3, label=f"validation {label}")
    axes[1].set_yscale("log")
    axes[1].set_xlabel("optimiser step")
    axes[1].legend()
    fig.tight_layout()
    _figure_path_save(fig, Path(path))
    plt.close(fig)


__all__ = ["Predictions", "predict", "read_eval_data", "parity_plot", "learning_curve", "read_run_metrics"]
