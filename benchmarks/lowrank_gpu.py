"""EGGROLL's layer microbenchmark on a GPU: one m×n layer, P members with one input each.

    python benchmarks/lowrank_gpu.py --out benchmarks/results/lowrank_gpu.json
    TRITON_INTERPRET=1 python benchmarks/lowrank_gpu.py --smoke   # CPU, tiny: code path only

The paper (Sarkar et al. 2025, arXiv 2511.16652) reports 91% of plain batched inference for one
8192×8192 bf16 layer, batch 1024 (each row its own member), rank 1. Measured here, in one run:

* ``x @ W.T`` — plain inference, the baseline;
* ``torch population`` — fastes.population's PyTorch path (GEMM + baddbmm), factors given;
* ``triton given`` — kernels/lowrank.py with the factors read from memory (pre-generated);
* ``triton regenerated`` — the same kernel regenerating A_i, B_i from (key, member) in registers;

and one whole eggroll generation (SGD) of a 4 × 4096 MLP, P ∈ {64, 256, 1024}, 8 inputs per
member, against plain inference, with the population's layers on the PyTorch path and on the
kernel (``FASTES_LOWRANK_KERNEL=0`` / ``1``): the figures that decide whether the kernel becomes
the default on CUDA.

Times are CUDA-event medians of ``--repeats`` runs after warm-up; ratio = baseline / time.
"""

from __future__ import annotations

import argparse
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from _common import (  # noqa: E402
    atomic_write,
    cuda_profile,
    environment,
    graph_timer,
    timer,
    write_json,
)

import fastes  # noqa: E402
from fastes.population import lowrank_linear  # noqa: E402


def run(m: int, n: int, P: int, rank: int, dtype, device: str, repeats: int) -> dict:
    from fastes.kernels import lowrank as kl

    g = torch.Generator(device=device).manual_seed(0)
    x = torch.randn(P, 1, n, device=device, generator=g).to(dtype)
    W = (torch.randn(m, n, device=device, generator=g) / n**0.5).to(dtype)
    A = torch.randn(P, m, rank, device=device, generator=g).to(dtype)
    B = torch.randn(P, n, rank, device=device, generator=g).to(dtype)
    scale = torch.full((P,), 0.01 / rank**0.5, device=device)
    key, rows = fastes.key(1, device=device), torch.arange(P, device=device)
    x2 = x.reshape(P, n)
    As = A * scale.to(dtype)[:, None, None]
    ieee = dtype == torch.float32 and device == "cuda"
    cases = {
        "x @ W.T": lambda: x2 @ W.T,
        "torch population": lambda: torch.vmap(lowrank_linear, in_dims=(0, None, None, 0, 0))(
            x, W, None, As, B
        ),
        "triton given": lambda: kl.lowrank_linear(x, W, None, scale, A=A, B=B, ieee=ieee),
        "triton regenerated": lambda: kl.lowrank_linear(
            x, W, None, scale, key=key, rows=rows, rank=rank, ieee=ieee
        ),
    }
    times = {name: timer(device, fn, repeats) for name, fn in cases.items()}
    base = times["x @ W.T"]
    row = {"m": m, "n": n, "P": P, "rank": rank, "dtype": str(dtype).replace("torch.", "")}
    for name, t in times.items():
        row[f"{name} s"] = t
        row[f"{name} ratio"] = base / t
    if device == "cuda":  # the same calls replayed from a CUDA graph: the GPU's time alone
        graphed = {}
        for name, fn in cases.items():
            try:
                graphed[name] = graph_timer(fn, repeats)
            except Exception as e:  # noqa: BLE001 — record why a case cannot be captured
                row[f"{name} graph error"] = f"{type(e).__name__}: {e}"[:200]
        for name, t in graphed.items():
            row[f"{name} graph s"] = t
            if "x @ W.T" in graphed:
                row[f"{name} graph ratio"] = graphed["x @ W.T"] / t
    _print(row)
    return row


