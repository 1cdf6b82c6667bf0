"""One interface, three edge tensor products: e3nn reference, SO(2) (same function), Gaunt (grid)."""

import pytest
import torch
from e3nn import o3

from molequi.errors import ConfigError
from molequi.nn.s2 import GauntProduct, S2Grid, SeparableS2Activation, gaunt_path_weight
from molequi.nn.tensor_products import build_conv_tensor_product
from molequi.so3.rotations import irreps_blocks_to_stack, stack_to_irreps_blocks

DT = torch.float64


@pytest.fixture(autouse=True)
def float64_default():
    old = torch.get_default_dtype()
    torch.set_default_dtype(DT)
    yield
    torch.set_default_dtype(old)


def natural(L, C):
    return o3.Irreps("+".join(f"{C}x{l}{'e' if l % 2 == 0 else 'o'}" for l in range(L + 1)))


CASES = [  # (node irreps, sh lmax, target) -- MACE's first and second interaction, and a pseudo-tensor case
    ("3x0e", 3, "3x0e+3x1o+3x2e+3x3o"),
    ("3x0e+3x1o+3x2e", 2, "3x0e+3x1o+3x2e"),
    ("2x0e+2x1o+2x1e+2x2e", 2, "2x0e+2x0o+2x1o+2x1e+2x2e+2x2o"),
]


@pytest.mark.parametrize("merge", [False, True])
@pytest.mark.parametrize("irreps,L,target", CASES)
def test_so2_kind_equals_e3nn_kind(irreps, L, target, merge):
    torch.manual_seed(0)
    ir_sh = o3.Irreps.spherical_harmonics(L)
    ref = build_conv_tensor_product("e3nn", irreps, ir_sh, target, merge_paths=merge)
    so2 = build_conv_tensor_product("so2", irreps, ir_sh, target, merge_paths=merge)
    assert ref.irreps_out == so2.irreps_out and ref.weight_numel == so2.weight_numel
    E = 9
    vec = torch.randn(E, 3)
    vec[0] = torch.tensor([0.0, 1.3, 0.0])  # along the frame's polar axis: must still work
    vec[1] = torch.tensor([0.0, 0.0, -2.0])
    sh = o3.spherical_harmonics(ir_sh, vec, True, normalization="component")
    x = torch.randn(E, o3.Irreps(irreps).dim)
    w = torch.randn(E, ref.weight_numel)
    a, b = ref(x, sh, w), so2(x, sh, w)
    assert (a - b).abs().max() < 1e-11 * a.abs().max()
    # gradients (forces flow through the edge frame) agree too
    vec.requires_grad_(True)
    sh = o3.spherical_harmonics(ir_sh, vec, True, normalization="component")
    probe = torch.randn(E, ref.irreps_out.dim)  # a non-invariant loss, so the gradient is not zero
    ga = torch.autograd.grad((ref(x, sh, w) * probe).sum(), vec)[0]
    sh = o3.spherical_harmonics(ir_sh, vec, True, normalization="component")
    gb = torch.autograd.grad((so2(x, sh, w) * probe).sum(), vec)[0]
    assert (ga - gb).abs().max() < 1e-9 * ga.abs().max()


def test_gaunt_product_equals_weighted_cg_paths():
    """Grid product == parity-allowed CG paths with Gaunt weights (derived from Legendre integrals)."""
    torch.manual_seed(1)
    L1, L2, Lo = 2, 3, 3
    gp = GauntProduct(L1, L2, Lo)
    x, y = torch.randn(4, (L1 + 1) ** 2, 2), torch.randn(4, (L2 + 1) ** 2, 2)
    ref = torch.zeros(4, (Lo + 1) ** 2, 2)
    for l1 in range(L1 + 1):
        for l2 in range(L2 + 1):
            for lo in range(Lo + 1):
                c = gaunt_path_weight(l1, l2, lo)
                if (l1 + l2 + lo) % 2:
                    assert c == 0.0  # Gaunt keeps only the parity-allowed paths
                if c:
                    ref[:, lo * lo : (lo + 1) ** 2] += c * torch.einsum(
                        "ijk,eic,ejc->ekc",
                        o3.wigner_3j(l1, l2, lo),
                        x[:, l1 * l1 : (l1 + 1) ** 2],
                        y[:, l2 * l2 : (l2 + 1) ** 2],
                    )
    assert (gp(x, y) - ref).abs().max() < 1e-12 * ref.abs().max()


