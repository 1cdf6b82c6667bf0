"""MACE's symmetric contraction (Batatia et al. 2022, eqs. 10-11) as monomials times a dense matrix.

For every atom i with element z_i, channel c and output irrep L (component M):

    B_i[L M, c] = sum_{nu=1..correlation} sum_k w^{nu,L}_{z_i, k, c}
                  sum_{a_1..a_nu} U^{nu,L,k}_{M; a_1..a_nu} A_i[a_1, c] ... A_i[a_nu, c]

where A_i (dim_in rows) are the atomic-basis features and U^{nu,L,k} span the equivariant maps from the
symmetric nu-th power of the input irreps to L (the generalised Clebsch-Gordan coefficients).

Evaluation. Because A[a_1, c] ... A[a_nu, c] is symmetric in the a's, only its monomials with
a_1 <= ... <= a_nu are needed (816 instead of 4096 for nu = 3 and 16 input rows). So per correlation order:

    monomials      m_nu[p, (i, c)]              built recursively, m_nu = m_{nu-1}[prefix] * A[last]
    one matmul     T[(M, k), (i, c)] = U_nu[(M, k), p] m_nu[p, (i, c)]     (BLAS, no per-element loop)
    weights        B[M, (i, c)] += sum_k T[(M, k), (i, c)] w[k, z_i, c]    (weights gathered by element)

Monomials are ordered by parity so that each output irrep reads one contiguous block of rows.

The basis U is built once from e3nn's Wigner 3j symbols by coupling the inputs one at a time through every
intermediate irrep, symmetrising over the order of the factors, and keeping a linearly independent subset
in a fixed order (no SVD, so the basis - and the meaning of the weights - is the same on every machine).
"""

from __future__ import annotations

import functools
import itertools
import math

import numpy as np
import torch
from torch import nn

from molequi.errors import ConfigError
from molequi.nn.equivariant import ChannelIrreps, Constants, Irrep, clebsch_gordan
from molequi.nn.scatter import gather, plain_autograd

# eager evaluation over blocks of atoms with about this many bytes of monomials: glibc gives every allocation
# above 32 MB a fresh mapping that page-faults on first touch (288 ethanol atoms, f64: one 41 MB block, E+F
# 345 -> 248 CPU ms in 4 MB blocks; 0.5-2 MB blocks were slower from per-operation overhead, 8 MB no better)
BLOCK_BYTES = 4 << 20


def _cg(l1: int, l2: int, l3: int) -> np.ndarray:
    return clebsch_gordan(l1, l2, l3).numpy()


@functools.lru_cache(maxsize=64)
def symmetric_basis(irreps_in: tuple[Irrep, ...], target: Irrep, nu: int) -> np.ndarray:
    """Independent equivariant symmetric tensors (K, 2L+1, dim_in, ..., dim_in) (nu input axes), float64.

    Each is symmetric under any permutation of its input axes, satisfies D_L(R) U = U (D_in(R))^{(x) nu},
    and has Frobenius norm sqrt(2L+1). K may be 0.
    """
    dims = [2 * l + 1 for l, _ in irreps_in]
    offsets = np.cumsum([0] + dims)
    dim = int(offsets[-1])
    lmax_in = max(l for l, _ in irreps_in)
    L, P = target

    # level 1: each input irrep embedded in the dim_in rows; key (l, p, index of last irrep used)
    level = []
    for a, (l, p) in enumerate(irreps_in):
        t = np.zeros((2 * l + 1, dim))
        t[:, offsets[a] : offsets[a + 1]] = np.eye(2 * l + 1)
        level.append((l, p, a, t))
    for k in range(2, nu + 1):
        remaining = nu - k  # factors still to come, each can change l by at most lmax_in
        new = []
        for lt, pt, last, t in level:
            for a in range(
                last, len(irreps_in)
            ):  # non-decreasing irrep order: symmetrisation covers the rest
                la, pa = irreps_in[a]
                for l3 in range(abs(lt - la), lt + la + 1):
                    if abs(l3 - L) > remaining * lmax_in:
                        continue
                    if remaining == 0 and (l3, pt * pa) != (L, P):
                        continue
                    c = _cg(lt, la, l3)  # [mt, ma, m3]
                    coupled = np.zeros((2 * l3 + 1,) + t.shape[1:] + (dim,))
                    coupled[..., offsets[a] : offsets[a + 1]] = np.moveaxis(
                        np.tensordot(t, c, axes=([0], [0])), -1, 0
                    )  # [m3, ..., ma]
                    new.append((l3, pt * pa, a, coupled))
        level = new
    candidates = [t for l, p, _, t in level if (l, p) == (L, P)]
    if not candidates:
        return np.zeros((0, 2 * L + 1) + (dim,) * nu)
    kept, ortho = [], []
    for t in candidates:
        if nu > 1:
            t = sum(
                np.transpose(t, (0,) + tuple(1 + np.array(perm)))
                for perm in itertools.permutations(range(nu))
            ) / math.factorial(nu)
        v = t.reshape(-1)
        norm = np.linalg.norm(v)
        if norm < 1e-10:
            continue
        r = v / norm
        for q in ortho:
            r = r - (q @ r) * q
        rn = np.linalg.norm(r)
        if rn > 1e-6:
            ortho.append(r / rn)
            kept.append(t / norm * math.sqrt(2 * L + 1))
    if not kept:  # every coupling is antisymmetric (e.g. 1o x 1o -> 1e at nu = 2): no symmetric basis
        return np.zeros((0, 2 * L + 1) + (dim,) * nu)
    return np.stack(kept)


