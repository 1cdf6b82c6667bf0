"""MACE's convolution and symmetric contraction through cuEquivariance (``MACE.Config.backend: cueq``).

The two modules here compute exactly the functions of ``molequi.nn.equivariant.EquivariantConvolution`` and
``molequi.nn.symmetric_contraction.SymmetricContraction``, with the *same parameters* (they share the
native modules' ``mix`` and ``weights``, so state-dict keys and shapes do not change and a checkpoint moves
between backends), but evaluate them with ``cuequivariance_torch.SegmentedPolynomial``: on CUDA with
NVIDIA's kernels (``uniform_1d``, from the ``cuequivariance-ops-torch-cu12`` package), on the CPU with
cuEquivariance's pure-torch reference path (``method="naive"``), which is what the tests compare.

Layout. molequi's features are ``(n, dim, c)``: the irreps one after another, each with its 2l+1 rows, and the
channel last. Flattened to ``(n, dim * c)`` this is, block by block, ``(2l+1, c)`` with the channel fastest:
cuEquivariance's ``ir_mul`` layout of ``c x irreps`` (e3nn's ``mul_ir`` would be ``(c, 2l+1)`` per block).
So features go in and out with a ``reshape``, no transpose (``tests/models/test_cueq.py`` checks this claim
against ``cuet.TransposeIrrepsLayout`` and e3nn's layout).

Group. cuEquivariance's own ``O3`` has e3nn's real basis but computes its Clebsch-Gordan coefficients to
about 3e-8; ``E3nnO3`` takes them from e3nn's float64 Wigner 3j (times sqrt(2 l3 + 1), molequi's
``clebsch_gordan``), as mace-torch's ``O3_e3nn`` does, so float64 results agree to round-off.

Mapping of the parameters (computed once per module, float64):

- convolution: cuEquivariance's channel-wise product ``weights[uv] lhs[iu] rhs[jv] -> out[kuv]`` has one
  output segment and one weight block per path (l1, l2 -> l3); its path coefficients are molequi's
  Clebsch-Gordan tensor times a constant ``alpha`` per path (its "element" path normalisation), read off the
  descriptor and checked. molequi's per-edge weights (E, paths, c) are permuted to cuEquivariance's path
  order and divided by ``alpha``; gather by sender and scatter to the receiver happen inside the kernel (on
  the edge list: MACE does not use its neighbour table with this backend), and the neighbour-summed paths
  are mixed by the native module's ``mix`` as in ``EquivariantConvolution``.
- symmetric contraction: both sides are weighted sums of a basis of the equivariant symmetric polynomials of
  degree 1..correlation, molequi's ``U`` and cuEquivariance's; the matrix ``P`` with
  ``sum_k w_k U_k = sum_j (w P)_j V_j`` is found by least squares on 256 random inputs (each basis function
  evaluated alone, with one-hot weights) and accepted only if it reproduces molequi's basis to 1e-10
  relative (else ``ModelError``); cached per (irreps, correlation) for the process.
  Each forward maps the element weights through ``P`` (a small matmul) and runs cuEquivariance's
  polynomial with the weights indexed by element.
"""

from __future__ import annotations

import functools
import math
import warnings

import numpy as np
import torch
from torch import nn

from molequi.errors import ConfigError, ModelError
from molequi.nn.equivariant import ChannelIrreps, Constants, EquivariantConvolution, clebsch_gordan
from molequi.nn.symmetric_contraction import SymmetricContraction

try:
    import cuequivariance as cue
    import cuequivariance_torch as cuet
except ImportError as exc:  # pragma: no cover - the message is the point
    raise ConfigError("MACE backend 'cueq' needs cuEquivariance: pip install cuequivariance-torch (or "
                      "molequi[cueq]); on a GPU also cuequivariance-ops-torch-cu12 for the kernels") from exc

FIT_TOLERANCE = 1e-10  # relative residual accepted for the symmetric-contraction weight map


class E3nnO3(cue.O3):
    """cuEquivariance's O3 with e3nn's float64 Clebsch-Gordan coefficients (molequi's ``clebsch_gordan``)."""

    def __mul__(rep1: E3nnO3, rep2: E3nnO3) -> list[E3nnO3]:  # noqa: N805 - cue's signature
        return [E3nnO3(l=ir.l, p=ir.p) for ir in cue.O3.__mul__(rep1, rep2)]

    @classmethod
    def clebsch_gordan(cls, rep1: E3nnO3, rep2: E3nnO3, rep3: E3nnO3) -> np.ndarray:
        rep1, rep2, rep3 = cls._from(rep1), cls._from(rep2), cls._from(rep3)
        if rep1.p * rep2.p != rep3.p:
            return np.zeros((0, rep1.dim, rep2.dim, rep3.dim))
        return clebsch_gordan(rep1.l, rep2.l, rep3.l).numpy()[None]

    @classmethod
    def iterator(cls):
        l = 0
        while True:
            yield E3nnO3(l=l, p=(-1) ** l)
            yield E3nnO3(l=l, p=-((-1) ** l))
            l += 1


