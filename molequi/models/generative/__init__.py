"""3D molecule generation: EDM (continuous, equivariant), an EQGAT-diff-style categorical variant, fast
samplers (DDIM, progressive distillation) and EDM's quality metrics.

    metrics        bond orders from distances, stability, RDKit validity, uniqueness, novelty
    schedules      polynomial_2 (EDM) and cosine noise schedules
    graph          per-molecule fully connected edges and centre-of-mass helpers (no padding)
    layers         EDM's equivariant block
    edm            EDM model: training loss, ancestral and DDIM sampling
    categorical    categorical atoms / charges / bonds diffusion with a continuous position part
    distill        progressive distillation of the deterministic sampler
    data           geometry-only molecule sets (xyz tarballs, extxyz)
    io             writing generated molecules (SDF with bonds, extended XYZ), atomically

Imports are lazy: ``from molequi.models.generative import edm``.
"""
