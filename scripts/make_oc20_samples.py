"""Write the real OC20 frames shipped in data/oc20/source (FAIR-Chem files) in the S2EF raw layout.

    python scripts/make_oc20_samples.py [SRC_DIR] [OUT_DIR]

Frames: ``atoms.json`` (1 CO/Al8Cu8Se16 adslab, tags 0/1, FixAtoms) as sid 0, then the 36 frames of
``random1000156.traj`` (sid 1000156, fid 0..35). Output: ``OUT_DIR/oc20_real.extxyz`` + ``.txt`` (plain),
``oc20_real_xz.extxyz.xz`` + ``.txt.xz`` (the same, xz-compressed) and ``oc20_real.lmdb`` (fairchem S2EF
layout, written by ``molequi data to-lmdb``). The source files carry no OC20 reference energies, so the
txt lists 0.0 for every frame (subtracting it leaves the energy unchanged).
"""

from __future__ import annotations

import lzma
import sys
from pathlib import Path

import ase.io

from molequi.io import atomic_write_bytes
from molequi.data.oc20 import FrameRef, write_s2ef


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    src = Path(argv[0] if argv else "data/oc20/source")
    out = Path(argv[1] if len(argv) > 1 else "data/oc20")
    frames = [ase.io.read(src / "atoms.json")] + ase.io.read(src / "random1000156.traj", ":")
    refs = [FrameRef(0, 0, 0.0)] + [FrameRef(1000156, i, 0.0) for i in range(len(frames) - 1)]
    write_s2ef(frames, refs, out / "oc20_real.extxyz", out / "oc20_real.txt")
    for name, xz in (
        ("oc20_real.extxyz", "oc20_real_xz.extxyz.xz"),
        ("oc20_real.txt", "oc20_real_xz.txt.xz"),
    ):
        atomic_write_bytes(out / xz, lzma.compress((out / name).read_bytes()))
    from molequi.data.oc20_lmdb import convert

    convert([out / "oc20_real.extxyz"], out / "oc20_real.lmdb", workers=0, progress=False)
    print(f"wrote {len(frames)} frames to {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
