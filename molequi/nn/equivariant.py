"""Equivariant layers over features that share one channel count across irreps (the MACE layout).

Features are tensors ``(n, dim, channels)``: rows are the irreps of a ``ChannelIrreps`` one after another,
each with its 2l+1 components (e3nn's real basis, the basis of ``e3nn.o3.spherical_harmonics``), and the
last axis is the channel. Keeping channels last turns every channel-mixing step into a plain matmul.

- ``ChannelIrreps``:        value type, e.g. ``ChannelIrreps.parse("64x0e+64x1o")``
- ``IrrepsLinear``:         x_l -> x_l W_l per irrep (channel mixing, no mixing of m)
- ``ElementIrrepsLinear``:  the same with weights chosen by each atom's element (MACE's skip connection)
- ``EquivariantConvolution``: per-edge uvu tensor product of sender features with the edge's spherical
  harmonics, weighted per edge / path / channel, summed over neighbours, then mixed over paths and channels
- ``Constants``:            float64 master copies of fixed tensors (Clebsch-Gordan coefficients), handed out
  in the dtype asked for, so a model built in float32 and moved to float64 keeps exact equivariance
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass

import torch
from e3nn import o3
from torch import nn

from molequi.errors import ConfigError
from molequi.nn.scatter import _one_thread, gather, plain_autograd, scatter_sum

Irrep = tuple[int, int]  # (l, parity) with parity +1 (even) or -1 (odd)


@dataclass(frozen=True)
class ChannelIrreps:
    """Distinct irreps (l, parity) that all carry ``channels`` copies; feature shape (n, dim, channels)."""

    channels: int
    irreps: tuple[Irrep, ...]

    def __post_init__(self):
        if self.channels < 1:
            raise ConfigError(f"channels must be positive, got {self.channels}")
        if not self.irreps:
            raise ConfigError("ChannelIrreps needs at least one irrep")
        if len(set(self.irreps)) != len(self.irreps):
            raise ConfigError(f"irreps must be distinct, got {self.irreps}")
        for l, p in self.irreps:
            if l < 0 or p not in (1, -1):
                raise ConfigError(f"invalid irrep (l={l}, parity={p})")

    @classmethod
    def parse(cls, text: str) -> ChannelIrreps:
        """Parse an e3nn string such as ``"64x0e+64x1o"``; every irrep must have the same multiplicity."""
        irreps = o3.Irreps(text)
        muls = {mul for mul, _ in irreps}
        if len(muls) != 1:
            raise ConfigError(
                f"irreps '{text}' must give every irrep the same multiplicity (as MACE does), "
                f"e.g. '64x0e+64x1o'"
            )
        return cls(muls.pop(), tuple((ir.l, ir.p) for _, ir in irreps))

    @classmethod
    def spherical(cls, channels: int, lmax: int) -> ChannelIrreps:
        """0e + 1o + 2e + ... up to ``lmax``: the irreps of spherical harmonics."""
        return cls(channels, tuple((l, (-1) ** l) for l in range(lmax + 1)))

    def with_channels(self, channels: int) -> ChannelIrreps:
        return ChannelIrreps(channels, self.irreps)

    @property
    def dim(self) -> int:
        return sum(2 * l + 1 for l, _ in self.irreps)

    @property
    def lmax(self) -> int:
        return max(l for l, _ in self.irreps)

    def slices(self) -> list[slice]:
        out, start = [], 0
        for l, _ in self.irreps:
            out.append(slice(start, start + 2 * l + 1))
            start += 2 * l + 1
        return out

    def index(self, irrep: Irrep) -> int:
        return self.irreps.index(irrep)

    def scalars(self) -> slice | None:
        """Rows of the 0e irrep (None if absent)."""
        return self.slices()[self.index((0, 1))] if (0, 1) in self.irreps else None

    def __str__(self) -> str:
        return "+".join(f"{self.channels}x{l}{'e' if p == 1 else 'o'}" for l, p in self.irreps)


class Constants:
    """Fixed tensors kept in float64 and handed out in the dtype and device of a reference tensor.

    Not buffers on purpose: ``module.to(torch.float32)`` would round them, and a later ``.to(float64)``
    could not undo it. They are derived from the configuration, so they need no place in a state dict.
    """

    def __init__(self):
        self._master: dict[str, torch.Tensor] = {}
        self._cache: dict[tuple[str, torch.dtype, torch.device], torch.Tensor] = {}

    def add(self, name: str, value: torch.Tensor) -> None:
        self._master[name] = value.detach().to(torch.float64).contiguous()

    def get(self, name: str, like: torch.Tensor) -> torch.Tensor:
        key = (name, like.dtype, like.device)
        value = self._cache.get(key)
        if value is None:
            value = self._master[name].to(device=like.device, dtype=like.dtype)
            if not torch.compiler.is_compiling():  # a compiled graph would return the cached value as an output
                self._cache[key] = value
        return value

    def __contains__(self, name: str) -> bool:
        return name in self._master


class IrrepsLinear(nn.Module):
    """out_l = x_l W_l / sqrt(c_in) for each irrep of ``irreps_out``; irreps absent from the input give zeros.

    (n, irreps_in.dim, c_in) -> (n, irreps_out.dim, c_out).
    """

    def __init__(self, irreps_in: ChannelIrreps, irreps_out: ChannelIrreps):
        super().__init__()
        self.irreps_in, self.irreps_out = irreps_in, irreps_out
        self.weights = nn.ParameterList()
        self._plan: list[tuple[slice | None, int, int]] = []  # (input rows, weight index, output dim)
        in_slices = irreps_in.slices()
        for irrep in irreps_out.irreps:
            d = 2 * irrep[0] + 1
            if irrep in irreps_in.irreps:
                self._plan.append((in_slices[irreps_in.index(irrep)], len(self.weights), d))
                self.weights.append(nn.Parameter(torch.randn(irreps_in.channels, irreps_out.channels)))
            else:
                self._plan.append((None, -1, d))
        self.norm = 1.0 / math.sqrt(irreps_in.channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        blocks = []
        for rows, w, d in self._plan:
            if rows is None:
                blocks.append(x.new_zeros(x.shape[0], d, self.irreps_out.channels))
            else:
                blocks.append(x[:, rows, :] @ (self.weights[w] * self.norm))
        return blocks[0] if len(blocks) == 1 else torch.cat(blocks, dim=1)


ALL_ELEMENTS_UP_TO = 6  # ElementIrrepsLinear: one matmul with every element's weights up to this many elements


class ElementIrrepsLinear(nn.Module):
    """out_l[i] = x_l[i] W_l[z_i] / sqrt(c_in): a linear map per irrep whose weights depend on the element.

    This is MACE's element-dependent skip connection (an e3nn ``FullyConnectedTensorProduct`` with the
    one-hot element). ``forward(x (n, dim_in, c_in), element (n,) long in [0, num_elements))``.
    """

    def __init__(self, irreps_in: ChannelIrreps, irreps_out: ChannelIrreps, num_elements: int):
        super().__init__()
        self.irreps_in, self.irreps_out = irreps_in, irreps_out
        self.weights = nn.ParameterList()
        self._plan: list[tuple[slice | None, int, int]] = []
        in_slices = irreps_in.slices()
        for irrep in irreps_out.irreps:
            d = 2 * irrep[0] + 1
            if irrep in irreps_in.irreps:
                self._plan.append((in_slices[irreps_in.index(irrep)], len(self.weights), d))
                self.weights.append(
                    nn.Parameter(torch.randn(num_elements, irreps_in.channels, irreps_out.channels))
                )
            else:
                self._plan.append((None, -1, d))
        self.norm = 1.0 / math.sqrt(irreps_in.channels)

    def forward(self, x: torch.Tensor, element: torch.Tensor) -> torch.Tensor:
        n, c_out = x.shape[0], self.irreps_out.channels
        blocks = []
        for rows, w, d in self._plan:
            if rows is None:
                blocks.append(x.new_zeros(n, d, c_out))
                continue
            weight = self.weights[w]  # [num_elements, c_in, c_out]
            num_elements, c_in = weight.shape[0], weight.shape[1]
            if num_elements <= ALL_ELEMENTS_UP_TO:
                # every element's map in one matmul, then each atom's own: a few times the arithmetic of one
                # map, but a GEMM; n tiny matrix products (bmm) and their gathered n x c_in x c_out weights
                # and weight gradients are 2-4x slower with the backward for 3-4 elements (1 thread)
                y = x[:, rows, :].reshape(n * d, c_in) @ weight.permute(1, 0, 2).reshape(c_in, -1)
                y = y.reshape(n, d, num_elements, c_out)
                index = element.view(n, 1, 1, 1).expand(n, d, 1, c_out)
                blocks.append(torch.gather(y, 2, index).squeeze(2) * self.norm)
            else:  # each atom's weight gathered: [n, c_in, c_out]
                blocks.append(torch.bmm(x[:, rows, :], weight[element]) * self.norm)
        return blocks[0] if len(blocks) == 1 else torch.cat(blocks, dim=1)


@functools.cache
def _wigner_3j(l1: int, l2: int, l3: int) -> torch.Tensor:
    return o3.wigner_3j(l1, l2, l3, dtype=torch.float64)


def clebsch_gordan(l1: int, l2: int, l3: int) -> torch.Tensor:
    """e3nn's real Wigner 3j symbol (2l1+1, 2l2+1, 2l3+1), float64, times sqrt(2l3+1) ("component" norm)."""
    return _wigner_3j(l1, l2, l3) * math.sqrt(2 * l3 + 1)


