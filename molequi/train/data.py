"""From the ``data`` section of a config to train / validation / test record lists and data loaders.

Records come from ``molequi.data.datasets.build_dataset`` (by name: xyz, db, traj, rmd17, qm9, ...). A
dataset that returns its own splits (a dict with ``train`` / ``val`` / ``test``) keeps them; a flat one
is split here: index files if given, else a seeded random permutation with ``n_valid`` (or
``valid_fraction``) validation structures and ``n_train`` (or the rest) training structures. A separate
``test`` file is read with the same options. Graphs (``RadiusGraph(cutoff)``) of in-memory records are
built once: up front (``data.graphs: eager``) or on first access and then kept by the process that read
them (``lazy``: under DDP each process holds the graphs of its own shard only); ``auto`` is eager on one
process and lazy on several. Datasets read on access (LMDB) build each graph on access and keep none.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import numpy as np
import torch

from molequi.data.datasets import DataConfig
from molequi.errors import ConfigError, DatasetError


def is_lazy(records) -> bool:
    """Datasets read on access (``lazy = True``, e.g. OC20 LMDBs) are never turned into lists."""
    return bool(getattr(records, "lazy", False))


def _as_list(ds):
    if isinstance(ds, list) or is_lazy(ds):
        return ds
    return [ds[i] for i in range(len(ds))]


class LazyGraphs(torch.utils.data.Dataset):
    """``records[i]`` with its neighbour graph built on access: memory stays flat with the dataset size."""

    lazy = True

    def __init__(self, records, cutoff: float):
        from molequi.graph.neighbors import RadiusGraph

        self.records, self.graph = records, RadiusGraph(cutoff)

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, i):
        return self.graph(self.records[int(i)])


class CachedGraphs(LazyGraphs):
    """``records[i]`` with its neighbour graph built on first access and kept by this process.

    Under DDP every process reads only the indices its sampler gives it, so a process of a run with W
    processes ends up holding about 1/W of the training graphs instead of all of them (as an eager
    ``with_graphs`` list would). With ``num_workers > 0`` each loader worker keeps its own cache.
    ``records`` stays the list of records without graphs (used for statistics, which count neighbours
    without keeping graphs). ``n_built``: graphs built so far in this process.
    """

    def __init__(self, records: Sequence, cutoff: float):
        super().__init__(list(records), cutoff)
        self._cache: dict[int, object] = {}

    def __getitem__(self, i):
        i = int(i)
        if i < 0:
            i += len(self.records)
        graph = self._cache.get(i)
        if graph is None:
            graph = self._cache[i] = self.graph(self.records[i])
        return graph

    @property
    def n_built(self) -> int:
        return len(self._cache)


GRAPH_MODES = ("auto", "eager", "lazy")


def lazy_graphs(mode: str, world_size: int) -> bool:
    """In-memory records as ``CachedGraphs`` (``data.graphs``; auto: lazy when ``world_size > 1``)."""
    if mode not in GRAPH_MODES:
        raise ConfigError(f"data.graphs is '{mode}'; use one of {', '.join(GRAPH_MODES)}")
    return mode == "lazy" or (mode == "auto" and int(world_size) > 1)


def statistics_records(records):
    """What ``compute_statistics(statistics_sample(.), cutoff)`` should read for graph records ``records``:
    for ``CachedGraphs`` the records without graphs (neighbours are then counted with the same
    ``neighbor_list`` call as ``RadiusGraph``, so the statistics equal the eager ones, and no process keeps
    graphs of structures outside its shard); otherwise ``records`` itself."""
    return records.records if isinstance(records, CachedGraphs) else records


def load_splits(data: DataConfig) -> dict[str, list]:
    """``{"train": [...], "valid": [...], "test": [...]}`` (test may be empty) of records without graphs."""
    from molequi.data.datasets import build_dataset

    built = build_dataset(data)
    if isinstance(built, dict):
        train = _as_list(built.get("train", []))
        valid = _as_list(built.get("val", built.get("valid", [])))
        test = _as_list(built.get("test", []))
        if not train:
            raise DatasetError(f"dataset '{data.name}' returned no training split")
    else:
        records = _as_list(built)
        train, valid = split_records(records, data)
        test = []
    if data.test:
        test = _as_list(build_dataset(dataclasses.replace(data, root=data.test)))
    return apply_dispersion({"train": train, "valid": valid, "test": test}, data.dispersion)


def apply_dispersion(splits: dict, spec) -> dict:
    """``splits`` with the D3 correction ``spec`` (``data.dispersion``; None: unchanged) subtracted from
    every split's labels."""
    if spec is None:
        return splits
    from molequi.calculators.dispersion import D3

    d3 = D3.from_spec(spec)
    return {name: subtract_dispersion(records or [], d3, name) for name, records in splits.items()}


