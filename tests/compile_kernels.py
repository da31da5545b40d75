"""Compile every Triton kernel with the real compiler for CUDA targets, on a machine without a GPU.

The CPU tests run the kernels in Triton's interpreter, which executes the Python body with numpy
and accepts code the compiler rejects (the first run on a real GPU failed on a module-level float
that was not a ``tl.constexpr``). Here each launcher is called with CPU tensors as a user's call
would make it, but ``JITFunction.run`` is replaced by a compile of that launch — the argument
types and constexprs the launch would have used — to PTX and a cubin for each target (ptxas ships
with triton). Nothing runs. Prints one line per compiled variant; exits 1 on the first failure.

    python tests/compile_kernels.py          # one of each kind (TRITON_INTERPRET must be unset)
    python tests/compile_kernels.py --all    # every dtype × rank × bias × factor-source variant

Run by tests/test_kernels.py in a fresh process (the test process has the interpreter on).
"""

from __future__ import annotations

import os
import sys
import time

if os.environ.get("TRITON_INTERPRET", "0") not in ("", "0"):
    raise SystemExit("unset TRITON_INTERPRET: the interpreter replaces the compiler")

import torch  # noqa: E402
import triton  # noqa: E402
from triton.backends.compiler import GPUTarget  # noqa: E402
from triton.compiler import ASTSource  # noqa: E402
from triton.runtime.jit import JITFunction  # noqa: E402

TARGETS = [GPUTarget("cuda", 90, 32)]  # Hopper (the H100 / H200 the benchmarks ran on)
_PTR = {
    torch.float32: "*fp32", torch.float16: "*fp16", torch.bfloat16: "*bf16",
    torch.int64: "*i64", torch.int32: "*i32",
}  # fmt: skip
compiled: list[str] = []


def _arg_type(name, value):
    if isinstance(value, torch.Tensor):
        return _PTR[value.dtype]
    if isinstance(value, bool):
        return "i1"
    if isinstance(value, int):
        return "i32" if -(2**31) <= value < 2**31 else "i64"
    if isinstance(value, float):
        return "fp32"
    raise TypeError(f"argument {name}: no Triton type for {type(value).__name__}")


def _compile_instead(self, *args, grid, warmup, **kwargs):
    params = self.params
    names = [p.name for p in params]
    bound = dict(zip(names, args))
    bound.update(kwargs)
    missing = [n for n in names if n not in bound]
    if missing:
        raise TypeError(f"{self.fn.__name__}: launch leaves {missing} unset")
    # Triton turns an int argument equal to 1 into a constant unless told not to specialize it
    # (a kernel calling ``.to`` on such an argument compiles for 2 and fails for 1).
    keep = set(getattr(self, "do_not_specialize", ()) or ())
    const = {
        p.name
        for i, p in enumerate(params)
        if p.is_constexpr
        or (type(bound[p.name]) is int and bound[p.name] == 1 and not {i, p.name} & keep)
    }
    constexprs = {n: bound[n] for n in names if n in const}
    signature = {n: "constexpr" if n in const else _arg_type(n, bound[n]) for n in names}
    variant = ", ".join(f"{k}={v}" for k, v in constexprs.items())
    for target in TARGETS:
        t0 = time.perf_counter()
        kernel = triton.compile(ASTSource(self, signature, constexprs), target=target)
        assert "cubin" in kernel.asm, f"{self.fn.__name__}: no cubin for {target}"
        line = f"sm_{target.arch} {self.fn.__name__}({variant}): {time.perf_counter() - t0:.1f}s"
        compiled.append(line)
        print(line, flush=True)


def main(full: bool) -> None:
    JITFunction.run = _compile_instead
    from fastes.kernels import lowrank, noise, offsets, perturb, reduce

    g = torch.Generator().manual_seed(0)
    key, rows = torch.tensor([1, 2]), torch.arange(3)
    noise.philox_normal_rows(key, rows, 100)
    noise.philox_uint32_rows(key, rows, 100)
    offsets.table_offsets(key, rows, 2**26)
    reduce.philox_weighted_sum(key, rows, torch.randn(3, generator=g), 100)
    for antithetic in (True, False):
        perturb.philox_perturb(key, rows, torch.zeros(100), 0.1, antithetic)
    P, S, N, M = 4, 3, 37, 19
    one = torch.ones(1, 1, 1)  # P = S = n = m = 1: every size argument a specialized constant
    lowrank.lowrank_linear(one, one[0], None, one[0, 0], A=one, B=one)
    lowrank.lowrank_linear(one, one[0], None, one[0, 0], key=key, rows=rows[:1], rank=1)
    # (dtype, rank, bias, regenerated): every branch of the kernel at least once; --all takes
    # the product (regenerating rank-3 factors takes about a minute per target to compile).
    if full:
        cases = [(dt, r, b, gen) for dt in (torch.float32, torch.bfloat16) for r in (1, 3)
                 for b in (None, "shared", "member") for gen in (False, True)]  # fmt: skip
    else:
        cases = [(torch.float32, 1, "member", False), (torch.bfloat16, 3, "shared", False),
                 (torch.float32, 1, None, True)]  # fmt: skip
    for dtype, r, bias, generate in cases:
        x, W = torch.randn(P, S, N).to(dtype), torch.randn(M, N).to(dtype)
        b = {None: None, "shared": torch.zeros(M), "member": torch.zeros(P, M)}[bias]
        b = None if b is None else b.to(dtype)
        scale, ieee = torch.full((P,), 0.1), dtype == torch.float32
        if generate:
            lowrank.lowrank_linear(x, W, b, scale, key=key, rows=torch.arange(P), rank=r,
                                   ieee=ieee)  # fmt: skip
        else:
            A, B = torch.randn(P, M, r).to(dtype), torch.randn(P, N, r).to(dtype)
            lowrank.lowrank_linear(x, W, b, scale, A=A, B=B, ieee=ieee)
    print(f"{len(compiled)} kernel variants compiled", flush=True)


if __name__ == "__main__":
    try:
        main(full="--all" in sys.argv[1:])
    except Exception as e:  # noqa: BLE001 — report the compiler's message, exit 1
        print(f"FAILED: {type(e).__name__}: {e}", file=sys.stderr)
        sys.exit(1)
