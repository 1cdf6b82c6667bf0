"""Active learning: committee MD -> frames where the committee disagrees -> reference labels -> retrain.

    from molequi.train.active import learn, load_learn_config
    result = learn(load_learn_config("learn.yaml"))          # or: molequi learn learn.yaml

Round 0 labels the start frames (rattled copies of the start structures: a file, or SMILES embedded in 3D
by RDKit) and trains a committee of K models (``committee.seeds``). Every later round:

1. MD: ``md.runs`` Langevin NVT runs (``molequi.simulate.md.run_md``) of ``md.time_fs`` with the committee
   (``MolequiCalculator(models=[...])``, mean forces) at the current temperature of ``md.temperatures``.
   A frame is checked every ``md.stride`` steps; its *disagreement* is the largest per-atom committee force
   spread ``max_i forces_std_norm_i`` (eV/Å, RMS distance of the members' force vectors from their mean).
   A run stops early (``BlowUpGuard``) above ``md.stop_disagreement``, on atoms closer than
   ``md.min_distance`` or on a force above ``md.max_force``.
2. Stability: the *time survived* of a run is the MD time before its first frame above
   ``select.threshold`` (the whole run if none and the guard never fired). When every run survives
   ``stop.stable_fs``, the temperature is stable: at the last temperature the loop has converged, otherwise
   the next round moves one temperature up (temperatures rise only through stability).
3. Selection (``select_frames``): the frames above the threshold, largest disagreement first, keeping at
   most one frame per ``select.window`` MD steps of a run (one excursion does not fill the batch), at most
   ``select.max_frames``. A run that was stopped by the guard with no frame above the threshold gives its
   last written frame.
4. Labels: ``labeller`` (``xtb`` through tblite, ``pyscf`` RHF / RKS, or any ASE calculator
   ``module:Class`` with ``kwargs``) in ``labeller.workers`` worker processes
   (``concurrent.futures.ProcessPoolExecutor``), or through Dask distributed / submitit
   (``labeller.executor``) when those packages are installed.
5. Training: each member fine-tunes from its own model of the previous round (``model.init_from``) on all
   labelled frames; a fixed, deterministic part of the frames (``committee.valid_fraction``) validates.

The loop ends when converged, after ``stop.max_rounds`` rounds or when ``stop.max_labelled`` frames are
labelled. Everything is on disk under ``output`` (each file written atomically)::

    config.yaml                      the validated config (a rerun with another config is refused, except
                                     for the stop section, so a budget can be raised)
    state.json                       rounds completed, temperature level, per-round history, stop reason
    learn.csv, learn.png             the history: frames labelled, validation errors, max disagreement,
                                     MD time survived, per round
    round_NNN/selected.extxyz        frames chosen for labelling (round 0: the start frames)
    round_NNN/md.json, md_K.extxyz   MD summary and trajectories (with forces_std_norm per atom)
    round_NNN/labelled.extxyz        the reference labels (energy eV, forces eV/Å): the labelled set is
                                     the union of these files
    round_NNN/members/K/             a molequi training run (model.pt, checkpoints, metrics.json; train.log
                                     holds its per-epoch lines when stdout is not a terminal)

Rerunning the same config continues from the last completed step (a training killed in the middle
continues from its own ``last.ckpt``).
"""

from __future__ import annotations

import copy
import csv
import io
import json
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np

from molequi.errors import ConfigError, InputError

EXECUTORS = ("process", "dask", "submitit")
LABELLERS = ("xtb", "pyscf", "ase")
XTB_METHODS = ("GFN2-xTB", "GFN1-xTB", "IPEA1-xTB")
STATE_VERSION = 1


# ------------------------------------------------------------------------------------------------ config
@dataclass
class StartConfig:
    """Start structures and the frames of round 0."""

    file: str | None = None  # an ASE-readable file (extxyz, ...): every frame is a start structure
    smiles: list[str] = field(default_factory=list)  # or SMILES, embedded in 3D by RDKit (ETKDG + MMFF)
    conformers: int = 1  # RDKit conformers per SMILES (embedding seeds seed, seed + 1, ...)
    n_frames: int = 20  # labelled frames of round 0: rattled copies of the start structures
    rattle: float = 0.05  # Å, standard deviation of the Gaussian displacement of each coordinate
    seed: int = 0  # seed of the embedding and of the displacements


@dataclass
class LabellerConfig:
    """The reference method and where it runs."""

    name: Literal["xtb", "pyscf", "ase"] = "xtb"
    method: str = "GFN2-xTB"  # xtb: GFN2-xTB | GFN1-xTB | IPEA1-xTB; pyscf: hf or a functional (b3lyp)
    basis: str = "def2-svp"  # pyscf basis set
    charge: int = 0  # total charge (xtb, pyscf)
    calculator: str | None = None  # ase: import path 'module:Class' of an ASE calculator
    kwargs: dict[str, Any] = field(default_factory=dict)  # ase: keyword arguments of that class
    workers: int = 1  # parallel labelling processes (1: in this process)
    executor: Literal["process", "dask", "submitit"] = "process"  # process pool, Dask distributed, submitit
    # dask: address of a running scheduler, else LocalCluster keyword arguments (n_workers, processes, ...);
    # submitit: folder, cluster (slurm | local | debug) and AutoExecutor parameters (timeout_min, slurm_*)
    executor_options: dict[str, Any] = field(default_factory=dict)


