"""scripts/bench/qhnet_same_run.py trains the reference QHNet on the PySCF labels taken to its orbital
layout: checked against the reference code's own full-matrix forward (same weights as molequi's imported
model, float64), so both codes are trained on, and scored against, the same matrices."""

import sys
from pathlib import Path

import pytest
import torch
from torch_geometric.data import Batch

pytestmark = pytest.mark.qm  # the orbital basis comes from PySCF

REPO = Path(__file__).resolve().parents[2]
PEER = REPO.parent / "shared" / "peers" / "qhnet"
PEER_REASON = ("the reference QHNet (github.com/divelab/AIRS, folder OpenDFT/QHNet, commit "
               "4a16c68a7da707c521019067dec51c227c10de45) is not at ../shared/peers/qhnet")


@pytest.mark.skipif(not PEER.is_dir(), reason=PEER_REASON)
def test_reference_layout_matches_reference_forward(tmp_path):
    for sub in ("scripts/bench", "scripts/parity"):
        if str(REPO / sub) not in sys.path:
            sys.path.insert(0, str(REPO / sub))
    import qhnet as parity
    import qhnet_same_run as bench

    from molequi.data.hamiltonian import HamiltonianStore, record_to_data
    from molequi.interop.qhnet import import_qhnet

    previous = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    try:
        ref = parity.build_reference(parity.import_peer(PEER, "QHNet_w_bias"), "tiny", 0)
        ref.set("cpu")
        torch.save({"state_dict": ref.state_dict(), "eval": {}, "batch_idx": 0}, tmp_path / "results.pt")
        ours = import_qhnet(tmp_path / "results.pt", version="QHNet_w_bias", dtype=torch.float64).eval()
        store = HamiltonianStore(REPO / "data" / "hamiltonian" / "water_random_sample")
        q = ours.to_pyscf.double().numpy()
        items = [bench.Prepared(record_to_data(store[i], dtype=torch.float64), ours.basis, q)
                 for i in range(3)]
        with torch.no_grad():
            ref_batch = Batch.from_data_list([it.ref for it in items])
            ref_h = ref(ref_batch)["hamiltonian"]  # the reference's own forward, its layout
            our_batch = Batch.from_data_list([it.ours for it in items])
            our_h = ours(our_batch)["fock"]
    finally:
        torch.set_default_dtype(previous)
    back = torch.cat([(it.m.T @ h @ it.m).reshape(-1) for it, h in zip(items, ref_h)])
    assert float((back - our_h).abs().max()) < 1e-12 * float(our_h.abs().max())
    # the training loss (train_wH.py's criterion) is the same number in either layout
    ref_loss = bench.loss_fn(ref_h, ref_batch.hamiltonian)
    our_loss = bench.loss_fn(our_h, our_batch.fock)
    assert abs(float(ref_loss) - float(our_loss)) < 1e-12 * float(our_loss)
    # and the labels are a signed permutation of PySCF's matrices, not a copy
    h0 = our_batch.fock[: 24 * 24].view(24, 24)
    assert not torch.equal(items[0].ref.hamiltonian[0], h0)
    assert torch.equal(items[0].m.abs().sum(0), torch.ones(24))