@dataclass(frozen=True)
class _Path:
    i_in: int  # index of the input irrep
    l_edge: int  # l of the spherical harmonic
    i_out: int  # index of the output irrep


class _FusedPathSums(torch.autograd.Function):
    """Every path's neighbour sum of ``forward_padded`` from the radial MLP's last hidden layer, for inference:

        out_p = sum_m1 G_p[m1]^T z_p[m1] (n, d3, c),   z_p[m1] = w_p * x_sender[m1] (rows, c),   w_p = hidden @ W_p

    keeping for the backward pass only ``hidden`` (rows, H), the atoms' features x (n, dim, c), the contracted
    harmonics and the weights: the per-path weights w_p, the gathered x_sender and the products z_p (paths x
    edges x channels numbers, most of a layer's memory) are recomputed there, at the cost of one (rows, H) @
    (H, c) product per path and one gather. The backward is made of differentiable operations, so a second
    derivative is still right (training uses the plain operations, ``forward_padded``).

    ``x_grad``, a (dim, n, c) buffer or None: the backward adds the atoms' feature gradient into it in place
    (and returns none for x), so that chunks of one system share one buffer instead of each making and
    summing a full-size gradient (``molequi.models.mace._InferenceChunks``; not for second derivatives)."""

    @staticmethod
    def forward(ctx, conv, k: int, sender, hidden, w_last, x, g_all, x_grad=None):
        ctx.conv, ctx.k, ctx.x_grad = conv, k, x_grad
        ctx.save_for_backward(sender, hidden, w_last, x, g_all)
        return tuple(conv._path_sums(k, sender, hidden, w_last, x, g_all, plain=True))

    @staticmethod
    def backward(ctx, *grads):
        conv, k = ctx.conv, ctx.k
        sender, hidden, w_last, x, g_all = ctx.saved_tensors
        _, _, _, need_h, need_w, need_x, need_g, _ = ctx.needs_input_grad
        rows, c = hidden.shape[0], x.shape[2]
        n = rows // k
        x_blocks = conv._gathered(x, sender, plain=False)
        w_blocks = torch.split(w_last, c, dim=1)
        grad_h, grad_w, grad_g = None, [], []
        into = ctx.x_grad is not None
        need_x = need_x or into
        # in place unless this backward is differentiated (then out of place, so that autograd records it)
        in_place = into or not torch.is_grad_enabled()
        if need_x:  # sum onto the atoms' components as the terms come: rows m * n + sender of (dim * n, c)
            gx = ctx.x_grad.view(-1, c) if into else x.new_zeros(x.shape[1] * x.shape[0], c)
            index = conv._index(sender, x.shape[0], x.shape[1]).view(x.shape[1], rows)
            offsets = [sum(conv._in_sizes[:i]) for i in range(len(conv._in_sizes))]
        for p, (grad, g) in enumerate(zip(grads, conv._g_blocks(g_all, k))):
            i_in, d1 = conv._path_in[p]
            w = hidden @ w_blocks[p]  # [rows, c]
            xb = x_blocks[i_in]  # [d1, rows, c]
            if need_g:  # [n, k, d1, d3] -> (rows, d1 d3), the columns of g_all
                grad_g.append(torch.stack([torch.bmm((w * xb[m]).view(n, k, c), grad.transpose(1, 2))
                                           for m in range(d1)], dim=2).reshape(rows, -1))
            if not (need_h or need_w or need_x):
                continue
            grad_z = [torch.bmm(g[m], grad).view(rows, c) for m in range(d1)]  # d1 x [rows, c]
            if need_h or need_w:
                gw = grad_z[0] * xb[0]  # [rows, c]: the sum over m1, one (rows, c) term at a time
                for m in range(1, d1):
                    gw = torch.addcmul(gw, grad_z[m], xb[m])
                if need_h:
                    term = gw @ w_blocks[p].T
                    grad_h = term if grad_h is None else grad_h + term
                if need_w:
                    grad_w.append(hidden.T @ gw)
            if need_x:
                with _one_thread(x.device):  # (see molequi.nn.scatter)
                    for m in range(d1):
                        if in_place:  # an out-of-place index_add copies the whole (dim * n, c) table
                            gx.index_add_(0, index[offsets[i_in] + m], grad_z[m] * w)
                        else:
                            gx = gx.index_add(0, index[offsets[i_in] + m], grad_z[m] * w)
        if need_x and not into:
            gx = gx.view(x.shape[1], x.shape[0], c).transpose(0, 1)
        return (None, None, None, grad_h, torch.cat(grad_w, dim=1) if need_w else None,
                gx if need_x and not into else None, torch.cat(grad_g, dim=1) if need_g else None, None)


