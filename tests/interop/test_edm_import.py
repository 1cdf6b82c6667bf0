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


@needs_peer
def test_qm9_split_equals_edm_gen_splits(tmp_path, monkeypatch):
    """EDM's own gen_splits_gdb9 (its download of uncharacterized.txt replaced by a local file of 3054
    indices) gives the same train / valid / test molecules as molequi's edm_qm9_split."""
    import importlib
    import sys
    import urllib.request

    import numpy as np

    from molequi.interop.edm import edm_qm9_split, edm_qm9_subsets

    rng = np.random.default_rng(1)
    excluded = sorted(int(i) for i in rng.choice(np.arange(1, 133886), size=3054, replace=False))
    lines = "header\n\n" + "".join(f"  {i}  gdb_{i}  x\n" for i in excluded) + "footer line\n"
    monkeypatch.setattr(urllib.request, "urlretrieve", lambda url, filename: Path(filename).write_text(lines))
    monkeypatch.syspath_prepend(str(PEER))
    for name in [m for m in sys.modules if m == "qm9" or m.startswith("qm9.")]:
        monkeypatch.delitem(sys.modules, name)
    prepare = importlib.import_module("qm9.data.prepare.qm9")
    ref = prepare.gen_splits_gdb9(str(tmp_path), cleanup=False)
    ours = edm_qm9_split(excluded)
    assert [len(ours[k]) for k in ("train", "valid", "test")] == [100000, 17748, 13083]
    for key in ("train", "valid", "test"):
        assert np.array_equal(ours[key], np.asarray(ref[key]) + 1)  # EDM's file positions are 0-based
    # positions in a dataset holding the 130831 characterised records, stored in a shuffled order
    kept = np.array(sorted(set(range(1, 133886)) - set(excluded)))
    order = rng.permutation(kept)
    subsets = edm_qm9_subsets(order, excluded)
    assert np.array_equal(order[subsets["test"]], ours["test"])
    with pytest.raises(Exception, match="not in the dataset"):
        edm_qm9_subsets(order[:-5], excluded)