@dataclass
class CommitteeConfig:
    """The committee: K members trained alike from different seeds."""

    size: int = 3  # number of members K (>= 2: the disagreement needs two)
    seeds: list[int] | None = None  # one training seed per member (null: 0 .. K-1)
    train: dict[str, Any] = field(default_factory=dict)  # model / task / optim / trainer of molequi train
    finetune_max_epochs: int | None = None  # epochs of the rounds after round 0 (null: trainer.max_epochs)
    valid_fraction: float = 0.1  # every round(1 / fraction)-th labelled frame validates (0: none)


@dataclass
class MDConfig:
    """The committee MD of each round (Langevin NVT)."""

    temperatures: list[float] = field(default_factory=lambda: [500.0])  # K, rising as each is stable
    time_fs: float = 1000.0  # length of each run, fs
    timestep: float = 0.5  # fs
    friction: float = 0.01  # Langevin friction, 1/fs
    runs: int = 1  # runs per round (start structures in turn)
    stride: int = 5  # steps between checked (and written) frames
    stop_disagreement: float | None = None  # eV/Å: stop a run above this (null: 5 x select.threshold)
    min_distance: float | None = 0.5  # Å: stop a run when two atoms come closer
    max_force: float | None = None  # eV/Å: stop a run on a larger committee-mean force


@dataclass
class SelectConfig:
    """Which MD frames get labelled."""

    threshold: float = 0.1  # eV/Å: frames whose largest per-atom committee force spread exceeds this
    window: int = 50  # MD steps: at most one selected frame per window of a run
    max_frames: int = 10  # at most this many frames per round


@dataclass
class StopConfig:
    """When the loop ends."""

    stable_fs: float | None = None  # fs below the threshold that counts as stable (null: md.time_fs)
    max_rounds: int = 10  # rounds after round 0
    max_labelled: int = 1000  # labelled frames in all


@dataclass
class LearnConfig:
    output: str = "runs/learn"  # run directory
    start: StartConfig = field(default_factory=StartConfig)
    labeller: LabellerConfig = field(default_factory=LabellerConfig)
    committee: CommitteeConfig = field(default_factory=CommitteeConfig)
    md: MDConfig = field(default_factory=MDConfig)
    select: SelectConfig = field(default_factory=SelectConfig)
    stop: StopConfig = field(default_factory=StopConfig)
    seed: int = 0  # seed of the MD velocities and noise

    # ---------------------------------------------------------------------------------------------------
    @property
    def seeds(self) -> list[int]:
        return list(self.committee.seeds) if self.committee.seeds is not None else list(
            range(self.committee.size))

    @property
    def stable_fs(self) -> float:
        return self.md.time_fs if self.stop.stable_fs is None else self.stop.stable_fs

    @property
    def stop_disagreement(self) -> float:
        s = self.md.stop_disagreement
        return 5.0 * self.select.threshold if s is None else s

    def validate(self) -> None:
        s, lab, c, md, sel, st = self.start, self.labeller, self.committee, self.md, self.select, self.stop
        if (s.file is None) == (not s.smiles):
            raise ConfigError("start: give either start.file (a structure file) or start.smiles, not both "
                              "and not neither")
        if s.n_frames < 1 or s.conformers < 1 or s.rattle < 0:
            raise ConfigError(f"start: need n_frames >= 1, conformers >= 1, rattle >= 0 (got {s.n_frames}, "
                              f"{s.conformers}, {s.rattle})")
        if lab.name == "ase":
            if not lab.calculator or ":" not in lab.calculator:
                raise ConfigError("labeller.calculator: the ase labeller needs an import path "
                                  f"'module:Class' (e.g. 'ase.calculators.emt:EMT'), got {lab.calculator!r}")
        elif lab.calculator is not None or lab.kwargs:
            raise ConfigError(f"labeller.calculator / labeller.kwargs belong to the ase labeller, not "
                              f"'{lab.name}'")
        if lab.name == "xtb" and lab.method not in XTB_METHODS:
            raise ConfigError(f"labeller.method: xtb methods are {', '.join(XTB_METHODS)}, got "
                              f"{lab.method!r}")
        if lab.workers < 1:
            raise ConfigError(f"labeller.workers must be >= 1, got {lab.workers}")
        if lab.executor_options and lab.executor == "process":
            raise ConfigError("labeller.executor_options belong to executor: dask or submitit")
        if c.size < 2:
            raise ConfigError(f"committee.size must be >= 2 (the disagreement needs two members), got "
                              f"{c.size}")
        if c.seeds is not None and (len(c.seeds) != c.size or len(set(c.seeds)) != c.size):
            raise ConfigError(f"committee.seeds needs {c.size} different seeds (committee.size), got "
                              f"{c.seeds}")
        if not 0 <= c.valid_fraction < 1:
            raise ConfigError(f"committee.valid_fraction must be in [0, 1), got {c.valid_fraction}")
        if "data" in c.train or "dataset" in c.train:
            raise ConfigError("committee.train.data: the labelled frames are the data; remove the data "
                              "section (keep model, task, optim, trainer)")
        if "output" in (c.train.get("trainer") or {}):
            raise ConfigError("committee.train.trainer.output: members are written under output/round_NNN/"
                              "members/K; remove it")
        if not md.temperatures or any(t <= 0 for t in md.temperatures):
            raise ConfigError(f"md.temperatures must be positive K, got {md.temperatures}")
        if md.time_fs <= 0 or md.timestep <= 0 or md.stride < 1 or md.runs < 1:
            raise ConfigError("md: need time_fs > 0, timestep > 0, stride >= 1, runs >= 1")
        if sel.threshold <= 0 or sel.window < 0 or sel.max_frames < 1:
            raise ConfigError("select: need threshold > 0 eV/Å, window >= 0 steps, max_frames >= 1")
        if self.stop_disagreement <= sel.threshold:
            raise ConfigError(f"md.stop_disagreement ({self.stop_disagreement}) must exceed select.threshold "
                              f"({sel.threshold}), or no frame above the threshold would be kept")
        if not 0 < self.stable_fs <= md.time_fs:
            raise ConfigError(f"stop.stable_fs ({self.stable_fs}) must be in (0, md.time_fs = {md.time_fs}]")
        if st.max_rounds < 0 or st.max_labelled < s.n_frames:
            raise ConfigError(f"stop: need max_rounds >= 0 and max_labelled >= start.n_frames ({s.n_frames})")

    def to_dict(self) -> dict:
        from molequi.config import to_plain

        return to_plain(self)