class EquivariantConvolution(nn.Module):
    """MACE's interaction: uvu tensor product with the edge harmonics, neighbour sum, linear over paths.

    For every path (l1 of the node features) x (l2 of the harmonics) -> l3 allowed by the selection and parity
    rules and present in ``irreps_out``:

        m_i^p[u, m3] = sum_{j in N(i)} w_ji[p, u] sum_{m1, m2} C^p_{m1 m2 m3} x_j[l1 m1, u] Y_{l2 m2}(r_ji)
        out_i[l3 m3, v] = sum_{p -> l3, u} m_i^{p}[u, m3] W_{l3}[(p, u), v] / sqrt(paths(l3) * c)

    The harmonics are first contracted with the Clebsch-Gordan tensor per edge, G_e = C . Y_e (no channel
    axis), so the per-channel work is one batched (dim_mid x dim_in) @ (dim_in x c) product per edge.

    forward(x (n, irreps_in.dim, c), sh (E, (lmax+1)^2), weights (E, num_paths, c), sender (E,),
    receiver (E,)) -> (n, irreps_out.dim, c_out). The sum over neighbours is not normalised here.
    """

    def __init__(self, irreps_in: ChannelIrreps, sh_lmax: int, irreps_out: ChannelIrreps):
        super().__init__()
        self.irreps_in, self.irreps_out, self.sh_lmax = irreps_in, irreps_out, sh_lmax
        paths: list[_Path] = []
        for i_out, (l3, p3) in enumerate(irreps_out.irreps):  # grouped by output irrep
            for i_in, (l1, p1) in enumerate(irreps_in.irreps):
                for l2 in range(sh_lmax + 1):
                    if abs(l1 - l2) <= l3 <= l1 + l2 and p1 * (-1) ** l2 == p3:
                        paths.append(_Path(i_in, l2, i_out))
        if not paths:
            raise ConfigError(f"no tensor-product path from {irreps_in} x Y(l<={sh_lmax}) to {irreps_out}")
        self.paths = paths
        self.num_paths = len(paths)
        in_slices = irreps_in.slices()
        dim_sh = (sh_lmax + 1) ** 2
        # rows of the per-edge message: output irrep, then path, then m3
        self._groups: list[tuple[int, int, int, int, int]] = []  # (row start, path start, n paths, d3, i_out)
        dim_mid = sum(2 * irreps_out.irreps[p.i_out][0] + 1 for p in paths)
        cg = torch.zeros(dim_sh, irreps_in.dim, dim_mid, dtype=torch.float64)
        per_path = []  # [sh, (m1, m3)] of each path, in path order (forward_padded)
        row = 0
        for i_out, (l3, _) in enumerate(irreps_out.irreps):
            group = [k for k, p in enumerate(paths) if p.i_out == i_out]
            if not group:
                continue
            self._groups.append((row, group[0], len(group), 2 * l3 + 1, i_out))
            for k in group:
                p = paths[k]
                l1 = irreps_in.irreps[p.i_in][0]
                c = clebsch_gordan(l1, p.l_edge, l3)  # [m1, m2, m3]
                cg[p.l_edge**2 : (p.l_edge + 1) ** 2, in_slices[p.i_in], row : row + 2 * l3 + 1] = c.permute(
                    1, 0, 2
                )
                block = torch.zeros(dim_sh, 2 * l1 + 1, 2 * l3 + 1, dtype=torch.float64)
                block[p.l_edge**2 : (p.l_edge + 1) ** 2] = c.permute(1, 0, 2)
                per_path.append(block.reshape(dim_sh, -1))
                row += 2 * l3 + 1
        self.dim_mid = dim_mid
        self.constants = Constants()
        self.constants.add("cg", cg.reshape(dim_sh, irreps_in.dim * dim_mid))  # [sh, (in, mid)]
        self.constants.add("cg_paths", torch.cat(per_path, dim=1))  # [sh, sum over paths of (m1, m3)]
        self._path_cols = [b.shape[1] for b in per_path]
        self._path_in = [(p.i_in, 2 * irreps_in.irreps[p.i_in][0] + 1) for p in paths]
        self._in_sizes = [2 * l + 1 for l, _ in irreps_in.irreps]
        #: numbers per slot of the neighbour table that ``forward_padded`` creates (its z products and G)
        self.padded_floats_per_slot = sum(d1 for _, d1 in self._path_in) * irreps_in.channels + 2 * sum(
            self._path_cols
        )
        c = irreps_in.channels
        self.mix = nn.ParameterList(
            [
                nn.Parameter(torch.randn(n_paths * c, irreps_out.channels))
                for _, _, n_paths, _, _ in self._groups
            ]
        )

    def forward(
        self,
        x: torch.Tensor,
        sh: torch.Tensor,
        weights: torch.Tensor,
        sender: torch.Tensor,
        receiver: torch.Tensor,
    ) -> torch.Tensor:
        n, c = x.shape[0], x.shape[2]
        n_edges = sh.shape[0]
        cg = self.constants.get("cg", x)
        g = (sh @ cg).reshape(n_edges, self.irreps_in.dim, self.dim_mid)  # [E, in, mid]
        xs = gather(x, sender)  # [E, in, c]
        # split (not slice): the backward of a split is a concatenation, of a slice a zero-filled full tensor
        g_blocks = torch.split(g, [n_paths * d3 for _, _, n_paths, d3, _ in self._groups], dim=2)
        w_blocks = torch.split(weights, [n_paths for _, _, n_paths, _, _ in self._groups], dim=1)
        out_blocks: dict[int, torch.Tensor] = {}
        for (_, _, n_paths, d3, i_out), mix, g_block, w_block in zip(
            self._groups, self.mix, g_blocks, w_blocks
        ):
            if self.irreps_in.dim == 1:
                m = g_block.transpose(1, 2) * xs  # [E, paths * d3, c]
            else:
                m = torch.bmm(g_block.transpose(1, 2), xs)  # [E, paths * d3, c]
            m = m.reshape(n_edges, n_paths, d3, c) * w_block.unsqueeze(2)  # [E, paths, d3, c]
            agg = scatter_sum(m, receiver, n)  # [n, paths, d3, c]
            agg = agg.transpose(1, 2).reshape(n, d3, n_paths * c)
            out_blocks[i_out] = agg @ (mix / math.sqrt(n_paths * c))  # [n, d3, c_out]
        blocks = [
            out_blocks[i] if i in out_blocks else x.new_zeros(n, 2 * l + 1, self.irreps_out.channels)
            for i, (l, _) in enumerate(self.irreps_out.irreps)
        ]
        return blocks[0] if len(blocks) == 1 else torch.cat(blocks, dim=1)


    def forward_padded(
        self, x: torch.Tensor, sh: torch.Tensor, weights: torch.Tensor, sender: torch.Tensor, k: int
    ) -> torch.Tensor:
        """``forward`` on edges laid out by ``molequi.nn.scatter.NeighbourLayout``: ``sh`` (rows, dim_sh),
        ``weights`` (rows, num_paths, c) or a list of num_paths (rows, c) and ``sender`` (rows,) hold the
        edges into atom i in rows i*k to
        i*k + k - 1 (zeros in empty slots), for rows / k consecutive receiving atoms; x is every atom's
        features. -> (rows / k, irreps_out.dim, c_out), equal to ``forward`` to round-off.

        Per path the neighbour sum is one batched product per receiving atom, (d3 x k d1) @ (k d1 x c) of the
        contracted harmonics G = C . Y and z = w * x_sender, so no per-edge message of (paths x d3 x c)
        numbers is ever formed (``forward`` forms, weights and scatters it), and the backward pass has no
        scatter."""
        rows, c = sh.shape[0], x.shape[2]
        n = rows // k
        g_paths = torch.split(sh @ self.constants.get("cg_paths", x), self._path_cols, dim=1)
        xs = gather(x, sender)  # [rows, in, c]
        x_blocks = torch.split(xs, self._in_sizes, dim=1)
        w_paths = weights.unbind(1) if isinstance(weights, torch.Tensor) else weights  # [rows, c] each
        sums = []
        for p, (i_in, d1) in enumerate(self._path_in):
            z = (w_paths[p].unsqueeze(1) * x_blocks[i_in]).reshape(n, k * d1, c)
            g = g_paths[p].reshape(n, k * d1, self._path_cols[p] // d1)
            sums.append(torch.bmm(g.transpose(1, 2), z))  # [n, d3, c]: sum over (neighbour, m1)
        return self._mix(sums, n, x)

    def forward_padded_fused(self, x: torch.Tensor, sh: torch.Tensor, hidden: torch.Tensor,
                             w_last: torch.Tensor, sender: torch.Tensor, k: int,
                             x_grad: torch.Tensor | None = None) -> torch.Tensor:
        """``forward_padded`` with the weights w = hidden @ w_last (rows, num_paths * c) formed path by path
        inside ``_FusedPathSums``, which keeps no per-path edge tensor for the backward pass (inference;
        plain operations where custom Functions must not run). ``x_grad``: see ``_FusedPathSums``."""
        g_all = sh @ self.constants.get("cg_paths", x)
        if plain_autograd():
            sums = self._path_sums(k, sender, hidden, w_last, x, g_all, plain=True)
        else:
            sums = _FusedPathSums.apply(self, k, sender, hidden, w_last, x, g_all, x_grad)
        return self._mix(sums, sh.shape[0] // k, x)

    def _path_sums(self, k: int, sender, hidden, w_last, x, g_all, plain: bool = False) -> list:
        """Each path's sum_m1 G_p[m1]^T (w_p * x_sender[m1]) (n, d3, c), w_p = hidden @ (the p-th (H, c) block
        of ``w_last``). The sender's features are gathered component-major, (d1, rows, c) per irrep, so that
        w_p multiplies whole (rows, c) planes (a (rows, d1, c) * (rows, 1, c) broadcast runs over only c
        contiguous numbers at a time, several times slower on the CPU)."""
        c = x.shape[2]
        n = g_all.shape[0] // k
        x_blocks = self._gathered(x, sender, plain)
        w_paths = torch.split(w_last, c, dim=1)
        sums = []
        for p, g in enumerate(self._g_blocks(g_all, k)):
            i_in, d1 = self._path_in[p]
            w = hidden @ w_paths[p]  # [rows, c]
            z = x_blocks[i_in] * w  # [d1, rows, c]
            out = torch.bmm(g[0].transpose(1, 2), z[0].view(n, k, c))  # [n, d3, c]: sum over neighbours
            for m in range(1, d1):
                out = torch.baddbmm(out, g[m].transpose(1, 2), z[m].view(n, k, c))
            sums.append(out)
        return sums

    def _g_blocks(self, g_all: torch.Tensor, k: int) -> list[list[torch.Tensor]]:
        """The contracted harmonics (rows, sum of d1 d3) as [path][m1] -> (n, k, d3) views."""
        n = g_all.shape[0] // k
        out = []
        for p, g in enumerate(torch.split(g_all, self._path_cols, dim=1)):
            d1 = self._path_in[p][1]
            g = g.reshape(n, k, d1, -1)
            out.append([g[:, :, m] for m in range(d1)])
        return out

    def _index(self, sender: torch.Tensor, n: int, d: int) -> torch.Tensor:
        """Rows m * n + sender[e] (m < d, component-major) of an (d * n, c) table of d components."""
        return (torch.arange(d, device=sender.device).unsqueeze(1) * n + sender).reshape(-1)

    def _gathered(self, x: torch.Tensor, sender: torch.Tensor, plain: bool) -> list[torch.Tensor]:
        """The senders' features per input irrep, component-major: (d1, rows, c) each."""
        n, dim, c = x.shape
        table = x.transpose(0, 1).reshape(dim * n, c)  # [(component, atom), c]
        index = self._index(sender, n, dim)
        xs = table.index_select(0, index) if plain else gather(table, index)
        return list(xs.view(dim, -1, c).split(self._in_sizes, dim=0))

    def _mix(self, sums, n: int, x: torch.Tensor) -> torch.Tensor:
        """Per output irrep: the paths' sums side by side, mixed over (path, channel) -> (n, out.dim, c_out)."""
        c = x.shape[2]
        out_blocks: dict[int, torch.Tensor] = {}
        for (_, p0, n_paths, d3, i_out), mix in zip(self._groups, self.mix):
            agg = sums[p0] if n_paths == 1 else torch.cat(sums[p0 : p0 + n_paths], dim=2)  # [n, d3, (path, c)]
            out_blocks[i_out] = agg @ (mix / math.sqrt(n_paths * c))  # [n, d3, c_out]
        blocks = [
            out_blocks[i] if i in out_blocks else x.new_zeros(n, 2 * l + 1, self.irreps_out.channels)
            for i, (l, _) in enumerate(self.irreps_out.irreps)
        ]
        return blocks[0] if len(blocks) == 1 else torch.cat(blocks, dim=1)


def spherical_harmonics(lmax: int, vectors: torch.Tensor) -> torch.Tensor:
    """Real spherical harmonics of the directions, e3nn basis, "component" norm: (E, 3) -> (E, (lmax+1)^2)."""
    return o3.spherical_harmonics(list(range(lmax + 1)), vectors, normalize=True, normalization="component")


__all__ = [
    "ChannelIrreps",
    "Constants",
    "IrrepsLinear",
    "ElementIrrepsLinear",
    "EquivariantConvolution",
    "clebsch_gordan",
    "spherical_harmonics",
]
