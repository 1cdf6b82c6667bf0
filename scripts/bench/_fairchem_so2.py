"""Peer side of the SO(2) convolution comparison: fairchem's eSCN SO(2) convolution, run by a python that has
``fairchem-core`` (``bash scripts/bench/setup_peers.sh fairchem``), never by molequi's venv.

    PY _fairchem_so2.py            answers the driver (scripts/bench/tensor_products.py), one JSON a line

The code timed is fairchem-core's, unmodified: ``fairchem.core.models.equiformer_v2.so2_ops.SO2_Convolution``
(eSCN's per-order SO(2) linear maps, as EquiformerV2 uses them) and, for the whole convolution, the edge frame
of ``edge_rot_mat.init_edge_rot_mat``, the Wigner matrices of ``so3.SO3_Rotation`` and the rotations of
``so3.SO3_Embedding``. Only the package ``__init__`` files are bypassed (they import fairchem's trainers,
pymatgen, wandb, ...; the SO(2) modules need torch and e3nn only). The radial MLP is replaced by the identity:
both sides receive the same per-edge modulation tensor, so neither side times a radial network.

Commands (stdin): {"cmd": "setup", "file": F, "out": G} loads the inputs and weights that the driver saved
(torch.save of a dict of tensors), builds the modules in the inputs' dtype, evaluates them once and saves
the outputs to G; {"cmd": "time", "name": N, "backward": B} answers the wall and process CPU seconds of one
call of N ("so2_linear": in the edge frame; "so2_conv": rotate, SO(2) linear, rotate back), with B the
backward pass of the summed output as well; {"cmd": "quit"}.
"""

from __future__ import annotations

import functools
import importlib.util
import json
import sys
import time
import types

import torch

MARK = "@@json "


@functools.cache
def import_so2():
    """fairchem's equiformer_v2 so2_ops / so3 / edge_rot_mat modules without running the package inits."""
    base = list(importlib.util.find_spec("fairchem").submodule_search_locations)[0]
    for name, sub in [("fairchem", ""), ("fairchem.core", "/core"), ("fairchem.core.models", "/core/models"),
                      ("fairchem.core.models.equiformer_v2", "/core/models/equiformer_v2")]:
        if name not in sys.modules or not hasattr(sys.modules[name], "__path__"):
            module = types.ModuleType(name)
            module.__path__ = [base + sub]
            sys.modules[name] = module
    from fairchem.core.models.equiformer_v2 import edge_rot_mat, so2_ops, so3

    return so2_ops, so3, edge_rot_mat


def timed_call(fn, backward: bool, grads) -> dict:
    """Wall and process CPU seconds of one call of ``fn``: forward only (no grad), or forward + backward of
    the summed output; the gradients of ``grads`` are dropped afterwards (no accumulation between calls)."""
    t0, c0 = time.perf_counter(), time.process_time()
    if backward:
        fn().sum().backward()
    else:
        with torch.no_grad():
            fn()
    wall, cpu = time.perf_counter() - t0, time.process_time() - c0
    for t in grads:
        t.grad = None
    return {"wall_s": wall, "cpu_s": cpu}


class Peer:
    def setup(self, file: str, out: str) -> dict:
        so2_ops, so3, erm = import_so2()
        d = torch.load(file, weights_only=True)
        L, C = int(d["lmax"]), int(d["channels"])
        dtype = d["x_edge"].dtype
        torch.set_default_dtype(dtype)  # fairchem allocates its Wigner matrices in the default dtype
        torch.manual_seed(0)  # init_edge_rot_mat draws a random roll about each edge
        mapping = so3.CoefficientMappingModule([L], [L])
        conv = so2_ops.SO2_Convolution(C, C, [L], [L], mapping, internal_weights=False,
                                       edge_channels_list=[1, 1])
        conv.rad_func = torch.nn.Identity()  # the modulation tensor is an input on both sides
        with torch.no_grad():
            conv.fc_m0.weight.copy_(d["fc_m0.weight"])
            conv.fc_m0.bias.copy_(d["fc_m0.bias"])
            for m in range(1, L + 1):
                conv.so2_m_conv[m - 1].fc.weight.copy_(d[f"fc_m{m}.weight"])
        conv = conv.to(dtype)
        rotation = so3.SO3_Rotation(L)
        self.x_edge = d["x_edge"].clone().requires_grad_(True)
        self.x = d["x"].clone().requires_grad_(True)
        self.vec, self.rad = d["vec"], d["rad"]
        E = self.x.shape[0]

        def so2_linear():
            emb = so3.SO3_Embedding(E, [L], C, device=self.x.device, dtype=dtype)
            emb.set_embedding(self.x_edge)
            return conv(emb, self.rad).embedding

        def so2_conv():
            rotation.set_wigner(erm.init_edge_rot_mat(self.vec))
            emb = so3.SO3_Embedding(E, [L], C, device=self.x.device, dtype=dtype)
            emb.set_embedding(self.x)
            emb._rotate([rotation], [L], [L])
            y = conv(emb, self.rad)
            y._rotate_inv([rotation], mapping)
            return y.embedding

        self.fns = {"so2_linear": so2_linear, "so2_conv": so2_conv}
        self.params = list(conv.parameters())
        with torch.no_grad():
            torch.save({name: fn().detach() for name, fn in self.fns.items()}, out)
        return {"ok": True, "parameters": sum(p.numel() for p in self.params)}

    def time(self, name: str, backward: bool) -> dict:
        return timed_call(self.fns[name], backward, (self.x, self.x_edge, *self.params))


def main() -> None:
    torch.set_num_threads(int(sys.argv[1]) if len(sys.argv) > 1 else 1)
    peer = Peer()
    from importlib.metadata import version

    print(MARK + json.dumps({"ready": True, "fairchem_core": version("fairchem-core"),
                             "torch": torch.__version__, "e3nn": version("e3nn")}), flush=True)
    for line in sys.stdin:
        cmd = json.loads(line)
        if cmd["cmd"] == "quit":
            break
        if cmd["cmd"] == "setup":
            answer = peer.setup(cmd["file"], cmd["out"])
        else:
            answer = peer.time(cmd["name"], cmd["backward"])
        print(MARK + json.dumps(answer), flush=True)


if __name__ == "__main__":
    main()