def test_gaunt_kind_equals_cg_with_gaunt_weights_and_is_equivariant():
    torch.manual_seed(2)
    L, C = 2, 3
    ir_in, ir_sh = natural(L, C), o3.Irreps.spherical_harmonics(L)
    tp = build_conv_tensor_product("gaunt", ir_in, ir_sh, natural(L, C))
    assert tp.irreps_out == natural(L, C) and tp.weight_numel == (L + 1) * C
    E = 5
    vec = torch.randn(E, 3)
    sh = o3.spherical_harmonics(ir_sh, vec, True, normalization="component")
    x = torch.randn(E, ir_in.dim)
    w = torch.randn(E, tp.weight_numel)
    out = tp(x, sh, w)
    xs, wl = irreps_blocks_to_stack(x, ir_in), w.reshape(E, L + 1, C)
    ref = torch.zeros(E, (L + 1) ** 2, C)
    for l1 in range(L + 1):
        for l2 in range(L + 1):
            for lo in range(L + 1):
                c = gaunt_path_weight(l1, l2, lo)
                if c:
                    ref[:, lo * lo : (lo + 1) ** 2] += c * torch.einsum(
                        "ijk,eic,ej,ec->ekc",
                        o3.wigner_3j(l1, l2, lo),
                        xs[:, l1 * l1 : (l1 + 1) ** 2],
                        sh[:, l2 * l2 : (l2 + 1) ** 2],
                        wl[:, l2],
                    )
    assert (out - stack_to_irreps_blocks(ref, tp.irreps_out)).abs().max() < 1e-12 * out.abs().max()
    R = o3.rand_matrix()
    out_r = tp(
        x @ ir_in.D_from_matrix(R).T,
        o3.spherical_harmonics(ir_sh, vec @ R.T, True, normalization="component"),
        w,
    )
    assert (out_r - out @ tp.irreps_out.D_from_matrix(R).T).abs().max() < 1e-12 * out.abs().max()


def test_s2_grid_round_trip_and_separable_activation_shapes():
    g = S2Grid(3)
    x = torch.randn(2, 16, 4)
    assert (g.from_grid(g.to_grid(x)) - x).abs().max() < 1e-12
    act = SeparableS2Activation(3)
    y = act(x)
    assert y.shape == x.shape and torch.allclose(y[:, 0], torch.nn.functional.silu(x[:, 0]))


def test_bad_kind_and_bad_irreps_are_named():
    with pytest.raises(ConfigError, match="valid kinds"):
        build_conv_tensor_product("cueq", "2x0e", "0e+1o", "2x0e")
    with pytest.raises(ConfigError, match="one multiplicity"):
        build_conv_tensor_product("so2", "2x0e+3x1o", "0e+1o", "2x0e")
    with pytest.raises(ConfigError, match="natural parity"):
        build_conv_tensor_product("gaunt", "2x0e+2x1e", "0e+1o", "2x0e")


@pytest.mark.parametrize(
    "irreps_in,sh_lmax,irreps_out", [("3x0e", 3, "3x0e+3x1o+3x2e+3x3o"), ("2x0e+2x1o", 2, "2x0e+2x1o+2x1e")]
)
def test_so2_drop_in_for_mace_convolution(irreps_in, sh_lmax, irreps_out):
    """SO2EquivariantConvolution == molequi's MACE convolution (same parameters): values and gradients."""
    from molequi.nn.equivariant import ChannelIrreps, EquivariantConvolution, spherical_harmonics
    from molequi.nn.tensor_products import SO2EquivariantConvolution

    torch.manual_seed(3)
    ir_in, ir_out = ChannelIrreps.parse(irreps_in), ChannelIrreps.parse(irreps_out)
    ref = EquivariantConvolution(ir_in, sh_lmax, ir_out)
    so2 = SO2EquivariantConvolution(ir_in, sh_lmax, ir_out)
    so2.load_state_dict(ref.state_dict())
    n, E = 5, 12
    x = torch.randn(n, ir_in.dim, ir_in.channels)
    sender, receiver = torch.randint(0, n, (E,)), torch.randint(0, n, (E,))
    vec = torch.randn(E, 3, requires_grad=True)
    w = torch.randn(E, ref.num_paths, ir_in.channels)
    a = ref(x, spherical_harmonics(sh_lmax, vec), w, sender, receiver)
    b = so2(x, spherical_harmonics(sh_lmax, vec), w, sender, receiver)
    assert (a - b).abs().max() < 1e-11 * a.abs().max()
    probe = torch.randn_like(a)
    ga = torch.autograd.grad((a * probe).sum(), vec)[0]
    gb = torch.autograd.grad((b * probe).sum(), vec)[0]
    assert (ga - gb).abs().max() < 1e-9 * ga.abs().max()
