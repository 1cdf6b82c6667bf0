"""EDM run-folder import (``molequi.interop.edm``): the args reader on EDM's real args.pickle files (compared
with the standard library's unrestricted unpickler, which is safe on these known files), refusal of
unsafe pickles, and the named errors for a folder without weights and for options molequi lacks."""

import argparse
import os
import pickle
from pathlib import Path

import pytest

from molequi.data.pickle_safe import UnsafePickleError
from molequi.interop.edm import (
    MissingEDMWeightsError,
    UnsupportedEDMOptionError,
    edm_config,
    find_weights,
    read_edm_args,
)

REPO = Path(__file__).resolve().parents[2]
PEER = REPO / ".." / "shared" / "peers" / "edm"
RUNS = ["edm_qm9", "exp_35_conditional_nf192_9l_alpha", "edm_geom_drugs"]
needs_peer = pytest.mark.skipif(not (PEER / "outputs").is_dir(),
                                reason=f"EDM's source tree with its outputs/*/args.pickle is not at {PEER}")


@needs_peer
@pytest.mark.parametrize("run", RUNS)
def test_reads_edm_args_like_the_standard_unpickler(run):
    path = PEER / "outputs" / run / "args.pickle"
    with open(path, "rb") as f:
        reference = vars(pickle.load(f))  # EDM's own files: trusted here, the reference reader
    assert read_edm_args(path) == reference


@needs_peer
def test_edm_options_map_onto_the_config():
    qm9 = edm_config(read_edm_args(PEER / "outputs" / "edm_qm9" / "args.pickle"))
    assert (qm9.hidden, qm9.layers, qm9.timesteps, qm9.schedule, qm9.precision) == (256, 9, 1000, "polynomial_2",
                                                                                    1e-5)
    assert qm9.elements == [1, 6, 7, 8, 9] and qm9.include_charges and qm9.norm_values == [1.0, 4.0, 10.0]
    assert (qm9.normalization_factor, qm9.norm_constant, qm9.coords_range_per_layer) == (1.0, 1.0, 15.0)
    assert qm9.attention and qm9.tanh and qm9.condition_on == []
    cond = edm_config(read_edm_args(PEER / "outputs" / "exp_35_conditional_nf192_9l_alpha" / "args.pickle"))
    assert (cond.hidden, cond.condition_on, cond.include_charges, cond.norm_values, cond.elements) == \
        (192, ["alpha"], False, [1.0, 8.0, 1.0], [1, 6, 7, 8, 9])
    geom = edm_config(read_edm_args(PEER / "outputs" / "edm_geom_drugs" / "args.pickle"))
    assert (geom.layers, geom.include_charges, len(geom.elements), geom.max_atoms) == (4, False, 16, 181)
    assert geom.elements[:3] == [1, 5, 6] and geom.elements[-2:] == [80, 83]  # H B C ... Hg Bi


class _Evil:
    def __reduce__(self):
        return (os.system, ("touch pwned_by_pickle",))