SECTIONS = {"start": StartConfig, "labeller": LabellerConfig, "committee": CommitteeConfig, "md": MDConfig,
            "select": SelectConfig, "stop": StopConfig}


def learn_config_from_dict(raw: dict | None) -> LearnConfig:
    """A validated ``LearnConfig`` from plain values (unknown keys and wrong types are ``ConfigError``;
    the committee's training sections are checked by ``molequi.config.Config.from_dict``)."""
    from molequi.config import _check_keys, from_dict

    raw = dict(raw or {})
    _check_keys(raw, ["output", "seed", *SECTIONS], "")
    start = dict(raw.get("start") or {})
    if isinstance(start.get("smiles"), str):
        start["smiles"] = [start["smiles"]]
    raw["start"] = start
    sections = {name: from_dict(cls, raw.get(name) or {}, name) for name, cls in SECTIONS.items()}
    top = {k: raw[k] for k in ("output", "seed") if k in raw}
    cfg = from_dict(LearnConfig, {**top, **sections}, "")
    cfg.validate()
    member_config(cfg, 0, Path(cfg.output) / "check")  # the training sections, checked now
    return cfg


def load_learn_config(path: str | os.PathLike, overrides: list[str] | None = None) -> LearnConfig:
    """``learn_config_from_dict`` of a YAML file with dotted ``section.key=value`` overrides."""
    from molequi.config import apply_overrides, read_yaml_sections

    raw = read_yaml_sections(path)
    try:
        return learn_config_from_dict(apply_overrides(raw, overrides))
    except ConfigError as exc:
        raise ConfigError(f"{path}: {exc}") from exc


def member_config(cfg: LearnConfig, member: int, out: Path, init_from: Path | None = None):
    """The ``molequi.config.Config`` that trains committee member ``member`` into ``out``; with
    ``init_from`` it fine-tunes from that model (architecture from the checkpoint)."""
    from molequi.config import Config

    raw = copy.deepcopy(cfg.committee.train)
    trainer = dict(raw.get("trainer") or {})
    trainer.update(output=str(out), seed=cfg.seeds[member])
    if "progress_bar" not in trainer and not sys.stderr.isatty():
        trainer["progress_bar"] = False
    if init_from is not None:
        model = dict(raw.get("model") or {})
        raw["model"] = {"name": model.get("name", "mace"), "init_from": str(init_from),
                        **({"freeze": model["freeze"]} if "freeze" in model else {})}
        if cfg.committee.finetune_max_epochs is not None:
            trainer["max_epochs"] = cfg.committee.finetune_max_epochs
    raw["trainer"] = trainer
    try:
        return Config.from_dict(raw)
    except ConfigError as exc:
        raise ConfigError(f"committee.train: {exc}") from exc


# ------------------------------------------------------------------------------------------- selection
def frame_disagreement(forces_std_norm) -> float:
    """The disagreement of one frame: the largest per-atom committee force spread (eV/Å)."""
    return float(np.max(np.asarray(forces_std_norm, dtype=float), initial=0.0))


