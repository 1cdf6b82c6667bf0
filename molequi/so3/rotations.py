"""Wigner-D rotations of real spherical-harmonic coefficients into per-edge frames, batched and cheap.

Conventions are e3nn's (0.6): real spherical harmonics with y as the polar axis, coefficient index
``l^2 + l + m`` for m = -l..l, and

    D^l(alpha, beta, gamma) = Dy^l(alpha) Dx^l(beta) Dy^l(gamma),        R = R_y(alpha) R_x(beta) R_y(gamma)

(``o3.wigner_D`` / ``o3.angles_to_matrix``). The edge frame of a unit vector u is R_u = R_y(alpha) R_x(beta)
with R_u e_y = u, where u = (sin a sin b, cos b, cos a sin b), i.e. cos b = u_y, sin b = sqrt(u_x^2 + u_z^2),
cos a = u_z / sin b, sin a = u_x / sin b. In the edge frame the edge's spherical harmonics have only the
m = 0 component, which is what makes the SO(2) convolution of eSCN possible.

How it is computed (no matrix exponentials, no per-edge dense Wigner matrices):

* Dy(theta) is sparse. On the pair (l-m, l+m), m > 0, it is [[cos m theta, sin m theta], [-sin m theta,
  cos m theta]] for every l (checked against ``o3.wigner_D``); cos/sin(m theta) come from the Chebyshev
  recurrence on (cos theta, sin theta), so no angle (atan2 / acos) is ever formed.
* Dx(beta) = DQ Dy(beta) DQ^T with the fixed rotation Q = R_z(-pi/2) (Q e_y = e_x), so a rotation by
  D(R_u)^T = DQ Dy(-beta) DQ^T Dy(-alpha) costs two sparse passes plus two dense products with one fixed
  (2l+1)^2 block per l: O(sum_l (2l+1)^2 C) = O(L^3 C) per edge for C channels.

Polar singularity: any edge frame field on the sphere has one (hairy ball). The frame above is ill-defined
where u = +-e_y (sin b = 0); the *result* of an equivariant operation does not depend on the frame, but the
gradient of the frame blows up there. Bonds along a lattice axis are common in crystals, so ``EdgeFrame``
first tilts every direction by a fixed generic rotation P0 (u' = P0^T u, R_u = P0 R_u'), moving the
singular directions to +-P0 e_y, an irrational direction no lattice or symmetric molecule hits; models can
instead tilt their input vectors once (``tilt=False`` here), which costs nothing per edge.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from e3nn import o3
from torch import nn

# fixed "generic" rotation used to move the frame singularity off lattice directions
_TILT_ANGLES = (0.7137, 1.1213, 0.4181)


def tilt_matrix(dtype=torch.float64) -> torch.Tensor:
    """The fixed rotation P0 (3, 3) whose +-P0 e_y are the only singular edge directions of ``EdgeFrame``."""
    a, b, g = (torch.tensor(v, dtype=torch.float64) for v in _TILT_ANGLES)
    return o3.angles_to_matrix(a, b, g).to(dtype)


def wigner_D_fixed(l: int, R: torch.Tensor) -> torch.Tensor:
    """D^l(R) (2l+1, 2l+1) for one proper rotation matrix R (3, 3), via e3nn (float64 internally)."""
    old = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)  # e3nn builds its generators in the default dtype
    try:
        a, b, g = o3.matrix_to_angles(R.to(torch.float64))
        return o3.wigner_D(l, a, b, g).to(torch.float64)
    finally:
        torch.set_default_dtype(old)


def cos_sin_multiples(c: torch.Tensor, s: torch.Tensor, m_max: int) -> tuple[torch.Tensor, torch.Tensor]:
    """cos(m t), sin(m t) for m = 0..m_max from c = cos t, s = sin t, each (E,) -> (E, m_max + 1)."""
    cos = [torch.ones_like(c)]
    sin = [torch.zeros_like(s)]
    for _ in range(m_max):
        cm, sm = cos[-1], sin[-1]
        cos.append(cm * c - sm * s)
        sin.append(sm * c + cm * s)
    return torch.stack(cos, dim=-1), torch.stack(sin, dim=-1)


class BlockLayout:
    """Index tables for a stack of spherical-harmonic blocks of degrees ``ls`` (coefficients along one axis).

    For a full layout up to L, ``ls = [0, 1, ..., L]`` and the stack has K = (L+1)^2 coefficients in e3nn's
    order. ``abs_m[k]``, ``partner[k]`` (the index of the same l with -m), ``sign[k]`` (-1 for m > 0, +1 for
    m < 0, 0 for m = 0) describe the y-rotation; ``start[i]`` is the offset of block i.
    """

    def __init__(self, ls: Sequence[int]):
        self.ls = [int(l) for l in ls]
        self.start, abs_m, partner, sign, m_of = [], [], [], [], []
        k = 0
        for l in self.ls:
            self.start.append(k)
            for m in range(-l, l + 1):
                abs_m.append(abs(m))
                partner.append(k + l - m)
                sign.append(0.0 if m == 0 else (1.0 if m < 0 else -1.0))
                m_of.append(m)
            k += 2 * l + 1
        self.dim = k
        self.abs_m = torch.tensor(abs_m, dtype=torch.long)
        self.partner = torch.tensor(partner, dtype=torch.long)
        self.sign = torch.tensor(sign)
        self.m = torch.tensor(m_of, dtype=torch.long)
        self.lmax = max(self.ls) if self.ls else 0


class EdgeFrame(nn.Module):
    """Rotate coefficient stacks into / out of each edge's frame.

    ``frame = EdgeFrame(ls).angles(vec)`` precomputes per-edge cos/sin tables from edge vectors (E, 3);
    ``to_edge(x, frame)`` applies D(R_u)^T and ``from_edge(y, frame)`` applies D(R_u) to x of shape (E, K, C)
    (K = sum_l (2l+1) over ``ls``). ``to_edge(from_edge(y)) == y`` to round-off.
    """

    def __init__(self, ls: Sequence[int], tilt: bool = True):
        super().__init__()
        self.layout = BlockLayout(ls)
        self.tilt = bool(tilt)
        Q = torch.tensor(
            [[0.0, 1.0, 0.0], [-1.0, 0.0, 0.0], [0.0, 0.0, 1.0]], dtype=torch.float64
        )  # R_z(-pi/2)
        assert torch.allclose(
            Q @ torch.tensor([0.0, 1.0, 0.0], dtype=torch.float64),
            torch.tensor([1.0, 0.0, 0.0], dtype=torch.float64),
        )
        lmax = self.layout.lmax
        # fixed matrices are kept in float64 (not as buffers, so ``module.to(float32).to(float64)`` cannot
        # round them) and cast once per (device, dtype) on first use
        self._fixed64 = {f"dq_{l}": wigner_D_fixed(l, Q) for l in range(lmax + 1)}
        if self.tilt:
            self._fixed64.update({f"dp_{l}": wigner_D_fixed(l, tilt_matrix()) for l in range(lmax + 1)})
        self._fixed64["p0"] = tilt_matrix()
        self._fixed64["sign"] = self.layout.sign.to(torch.float64)
        self._cache: dict = {}
        # blocks grouped by degree: (l, index (nb, 2l+1) or None when one block, start of the single block)
        self._groups = []
        for l in sorted(set(self.layout.ls)):
            starts = [k0 for ll, k0 in zip(self.layout.ls, self.layout.start) if ll == l]
            if len(starts) == 1:
                self._groups.append((l, None, starts[0]))
            else:
                idx = torch.tensor([[k0 + i for i in range(2 * l + 1)] for k0 in starts], dtype=torch.long)
                self._groups.append((l, idx, starts[0]))
        # position of every coefficient in the concatenation of the groups' outputs (None: already in order)
        order = []
        for l, idx, k0 in self._groups:
            order += list(range(k0, k0 + 2 * l + 1)) if idx is None else idx.flatten().tolist()
        inverse = [0] * len(order)
        for pos, k in enumerate(order):
            inverse[k] = pos
        self._inverse_order = None if order == list(range(len(order))) else torch.tensor(inverse)
        self.register_buffer("abs_m", self.layout.abs_m, persistent=False)
        self.register_buffer("partner", self.layout.partner, persistent=False)

    def _fixed(self, name: str, like: torch.Tensor) -> torch.Tensor:
        key = (name, like.device, like.dtype)
        t = self._cache.get(key)
        if t is None:
            t = self._fixed64[name].to(device=like.device, dtype=like.dtype)
            if not torch.compiler.is_compiling():  # a compiled graph would return the cached value as an output
                self._cache[key] = t
        return t

    # -- per-edge tables ---------------------------------------------------------------------------------
    def angles(self, vec: torch.Tensor) -> dict[str, torch.Tensor]:
        """Per-edge tables from edge vectors (E, 3): cos/sin(m alpha), cos/sin(m beta), each (E, L+1)."""
        u = vec / vec.norm(dim=-1, keepdim=True)
        if self.tilt:
            u = u @ self._fixed("p0", u)  # rows: (P0^T u)^T
        x, y, z = u.unbind(-1)
        tiny = torch.finfo(u.dtype).tiny
        rho = torch.sqrt(x * x + z * z + tiny)
        cb, sb = y, rho
        ca, sa = z / rho, x / rho
        L = self.layout.lmax
        cos_a, sin_a = cos_sin_multiples(ca, sa, L)
        cos_b, sin_b = cos_sin_multiples(cb, sb, L)
        return {"cos_a": cos_a, "sin_a": sin_a, "cos_b": cos_b, "sin_b": sin_b}

    # -- elementary passes -------------------------------------------------------------------------------
    def _rot_y(
        self, x: torch.Tensor, cos_m: torch.Tensor, sin_m: torch.Tensor, inverse: bool
    ) -> torch.Tensor:
        """x (E, K, C) -> Dy(theta) x (or Dy(-theta) x), theta per edge given by cos/sin(m theta) (E, L+1)."""
        c = cos_m[:, self.abs_m].unsqueeze(-1)  # [E, K, 1]
        s = (sin_m[:, self.abs_m] * self._fixed("sign", sin_m)).unsqueeze(-1)  # [E, K, 1]
        if inverse:
            s = -s
        return c * x + s * x.index_select(1, self.partner)

    def _dense(self, x: torch.Tensor, prefix: str, transpose: bool) -> torch.Tensor:
        """Apply a fixed block-diagonal matrix (one (2l+1)^2 block per l) to x (E, K, C).

        Blocks of equal degree are gathered and multiplied together (one matmul per distinct l); the results
        are concatenated and put back in place with one ``index_select`` (no zero fill, no index_put).
        """
        parts = []
        for l, idx, k0 in self._groups:
            if idx is None:  # a single block of this degree: a slice
                xb = x[:, k0 : k0 + 2 * l + 1]  # [E, 2l+1, C]
                parts.append(xb if l == 0 else torch.matmul(self._block(prefix, l, x, transpose), xb))
            else:
                xb = x.index_select(1, idx.to(x.device).flatten()).unflatten(1, idx.shape)  # [E, nb, 2l+1, C]
                y = xb if l == 0 else torch.matmul(self._block(prefix, l, x, transpose), xb)
                parts.append(y.flatten(1, 2))
        y = parts[0] if len(parts) == 1 else torch.cat(parts, dim=1)
        if self._inverse_order is None:
            return y
        return y.index_select(1, self._inverse_order.to(x.device))

    def _block(self, prefix: str, l: int, like: torch.Tensor, transpose: bool) -> torch.Tensor:
        d = self._fixed(f"{prefix}_{l}", like)
        return d.T if transpose else d

    # -- public ---------------------------------------------------------------------------------------------
    def to_edge(self, x: torch.Tensor, frame: dict[str, torch.Tensor]) -> torch.Tensor:
        """D(R_u)^T x = DQ Dy(-b) DQ^T Dy(-a) [DP0^T] x, x (E, K, C) in the global frame -> edge frame."""
        if self.tilt:
            x = self._dense(x, "dp", transpose=True)
        x = self._rot_y(x, frame["cos_a"], frame["sin_a"], inverse=True)
        x = self._dense(x, "dq", transpose=True)
        x = self._rot_y(x, frame["cos_b"], frame["sin_b"], inverse=True)
        return self._dense(x, "dq", transpose=False)

    def from_edge(self, y: torch.Tensor, frame: dict[str, torch.Tensor]) -> torch.Tensor:
        """D(R_u) y = [DP0] Dy(a) DQ Dy(b) DQ^T y, y (E, K, C) in the edge frame -> global frame."""
        y = self._dense(y, "dq", transpose=True)
        y = self._rot_y(y, frame["cos_b"], frame["sin_b"], inverse=False)
        y = self._dense(y, "dq", transpose=False)
        y = self._rot_y(y, frame["cos_a"], frame["sin_a"], inverse=False)
        if self.tilt:
            y = self._dense(y, "dp", transpose=False)
        return y

    def wigner_D(self, vec: torch.Tensor) -> torch.Tensor:
        """Dense D(R_u) (E, K, K) (for tests and inspection; the forward passes never build it)."""
        E = vec.shape[0]
        eye = torch.eye(self.layout.dim, dtype=vec.dtype, device=vec.device).expand(E, -1, -1)
        return self.from_edge(eye, self.angles(vec))

    def edge_rotation(self, vec: torch.Tensor) -> torch.Tensor:
        """The 3x3 frame rotation R_u (E, 3, 3) with R_u e_y = u (R_u = P0 R_y(a) R_x(b) when tilted)."""
        f = self.angles(vec)
        ca, sa, cb, sb = f["cos_a"][:, 1], f["sin_a"][:, 1], f["cos_b"][:, 1], f["sin_b"][:, 1]
        zero, one = torch.zeros_like(ca), torch.ones_like(ca)
        Ry = torch.stack([ca, zero, sa, zero, one, zero, -sa, zero, ca], -1).reshape(-1, 3, 3)
        Rx = torch.stack([one, zero, zero, zero, cb, -sb, zero, sb, cb], -1).reshape(-1, 3, 3)
        R = Ry @ Rx
        return self._fixed("p0", R) @ R if self.tilt else R


def irreps_blocks_to_stack(x: torch.Tensor, irreps: o3.Irreps) -> torch.Tensor:
    """e3nn layout (..., irreps.dim), one multiplicity C -> stack (..., K, C), K = sum_i (2 l_i + 1)."""
    muls = {mul for mul, _ in irreps}
    if len(muls) != 1:
        raise ValueError(f"irreps {irreps} must have one common multiplicity to be stacked")
    (C,) = muls
    parts = [
        x[..., s].reshape(*x.shape[:-1], C, ir.dim).transpose(-1, -2)
        for s, (_, ir) in zip(irreps.slices(), irreps)
    ]
    return torch.cat(parts, dim=-2)


def stack_to_irreps_blocks(x: torch.Tensor, irreps: o3.Irreps) -> torch.Tensor:
    """Inverse of ``irreps_blocks_to_stack``: (..., K, C) -> (..., irreps.dim)."""
    parts, k = [], 0
    for _, ir in irreps:
        blk = x[..., k : k + ir.dim, :].transpose(-1, -2)
        parts.append(blk.reshape(*x.shape[:-2], -1))
        k += ir.dim
    return torch.cat(parts, dim=-1)


def haar_rotation(generator: torch.Generator | None = None, dtype=torch.float64, *,
                  gaussian: torch.Tensor | None = None) -> torch.Tensor:
    """A Haar-uniform random rotation (3, 3) (QR of a Gaussian matrix with the sign fix of Mezzadri 2007).

    With A = QR (A a (3, 3) standard normal matrix), Q diag(sign(diag R)) is Haar-distributed on O(3);
    negating its first column when its determinant is -1 gives the Haar measure on SO(3). ``gaussian``: use
    this (3, 3) standard normal draw for A (e.g. from a NumPy generator) instead of drawing it from
    ``generator``.
    """
    if gaussian is None:
        A = torch.randn(3, 3, generator=generator, dtype=torch.float64)
    else:
        A = torch.as_tensor(gaussian, dtype=torch.float64).reshape(3, 3)
    Qm, Rm = torch.linalg.qr(A)
    Qm = Qm * torch.sign(torch.diagonal(Rm))
    if torch.det(Qm) < 0:
        Qm[:, 0] = -Qm[:, 0]
    return Qm.to(dtype)


__all__ = [
    "EdgeFrame",
    "BlockLayout",
    "cos_sin_multiples",
    "wigner_D_fixed",
    "tilt_matrix",
    "irreps_blocks_to_stack",
    "stack_to_irreps_blocks",
    "haar_rotation",
]
