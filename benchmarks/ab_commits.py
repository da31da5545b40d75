"""Per-generation time of this tree's fastes against another commit's, in one process.

This machine is shared and noisy: two processes run minutes apart can differ by ±20% for the
same code. Here both versions are imported into one process (the other commit from a temporary
``git worktree``, as the package ``fastes_base``) and timed in alternating blocks of generations,
each block restarting from x = 1 with its own key; the figure is the median over blocks of the
ratio this tree / the other commit, with its quartiles.

    python benchmarks/ab_commits.py 662c475 --strategies cma_es,xnes --dim 10 --pop 16
    python benchmarks/ab_commits.py HEAD~3 --strategies sep_cma_es --dim 1000 --pop 32 --gens 50

Single-run strategies only (``Strategy.step`` on the sphere, mode "batched"); the other commit
must have the same public ``fastes.strategies.make`` / ``step`` API.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import statistics
import subprocess
import sys
import tempfile
import time

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")  # as small_dim.py: no spinning BLAS threads

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

import torch  # noqa: E402

import fastes  # noqa: E402


def load_commit(ref: str, where: str):
    """The fastes package of commit ``ref``, checked out under ``where``, as ``fastes_base``."""
    subprocess.run(["git", "-C", ROOT, "worktree", "add", "--detach", where, ref], check=True,
                   capture_output=True)  # fmt: skip
    init = os.path.join(where, "fastes", "__init__.py")
    spec = importlib.util.spec_from_file_location(
        "fastes_base", init, submodule_search_locations=[os.path.dirname(init)]
    )
    module = importlib.util.module_from_spec(spec)
    sys.modules["fastes_base"] = module
    spec.loader.exec_module(module)
    return module


def compare(libs: dict, name: str, dim: int, pop: int, blocks: int, gens: int) -> dict:
    """Median ms per generation of each library and the median per-block ratio new / base."""
    x0 = lambda: {"x": torch.full((dim,), 1.0)}  # noqa: E731
    sphere = lambda p: (p["x"] ** 2).sum(-1)  # noqa: E731
    kw = dict(population_size=pop, minimize=True, mode="batched")
    runs = {tag: (lib, lib.strategies.make(name, x0(), **kw)) for tag, lib in libs.items()}
    times = {tag: [] for tag in runs}
    for b in range(blocks):
        for tag in list(runs) if b % 2 == 0 else list(runs)[::-1]:  # alternate who goes first
            lib, s = runs[tag]
            state, key = s.init(x0()), lib.key(b)
            state, _ = s.step(state, sphere, lib.fold_in(key, 0))  # memos warm again
            t0 = time.perf_counter()
            for g in range(1, gens + 1):
                state, _ = s.step(state, sphere, lib.fold_in(key, g))
            times[tag].append((time.perf_counter() - t0) / gens * 1e3)
    ratios = sorted(a / b for a, b in zip(times["new"], times["base"], strict=True))
    n = len(ratios)
    return {"new_ms": statistics.median(times["new"]), "base_ms": statistics.median(times["base"]),
            "ratio": statistics.median(ratios), "q25": ratios[n // 4],
            "q75": ratios[(3 * n) // 4]}  # fmt: skip


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("ref", help="the commit to compare this tree with")
    ap.add_argument("--strategies", default="cma_es,xnes")
    ap.add_argument("--dim", type=int, default=10)
    ap.add_argument("--pop", type=int, default=16)
    ap.add_argument("--blocks", type=int, default=30)
    ap.add_argument("--gens", type=int, default=100)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        where = os.path.join(tmp, "base")
        try:
            libs = {"new": fastes, "base": load_commit(args.ref, where)}
            for name in args.strategies.split(","):
                r = compare(libs, name, args.dim, args.pop, args.blocks, args.gens)
                print(f"{name} D={args.dim} P={args.pop}: this tree {r['new_ms']:.3f} ms, "
                      f"{args.ref} {r['base_ms']:.3f} ms, ratio {r['ratio']:.3f} "
                      f"(quartiles {r['q25']:.3f}-{r['q75']:.3f})", flush=True)  # fmt: skip
        finally:
            subprocess.run(["git", "-C", ROOT, "worktree", "remove", "--force", where],
                           capture_output=True)  # fmt: skip


if __name__ == "__main__":
    main()
