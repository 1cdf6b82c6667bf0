"""molequi md / relax / predict from the command line, on Lennard-Jones checkpoints."""

from __future__ import annotations

import csv

import numpy as np
import pytest
from ase.io import read, write
from calc_helpers import ar_cluster, ar_fcc, save_lj_checkpoint

from molequi.cli.main import build_parser, main


@pytest.fixture
def ckpt(tmp_path):
    return save_lj_checkpoint(tmp_path / "lj.pt", elements=[18])


def test_help_explains_every_option():
    parser = build_parser()
    sub = next(a for a in parser._actions if a.dest == "verb")
    for verb in ("md", "relax", "predict"):
        p = sub.choices[verb]
        for action in p._actions:
            assert action.help, f"molequi {verb} {action.option_strings} has no help"


def test_md_cli(tmp_path, ckpt, capsys):
    write(tmp_path / "ar.xyz", ar_fcc(2))
    traj, log = tmp_path / "md.extxyz", tmp_path / "md.csv"
    rc = main(
        [
            "md",
            ckpt,
            str(tmp_path / "ar.xyz"),
            "--ensemble",
            "nve",
            "--temperature",
            "40",
            "--timestep",
            "2",
            "--steps",
            "20",
            "--traj",
            str(traj),
            "--log",
            str(log),
            "--loginterval",
            "5",
            "--seed",
            "0",
            "--no-progress",
        ]
    )
    assert rc == 0
    assert len(read(traj, index=":")) == 5
    rows = list(csv.DictReader(log.read_text().splitlines()))
    assert [int(r["step"]) for r in rows] == [0, 5, 10, 15, 20]
    assert "20 steps" in capsys.readouterr().out


def test_md_cli_blowup_exit_code(tmp_path, ckpt, capsys):
    write(tmp_path / "ar.xyz", ar_fcc(2))
    traj = tmp_path / "md.extxyz"
    rc = main(
        [
            "md",
            ckpt,
            ckpt,
            str(tmp_path / "ar.xyz"),
            "--ensemble",
            "nve",
            "--temperature",
            "3000",
            "--timestep",
            "20",
            "--steps",
            "500",
            "--traj",
            str(traj),
            "--loginterval",
            "1",
            "--seed",
            "0",
            "--max-force",
            "5",
            "--no-progress",
        ]
    )
    err = capsys.readouterr().err
    assert rc == 3 and "SimulationBlowUp" in err and "max_force" in err
    frames = read(traj, index=":")
    assert len(frames) > 5 and "energy_std" in frames[-1].info


def test_md_cli_unknown_element(tmp_path, ckpt, capsys):
    atoms = ar_cluster(4)
    atoms.numbers[0] = 29
    write(tmp_path / "bad.xyz", atoms)
    assert (
        main(
            [
                "md",
                ckpt,
                str(tmp_path / "bad.xyz"),
                "--steps",
                "2",
                "--no-progress",
                "--traj",
                str(tmp_path / "x.extxyz"),
            ]
        )
        == 1
    )
    assert "ModelError" in capsys.readouterr().err


@pytest.mark.slow
def test_relax_cli(tmp_path, ckpt):
    write(tmp_path / "ar.xyz", ar_fcc(2, a=5.0, rattle=0.05, seed=1))
    out = tmp_path / "relaxed.xyz"
    rc = main(
        [
            "relax",
            ckpt,
            str(tmp_path / "ar.xyz"),
            "--optimizer",
            "fire",
            "--fmax",
            "0.01",
            "--cell",
            "--out",
            str(out),
            "--quiet",
        ]
    )
    assert rc == 0
    relaxed = read(out)
    assert np.abs(relaxed.get_forces()).max() < 0.01 and relaxed.get_volume() > ar_fcc(2, a=5.0).get_volume()