def select_frames(disagreement, steps, threshold: float, window: int, max_frames: int) -> list[int]:
    """Indices (ascending) of the frames to label.

    Candidates are the frames with ``disagreement > threshold``; they are taken largest first, skipping a
    frame whose ``steps`` value lies within ``window`` steps (``|Δstep| < window``) of one already taken, up
    to ``max_frames``. Frames of different runs get steps that never come within a window of each other.
    """
    d = np.asarray(disagreement, dtype=float)
    s = np.asarray(steps, dtype=np.int64)
    if d.shape != s.shape:
        raise InputError(f"disagreement {d.shape} and steps {s.shape} differ in shape")
    order = [int(i) for i in np.argsort(-d, kind="stable") if d[i] > threshold]
    taken: list[int] = []
    for i in order:
        if len(taken) >= max_frames:
            break
        if all(abs(int(s[i]) - int(s[j])) >= window for j in taken):
            taken.append(i)
    return sorted(taken)


# ------------------------------------------------------------------------------------------- labelling
def _import_calculator(path: str):
    import importlib

    module, _, name = path.partition(":")
    try:
        return getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError) as exc:
        raise ConfigError(f"labeller.calculator: cannot import {path!r} ({type(exc).__name__}: {exc})"
                          ) from exc


def pyscf_energy_forces(atoms, method: str, basis: str, charge: int = 0) -> tuple[float, np.ndarray]:
    """PySCF RHF (``method: hf``) or RKS (``method``: a functional) energy (eV) and forces (eV/Å) of
    ``atoms``, forces = -∇E from PySCF's analytic gradient."""
    from molequi.qc.pyscf_labels import build_mol, make_rks
    from molequi.units import HARTREE_PER_BOHR_TO_EV_PER_ANGSTROM, HARTREE_TO_EV

    mol = build_mol(atoms.numbers, atoms.positions, basis, charge=charge)
    if method.lower() in ("hf", "rhf"):
        from pyscf import scf

        mf = scf.RHF(mol)
        mf.conv_tol = 1e-10
    else:
        mf = make_rks(mol, method, conv_tol=1e-10)
    energy = mf.kernel()
    if not mf.converged:
        raise InputError(f"PySCF {method}/{basis} did not converge", hint="check the geometry")
    grad = mf.nuc_grad_method().kernel()
    return float(energy) * HARTREE_TO_EV, -np.asarray(grad) * HARTREE_PER_BOHR_TO_EV_PER_ANGSTROM


def make_labeller(spec: LabellerConfig):
    """A function ``atoms -> (energy eV, forces (n, 3) eV/Å)`` for ``spec``."""
    if spec.name == "pyscf":
        return lambda atoms: pyscf_energy_forces(atoms, spec.method, spec.basis, spec.charge)
    if spec.name == "xtb":
        try:
            from tblite.ase import TBLite
        except ImportError as exc:
            raise ConfigError("labeller: xtb needs tblite (pip install 'molequi[qm]')") from exc
        calc = TBLite(method=spec.method, charge=spec.charge, verbosity=0)
    else:
        calc = _import_calculator(spec.calculator)(**spec.kwargs)

    def label(atoms):
        atoms = atoms.copy()
        atoms.calc = calc
        return float(atoms.get_potential_energy()), np.array(atoms.get_forces(), dtype=float)

    return label


def label_chunk(spec: LabellerConfig, frames: list) -> list[tuple[float, np.ndarray]]:
    """Labels of ``frames`` (one calculator for the chunk); runs in a worker process."""
    label = make_labeller(spec)
    return [label(a) for a in frames]


def _chunks(items: list, n: int) -> list[list]:
    n = max(1, min(n, len(items)))
    return [items[i::n] for i in range(n)]


def _unchunk(parts: list[list], n_items: int) -> list:
    out = [None] * n_items
    for i, part in enumerate(parts):
        out[i::len(parts)] = part
    return out


def label_frames(spec: LabellerConfig, frames: list, *, scratch: Path | None = None) -> list:
    """``frames`` (``ase.Atoms``) labelled by ``spec``: copies with ``info['energy']`` (eV) and
    ``arrays['forces']`` (eV/Å), in order; ``spec.workers`` processes / Dask / submitit as configured."""
    import functools

    frames = [_bare(a) for a in frames]
    if not frames:
        return []
    chunks = _chunks(frames, spec.workers)
    work = functools.partial(label_chunk, spec)
    if spec.executor == "dask":
        parts = _map_dask(work, chunks, spec)
    elif spec.executor == "submitit":
        parts = _map_submitit(work, chunks, spec, scratch)
    elif len(chunks) == 1:
        parts = [work(chunks[0])]
    else:
        import multiprocessing as mp
        from concurrent.futures import ProcessPoolExecutor

        with ProcessPoolExecutor(max_workers=len(chunks), mp_context=mp.get_context("spawn")) as pool:
            parts = list(pool.map(work, chunks))
    out = []
    for atoms, (energy, forces) in zip(frames, _unchunk(parts, len(frames))):
        atoms = atoms.copy()
        atoms.info["energy"] = energy
        atoms.arrays["forces"] = np.asarray(forces, dtype=float)
        out.append(atoms)
    return out


def _map_dask(work, chunks, spec: LabellerConfig):
    try:
        from distributed import Client, LocalCluster
    except ImportError as exc:
        raise ConfigError("labeller.executor: dask needs Dask distributed (pip install distributed)") from exc
    options = dict(spec.executor_options)
    address = options.pop("address", None)
    if address is not None:
        with Client(address, **options) as client:
            return client.gather(client.map(work, chunks, pure=False))
    local = {"n_workers": spec.workers, "threads_per_worker": 1, "processes": True, **options}
    with LocalCluster(**local) as cluster, Client(cluster) as client:
        return client.gather(client.map(work, chunks, pure=False))


