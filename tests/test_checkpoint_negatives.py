"""Checkpoints that must not load: each gives a CheckpointError naming the file, and nothing in it runs.

The good case is a real Lennard-Jones checkpoint written by ``molequi.checkpoint.save_model``; every bad
case is derived from it (or from another program's file) and must fail inside ``read_checkpoint`` /
``load_model`` with the path in the message.
"""

from __future__ import annotations

import builtins
import pickle

import pytest
import torch

from molequi.checkpoint import VERSION, load_model, make_payload, read_checkpoint, save_model
from molequi.config import to_plain
from molequi.errors import CheckpointError
from molequi.models.lj import LennardJones


class _WritesAFile:
    """Unpickling this calls ``open(target, "w")``: creating ``target`` is the proof that code ran."""

    def __init__(self, target):
        self.target = str(target)

    def __reduce__(self):
        return builtins.open, (self.target, "w")


def _payload() -> dict:
    model = LennardJones()
    return make_payload(config={"model": {"name": "lj", **to_plain(model.config)}},
                        statistics={"elements": model.elements}, model_state=model.state_dict(),
                        dtype=torch.float64)


def _fails(path, *, match: str = "") -> str:
    """Both entry points refuse ``path`` with a CheckpointError that names it; return the message."""
    with pytest.raises(CheckpointError) as info:
        read_checkpoint(path)
    with pytest.raises(CheckpointError):
        load_model(path)
    message = str(info.value)
    assert str(path) in message
    assert match in message, message
    return message


def test_the_good_checkpoint_loads(tmp_path):
    """The reference every negative below is derived from loads, with the weights it was saved with."""
    payload = _payload()
    save_model(payload, tmp_path / "model.pt")
    model = load_model(tmp_path / "model.pt")
    assert isinstance(model, LennardJones)
    for name, value in model.state_dict().items():
        assert torch.equal(value, payload["model_state"][name]), name


@pytest.mark.parametrize("where", ["whole_file", "inside_payload", "lightning_wrapper"])
@pytest.mark.parametrize("writer", ["torch", "pickle"])
def test_malicious_pickle_executes_nothing(tmp_path, where, writer):
    marker = tmp_path / "pwned"
    evil = _WritesAFile(marker)
    if where == "whole_file":
        obj = evil
    elif where == "inside_payload":
        obj = {**_payload(), "config": evil}
    else:
        obj = {"state_dict": {}, "molequi": {**_payload(), "metrics": evil}}
    path = tmp_path / "evil.pt"
    if writer == "torch":
        torch.save(obj, path)
    else:
        path.write_bytes(pickle.dumps(obj, protocol=2))
    with open(marker, "w"):  # the payload really does run when unpickled without restriction
        pass
    marker.unlink()
    pickle.loads(pickle.dumps(evil))
    assert marker.exists()
    marker.unlink()

    _fails(path, match="cannot be read")
    assert not marker.exists()


def test_another_packages_state_dict(tmp_path):
    path = tmp_path / "linear.pt"
    torch.save(torch.nn.Linear(3, 2).state_dict(), path)
    _fails(path, match="not a molequi checkpoint")


def test_another_packages_whole_module(tmp_path):
    """``torch.save(model)`` pickles the class: refused by weights_only, never imported or built."""
    path = tmp_path / "module.pt"
    torch.save(torch.nn.Linear(3, 2), path)
    _fails(path, match="cannot be read")


@pytest.mark.parametrize("content", [b"", b"not a torch file\n", b"PK\x03\x04truncated zip"])
def test_not_a_torch_file(tmp_path, content):
    path = tmp_path / "junk.pt"
    path.write_bytes(content)
    _fails(path, match="cannot be read")


def test_truncated_checkpoint(tmp_path):
    path = tmp_path / "model.pt"
    save_model(_payload(), path)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    _fails(path, match="cannot be read")


def test_missing_file(tmp_path):
    _fails(tmp_path / "absent.pt", match="does not exist")


@pytest.mark.parametrize("version", [VERSION + 1, 99])
def test_newer_format_version(tmp_path, version):
    path = tmp_path / "future.pt"
    save_model({**_payload(), "version": version}, path)
    _fails(path, match=f"version {version} is newer")


def test_newer_version_inside_lightning_checkpoint(tmp_path):
    path = tmp_path / "last.ckpt"
    torch.save({"state_dict": {}, "molequi": {**_payload(), "version": VERSION + 1}}, path)
    _fails(path, match="newer")


@pytest.mark.parametrize("version", ["2.0", None, [1]])
def test_unreadable_format_version(tmp_path, version):
    path = tmp_path / "odd.pt"
    save_model({**_payload(), "version": version}, path)
    _fails(path, match="version")


@pytest.mark.parametrize("key", ["config", "statistics", "model_state"])
def test_missing_top_level_key(tmp_path, key):
    payload = _payload()
    del payload[key]
    path = tmp_path / "partial.pt"
    save_model(payload, path)
    _fails(path, match=f"lacks '{key}'")


def test_missing_weight(tmp_path):
    payload = _payload()
    first = next(iter(payload["model_state"]))
    del payload["model_state"][first]
    path = tmp_path / "partial.pt"
    save_model(payload, path)
    read_checkpoint(path)  # the layout is right; the weights do not fit the model
    with pytest.raises(CheckpointError, match="weights do not fit") as info:
        load_model(path)
    assert str(path) in str(info.value) and first in str(info.value)


def test_config_without_model_name(tmp_path):
    path = tmp_path / "noname.pt"
    save_model({**_payload(), "config": {"model": {}}}, path)
    read_checkpoint(path)
    with pytest.raises(CheckpointError, match="no model name"):
        load_model(path)
