"""QHNet (model 'qhnet'): equivariance of the predicted blocks (rotations; reflections with true parities),
the harmonics -> PySCF frame change against PySCF's own orbitals, parity with the reference code when it is
beside the repository, the importer's refusals, old 'qhnet' checkpoints, and a few training steps."""

from pathlib import Path

import numpy as np
import pytest
import torch
from e3nn import o3
from torch_geometric.data import Batch, Data

pytestmark = pytest.mark.qm  # the orbital basis comes from PySCF

REPO = Path(__file__).resolve().parents[2]
PEER = REPO.parent / "shared" / "peers" / "qhnet"
PEER_REASON = ("the reference QHNet (github.com/divelab/AIRS, folder OpenDFT/QHNet, commit "
               "4a16c68a7da707c521019067dec51c227c10de45) is not at ../shared/peers/qhnet")
WATER = np.array([[0.0, 0.0, 0.117], [0.0, 0.757, -0.469], [0.0, -0.757, -0.469]])


def _tiny(**kw):
    from molequi.models.hamiltonian import QHNet, QHNetConfig

    previous = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    try:
        torch.manual_seed(0)
        return QHNet(QHNetConfig(hidden_size=6, bottle_hidden_size=3, num_layers=3, start_layer=0,
                                 num_radial=5, max_radius=4.0, **kw)).eval()
    finally:
        torch.set_default_dtype(previous)


def _predict(model, numbers, pos):
    out = model(Batch.from_data_list([Data(numbers=torch.tensor(numbers), pos=torch.as_tensor(pos))]))
    n = int(out["nao"][0])
    return out["fock"].detach().numpy().reshape(n, n)


def _molecule():
    rng = np.random.default_rng(3)
    return [6, 6, 8, 1, 1, 1], rng.normal(0, 1.2, (6, 3))  # some pairs beyond the 4 Å radius graph


@pytest.mark.parametrize("parity_paths", [False, True])
def test_rotation_equivariance_float64(parity_paths):
    model = _tiny(parity_paths=parity_paths)
    z, pos = _molecule()
    h = _predict(model, z, pos)
    assert h.shape == (57, 57) and np.abs(h - h.T).max() == 0.0
    torch.manual_seed(1)
    for _ in range(3):
        r = o3.rand_matrix(dtype=torch.float64).numpy()
        d = model.basis.wigner_D(z, r)
        h_rot = _predict(model, z, pos @ r.T + np.array([0.3, -1.0, 2.0]))
        assert np.abs(h_rot - d @ h @ d.T).max() < 1e-10 * np.abs(h).max()


def test_reflections_need_true_parities():
    """parity_paths: true is E(3)-equivariant; QHNet's all-even labels (the reference) are not: they keep
    parity-odd paths such as the cross product, whose sign a mirror flips."""
    z, pos = _molecule()
    torch.manual_seed(2)
    mirror = -o3.rand_matrix(dtype=torch.float64).numpy()  # det -1: a rotation times the inversion
    for parity_paths, ok in ((True, True), (False, False)):
        model = _tiny(parity_paths=parity_paths)
        h = _predict(model, z, pos)
        d = model.basis.wigner_D(z, mirror)
        err = np.abs(_predict(model, z, pos @ mirror.T) - d @ h @ d.T).max() / np.abs(h).max()
        assert (err < 1e-10) if ok else (err > 1e-3), (parity_paths, err)


def test_internal_harmonics_frame_matches_pyscf_orbitals():
    """The frame change Q (v_internal = Q v_pyscf) against PySCF's AO values: e3nn's harmonics of the
    permuted vector (y, z, x) equal Q_l times PySCF's real orbitals' angular parts, per degree."""
    from pyscf import gto

    from molequi.models.hamiltonian.qhnet import harmonics_to_pyscf
    from molequi.so3.basis import OrbitalBasis

    basis = OrbitalBasis("def2-svp", (1, 8))
    q = harmonics_to_pyscf(basis)
    rng = np.random.default_rng(0)
    r = rng.normal(size=(50, 3))
    r /= np.linalg.norm(r, axis=1, keepdims=True)
    start = 0
    for l in basis.padded_shells:
        mol = gto.M(atom=[("Ne", (0.0, 0.0, 0.0))], basis={"Ne": [[l, (1.0, 1.0)]]}, verbose=0)
        ao = mol.eval_gto("GTOval_sph", r)  # (50, 2l+1), PySCF order, same radial factor everywhere
        y = o3.spherical_harmonics(l, torch.as_tensor(r[:, [1, 2, 0]]), normalize=True).numpy()
        block = q[start: start + 2 * l + 1, start: start + 2 * l + 1]
        pred = ao @ block.T  # Q applied to PySCF's functions
        scale = np.linalg.norm(y) / np.linalg.norm(pred)
        np.testing.assert_allclose(pred * scale, y, atol=1e-10)
        start += 2 * l + 1


