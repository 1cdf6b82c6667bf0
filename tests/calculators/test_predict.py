"""Batched prediction equals one calculator call per structure."""

from __future__ import annotations

import numpy as np
import pytest
from calc_helpers import ar_cluster, ar_fcc, save_lj_checkpoint

from molequi.calculators import MolequiCalculator, predict
from molequi.errors import ModelError, ValueRangeError
from molequi.models.lj import LennardJones


def _frames():
    frames = [ar_fcc(2, rattle=0.1, seed=s) for s in range(5)]
    frames += [ar_cluster(n, seed=n) for n in (3, 7, 13)]
    frames += [ar_fcc(1, a=5.3, rattle=0.05, seed=9)]  # 4 atoms, cell smaller than the cutoff
    return frames


@pytest.mark.parametrize("batch_size", [1, 4, 32])
def test_batched_equals_per_structure(batch_size):
    model = LennardJones()
    frames = _frames()
    results = predict(model, frames, batch_size=batch_size)
    assert len(results) == len(frames)
    for atoms, r in zip(frames, results):
        a = atoms.copy()
        a.calc = MolequiCalculator(model)
        assert r["energy"] == pytest.approx(a.get_potential_energy(), abs=1e-10)
        np.testing.assert_allclose(r["forces"], a.get_forces(), atol=1e-10)
        np.testing.assert_allclose(r["energies"], a.get_potential_energies(), atol=1e-10)
        if atoms.pbc.all():
            np.testing.assert_allclose(r["stress"], a.get_stress(), atol=1e-12)
        else:
            assert "stress" not in r


def test_as_atoms_and_checkpoint(tmp_path):
    ckpt = save_lj_checkpoint(tmp_path / "lj.pt", elements=[18])
    frames = _frames()[:3]
    out = predict(ckpt, frames, batch_size=2, as_atoms=True)
    ref = predict(LennardJones(elements=[18]), frames)
    assert [a.get_potential_energy() for a in out] == pytest.approx([r["energy"] for r in ref], abs=1e-12)
    assert out[0] is not frames[0] and frames[0].calc is None


def test_errors():
    frames = _frames()
    with pytest.raises(ValueRangeError, match="not periodic"):
        predict(LennardJones(), frames, compute_stress=True)
    assert all("stress" not in r for r in predict(LennardJones(), frames[:2], compute_stress=False))
    bad = ar_cluster(4)
    bad.numbers[0] = 8
    with pytest.raises(ModelError, match=r"frame 1: .*O \(Z=8\)"):
        predict(LennardJones(elements=[18]), [frames[0], bad])