def _map_submitit(work, chunks, spec: LabellerConfig, scratch: Path | None):
    try:
        import submitit
    except ImportError as exc:
        raise ConfigError("labeller.executor: submitit needs submitit (pip install submitit)") from exc
    options = dict(spec.executor_options)
    folder = options.pop("folder", str((scratch or Path(".")) / "submitit"))
    cluster = options.pop("cluster", None)
    executor = submitit.AutoExecutor(folder=folder, cluster=cluster)
    executor.update_parameters(**options)
    jobs = executor.map_array(work, chunks)
    return [job.result() for job in jobs]


def _bare(atoms):
    """A copy of ``atoms`` with positions, numbers, cell and pbc only (no calculator, no MD arrays)."""
    import ase

    return ase.Atoms(numbers=atoms.numbers, positions=atoms.positions, cell=atoms.cell, pbc=atoms.pbc)


# ------------------------------------------------------------------------------------------------ start
def start_structures(cfg: LearnConfig) -> list:
    """The start structures: every frame of ``start.file``, or ``start.conformers`` RDKit conformers of
    each SMILES."""
    s = cfg.start
    if s.file is not None:
        import ase.io

        path = Path(s.file)
        if not path.exists():
            raise InputError("no such file", source=str(path), hint="start.file names the start structures")
        try:
            frames = ase.io.read(path, ":")
        except Exception as exc:
            raise InputError(f"cannot read structures ({type(exc).__name__}: {exc})", source=str(path)
                             ) from exc
        if not frames:
            raise InputError("the file holds no structure", source=str(path))
        return [_bare(a) for a in frames]
    from molequi.qc.conformers import molecule_from_smiles

    return [_bare(molecule_from_smiles(smi, seed=s.seed + k))
            for smi in s.smiles for k in range(s.conformers)]


def start_frames(cfg: LearnConfig, structures: list) -> list:
    """``start.n_frames`` frames: the start structures in turn, each coordinate displaced by a Gaussian of
    standard deviation ``start.rattle`` Å (seeded)."""
    rng = np.random.default_rng(cfg.start.seed)
    frames = []
    for i in range(cfg.start.n_frames):
        atoms = structures[i % len(structures)].copy()
        atoms.positions = atoms.positions + rng.normal(scale=cfg.start.rattle, size=atoms.positions.shape)
        frames.append(atoms)
    return frames


# ------------------------------------------------------------------------------------------------ files
def _write_frames(path: Path, frames: list) -> None:
    import ase.io

    from molequi.io import atomic_path

    with atomic_path(path) as tmp:
        ase.io.write(tmp, frames, format="extxyz")


def read_labelled(path: Path) -> list:
    """The labelled frames of one ``labelled.extxyz`` (``info['energy']`` eV, ``arrays['forces']`` eV/Å)."""
    import ase.io

    frames = ase.io.read(path, ":", format="extxyz") if path.stat().st_size else []
    out = []
    for i, a in enumerate(frames):
        if a.calc is not None:  # ASE turns energy / forces into a SinglePointCalculator on reading
            energy, forces = a.calc.results.get("energy"), a.calc.results.get("forces")
        else:
            energy, forces = a.info.get("energy"), a.arrays.get("forces")
        if energy is None or forces is None:
            raise InputError("a labelled frame without energy or forces", source=str(path), frame=i,
                             hint="remove the round's labelled.extxyz to label it again")
        b = _bare(a)
        b.info["energy"] = float(energy)
        b.arrays["forces"] = np.asarray(forces, dtype=float)
        out.append(b)
    return out


def _round_dir(out: Path, r: int) -> Path:
    return out / f"round_{r:03d}"


def labelled_set(out: Path, rounds: int) -> list:
    """All labelled frames of rounds 0 .. ``rounds`` - 1 that exist, in order."""
    frames = []
    for r in range(rounds):
        path = _round_dir(out, r) / "labelled.extxyz"
        if path.exists():
            frames += read_labelled(path)
    return frames


def _write_json(path: Path, obj) -> None:
    from molequi.io import atomic_write_text

    atomic_write_text(path, json.dumps(obj, indent=2) + "\n")


# ------------------------------------------------------------------------------------------------- train
def split_labelled(frames: list, valid_fraction: float) -> tuple[list[int], list[int]]:
    """(train, valid) indices: every ``round(1 / valid_fraction)``-th frame (0, k, 2k, ...) validates, so a
    frame keeps its side as the set grows."""
    if valid_fraction <= 0 or len(frames) < 2:
        return list(range(len(frames))), []
    every = max(2, round(1 / valid_fraction))
    valid = [i for i in range(len(frames)) if i % every == 0]
    return [i for i in range(len(frames)) if i % every], valid


def _records(frames: list, dtype) -> list:
    from molequi.data.records import atoms_to_data

    return [atoms_to_data(a, energy=a.info["energy"], forces=a.arrays["forces"], source="labelled set",
                          frame=i, dtype=dtype) for i, a in enumerate(frames)]