def test_batch_equals_single():
    model = _tiny()
    z1, p1 = _molecule()
    out = model(Batch.from_data_list([Data(numbers=torch.tensor(z1), pos=torch.as_tensor(p1)),
                                      Data(numbers=torch.tensor([8, 1, 1]), pos=torch.as_tensor(WATER))]))
    assert out["nao"].tolist() == [57, 24]
    np.testing.assert_allclose(out["fock"][: 57 * 57].detach().numpy().reshape(57, 57),
                               _predict(model, z1, p1), atol=1e-12)
    np.testing.assert_allclose(out["fock"][57 * 57:].detach().numpy().reshape(24, 24),
                               _predict(model, [8, 1, 1], WATER), atol=1e-12)


@pytest.mark.skipif(not PEER.is_dir(), reason=PEER_REASON)
@pytest.mark.parametrize("version", ["QHNet_w_bias", "QHNet"])
def test_parity_with_reference_code(tmp_path, version):
    """Tiny reference QHNet with random weights, saved as train_wH.py does, imported: same blocks."""
    import sys

    sys.path.insert(0, str(REPO / "scripts" / "parity"))
    from qhnet import run

    res = run(PEER, version=version, size="tiny", work=tmp_path)
    assert res["ok"] and max(res["relative"].values()) < 1e-12, res


def _reference_like_state():
    """A molequi QHNet's weights under the reference's names (the inverse of the importer's renaming)."""
    from molequi.interop.qhnet import _rename

    model = _tiny()
    names = {}
    for ref_key in _reference_keys(model):
        names[_rename(ref_key)] = ref_key
    return model, {names[k]: v for k, v in model.state_dict().items()}


def _reference_keys(model):
    """Reference parameter names for the tiny model, built from the importer's tables."""
    from molequi.interop import qhnet as q

    inverse = {}
    for table, ref_prefix, ours in ((q._NODE, "e3_gnn_layer.{}.conv.", "interactions"),
                                    (q._DIAG, "e3_gnn_node_layer.{}.", "diag_layers"),
                                    (q._PAIR, "e3_gnn_node_pair_layer.{}.", "pair_layers")):
        for ref_mod, our_mod in table.items():
            inverse[(ours, our_mod)] = (ref_prefix, ref_mod)
    gates = {v: k for k, v in q._GATE.items()}
    top = {v: k for k, v in q._TOP.items()}
    radial = {v: k for k, v in q._RADIAL.items()}
    keys = []
    for key in model.state_dict():
        head, *rest = key.split(".")
        if head in ("interactions", "diag_layers", "pair_layers"):
            idx, mod, *tail = rest
            prefix, ref_mod = inverse[(head, mod)]
            if mod.startswith("gate"):
                tail = [gates[tail[0]], *tail[1:]]
            keys.append(prefix.format(idx) + ".".join([ref_mod, *tail]))
        elif head == "radial":
            keys.append("distance_expansion." + radial[rest[0]])
        else:
            keys.append(".".join([top[head], *rest]))
    return keys


