"""NES through a differentiable expectation: find the peak of f(x) = −(x − 5)², starting at μ = 1.

EvoGrad's first demo on fastes: sample a population from N(μ, σ²) (antithetic, from a fastes
key), whiten the fitness, build E[f̃] with ``fastes.expectation`` and let autograd give the
score-function gradient; any torch optimizer then moves μ. Population 500, σ 0.5, lr 0.03.

    python examples/06_nes_expectation.py
"""

from __future__ import annotations

import argparse

import torch

import fastes
from fastes.expectations import expectation, normal, sample


def main(argv=None) -> float:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--steps", type=int, default=2000)
    ap.add_argument("--population", type=int, default=500)
    ap.add_argument("--sigma", type=float, default=0.5)
    ap.add_argument("--lr", type=float, default=0.03)
    args = ap.parse_args(argv)

    mu = torch.tensor([1.0], requires_grad=True)
    opt = torch.optim.SGD([mu], lr=args.lr, maximize=True)
    run_key = fastes.key(0)
    for step in range(args.steps):
        dist = normal(mu, args.sigma)
        x = sample(dist, args.population, fastes.fold_in(run_key, step), antithetic=True)
        f = -((x - 5.0) ** 2).sum(-1)
        objective = expectation((f - f.mean()) / (f.std() + 1e-8), x, dist)  # whitened
        opt.zero_grad()
        objective.backward()
        opt.step()
        if step % 400 == 0 or step == args.steps - 1:
            print(f"step {step:5d}: mu = {mu.item():.4f}, E[f] ≈ {f.mean().item():.4f}")
    print(f"final mu = {mu.item():.4f} (peak at 5)")
    return mu.item()


if __name__ == "__main__":
    main()