def change_of_basis(
    irreps_in: tuple[Irrep, ...], target: Irrep, nu: int, tensors: np.ndarray, tol: float = 1e-10
) -> np.ndarray:
    """Coefficients R (K', K) of the polynomial maps ``tensors`` on ``symmetric_basis(irreps_in, target, nu)``.

    ``tensors`` (K', 2L+1, dim_in, ..., dim_in) (nu input axes, any symmetry) define the maps
    x -> sum_a T_k[M, a_1..a_nu] x_a1 ... x_anu. Only their symmetric part acts on x^(x)nu, so with U_j the
    basis of ``symmetric_basis``:  Sym(T_k) = sum_j R[k, j] U_j, solved by least squares, and a weighted sum
    sum_k w_k T_k equals sum_j (w R)_j U_j. Raises ``ConfigError`` if some Sym(T_k) is not in the span
    (relative residual above ``tol``), i.e. the maps are not equivariant symmetric maps of these irreps.
    """
    basis = symmetric_basis(tuple(irreps_in), tuple(target), nu)  # [K, d, dim^nu]
    tensors = np.asarray(tensors, dtype=np.float64)
    k_foreign = tensors.shape[0]
    if nu > 1:
        tensors = sum(
            np.transpose(tensors, (0, 1) + tuple(2 + np.array(perm)))
            for perm in itertools.permutations(range(nu))
        ) / math.factorial(nu)
    s = tensors.reshape(k_foreign, -1)
    if basis.shape[0] == 0:
        if np.abs(s).max(initial=0.0) > tol:
            raise ConfigError(f"symmetric maps to {target} at correlation {nu} given, but none exist")
        return np.zeros((k_foreign, 0))
    b = basis.reshape(basis.shape[0], -1)
    r, *_ = np.linalg.lstsq(b.T, s.T, rcond=None)  # [K, K']
    residual = np.abs(r.T @ b - s).max(initial=0.0)
    scale = max(np.abs(s).max(initial=0.0), 1.0)
    if residual > tol * scale:
        raise ConfigError(
            f"the given symmetric contraction to {target} at correlation {nu} is not in the span of the "
            f"equivariant symmetric basis (residual {residual:.2e}); the irreps or their order differ"
        )
    return r.T


def _multiplicity(t: tuple[int, ...]) -> float:
    """Number of distinct orderings of the index tuple t."""
    _, counts = np.unique(t, return_counts=True)
    return math.factorial(len(t)) / float(np.prod([math.factorial(int(c)) for c in counts]))


def _fx_tracing() -> bool:
    """True while ``make_fx`` traces (``molequi.interop.export``)."""
    return torch._C._get_dispatch_mode(torch._C._TorchDispatchModeKey.PROXY) is not None


