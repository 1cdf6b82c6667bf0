"""Compile readiness of the Hamiltonian models and the generative denoisers (issue 20 item 1).

QHNet and hamiltonian_conv: ``predict`` (the model given the batch's integer pair structure) traces into ONE
graph with ``capture_scalar_outputs`` off, so no ``.item()`` / ``int(tensor)`` / ``bool(tensor)`` host sync
and no data-dependent size is left in it; ``trainer.compile`` (``compile_for_training``) gives the eager Fock
matrices and the eager parameter gradients of the Hamiltonian task's loss (float64, 1e-10) on batches of new
sizes, with the structure computed ahead as the trainer does (``prepare_batch``). EDM and the categorical
diffusion: ``trainer.compile`` compiles their denoiser, and the training loss and its gradients equal eager.
The equality checks use ``aot_eager`` (Dynamo + AOTAutograd, no code generation), and Inductor for a 4-block EDM
(it once gave that denoiser a zero coordinate update: see molequi.models.generative.graph.remove_mean)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch._dynamo as dynamo
from torch_geometric.data import Batch, Data

from molequi.models.generative.graph import fully_connected_edges
from molequi.train.compile import compile_for_training


def _float64(build):
    previous = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    try:
        torch.manual_seed(0)
        return build()
    finally:
        torch.set_default_dtype(previous)


def hamiltonian_model(name):
    """A tiny float64 model in the STO-3G basis (s and p shells, so lmax 2): the compile time grows with the
    number of tensor-product paths (QHNet at def2-SVP's lmax 4 takes minutes to trace)."""
    from molequi.models.hamiltonian import HamiltonianConv, HamiltonianConvConfig, QHNet, QHNetConfig

    if name == "qhnet":  # max_radius 2.5 Å: some pairs lie beyond the node layers' radius graph
        cfg = dict(hidden_size=4, bottle_hidden_size=2, num_layers=2, start_layer=0, num_radial=4,
                   max_radius=2.5)
        return _float64(lambda: QHNet(QHNetConfig(basis="sto-3g", lmax=2, **cfg)))
    cfg = dict(channels=4, num_layers=1, num_radial=6, radial_hidden=6)
    return _float64(lambda: HamiltonianConv(HamiltonianConvConfig(basis="sto-3g", lmax=2, **cfg)))


def molecule_batch(seed, *numbers):
    rng = np.random.default_rng(seed)
    return Batch.from_data_list(
        [Data(numbers=torch.tensor(z), pos=torch.as_tensor(rng.normal(0, 1.2, (len(z), 3)))) for z in numbers]
    )


def with_random_fock(batch, model, seed):
    """The batch with a random label of the right length (the loss only needs its shape)."""
    nao = model.layout.pair_structure(batch.numbers, batch.ptr)["nao"]
    batch.fock = (
        torch.randn(
            int((nao * nao).sum()), generator=torch.Generator().manual_seed(seed), dtype=torch.float64
        )
        * 0.1
    )
    return batch


def _loss_and_grads(model, batch):
    from molequi.tasks.hamiltonian import HamiltonianTask

    model.zero_grad()
    out = model(batch)
    loss, _ = HamiltonianTask(model).loss(batch, out)
    loss.backward()
    return (
        out["fock"].detach(),
        loss.detach(),
        {k: p.grad.clone() for k, p in model.named_parameters() if p.grad is not None},
    )


@pytest.mark.qm  # the orbital basis comes from PySCF
@pytest.mark.parametrize("name, backend", [("hamiltonian_conv", "aot_eager"), ("qhnet", "eager")])
def test_hamiltonian_compiled_training_equals_eager(name, backend):
    """fullgraph=True (compile_for_training): a graph break or host sync raises. QHNet runs Dynamo's capture
    only (backend eager): with AOTAutograd its trace takes ~45 CPU s even at this size; its aot_eager and
    Inductor gradients are checked by scripts/bench/compile_speed_more.py."""
    assert not dynamo.config.capture_scalar_outputs  # so an .item() or int(tensor) would break the graph
    assert not dynamo.config.capture_dynamic_output_shape_ops  # and nonzero / boolean-mask sizes too
    eager, compiled = hamiltonian_model(name).train(), hamiltonian_model(name).train()
    compile_for_training(compiled, backend)
    dynamo.reset()
    dynamo.utils.counters.clear()
    # the first batch has no O: hamiltonian_conv fits O's reference block (a buffer) at the second, which the
    # compiled graph must read; the second batch has new sizes (dynamic shapes, no recompile error)
    for seed, numbers in enumerate(
        ([[6, 6, 1, 1, 1, 1], [1, 1]], [[8, 1, 1], [6, 8, 1, 1], [6, 1, 1, 1, 1]])
    ):
        batch = with_random_fock(molecule_batch(seed, *numbers), eager, seed)
        fock, loss, grads = _loss_and_grads(eager, batch.clone())
        prepared = compiled.prepare_batch(batch.clone())  # what the trainer does before the device transfer
        assert "pair_structure" in prepared
        fock_c, loss_c, grads_c = _loss_and_grads(compiled, prepared)
        torch.testing.assert_close(fock_c, fock, rtol=0, atol=1e-10 * fock.abs().max().item())
        assert loss_c.item() == pytest.approx(loss.item(), rel=1e-10)
        assert grads_c.keys() == grads.keys() and len(grads) > 0.8 * len(list(eager.parameters()))
        for k in grads:
            torch.testing.assert_close(
                grads_c[k], grads[k], rtol=1e-10, atol=1e-10 * grads[k].abs().max().item()
            )
    if name == "hamiltonian_conv":
        assert bool(compiled.ref_fitted[8]) and compiled.ref_blocks[8].abs().max() > 0
        torch.testing.assert_close(compiled.ref_blocks, eager.ref_blocks, rtol=0, atol=0)
    assert dynamo.utils.counters["stats"]["unique_graphs"] == 1  # one graph for both batch sizes


def _generative(name):
    from molequi.models import MODELS

    cls = MODELS.load(name)
    if name == "edm":
        cfg = cls.Config(hidden=16, layers=2, timesteps=50, elements=[1, 6, 8])
    else:
        cfg = cls.Config(hidden=16, edge_hidden=8, layers=2, timesteps=50, elements=[1, 6, 8])
    return _float64(lambda: cls(cfg)).train()


def _generative_batch(seed, *numbers):
    from molequi import keys as K

    b = molecule_batch(seed, *numbers)
    b[K.POS] = b[K.POS] * 0.8
    return b


@pytest.mark.parametrize("name", ["edm", "egnn_categorical"])
def test_generative_compiled_training_equals_eager(name):
    eager, compiled = _generative(name), _generative(name)
    compile_for_training(compiled, "aot_eager")
    dynamo.reset()
    for seed, numbers in enumerate(
        ([[6, 6, 8, 1, 1, 1], [8, 1, 1]], [[6, 1, 1, 1, 1], [6, 8, 1, 1], [1, 1]])
    ):
        batch = _generative_batch(seed, *numbers)
        results = []
        for m in (eager, compiled):
            m.zero_grad()
            loss, _ = m.training_loss(batch.clone(), generator=torch.Generator().manual_seed(seed))
            loss.backward()
            results.append(
                (loss.detach(), {k: p.grad.clone() for k, p in m.named_parameters() if p.grad is not None})
            )
        (loss, grads), (loss_c, grads_c) = results
        assert loss_c.item() == pytest.approx(loss.item(), rel=1e-10)
        assert grads_c.keys() == grads.keys() and len(grads) == len(list(eager.parameters()))
        for k in grads:
            torch.testing.assert_close(
                grads_c[k], grads[k], rtol=1e-10, atol=1e-10 * grads[k].abs().max().item()
            )


def test_edm_four_block_denoiser_under_inductor_equals_eager():
    """Inductor (torch 2.13, CPU) returned an exactly zero coordinate update for EDM's denoiser with >= 4
    blocks (eager up to 0.43) when the per-molecule mean was a scatter-mean; remove_mean now takes the mean
    as a one-hot product while compiling. trainer.compile: true (Inductor) gives the eager velocity, loss and
    gradients of a 4-block EDM (float64)."""
    from molequi.models import MODELS

    cls = MODELS.load("edm")

    def build():
        torch.manual_seed(0)
        return cls(cls.Config(hidden=16, layers=4, timesteps=50, elements=[1, 6, 8])).double().train()

    eager, compiled = build(), build()
    compile_for_training(compiled, True)
    batch = _generative_batch(0, [6, 6, 8, 1, 1, 1], [8, 1, 1], [6, 1, 1, 1, 1])
    outs = []
    for m in (eager, compiled):
        x, h = m.encode(batch.numbers, batch.pos, batch.batch, batch.num_graphs)
        t = torch.full((batch.num_graphs,), 0.5, dtype=torch.float64)
        outs.append(m.dynamics(x, h, t, batch.batch, fully_connected_edges(batch.batch, batch.num_graphs))[0])
    assert outs[0].abs().max() > 1e-3  # the velocity Inductor zeroed
    torch.testing.assert_close(outs[1], outs[0], rtol=0, atol=1e-10 * outs[0].abs().max().item())
    results = []
    for m in (eager, compiled):
        m.zero_grad()
        loss, _ = m.training_loss(batch.clone(), generator=torch.Generator().manual_seed(1))
        loss.backward()
        results.append((loss.detach(), {k: p.grad.clone() for k, p in m.named_parameters()}))
    (loss, grads), (loss_c, grads_c) = results
    assert loss_c.item() == pytest.approx(loss.item(), rel=1e-10)
    for k in grads:
        torch.testing.assert_close(grads_c[k], grads[k], rtol=1e-8, atol=1e-10 * grads[k].abs().max().item())
