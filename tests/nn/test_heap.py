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


def test_retained_heap_sets_the_mmap_threshold_first_and_restores_the_pad(monkeypatch):
    """mallopt(M_MMAP_THRESHOLD) before mallopt(M_TOP_PAD) (setting the pad would freeze glibc's dynamic
    threshold at its 128 KiB start), the pad back to glibc's default and malloc_trim on exit."""
    calls = []

    class FakeLibc:
        def mallopt(self, param, value):
            calls.append(("mallopt", param, value))
            return 1

        def malloc_trim(self, pad):
            calls.append(("malloc_trim", pad))
            return 1

    monkeypatch.setitem(heap._state, "libc", FakeLibc())
    with heap.retained_heap(1 << 20, mmap_threshold=8 << 20) as took:
        assert took is True
        with heap.retained_heap(1 << 30, mmap_threshold=1 << 30):  # nested: the outer setting stays
            pass
    assert calls == [("mallopt", -3, 8 << 20), ("mallopt", -2, 1 << 20), ("mallopt", -2, 128 * 1024),
                     ("malloc_trim", 0)]
