"""MACE (Batatia et al., NeurIPS 2022): higher-order equivariant message passing, on e3nn's basis.

Per layer t, for atom i with element z_i and features h_i (n, dim, c):

    A_i   = (1 / avg_num_neighbors) Linear( sum_j R(r_ji) . (Linear_up(h_j) (x) Y(r_ji)) )   atomic basis
    B_i   = sum_{nu <= correlation} w_{z_i} . U^nu . A_i^{(x) nu}                           symmetric product
    h_i'  = Linear(B_i) + Skip_{z_i}(h_i)                                                   residual update
    y_i  += readout_t(scalars of h_i')    (linear for t < T; an MLP on the last layer, which keeps scalars)

R is an MLP of the Bessel basis, times the polynomial cutoff envelope; Y are the spherical harmonics up to
``max_ell``. Per-atom energy E_i = E0[z_i] + scale * y_i + shift (``molequi.models.base``). Forces and stress
come from ``molequi.response``. Layers: ``molequi.nn`` (radial, equivariant, symmetric_contraction, readout).

Differences from mace-torch, none of which changes the function space: the symmetric contraction evaluates
monomials of the atomic basis times one dense matrix per correlation order
(``molequi.nn.symmetric_contraction``), and the convolution contracts the harmonics with the Clebsch-Gordan
tensor per edge before touching channels, then sums over neighbours as one batched matrix product per atom
on a table of the edges by receiver (``MACE.neighbour_layout``, ``EquivariantConvolution.forward_padded``),
so no per-edge message of paths x (2l+1) x channels numbers is formed. Initialisation and normalisation
constants follow e3nn's conventions, not mace-torch's bit for bit; ``molequi.interop.mace`` folds
mace-torch's constants into the weights when it imports a model, so an imported model computes mace-torch's
function to round-off.

Defaults are ``mace_run_train``'s (mace-torch 0.3.16, default ``--model MACE``): a non-residual first
interaction, the envelope on the radial basis, the readout scaled by the RMS force and not shifted
(``Config.scaling`` / ``shift``, applied to the statistics when a run starts). Checkpoints written before
(format version 1) keep the defaults they were trained with (``Config.LEGACY_DEFAULTS``).

Options that mace-torch's public models use (``Config``): ``first_interaction`` "nonresidual" (the first
block applies an element-dependent linear map to A and has no skip connection, mace-torch's
``RealAgnosticInteractionBlock``), ``envelope`` "basis" (f(r) multiplies the radial basis before the MLP,
mace-torch's ``apply_cutoff``) or "weights" (it multiplies the MLP's output), ``radial_type`` (Bessel /
Gaussian / Chebyshev), ``distance_transform`` (Agnesi / Soft, before the basis) and ``pair_repulsion`` (ZBL,
added to the readout y_i before the scale and shift, as in mace-torch's ScaleShiftMACE).

``Config.tensor_product`` chooses how the per-edge messages of the atomic basis are computed: "native" (the
default, the fast convolution above), or a kind of ``molequi.nn.tensor_products``: "e3nn" (e3nn's 'uvu'
``TensorProduct``, mace-torch's layout), "so2" (the same function in edge frames, eSCN) or "gaunt" (product on
an S2 grid). Each message is summed over the receiver's neighbours, divided by avg_num_neighbors, mixed per
irrep over (path, channel) and fed to the same symmetric contraction; the radial MLP gives ``weight_numel``
weights per edge. "native", "e3nn" and "so2" are one function: same parameters (state-dict keys, shapes and
path order), equal outputs to round-off. The atomic basis is 0e + 1o + ... + max_ell (natural parity) for
every kind. "gaunt" ties the weights of the paths that share an l of the harmonics (one weight per l2 and
channel, instead of per path and channel) and has only the natural-parity paths l1 + l2 + l3 even: with
natural-parity hidden irreps (0e + 1o + 2e ...) these are all the paths there are, but a pseudo-tensor
feature (1e, 0o, ...) would reach the basis by none, so "gaunt" refuses such hidden_irreps.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import ClassVar, Literal

import torch
from torch import nn
from torch.func import functional_call
from torch.utils.checkpoint import checkpoint

from molequi import keys as K
from molequi.data.statistics import Statistics
from molequi.errors import ConfigError
from molequi.graph.neighbors import edge_vectors
from molequi.models.base import AtomicEnergyHead, ElementTable, EnergyModel, is_tracing
from molequi.nn.equivariant import (
    ChannelIrreps,
    ElementIrrepsLinear,
    EquivariantConvolution,
    IrrepsLinear,
    spherical_harmonics,
)
from molequi.nn.gaunt_manybody import GauntManyBody
from molequi.nn.radial import (
    AgnesiTransform,
    BesselBasis,
    ChebyshevBasis,
    GaussianBasis,
    PolynomialCutoff,
    RadialMLP,
    SoftTransform,
    ZBLRepulsion,
)
from molequi.nn.readout import ElementEmbedding, LinearReadout, MLPReadout
from molequi.nn.scatter import NeighbourLayout, plain_autograd
from molequi.nn.symmetric_contraction import SymmetricContraction
from molequi.nn.tensor_products import GAUNT_BACKENDS, KINDS, TensorProductConvolution
from molequi.response import batch_vector

TENSOR_PRODUCTS = ("native", *KINDS)
PRODUCT_BASES = ("symmetric_contraction", "gaunt")
RADIAL_TYPES = {"bessel": BesselBasis, "gaussian": GaussianBasis, "chebyshev": ChebyshevBasis}
DISTANCE_TRANSFORMS = {"none": None, "agnesi": AgnesiTransform, "soft": SoftTransform}
ENVELOPES = ("weights", "basis")
FIRST_INTERACTIONS = ("residual", "nonresidual")
SCALINGS = ("rms_forces", "std", "none")  # mace-torch's rms_forces_scaling, std_scaling, no_scaling
SHIFTS = ("none", "mean")
AUTO_CHUNK_BYTES = 1 << 30  # max_edges_per_chunk "auto": budget of one layer's per-edge intermediates
# ... and of the neighbour table in inference, set by speed: chunks of ~10k slots keep the recomputed per-path
# tensors in cache (quickstart MACE, f32, 1 thread, E+F+S per call, _InferenceChunks' shared gradient buffers:
# Cu 4,096 atoms 1.47-1.58 CPU s at ~45k slots (32 MiB), 1.35-1.38 at 10k, 1.37-1.44 at 5k, 1.37-1.40 at 20k;
# water 3,993 2.02-2.04 at 32 MiB, 1.70-1.72 at 10k; Cu 1,000 equal, peak RSS 676 -> 507 MB; Cu 15,625
# 6.2-6.7 at 32 MiB, 5.9 at 10k)
AUTO_CHUNK_BYTES_INFERENCE = 8 << 20
MAX_PADDING = 2.0  # slots per edge above which the native convolution uses the edge list, not the table


class _EdgeMessages(nn.Module):
    """A layer's message computation, sum_j R(r_ji) . (x_j (x) Y(r_ji)) mixed over paths: (n, dim_sh, c).

    Holds the layer's radial MLP and convolution without owning them (the layer keeps it outside its
    submodules, so state-dict keys are unchanged); ``_ChunkedMessages`` calls it with ``functional_call``."""

    def __init__(self, radial: nn.Module, conv: nn.Module, weight_shape: tuple[int, ...]):
        super().__init__()
        self.radial, self.conv, self.weight_shape = radial, conv, weight_shape

    def forward(self, x, sh, radial, envelope, sender, receiver, k: int = 0, x_grad=None) -> torch.Tensor:
        """Edges as a list (``k`` = 0), or in the neighbour table of ``NeighbourLayout`` (``k`` slots per
        receiving atom, ``receiver`` unused): then the messages of rows / k consecutive receivers.
        ``x_grad``: the buffer of ``_FusedPathSums`` (inference on the table only)."""
        if k and not self.conv.training:  # inference (the layer's mode): no per-path edge tensor kept
            return self.conv.forward_padded_fused(x, sh, self.radial.hidden(radial, envelope),
                                                  self.radial.last_weight(), sender, k, x_grad)
        if k:  # one (rows, c) weight block per path
            weights = self.radial.forward_blocks(radial, self.weight_shape[-1], envelope)
            return self.conv.forward_padded(x, sh, weights, sender, k)
        weights = self.radial(radial)
        if envelope is not None:  # None: the envelope already multiplies the radial basis
            weights = weights * envelope
        weights = weights.reshape(radial.shape[0], *self.weight_shape)  # [E, paths, c] (native) or [E, numel]
        return self.conv(x, sh, weights, sender, receiver)


def _chunk_vjp(messages: _EdgeMessages, sender, receiver, k: int, create: bool, grad_a, x, sh, radial,
               envelope, *params):
    """Gradients of <grad_a, messages(chunk)> with respect to (x, sh, radial, envelope, *params) (None where
    an input needs none); with ``create``, differentiable (the backward of force training)."""
    inputs = [x, sh, radial, envelope, *params]
    with torch.enable_grad():
        if not create:  # a fresh graph of this chunk only
            inputs = [t.detach().requires_grad_(t.requires_grad) if t is not None else None for t in inputs]
        x, sh, radial, envelope, *params = inputs
        names = [name for name, _ in messages.named_parameters()]
        out = functional_call(messages, dict(zip(names, params)),
                              (x, sh, radial, envelope, sender, receiver, k))
        wanted = [i for i, t in enumerate(inputs) if t is not None and t.requires_grad]
        grads = torch.autograd.grad(out, [inputs[i] for i in wanted], grad_a, create_graph=create,
                                    allow_unused=True)
    full = [None] * len(inputs)
    for i, g in zip(wanted, grads):
        full[i] = g if g is not None else torch.zeros_like(inputs[i])
    return tuple(full)


def _part(t: torch.Tensor | None, part: slice) -> torch.Tensor | None:
    return None if t is None else t[part]


def _chunk_output(grad_a: torch.Tensor, part: slice, k: int) -> torch.Tensor:
    """The rows of a layer's messages that a chunk of edges makes: all of them for an edge list (k = 0), the
    chunk's receiving atoms for a neighbour table of k slots per atom."""
    return grad_a[part.start // k : part.stop // k] if k else grad_a


class _InferenceChunks(torch.autograd.Function):
    """Inference on the neighbour table (``k`` slots per atom) over chunks of whole receiving atoms, the
    message parameters frozen: the forward keeps only its inputs, the backward recomputes one chunk at a time
    and writes every chunk's gradient into one buffer per input, the atoms' features through
    ``_FusedPathSums``' ``x_grad`` (in place), the edge inputs (sh, radial, envelope) into the chunk's rows.
    A chunk so costs its own size. A checkpoint per chunk (as before) cost the whole system per chunk: autograd
    gave every chunk a zero-filled full-size gradient of x and of each sliced edge input, and summed them,
    O(n_chunks x n_atoms) in all (quickstart MACE, Cu 15,625 atoms, 15 chunks per layer: 0.85 of 7.6 CPU s per
    call; 16x that at 64k atoms). When the backward is differentiated (second derivatives), each chunk's
    vector-Jacobian product is recomputed differentiably, as in ``_ChunkedMessages``."""

    @staticmethod
    def forward(ctx, messages, chunk, k, sender, x, sh, radial, envelope):
        ctx.messages, ctx.chunk, ctx.k, ctx.sender = messages, chunk, k, sender
        ctx.save_for_backward(x, sh, radial, envelope)
        x = _component_major(x)
        return torch.cat([messages(x, sh[part], radial[part], _part(envelope, part), sender[part], None, k)
                          for part in _chunks(radial.shape[0], chunk)])

    @staticmethod
    def backward(ctx, grad_a):
        x, sh, radial, envelope = ctx.saved_tensors
        k, sender = ctx.k, ctx.sender
        need = ctx.needs_input_grad[4:8]
        if torch.is_grad_enabled() or not any(need[1:]):  # differentiated, or no edge input to carry x's
            return (None, None, None, None,
                    *_chunked_vjp(ctx.messages, ctx.chunk, k, sender, None, grad_a, x, sh, radial, envelope))
        x_grad = x.new_zeros(x.shape[1], x.shape[0], x.shape[2]) if need[0] else None  # (dim, n, c)
        edge = [t.new_empty(t.shape) if t is not None and wanted else None
                for t, wanted in zip((sh, radial, envelope), need[1:])]
        xc = _component_major(x.detach())
        for part in _chunks(radial.shape[0], ctx.chunk):
            inputs = [None if t is None else t[part].detach().requires_grad_(wanted)
                      for t, wanted in zip((sh, radial, envelope), need[1:])]
            with torch.enable_grad():
                out = ctx.messages(xc, *inputs, sender[part], None, k, x_grad)
                wanted = [i for i, t in enumerate(inputs) if t is not None and t.requires_grad]
                grads = torch.autograd.grad(out, [inputs[i] for i in wanted], _chunk_output(grad_a, part, k))
            for i, g in zip(wanted, grads):
                edge[i][part] = g
        return (None, None, None, None, None if x_grad is None else x_grad.transpose(0, 1), *edge)


def _component_major(x: torch.Tensor) -> torch.Tensor:
    """x (n, dim, c) as a view of a (dim, n, c) tensor, so that every chunk's gather of the senders'
    components (``EquivariantConvolution._gathered``) reads it without copying it first."""
    return x.transpose(0, 1).contiguous().transpose(0, 1)


def _chunked_vjp(messages, chunk, k, sender, receiver, grad_a, x, sh, radial, envelope, *params) -> tuple:
    """Gradients of <grad_a, messages over chunks> with respect to (x, sh, radial, envelope, *params), one
    chunk's vector-Jacobian product at a time (differentiable and checkpointed when grad mode is on)."""
    create = torch.is_grad_enabled()
    sums: list = [None] * (1 + len(params))  # x and the parameters: summed over chunks
    cats: list = [[], [], []]  # sh, radial, envelope: one block per chunk
    for part in _chunks(radial.shape[0], chunk):
        args = (messages, sender[part], _part(receiver, part), k, create, _chunk_output(grad_a, part, k), x,
                sh[part], radial[part], _part(envelope, part), *params)
        grads = checkpoint(_chunk_vjp, *args, use_reentrant=False) if create else _chunk_vjp(*args)
        for i, g in enumerate((grads[0], *grads[4:])):
            if g is not None:
                sums[i] = g if sums[i] is None else sums[i] + g
        for i in range(3):
            cats[i].append(grads[1 + i])
    edge = [None if any(g is None for g in c) else torch.cat(c) for c in cats]
    return (sums[0], *edge, *sums[1:])


class _ChunkedMessages(torch.autograd.Function):
    """``_EdgeMessages`` over chunks of ``chunk`` edges (summed; for a neighbour table, ``k`` > 0, chunks of
    whole receiving atoms, concatenated), keeping no per-edge intermediate: the backward
    recomputes one chunk at a time, and when that backward is itself differentiated (the force and stress
    terms of a training loss), each chunk's vector-Jacobian product is recomputed too (a checkpoint around
    it), so first and second derivatives both hold one chunk's intermediates at a time. Used in training
    mode; inference checkpoints each chunk instead, so that autograd skips the parameters' gradients."""

    @staticmethod
    def forward(ctx, messages, chunk, k, sender, receiver, x, sh, radial, envelope, *params):
        ctx.messages, ctx.chunk, ctx.k, ctx.sender, ctx.receiver = messages, chunk, k, sender, receiver
        ctx.save_for_backward(x, sh, radial, envelope, *params)
        terms = [messages(x, sh[part], radial[part], _part(envelope, part), sender[part],
                          _part(receiver, part), k) for part in _chunks(radial.shape[0], chunk)]
        return _combine(terms, k)

    @staticmethod
    def backward(ctx, grad_a):
        return (None, None, None, None, None,
                *_chunked_vjp(ctx.messages, ctx.chunk, ctx.k, ctx.sender, ctx.receiver, grad_a,
                              *ctx.saved_tensors))


def _chunks(rows: int, chunk: int) -> list[slice]:
    return [slice(start, min(start + chunk, rows)) for start in range(0, rows, chunk)]


def _combine(terms: list[torch.Tensor], k: int) -> torch.Tensor:
    """Chunks' messages: concatenated receivers (neighbour table, k > 0) or summed (edge list)."""
    if len(terms) == 1:
        return terms[0]
    if k:
        return torch.cat(terms)
    a = terms[0]
    for term in terms[1:]:
        a = a + term
    return a


class MACELayer(nn.Module):
    """One interaction + product block: (h (n, in.dim, c), element (n,), edge data) -> (n, out.dim, c)."""

    def __init__(
        self,
        irreps_in: ChannelIrreps,
        irreps_out: ChannelIrreps,
        max_ell: int,
        num_radial: int,
        radial_mlp: list[int],
        correlation: int,
        num_elements: int,
        avg_num_neighbors: float,
        tensor_product: str = "native",
        residual: bool = True,
        max_edges_per_chunk: int | str | None = "auto",
        gaunt_backend: str = "grid",
        product_basis: str = "symmetric_contraction",
    ):
        super().__init__()
        c = irreps_out.channels
        target = ChannelIrreps.spherical(c, max_ell)  # the atomic basis carries every l of the harmonics
        self.residual = residual
        if residual:  # h' = ... + Skip_z(h)
            self.skip = ElementIrrepsLinear(irreps_in, irreps_out, num_elements)
        else:  # mace-torch's RealAgnosticInteractionBlock: A <- Skip_z(A), no residual
            self.skip = ElementIrrepsLinear(target, target, num_elements)
        self.linear_up = IrrepsLinear(irreps_in, irreps_in)
        if tensor_product == "native":
            self.conv = EquivariantConvolution(irreps_in, max_ell, target)
            self._weight_shape = (self.conv.num_paths, irreps_in.channels)
        else:
            self.conv = TensorProductConvolution(tensor_product, irreps_in, max_ell, target, gaunt_backend)
            self._weight_shape = (self.conv.weight_numel,)
        self.radial = RadialMLP([num_radial, *radial_mlp, math.prod(self._weight_shape)])
        if product_basis == "gaunt":
            self.product = GauntManyBody(target, irreps_out, correlation, num_elements, gaunt_backend)
        else:
            self.product = SymmetricContraction(target, irreps_out, correlation, num_elements)
        self.linear = IrrepsLinear(irreps_out, irreps_out)
        self.inv_avg_num_neighbors = 1.0 / float(avg_num_neighbors)
        self.max_edges_per_chunk: int | str | None = max_edges_per_chunk
        # numbers per edge of the edge-list paths (native ``forward``, e3nn-layout kernels): the intermediates
        # autograd keeps and their gradients, about (2 l3 + 1) ~ 4 rows per weight in the e3nn kernels
        hidden = 2 * sum(radial_mlp) + 2 * math.prod(self._weight_shape)
        if tensor_product == "native":
            self._floats_edge_list = hidden + 2 * (irreps_in.dim * irreps_in.channels
                                                   + self.conv.padded_floats_per_slot)
        else:
            self._floats_edge_list = hidden + irreps_in.dim * irreps_in.channels + 12 * self.conv.weight_numel
        self._num_radial, self._radial_mlp = num_radial, list(radial_mlp)

        # the product basis per atom: monomials of A, the basis-weighted sums per output irrep, A and B
        sc = self.product
        if product_basis == "gaunt":
            self.floats_per_node = c * (2 * target.dim + sc.floats_per_channel)
        else:
            products = sum(2 * (2 * l + 1) * k for (l, _), entries in zip(irreps_out.irreps, sc._plan)
                           for _, _, _, _, k in entries)
            self.floats_per_node = c * (2 * target.dim + sum(map(sum, sc._sizes.values())) + products)
        # not a submodule: the same radial MLP and convolution, under their existing state-dict keys
        object.__setattr__(self, "_messages", _EdgeMessages(self.radial, self.conv, self._weight_shape))

    def floats_per_edge(self, k: int = 0, envelope: bool = True, element_size: int = 4) -> float:
        """Numbers (of ``element_size`` bytes) per edge, or per slot of a neighbour table of ``k`` slots, that
        the message computation keeps for the backward pass in the layer's mode (``train``/``eval``), with
        the positions requiring gradients (and, in eval, the parameters frozen, as the calculators run it).

        Neighbour table, eval (``_FusedPathSums``): per hidden layer of the radial MLP its pre-activation,
        the last hidden layer (twice with an ``envelope``, before and after scaling, and the envelope), the
        contracted harmonics G = C . Y (sum over paths of d1 d3) and the sender index. Training
        (``forward_padded``) adds the radial basis, the MLP's activations (for the weights' gradients), the
        gathered sender features (dim_in c), per path its weights w_p (c) and products z_p (d1 c), and the
        copies of G's blocks of paths with d1 > 1. Edge
        lists keep the earlier, looser count (intermediates and their gradients). Not counted: what the
        backward pass creates while it runs (in eval about (dim_in + 2 + max d1) c per slot of a chunk)."""
        if not k or not isinstance(self.conv, EquivariantConvolution):
            return float(self._floats_edge_list)
        mlp, c = self._radial_mlp, self.conv.irreps_in.channels
        index = 8 / element_size  # the int64 sender
        g = sum(self.conv._path_cols)
        scaled = mlp[-1] + 1 if envelope else 0  # hidden * envelope keeps both factors
        if not self.training:
            return sum(mlp) + mlp[-1] + scaled + g + index
        paths = sum((1 + d1) * c for _, d1 in self.conv._path_in)
        # a path's G columns with d1 > 1 are copied when laid out as (n, k d1, d3)
        copies = sum(cols for cols, (_, d1) in zip(self.conv._path_cols, self.conv._path_in) if d1 > 1)
        return (self._num_radial + 2 * sum(mlp) + scaled + index + self.conv.irreps_in.dim * c + paths + g
                + copies)

    def edges_per_chunk(self, n_edges: int, x: torch.Tensor, k: int = 0, envelope: bool = True) -> int:
        """Edges per chunk of the message computation: ``max_edges_per_chunk`` if an integer, all edges if
        None, and with "auto" as many as keep ``AUTO_CHUNK_BYTES`` for the backward pass
        (``floats_per_edge``: in the layer's mode, edge list or neighbour table of ``k`` slots);
        ``AUTO_CHUNK_BYTES_INFERENCE`` for the neighbour table in inference, where smaller chunks run faster."""
        setting = self.max_edges_per_chunk
        if setting is None:
            return max(n_edges, 1)
        if setting == "auto":
            size = x.element_size()
            budget = AUTO_CHUNK_BYTES_INFERENCE if k and not self.training else AUTO_CHUNK_BYTES
            return max(int(budget // (self.floats_per_edge(k, envelope, size) * size)), 1)
        return int(setting)

    def rows_per_chunk(self, n_rows: int, x: torch.Tensor, k: int = 0, envelope: bool = True) -> int:
        """The chunk that ``forward`` uses for ``n_rows`` edges, or slots of a neighbour table of ``k`` slots
        per atom: ``edges_per_chunk``, for the table rounded down to whole receiving atoms (at least one)."""
        chunk = self.edges_per_chunk(n_rows, x, k, envelope)
        return max(chunk // k, 1) * k if k else chunk

    def forward(
        self,
        h: torch.Tensor,
        element: torch.Tensor,
        sh: torch.Tensor,
        radial: torch.Tensor,
        envelope: torch.Tensor | None,
        sender: torch.Tensor,
        receiver: torch.Tensor | None,
        k: int = 0,
    ) -> torch.Tensor:
        """Edge data as a list (``k`` = 0), or in a neighbour table of ``k`` slots per atom
        (``NeighbourLayout.pad`` of sh, radial, envelope and sender; ``receiver`` unused; native only)."""
        x = self.linear_up(h)
        n_edges = radial.shape[0]
        chunk = self.rows_per_chunk(n_edges, x, k, envelope is not None)
        if chunk >= n_edges or plain_autograd():  # compiled or torch.func: no Function, no checkpoint
            a = self._messages(x, sh, radial, envelope, sender, receiver, k)
        elif self.training and torch.is_grad_enabled():  # force training: second derivatives bounded too
            params = [p for _, p in self._messages.named_parameters()]
            a = _ChunkedMessages.apply(self._messages, chunk, k, sender, receiver, x, sh, radial, envelope,
                                       *params)
        elif k and torch.is_grad_enabled() and not self.conv.training and not any(
                p.requires_grad for p in self._messages.parameters()):  # calculators: frozen parameters
            a = _InferenceChunks.apply(self._messages, chunk, k, sender, x, sh, radial, envelope)
        else:  # inference: a checkpoint per chunk (autograd then skips the parameters' gradients)
            terms = []
            if k:  # one component-major copy of x for all chunks' gathers
                x = _component_major(x)
            # split, not slices: a slice's backward is a zero-filled full-size gradient per chunk
            pieces = zip(*[[None] * -(-n_edges // chunk) if t is None else torch.split(t, chunk)
                           for t in (sh, radial, envelope, sender, receiver)])
            for sh_c, radial_c, envelope_c, sender_c, receiver_c in pieces:
                args = (x, sh_c, radial_c, envelope_c, sender_c, receiver_c, k)
                if torch.is_grad_enabled():
                    terms.append(checkpoint(self._messages, *args, use_reentrant=False))
                else:
                    terms.append(self._messages(*args))
                if not k and len(terms) == 2:  # an edge list's chunks are summed as they come
                    terms = [terms[0] + terms[1]]
            a = _combine(terms, k)
        a = a * self.inv_avg_num_neighbors  # [n, dim_sh, c]
        if not self.residual:
            return self.linear(self._product(self.skip(a, element), element))
        return self.linear(self._product(a, element)) + self.skip(h, element)

    def _product(self, a: torch.Tensor, element: torch.Tensor) -> torch.Tensor:
        """The symmetric contraction; in inference with gradients and chunking on, over blocks of atoms of
        about ``AUTO_CHUNK_BYTES`` of intermediates (its monomials), each recomputed in backward. A trade of
        time for memory above one block (quickstart MACE, f32: ~40k atoms in its first layer, ~90k in the
        second): Cu 64,000 atoms, E+F+S per call, 28.2-28.6 CPU s / peak 4.6 GB with the blocks, 26.6-27.0 s /
        6.1 GB as one piece; this recomputation is most of what still grows per atom from 16k to 64k."""
        n = a.shape[0]
        per = max(AUTO_CHUNK_BYTES // (self.floats_per_node * a.element_size()), 1)
        if (self.max_edges_per_chunk is None or self.training or not torch.is_grad_enabled() or n <= per
                or plain_autograd()):
            return self.product(a, element)
        # split, not slices: a slice's backward is a zero-filled full-size gradient per block
        return torch.cat([checkpoint(self.product, block, z, use_reentrant=False)
                          for block, z in zip(torch.split(a, per), torch.split(element, per))])


class MACE(EnergyModel):
    """MACE force field with molequi's model interface (see ``molequi.models``)."""

    @dataclass
    class Config:
        #: the defaults of the fields whose default changed when molequi's MACE took ``mace_run_train``'s
        #: defaults (checkpoint format version 2): a model section stored by an older molequi that lacks one
        #: of these keys described a model with this value (``molequi.config.migrate_stored_config``)
        LEGACY_DEFAULTS: ClassVar[dict] = {"first_interaction": "residual", "envelope": "weights",
                                           "scaling": "std", "shift": "mean"}

        r_max: float = 5.0
        """Cutoff radius, Å (graphs must be built with at least this cutoff)."""
        num_bessel: int = 8
        """Number of Bessel radial basis functions."""
        num_polynomial_cutoff: int = 5
        """Power p of the polynomial cutoff envelope."""
        max_ell: int = 3
        """Highest l of the edge spherical harmonics (and of the atomic basis A)."""
        hidden_irreps: str = "64x0e+64x1o"
        """Node features between layers (e3nn string, one multiplicity for all irreps)."""
        correlation: int = 3
        """Body order minus one of the product basis (3 = four-body messages)."""
        num_interactions: int = 2
        """Number of message-passing layers."""
        MLP_irreps: str = "16x0e"
        """Hidden scalars of the last layer's MLP readout."""
        radial_MLP: list[int] = field(default_factory=lambda: [64, 64, 64])
        """Hidden widths of the radial MLP that gives the per-edge tensor-product weights."""
        avg_num_neighbors: float | None = None
        """Normaliser of the neighbour sum; None takes it from the statistics."""
        tensor_product: str = "native"
        """Edge tensor product of the atomic basis: native (fast default) | e3nn (reference) | so2 (same
        function in edge frames) | gaunt (S2 grid; natural-parity hidden irreps only)."""
        gaunt_backend: str = "grid"
        """How tensor_product 'gaunt' evaluates its product (the same function, the same parameters): "grid"
        (dense S2-grid projections, O(L^4) per channel; the fastest on the CPU at max_ell <= 8), "fft" (2D
        Fourier basis and FFT convolution, Luo et al. 2024, O(L^3); ``molequi.nn.gaunt_fft``) or "dft" (the
        same Fourier route with the DFTs as matrix products). Timings: ``scripts/bench/gaunt.py``. It is also
        the backend of ``product_basis`` 'gaunt'."""
        product_basis: str = "symmetric_contraction"
        """Many-body product B of the atomic basis: "symmetric_contraction" (MACE's, every coupling of up to
        ``correlation`` factors) or "gaunt" (repeated channel-wise Gaunt products of A with itself, each
        factor reweighted per element, l and channel, then a learned per-element, per-l sum of the powers;
        Luo et al. 2024; ``molequi.nn.gaunt_manybody``: natural-parity couplings only, fewer parameters,
        evaluated by ``gaunt_backend``; natural-parity hidden irreps only). Timings:
        ``scripts/bench/gaunt.py --many-body``."""
        backend: str = "native"
        """Kernels of the convolution and the symmetric contraction: "native" (molequi's torch code) or
        "cueq" (NVIDIA cuEquivariance: its CUDA kernels on a GPU, its pure-torch reference path on the CPU;
        ``pip install molequi[cueq]``, on a GPU also cuequivariance-ops-torch-cu12). The same function and
        the same parameters (a checkpoint runs with either); needs tensor_product native
        (``molequi.nn.cueq``)."""
        radial_type: str = "bessel"
        """Radial basis of the edge lengths: bessel | gaussian | chebyshev (mace-torch's ``radial_type``)."""
        distance_transform: str = "none"
        """Element-pair transform of the length before the radial basis: none | agnesi | soft (the
        envelope always sees the plain length)."""
        envelope: str = "basis"
        """Where the polynomial cutoff f(r) multiplies: "basis" = the radial basis before the MLP
        (mace-torch's ``apply_cutoff``, its default), "weights" = the radial MLP's output (the tensor-product
        weights; molequi's default before configs had a version, see ``LEGACY_DEFAULTS``)."""
        first_interaction: str = "nonresidual"
        """First layer's block: "nonresidual" (element-dependent linear on the atomic basis and no skip,
        mace-torch's ``RealAgnosticInteractionBlock``, which ``mace_run_train --model MACE`` (the default)
        always uses first, and the first block of the MACE-MP models) or "residual" (skip connection from
        the embedding, ``RealAgnosticResidualInteractionBlock``; the default before ``LEGACY_DEFAULTS``)."""
        pair_repulsion: bool = False
        """Add the ZBL screened nuclear repulsion (inside the scaled readout, as mace-torch's ScaleShiftMACE)."""
        scaling: str = "rms_forces"
        """Scale of the per-atom readout, set from the training set when a run starts (mace-torch's
        ``--scaling``): "rms_forces" = RMS of the force components (``rms_forces_scaling``, its default;
        1 when no frame has forces), "std" = standard deviation of the per-atom energy after E0s
        (``std_scaling``, which divides by n - 1 where molequi divides by n), "none" = 1. A loaded or
        fine-tuned model keeps the scale it has."""
        shift: str = "none"
        """Shift added to every atom's energy after scaling: "none" = 0 (mace-torch's default model,
        ``--model MACE``), "mean" = the mean per-atom energy after E0s (``--model ScaleShiftMACE``)."""
        max_edges_per_chunk: int | Literal["auto"] | None = "auto"
        """Edges per chunk of each layer's message computation (radial MLP, tensor product, neighbour sum;
        slots of the neighbour table, rounded down to whole receiving atoms, when the native convolution
        uses it): the edges are processed in chunks whose intermediates are recomputed in the backward pass
        (and, in force training, in the second backward), so the per-edge memory of inference with forces and
        stress and of training is bounded by a chunk, not by the whole edge set. An integer, null (never
        chunk) or "auto" (chunks of about 1 GiB per layer of what autograd keeps for the backward pass, counted
        for the mode that runs, ``MACELayer.floats_per_edge``; in inference on the neighbour table chunks of
        8 MiB, ~10k slots of ~0.7-0.8 kB for the quickstart model, faster than larger chunks or one piece
        and lower in peak memory; the chunks' gradients share one buffer per input, so the cost per atom
        does not grow with the system). Unless null, inference also evaluates the symmetric contraction over blocks of atoms of
        about 1 GiB of intermediates (its monomials), recomputed in backward (not in training mode). Changes
        no number beyond round-off; costs a recomputation of the messages. Eager runs only: compiled code and
        torch.func transforms (``trainer.compile``, ``MolequiCalculator(compile=True)``) compute all edges at
        once (neither the chunks' autograd.Function nor checkpoints run inside ``torch.func.grad``)."""

        def validate(self) -> None:
            if self.r_max <= 0:
                raise ConfigError(f"r_max must be positive, got {self.r_max}")
            if self.num_interactions < 1 or self.correlation < 1 or self.max_ell < 0:
                raise ConfigError("num_interactions and correlation must be >= 1 and max_ell >= 0")
            hidden = ChannelIrreps.parse(self.hidden_irreps)
            if (0, 1) not in hidden.irreps:
                raise ConfigError(f"hidden_irreps '{self.hidden_irreps}' must contain scalars (0e)")
            mlp = ChannelIrreps.parse(self.MLP_irreps)
            if mlp.irreps != ((0, 1),):
                raise ConfigError(f"MLP_irreps must be scalars like '16x0e', got '{self.MLP_irreps}'")
            if self.tensor_product not in TENSOR_PRODUCTS:
                raise ConfigError(
                    f"unknown tensor_product '{self.tensor_product}'; valid: {', '.join(TENSOR_PRODUCTS)}"
                )
            if self.gaunt_backend not in GAUNT_BACKENDS:
                raise ConfigError(
                    f"unknown gaunt_backend '{self.gaunt_backend}'; valid: {', '.join(GAUNT_BACKENDS)}"
                )
            if self.product_basis not in PRODUCT_BASES:
                raise ConfigError(
                    f"unknown product_basis '{self.product_basis}'; valid: {', '.join(PRODUCT_BASES)}"
                )
            if self.gaunt_backend != "grid" and "gaunt" not in (self.tensor_product, self.product_basis):
                raise ConfigError(f"gaunt_backend '{self.gaunt_backend}' needs tensor_product 'gaunt' (or "
                                  f"product_basis 'gaunt'), got '{self.tensor_product}'")
            if self.tensor_product == "so2" and self.max_ell < 1:
                raise ConfigError(
                    "tensor_product 'so2' needs max_ell >= 1 (edge frames from the l = 1 harmonics)"
                )
            for name, value, valid in (
                ("radial_type", self.radial_type, RADIAL_TYPES),
                ("distance_transform", self.distance_transform, DISTANCE_TRANSFORMS),
                ("envelope", self.envelope, ENVELOPES),
                ("first_interaction", self.first_interaction, FIRST_INTERACTIONS),
                ("scaling", self.scaling, SCALINGS),
                ("shift", self.shift, SHIFTS),
                ("backend", self.backend, ("native", "cueq")),
            ):
                if value not in valid:
                    raise ConfigError(f"unknown {name} '{value}'; valid: {', '.join(valid)}")
            if self.backend == "cueq" and self.tensor_product != "native":
                raise ConfigError(f"backend 'cueq' runs the native convolution's function; tensor_product "
                                  f"'{self.tensor_product}' has no cuEquivariance form (use native)")
            if self.backend == "cueq" and self.product_basis != "symmetric_contraction":
                raise ConfigError("backend 'cueq' runs the symmetric contraction; product_basis "
                                  f"'{self.product_basis}' has no cuEquivariance form")
            chunk = self.max_edges_per_chunk
            positive = isinstance(chunk, int) and not isinstance(chunk, bool) and chunk >= 1
            if not (chunk is None or chunk == "auto" or positive):
                raise ConfigError(
                    f"max_edges_per_chunk must be a positive integer, null or 'auto', got {chunk!r}"
                )
            natural = tuple((l, (-1) ** l) for l in range(hidden.lmax + 1))
            if self.tensor_product == "gaunt" and hidden.irreps != natural:
                raise ConfigError(
                    "tensor_product 'gaunt' has only natural-parity paths (l1 + l2 + l3 even): "
                    f"hidden_irreps must be 0e + 1o + 2e + ... up to some l, got '{self.hidden_irreps}' "
                    "(use 'native', 'e3nn' or 'so2' for pseudo-tensor features)"
                )
            if self.product_basis == "gaunt" and hidden.irreps != natural:
                raise ConfigError(
                    "product_basis 'gaunt' has only natural-parity products: hidden_irreps must be 0e + 1o + "
                    f"2e + ... up to some l, got '{self.hidden_irreps}' (use 'symmetric_contraction')"
                )

    def __init__(self, cfg: MACE.Config, statistics: Statistics):
        super().__init__()
        cfg.validate()
        self.config = cfg
        self.statistics = statistics
        self.elements = [int(z) for z in statistics.elements]
        self.r_max = float(cfg.r_max)
        avg = cfg.avg_num_neighbors if cfg.avg_num_neighbors is not None else statistics.avg_num_neighbors
        hidden = ChannelIrreps.parse(cfg.hidden_irreps)
        c = hidden.channels
        scalars = ChannelIrreps(c, ((0, 1),))
        self.max_ell = cfg.max_ell
        self.element_table = ElementTable(self.elements)
        num_elements = len(self.elements)
        self.embedding = ElementEmbedding(num_elements, c)
        self.bessel = RADIAL_TYPES[cfg.radial_type](cfg.r_max, cfg.num_bessel)
        self.cutoff = PolynomialCutoff(cfg.r_max, cfg.num_polynomial_cutoff)
        transform = DISTANCE_TRANSFORMS[cfg.distance_transform]
        self.distance_transform = transform(self.elements) if transform is not None else None
        self.zbl = ZBLRepulsion(self.elements, cfg.num_polynomial_cutoff) if cfg.pair_repulsion else None
        self.layers = nn.ModuleList()
        self.readouts = nn.ModuleList()
        self._scalar_rows: list[int] = []  # row of the 0e block in each layer's output
        irreps_in = scalars
        for t in range(cfg.num_interactions):
            last = t == cfg.num_interactions - 1
            irreps_out = scalars if last else hidden
            self.layers.append(
                MACELayer(
                    irreps_in,
                    irreps_out,
                    cfg.max_ell,
                    cfg.num_bessel,
                    list(cfg.radial_MLP),
                    cfg.correlation,
                    num_elements,
                    avg,
                    cfg.tensor_product,
                    residual=t > 0 or cfg.first_interaction == "residual",
                    max_edges_per_chunk=cfg.max_edges_per_chunk,
                    gaunt_backend=cfg.gaunt_backend,
                    product_basis=cfg.product_basis,
                )
            )
            hidden_mlp = ChannelIrreps.parse(cfg.MLP_irreps).channels
            self.readouts.append(MLPReadout(c, hidden_mlp) if last else LinearReadout(c))
            self._scalar_rows.append(irreps_out.scalars().start)
            irreps_in = irreps_out
        if cfg.backend == "cueq":  # the same parameters, evaluated by cuEquivariance (molequi.nn.cueq)
            from molequi.nn.cueq import cueq_modules

            for layer in self.layers:
                layer.conv, layer.product = cueq_modules(layer.conv, layer.product)
                layer._messages.conv = layer.conv
        self.head = AtomicEnergyHead(statistics, self.elements)

    @classmethod
    def from_config(cls, cfg: MACE.Config, statistics: Statistics) -> MACE:
        return cls(cfg, statistics)

    def config_dict(self) -> dict:
        return asdict(self.config)

    def set_max_edges_per_chunk(self, value: int | str | None) -> None:
        """Change ``max_edges_per_chunk`` (see ``Config``) of every layer, e.g. of a loaded model."""
        self.config.max_edges_per_chunk = value
        self.config.validate()
        for layer in self.layers:
            layer.max_edges_per_chunk = value

    def neighbour_layout(self, receiver: torch.Tensor, n: int) -> NeighbourLayout | None:
        """The neighbour table of the native convolution (``EquivariantConvolution.forward_padded``), or None
        where the edge list is used: other tensor products, backend cueq (its kernel gathers and sums the edge
        list), compiled code (the table's width is read on the host) and graphs whose table would have more
        than ``MAX_PADDING`` slots per edge (very uneven neighbour counts)."""
        if self.config.tensor_product != "native" or self.config.backend != "native":
            return None
        if is_tracing():  # torch.compile, or make_fx for molequi export
            return None
        layout = NeighbourLayout(receiver, n)
        return layout if layout.rows <= MAX_PADDING * max(layout.n_edges, 1) + n else None

    def chunk_rows(self, data) -> list[dict]:
        """How each layer's message computation runs on ``data`` (a batch) in the current mode, as
        ``atomic_energies`` lays it out: ``k`` slots per atom of the neighbour table (0: the edge list),
        ``rows`` (slots or edges) and ``rows_per_chunk`` (at most ``rows``: one piece)."""
        receiver, pos = data[K.EDGE_INDEX][1], data[K.POS]
        layout = self.neighbour_layout(receiver, pos.shape[0])
        k, rows = (layout.k, layout.rows) if layout is not None else (0, int(receiver.shape[0]))
        envelope = self.config.envelope != "basis"
        return [{"k": k, "rows": rows, "rows_per_chunk": min(layer.rows_per_chunk(rows, pos, k, envelope), rows)}
                for layer in self.layers]

    def atomic_energies(self, data, pos: torch.Tensor, cell: torch.Tensor) -> torch.Tensor:
        """Per-atom energies (n,) in eV from positions (n, 3) Å and cells (B, 3, 3) Å."""
        element = self.element_table(data[K.NUMBERS])
        sender, receiver = data[K.EDGE_INDEX][0], data[K.EDGE_INDEX][1]
        vectors = edge_vectors(
            pos, data[K.EDGE_INDEX], data[K.UNIT_SHIFTS], cell, batch_vector(data)
        )  # [E, 3]
        lengths = torch.linalg.vector_norm(vectors, dim=-1)  # [E]
        sh = spherical_harmonics(self.max_ell, vectors)  # [E, (max_ell+1)^2]
        envelope = self.cutoff(lengths)  # [E, 1]
        r = lengths
        if self.distance_transform is not None:
            r = self.distance_transform(lengths, element, sender, receiver)
        radial = self.bessel(r)  # [E, num_bessel]
        if self.config.envelope == "basis":
            radial, envelope = radial * envelope, None
        h = self.embedding(element).to(pos.dtype).unsqueeze(1)  # [n, 1, c]
        readout = torch.zeros_like(pos[:, 0])
        if self.zbl is not None:
            readout = readout + self.zbl(lengths, element, sender, receiver, pos.shape[0])
        k, layout = 0, self.neighbour_layout(receiver, pos.shape[0])
        if layout is not None:  # edges into a table of k slots per atom: sums over neighbours become bmm
            k, sh, radial, sender = layout.k, layout.pad(sh), layout.pad(radial), layout.pad(sender)
            receiver = None
            envelope = None if envelope is None else layout.pad(envelope)
        for layer, head, row in zip(self.layers, self.readouts, self._scalar_rows):
            h = layer(h, element, sh, radial, envelope, sender, receiver, k)
            readout = readout + head(h[:, row, :])
        return self.head(element, readout)


__all__ = ["MACE", "MACELayer"]