def test_predict_cli(tmp_path, ckpt):
    frames = [ar_fcc(2, rattle=0.1, seed=s) for s in range(3)] + [ar_cluster(5)]
    write(tmp_path / "many.extxyz", frames)
    out = tmp_path / "pred.extxyz"
    assert (
        main(
            [
                "predict",
                ckpt,
                str(tmp_path / "many.extxyz"),
                "--out",
                str(out),
                "--batch-size",
                "2",
                "--no-progress",
            ]
        )
        == 0
    )
    pred = read(out, index=":")
    assert len(pred) == 4 and "MOLEQUI_stress" in pred[0].info and "MOLEQUI_stress" not in pred[3].info
    assert pred[0].arrays["MOLEQUI_forces"].shape == (32, 3)
    assert pred[0].calc is None  # the input had no labels, and none were invented


def test_predict_cli_keeps_labels_beside_prefixed_predictions(tmp_path, ckpt):
    """--prefix (default MOLEQUI_, as mace-torch's eval writes MACE_): the file's own labels (here from ASE's
    Lennard-Jones calculator) stay as they were; ``--prefix ''`` replaces them by the predictions."""
    from ase.calculators.lj import LennardJones as AseLJ
    from ase.calculators.singlepoint import SinglePointCalculator

    frames = []
    for s in range(3):
        a = ar_fcc(2, rattle=0.1, seed=s)
        a.calc = AseLJ(epsilon=0.01, sigma=3.0, rc=6.0)
        a.calc = SinglePointCalculator(a, energy=a.get_potential_energy(), forces=a.get_forces(),
                                       stress=a.get_stress())
        frames.append(a)
    write(tmp_path / "labelled.extxyz", frames)
    labelled = read(tmp_path / "labelled.extxyz", index=":")
    args = ["predict", ckpt, str(tmp_path / "labelled.extxyz"), "--no-progress", "--out"]
    assert main([*args, str(tmp_path / "kept.extxyz")]) == 0
    assert main([*args, str(tmp_path / "replaced.extxyz"), "--prefix", ""]) == 0
    kept = read(tmp_path / "kept.extxyz", index=":")
    replaced = read(tmp_path / "replaced.extxyz", index=":")
    for ref, k, r in zip(labelled, kept, replaced):
        assert k.get_potential_energy() == ref.get_potential_energy()
        np.testing.assert_array_equal(k.get_forces(), ref.get_forces())
        np.testing.assert_array_equal(k.get_stress(), ref.get_stress())
        assert k.info["MOLEQUI_energy"] == pytest.approx(r.get_potential_energy(), rel=1e-12)
        np.testing.assert_allclose(k.arrays["MOLEQUI_forces"], r.get_forces(), rtol=1e-12, atol=1e-14)
        np.testing.assert_allclose(k.info["MOLEQUI_stress"], r.get_stress(), rtol=1e-12, atol=1e-14)
        # per-atom columns are written with 8 decimals by ASE's extxyz writer
        assert k.arrays["MOLEQUI_energies"].sum() == pytest.approx(k.info["MOLEQUI_energy"], abs=len(k) * 1e-8)
        # the model (r_max / sigma of the checkpoint) is not ASE's LJ: predictions differ from the labels
        assert abs(k.info["MOLEQUI_energy"] - k.get_potential_energy()) > 1e-6


def test_relax_cli_with_d3(tmp_path, ckpt):
    """--dispersion d3bj: the relaxed structure is a minimum of model + D3 as ASE's SumCalculator of the model
    and s-dftd3's own calculator sees it (forces below fmax there, not only in molequi's sum)."""
    from ase.calculators.mixing import SumCalculator
    from dftd3.ase import DFTD3

    from molequi.calculators import MolequiCalculator

    write(tmp_path / "ar.xyz", ar_cluster(5))
    out = tmp_path / "relaxed.xyz"
    rc = main(["relax", ckpt, str(tmp_path / "ar.xyz"), "--fmax", "0.005", "--dispersion", "d3bj",
               "--functional", "pbe", "--out", str(out), "--quiet"])
    assert rc == 0
    relaxed = read(out)
    relaxed.calc = SumCalculator([MolequiCalculator.from_checkpoint(ckpt), DFTD3(method="pbe", damping="d3bj")])
    assert np.abs(relaxed.get_forces()).max() < 0.005
    relaxed.calc = MolequiCalculator.from_checkpoint(ckpt)  # without D3 it is not a minimum
    assert np.abs(relaxed.get_forces()).max() > 0.005