class SymmetricContraction(nn.Module):
    """B = sum_nu <U^nu, w(z) A^{(x) nu}>: (n, irreps_in.dim, c), element (n,) -> (n, irreps_out.dim, c).

    ``irreps_in`` and ``irreps_out`` must have the same channel count c (the contraction is per channel).
    Weights: one (K, num_elements, c) tensor per (correlation order, output irrep), initialised N(0, 1) / K.

    Only monomials that some basis tensor uses are formed (about 355 of the 816 cubic ones for the
    0e+1o+2e+3o -> 0e+1o contraction of MACE, 77 for a scalar-only output), in one block per parity so that
    an output irrep reads a whole block and no tensor is ever sliced.
    """

    def __init__(
        self, irreps_in: ChannelIrreps, irreps_out: ChannelIrreps, correlation: int, num_elements: int
    ):
        super().__init__()
        if correlation < 1:
            raise ConfigError(f"correlation must be >= 1, got {correlation}")
        if irreps_in.channels != irreps_out.channels:
            raise ConfigError(f"symmetric contraction keeps channels: {irreps_in} -> {irreps_out}")
        self.irreps_in, self.irreps_out, self.correlation = irreps_in, irreps_out, correlation
        row_parity = [p for l, p in irreps_in.irreps for _ in range(2 * l + 1)]
        dim = irreps_in.dim

        def parity(t):
            return int(np.prod([row_parity[a] for a in t]))

        # coefficients of every basis tensor on the sorted monomials: coeffs[(target, nu)] = {tuple: [(M, k)]}
        bases: dict[tuple[Irrep, int], np.ndarray] = {}
        used: dict[int, set] = {nu: set() for nu in range(1, correlation + 1)}
        self.num_paths: dict[tuple[Irrep, int], int] = {}
        for target in irreps_out.irreps:
            for nu in range(1, correlation + 1):
                basis = symmetric_basis(irreps_in.irreps, target, nu)  # [K, d, dim, ..., dim]
                self.num_paths[(target, nu)] = basis.shape[0]
                if basis.shape[0] == 0:
                    continue
                tuples = list(itertools.combinations_with_replacement(range(dim), nu))
                index = tuple(np.array(tuples).T)
                coeff = basis[(slice(None), slice(None)) + index] * np.array(
                    [_multiplicity(t) for t in tuples]
                )
                keep = np.abs(coeff).max(axis=(0, 1)) > 1e-12
                bases[(target, nu)] = (coeff[:, :, keep], [t for t, k in zip(tuples, keep) if k])
                used[nu].update(t for t, k in zip(tuples, keep) if k)
        # monomials to form: those used, plus the prefixes of higher orders; level 1 is the input itself
        needed = {nu: set(used[nu]) for nu in used}
        for nu in range(correlation, 2, -1):
            needed[nu - 1].update(t[:-1] for t in needed[nu])
        self._groups: dict[int, list[int]] = {}  # nu -> parities of its blocks, in order
        position: dict[int, dict[tuple, tuple[int, int]]] = {1: {(a,): (0, a) for a in range(dim)}}
        for nu in range(2, correlation + 1):
            flat_prev = {}  # position of a level-(nu-1) tuple in the concatenation of its blocks
            offset = 0
            for b in range(len(self._groups.get(nu - 1, [0]))):
                members = [t for t, (bb, _) in position[nu - 1].items() if bb == b]
                for t in members:
                    flat_prev[t] = offset + position[nu - 1][t][1]
                offset += len(members)
            position[nu] = {}
            self._groups[nu] = []
            for parity_b in (1, -1):  # even block first
                block = sorted(t for t in needed[nu] if parity(t) == parity_b)
                if not block:
                    continue
                b = len(self._groups[nu])
                self._groups[nu].append(parity_b)
                for i, t in enumerate(block):
                    position[nu][t] = (b, i)
                self.register_buffer(
                    f"prefix_{nu}_{b}", torch.tensor([flat_prev[t[:-1]] for t in block]), persistent=False
                )
                self.register_buffer(f"last_{nu}_{b}", torch.tensor([t[-1] for t in block]), persistent=False)
        self._sizes = {
            nu: [
                sum(1 for bb, _ in position[nu].values() if bb == b)
                for b in range(len(self._groups.get(nu, [0])))
            ]
            for nu in position
        }
        self._max_rows = max(map(sum, self._sizes.values()))  # the largest level's monomials (BLOCK_BYTES)
        # plan[i_out] = list of (nu, block, name of U, weight index, K)
        self.constants = Constants()
        self.weights = nn.ParameterList()
        self._plan: list[list[tuple[int, int, str, int, int]]] = []
        for target in irreps_out.irreps:
            d = 2 * target[0] + 1
            entries = []
            for nu in range(1, correlation + 1):
                if (target, nu) not in bases:
                    continue
                coeff, tuples = bases[(target, nu)]  # [K, d, T]
                k = coeff.shape[0]
                block = position[nu][tuples[0]][0]
                u = np.zeros((d, k, self._sizes[nu][block]))
                for j, t in enumerate(tuples):
                    b, i = position[nu][t]
                    assert b == block, "an output irrep reads one parity block"
                    u[:, :, i] = coeff[:, :, j].T
                name = f"U_{target[0]}{'e' if target[1] == 1 else 'o'}_{nu}"
                self.constants.add(name, torch.from_numpy(u.reshape(d * k, -1)))  # [(M, k), monomials]
                entries.append((nu, block, name, len(self.weights), k))
                self.weights.append(nn.Parameter(torch.randn(k, num_elements, irreps_in.channels) / k))
            if not entries:
                raise ConfigError(
                    f"no symmetric product of {irreps_in} up to correlation {correlation} "
                    f"gives {target[0]}{'e' if target[1] == 1 else 'o'}"
                )
            self._plan.append(entries)

    def forward(self, x: torch.Tensor, element: torch.Tensor) -> torch.Tensor:
        # traced graphs (torch.compile, make_fx for export) take all atoms as one piece: a split fixes the
        # number of blocks to the tracing example's (torch.export then refuses the dynamic atom count)
        traced = plain_autograd() or _fx_tracing()
        per = max(BLOCK_BYTES // (self._max_rows * x.shape[2] * x.element_size()), 1)
        if traced or x.shape[0] <= per:
            return self._forward(x, element, traced)
        blocks = zip(torch.split(x, per), torch.split(element, per))
        return torch.cat([self._forward(xb, zb, traced) for xb, zb in blocks])

    def _forward(self, x: torch.Tensor, element: torch.Tensor, traced: bool) -> torch.Tensor:
        n, dim, c = x.shape
        a = x.permute(1, 0, 2).reshape(dim, n * c)  # [dim, (i, c)]
        levels = [[a]]  # levels[nu - 1][block] = monomials [P, (i, c)]
        for nu in range(2, self.correlation + 1):
            prev = levels[-1][0] if len(levels[-1]) == 1 else torch.cat(levels[-1], dim=0)
            blocks = []
            for b in range(len(self._groups[nu])):
                prefix, last = getattr(self, f"prefix_{nu}_{b}"), getattr(self, f"last_{nu}_{b}")
                blocks.append(gather(prev, prefix) * gather(a, last))
            levels.append(blocks)
        outs = []
        for target, entries in zip(self.irreps_out.irreps, self._plan):
            d = 2 * target[0] + 1
            out = None
            for nu, block, name, w_index, k in entries:
                u = self.constants.get(name, x)  # [(M, k), P]
                t = (u @ levels[nu - 1][block]).reshape(d, k, n, c)
                w = self.weights[w_index].index_select(1, element)  # [k, n, c]
                if traced:
                    # an einsum, not (t * w).sum(1): the broadcast product's backward hands reshape a
                    # non-contiguous gradient, which torch.compile's and make_fx's (export) traced backward
                    # graphs cannot view
                    term = torch.einsum("dkic,kic->dic", t, w)  # [d, n, c]
                else:  # eager: the einsum is a bmm of n x c tiny matrices, 3-5x slower with its backward
                    term = (t * w).sum(1)
                out = term if out is None else out + term
            outs.append(out)
        out = outs[0] if len(outs) == 1 else torch.cat(outs, dim=0)
        return out.permute(1, 0, 2)  # [n, dim_out, c]


__all__ = ["SymmetricContraction", "symmetric_basis", "change_of_basis"]