def _mlp_generation(width: int, P: int, B: int, rank: int, device: str):
    """(plain inference, one eggroll SGD generation) of a 4-layer MLP on P·B inputs."""
    torch.manual_seed(0)
    layers: list[torch.nn.Module] = []
    for i in range(4):
        layers += [torch.nn.Linear(width, width)] + ([torch.nn.ReLU()] if i < 3 else [])
    net = torch.nn.Sequential(*layers).to(device).eval()
    p = {k: v.detach() for k, v in net.named_parameters()}
    x = torch.randn(P, B, width, device=device)

    def plain():
        with torch.no_grad():
            return net(x.reshape(P * B, width))

    s = fastes.strategies.make("eggroll", p, module=net, rank=rank, sigma=0.01,
                               population_size=P, optimizer=fastes.optim.sgd(1e-3))  # fmt: skip
    state, key = s.init(p), fastes.key(1, device=device)

    def fitness(pop):
        return pop(x, in_dims=0).float().flatten(1).mean(1)

    return plain, lambda: s.step(state, fitness, key)


def generation(width: int, P: int, B: int, rank: int, device: str, repeats: int) -> dict:
    """One whole eggroll generation (SGD) on a 4-layer MLP against plain inference of the same
    P·B inputs, with the population's linear layers on the PyTorch path and on the Triton kernel
    (``FASTES_LOWRANK_KERNEL=0`` / ``1``; the kernel only runs on CUDA)."""
    plain, step = _mlp_generation(width, P, B, rank, device)
    times = {"plain": timer(device, plain, repeats)}
    before = os.environ.get("FASTES_LOWRANK_KERNEL")
    try:
        for flag in ("0", "1"):
            os.environ["FASTES_LOWRANK_KERNEL"] = flag
            times[f"eggroll kernel={flag}"] = timer(device, step, repeats)
    finally:
        if before is None:
            os.environ.pop("FASTES_LOWRANK_KERNEL", None)
        else:
            os.environ["FASTES_LOWRANK_KERNEL"] = before
    row = {"model": f"mlp 4x{width}", "P": P, "B": B, "rank": rank}
    for name, t in times.items():
        row[f"{name} s"] = t
        row[f"{name} ratio"] = times["plain"] / t
    _print(row)
    return row


def profile(width: int, P: int, B: int, path: str) -> None:
    """A profile (``_common.cuda_profile``) of eggroll generations: where a generation's time
    goes beyond the population's forward."""
    _, step = _mlp_generation(width, P, B, 1, "cuda")
    text = cuda_profile(step, f"eggroll generation, MLP 4x{width}, P = {P}, B = {B}, r = 1")
    atomic_write(path, lambda fh: fh.write(text), mode="w")
    print(f"profile written to {path}")


def _print(row: dict) -> None:
    print(
        " | ".join(f"{k} {v:.3g}" if isinstance(v, float) else f"{k} {v}" for k, v in row.items())
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--smoke", action="store_true", help="tiny sizes, any device (CI check)")
    ap.add_argument("--repeats", type=int, default=20)
    ap.add_argument("--out", default=None)
    ap.add_argument("--profile", default=None, metavar="DIR",
                    help="also write a profile of one generation (P = 1024) to DIR")  # fmt: skip
    a = ap.parse_args()
    if a.smoke:
        device = "cuda" if torch.cuda.is_available() else "cpu"
        rows = [run(16, 16, 8, 1, torch.float32, device, 2)]
        generations = [generation(16, 8, 2, 1, device, 2)]
    else:
        if not torch.cuda.is_available():
            raise SystemExit("lowrank_gpu.py needs a CUDA GPU (or --smoke for a code-path check)")
        rows = [
            run(8192, 8192, 1024, 1, torch.bfloat16, "cuda", a.repeats),
            run(8192, 8192, 1024, 4, torch.bfloat16, "cuda", a.repeats),
            run(4096, 4096, 1024, 1, torch.float32, "cuda", a.repeats),
        ]
        generations = [generation(4096, P, 8, 1, "cuda", a.repeats) for P in (64, 256, 1024)]
        if a.profile:
            profile(4096, 1024, 8, os.path.join(a.profile, "profile_eggroll_P1024.txt"))
    if a.out:
        write_json(a.out, {"environment": environment("cuda" if not a.smoke else "cpu"),
                           "rows": rows, "generations": generations})  # fmt: skip


if __name__ == "__main__":
    main()
