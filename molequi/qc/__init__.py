"""Electronic-structure drivers: reference labels and SCF warm starts.

Modules (import them directly; this package imports nothing on its own)::

    ``pyscf_labels``  ``build_mol`` and ``pyscf_label``: PySCF RKS at one geometry -> ``HamiltonianRecord``
    ``xtb``           GFN2-xTB (tblite) calculator, samplers ``sample_xtb_md`` / ``sample_normal_modes``
                      and the finite-difference Hessian they use
    ``conformers``    ``molecule_from_smiles``: SMILES -> ``ase.Atoms`` (RDKit ETKDG + MMFF)
    ``driver``        ``label_dataset``: label many geometries with PySCF in worker processes into a
                      ``molequi.data.hamiltonian`` store
    ``scf``           SCF warm start from a predicted Fock matrix (``run_scf``, ``predict_fock``)

Units: positions Å; PySCF quantities in Hartree (energies, Fock), Hartree/Bohr (forces); the xTB
samplers work in ASE units (eV, Å, fs, K).
"""
