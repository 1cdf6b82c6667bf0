"""molequi models in OpenMM through openmm-ml (issue 20 item 3): MLPotential('molequi', modelPath=...) found
through openmm-ml's entry point; OpenMM MD of rMD17 ethanol on the CPU platform with a quickstart-size MACE,
energies and forces compared with the ASE calculator; mixed ML/MM with the ML force on a subset of atoms."""

from __future__ import annotations

import numpy as np
import pytest
import torch

openmm = pytest.importorskip("openmm", reason="openmm and openmmml are in molequi's dev extra; "
                             "pip install openmm openmmml")
pytest.importorskip("openmmml", reason="pip install openmmml")

from ase import Atoms  # noqa: E402
from ase.units import kJ, mol  # noqa: E402
from openmm import app, unit  # noqa: E402
from openmmml import MLPotential  # noqa: E402

from molequi.calculators import MolequiCalculator  # noqa: E402
from molequi.checkpoint import make_payload, save_model  # noqa: E402
from molequi.config import to_plain  # noqa: E402
from molequi.data.statistics import Statistics  # noqa: E402
from molequi.errors import InputError  # noqa: E402
from molequi.models.mace import MACE  # noqa: E402
from molequi.resources import shipped_path  # noqa: E402

KJMOL = kJ / mol  # eV per kJ/mol


@pytest.fixture(scope="module")
def ethanol():
    d = np.load(shipped_path("rmd17", "rmd17_ethanol_test_01.npz"))
    return Atoms(numbers=d["nuclear_charges"], positions=d["coords"][0])


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    """A quickstart-size MACE (32x0e+32x1o, L=2, correlation 3, 2 layers, r_max 5 Å), float64."""
    torch.manual_seed(0)
    cfg = MACE.Config(r_max=5.0, num_bessel=8, num_polynomial_cutoff=5, max_ell=2, hidden_irreps="32x0e+32x1o",
                      correlation=3, num_interactions=2)
    stats = Statistics(elements=[1, 6, 8], avg_num_neighbors=8.0)
    model = MACE.from_config(cfg, stats).double()
    path = tmp_path_factory.mktemp("openmm") / "mace.pt"
    save_model(make_payload(config={"model": {"name": "mace", **to_plain(cfg)}}, statistics=stats.to_dict(),
                            model_state=model.state_dict(), dtype=torch.float64), path)
    return str(path)


def topology_of(numbers, residues):
    top = app.Topology()
    chain = top.addChain()
    for name, indices in residues:
        res = top.addResidue(name, chain)
        for i in indices:
            element = app.Element.getByAtomicNumber(int(numbers[i]))
            top.addAtom(f"{element.symbol}{i}", element, res)
    return top


def ase_reference(checkpoint, atoms):
    a = atoms.copy()
    a.calc = MolequiCalculator.from_checkpoint(checkpoint)
    return a.get_potential_energy(), a.get_forces()


def energy_forces(context, groups=-1):
    state = context.getState(getEnergy=True, getForces=True, groups=groups)
    e = state.getPotentialEnergy().value_in_unit(unit.kilojoule_per_mole) * KJMOL
    f = state.getForces(asNumpy=True).value_in_unit(unit.kilojoule_per_mole / unit.angstrom) * KJMOL
    return e, f


