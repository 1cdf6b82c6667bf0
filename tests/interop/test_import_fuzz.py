"""Fuzz the upstream-checkpoint importers: the parts of ``molequi.interop.edm`` and ``molequi.interop.mace`` that
run in molequi's process either accept a mutated file or raise a named molequi error naming it, and never
execute anything a pickle names.

- EDM ``args.pickle`` (EDM's own files, ``data/edm_qm9_args.pickle`` and, where EDM's tree is next to the
  repository, ``../shared/peers/edm/outputs/*/args.pickle``): byte mutations, pickles with code-running globals
  spliced in (a marker file must never appear), and option values replaced by arbitrary plain values, each
  through ``read_edm_args`` and ``edm_config``;
- EDM weights (``generative_model*.npy``, a ``torch.save`` state dict of ``EnVariationalDiffusion``'s names):
  byte mutations through ``load_edm_state`` and ``edm_state_to_molequi``;
- mace-torch ``*.model`` (``data/mace_seed.model``, a real mace-torch 0.3.16 ScaleShiftMACE): byte mutations of
  the archive and mutations of its ``data.pkl`` re-zipped, through ``inspect_model_file`` (the pre-check that
  reads the file without executing it; the load itself runs in mace-torch's python, outside this process).

Derandomised, ``fuzz_helpers.MIN_EXAMPLES`` (1000) examples each; inputs that once crashed an importer are
kept as explicit regression tests at the end.
"""

from __future__ import annotations

import argparse
import io
import pickle
import sys
import zipfile
from pathlib import Path

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

sys.path.append(str(Path(__file__).resolve().parents[1] / "data"))  # fuzz_helpers (appended, as conftest does)
from fuzz_helpers import FUZZ, mutated, scratch_dir  # noqa: E402

from molequi.data.pickle_safe import UnsafePickleError  # noqa: E402
from molequi.errors import CheckpointError, ForeignModelError, MolequiError  # noqa: E402
from molequi.interop.edm import (  # noqa: E402
    UnsupportedEDMOptionError,
    edm_config,
    edm_state_to_molequi,
    load_edm_state,
    read_edm_args,
)
from molequi.interop.mace import inspect_model_file  # noqa: E402

REPO = Path(__file__).resolve().parents[2]
DATA = Path(__file__).with_name("data")
PEER_RUNS = REPO / ".." / "shared" / "peers" / "edm" / "outputs"
ARGS_COPY = DATA / "edm_qm9_args.pickle"
ARGS_SEEDS = [ARGS_COPY.read_bytes()]
ARGS_SEEDS += sorted({p.read_bytes() for p in PEER_RUNS.glob("*/args.pickle")} - set(ARGS_SEEDS))
MACE_SEED = (DATA / "mace_seed.model").read_bytes()
TMP = scratch_dir("molequi-import-fuzz-")
MARKER = TMP / "executed"

# pickle fragments that would run code if an unpickler obeyed them: protocol 0 GLOBAL / INST, protocol 4
# STACK_GLOBAL, each followed by a call that touches MARKER
_CMD = f"touch {MARKER}".encode()
EVIL = [b"cos\nsystem\n(V" + _CMD + b"\ntR", b"cposix\nsystem\n(V" + _CMD + b"\ntR",
        b"(V" + _CMD + b"\nios\nsystem\n", b"\x8c\x02os\x94\x8c\x06system\x94\x93(V" + _CMD + b"\ntR",
        b"cbuiltins\neval\n(Vopen('" + str(MARKER).encode() + b"', 'w')\ntR",
        b"csubprocess\ncall\n((V/bin/touch\nV" + str(MARKER).encode() + b"\nltR"]
PICKLE_TOKENS = EVIL + [b"N", b".", b"0", b"2", b"(", b")", b"]", b"}", b"t", b"R", b"b", b"s", b"u", b"e",
                        b"\x80\x05", b"\x8a\xff", b"J\xff\xff\xff\x7f", b"h\x00", b"q\x00", b"\x94", b"\x93",
                        b"cargparse\nNamespace\n", b"ccopyreg\n_reconstructor\n", b"\xff" * 8]


def _named(exc: MolequiError, path: Path) -> None:
    assert str(path) in str(exc), exc


# ------------------------------------------------------------------------------------------- EDM args
def _check_args(path: Path, payload: bytes) -> None:
    path.write_bytes(payload)
    try:
        options = read_edm_args(path)
    except MolequiError as exc:
        _named(exc, path)
        return
    finally:
        assert not MARKER.exists(), "a pickle ran code"
    assert isinstance(options, dict) and all(isinstance(k, str) for k in options)
    try:
        edm_config(options)
    except MolequiError:
        pass