def test_refuses_anything_but_a_namespace_of_plain_values(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    evil = tmp_path / "args.pickle"
    evil.write_bytes(pickle.dumps(argparse.Namespace(nf=1, payload=_Evil())))
    with pytest.raises(UnsafePickleError, match="posix.system|nt.system|os.system"):
        read_edm_args(evil)
    assert not (tmp_path / "pwned_by_pickle").exists()
    evil.write_bytes(pickle.dumps(argparse.Namespace(nf=1, values={1, 2})))  # a set: no global, not plain
    with pytest.raises(UnsafePickleError, match="not plain values"):
        read_edm_args(evil)
    evil.write_bytes(pickle.dumps({"nf": 1}))
    with pytest.raises(UnsafePickleError, match="not an argparse.Namespace"):
        read_edm_args(evil)
    for protocol in (0, 2, 5):
        evil.write_bytes(pickle.dumps(argparse.Namespace(nf=3, conditioning=["alpha"]), protocol=protocol))
        assert read_edm_args(evil) == {"nf": 3, "conditioning": ["alpha"]}


def test_run_folder_without_weights_is_a_named_error(tmp_path):
    (tmp_path / "args.pickle").write_bytes(pickle.dumps(argparse.Namespace(nf=8)))
    with pytest.raises(MissingEDMWeightsError, match="no EDM weights"):
        find_weights(tmp_path)
    (tmp_path / "generative_model_ema_12.npy").write_bytes(b"")
    with pytest.raises(MissingEDMWeightsError, match="--weights"):
        find_weights(tmp_path)
    assert find_weights(tmp_path, "generative_model_ema_12.npy") == tmp_path / "generative_model_ema_12.npy"
    from molequi.interop.edm import import_edm_run

    (tmp_path / "generative_model_ema_12.npy").unlink()
    options = {"model": "egnn_dynamics", "nf": 8, "n_layers": 1, "diffusion_steps": 10, "include_charges": True,
               "normalize_factors": [1, 4, 10], "attention": True, "tanh": True}
    (tmp_path / "args.pickle").write_bytes(pickle.dumps(argparse.Namespace(**options)))
    with pytest.raises(MissingEDMWeightsError):
        import_edm_run(tmp_path, tmp_path / "out.pt")


def test_unknown_and_unsupported_options_are_listed():
    base = {"model": "egnn_dynamics", "nf": 8, "n_layers": 1, "diffusion_steps": 10, "include_charges": True,
            "normalize_factors": [1, 4, 10], "attention": True, "tanh": True}
    edm_config(base)
    with pytest.raises(UnsupportedEDMOptionError) as err:
        edm_config({**base, "fancy_new_option": 3, "sin_embedding": True, "inv_sublayers": 2,
                    "diffusion_noise_schedule": "learned", "aggregation_method": "mean", "model": "gnn_dynamics"})
    text = str(err.value)
    for piece in ("fancy_new_option", "sin_embedding", "inv_sublayers", "learned", "aggregation_method",
                  "gnn_dynamics"):
        assert piece in text
    with pytest.raises(UnsupportedEDMOptionError, match="dataset"):
        edm_config({**base, "dataset": "zinc"})


def _edm_gen_splits(tmp_path, monkeypatch, excluded):
    """EDM's own gen_splits_gdb9 with its download of uncharacterized.txt replaced by a local file listing
    ``excluded`` (1-based); returns EDM's {train, valid, test} as 1-based GDB-9 indices."""
    import importlib
    import sys
    import urllib.request

    import numpy as np

    tmp_path.mkdir(parents=True, exist_ok=True)
    lines = "header\n\n" + "".join(f"  {i}  gdb_{i}  x\n" for i in excluded) + "footer line\n"
    monkeypatch.setattr(urllib.request, "urlretrieve", lambda url, filename: Path(filename).write_text(lines))
    monkeypatch.syspath_prepend(str(PEER))
    for name in [m for m in sys.modules if m == "qm9" or m.startswith("qm9.")]:
        monkeypatch.delitem(sys.modules, name)
    prepare = importlib.import_module("qm9.data.prepare.qm9")
    ref = prepare.gen_splits_gdb9(str(tmp_path), cleanup=False)
    return {k: np.asarray(v) + 1 for k, v in ref.items()}  # EDM's file positions are 0-based


@needs_peer
def test_qm9_split_equals_edm_gen_splits(tmp_path, monkeypatch):
    """EDM's own gen_splits_gdb9 (on a local file of 3054 indices) gives the same train / valid / test
    molecules as molequi's edm_qm9_split."""
    import numpy as np

    from molequi.interop.edm import edm_qm9_split, edm_qm9_subsets

    rng = np.random.default_rng(1)
    excluded = sorted(int(i) for i in rng.choice(np.arange(1, 133886), size=3054, replace=False))
    ref = _edm_gen_splits(tmp_path, monkeypatch, excluded)
    ours = edm_qm9_split(excluded)
    assert [len(ours[k]) for k in ("train", "valid", "test")] == [100000, 17748, 13083]
    for key in ("train", "valid", "test"):
        assert np.array_equal(ours[key], ref[key])
    # positions in a dataset holding the 130831 characterised records, stored in a shuffled order
    kept = np.array(sorted(set(range(1, 133886)) - set(excluded)))
    order = rng.permutation(kept)
    subsets, dropped = edm_qm9_subsets(order, excluded)
    assert np.array_equal(order[subsets["test"]], ours["test"]) and not any(dropped.values())
    with pytest.raises(Exception, match="not in the dataset"):
        edm_qm9_subsets(order[:-5], excluded)
    subsets, dropped = edm_qm9_subsets(order[:-5], excluded, missing="drop")
    assert sum(dropped.values()) == 5 and sum(len(v) for v in subsets.values()) == len(kept) - 5


def _write_geometry_xyz(folder: Path, ids) -> None:
    """One geometry-only QM9 file per id (as in the ppqm tarball: line 2 empty), a water molecule whose O
    sits at x = id / 1e5 so a record can be traced back to its file."""
    folder.mkdir(parents=True, exist_ok=True)
    for i in ids:
        x = i / 1e5
        (folder / f"dsgdb9nsd_{i:06d}.xyz").write_text(
            f"3\n\nO {x:.6f} 0.0 0.0\nH {x + 0.96:.6f} 0.0 0.0\nH {x - 0.24:.6f} 0.93 0.0\n")


@needs_peer
def test_qm9_dataset_edm_split_equals_edm(tmp_path, monkeypatch):
    """data.options.split: edm on a QM9 folder holding some molecules of each EDM subset (plus an
    uncharacterised one): each subset holds exactly the molecules of EDM's own gen_splits_gdb9 subset that
    the folder has, in EDM's order, and the rest are counted as dropped; edm_strict refuses the folder.
    The uncharacterised list is the one shipped with molequi (no uncharacterized.txt in the folder), checked
    against QM9's count and against the ppqm tarball, which dropped those molecules."""
    import numpy as np

    from molequi.data.datasets import DataConfig, build_dataset
    from molequi.data.qm9 import shipped_uncharacterized
    from molequi.errors import DatasetError

    excluded = sorted(shipped_uncharacterized())
    assert len(excluded) == 3054 and excluded[:3] == [58, 61, 80]
    ref = _edm_gen_splits(tmp_path / "edm", monkeypatch, excluded)
    rng = np.random.default_rng(3)
    picked = {k: np.sort(rng.choice(ref[k], size=n, replace=False)) for k, n in
              (("train", 12), ("valid", 7), ("test", 5))}
    raw = tmp_path / "qm9" / "raw"
    _write_geometry_xyz(raw, [*np.concatenate(list(picked.values())).tolist(), excluded[0]])
    cfg = DataConfig(name="qm9", root=str(tmp_path / "qm9"), options={"split": "edm"})
    built = build_dataset(cfg)
    for ours, key in (("train", "train"), ("val", "valid"), ("test", "test")):
        expected = ref[key][np.isin(ref[key], picked[key])]  # EDM's order, restricted to the folder
        got = np.array([int(d.idx) for d in built[ours]])
        assert np.array_equal(got, expected)
        x = np.array([float(d.pos[0, 0]) for d in built[ours]])
        assert np.allclose(x, expected / 1e5, atol=1e-6)  # records are the files of those ids
        assert built["dropped"][key] == len(ref[key]) - len(picked[key])
    with pytest.raises(DatasetError, match="not in the dataset"):
        build_dataset(DataConfig(name="qm9", root=str(tmp_path / "qm9"), options={"split": "edm_strict"}))
    with pytest.raises(DatasetError, match="edm_strict"):
        build_dataset(DataConfig(name="qm9", root=str(tmp_path / "qm9"), options={"split": "emd"}))
