"""run_md: NVE energy conservation, thermostats/barostats run, blow-up guard, logs, quickstart_md."""

from __future__ import annotations

import csv

import numpy as np
import pytest
from ase.io import read
from calc_helpers import ar_cluster, ar_fcc

from molequi.calculators import MolequiCalculator
from molequi.errors import ConfigError, ModelError
from molequi.models.lj import LennardJones
from molequi.simulate import BlowUpGuard, MDSettings, SimulationBlowUp, quickstart_md, run_md

# Measured (Ar fcc 2x2x2 = 32 atoms, shifted-force LJ r_c 8.5 Å, float64, T0 = 40 K, dt 2 fs, 500 steps):
# drift 1.9e-8 eV/atom/ps and peak-to-peak total-energy fluctuation 3.0e-7 eV/atom. Bounds with margin:
NVE_DRIFT_BOUND = 1e-6  # eV/atom/ps
NVE_FLUCTUATION_BOUND = 3e-6  # eV/atom


@pytest.mark.slow
def test_nve_conserves_energy(tmp_path):
    atoms = ar_fcc(2)
    res = run_md(
        atoms,
        MolequiCalculator(LennardJones()),
        MDSettings(ensemble="nve", temperature=40, timestep=2.0, steps=500, seed=0, loginterval=5),
        log=tmp_path / "nve.csv",
    )
    assert res.steps == 500 and not res.stopped
    assert abs(res.drift_ev_per_atom_per_ps) < NVE_DRIFT_BOUND
    etot = np.asarray(res.log["etot_eV"]) / len(atoms)
    assert np.ptp(etot) < NVE_FLUCTUATION_BOUND
    assert np.mean(res.log["temperature_K"][1:]) > 5  # it actually moved
    rows = list(csv.DictReader((tmp_path / "nve.csv").read_text().splitlines()))
    assert len(rows) == 101 and rows[-1]["step"] == "500" and float(rows[-1]["time_fs"]) == 1000.0
    assert set(rows[0]) >= {
        "step",
        "time_fs",
        "epot_eV",
        "ekin_eV",
        "etot_eV",
        "temperature_K",
        "drift_eV_per_atom",
    }


def test_blowup_guard_stops_and_keeps_trajectory_readable(tmp_path):
    atoms = ar_fcc(2)
    traj = tmp_path / "md.extxyz"
    with pytest.raises(SimulationBlowUp, match="max_force") as info:
        run_md(
            atoms,
            MolequiCalculator(LennardJones()),
            MDSettings(
                ensemble="nve",
                temperature=3000,
                timestep=20.0,
                steps=500,
                seed=0,
                guard=BlowUpGuard(max_force=5.0),
            ),
            traj=traj,
            log=tmp_path / "md.csv",
        )
    result = info.value.result
    assert result.stopped and 5 < info.value.step < 500 and "max_force" in result.reason
    frames = read(traj, index=":")
    assert len(frames) == result.frames_written == result.steps + 1  # frames 0..last good step
    assert frames[-1].info["md_step"] == result.steps
    assert np.abs(frames[-1].get_forces()).max() < 5.0
    rows = list(csv.DictReader((tmp_path / "md.csv").read_text().splitlines()))
    assert int(rows[-1]["step"]) == result.steps


def test_guard_min_distance_and_no_raise_mode():
    atoms = ar_fcc(2)
    res = run_md(
        atoms,
        MolequiCalculator(LennardJones()),
        MDSettings(
            ensemble="nve",
            temperature=3000,
            timestep=40.0,
            steps=500,
            seed=0,
            guard=BlowUpGuard(min_distance=2.5),
            raise_on_blowup=False,
        ),
    )
    assert res.stopped and "min_distance" in res.reason