def test_openmm_md_of_ethanol_equals_ase_calculator(checkpoint, ethanol):
    top = topology_of(ethanol.numbers, [("ETH", range(len(ethanol)))])
    system = MLPotential("molequi", modelPath=checkpoint).createSystem(top, precision="double")
    integrator = openmm.VerletIntegrator(0.25 * unit.femtoseconds)
    context = openmm.Context(system, integrator, openmm.Platform.getPlatformByName("CPU"))
    context.setPositions(ethanol.positions * unit.angstrom)
    e, f = energy_forces(context)
    e_ref, f_ref = ase_reference(checkpoint, ethanol)
    assert e == pytest.approx(e_ref, rel=1e-9, abs=1e-9)
    np.testing.assert_allclose(f, f_ref, rtol=1e-9, atol=1e-9)
    context.setVelocitiesToTemperature(300 * unit.kelvin, 1)
    totals = []
    for _ in range(10):
        integrator.step(2)
        state = context.getState(getEnergy=True, getPositions=True)
        totals.append((state.getPotentialEnergy() + state.getKineticEnergy()).value_in_unit(
            unit.kilojoule_per_mole) * KJMOL)
    moved = ethanol.copy()
    moved.positions = state.getPositions(asNumpy=True).value_in_unit(unit.angstrom)
    assert np.abs(moved.positions - ethanol.positions).max() > 1e-3  # it did move
    e, f = energy_forces(context)
    e_ref, f_ref = ase_reference(checkpoint, moved)
    assert e == pytest.approx(e_ref, rel=1e-9, abs=1e-9)
    np.testing.assert_allclose(f, f_ref, rtol=1e-9, atol=1e-9)
    assert np.ptp(totals) < 5e-3  # NVE at 0.25 fs: the total energy holds


def test_mixed_ml_mm_puts_the_model_on_the_subset(checkpoint, ethanol):
    """Ethanol by the model, two TIP3P-like waters by a hand-made MM System: the ML force group holds the
    model's energy of ethanol alone and no force on the water atoms."""
    water = Atoms("OH2OH2", positions=[[4.0, 0, 0], [4.96, 0, 0], [3.76, 0.93, 0],
                                       [-4.0, 1, 0], [-4.96, 1, 0], [-3.76, 1.93, 0]])
    combined = ethanol + water
    n_eth = len(ethanol)
    top = topology_of(combined.numbers, [("ETH", range(n_eth)), ("HOH", range(n_eth, n_eth + 3)),
                                         ("HOH", range(n_eth + 3, n_eth + 6))])
    mm = openmm.System()
    nb = openmm.NonbondedForce()
    bonds = openmm.HarmonicBondForce()
    for z in combined.numbers:
        mm.addParticle({1: 1.008, 6: 12.011, 8: 15.999}[int(z)])
        nb.addParticle({1: 0.1, 6: -0.1, 8: -0.3}[int(z)], 0.3, 0.5)
    for o in (n_eth, n_eth + 3):
        for h in (o + 1, o + 2):
            bonds.addBond(o, h, 0.09572, 4.6e5)
    mm.addForce(nb)
    mm.addForce(bonds)
    mixed = MLPotential("molequi", modelPath=checkpoint).createMixedSystem(top, mm, range(n_eth), forceGroup=1)
    context = openmm.Context(mixed, openmm.VerletIntegrator(0.001), openmm.Platform.getPlatformByName("CPU"))
    context.setPositions(combined.positions * unit.angstrom)
    e_ml, f_ml = energy_forces(context, groups={1})
    e_ref, f_ref = ase_reference(checkpoint, ethanol)
    assert e_ml == pytest.approx(e_ref, rel=1e-9, abs=1e-9)
    np.testing.assert_allclose(f_ml[:n_eth], f_ref, rtol=1e-9, atol=1e-9)
    np.testing.assert_array_equal(f_ml[n_eth:], 0.0)


def test_missing_model_path_and_bad_arguments_are_named(checkpoint, ethanol):
    with pytest.raises(InputError, match="modelPath"):
        MLPotential("molequi")
    top = topology_of(ethanol.numbers, [("ETH", range(len(ethanol)))])
    with pytest.raises(InputError, match="unknown arguments.*'precison'"):
        MLPotential("molequi", modelPath=checkpoint).createSystem(top, precison="double")


def test_importing_molequi_first_works():
    """openmm-ml loads its entry points (molequi's factory) while it is itself being imported: importing
    molequi.interop.openmm before openmmml must not end in a circular import."""
    import subprocess
    import sys

    code = ("import molequi.interop.openmm\nfrom openmmml import MLPotential\n"
            "print(type(MLPotential._implFactories['molequi']).__name__)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip() == "MolequiPotentialImplFactory"