def test_seeds_are_edm_runs():
    """The seeds load and map: EDM's QM9 run (nf 256, 9 layers) and, next to EDM's tree, every run in it."""
    path = TMP / "seed.pickle"
    for seed in ARGS_SEEDS:
        path.write_bytes(seed)
        edm_config(read_edm_args(path))
    path.write_bytes(ARGS_SEEDS[0])
    cfg = edm_config(read_edm_args(path))
    assert (cfg.hidden, cfg.layers, cfg.timesteps, cfg.elements) == (256, 9, 1000, [1, 6, 7, 8, 9])
    if PEER_RUNS.is_dir():  # the kept copy is EDM's own file, byte for byte
        assert ARGS_COPY.read_bytes() == (PEER_RUNS / "edm_qm9" / "args.pickle").read_bytes()
        assert len(ARGS_SEEDS) == 3


@FUZZ
@given(st.sampled_from(ARGS_SEEDS).flatmap(lambda s: mutated(s, tokens=PICKLE_TOKENS)))
def test_fuzz_edm_args_bytes(payload):
    _check_args(TMP / "args.pickle", payload)


@st.composite
def _evil_splice(draw):
    seed = bytearray(draw(st.sampled_from(ARGS_SEEDS)))
    pos = draw(st.integers(0, len(seed)))
    seed[pos:pos] = draw(st.sampled_from(EVIL))
    return bytes(seed)


@FUZZ
@given(_evil_splice())
def test_fuzz_edm_args_never_execute(payload):
    """Code-running globals spliced anywhere into EDM's pickles: refused, and the marker file never appears."""
    _check_args(TMP / "evil.pickle", payload)


_PLAIN = st.recursive(st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=8),
                      lambda inner: st.lists(inner, max_size=4) | st.tuples(inner, inner)
                      | st.dictionaries(st.text(max_size=4), inner, max_size=3), max_leaves=8)


@st.composite
def _edited_options(draw):
    path = TMP / "seed_opts.pickle"
    path.write_bytes(draw(st.sampled_from(ARGS_SEEDS)))
    options = read_edm_args(path)
    keys = sorted(options)
    for _ in range(draw(st.integers(1, 4))):
        op = draw(st.sampled_from(["replace", "drop", "add"]))
        key = draw(st.sampled_from(keys))
        if op == "replace":
            options[key] = draw(_PLAIN)
        elif op == "drop":
            options.pop(key, None)
        else:
            options[draw(st.text(min_size=1, max_size=6))] = draw(_PLAIN)
    return pickle.dumps(argparse.Namespace(**options), protocol=draw(st.sampled_from([0, 2, 4])))


@FUZZ
@given(_edited_options())
def test_fuzz_edm_option_values(payload):
    """Any option replaced by any plain value (lists for numbers, strings for lists, ...): a config or a named
    error, never a TypeError from inside the mapping."""
    _check_args(TMP / "values.pickle", payload)


# ------------------------------------------------------------------------------------------ EDM weights
_OPTS = {"model": "egnn_dynamics", "probabilistic_model": "diffusion", "n_layers": 2, "nf": 4, "tanh": True,
         "attention": True, "diffusion_steps": 20, "diffusion_noise_schedule": "polynomial_2",
         "diffusion_noise_precision": 1e-5, "normalize_factors": [1, 4, 10], "include_charges": True,
         "conditioning": [], "dataset": "qm9", "remove_h": False}


def _edm_names(model) -> dict:
    """A state dict in ``EnVariationalDiffusion``'s names (EDM's egnn/models.py, e3_diffusion_for_molecules)
    with the shapes of ``model``'s architecture: EDM's coord_mlp.0 takes [h_i, h_j, d_ij, d0_ij] in one matrix."""
    gen = torch.Generator().manual_seed(0)
    ms, out = model.state_dict(), {}

    def rnd(key):
        return torch.randn(ms[key].shape, generator=gen)

    for name in ("embedding", "embedding_out"):
        for p in ("weight", "bias"):
            out[f"dynamics.egnn.{name}.{p}"] = rnd(f"dynamics.{name}.{p}")
    for k in range(model.config.layers):
        src, dst = f"dynamics.egnn.e_block_{k}.", f"dynamics.blocks.{k}."
        for a, b in (("edge_mlp.0", "phi_e.0"), ("edge_mlp.2", "phi_e.2"), ("node_mlp.0", "phi_h.0"),
                     ("node_mlp.2", "phi_h.2"), ("att_mlp.0", "phi_att.0")):
            for p in ("weight", "bias"):
                out[f"{src}gcl_0.{a}.{p}"] = rnd(f"{dst}gcl.{b}.{p}")
        c = f"{dst}coords.coord_in."
        out[f"{src}gcl_equiv.coord_mlp.0.weight"] = torch.cat(
            [rnd(c + "lin_i.weight"), rnd(c + "lin_j.weight"), rnd(c + "lin_e.weight")], dim=1)
        out[f"{src}gcl_equiv.coord_mlp.0.bias"] = rnd(c + "lin_i.bias")
        for a, b in (("2.weight", "1.weight"), ("2.bias", "1.bias"), ("4.weight", "3.weight")):
            out[f"{src}gcl_equiv.coord_mlp.{a}"] = rnd(f"{dst}coords.coord_mlp.{b}")
    out["gamma.gamma"] = torch.linspace(-10, 10, 21)
    return out