def test_guard_committee_uncertainty():
    atoms = ar_cluster(13)
    calc = MolequiCalculator(models=[LennardJones(), LennardJones(sigma=3.6)])
    with pytest.raises(SimulationBlowUp, match="uncertainty"):
        run_md(
            atoms,
            calc,
            MDSettings(
                ensemble="nvt",
                temperature=50,
                timestep=2.0,
                steps=10,
                seed=0,
                guard=BlowUpGuard(max_uncertainty=1e-4),
            ),
        )
    with pytest.raises(ConfigError, match="committee"):
        run_md(
            ar_cluster(13),
            MolequiCalculator(LennardJones()),
            MDSettings(steps=2, guard=BlowUpGuard(max_uncertainty=0.1)),
        )


def test_nvt_and_npt_run(tmp_path):
    atoms = ar_cluster(13)
    res = run_md(
        atoms,
        MolequiCalculator(LennardJones()),
        MDSettings(
            ensemble="nvt", temperature=60, timestep=5.0, steps=100, seed=1, friction=0.05, loginterval=10
        ),
    )
    assert res.steps == 100 and 10 < np.mean(res.log["temperature_K"][5:]) < 150
    for barostat in ("mtk", "berendsen"):
        crystal = ar_fcc(2, a=5.4)  # expanded: the barostat should shrink it
        v0 = crystal.get_volume()
        r = run_md(
            crystal,
            MolequiCalculator(LennardJones()),
            MDSettings(
                ensemble="npt",
                temperature=30,
                timestep=5.0,
                steps=30,
                seed=2,
                pressure=1.0,
                barostat=barostat,
                taup=100.0,
                compressibility=1e-3,
            ),
        )
        assert r.steps == 30 and crystal.get_volume() < 0.99 * v0
        assert r.log["volume_A3"][-1] == pytest.approx(crystal.get_volume())
    with pytest.raises(ConfigError, match="periodic"):
        run_md(ar_cluster(5), MolequiCalculator(LennardJones()), MDSettings(ensemble="npt", steps=1))


def test_nonconservative_model_refused_unless_allowed():
    model = LennardJones()
    model.conservative = False
    atoms = ar_cluster(5)
    with pytest.raises(ModelError, match="allow_nonconservative"):
        run_md(atoms, MolequiCalculator(model), MDSettings(ensemble="nve", steps=2))
    assert (
        run_md(
            atoms, MolequiCalculator(model), MDSettings(ensemble="nve", steps=2, allow_nonconservative=True)
        ).steps
        == 2
    )


def test_quickstart_md_writes_plot_and_returns_drift(tmp_path):
    drift = quickstart_md(
        LennardJones(),
        ar_fcc(2),
        tmp_path,
        nvt_ps=0.02,
        nve_ps=0.06,
        timestep_fs=2.0,
        temperature=40,
        progress=False,
        loginterval=3,
    )
    assert abs(drift) < 1e-5
    for name in ("md_energy.png", "md_nvt.extxyz", "md_nve.extxyz", "md_nve.csv", "md_summary.json"):
        assert (tmp_path / name).stat().st_size > 0
    assert (tmp_path / "md_energy.png").read_bytes()[:4] == b"\x89PNG"
    assert len(read(tmp_path / "md_nve.extxyz", index=":")) == 11


def test_settings_are_validated_when_built():
    """Bad MD settings fail when the settings object is made, before any structure or model is read."""
    with pytest.raises(ConfigError, match="unknown ensemble 'nph'; valid: nve, nvt, npt"):
        MDSettings(ensemble="nph")
    with pytest.raises(ConfigError, match="timestep > 0"):
        MDSettings(timestep=0.0)
    with pytest.raises(ConfigError, match="nvt needs a positive temperature"):
        MDSettings(ensemble="nvt", temperature=0.0)
    assert MDSettings(ensemble="NVE", temperature=0.0).ensemble == "nve"  # NVE from rest is allowed
    with pytest.raises(ConfigError, match="max_force must be positive"):
        BlowUpGuard(max_force=-1.0)