def cue_irreps(irreps: ChannelIrreps) -> cue.Irreps:
    """``c x irreps`` as cuEquivariance irreps of ``E3nnO3`` (same order)."""
    return cue.Irreps(E3nnO3, str(irreps))


def _method(device: torch.device) -> str:
    """cuEquivariance's method on ``device``: its reference path on the CPU, its kernels on CUDA."""
    if device.type != "cuda":
        return "naive"
    from cuequivariance_torch.primitives.segmented_polynomial import HAS_CUE_OPS

    if not HAS_CUE_OPS:
        raise ConfigError("MACE backend 'cueq' on CUDA needs cuEquivariance's kernels: pip install "
                          "cuequivariance-ops-torch-cu12 (without them use backend: native)")
    return "uniform_1d"


_BUILT: dict[tuple, nn.Module] = {}  # (polynomial key, device, method) -> cuet.SegmentedPolynomial


def _segmented_polynomial(key: tuple, polynomial, device: torch.device, method: str) -> nn.Module:
    """``cuet.SegmentedPolynomial(polynomial, method)`` on ``device``, built once per process and key (the
    reference path's build traces an FX graph per path: about 25 s of CPU for the correlation-3 product of
    max_ell 3 features). No math_dtype: it computes in the inputs' dtype, with float64 coefficients."""
    cache_key = (key, str(device), method)
    module = _BUILT.get(cache_key)
    if module is None:
        with warnings.catch_warnings():  # a CPU build warns that the CUDA kernels are absent
            warnings.simplefilter("ignore")
            module = cuet.SegmentedPolynomial(polynomial, method=method).to(device)
        _BUILT[cache_key] = module
    return module


class _Polynomials:
    """A module's cuEquivariance polynomial on the device of its inputs, built when first needed; not a
    submodule (it holds no parameter, and a model's ``.to()`` / state dict stay the native ones)."""

    def __init__(self, key: tuple, polynomial, kernel_polynomial=None):
        self.key, self.polynomial = key, polynomial
        self.kernel_polynomial = kernel_polynomial if kernel_polynomial is not None else polynomial

    def get(self, like: torch.Tensor) -> nn.Module:
        method = _method(like.device)
        poly = self.polynomial if method == "naive" else self.kernel_polynomial
        return _segmented_polynomial(self.key, poly, like.device, method)


