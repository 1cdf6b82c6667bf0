"""The SO(2) convolution equals the full SO(3) tensor product with edge spherical harmonics (eSCN)."""

import pytest
import torch
from e3nn import o3

from molequi.nn.so2 import SO2Convolution, edge_frame_path_coefficients, so2_weights_from_tensor_product
from molequi.so3.rotations import EdgeFrame, irreps_blocks_to_stack, stack_to_irreps_blocks

DT = torch.float64


@pytest.fixture(autouse=True)
def float64_default():
    """e3nn builds its references (generators, Wigner matrices) in the default dtype."""
    old = torch.get_default_dtype()
    torch.set_default_dtype(DT)
    yield
    torch.set_default_dtype(old)


def natural(L, C):
    return o3.Irreps("+".join(f"{C}x{l}{'e' if l % 2 == 0 else 'o'}" for l in range(L + 1)))


def pseudo(L, C):
    return o3.Irreps("+".join(f"{C}x{l}{'o' if l % 2 == 0 else 'e'}" for l in range(L + 1)))


@pytest.mark.parametrize("tilt", [False, True])
def test_edge_frame_matches_e3nn_wigner(tilt):
    torch.manual_seed(0)
    L = 4
    fr = EdgeFrame(list(range(L + 1)), tilt=tilt).to(DT)
    vec = torch.randn(6, 3, dtype=DT)
    R = fr.edge_rotation(vec)
    u = vec / vec.norm(dim=-1, keepdim=True)
    assert torch.allclose(R[:, :, 1], u, atol=1e-14)
    D = fr.wigner_D(vec)
    ref = torch.stack([natural(L, 1).D_from_matrix(r) for r in R])
    assert (D - ref).abs().max() < 1e-12
    # in the edge frame the edge's spherical harmonics keep only m = 0
    sh = o3.spherical_harmonics(list(range(L + 1)), vec, True, normalization="component")
    rot = fr.to_edge(sh.unsqueeze(-1), fr.angles(vec)).squeeze(-1)
    centres = [l * l + l for l in range(L + 1)]
    mask = torch.ones(rot.shape[1], dtype=torch.bool)
    mask[centres] = False
    assert rot[:, mask].abs().max() < 1e-12
    assert torch.allclose(rot[:, centres], torch.tensor([(2 * l + 1) ** 0.5 for l in range(L + 1)], dtype=DT))


def test_path_coefficients_split_by_parity():
    """Even l1+l2+lo paths only give the symmetric part (a), odd paths only the rotation part (b)."""
    for l1 in range(4):
        for lo in range(4):
            for l2 in range(abs(l1 - lo), l1 + lo + 1):
                for m in range(min(l1, lo) + 1):
                    a, b = edge_frame_path_coefficients(l1, l2, lo, m)
                    C = o3.wigner_3j(l1, l2, lo, dtype=DT)
                    if m > 0:  # the 2x2 block is a I + b J
                        assert abs(C[l1 - m, l2, lo - m] - a) < 1e-12
                        assert abs(C[l1 - m, l2, lo + m] + b) < 1e-12
                    if (l1 + l2 + lo) % 2 == 0:
                        assert abs(b) < 1e-12
                    else:
                        assert abs(a) < 1e-12


@pytest.mark.parametrize("L_in,L_out,with_pseudo", [(2, 2, False), (3, 2, True), (2, 3, True)])
def test_so2_convolution_equals_so3_tensor_product(L_in, L_out, with_pseudo):
    torch.manual_seed(1)
    C_in, C_out, E = 3, 2, 7
    ir_in = natural(L_in, C_in)
    ir_sh = o3.Irreps.spherical_harmonics(L_in + L_out)
    ir_out = natural(L_out, C_out) + (pseudo(L_out, C_out) if with_pseudo else o3.Irreps(""))
    tp = o3.FullyConnectedTensorProduct(ir_in, ir_sh, ir_out).to(DT)
    with torch.no_grad():
        tp.weight.normal_()
    conv = SO2Convolution(L_in, C_in, L_out, C_out, bias=False).to(DT)
    mapped = so2_weights_from_tensor_product(tp, tp.weight.detach(), L_in, L_out)
    with torch.no_grad():
        for m, w in enumerate(mapped["w1"]):
            conv.linear.w1[m].copy_(w)
        for m, w in enumerate(mapped["w2"]):
            conv.linear.w2[m].copy_(w)

    vec = torch.randn(E, 3, dtype=DT)
    x = torch.randn(E, ir_in.dim, dtype=DT)
    sh = o3.spherical_harmonics(ir_sh, vec, True, normalization="component")
    ref = tp(x, sh)
    ref_stack = irreps_blocks_to_stack(ref, ir_out)  # [E, K(+K), C_out]
    K = (L_out + 1) ** 2
    ref_so3 = ref_stack[:, :K] + (ref_stack[:, K:] if with_pseudo else 0)  # an SO(2) map ignores parity
    got = conv(irreps_blocks_to_stack(x, ir_in), vec)
    assert (got - ref_so3).abs().max() < 1e-10 * max(1.0, ref_so3.abs().max())
    # round trip of the layout helpers
    assert torch.equal(stack_to_irreps_blocks(irreps_blocks_to_stack(x, ir_in), ir_in), x)


def test_so2_convolution_equivariant_and_m_truncation():
    torch.manual_seed(2)
    L, C = 4, 3
    conv = SO2Convolution(L, C, L, C, m_max=2, radial=True).to(DT)
    E = 5
    vec = torch.randn(E, 3, dtype=DT)
    x = torch.randn(E, (L + 1) ** 2, C, dtype=DT)
    rad = torch.randn(E, conv.radial_dim, dtype=DT)
    R = o3.rand_matrix(dtype=DT)
    D = natural(L, 1).D_from_matrix(R)
    y1 = conv(torch.einsum("ij,ejc->eic", D, x), vec @ R.T, rad)
    y2 = torch.einsum("ij,ejc->eic", D, conv(x, vec, rad))
    assert (y1 - y2).abs().max() < 1e-11
    # truncation: in the edge frame, orders |m| > m_max of the output vanish
    fr = conv.frame_out
    y_edge = fr.to_edge(conv(x, vec, rad), fr.angles(vec))
    high = fr.layout.abs_m > 2
    assert y_edge[:, high].abs().max() < 1e-11
