"""Every registered strategy on sphere, Rastrigin and Rosenbrock at D = 10, 100, 10,000.

Minimizing from x0 = 3 (Rosenbrock: 0) with the hyperparameters below (those of the convergence
tests) for a fixed number of generations; reports the final fitness of the search centre and the
median time per generation. xNES and full CMA-ES (and IPOP on it) keep a D x D matrix and are
not run at D = 10,000 (use SNES / sep-CMA-ES there).

    python benchmarks/strategies.py --out benchmarks/results/strategies_cpu.json
"""

from __future__ import annotations

import argparse
import math
import os
import statistics
import sys
import time

import torch

import fastes
from fastes.strategies import REGISTRY, TEST_FUNCTION_SETTINGS, make

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _common import environment, write_json  # noqa: E402

CFG = TEST_FUNCTION_SETTINGS
FULL_MATRIX = {"xnes", "cma_es", "ipop_cma_es"}
PROBLEMS = {
    "sphere": (lambda x: (x**2).sum(-1), 3.0),
    "rastrigin": (
        lambda x: 10 * x.shape[-1] + (x**2 - 10 * torch.cos(2 * math.pi * x)).sum(-1),
        3.0,
    ),
    "rosenbrock": (
        lambda x: ((1 - x[..., :-1]) ** 2 + 100 * (x[..., 1:] - x[..., :-1] ** 2) ** 2).sum(-1),
        0.0,
    ),
}


def run(name, f, x0, D, gens):
    p0 = {"x": torch.full((D,), x0)}
    s = make(name, p0, minimize=True, mode="batched", **CFG[name])
    st, times = s.init(p0), []
    for g in range(gens):
        t0 = time.perf_counter()
        st, _ = s.step(st, lambda p: f(p["x"].double()), fastes.fold_in(fastes.key(0), g))
        times.append(time.perf_counter() - t0)
    return float(f(s.params(st)["x"].double())), statistics.median(times)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--generations", type=int, default=500)
    ap.add_argument("--dims", type=int, nargs="+", default=[10, 100, 10_000])
    ap.add_argument("--out", default=None)
    a = ap.parse_args(argv)
    assert set(CFG) == set(REGISTRY), "every registered strategy needs a configuration"
    rows = []
    print(f"final fitness after {a.generations} generations (minimizing) | ms per generation")
    for D in a.dims:
        for name in sorted(REGISTRY):
            line = f"D={D:<6d} {name:12s}"
            for pname, (f, x0) in PROBLEMS.items():
                if D > 2000 and name in FULL_MATRIX:
                    rows.append({"D": D, "strategy": name, "problem": pname, "skipped": True})
                    line += f" | {pname} {'n/a':>9s}"
                    continue
                final, sec = run(name, f, x0, D, a.generations)
                rows.append({"D": D, "strategy": name, "problem": pname, "final": final,
                             "ms_per_generation": sec * 1e3})  # fmt: skip
                line += f" | {pname} {final:9.3g} {sec * 1e3:6.2f}ms"
            print(line, flush=True)
    if a.out:
        res = {"env": environment(), "generations": a.generations, "config": CFG, "rows": rows}
        write_json(a.out, res)


if __name__ == "__main__":
    main()