class CueqConvolution(nn.Module):
    """``EquivariantConvolution`` (same ``forward``, same ``mix`` parameters) through cuEquivariance's
    channel-wise tensor product, with the gather by sender and the sum over receivers in the kernel."""

    def __init__(self, native: EquivariantConvolution):
        super().__init__()
        self.irreps_in, self.irreps_out, self.sh_lmax = native.irreps_in, native.irreps_out, native.sh_lmax
        self.paths, self.num_paths, self._groups = native.paths, native.num_paths, native._groups
        self.dim_mid = native.dim_mid
        self.mix = native.mix  # shared: the same parameters as the native module
        c = self.irreps_in.channels
        sh = ChannelIrreps.spherical(1, self.sh_lmax)
        wanted = [E3nnO3(l=l, p=p) for l, p in self.irreps_out.irreps]
        descriptor = cue.descriptors.channelwise_tensor_product(cue_irreps(self.irreps_in), cue_irreps(sh),
                                                                wanted)
        stp = descriptor.polynomial.operations[0][1]
        out_irreps = list(descriptor.outputs[0].irreps)
        index = {(p.i_in, p.l_edge, p.i_out): k for k, p in enumerate(self.paths)}
        seg_path = [-1] * len(out_irreps)
        inv_alpha = [0.0] * len(out_irreps)
        for path in stp.paths:
            w_seg, i_in, l_edge, out_seg = path.indices
            if w_seg != out_seg:
                raise ModelError("cuEquivariance's channel-wise product: weight and output segments differ")
            _, ir3 = out_irreps[out_seg]
            k = index[(i_in, l_edge, self.irreps_out.index((ir3.l, ir3.p)))]
            l1 = self.irreps_in.irreps[i_in][0]
            cg = clebsch_gordan(l1, l_edge, ir3.l).numpy()
            coef = np.asarray(path.coefficients, dtype=np.float64).reshape(cg.shape)
            alpha = float((coef * cg).sum() / (cg * cg).sum())
            if np.abs(coef - alpha * cg).max() > 1e-12 * max(abs(alpha), 1.0):
                raise ModelError(f"cuEquivariance's path {l1} x {l_edge} -> {ir3} is not molequi's "
                                 "Clebsch-Gordan tensor times a constant")
            seg_path[out_seg], inv_alpha[out_seg] = k, 1.0 / alpha
        if sorted(seg_path) != list(range(self.num_paths)):
            raise ModelError(f"cuEquivariance's paths {seg_path} are not molequi's {self.num_paths} paths")
        self.register_buffer("_perm", torch.tensor(seg_path), persistent=False)
        self.constants = Constants()
        self.constants.add("inv_alpha", torch.tensor(inv_alpha).reshape(1, -1, 1))
        # columns of the kernel's output (segments of (2 l3 + 1, c), ir_mul) for each group of paths of
        # EquivariantConvolution, as (m3, (path, channel)) - the layout its ``mix`` multiplies
        offsets = np.cumsum([0] + [ir.dim * mul for mul, ir in out_irreps])
        seg_of = {k: s for s, k in enumerate(seg_path)}
        for g, (_, first, n_paths, d3, _) in enumerate(self._groups):
            cols = [[offsets[seg_of[first + p]] + m * c + u for p in range(n_paths) for u in range(c)]
                    for m in range(d3)]
            self.register_buffer(f"_cols{g}", torch.tensor(cols).reshape(-1), persistent=False)
        kernel = descriptor.flatten_coefficient_modes().squeeze_modes()  # mace-torch's form for uniform_1d
        key = ("conv", str(self.irreps_in), self.sh_lmax, str(self.irreps_out))
        self._poly = _Polynomials(key, descriptor.polynomial, kernel.polynomial)

    def forward(self, x: torch.Tensor, sh: torch.Tensor, weights: torch.Tensor, sender: torch.Tensor,
                receiver: torch.Tensor) -> torch.Tensor:
        n, c = x.shape[0], x.shape[2]
        w = weights.index_select(1, self._perm) * self.constants.get("inv_alpha", weights)  # [E, paths, c]
        [out] = self._poly.get(x)(
            [w.reshape(w.shape[0], -1), x.reshape(n, -1), sh],
            input_indices={1: sender},
            output_indices={0: receiver},
            output_shapes={0: x.new_empty(n, 1)},
        )  # [n, sum_paths (2 l3 + 1) c], neighbour-summed
        out_blocks = {}
        for g, ((_, _, n_paths, d3, i_out), mix) in enumerate(zip(self._groups, self.mix)):
            agg = out.index_select(1, getattr(self, f"_cols{g}")).reshape(n, d3, n_paths * c)
            out_blocks[i_out] = agg @ (mix / math.sqrt(n_paths * c))
        blocks = [
            out_blocks[i] if i in out_blocks else x.new_zeros(n, 2 * l + 1, self.irreps_out.channels)
            for i, (l, _) in enumerate(self.irreps_out.irreps)
        ]
        return blocks[0] if len(blocks) == 1 else torch.cat(blocks, dim=1)


def _sc_key(irreps_in: ChannelIrreps, irreps_out: ChannelIrreps, correlation: int) -> tuple:
    return ("symmetric_contraction", str(irreps_in), str(irreps_out), int(correlation))


def _native_basis(irreps_in: ChannelIrreps, irreps_out: ChannelIrreps, correlation: int, x: torch.Tensor):
    """molequi's basis functions U_k at the inputs x (s, dim): (s, out.dim, K), in the weights' order."""
    one = SymmetricContraction(irreps_in.with_channels(1), irreps_out.with_channels(1), correlation, 1)
    k_total = sum(w.shape[0] for w in one.weights)
    wide_in, wide_out = irreps_in.with_channels(k_total), irreps_out.with_channels(k_total)
    sc = SymmetricContraction(wide_in, wide_out, correlation, 1)
    start = 0
    with torch.no_grad():
        for w in sc.weights:  # one channel per basis function: weight k of block w feeds channel start + k
            w.zero_()
            k = w.shape[0]
            w[:, 0, start:start + k] = torch.eye(k, dtype=w.dtype)
            start += k
        sc = sc.double()
        return sc(x.unsqueeze(-1).expand(-1, -1, k_total), torch.zeros(x.shape[0], dtype=torch.long))