def train_member(cfg: LearnConfig, member: int, frames: list, out: Path, init_from: Path | None) -> dict:
    """Train (or, after a kill, finish training) member ``member`` on ``frames``; its validation metrics."""
    import torch

    metrics_file = out / "metrics.json"
    if (out / "model.pt").exists() and metrics_file.exists():
        return json.loads(metrics_file.read_text()).get("valid", {})
    from molequi.train.run import train

    run_cfg = member_config(cfg, member, out, init_from)
    dtype = torch.float64 if run_cfg.trainer.precision == "float64" else torch.float32
    train_idx, valid_idx = split_labelled(frames, cfg.committee.valid_fraction)
    records = _records(frames, dtype)
    splits = {"train": [records[i] for i in train_idx], "valid": [records[i] for i in valid_idx], "test": []}
    import logging

    quiet = [logging.getLogger(n) for n in ("lightning.pytorch", "lightning.fabric")]
    levels = [log.level for log in quiet]
    if not sys.stderr.isatty():  # Lightning's banner and tips, once per member and round, flood a log file
        for log in quiet:
            log.setLevel(logging.WARNING)
    out.mkdir(parents=True, exist_ok=True)
    try:
        if sys.stdout.isatty():
            result = train(run_cfg, resume="auto", splits=splits, enable_summary=False)
        else:  # the per-epoch validation lines go to the member's own log
            import contextlib

            with open(out / "train.log", "a") as log_file, contextlib.redirect_stdout(log_file):
                result = train(run_cfg, resume="auto", splits=splits, enable_summary=False)
    finally:
        for log, level in zip(quiet, levels):
            log.setLevel(level)
    return result.metrics.get("valid", {})


def _mean_metric(metrics: list[dict], key: str) -> float | None:
    values = [m[key] for m in metrics if key in m]
    return float(np.mean(values)) if values else None


# -------------------------------------------------------------------------------------------------- MD
def committee_calculator(model_paths: list[Path]):
    from molequi.calculators import MolequiCalculator
    from molequi.calculators.calculator import load_models

    return MolequiCalculator(models=load_models([str(p) for p in model_paths]))


def run_committee_md(cfg: LearnConfig, structures: list, model_paths: list[Path], temperature: float,
                     rnd: int, where: Path) -> dict:
    """The round's MD runs: trajectories ``md_K.extxyz`` in ``where``, and a summary with every checked
    frame's disagreement, the time each run survived below the threshold and why it stopped."""
    import ase.io

    from molequi.simulate.md import BlowUpGuard, MDSettings, run_md

    md, thr = cfg.md, cfg.select.threshold
    steps = int(round(md.time_fs / md.timestep))
    runs = []
    for k in range(md.runs):
        atoms = structures[k % len(structures)].copy()
        settings = MDSettings(
            ensemble="nvt", temperature=temperature, timestep=md.timestep, steps=steps, friction=md.friction,
            loginterval=md.stride, seed=cfg.seed * 100003 + rnd * 101 + k, raise_on_blowup=False,
            guard=BlowUpGuard(max_force=md.max_force, min_distance=md.min_distance,
                              max_uncertainty=cfg.stop_disagreement))
        traj = where / f"md_{k}.extxyz"
        traj.unlink(missing_ok=True)
        result = run_md(atoms, committee_calculator(model_paths), settings, traj=traj,
                        progress=sys.stderr.isatty())
        std = atoms.calc.results.get("forces_std_norm")
        if result.stopped and std is not None and frame_disagreement(std) > cfg.stop_disagreement:
            # the step the guard stopped on is the most uncertain frame of the run: keep it as a candidate
            stop = _bare(atoms)
            stop.arrays["forces_std_norm"] = np.asarray(std, dtype=float)
            stop.info.update(md_step=result.steps + 1, guard_stop=True)
            ase.io.write(traj, stop, format="extxyz", append=True)
        frames = ase.io.read(traj, ":") if traj.exists() and traj.stat().st_size else []
        dis = [frame_disagreement(f.arrays["forces_std_norm"]) for f in frames]
        step = [int(f.info["md_step"]) for f in frames]
        above = [s for s, d in zip(step, dis) if d > thr]
        if above:  # the last frame below the threshold before the first one above it
            survived = max([0] + [s for s in step if s < above[0]]) * md.timestep
        else:
            survived = result.time_fs
        runs.append({"run": k, "steps_done": result.steps, "stopped": result.stopped, "reason": result.reason,
                     "survived_fs": survived, "disagreement": dis, "md_step": step,
                     "max_disagreement": max(dis, default=0.0)})
    return {"temperature_K": temperature, "runs": runs}


