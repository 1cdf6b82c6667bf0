"""In-memory records with graphs built on first access and kept per process (``data.graphs: lazy``, and
``auto`` under DDP): the same graphs as the eager list (checked against ASE's neighbour list), each built
once, only the indices of a process's shard built, and the same statistics as the eager path."""

from types import SimpleNamespace

import numpy as np
import pytest
import torch

from molequi.data.statistics import compute_statistics, statistics_sample
from molequi.train.data import CachedGraphs, RecordsDataModule, lazy_graphs, statistics_records, with_graphs

CUTOFF = 3.0


def periodic_records(n=12, seed=0):
    """Rattled fcc Cu / Ni cells (periodic, with images inside the cutoff) labelled by ASE's EMT."""
    from ase.build import bulk
    from ase.calculators.emt import EMT

    from molequi.data.records import atoms_to_data

    rng = np.random.default_rng(seed)
    out = []
    for k in range(n):
        atoms = bulk("Cu" if k % 2 else "Ni", "fcc", a=3.6, cubic=bool(k % 3 == 0)).repeat((1, 1, 2))
        atoms.rattle(0.05, seed=int(rng.integers(1 << 30)))
        atoms.calc = EMT()
        atoms.info["energy"] = atoms.get_potential_energy()
        atoms.arrays["forces"] = atoms.get_forces()
        atoms.calc = None
        out.append(atoms_to_data(atoms))
    return out


def ase_edges(record):
    """{(i, j, shift)} within CUTOFF from ASE (the independent reference)."""
    from ase.neighborlist import neighbor_list

    from molequi.data.records import data_to_atoms

    i, j, S = neighbor_list("ijS", data_to_atoms(record), CUTOFF)
    return {(int(a), int(b), tuple(int(s) for s in sv)) for a, b, sv in zip(i, j, S)}


def edges(graph):
    """{(sender, receiver, unit shift)} of a graph record (edge_vectors: x_receiver - x_sender + S @ cell)."""
    ei, us = graph["edge_index"], graph["unit_shifts"]
    return {(int(a), int(b), tuple(int(s) for s in sv)) for a, b, sv in zip(ei[0], ei[1], us)}


class Counting:
    """Wraps a ``RadiusGraph``: records how often each structure (by id) had its graph built."""

    def __init__(self, graph, records):
        self.graph, self.index = graph, {id(r): k for k, r in enumerate(records)}
        self.calls: list[int] = []

    def __call__(self, record):
        self.calls.append(self.index[id(record)])
        return self.graph(record)


def test_cached_graphs_equal_the_eager_ones_and_are_built_once():
    records = periodic_records()
    eager = with_graphs(records, CUTOFF)
    lazy = with_graphs(records, CUTOFF, lazy=True)
    assert isinstance(lazy, CachedGraphs) and isinstance(eager, list) and len(lazy) == len(records)
    lazy.graph = counter = Counting(lazy.graph, lazy.records)
    for _ in range(3):  # three epochs
        for k in range(len(records)):
            g, e = lazy[k], eager[k]
            reference = ase_edges(records[k])
            assert reference and any(s != (0, 0, 0) for *_, s in reference)  # periodic images present
            assert edges(g) == edges(e) == reference
            # shifts (Å) are the unit shifts times the cell, same as the eager graph's
            cell = records[k]["cell"].reshape(3, 3).double()
            assert torch.allclose(g["shifts"].double(), g["unit_shifts"].double() @ cell, atol=1e-12)
            assert torch.equal(g["shifts"], e["shifts"]) and torch.equal(g["edge_index"], e["edge_index"])
    assert lazy[-1] is lazy[len(records) - 1]
    assert sorted(counter.calls) == list(range(len(records))) and lazy.n_built == len(records)
    assert "edge_index" not in records[0]  # the records themselves stay without graphs


@pytest.mark.parametrize("world,rank", [(3, 0), (3, 2), (2, 1)])
def test_a_process_builds_only_the_graphs_of_its_shard(world, rank):
    records = periodic_records(10)
    train = with_graphs(records, CUTOFF, lazy=True)
    valid = with_graphs(records[:7], CUTOFF, lazy=True)
    train.graph = counter = Counting(train.graph, train.records)
    module = RecordsDataModule(train, valid, [], batch_size=2, valid_batch_size=3, shuffle=True, seed=5)
    module.trainer = SimpleNamespace(world_size=world, global_rank=rank)
    loader = module.train_dataloader()
    shard = set(loader.sampler)  # DistributedSampler's indices for this rank (padded to equal length)
    n_graphs = 0
    for _ in range(2):  # two epochs: the second is served from the cache
        loader.sampler.set_epoch(0)
        n_graphs += sum(batch.num_graphs for batch in loader)
    assert n_graphs == 2 * len(loader.sampler)
    assert set(counter.calls) == shard and len(counter.calls) == len(shard)  # each shard index once
    assert len(shard) <= -(-len(records) // world) < len(records)
    list(module.val_dataloader())
    assert sorted(valid._cache) == list(range(rank, 7, world))


def test_statistics_equal_eager_and_lazy_and_build_no_graph():
    records = periodic_records(9)
    eager = compute_statistics(statistics_sample(with_graphs(records, CUTOFF)), CUTOFF)
    lazy_records = with_graphs(records, CUTOFF, lazy=True)
    lazy = compute_statistics(statistics_sample(statistics_records(lazy_records)), CUTOFF)
    assert lazy_records.n_built == 0
    assert lazy.to_dict() == eager.to_dict()
    # average neighbour count from ASE's neighbour list, independently of molequi's
    n_pairs = sum(len(ase_edges(r)) for r in records)
    n_atoms = sum(int(r["numbers"].numel()) for r in records)
    assert lazy.avg_num_neighbors == pytest.approx(n_pairs / n_atoms, rel=1e-14)


def test_graph_mode_auto_is_lazy_only_with_several_processes():
    from molequi.config import Config
    from molequi.errors import ConfigError

    assert [lazy_graphs(m, w) for m in ("auto", "eager", "lazy") for w in (1, 2)] == [
        False, True, False, False, True, True]
    with pytest.raises(ConfigError, match="data.graphs"):
        lazy_graphs("sometimes", 1)
    assert Config.from_dict({"data": {"graphs": "lazy"}}).data.graphs == "lazy"
    with pytest.raises(ConfigError):
        Config.from_dict({"data": {"graphs": "sometimes"}})