def symmetric_contraction_map(irreps_in: ChannelIrreps, irreps_out: ChannelIrreps, correlation: int,
                              samples: int = 256, seed: int = 0):
    """The cuEquivariance polynomial of the symmetric contraction and the weight map ``P`` (K, K') from
    molequi's weights (in the order of ``SymmetricContraction.weights``, each (k, elements, c)) to
    cuEquivariance's ((K', c) per element), float64. Raises ``ModelError`` if the bases span different maps.
    Cached: cuEquivariance's descriptor takes seconds (its symmetric basis) at max_ell 3, correlation 3."""
    return _symmetric_contraction_map(str(irreps_in), str(irreps_out), int(correlation), samples, seed)


@functools.lru_cache(maxsize=16)
def _symmetric_contraction_map(irreps_in: str, irreps_out: str, correlation: int, samples: int, seed: int):
    irreps_in, irreps_out = ChannelIrreps.parse(irreps_in), ChannelIrreps.parse(irreps_out)
    c = irreps_in.channels
    descriptor = cue.descriptors.symmetric_contraction(cue_irreps(irreps_in), cue_irreps(irreps_out),
                                                       tuple(range(1, correlation + 1)))
    k_cue = descriptor.inputs[0].dim // c
    per_channel = -(-samples // c)  # samples = per_channel * c: one sample per (row, channel)
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn(per_channel, irreps_in.dim, c, generator=generator, dtype=torch.float64)
    poly = _segmented_polynomial(_sc_key(irreps_in, irreps_out, correlation), descriptor.polynomial,
                                 torch.device("cpu"), "naive")
    # row (sample, j): the inputs x[sample] with weight j one-hot in every channel (a batched weight)
    eye = torch.eye(k_cue, dtype=torch.float64).repeat_interleave(c, 1).repeat(per_channel, 1)
    [v] = poly([eye, x.repeat_interleave(k_cue, 0).reshape(per_channel * k_cue, -1)])
    v = v.reshape(per_channel, k_cue, irreps_out.dim, c).permute(0, 3, 2, 1)  # [s, c, out, K']
    x = x.permute(0, 2, 1).reshape(-1, irreps_in.dim)  # every (sample, channel) is a sample
    u = _native_basis(irreps_in, irreps_out, correlation, x)  # [s c, out, K]
    a, b = v.reshape(-1, k_cue).numpy(), u.reshape(-1, u.shape[-1]).numpy()
    pt, *_ = np.linalg.lstsq(a, b, rcond=None)  # [K', K]
    residual = np.abs(a @ pt - b).max() / max(np.abs(b).max(), 1.0)
    if residual > FIT_TOLERANCE:
        raise ModelError(f"cuEquivariance's symmetric contraction {irreps_in} -> {irreps_out} (correlation "
                         f"{correlation}) does not span molequi's: relative residual {residual:.1e}")
    return descriptor, pt.T


class CueqSymmetricContraction(nn.Module):
    """``SymmetricContraction`` (same ``forward``, same ``weights``) through cuEquivariance's polynomial."""

    def __init__(self, native: SymmetricContraction):
        super().__init__()
        self.irreps_in, self.irreps_out = native.irreps_in, native.irreps_out
        self.correlation = native.correlation
        self.num_paths, self._plan, self._sizes = native.num_paths, native._plan, native._sizes
        self.weights = native.weights  # shared: the same parameters as the native module
        descriptor, p = symmetric_contraction_map(self.irreps_in, self.irreps_out, self.correlation)
        self.constants = Constants()
        self.constants.add("P", torch.from_numpy(p))  # [K, K']
        self._poly = _Polynomials(_sc_key(self.irreps_in, self.irreps_out, self.correlation),
                                  descriptor.polynomial)

    def forward(self, x: torch.Tensor, element: torch.Tensor) -> torch.Tensor:
        n, _, c = x.shape
        w = torch.cat(list(self.weights), dim=0)  # [K, elements, c]
        w = torch.einsum("kzu,kj->zju", w, self.constants.get("P", w)).reshape(w.shape[1], -1)  # [Z, K' c]
        [out] = self._poly.get(x)([w, x.reshape(n, -1)], input_indices={0: element})
        return out.reshape(n, self.irreps_out.dim, c)


def cueq_modules(conv: EquivariantConvolution, product: SymmetricContraction):
    """The cuEquivariance versions of a MACE layer's convolution and symmetric contraction, sharing their
    parameters (``MACE.Config.backend: cueq``)."""
    if not isinstance(conv, EquivariantConvolution):
        raise ConfigError(f"backend 'cueq' replaces molequi's native convolution, not {type(conv).__name__} "
                          "(use tensor_product: native)")
    return CueqConvolution(conv), CueqSymmetricContraction(product)


__all__ = ["CueqConvolution", "CueqSymmetricContraction", "E3nnO3", "cue_irreps", "cueq_modules",
           "symmetric_contraction_map"]
