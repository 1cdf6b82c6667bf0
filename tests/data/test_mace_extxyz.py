"""MACE's extended-XYZ conventions (``molequi.data.readers``): REF_* keys, REF_virials -> stress,
config_type, config_weight and the per-property weights, head; and the energy_forces loss weighting them.

The file is written by ASE with those info / arrays keys. References: the values written into the file
(weights, strings), stress = -virials / volume with the volume from numpy's determinant, and for the loss an
independent numpy evaluation of mace-torch's weighted losses (``mace.modules.loss``:
mean_b w_b w^E_b ((E_b - E'_b) / n_b)^2, mean_{i,a} w_b(i) w^F_b(i) (F_ia - F'_ia)^2). Checked once by hand
against mace-torch 0.3.16's ``mace.data.utils.load_from_xyz`` on this same file (weights, energy / forces
weights, config_type and virials equal; see the report of the commit).
"""

import numpy as np
import pytest
import torch
from ase import Atoms
from ase.io import write
from torch_geometric.data import Batch

from molequi import keys as K
from molequi.config import Config
from molequi.data.datasets import build_dataset
from molequi.data.readers import read_extxyz, read_structures
from molequi.errors import FormatError, ValueRangeError
from molequi.tasks.energy_forces import EnergyForcesTask, LossWeights


def _frames(rng):
    frames = []
    cell = np.array([[4.0, 0.3, 0.0], [0.0, 4.5, 0.2], [0.1, 0.0, 5.0]])
    for k in range(4):
        a = Atoms("CuO", positions=[[0, 0, 0], [1.8 + 0.1 * k, 0.2, 0.1]], cell=cell, pbc=True)
        a.info["REF_energy"] = -10.0 + k
        a.arrays["REF_forces"] = rng.normal(size=(2, 3))
        a.info["REF_virials"] = rng.normal(size=(3, 3)).ravel()  # 9 numbers, as mace-torch accepts
        frames.append(a)
    frames[0].info.update(config_type="bulk", config_weight=2.0, config_energy_weight=0.5,
                          config_virials_weight=3.0, head="pbe")
    frames[1].info.update(config_forces_weight=4.0)
    # the stress came from virials: config_virials_weight counts, config_stress_weight does not
    frames[2].info.update(config_stress_weight=7.0, config_virials_weight=5.0, config_type="slab")
    iso = Atoms("O", cell=cell, pbc=True)
    iso.info.update(REF_energy=-2.5, config_type="IsolatedAtom")
    iso.arrays["REF_forces"] = np.zeros((1, 3))
    frames.append(iso)
    return frames


@pytest.fixture()
def mace_file(tmp_path):
    frames = _frames(np.random.default_rng(0))
    path = tmp_path / "train.xyz"
    write(path, frames, format="extxyz")
    return path, frames


def test_mace_keys_weights_config_type_head(mace_file):
    path, frames = mace_file
    records = read_extxyz(path)
    assert len(records) == 5
    # mace-torch's defaults where a frame does not say: weight 1, config_type "Default", head "Default"
    assert [float(r[K.WEIGHT]) for r in records] == [2.0, 1.0, 1.0, 1.0, 1.0]
    assert [float(r[K.ENERGY_WEIGHT]) for r in records] == [0.5, 1.0, 1.0, 1.0, 1.0]
    assert [float(r[K.FORCES_WEIGHT]) for r in records] == [1.0, 4.0, 1.0, 1.0, 1.0]
    assert [float(r[K.STRESS_WEIGHT]) for r in records] == [3.0, 1.0, 5.0, 1.0, 1.0]
    assert [r[K.CONFIG_TYPE] for r in records] == ["bulk", "Default", "slab", "Default", "IsolatedAtom"]
    assert [r[K.HEAD] for r in records] == ["pbe", "Default", "Default", "Default", "Default"]
    for r, a in zip(records, frames):
        assert float(r[K.ENERGY]) == a.info["REF_energy"]
        np.testing.assert_allclose(r[K.FORCES].double().numpy(), a.arrays["REF_forces"], rtol=1e-6)
    assert K.STRESS not in records[4]  # the isolated atom has neither stress nor virials
    for k in range(4):  # stress = -virials / volume
        volume = abs(np.linalg.det(frames[k].cell[:]))
        expected = -np.asarray(frames[k].info["REF_virials"]).reshape(3, 3) / volume
        np.testing.assert_allclose(records[k][K.STRESS].double().numpy()[0], expected, rtol=1e-6, atol=1e-9)
    # the records batch together (every frame carries every convention field)
    batch = Batch.from_data_list(records[:4])
    assert batch[K.WEIGHT].shape == (4,) and batch[K.CONFIG_TYPE][2] == "slab"


