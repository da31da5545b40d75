"""Real Triton kernels on CUDA against the reference at sizes the interpreter cannot reach.

Skipped without a GPU (see conftest.py). Tolerances as derived in tests/test_kernels.py.
"""

import pytest
import torch

import fastes
from fastes import noise as ref

pytestmark = pytest.mark.gpu
NORMAL_RTOL = 2**-20


def test_large_noise_fill_matches_reference_and_is_bit_identical_in_uint32():
    from fastes.kernels import noise

    k, rows = fastes.key(1, device="cuda"), torch.tensor([0, 7, 2**33 + 1], device="cuda")
    D = 1_000_003
    assert torch.equal(
        noise.philox_uint32_rows(k, rows, D).cpu(), ref.philox_uint32_rows(k.cpu(), rows.cpu(), D)
    )
    got = noise.philox_normal_rows(k, rows, D)
    want = ref.philox_normal_rows(k, rows, D)  # the reference, run on the GPU by PyTorch
    assert torch.all((got - want).abs() <= NORMAL_RTOL * want.abs() + 1e-30)


def test_fused_reduction_when_rows_times_d_exceeds_2_pow_32():
    # R·D = 1024 · 4,194,319 > 2^32 elements: the reduction never stores them.
    from fastes.kernels import reduce

    R, D = 1024, 2**22 + 15
    k, rows = fastes.key(2, device="cuda"), torch.arange(R, device="cuda")
    w = torch.randn(R, device="cuda", generator=torch.Generator("cuda").manual_seed(0))
    got = reduce.philox_weighted_sum(k, rows, w, D).double()
    want = torch.zeros(D, dtype=torch.float64, device="cuda")
    terms = torch.zeros(D, dtype=torch.float64, device="cuda")
    for s in range(0, R, 64):
        eps = ref.philox_normal_rows(k, rows[s : s + 64], D).double()
        want += w[s : s + 64].double() @ eps
        terms += w[s : s + 64].double().abs() @ eps.abs()
    assert torch.all((got - want).abs() <= (R * 2**-24 + NORMAL_RTOL) * terms)


def test_es_step_on_cuda_agrees_with_the_forced_reference(monkeypatch):
    params = {"w": torch.randn(300, 7, device="cuda"), "b": torch.zeros(5, device="cuda")}
    f = lambda p: -sum((x**2).sum() for x in p.values())
    kw = dict(population_size=64, sigma=0.05, noise="philox")
    g_k, s_k = fastes.estimate_grad(params, f, fastes.key(0), **kw)
    monkeypatch.setenv("FASTES_FORCE_REFERENCE", "1")
    g_r, s_r = fastes.estimate_grad(params, f, fastes.key(0), **kw)
    # Members differ by ≤ NORMAL_RTOL·σ|ε| (relative ~1e-7 of the fitness spread here), so the
    # ranks, hence the weights, are identical; the estimates then differ only by the reduction.
    assert torch.equal(s_k.weights, s_r.weights)
    w = (s_k.weights[0::2] - s_k.weights[1::2]).abs().double()
    eps = ref.philox_normal_rows(
        fastes.key(0, device="cuda"), torch.arange(32, device="cuda"), 2105
    )
    bound = (32 * 2**-24 + NORMAL_RTOL) * (w @ eps.abs().double()) / (64 * 0.05)
    flat = lambda g: torch.cat([g["w"].flatten(), g["b"]]).double()
    assert torch.all((flat(g_k) - flat(g_r)).abs() <= bound)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_half_precision_params_on_cuda_run_the_kernels(monkeypatch, dtype):
    from fastes.kernels import ops

    calls = []
    real = ops.philox_weighted_sum
    monkeypatch.setattr(ops, "philox_weighted_sum", lambda *a: calls.append(1) or real(*a))
    params = {"w": torch.randn(300, 7, device="cuda").to(dtype)}
    new = fastes.es_step(
        params,
        lambda p: -(p["w"].float() ** 2).sum(),
        fastes.key(0),
        population_size=64,
        sigma=0.05,
        learning_rate=0.1,
        noise="philox",
    )
    assert calls, "the fused reduction kernel did not run"
    assert new["w"].dtype == dtype and new["w"].device.type == "cuda"
    assert torch.isfinite(new["w"].float()).all()


@pytest.mark.gpu
def test_es_step_compiles_fullgraph_on_cuda_without_recompiling(compile_counter):
    # The kernels are torch.library custom ops, so Dynamo keeps them as single graph nodes; the
    # rest of es_step is sync-free. One graph for three keys (counting backend), and Inductor
    # compiles it too and agrees with eager within the reduction's float32 rounding.
    backend, graphs = compile_counter
    params = {"w": torch.randn(1000, 100, device="cuda")}
    fit = lambda p: -(p["w"] ** 2).sum()
    # noise="philox": the kernels (noise="auto" at this D reads the table, which must be made
    # before compiling; es_step says so)
    kw = dict(population_size=64, sigma=0.05, learning_rate=0.01, noise="philox")
    step = torch.compile(lambda p, k: fastes.es_step(p, fit, k, **kw), backend=backend,
                         fullgraph=True)  # fmt: skip
    p = params
    for t in range(3):
        p = step(p, fastes.key(t, device="cuda"))
    assert len(graphs) == 1
    inductor = torch.compile(lambda p, k: fastes.es_step(p, fit, k, **kw), fullgraph=True)
    out = inductor(params, fastes.key(0, device="cuda"))
    ref = fastes.es_step(params, fit, fastes.key(0, device="cuda"), **kw)
    # |Δ| ≤ lr/(Pσ)·(P/2)·2^-23·max|w ε| summed in a different order: ~ 0.01/3.2·32·1.2e-7·6.
    torch.testing.assert_close(out["w"], ref["w"], rtol=0, atol=1e-6)


def test_auto_noise_gives_the_same_rows_on_cuda_as_on_the_cpu():
    # DESIGN §3: "auto" depends on D only; at D <= table / 4 both devices read the same table
    # (made on the CPU, copied) at the same key-derived offsets, so the rows are bit-identical;
    # the weighted sum is a float reduction, equal within its rounding (derived as above).
    from fastes.es import resolve_noise

    for D in (1_000, 100_003):
        cpu, gpu = (
            resolve_noise("auto", D, torch.device("cpu")),
            resolve_noise("auto", D, torch.device("cuda")),
        )
        assert type(cpu) is type(gpu) is ref.TableNoise
        k, rows = fastes.key(5), torch.arange(40)
        assert torch.equal(cpu.rows(k, rows, D), gpu.rows(k.cuda(), rows.cuda(), D).cpu())
        w = torch.randn(40, generator=torch.Generator().manual_seed(D))
        got = gpu.weighted_sum(k.cuda(), rows.cuda(), w.cuda(), D).cpu().double()
        want = cpu.weighted_sum(k, rows, w, D).double()
        terms = w.double().abs() @ cpu.rows(k, rows, D).double().abs()
        assert torch.all((got - want).abs() <= 2 * 40 * 2**-24 * terms)
