"""Gradient estimation on an MLP: fastes.ESOptimizer vs a plain loop over perturbations.

The plain loop is what the earlier block-wise tool did per perturbation (minus its process pool,
which adds pickling on top): deep-copy the model, add σ·ε (``torch.randn_like``) to its
parameters, evaluate the objective, and finally combine Σ_i s_i·ε_i / (nσ) with centered ranks.
fastes evaluates all members in one vmap'd ``functional_call`` pass and regenerates the noise.
Same objective (minibatch accuracy and −cross-entropy), same population, alternating repetitions.

    python benchmarks/module_optimizer.py [--out benchmarks/results/module_optimizer_cpu.json]
"""

from __future__ import annotations

import argparse
import copy
import os
import statistics
import sys
import time

import torch

import fastes
from fastes.shaping import shape_fitness

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _common import environment, write_json  # noqa: E402


def objective(net, x, y):
    logits = net(x)
    acc = (logits.argmax(-1) == y).float().mean()
    return torch.stack([acc, -torch.nn.functional.cross_entropy(logits, y)])


def plain_loop_grad(model, x, y, population, sigma, weights):
    """Mirrored sampling, one deep-copied model per perturbation, evaluated one at a time."""
    params = list(model.parameters())
    noise = [[torch.randn_like(p) for p in params] for _ in range(population // 2)]
    noise += [[-e for e in eps] for eps in noise]
    fitness = []
    with torch.no_grad():
        for eps in noise:
            member = copy.deepcopy(model)
            for p, e in zip(member.parameters(), eps):
                p.add_(sigma * e)
            fitness.append(objective(member, x, y))
    w, _ = shape_fitness(torch.stack(fitness), objective_weights=weights)
    return [
        sum(w[i] * noise[i][j] for i in range(population)) / (population * sigma)
        for j in range(len(params))
    ]


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--population", type=int, default=128)
    ap.add_argument("--hidden", type=int, default=64)
    ap.add_argument("--batch", type=int, default=256)
    ap.add_argument("--reps", type=int, default=7)
    ap.add_argument("--out", default=None)
    a = ap.parse_args(argv)
    torch.manual_seed(0)
    model = torch.nn.Sequential(
        torch.nn.Linear(64, a.hidden), torch.nn.Tanh(), torch.nn.Linear(a.hidden, 10)
    )
    x, y = torch.rand(a.batch, 64), torch.randint(0, 10, (a.batch,))
    weights = [1.0, 0.25]
    es = fastes.ESOptimizer(
        model, torch.optim.SGD(model.parameters(), lr=0.0), objective,
        population_size=a.population, sigma=0.05, objective_weights=weights,
    )  # fmt: skip
    times = {"fastes": [], "plain_loop": []}
    for rep in range(a.reps + 1):
        for name in times:
            t0 = time.perf_counter()
            if name == "fastes":
                es.step(x, y)
            else:
                plain_loop_grad(model, x, y, a.population, 0.05, weights)
            if rep:
                times[name].append(time.perf_counter() - t0)
    med = {n: statistics.median(t) for n, t in times.items()}
    D = sum(p.numel() for p in model.parameters())
    ratio = med["fastes"] / med["plain_loop"]
    print(f"MLP 64-{a.hidden}-10 (D={D:,}), P={a.population}, batch {a.batch}, median of {a.reps}")
    print(f"fastes ESOptimizer.step {med['fastes'] * 1e3:8.1f} ms")
    print(
        f"plain loop              {med['plain_loop'] * 1e3:8.1f} ms   (fastes/loop = {ratio:.3f})"
    )
    if a.out:
        res = {"env": environment(), "D": D, "P": a.population, **med, "ratio": ratio}
        write_json(a.out, res)


if __name__ == "__main__":
    main()