def _tiny_edm():
    from molequi.models.generative.edm import EDM

    return EDM(edm_config(_OPTS)).eval()


MODEL = _tiny_edm()
_buf = io.BytesIO()
torch.save(_edm_names(MODEL), _buf)
STATE_SEED = _buf.getvalue()


def test_state_seed_maps_onto_the_model():
    """The unmutated EDM-named state dict maps onto molequi's EDM with every weight used and filled."""
    path = TMP / "seed.npy"
    path.write_bytes(STATE_SEED)
    state = load_edm_state(path)
    MODEL.load_state_dict(edm_state_to_molequi(state, MODEL))
    w = state["dynamics.egnn.e_block_1.gcl_equiv.coord_mlp.0.weight"]
    assert torch.equal(MODEL.state_dict()["dynamics.blocks.1.coords.coord_in.lin_e.weight"], w[:, 8:])


@FUZZ
@given(mutated(STATE_SEED, tokens=PICKLE_TOKENS + [b"PK\x03\x04", b"PK\x01\x02", b"\x00" * 8]))
def test_fuzz_edm_weights_bytes(payload):
    path = TMP / "generative_model_ema.npy"
    path.write_bytes(payload)
    try:
        state = load_edm_state(path)
    except MolequiError as exc:
        _named(exc, path)
        return
    try:
        MODEL.load_state_dict(edm_state_to_molequi(state, MODEL))
    except CheckpointError:
        pass


# --------------------------------------------------------------------------------------------- mace-torch
def test_mace_seed_passes_the_precheck():
    path = TMP / "seed.model"
    path.write_bytes(MACE_SEED)
    assert inspect_model_file(path) == ("torch.save archive of mace.modules.models.ScaleShiftMACE "
                                        "(mace-torch model file)")


def _check_mace(path: Path, payload: bytes) -> None:
    path.write_bytes(payload)
    try:
        origin = inspect_model_file(path)
    except ForeignModelError as exc:
        _named(exc, path)
        return
    finally:
        assert not MARKER.exists()
    assert origin.startswith("torch.save archive of mace.modules.models.")


@FUZZ
@given(mutated(MACE_SEED, tokens=PICKLE_TOKENS + [b"PK\x03\x04", b"PK\x01\x02", b"PK\x05\x06", b"\x00" * 8]))
def test_fuzz_mace_archive_bytes(payload):
    _check_mace(TMP / "bytes.model", payload)


with zipfile.ZipFile(io.BytesIO(MACE_SEED)) as _z:
    MACE_MEMBERS = [(i.filename, _z.read(i)) for i in _z.infolist()]
MACE_PICKLE = dict(MACE_MEMBERS)["seed/data.pkl"]


def _rezip(pkl: bytes) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_STORED) as z:
        for name, data in MACE_MEMBERS:
            z.writestr(name, pkl if name == "seed/data.pkl" else data)
    return buf.getvalue()


@FUZZ
@given(mutated(MACE_PICKLE, tokens=PICKLE_TOKENS))
def test_fuzz_mace_pickle(pkl):
    """The model's pickle itself mutated (valid zip around it): accepted only while it names nothing outside
    torch / e3nn / mace / numpy / collections; code-running globals spliced in are refused."""
    _check_mace(TMP / "pickle.model", _rezip(pkl))


# ------------------------------------------------------------------- inputs that once crashed an importer
_NS = b"ccopy_reg\n_reconstructor\n(cargparse\nNamespace\nc__builtin__\nobject\nNtR(dVnf\n"  # Namespace(nf=...)


@pytest.mark.parametrize(("key", "value"), [
    ("diffusion_steps", None), ("diffusion_noise_precision", None),  # the two the fuzzer found
    ("nf", "256"), ("nf", 2.5), ("nf", True), ("n_layers", -3), ("normalize_factors", [1]),
    ("normalize_factors", 4), ("conditioning", "alpha"), ("dataset", ["qm9"]), ("context_node_nf", "1")])
