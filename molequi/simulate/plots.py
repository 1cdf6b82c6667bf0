"""Plots of MD runs: potential, kinetic and total energy per atom versus time."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from molequi.io import atomic_path
from molequi.simulate.md import MDResult


def plot_energies(nvt: MDResult | None, nve: MDResult, path: str | Path) -> None:
    """Energy-versus-time PNG (matplotlib Agg), written atomically."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(
        1, 2 if nvt is not None else 1, figsize=(11 if nvt is not None else 6, 4), squeeze=False
    )
    axes = axes[0]
    offset = 0.0
    panels = ([("NVT", nvt)] if nvt is not None else []) + [("NVE", nve)]
    for ax, (name, res) in zip(axes, panels):
        t = np.asarray(res.log["time_fs"], dtype=float) / 1000 + offset
        n = res.n_atoms
        for key, label in (("epot_eV", "potential"), ("ekin_eV", "kinetic"), ("etot_eV", "total")):
            y = np.asarray(res.log[key], dtype=float) / n
            ax.plot(t, y - (y[0] if len(y) else 0.0), label=label, lw=1)
        if name == "NVE" and res.drift_ev_per_atom_per_ps is not None and len(t) > 2:
            y = np.asarray(res.log["etot_eV"], dtype=float) / n
            fit = np.polyfit(t, y - y[0], 1)
            ax.plot(
                t,
                np.polyval(fit, t),
                "k--",
                lw=1,
                label=f"fit: {res.drift_ev_per_atom_per_ps:.2e} eV/atom/ps",
            )
        ax.set_xlabel("time (ps)")
        ax.set_ylabel("energy - initial (eV/atom)")
        ax.set_title(f"{name}: {res.steps} steps")
        ax.legend(fontsize=8)
        if nvt is not None and name == "NVT":
            offset = t[-1] if len(t) else 0.0
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=120, format="png")
    plt.close(fig)


__all__ = ["plot_energies"]
