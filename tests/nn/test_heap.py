"""molequi.nn.heap.retained_heap: glibc's top pad raised inside the block, nesting, results unchanged."""

import platform

import torch

from molequi.nn import heap


def test_retained_heap_nests_and_restores():
    on_glibc = platform.system() == "Linux" and platform.libc_ver()[0] == "glibc"
    x = torch.randn(600, 700)
    ref = torch.nn.functional.silu(x @ x.T)
    with heap.retained_heap() as outer:
        assert outer is on_glibc and heap._state["depth"] == 1
        with heap.retained_heap() as inner:
            assert inner is on_glibc and heap._state["depth"] == 2
            for _ in range(3):  # large temporaries freed and reallocated inside the block
                out = torch.nn.functional.silu(x @ x.T)
        assert heap._state["depth"] == 1
    assert heap._state["depth"] == 0
    assert torch.equal(out, ref)