def test_wrong_option_types_are_named(key, value):
    """Found by test_fuzz_edm_option_values: diffusion_steps=None or diffusion_noise_precision=None raised
    TypeError inside edm_config; every option it converts is now type-checked first."""
    path = TMP / "typed.pickle"
    path.write_bytes(ARGS_SEEDS[0])
    options = read_edm_args(path)
    options[key] = value
    with pytest.raises(UnsupportedEDMOptionError, match=f"wrong type: {key}="):
        edm_config(options)


def _self_list():
    a = []
    a.append(a)
    return a


@pytest.mark.parametrize("payload", [
    _NS + b"(" * 5000 + b"l" * 5000 + b"sb.",  # nested 5000 deep: plain() recursed past the limit
    pickle.dumps(argparse.Namespace(nf=_self_list())),  # a list containing itself: endless recursion
    _NS + b"(lp0\n0" + b"".join(b"(g%d\nlp%d\n0" % (i, i + 1) for i in range(3000))  # a chain of 3000 lists
    + b"(" + b"".join(b"g%d\n" % i for i in range(3000, -1, -1)) + b"lsb.",  # shared through the memo
    _NS + b"(lp0\n0" + b"".join(b"(" + b"g%d\n" % i * 50 + b"lp%d\n0" % (i + 1) for i in range(7))
    + b"g7\nsb.",  # 50 references per level, 7 levels: 8e11 values for repr / == to walk
], ids=["deep", "cycle", "chain", "laughs"])
def test_deep_cyclic_or_huge_option_values_are_refused(payload):
    """RecursionError escaped read_edm_args for deeply nested or self-referencing lists."""
    path = TMP / "nested.pickle"
    path.write_bytes(payload)
    with pytest.raises(UnsafePickleError, match="not plain values"):
        read_edm_args(path)
    shared = [1, 2]  # values shared through the memo, not nested deeply, still load
    path.write_bytes(pickle.dumps(argparse.Namespace(nf=[shared, shared, (shared,)])))
    assert read_edm_args(path) == {"nf": [[1, 2], [1, 2], ([1, 2],)]}


def test_state_dict_with_non_string_names_is_named():
    """A torch.save dict keyed by integers passed load_edm_state and raised AttributeError in the mapping."""
    path = TMP / "int_keys.npy"
    torch.save({1: torch.zeros(2)}, path)
    with pytest.raises(CheckpointError, match="not a state dict of tensors"):
        load_edm_state(path)


_PKL = MACE_PICKLE[2:]  # the seed's pickle after its PROTO 2 opcode
# each prefix runs ``touch MARKER`` under pickle.load (checked below) and then leaves the seed's model
HIDDEN = {
    "inst": b"\x80\x02(V" + _CMD + b"\nios\nsystem\n0",  # INST names its class in its argument
    "stack_global_after_pops": b"\x80\x04\x8c\x02os\x8c\x06system\x8c\x05torch\x8c\x02nn00\x93(V" + _CMD
    + b"\ntR0",  # the scan took the last two strings pushed (torch, nn), not the two under STACK_GLOBAL
    "stack_global_from_memo": b"\x80\x04\x8c\x05torch\x94\x8c\x02os\x94\x8c\x06system\x94" + b"0" * 3
    + b"h\x01h\x02\x93(V" + _CMD + b"\ntR0",
}


@pytest.mark.parametrize("name", sorted(HIDDEN))
def test_globals_hidden_from_the_precheck_are_refused(name, monkeypatch):
    """The pre-check accepted a model whose pickle ran os.system through INST or a STACK_GLOBAL over
    rearranged strings (mace-torch's python would then have run it while loading); both are now refused."""
    monkeypatch.chdir(TMP)
    prefix = HIDDEN[name]
    assert prefix.endswith(b"0")
    pickle.loads(prefix[:-1] + b".")  # the fragment really runs the command (touch): proof it needs refusing
    assert MARKER.exists()
    MARKER.unlink()
    path = TMP / f"{name}.model"
    path.write_bytes(_rezip(prefix + _PKL))
    with pytest.raises(ForeignModelError, match="globals outside"):
        inspect_model_file(path)
    assert not MARKER.exists()


def test_stack_global_of_allowed_strings_from_the_memo_passes():
    """The stricter STACK_GLOBAL reading still reads protocol-4 pickles: strings pushed and fetched back from
    the memo name torch.Tensor, allowed."""
    path = TMP / "proto4.model"
    path.write_bytes(_rezip(b"\x80\x04\x8c\x05torch\x94\x8c\x06Tensor\x94\x93\x94h\x00h\x01\x930" + b"0" * 3 + _PKL))
    assert inspect_model_file(path).startswith("torch.save archive of mace.modules.models.ScaleShiftMACE")