def subtract_dispersion(records, d3, split: str = "train") -> list:
    """Copies of ``records`` whose energy / force / stress labels lack the D3 correction ``d3`` (the model
    learns the rest; ``MolequiCalculator.from_checkpoint`` adds the correction back)."""
    from molequi import keys as K
    from molequi.data.records import data_to_atoms, voigt_to_matrix

    if is_lazy(records):
        raise ConfigError(f"data.dispersion needs the {split} structures in memory; this dataset is read on "
                          "access (LMDB): subtract the correction when the LMDB is written, or use an in-memory "
                          "dataset")
    out = []
    for i, rec in enumerate(records):
        rec = rec.clone()
        atoms = data_to_atoms(rec)
        corr = d3(atoms, stress=K.STRESS in rec)
        if K.ENERGY in rec:
            rec[K.ENERGY] = rec[K.ENERGY] - corr["energy"]
        if K.FORCES in rec:
            rec[K.FORCES] = rec[K.FORCES] - torch.as_tensor(corr["forces"], dtype=rec[K.FORCES].dtype)
        if K.STRESS in rec:
            if "stress" not in corr:
                raise DatasetError(f"{split} structure {i} has a stress label but is not periodic: the D3 "
                                   "stress is undefined")
            rec[K.STRESS] = rec[K.STRESS] - torch.as_tensor(voigt_to_matrix(corr["stress"]),
                                                            dtype=rec[K.STRESS].dtype).reshape(1, 3, 3)
        out.append(rec)
    return out


def split_indices(n: int, data: DataConfig) -> tuple[np.ndarray, np.ndarray]:
    """Training and validation indices into ``range(n)`` as the ``data`` section asks."""
    from molequi.data.datasets import read_index_file

    if data.train_indices or data.valid_indices:
        if not (data.train_indices and data.valid_indices):
            raise ConfigError("give both data.train_indices and data.valid_indices, or neither")
        tr = read_index_file(data.train_indices, n)
        va = read_index_file(data.valid_indices, n)
        if np.intersect1d(tr, va).size:
            raise DatasetError("training and validation index files overlap", source=data.valid_indices)
        return tr, va
    perm = np.random.default_rng(data.seed).permutation(n)
    n_valid = data.n_valid if data.n_valid is not None else int(round(data.valid_fraction * n))
    if n > 1:
        n_valid = max(n_valid, 1) if data.n_valid is None and data.valid_fraction > 0 else n_valid
    n_train = data.n_train if data.n_train is not None else n - n_valid
    if n_valid < 0 or n_train <= 0 or n_train + n_valid > n:
        raise DatasetError(f"cannot take {n_train} training + {n_valid} validation structures from {n}",
                           hint="lower data.n_train / data.n_valid / data.valid_fraction")
    return np.sort(perm[n_valid:n_valid + n_train]), np.sort(perm[:n_valid])


def split_records(records: Sequence, data: DataConfig) -> tuple[Sequence, Sequence]:
    tr, va = split_indices(len(records), data)
    if is_lazy(records):  # a dataset read on access stays lazy: index views, nothing read now
        return _lazy_subset(records, tr), _lazy_subset(records, va)
    return [records[i] for i in tr], [records[i] for i in va]


def _lazy_subset(records, indices):
    subset = torch.utils.data.Subset(records, [int(i) for i in indices])
    subset.lazy = True
    return subset


def with_graphs(records: Sequence, cutoff: float | None, progress: bool = False, lazy: bool = False):
    """Records with ``edge_index`` / ``unit_shifts`` / ``shifts`` within ``cutoff`` (None: unchanged).

    In-memory records: a list of graphs built now, or with ``lazy`` a ``CachedGraphs`` that builds each on
    first access and keeps it. Lazy datasets (LMDB): a ``LazyGraphs`` (built on every access, never kept).
    """
    if cutoff is None:
        return records if is_lazy(records) else list(records)
    if is_lazy(records):
        return LazyGraphs(records, cutoff)
    if lazy:
        return CachedGraphs(records, cutoff)
    from tqdm.auto import tqdm

    from molequi.graph.neighbors import RadiusGraph

    graph = RadiusGraph(cutoff)
    return [graph(r) for r in tqdm(records, desc="neighbour lists", disable=not progress, leave=False)]


def make_loader(records: Sequence, batch_size: int, shuffle: bool, num_workers: int = 0):
    from torch_geometric.loader import DataLoader

    return DataLoader(records if is_lazy(records) else list(records), batch_size=batch_size, shuffle=shuffle,
                      num_workers=num_workers, persistent_workers=num_workers > 0)