def test_import_cli_round_trip_and_refusals(tmp_path, capsys):
    from molequi.checkpoint import load_model
    from molequi.cli.main import main
    from molequi.errors import CheckpointError
    from molequi.interop.qhnet import (
        UnsupportedQHNetOptionError,
        import_qhnet,
        qhnet_config,
        read_qhnet_state,
    )

    model, state = _reference_like_state()
    state["expand_ii.hamiltonian.weights"] = torch.zeros(3)  # unused by the reference's forward: dropped
    torch.save({"state_dict": state, "eval": {"hamiltonian_mae": 1e-5}, "batch_idx": 7},
               tmp_path / "results.pt")
    assert main(["import", "qhnet", str(tmp_path / "results.pt"), "--out", str(tmp_path / "q.pt"),
                 "--version", "QHNet", "--elements", "1,6,8"]) == 0
    assert "hidden 6, 3 layers" in capsys.readouterr().out
    loaded = load_model(tmp_path / "q.pt")
    z, pos = _molecule()
    np.testing.assert_array_equal(_predict(loaded, z, pos), _predict(model, z, pos))
    # a bare state dict is read too, with the original 'with bias' invariants by default
    torch.save(state, tmp_path / "bare.pt")
    assert qhnet_config(read_qhnet_state(tmp_path / "bare.pt")).receiver_scalars is True
    # refusals: a damaged file, another variant, a version molequi does not implement
    (tmp_path / "bad.pt").write_bytes((tmp_path / "results.pt").read_bytes()[:200])
    with pytest.raises(CheckpointError, match="bad.pt: cannot be read as a QHNet checkpoint"):
        import_qhnet(tmp_path / "bad.pt")
    wo_bias = {k: v for k, v in state.items() if "_bias." not in k}
    torch.save({"state_dict": wo_bias}, tmp_path / "wo.pt")
    with pytest.raises(UnsupportedQHNetOptionError, match="QHNet_wo_bias checkpoint"):
        import_qhnet(tmp_path / "wo.pt")
    with pytest.raises(UnsupportedQHNetOptionError, match="version 'QHNet_wo_bias'"):
        import_qhnet(tmp_path / "results.pt", version="QHNet_wo_bias")
    renamed = dict(state, **{"e3_gnn_layer.0.conv.extra.weight": torch.zeros(2)})
    torch.save({"state_dict": renamed}, tmp_path / "extra.pt")
    with pytest.raises(UnsupportedQHNetOptionError, match="unknown parameters"):
        import_qhnet(tmp_path / "extra.pt")


def test_old_qhnet_checkpoint_loads_as_hamiltonian_conv(tmp_path):
    from molequi.checkpoint import load_model, make_payload, save_model
    from molequi.config import to_plain
    from molequi.models.hamiltonian import HamiltonianConv, HamiltonianConvConfig

    cfg = HamiltonianConvConfig(channels=4, num_layers=1, num_radial=4, radial_hidden=4, elements=[1, 8])
    torch.manual_seed(0)
    old = HamiltonianConv(cfg).double().eval()
    config = {"model": {"name": "qhnet", **to_plain(cfg)}, "task": {"name": "hamiltonian"}}
    save_model(make_payload(config=config, statistics={"elements": [1, 8]}, model_state=old.state_dict(),
                            dtype=torch.float64), tmp_path / "old.pt")
    with pytest.warns(UserWarning, match="read as 'hamiltonian_conv'"):
        model = load_model(tmp_path / "old.pt")
    assert isinstance(model, HamiltonianConv)
    # equal but for the float32-built constants of ``old`` (load_model builds in the checkpoint's float64)
    np.testing.assert_allclose(_predict(model, [8, 1, 1], WATER), _predict(old, [8, 1, 1], WATER), atol=1e-10)


def test_training_steps_with_model_qhnet(tmp_path):
    """The task/train path with model.name qhnet: a few steps on the shipped water store lower the H MAE."""
    from molequi.config import Config
    from molequi.train.evaluate import read_run_metrics
    from molequi.train.run import train

    steps = 12
    raw = {"model": {"name": "qhnet", "elements": [1, 8], "hidden_size": 8, "bottle_hidden_size": 4,
                     "num_layers": 3, "start_layer": 0, "num_radial": 8},
           "data": {"name": "hamiltonian", "root": str(REPO / "data" / "hamiltonian" / "water"), "n_train": 4,
                    "n_valid": 0},
           "task": {"name": "hamiltonian", "orbital_metrics": False},
           "optim": {"lr": 0.03, "scheduler": "none", "ema_decay": None, "grad_clip": 10.0},
           "trainer": {"max_steps": steps, "batch_size": 4, "accelerator": "cpu", "devices": 1,
                       "output": str(tmp_path / "run"), "progress_bar": False, "log_every": 1}}
    result = train(Config.from_dict(raw), enable_summary=False)
    assert result.global_step == steps
    mae = [r["train/h_mae_uha_step"] for r in read_run_metrics(result.output) if "train/h_mae_uha_step" in r]
    assert len(mae) == steps and np.isfinite(mae).all()
    assert np.mean(mae[-3:]) < 0.8 * np.mean(mae[:3]), mae
