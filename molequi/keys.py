"""Canonical field names of a molequi graph record (a ``torch_geometric.data.Data``).

Shapes use n = atoms, E = edges, B = structures in a batch. Units are molequi's (see ``molequi.units``).

Per atom::

  NUMBERS   (n,) long        atomic numbers Z
  POS       (n, 3) float     positions, Å
  FORCES    (n, 3) float     eV/Å
  CHARGES   (n,) float       partial charges, e
  ENERGIES  (n,) float       per-atom energies, eV (model output)

Per structure (leading dim 1 so that PyG batching concatenates to B)::

  CELL      (1, 3, 3) float  lattice vectors as rows, Å (zeros for a molecule)
  PBC       (1, 3) bool
  ENERGY    (1,) float       eV
  STRESS    (1, 3, 3) float  eV/Å^3, ASE sign convention (sigma = 1/V dE/d(strain))
  WEIGHT, ENERGY_WEIGHT, FORCES_WEIGHT, STRESS_WEIGHT  (1,) float  loss weights of the structure (MACE's
            config_weight, config_<property>_weight), present when the file gives any
  CONFIG_TYPE, HEAD  str     MACE's config_type and head (plain strings, present when the file gives any)

Graph (built outside the model by ``molequi.graph``)::

  EDGE_INDEX  (2, E) long    [sender, receiver]; edge vector = pos[receiver] - pos[sender] + shift
  UNIT_SHIFTS (E, 3) long    integer cell shifts S of the receiver's image
  SHIFTS      (E, 3) float   S @ cell, Å (recomputed inside models from UNIT_SHIFTS so stress works)
"""

NUMBERS = "numbers"
POS = "pos"
CELL = "cell"
PBC = "pbc"
ENERGY = "energy"
FORCES = "forces"
STRESS = "stress"
VIRIALS = "virials"
CHARGES = "charges"
ENERGIES = "energies"
EDGE_INDEX = "edge_index"
UNIT_SHIFTS = "unit_shifts"
SHIFTS = "shifts"
BATCH = "batch"
PTR = "ptr"
TAGS = "tags"
FIXED = "fixed"
CUTOFF = "cutoff"
WEIGHT = "weight"
ENERGY_WEIGHT = "energy_weight"
FORCES_WEIGHT = "forces_weight"
STRESS_WEIGHT = "stress_weight"
CONFIG_TYPE = "config_type"
HEAD = "head"

# MACE's extended-XYZ convention and ASE's defaults, accepted by the readers
DEFAULT_ENERGY_KEYS = ("energy", "REF_energy", "free_energy")
DEFAULT_FORCES_KEYS = ("forces", "REF_forces")
DEFAULT_STRESS_KEYS = ("stress", "REF_stress")
DEFAULT_VIRIALS_KEYS = ("REF_virials", "virials")  # stress = -virials / volume (mace-torch)
