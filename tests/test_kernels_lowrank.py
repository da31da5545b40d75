"""The low-rank population linear kernel (kernels/lowrank.py) against the reference.

Without a GPU it runs in the Triton interpreter (TRITON_INTERPRET=1 from conftest.py), at small
odd shapes; with one, on CUDA.
"""

import importlib.util

import pytest
import torch

import fastes
from fastes.lowrank import LowRankNoise, leaf_layout
from fastes.noise import PhiloxNoise
from fastes.tree import raveler

pytestmark = pytest.mark.skipif(
    importlib.util.find_spec("triton") is None, reason="triton is not installed"
)
DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
NORMAL_RTOL = 2**-20  # device normals vs the reference's (see tests/test_kernels.py)


def _case(P, S, n, m, r, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(P, S, n, generator=g)
    W = torch.randn(m, n, generator=g) / n**0.5
    b = torch.randn(P, m, generator=g)
    layer = torch.nn.Linear(n, m)
    p = {"weight": W, "bias": b[0]}
    noise = LowRankNoise(leaf_layout(p, raveler(p), layer), r, PhiloxNoise())
    rows = torch.tensor([0, 3, 2**32 + 7][:P])  # one past 2^32: counter word 3
    leaf_key = fastes.split(fastes.key(5), 2)[0]
    A, B = noise.draw(fastes.key(5), rows)[0]  # (P, m, r), (P, n, r)
    scale = torch.tensor([0.3, -0.3, 0.1][:P])
    return x, W, b, A, B, leaf_key, rows, scale


def _reference(x, W, b, A, B, scale):
    x, W, A, B = x.double(), W.double(), A.double(), B.double()
    out = x @ W.T + scale.double()[:, None, None] * ((x @ B) @ A.transpose(1, 2))
    bound = x.abs() @ W.abs().T + scale.double().abs()[:, None, None] * (
        (x.abs() @ B.abs()) @ A.abs().transpose(1, 2)
    )
    if b is not None:
        b = b.double()
        out = out + (b[:, None, :] if b.dim() == 2 else b)
        bound = bound + (b.abs()[:, None, :] if b.dim() == 2 else b.abs())
    return out, bound


CASES = [  # (P, S, n, m, r, bias): odd shapes, tiles spanning members, S = 1, D = 1
    (3, 5, 37, 19, 1, "member"),
    (2, 17, 16, 33, 3, "shared"),
    (3, 1, 20, 9, 1, "member"),
    (1, 1, 1, 1, 2, None),
]


@pytest.mark.parametrize("generate", [False, True])
@pytest.mark.parametrize("P,S,n,m,r,bias", CASES)
def test_lowrank_linear_matches_the_reference(generate, P, S, n, m, r, bias):
    from fastes.kernels import lowrank

    x, W, b, A, B, leaf_key, rows, scale = _case(P, S, n, m, r)
    b = {"member": b, "shared": b[0], None: None}[bias]
    on = lambda t: None if t is None else t.to(DEVICE)  # noqa: E731
    blocks = dict(block_q=16, block_m=16, block_k=16)
    if generate:
        factors = dict(key=on(leaf_key), rows=on(rows), rank=r)
    else:
        factors = dict(A=on(A), B=on(B))
    got = lowrank.lowrank_linear(on(x), on(W), on(b), on(scale), **factors, **blocks)
    want, terms = _reference(x, W, b, A, B, scale)
    # fp32 accumulation over n + r terms (2^-24 each, summed at worst), plus the device normals'
    # relative error when the factors are regenerated (each term holds one A and one B normal).
    bound = ((n + r + 2) * 2**-24 + (2 * NORMAL_RTOL if generate else 0)) * terms
    assert got.shape == (P, S, m) and got.dtype == torch.float32
    assert torch.all((got.cpu().double() - want).abs() <= bound + 1e-12)


def test_lowrank_linear_rejects_bad_shapes():
    from fastes.kernels import lowrank

    x, W, b, A, B, *_ = _case(2, 3, 8, 5, 2)
    scale = torch.ones(2)
    with pytest.raises(ValueError, match=r"x must be \(P, S, n\)"):
        lowrank.lowrank_linear(x[0], W, None, scale, A=A, B=B)
    with pytest.raises(ValueError, match="A must be"):
        lowrank.lowrank_linear(x, W, None, scale, A=A[:, :3], B=B)
    with pytest.raises(ValueError, match="give the factors"):
        lowrank.lowrank_linear(x, W, None, scale)
    with pytest.raises(ValueError, match=r"scale must have shape \(2,\)"):
        lowrank.lowrank_linear(x, W, None, torch.ones(3), A=A, B=B)


def test_gpu_microbenchmark_script_runs_in_smoke_mode(smoke_run):
    # The code path only, not its figures.
    assert "triton regenerated ratio" in smoke_run("lowrank_gpu.py")


@pytest.mark.gpu
def test_population_on_cuda_equals_cpu():
    from fastes.nn import TinyTransformer

    torch.manual_seed(0)
    net = TinyTransformer(vocab=11, d_model=32, n_heads=4, n_layers=2, max_len=8)
    p = {k: v.detach() for k, v in net.named_parameters()}
    tokens = torch.randint(0, 11, (3, 8), generator=torch.Generator().manual_seed(1))
    outs = []
    for device in ("cpu", "cuda"):
        net_d = net.to(device)
        pd = {k: v.to(device) for k, v in p.items()}
        s = fastes.strategies.make("eggroll", pd, module=net_d, rank=2, sigma=0.1,
                                   population_size=8, noise="philox")  # fmt: skip
        outs.append(s.ask_population(s.init(pd), fastes.key(3, device=device))(tokens.to(device)))
    # the same Philox factors (normals within 2^-20 relative) through float32 layers
    torch.testing.assert_close(outs[1].cpu(), outs[0], rtol=1e-4, atol=1e-4)


def test_population_forward_through_the_kernel_equals_the_reference(monkeypatch):
    # The opt-in dispatch (FASTES_LOWRANK_KERNEL=1 on CUDA) forced here — onto CPU tensors, which
    # the Triton interpreter runs, where there is no GPU: a population's linear layer goes through
    # kernels/lowrank.py with the drawn factors (σ/√r and the sign folded into A).
    from fastes.kernels import lowrank

    from fastes import _dispatch, population

    monkeypatch.setattr(_dispatch, "lowrank_kernel", lambda device: lowrank)
    monkeypatch.setattr(population, "_SMALL_OUTPUT", 0)  # the batching rule even when tiny
    torch.manual_seed(0)
    net = torch.nn.Linear(37, 19).to(DEVICE)
    p = {k: v.detach() for k, v in net.named_parameters()}
    P, S = 4, 3
    s = fastes.strategies.make("eggroll", p, module=net, rank=2, sigma=0.1, population_size=P)
    pop = s.ask_population(s.init(p), fastes.key(2, device=DEVICE))
    x = torch.randn(P, S, 37, generator=torch.Generator().manual_seed(1)).to(DEVICE)
    got = pop(x, in_dims=0)
    A, B = pop._factors[""]  # the module itself is the low-rank layer: name ""
    b = pop._full["bias"]  # (P, 19): full-rank noise on the bias
    want, terms = _reference(x, p["weight"], b, A, B, torch.ones(P, device=DEVICE))
    bound = (37 + 2 + 2) * 2**-24 * terms  # fp32 accumulation over n + r terms and the bias
    assert got.shape == (P, S, 19)
    assert torch.all((got.double() - want).abs() <= bound + 1e-12)
