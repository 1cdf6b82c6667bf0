"""`molequi data hamiltonian` end to end (tiny), and the scf-guess parser."""

import numpy as np
import pytest

from molequi.cli.main import build_parser, main


@pytest.mark.qm
def test_data_hamiltonian_normal_modes(tmp_path):
    out = tmp_path / "w"
    assert (
        main(
            [
                "data",
                "hamiltonian",
                "--smiles",
                "O",
                "--n",
                "2",
                "--sampler",
                "normal-modes",
                "--shard-size",
                "1",
                "--no-progress",
                "--out",
                str(out),
            ]
        )
        == 0
    )
    from molequi.data.hamiltonian import HamiltonianStore

    store = HamiltonianStore(out)
    assert len(store) == 2 and store.basis == "def2-svp" and store.xc == "pbe"
    a, b = store[0], store[1]
    assert a.fock.shape == (24, 24) and a.n_elec == 10 and np.isfinite(a.forces).all()
    assert not np.allclose(a.pos, b.pos)  # displaced geometries
    assert store.meta["sampler"] == "normal-modes"


@pytest.mark.qm
def test_xtb_md_sampler_gives_distinct_frames():
    from molequi.qc.conformers import molecule_from_smiles
    from molequi.qc.xtb import sample_xtb_md

    frames = sample_xtb_md(molecule_from_smiles("O"), 3, equilibration=10, interval=5)
    assert len(frames) == 3 and not np.allclose(frames[0].positions, frames[2].positions)


def test_scf_guess_parser_documents_every_option():
    parser = build_parser()
    args = parser.parse_args(["scf-guess", "model.pt", "mol.xyz", "--xc", "b3lyp", "--basis", "def2-svp"])
    assert args.xc == "b3lyp" and args.reference_guess == "minao"
    sub = next(a for a in parser._actions if a.dest == "verb").choices["scf-guess"]
    assert all(a.help for a in sub._actions)