def choose(cfg: LearnConfig, summary: dict, where: Path, budget: int) -> list:
    """The frames to label from the round's MD (``select_frames`` over all runs, at most ``budget``)."""
    import ase.io

    spacing = int(round(cfg.md.time_fs / cfg.md.timestep)) + cfg.select.window + 1
    dis, steps, origin = [], [], []
    for run in summary["runs"]:
        for j, (d, s) in enumerate(zip(run["disagreement"], run["md_step"])):
            dis.append(d)
            steps.append(run["run"] * spacing + s)
            origin.append((run["run"], j))
    picked = [origin[i] for i in select_frames(dis, steps, cfg.select.threshold, cfg.select.window,
                                               min(cfg.select.max_frames, budget))]
    if not picked:  # stopped by the guard without a frame above the threshold: its last written frame
        picked = [(run["run"], len(run["disagreement"]) - 1) for run in summary["runs"]
                  if run["stopped"] and run["disagreement"]][:budget]
    frames = []
    cache: dict[int, list] = {}
    for k, j in picked:
        if k not in cache:
            cache[k] = ase.io.read(where / f"md_{k}.extxyz", ":")
        frames.append(_bare(cache[k][j]))
    return frames


# --------------------------------------------------------------------------------------------- the loop
@dataclass
class LearnResult:
    output: Path
    state: dict
    model_paths: list[Path]

    @property
    def converged(self) -> bool:
        return self.state.get("stop_reason") == "converged"


def _say(text: str) -> None:
    print(f"molequi learn: {text}", file=sys.stderr, flush=True)


def _check_config(out: Path, cfg: LearnConfig) -> None:
    """A run directory keeps its config (the stop section may change, to extend a budget)."""
    import yaml

    path = out / "config.yaml"
    mine = cfg.to_dict()
    if path.exists():
        theirs = yaml.safe_load(path.read_text()) or {}
        a = {k: v for k, v in theirs.items() if k not in ("stop", "output")}
        b = {k: v for k, v in mine.items() if k not in ("stop", "output")}
        if a != b:
            diff = sorted(k for k in set(a) | set(b) if a.get(k) != b.get(k))
            raise ConfigError(f"{out} holds an active-learning run with another config (sections differ: "
                              f"{', '.join(diff)}); use another output or the same config (only 'stop' may "
                              "change)")
    from molequi.io import atomic_write_text

    atomic_write_text(path, yaml.safe_dump(mine, sort_keys=False))


def _member_paths(out: Path, r: int, size: int) -> list[Path]:
    return [_round_dir(out, r) / "members" / str(k) / "model.pt" for k in range(size)]


def learn(config: LearnConfig | dict | str | os.PathLike, *, after_labelling=None) -> LearnResult:
    """Run (or continue) the active-learning loop of ``config`` (see the module docstring).

    ``after_labelling(round)`` is called after a round's labels are on disk and before its training (tests
    use it to simulate a kill there).
    """
    if isinstance(config, (str, os.PathLike)):
        cfg = load_learn_config(config)
    elif isinstance(config, dict):
        cfg = learn_config_from_dict(config)
    else:
        cfg = learn_config_from_dict(config.to_dict())  # a LearnConfig built in Python is checked alike
    out = Path(cfg.output)
    out.mkdir(parents=True, exist_ok=True)
    _check_config(out, cfg)
    state_file = out / "state.json"
    if state_file.exists():
        state = json.loads(state_file.read_text())
        if state.get("version") != STATE_VERSION:
            raise ConfigError(f"{state_file}: state version {state.get('version')}, expected {STATE_VERSION}")
    else:
        state = {"version": STATE_VERSION, "rounds_done": 0, "level": 0, "n_labelled": 0, "last_models": None,
                 "history": [], "stop_reason": None}
    if state["stop_reason"] in ("max_rounds", "max_labelled"):
        state["stop_reason"] = None  # a rerun with a larger budget continues
    structures = start_structures(cfg)

    while state["stop_reason"] is None:
        r = state["rounds_done"]
        if r > cfg.stop.max_rounds:
            state["stop_reason"] = "max_rounds"
            break
        rd = _round_dir(out, r)
        rd.mkdir(parents=True, exist_ok=True)
        temperature = cfg.md.temperatures[min(state["level"], len(cfg.md.temperatures) - 1)]
        entry: dict[str, Any] = {"round": r, "temperature_K": None if r == 0 else temperature}
        # 1. what to label: the start frames, or the committee MD's most uncertain frames
        selected_file, md_file = rd / "selected.extxyz", rd / "md.json"
        if r == 0:
            if not selected_file.exists():
                _write_frames(selected_file, start_frames(cfg, structures))
        elif not selected_file.exists():
            _say(f"round {r}: committee MD at {temperature:g} K")
            models = [Path(p) for p in state["last_models"]]
            summary = run_committee_md(cfg, structures, models, temperature, r, rd)
            survived = min(run["survived_fs"] for run in summary["runs"])
            stable = all(not run["stopped"] for run in summary["runs"]) and survived >= cfg.stable_fs
            summary.update(stable=stable, survived_fs=survived,
                           max_disagreement=max(run["max_disagreement"] for run in summary["runs"]))
            budget = cfg.stop.max_labelled - state["n_labelled"]
            chosen = [] if stable else choose(cfg, summary, rd, budget)
            _write_json(md_file, summary)
            _write_frames(selected_file, chosen)  # last: its presence says the MD step is done
        if r > 0:
            summary = json.loads(md_file.read_text())
            entry.update(max_disagreement=summary["max_disagreement"], survived_fs=summary["survived_fs"],
                         stable=summary["stable"])
        import ase.io

        selected = ase.io.read(selected_file, ":") if selected_file.stat().st_size else []
        # 2. labels
        labelled_file = rd / "labelled.extxyz"
        if not labelled_file.exists():
            if selected:
                _say(f"round {r}: labelling {len(selected)} frames ({cfg.labeller.name}, "
                     f"{cfg.labeller.workers} worker(s), {cfg.labeller.executor})")
            _write_frames(labelled_file, label_frames(cfg.labeller, selected, scratch=rd))
        if after_labelling is not None:
            after_labelling(r)
        frames = labelled_set(out, r + 1)
        entry.update(n_new=len(selected), n_labelled=len(frames))
        # 3. training (only when the set grew)
        if selected:
            _say(f"round {r}: training {cfg.committee.size} members on {len(frames)} frames")
            previous = state["last_models"]
            metrics = [train_member(cfg, k, frames, rd / "members" / str(k),
                                    None if previous is None else Path(previous[k]))
                       for k in range(cfg.committee.size)]
            state["last_models"] = [str(p) for p in _member_paths(out, r, cfg.committee.size)]
            entry.update(valid_forces_mae_meV_A=_mean_metric(metrics, "forces_mae_meV_A"),
                         valid_energy_mae_meV_atom=_mean_metric(metrics, "energy_mae_meV_atom"),
                         members=metrics)
        # 4. the round is done: record it, decide what next
        state["n_labelled"] = len(frames)
        state["history"].append(entry)
        state["rounds_done"] = r + 1
        if r > 0 and entry["stable"]:
            if state["level"] >= len(cfg.md.temperatures) - 1:
                state["stop_reason"] = "converged"
            else:
                state["level"] += 1
        if state["stop_reason"] is None and state["n_labelled"] >= cfg.stop.max_labelled:
            state["stop_reason"] = "max_labelled"
        _say(_round_line(entry))
        _write_json(state_file, state)
        write_history(out, state["history"], cfg)
    _write_json(state_file, state)
    write_history(out, state["history"], cfg)
    _say(f"stopped: {state['stop_reason']} after {state['rounds_done']} rounds, {state['n_labelled']} "
         f"labelled frames; models: {', '.join(state['last_models'] or [])}")
    return LearnResult(output=out, state=state, model_paths=[Path(p) for p in state["last_models"] or []])


