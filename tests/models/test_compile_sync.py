"""No host sync in a training step (issue 20 item 1), checked on the CPU: what would wait for a GPU (``.item()``,
``int(tensor)``, ``bool(tensor)``, ``nonzero``, boolean-mask indexing, ``bincount`` and ``repeat_interleave``
whose output size is read from the data) cannot be traced by Dynamo with ``capture_scalar_outputs`` and
``capture_dynamic_output_shape_ops`` off, so ``torch.compile(fullgraph=True)`` raises on it.

- Generative models (EDM, GeoLDM in both stages, conditioned EDM, egnn_categorical, eqgat_diff): after
  ``prepare_batch`` (the CPU batch's fully connected edges, size and class counts, bonds, element checks), the
  device part of ``training_loss`` (``device_loss``: noise, denoiser, loss, statistics buffers) traces into one
  graph; its loss, logs, parameter gradients and buffers equal the eager ``training_loss`` of the unprepared batch
  for the same random state (float64, 1e-10; they were found bit-identical to the code before this change too).
  The categorical draws equal ``torch.multinomial``'s for the same random state. ``trainer.compile`` compiles
  ``device_loss`` whole, and molequi.train with it gives the eager run's weights.
- hamiltonian_conv: its training step (forward with the reference fit, and the task's loss) traces into one
  graph once the batch's elements have a reference, though an element of the basis (N) never comes.
- MACE's compiled training step: first batches of 2, then 3, then 5 structures give one graph (duck sizing used
  to tie the structure count to the edge index's 2 rows or the cell's 3 columns and recompile), and so do 1, 2,
  5 (a count of 1 used to be specialised). The generative denoiser that trainer.compile compiles runs without
  duck sizing too.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch._dynamo as dynamo
from torch_geometric.data import Batch, Data

from molequi import keys as K


@pytest.fixture(autouse=True)
def _no_scalar_capture():
    assert not dynamo.config.capture_scalar_outputs  # so .item() / int(tensor) / bool(tensor) break the graph
    assert not dynamo.config.capture_dynamic_output_shape_ops  # and nonzero / boolean masks / bincount too
    dynamo.reset()
    yield
    dynamo.reset()


def _molecules(seed, *numbers, **fields):
    rng = np.random.default_rng(seed)
    return Batch.from_data_list([
        Data(numbers=torch.tensor(z), pos=torch.as_tensor(rng.normal(0, 0.96, (len(z), 3))),
             **{k: torch.tensor([[v + i]], dtype=torch.float64) for k, v in fields.items()})
        for i, z in enumerate(numbers)])


GENERATIVE = {
    "edm": ("edm", {}),
    "edm_conditioned": ("edm", {"condition_on": ["alpha"]}),
    "geoldm": ("geoldm", {"latent_nf": 2}),
    "geoldm_autoencoder": ("geoldm", {"latent_nf": 2, "train_diffusion": False}),
    "egnn_categorical": ("egnn_categorical", {"edge_hidden": 8}),
    "eqgat_diff": ("eqgat_diff", {"vectors": 4, "edge_hidden": 8}),
}
BATCHES = ([[6, 6, 8, 1, 1, 1], [8, 1, 1]], [[6, 1, 1, 1, 1], [6, 8, 1, 1], [1, 1]],
           [[8, 1, 1], [6, 1, 1, 1, 1], [6, 8, 1, 1], [6, 6, 1, 1, 1, 1]])


def _generative(name):
    from molequi.models import MODELS

    registered, extra = GENERATIVE[name]
    cls = MODELS.load(registered)
    previous = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    try:
        torch.manual_seed(0)
        return cls(cls.Config(hidden=16, layers=2, timesteps=50, elements=[1, 6, 8], **extra)).train()
    finally:
        torch.set_default_dtype(previous)


def _step(model, loss_fn, batch, seed):
    model.zero_grad()
    torch.manual_seed(seed)
    loss, logs = loss_fn(batch)
    loss.backward()
    return (loss.detach(), {k: v.detach() for k, v in logs.items()},
            {k: p.grad.clone() for k, p in model.named_parameters() if p.grad is not None},
            {k: b.clone() for k, b in model.named_buffers()})


@pytest.mark.parametrize("name", list(GENERATIVE))
def test_generative_device_loss_is_one_graph_and_equals_eager(name):
    eager, compiled = _generative(name), _generative(name)
    device_loss = torch.compile(compiled.device_loss, fullgraph=True, backend="eager")
    fields = {"alpha": 60.0} if name == "edm_conditioned" else {}
    for seed, numbers in enumerate(BATCHES):  # new sizes: recompiled with dynamic sizes, still no graph break
        batch = _molecules(seed, *numbers, **fields)
        prepared = compiled.prepare_batch(batch.clone())  # what the trainer does before the device transfer
        loss, logs, grads, buffers = _step(eager, eager.training_loss, batch, 100 + seed)
        loss_c, logs_c, grads_c, buffers_c = _step(
            compiled, lambda b: device_loss(compiled.loss_inputs(b)), prepared, 100 + seed)
        assert loss_c.item() == pytest.approx(loss.item(), rel=1e-10)
        for k in logs:
            assert logs_c[k].item() == pytest.approx(logs[k].item(), rel=1e-10, abs=1e-300)
        # GeoLDM trains its encoder (autoencoder stage) or its denoiser and decoder (latent diffusion), not all
        assert grads_c.keys() == grads.keys() and len(grads) > 0.5 * len(list(eager.parameters()))
        for k in grads:
            torch.testing.assert_close(grads_c[k], grads[k], rtol=1e-10, atol=1e-10 * grads[k].abs().max().item())
        for k in buffers:
            torch.testing.assert_close(buffers_c[k], buffers[k], rtol=1e-10, atol=0)
    assert eager.size_counts.sum() == sum(len(n) for n in BATCHES)  # the size histogram was recorded
    if name == "edm_conditioned":
        assert bool(compiled.context_ready) and compiled.context_shift.item() == pytest.approx(60.5)


def test_categorical_draws_equal_torch_multinomial():
    """``_sample_cat`` (argmax p / Exp(1), no host check) draws what torch.multinomial(p, 1) draws from the same
    random state (zero probabilities included) and leaves the random state where it leaves it."""
    from molequi.models.generative.categorical import CategoricalDiffusion

    probs = torch.rand(500, 5, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    probs[::3, 1] = 0.0
    torch.manual_seed(7)
    expected, after = torch.multinomial(probs.float(), 1).squeeze(-1), torch.rand(3)
    torch.manual_seed(7)
    drawn, after_ours = CategoricalDiffusion._sample_cat(probs), torch.rand(3)
    assert torch.equal(drawn, expected) and torch.equal(after_ours, after)
    assert not (drawn[::3] == 1).any()
    g1, g2 = torch.Generator().manual_seed(3), torch.Generator().manual_seed(3)
    assert torch.equal(CategoricalDiffusion._sample_cat(probs, g1), torch.multinomial(probs.float(), 1, generator=g2)[:, 0])


def test_symmetric_bonds_copy_upper_to_lower():
    """The gather form of ``_symmetric_bonds`` against the boolean-mask assignment it replaced."""
    from molequi.models.generative.categorical import CategoricalDiffusion, edge_lookup
    from molequi.models.generative.graph import fully_connected_edges

    b = torch.tensor([0, 0, 0, 1, 1, 2, 2, 2, 2])
    ei = fully_connected_edges(b, 3)
    rev = edge_lookup(ei, 9, ei.flip(0))
    bonds = torch.randint(0, 5, (ei.shape[1],), generator=torch.Generator().manual_seed(0))
    upper = ei[0] < ei[1]
    expected = bonds.clone()
    expected[rev[upper]] = bonds[upper]
    assert torch.equal(CategoricalDiffusion._symmetric_bonds(None, bonds, ei, rev), expected)


@pytest.mark.qm  # the orbital basis comes from PySCF
def test_hamiltonian_conv_training_step_is_one_graph():
    """The reference check read ``ref_fitted`` on the device every step until every element of the basis had a
    block; with ``prepare_batch``'s elements it is made on the host. Here the basis has H, C, N, O and N never
    comes: after the first batch fitted H, C, O, the whole step (forward, loss) traces into one graph and
    equals the eager step of the unprepared batch."""
    from molequi.models.hamiltonian import HamiltonianConv, HamiltonianConvConfig
    from molequi.tasks.hamiltonian import HamiltonianTask

    def build():
        previous = torch.get_default_dtype()
        torch.set_default_dtype(torch.float64)
        try:
            torch.manual_seed(0)
            cfg = HamiltonianConvConfig(basis="sto-3g", lmax=2, channels=4, num_layers=1, num_radial=6,
                                        radial_hidden=6, elements=[1, 6, 7, 8])
            return HamiltonianConv(cfg).train()
        finally:
            torch.set_default_dtype(previous)

    eager, compiled = build(), build()

    def with_fock(batch, seed):
        nao = eager.layout.pair_structure(batch.numbers, batch.ptr)["nao"]
        batch.fock = torch.randn(int((nao * nao).sum()), dtype=torch.float64,
                                 generator=torch.Generator().manual_seed(seed)) * 0.1
        return batch

    def step(model, fn, batch):
        model.zero_grad()
        loss = fn(batch)
        loss.backward()
        return loss.detach(), {k: p.grad.clone() for k, p in model.named_parameters() if p.grad is not None}

    def loss_of(model):
        return lambda batch: HamiltonianTask(model).loss(batch, model(batch))[0]

    first = with_fock(_molecules(0, [6, 8, 1, 1, 1, 1], [1, 1]), 0)
    step(eager, loss_of(eager), first.clone())
    step(compiled, loss_of(compiled), compiled.prepare_batch(first.clone()))  # fits H, C, O eagerly
    assert not bool(compiled.ref_fitted[7])
    traced = torch.compile(loss_of(compiled), fullgraph=True, backend="eager")
    for seed, numbers in enumerate(([[8, 1, 1], [6, 8, 1, 1]], [[6, 1, 1, 1, 1], [8, 1, 1], [1, 1]]), 1):
        batch = with_fock(_molecules(seed, *numbers), seed)
        loss, grads = step(eager, loss_of(eager), batch.clone())
        loss_c, grads_c = step(compiled, traced, compiled.prepare_batch(batch.clone()))
        assert loss_c.item() == pytest.approx(loss.item(), rel=1e-10)
        assert grads_c.keys() == grads.keys() and len(grads) > 0.8 * len(list(eager.parameters()))
        for k in grads:
            torch.testing.assert_close(grads_c[k], grads[k], rtol=1e-10, atol=1e-10 * grads[k].abs().max().item())
    torch.testing.assert_close(compiled.ref_blocks, eager.ref_blocks, rtol=0, atol=0)


@pytest.mark.parametrize("first", [1, 2])
def test_mace_compiled_training_one_graph_from_one_or_two_structures(first):
    """trainer.compile's MACE step on a first batch of 1 (or 2) structures, then 2 (3), then 5: one graph, no
    recompile (a count of 1 used to be specialised, and the 1-cell branch of edge_vectors taken)."""
    from ase.build import bulk, molecule

    from molequi.config import model_section_from_dict
    from molequi.data.records import atoms_to_data
    from molequi.data.statistics import Statistics
    from molequi.graph.neighbors import RadiusGraph
    from molequi.models import build_model

    torch.manual_seed(0)
    section = model_section_from_dict({"name": "mace", "r_max": 4.0, "hidden_irreps": "8x0e+8x1o", "max_ell": 2,
                                       "correlation": 2, "radial_MLP": [8]})
    model = build_model(section, Statistics(elements=[1, 6, 8, 29], avg_num_neighbors=8.0)).double().train()
    model.compile_training(backend="eager")
    cu = bulk("Cu", "fcc", a=3.61, cubic=True)
    cu.rattle(0.05, seed=0)

    def batch_of(*structures):
        return Batch.from_data_list([RadiusGraph(4.0)(atoms_to_data(a, dtype=torch.float64)) for a in structures])

    dynamo.utils.counters.clear()
    with dynamo.config.patch(error_on_recompile=True):  # a recompile raises
        for structures in ((molecule("CH3CH2OH"), cu)[2 - first:], (molecule("H2O"), cu, molecule("CH4"))[2 - first:],
                           (molecule("CH3COOH"), cu.repeat((2, 1, 1)), molecule("H2O"), molecule("CH4"),
                            molecule("CH3OH"))):
            out = model(batch_of(*structures), compute_forces=True, compute_stress=True)
            (out[K.ENERGY].pow(2).sum() + out[K.FORCES].pow(2).sum() + out[K.STRESS].pow(2).sum()).backward()
            assert out[K.ENERGY].shape == (len(structures),)
    assert dynamo.utils.counters["stats"]["unique_graphs"] == 1


def test_trainer_compile_runs_the_whole_device_loss_compiled():
    """trainer.compile (compile_for_training) compiles ``device_loss`` whole (aot_eager here: eager's random
    draws; Inductor's own generator draws other noise) and ``training_loss`` without a generator runs it: the
    loss and gradients of a prepared batch equal eager's (float64)."""
    from molequi.train.compile import compile_for_training

    eager, compiled = _generative("edm"), _generative("edm")
    compile_for_training(compiled, "aot_eager")

    def eager_device_loss(*args, **kwargs):
        raise AssertionError("training_loss ran the eager device_loss")

    compiled.device_loss = eager_device_loss  # the compiled function holds the method it was given
    dynamo.utils.counters.clear()
    for seed, numbers in enumerate(BATCHES[:2]):
        batch = _molecules(seed, *numbers)
        loss, _, grads, _ = _step(eager, eager.training_loss, batch, seed)
        loss_c, _, grads_c, _ = _step(compiled, compiled.training_loss, compiled.prepare_batch(batch.clone()), seed)
        assert loss_c.item() == pytest.approx(loss.item(), rel=1e-10)
        for k in grads:
            torch.testing.assert_close(grads_c[k], grads[k], rtol=1e-10, atol=1e-10 * grads[k].abs().max().item())
    assert dynamo.utils.counters["stats"]["unique_graphs"] == 2  # the second size: recompiled once, dynamic


def test_trainer_compile_denoiser_runs_without_duck_sizing():
    """The denoiser trainer.compile compiles (EDM's dynamics) runs with duck sizing off and sizes of 1 kept
    symbolic: read from inside the compiled call, and its graphs for 1, 2 then 5 molecules (two: the first
    trace, then one dynamic one) equal eager."""
    from torch.fx.experimental import _config

    from molequi.train.compile import compile_for_training

    model = _generative("edm")
    eager = _generative("edm")
    compile_for_training(model, "aot_eager")
    seen = {"config": None}  # a fixed key set: the write adds no guard that a later call would fail
    inner = model.dynamics.forward

    def spy(*args, **kwargs):
        seen["config"] = (_config.use_duck_shape, _config.backed_size_oblivious)
        return inner(*args, **kwargs)

    model.dynamics.forward = spy
    dynamo.utils.counters.clear()
    for seed, numbers in enumerate(([[6, 1, 1, 1, 1]], BATCHES[0], BATCHES[2][:5])):
        batch = _molecules(seed, *numbers)
        b, n, f = batch.batch, len(numbers), model.latent_features()
        x, h = torch.randn(b.shape[0], 3, dtype=torch.float64), torch.randn(b.shape[0], f, dtype=torch.float64)
        t = torch.rand(n, dtype=torch.float64)
        edges = model.batch_structure(batch)["edge_index"]
        out, ref = model.dynamics(x, h, t, b, edges), eager.dynamics(x, h, t, b, edges)
        for a, r in zip(out, ref):
            torch.testing.assert_close(a, r, rtol=1e-12, atol=1e-12)
    assert seen["config"] == (False, True)
    assert dynamo.utils.counters["stats"]["unique_graphs"] == 2


def test_trainer_compile_trains_edm_as_eager(tmp_path):
    """molequi.train with trainer.compile (aot_eager): the trainer's prepare_batch and the compiled device_loss
    give the eager run's weights after 4 steps (float64, same seed)."""
    from pathlib import Path

    from molequi.config import Config
    from molequi.data.qm9 import read_qm9_xyz
    from molequi.train.run import train

    molecules = read_qm9_xyz(Path(__file__).resolve().parents[2] / "data" / "qm9" / "crescendo")
    weights = []
    for compile_setting in (False, "aot_eager"):
        cfg = Config.from_dict({
            "model": {"name": "edm", "hidden": 8, "layers": 1, "timesteps": 20},
            "task": {"name": "diffusion"},
            "optim": {"lr": 5e-3, "scheduler": "none", "ema_decay": None},
            "trainer": {"max_steps": 4, "batch_size": 4, "accelerator": "cpu", "devices": 1, "precision": "float64",
                        "output": str(tmp_path / str(compile_setting)), "progress_bar": False,
                        "compile": compile_setting, "seed": 0}})
        dynamo.utils.counters.clear()
        result = train(cfg, splits={"train": molecules[:16], "valid": molecules[16:20], "test": []},
                       enable_summary=False)
        assert result.global_step == 4
        weights.append([p.detach().clone() for p in result.module.task.model.parameters()])
        assert (dynamo.utils.counters["stats"]["unique_graphs"] > 0) == bool(compile_setting)
    for a, b in zip(*weights):
        torch.testing.assert_close(b, a, rtol=1e-10, atol=1e-12)
