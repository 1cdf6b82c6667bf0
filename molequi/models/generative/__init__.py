"""3D molecule generation: EDM (continuous, equivariant), categorical diffusion (EQGAT-diff) and fast
samplers (DDIM, progressive distillation). The molecules they read and write live in
``molequi.data.molecules`` (readers, ``Molecule``, SDF / extended XYZ writers) and ``molequi.data.bonds``
(EDM's distance bonds); EDM's quality metrics in ``molequi.tasks.generation_metrics``.

    schedules      polynomial_2 (EDM) and cosine noise schedules
    graph          per-molecule fully connected edges and centre-of-mass helpers (no padding)
    layers         EDM's equivariant block
    eqgat          EQGAT-diff's denoiser (equivariant graph attention, scalar / vector / edge features)
    edm            EDM model: training loss, ancestral and DDIM sampling
    categorical    categorical atoms / charges / bonds diffusion with a continuous position part
    distill        progressive distillation of the deterministic sampler
    io             checkpoints of generative models, through ``molequi.checkpoint``

Imports are lazy: ``from molequi.models.generative import edm``.
"""
