"""fastes' CMA-ES vs the reference ``cma`` package (pycma): evaluations to reach f < 1e-8.

Sphere, ellipsoid (condition 1e6) and Rosenbrock at D = 10, x0 = 3 (Rosenbrock: 0), σ0 = 1,
default population, several seeds each. A run that has not reached the target within
``--max-evals`` counts as infinitely many evaluations (Rosenbrock's local minimum near x1 = -1
traps a fraction of runs of both implementations). Reports the median per function and the
ratio fastes / pycma; the target is <= 1.5.

    python benchmarks/cma_vs_pycma.py --seeds 11 --out benchmarks/results/cma_vs_pycma.json
"""

from __future__ import annotations

import argparse
import math
import os
import statistics
import sys

import numpy as np
import torch

import fastes
from fastes.strategies import make

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _common import environment, write_json  # noqa: E402

D = 10
COND = torch.tensor([1e6 ** (i / (D - 1)) for i in range(D)], dtype=torch.float64)
PROBLEMS = {
    "sphere": (lambda x: (x**2).sum(-1), 3.0),
    "ellipsoid": (lambda x: (COND * x**2).sum(-1), 3.0),
    "rosenbrock": (
        lambda x: ((1 - x[..., :-1]) ** 2 + 100 * (x[..., 1:] - x[..., :-1] ** 2) ** 2).sum(-1),
        0.0,
    ),
}


def run_fastes(f, x0, seed, max_evals):
    p0 = {"x": torch.full((D,), x0)}
    s = make("cma_es", p0, sigma=1.0, minimize=True, mode="batched")
    st, evals = s.init(p0), 0
    for g in range(max_evals // s.population_size):
        st, stats = s.step(st, lambda p: f(p["x"].double()), fastes.fold_in(fastes.key(seed), g))
        evals += s.population_size
        if float(stats.fitness.min()) < 1e-8:
            return evals
    return math.inf


def run_pycma(cma, f, x0, seed, max_evals):
    es = cma.CMAEvolutionStrategy(np.full(D, x0), 1.0, {"seed": seed + 1, "verbose": -9})
    while es.countevals < max_evals:
        xs = es.ask()
        fs = [float(f(torch.tensor(x))) for x in xs]
        es.tell(xs, fs)
        if min(fs) < 1e-8:
            return es.countevals
    return math.inf


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--seeds", type=int, default=11)
    ap.add_argument("--max-evals", type=int, default=30_000)
    ap.add_argument("--out", default=None)
    a = ap.parse_args(argv)
    try:
        import cma
    except ImportError:
        raise SystemExit('needs the reference package: pip install "fastes[test]" (cma)') from None
    res = {
        "env": {**environment(), "cma": cma.__version__},
        "D": D,
        "seeds": a.seeds,
        "results": {},
    }
    print(f"evaluations to f < 1e-8, D={D}, median of {a.seeds} seeds (inf = not reached)")
    for name, (f, x0) in PROBLEMS.items():
        ours = [run_fastes(f, x0, s, a.max_evals) for s in range(a.seeds)]
        theirs = [run_pycma(cma, f, x0, s, a.max_evals) for s in range(a.seeds)]
        mo, mt = statistics.median(ours), statistics.median(theirs)
        res["results"][name] = {"fastes": ours, "pycma": theirs, "median_fastes": mo,
                                "median_pycma": mt, "ratio": mo / mt}  # fmt: skip
        fails = (sum(map(math.isinf, ours)), sum(map(math.isinf, theirs)))
        print(f"{name:11s} fastes {mo:8.0f}  pycma {mt:8.0f}  ratio {mo / mt:5.2f}  "
              f"(not reached: {fails[0]} / {fails[1]})")  # fmt: skip
    if a.out:
        write_json(a.out, res)


if __name__ == "__main__":
    main()
