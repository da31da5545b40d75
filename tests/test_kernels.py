"""Triton kernels vs their PyTorch references (DESIGN §5-6).

Without a GPU the kernels run on CPU tensors in the Triton interpreter (TRITON_INTERPRET=1, set
in conftest.py before triton is imported), at small sizes; with one they run for real on CUDA.
Tolerances (derived once here):

* uint32 words and uniforms are integer-exact: compared bit for bit.
* A normal n = √(−2 ln u)·cos v is built from bit-identical u, v (the kernel multiplies by the
  same float32 constant) by log, sqrt, cos/sin and one multiply on each side. Measured worst cases
  against float64 on this machine: torch (SLEEF) log 0.86 ulp, cos/sin 0.60; numpy (the
  interpreter's math) log 3.56, cos/sin 1.40; libdevice documents logf 1, cosf/sinf 2, sqrt 0.5.
  Worst side: log 4 → √ halves it to 2, + 0.5 (sqrt) + 2 (cos) + 0.5 (multiply) = 5 ulp; other
  side ≤ 1.5; so |Δn| ≤ 6.5·2^-23·|n| < 2^-20·|n| (NORMAL_RTOL). Observed here: 2.6·2^-23.
* A float32 sum of R terms adds ≤ R·2^-24·Σ|terms| of rounding on top of the per-term error.
"""

import importlib.util
import os

import pytest
import torch

import fastes
from fastes import noise as ref

pytestmark = pytest.mark.skipif(
    importlib.util.find_spec("triton") is None, reason="triton is not installed"
)

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
NORMAL_RTOL = 2**-20
SIZES = [(1, 1), (3, 7), (5, 64), (4, 129), (7, 300)]  # (rows, D): D=1, odd, = / ≠ block multiples


def kernels():
    if DEVICE == "cpu":
        assert os.environ.get("TRITON_INTERPRET") == "1", "conftest must enable the interpreter"
    from fastes.kernels import noise, perturb, reduce

    return noise, reduce, perturb


def _rows(n):
    # Odd row indices, including one past 2^32 (counter word 3) when there is room.
    r = torch.arange(n, dtype=torch.int64) * 3 + 1
    if n > 2:
        r[-1] = 2**32 + 5
    return r.to(DEVICE)


@pytest.mark.parametrize("R,D", SIZES)
def test_uint32_stream_is_bit_identical(R, D):
    noise, _, _ = kernels()
    k, rows = fastes.key(2**40 + 17, device=DEVICE), _rows(R)
    got = noise.philox_uint32_rows(k, rows, D, block=64)
    assert torch.equal(got.cpu(), ref.philox_uint32_rows(k.cpu(), rows.cpu(), D))


@pytest.mark.parametrize("R,D", SIZES)
def test_normals_match_the_reference(R, D):
    noise, _, _ = kernels()
    k, rows = fastes.key(9, device=DEVICE), _rows(R)
    got = noise.philox_normal_rows(k, rows, D, block=64).cpu()
    want = ref.philox_normal_rows(k.cpu(), rows.cpu(), D)
    assert got.shape == want.shape and got.dtype == torch.float32
    assert torch.all((got - want).abs() <= NORMAL_RTOL * want.abs() + 1e-30)


@pytest.mark.parametrize("R,D", SIZES)
@pytest.mark.parametrize("split", [1, 1000])
def test_fused_reduction_matches_the_reference(R, D, split):
    _, reduce, _ = kernels()
    k, rows = fastes.key(4, device=DEVICE), _rows(R)
    w = torch.linspace(-1.0, 2.0, R, device=DEVICE)
    # min_programs=1000 forces several row-slices per tile (the partial-sum path).
    got = reduce.philox_weighted_sum(k, rows, w, D, block=64, min_programs=split).cpu()
    eps = ref.philox_normal_rows(k.cpu(), rows.cpu(), D).double()
    want = w.cpu().double() @ eps
    terms = w.cpu().double().abs() @ eps.abs()
    bound = (R * 2**-24 + NORMAL_RTOL) * terms
    assert torch.all((got.double() - want).abs() <= bound + 1e-30)


@pytest.mark.parametrize("antithetic", [True, False])
@pytest.mark.parametrize("R,D", SIZES[1:])
def test_perturb_matches_the_reference(R, D, antithetic):
    _, _, perturb = kernels()
    k, rows = fastes.key(6, device=DEVICE), _rows(R)
    theta = torch.linspace(-2.0, 2.0, D, device=DEVICE)
    got = perturb.philox_perturb(k, rows, theta, 0.25, antithetic, block=64).cpu()
    want, eps = ref.philox_perturb(k.cpu(), rows.cpu(), theta.cpu(), 0.25, antithetic)
    # σ·Δε from the normals plus one rounding of θ ± σε each way.
    e = eps.repeat_interleave(2, 0) if antithetic else eps
    bound = 0.25 * NORMAL_RTOL * e.abs() + 2**-23 * (theta.cpu().abs() + 0.25 * e.abs())
    assert got.shape == want.shape
    assert torch.all((got - want).abs() <= bound)