def _round_line(e: dict) -> str:
    parts = [f"round {e['round']}", f"+{e['n_new']} frames ({e['n_labelled']} labelled)"]
    if e.get("valid_forces_mae_meV_A") is not None:
        parts.append(f"valid force MAE {e['valid_forces_mae_meV_A']:.1f} meV/Å")
    if e.get("max_disagreement") is not None:
        parts.append(f"max disagreement {e['max_disagreement']:.3g} eV/Å")
        parts.append(f"MD survived {e['survived_fs']:.0f} fs at {e['temperature_K']:g} K")
    return ", ".join(parts)


HISTORY_COLUMNS = ("round", "temperature_K", "n_new", "n_labelled", "valid_forces_mae_meV_A",
                   "valid_energy_mae_meV_atom", "max_disagreement", "survived_fs", "stable")


def write_history(out: Path, history: list[dict], cfg: LearnConfig) -> None:
    """``learn.csv`` (one row per round) and ``learn.png`` (the same over rounds)."""
    from molequi.io import atomic_path, atomic_write_text

    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=HISTORY_COLUMNS, extrasaction="ignore", lineterminator="\n")
    w.writeheader()
    for e in history:
        w.writerow({k: e.get(k) for k in HISTORY_COLUMNS})
    atomic_write_text(out / "learn.csv", buf.getvalue())
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    def series(key):
        return [e["round"] for e in history if e.get(key) is not None], [
            e[key] for e in history if e.get(key) is not None]

    fig, axes = plt.subplots(1, 4, figsize=(15, 3.4))
    panels = [("n_labelled", "labelled frames", None), ("valid_forces_mae_meV_A", "valid force MAE (meV/Å)",
                                                        None),
              ("max_disagreement", "max committee force spread (eV/Å)", cfg.select.threshold),
              ("survived_fs", "MD time below threshold (fs)", cfg.stable_fs)]
    for ax, (key, label, line) in zip(axes, panels):
        x, y = series(key)
        ax.plot(x, y, "o-")
        if line is not None:
            ax.axhline(line, color="grey", ls="--", lw=1)
        ax.set_xlabel("round")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_ylabel(label)
        if key == "max_disagreement" and y and min(y) > 0:
            ax.set_yscale("log")
    fig.tight_layout()
    with atomic_path(out / "learn.png") as tmp:
        fig.savefig(tmp, dpi=110, format="png")
    plt.close(fig)


__all__ = ["learn", "LearnConfig", "LearnResult", "load_learn_config", "learn_config_from_dict",
           "select_frames", "frame_disagreement", "label_frames", "pyscf_energy_forces", "split_labelled",
           "start_structures", "start_frames", "labelled_set", "member_config", "EXECUTORS", "LABELLERS"]