class ResumableSampler(torch.utils.data.distributed.DistributedSampler):
    """``DistributedSampler`` (order fixed by ``seed + epoch``) that can start an epoch part-way through.

    Lightning calls ``set_epoch`` at every epoch start. After a resume from a checkpoint written after
    ``batches`` batches of epoch ``epoch`` (``resume_at(epoch, batches, batch_size)``), the first iteration of
    that epoch skips those batches' indices, so the resumed run sees exactly the structures the uninterrupted
    run would have seen next. With one process this is a seeded shuffle of the whole training set.
    """

    def __init__(self, dataset, num_replicas: int = 1, rank: int = 0, shuffle: bool = True, seed: int = 0):
        super().__init__(dataset, num_replicas=num_replicas, rank=rank, shuffle=shuffle, seed=seed,
                         drop_last=False)
        self._resume: tuple[int, int] | None = None

    def resume_at(self, epoch: int, batches: int, batch_size: int) -> None:
        self._resume = (int(epoch), int(batches) * int(batch_size))

    def __iter__(self):
        indices = list(super().__iter__())
        if self._resume is not None and self._resume[0] == self.epoch:
            indices = indices[self._resume[1]:]
            self._resume = None
        return iter(indices)


def _lightning_datamodule_base():
    import lightning as L

    return L.LightningDataModule


class RecordsDataModule(_lightning_datamodule_base()):
    """Train / validation / test loaders over record lists, sharded by us under DDP (the Trainer is built
    with ``use_distributed_sampler=False``).

    Training: a ``ResumableSampler`` (a ``DistributedSampler`` ordered by ``seed + epoch`` that honours
    ``shuffle`` and restarts mid-epoch at the checkpointed batch), so with ``shuffle=False`` the global batch
    of step k is structures [k*B*W, (k+1)*B*W) for batch size B and W processes, exactly the batch one
    process with batch size B*W sees. Validation / test: process r takes records r, r+W, r+2W, ... without
    padding, so summed metrics count every structure exactly once.

    Why not Lightning's sampler injection (Lightning 2.6, ``trainer/connectors/data_connector.py``): it leaves
    a training loader alone when its sampler already is a ``DistributedSampler`` (so the training side would
    work either way), but it replaces the sampler of every validation / test loader by a
    ``DistributedSampler`` that pads the shards with repeated structures to equal length, so summed metrics
    would count some structures twice; and for a loader it does replace in training it forces
    ``shuffle=True`` (``_process_dataloader``). Turning the injection off and sharding here avoids both.
    """

    def __init__(self, train: Sequence, valid: Sequence, test: Sequence, batch_size: int,
                 valid_batch_size: int, shuffle: bool = True, num_workers: int = 0, seed: int = 0):
        super().__init__()
        self.train_records, self.valid_records, self.test_records = (
            r if is_lazy(r) else list(r) for r in (train, valid, test))
        self.batch_size, self.valid_batch_size = batch_size, valid_batch_size
        self.shuffle, self.num_workers, self.seed = shuffle, num_workers, seed
        self._resume_state: dict | None = None

    def _world(self) -> tuple[int, int]:
        trainer = getattr(self, "trainer", None)
        if trainer is None:
            return 1, 0
        return int(trainer.world_size), int(trainer.global_rank)

    def train_dataloader(self):
        from torch_geometric.loader import DataLoader

        world, rank = self._world()
        sampler = ResumableSampler(self.train_records, num_replicas=world, rank=rank, shuffle=self.shuffle,
                                   seed=self.seed)
        if self._resume_state is not None:
            sampler.resume_at(self._resume_state["epoch"], self._resume_state["batches"], self.batch_size)
            self._resume_state = None
        return DataLoader(self.train_records, batch_size=self.batch_size, sampler=sampler,
                          num_workers=self.num_workers, persistent_workers=self.num_workers > 0)

    # ---- position in the data order, saved in Lightning checkpoints --------------------------------------
    def state_dict(self) -> dict:
        """``{"epoch", "batches"}``: training batches of the current epoch processed when the checkpoint
        is written (``ModelCheckpoint`` saves after the step of its batch, or after validation)."""
        trainer = getattr(self, "trainer", None)
        if trainer is None:
            return {}
        progress = trainer.fit_loop.epoch_loop.batch_progress.current
        return {"epoch": int(trainer.current_epoch), "batches": int(progress.processed)}

    def load_state_dict(self, state: dict) -> None:
        self._resume_state = dict(state) if state else None

    def _eval_loader(self, records):
        world, rank = self._world()
        if is_lazy(records):
            shard = _lazy_subset(records, range(rank, len(records), world))
        else:
            shard = records[rank::world]
        return make_loader(shard, self.valid_batch_size, False, self.num_workers)

    def val_dataloader(self):
        return self._eval_loader(self.valid_records)

    def test_dataloader(self):
        return self._eval_loader(self.test_records)


__all__ = ["LazyGraphs", "CachedGraphs", "GRAPH_MODES", "lazy_graphs", "statistics_records",
           "ResumableSampler", "is_lazy", "load_splits", "split_indices", "split_records", "with_graphs",
           "make_loader", "RecordsDataModule"]