def test_launchers_reject_bad_inputs():
    noise, reduce, perturb = kernels()
    k = fastes.key(0, device=DEVICE)
    with pytest.raises(TypeError, match="rows must be a 1-D int64 tensor"):
        noise.philox_normal_rows(k, torch.ones(2, device=DEVICE), 4)
    with pytest.raises(ValueError, match=r"weights must have shape \(2,\)"):
        reduce.philox_weighted_sum(
            k, torch.arange(2, device=DEVICE), torch.ones(3, device=DEVICE), 4
        )
    with pytest.raises(TypeError, match="theta must be a contiguous 1-D float32 tensor"):
        perturb.philox_perturb(
            k,
            torch.arange(2, device=DEVICE),
            torch.ones(4, dtype=torch.float64, device=DEVICE),
            0.1,
            True,
        )


def test_custom_ops_cpu_kernel_is_the_reference_and_compiles_without_recompiling(compile_counter):
    import torch._dynamo
    from fastes.kernels import ops  # noqa: F401  (registers torch.ops.fastes.*)

    k, rows = fastes.key(3), torch.arange(5)
    assert torch.equal(
        torch.ops.fastes.philox_normal_rows(k, rows, 11), ref.philox_normal_rows(k, rows, 11)
    )
    w = torch.randn(5)
    assert torch.equal(
        torch.ops.fastes.philox_weighted_sum(k, rows, w, 11),
        ref.philox_weighted_sum(k, rows, w, 11),
    )
    theta = torch.zeros(11)
    assert torch.equal(
        torch.ops.fastes.philox_perturb(k, rows, theta, 0.1, True),
        ref.philox_perturb(k, rows, theta, 0.1, True)[0],
    )

    backend, graphs = compile_counter

    @torch.compile(backend=backend, fullgraph=True)
    def grad(key, w):
        return torch.ops.fastes.philox_weighted_sum(key, rows, w, 11)

    for i in range(3):
        ki = fastes.fold_in(k, i)
        assert torch.equal(grad(ki, w), ref.philox_weighted_sum(ki, rows, w, 11))
    assert len(graphs) == 1


def test_dispatch_picks_reference_off_cuda_and_when_forced(monkeypatch):
    from fastes import _dispatch

    assert _dispatch.kernel_ops(torch.device("cpu")) is None
    monkeypatch.setenv("FASTES_FORCE_REFERENCE", "1")
    assert _dispatch.kernel_ops(torch.device("cuda")) is None
    monkeypatch.setenv("FASTES_FORCE_REFERENCE", "0")
    assert not _dispatch.force_reference()


def test_gpu_benchmark_script_runs_end_to_end_in_smoke_mode(smoke_run):
    # Checks the script's code path, not its figures.
    out = smoke_run("bench_kernels.py")
    assert "reduce P=" in out and "es_step sphere" in out


def test_every_kernel_compiles_for_hopper_with_the_real_compiler(tmp_path):
    # The interpreter accepts code the compiler rejects (the first run on an H100 failed on a
    # module-level float that was no tl.constexpr, and on an int argument of 1, which Triton
    # specializes to a constant): tests/compile_kernels.py compiles each launcher's kernels for
    # sm_90 — PTX and cubin, with the ptxas that ships with triton — in a fresh process without
    # the interpreter and with an empty kernel cache. Nothing runs; no GPU is needed.
    import pathlib
    import subprocess
    import sys

    script = pathlib.Path(__file__).with_name("compile_kernels.py")
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["TRITON_CACHE_DIR"] = str(tmp_path)
    out = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, env=env,
                         timeout=600)  # fmt: skip
    assert out.returncode == 0, out.stderr[-3000:]
    assert "11 kernel variants compiled" in out.stdout, out.stdout


@pytest.mark.parametrize("span", [1, 7, 2**20 + 3, 2**26 - 999, 2**61 + 5])
def test_table_offsets_kernel_is_bit_identical_to_the_reference(span):
    # Integer-exact: the same Philox words, the same 62 bits, the same modulo.
    from fastes.kernels import offsets

    rows = torch.tensor([0, 1, 2, 5, 1000, 2**31, 2**32 + 7, 2**40 + 1], device=DEVICE)
    for seed in (0, 3):
        k = fastes.key(seed, device=DEVICE)
        got = offsets.table_offsets(k, rows, span)
        want = ref.table_offsets(k.cpu(), rows.cpu(), 1, span)
        assert torch.equal(got.cpu(), want)
        assert got.min() >= 0 and got.max() < span
    assert offsets.table_offsets(k, rows[:0], span).shape == (0,)
