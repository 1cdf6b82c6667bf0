"""Build a small OC20-style adsorbate-on-slab set labelled with ASE's EMT potential.

    python scripts/make_emt_slabs.py [OUT_DIR] [--seed 0]

Systems: CO, O and H on Cu, Pt and Au fcc(111) slabs (3x3 surface cell, 3 layers, 7 Å vacuum each side), at
the fcc, hcp and ontop sites: 27 systems. Like OC20: the two bottom layers are fixed (``FixAtoms``, written as
``move_mask`` F), tags are 0 subsurface / 1 surface / 2 adsorbate, every frame has energy and forces, and
each system is a short relaxation (BFGS, at most 8 steps, fmax 0.05 eV/Å) started from a rattled geometry
(sigma 0.05 Å on the free atoms), every step kept as a frame (fid = step).

Reference energy in the txt (OC20's meaning: energy of the clean slab plus the adsorbate's gas-phase
reference): E_EMT(relaxed-free clean slab, same cell) + E_EMT(CO molecule) for CO, E_EMT(O2)/2 for O,
E_EMT(H2)/2 for H, so ``energy - reference`` is an adsorption energy. EMT is a toy potential (Jacobsen et
al., Surf. Sci. 366, 394 (1996), ASE's ``ase.calculators.emt``): use these files to test pipelines, not to
learn chemistry.

Output in OUT_DIR (default ``data/oc20``): ``emt_slabs.extxyz`` + ``emt_slabs.txt`` (S2EF raw layout) and
``emt_slabs.lmdb`` (fairchem S2EF LMDB, via ``molequi.data.oc20_lmdb.convert``).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
from ase.build import add_adsorbate, fcc111, molecule
from ase.calculators.emt import EMT
from ase.calculators.singlepoint import SinglePointCalculator
from ase.constraints import FixAtoms
from ase.optimize import BFGS

from molequi.data.oc20 import FrameRef, write_s2ef

METALS = ("Cu", "Pt", "Au")
ADSORBATES = ("CO", "O", "H")
SITES = ("fcc", "hcp", "ontop")
HEIGHT = {"CO": 1.9, "O": 1.3, "H": 1.0}
MAX_STEPS, FMAX, RATTLE = 8, 0.05, 0.05


def gas_reference(ads: str) -> float:
    if ads == "CO":
        m = molecule("CO")
        m.calc = EMT()
        return m.get_potential_energy()
    m = molecule("O2" if ads == "O" else "H2")
    m.calc = EMT()
    return 0.5 * m.get_potential_energy()


def slab(metal: str):
    s = fcc111(metal, size=(3, 3, 3), vacuum=7.0)
    layer = s.get_tags()  # ase: 1 = top layer ... 3 = bottom
    s.set_tags(np.where(layer == 1, 1, 0))  # OC20: 1 surface, 0 subsurface
    s.set_constraint(FixAtoms(mask=layer >= 2))  # fix the two bottom layers
    return s


def frames_for(metal: str, ads: str, site: str, rng: np.random.Generator):
    s = slab(metal)
    clean = s.copy()
    clean.calc = EMT()
    ref = clean.get_potential_energy() + gas_reference(ads)
    adsorbate = molecule("CO") if ads == "CO" else molecule(ads) if ads != "O" else None
    if ads == "O":
        add_adsorbate(s, "O", HEIGHT[ads], site)
    elif ads == "H":
        add_adsorbate(s, "H", HEIGHT[ads], site)
    else:
        adsorbate.rotate(180, "x")  # C down
        add_adsorbate(s, adsorbate, HEIGHT[ads], site, mol_index=1 if adsorbate[1].symbol == "C" else 0)
    tags = s.get_tags()
    n_slab = len(clean)
    tags[n_slab:] = 2
    s.set_tags(tags)
    free = ~np.isin(np.arange(len(s)), s.constraints[0].get_indices())
    s.positions[free] += rng.normal(0.0, RATTLE, size=(int(free.sum()), 3))
    s.calc = EMT()
    frames = []

    def snapshot():
        f = s.copy()
        e = s.get_potential_energy()
        f.calc = SinglePointCalculator(
            f, energy=e, free_energy=e, forces=s.get_forces(apply_constraint=False)
        )
        frames.append(f)

    opt = BFGS(s, logfile=None)
    opt.attach(snapshot, interval=1)
    opt.run(fmax=FMAX, steps=MAX_STEPS)
    return frames, ref


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("out", nargs="?", default="data/oc20")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    rng = np.random.default_rng(args.seed)
    out = Path(args.out)
    all_frames, refs = [], []
    sid = 0
    for metal in METALS:
        for ads in ADSORBATES:
            for site in SITES:
                frames, ref = frames_for(metal, ads, site, rng)
                all_frames += frames
                refs += [FrameRef(sid, fid, ref) for fid in range(len(frames))]
                sid += 1
    write_s2ef(all_frames, refs, out / "emt_slabs.extxyz", out / "emt_slabs.txt")
    from molequi.data.oc20_lmdb import convert

    n = convert([out / "emt_slabs.extxyz"], out / "emt_slabs.lmdb", workers=0, progress=False)
    print(f"wrote {sid} systems, {n} frames to {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