def test_virials_key_and_head_key_are_configurable(tmp_path):
    a = Atoms("Cu2", positions=[[0, 0, 0], [1.9, 0, 0]], cell=np.eye(3) * 4.0, pbc=True)
    a.info.update(my_E=-1.0, my_vir=[1.0, 2.0, 3.0, 0.0, 0.0, 0.0], branch="r2scan")
    path = tmp_path / "k.xyz"
    write(path, [a], format="extxyz")
    (r,) = read_structures(path, energy_key="my_E", virials_key="my_vir", head_key="branch")
    np.testing.assert_allclose(r[K.STRESS].double().numpy()[0], -np.diag([1.0, 2.0, 3.0]) / 64.0)
    assert r[K.HEAD] == "r2scan"
    # the same from a run config: data.options virials_key / head_key (mace-torch's --virials_key, --head_key)
    cfg = Config.from_dict({"data": {"name": "xyz", "root": str(path), "energy_key": "my_E",
                                     "options": {"virials_key": "my_vir", "head_key": "branch"}}}).data
    (d,) = build_dataset(cfg)
    assert torch.equal(d[K.STRESS], r[K.STRESS]) and d[K.HEAD] == "r2scan"
    # a file without any convention key gets none of the fields
    b = Atoms("Cu2", positions=[[0, 0, 0], [1.9, 0, 0]])
    b.info["REF_energy"] = -1.0
    write(tmp_path / "plain.xyz", [b], format="extxyz")
    (plain,) = read_extxyz(tmp_path / "plain.xyz")
    assert all(f not in plain for f in (K.WEIGHT, K.CONFIG_TYPE, K.HEAD, K.STRESS))


def test_bad_virials_and_weights_are_named_errors(tmp_path):
    mol = Atoms("Cu2", positions=[[0, 0, 0], [1.9, 0, 0]])  # no cell: no volume
    mol.info.update(REF_energy=-1.0, REF_virials=np.ones(9))
    write(tmp_path / "mol.xyz", [mol], format="extxyz")
    with pytest.raises(ValueRangeError, match="virials given for a structure without a periodic cell"):
        read_extxyz(tmp_path / "mol.xyz")
    neg = Atoms("Cu2", positions=[[0, 0, 0], [1.9, 0, 0]])
    neg.info.update(REF_energy=-1.0, config_weight=-1.0)
    write(tmp_path / "neg.xyz", [neg], format="extxyz")
    with pytest.raises(ValueRangeError, match="config_weight = -1.0 must be a finite number >= 0"):
        read_extxyz(tmp_path / "neg.xyz")
    bad = Atoms("Cu2", positions=[[0, 0, 0], [1.9, 0, 0]], cell=np.eye(3) * 4, pbc=True)
    bad.info.update(REF_energy=-1.0, REF_virials=np.ones(4))
    write(tmp_path / "bad.xyz", [bad], format="extxyz")
    with pytest.raises(FormatError, match="virials have shape"):
        read_extxyz(tmp_path / "bad.xyz")


class _Fixed(torch.nn.Module):
    """Predictions given in advance (the loss is what is tested)."""

    def __init__(self, out):
        super().__init__()
        self.out = out

    def forward(self, batch, compute_forces=True, compute_stress=False):
        return self.out


def test_loss_applies_mace_weights_as_mace_torch(mace_file):
    path, _ = mace_file
    records = read_extxyz(path)[:4]  # the periodic frames, all with stress from virials
    batch = Batch.from_data_list(records)
    rng = np.random.default_rng(1)
    e_pred = torch.tensor(rng.normal(size=4))
    f_pred = torch.tensor(rng.normal(size=(batch.num_nodes, 3)))
    s_pred = torch.tensor(rng.normal(size=(4, 3, 3)))
    cfg = EnergyForcesTask.Config(weights=LossWeights(energy=1.0, forces=10.0, stress=2.0))
    task = EnergyForcesTask.from_config(cfg, _Fixed({K.ENERGY: e_pred, K.FORCES: f_pred, K.STRESS: s_pred}))
    _, logs = task.loss(batch, task.model(batch))
    # numpy, mace-torch's formulas
    n = np.array([len(r[K.NUMBERS]) for r in records])
    w = np.array([float(r[K.WEIGHT]) for r in records])
    we = np.array([float(r[K.ENERGY_WEIGHT]) for r in records])
    wf = np.repeat(w * np.array([float(r[K.FORCES_WEIGHT]) for r in records]), n)[:, None]
    ws = (w * np.array([float(r[K.STRESS_WEIGHT]) for r in records]))[:, None, None]
    e_ref = np.array([float(r[K.ENERGY]) for r in records])
    f_ref = np.concatenate([r[K.FORCES].double().numpy() for r in records])
    s_ref = np.concatenate([r[K.STRESS].double().numpy() for r in records])
    loss_e = np.mean(w * we * ((e_ref - e_pred.numpy()) / n) ** 2)
    loss_f = np.mean(wf * (f_ref - f_pred.numpy()) ** 2)
    loss_s = np.mean(ws * (s_ref - s_pred.numpy()) ** 2)
    assert float(logs["loss_energy"]) == pytest.approx(loss_e, rel=1e-6)
    assert float(logs["loss_forces"]) == pytest.approx(loss_f, rel=1e-6)
    assert float(logs["loss_stress"]) == pytest.approx(loss_s, rel=1e-6)
    assert float(logs["loss"]) == pytest.approx(loss_e + 10 * loss_f + 2 * loss_s, rel=1e-6)
