"""Evolvability ES: maximize the variance, then the entropy, of behaviours — nested expectations.

Behaviour of a parameter x: b(x) = 5·sin(0.2x)·sin(20x) (EvoGrad's "interference" function).
Around a mean μ, offspring x ~ N(μ, σ²) show behaviours b(x); evolvability ES moves μ to where
those behaviours are most diverse (Gajewski et al. 2019, https://arxiv.org/abs/1907.06077):

* variance:  Var[b] = E[b²] − E[b]², two expectations;
* entropy:   a kernel density p̂(b_j) = E_i[K(b_i, b_j)], then H = E_j[−log p̂(b_j)] —
  an expectation of the log of an expectation. ``fastes.expectation`` differentiates both.

Unlike EvoGrad's demos, the printed statistics are the estimated variance / entropy themselves.

    python examples/07_evolvability.py
"""

from __future__ import annotations

import argparse
import math

import torch

import fastes
from fastes.expectations import expectation, normal, sample


def behaviour(x):
    return 5 * torch.sin(0.2 * x) * torch.sin(20 * x)


def variance(b, x, dist):
    return expectation(b**2, x, dist) - expectation(b, x, dist) ** 2


def entropy(b, x, dist, bandwidth=1.0):
    # K(b_i, b_j) Gaussian kernel; p̂(b_j) = E_i K(b_i, b_j) with i the sample axis (dim 0).
    k = torch.exp(-((b[:, None] - b[None, :]) ** 2) / (2 * bandwidth**2))
    k = k / math.sqrt(2 * math.pi * bandwidth**2)
    density = expectation(k, x, dist, dim=0)  # (N,): p̂ at each b_j
    return expectation(-torch.log(density), x, dist)


def run(stat, steps, population, sigma, lr, mu0=0.5):
    mu = torch.tensor([mu0], requires_grad=True)
    opt = torch.optim.SGD([mu], lr=lr, maximize=True)
    for step in range(steps):
        dist = normal(mu, sigma)
        x = sample(dist, population, fastes.fold_in(fastes.key(1), step), antithetic=True)
        value = stat(behaviour(x[:, 0]), x, dist)
        opt.zero_grad()
        value.backward()
        opt.step()
        if step % 100 == 0 or step == steps - 1:
            print(
                f"  step {step:4d}: mu = {mu.item():7.3f}, "
                f"estimated {stat.__name__} {value.item():.3f}"
            )
    return mu.item(), value.item()


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--steps", type=int, default=500)
    ap.add_argument("--population", type=int, default=500)
    ap.add_argument("--sigma", type=float, default=0.5)
    args = ap.parse_args(argv)
    print("maximize variance of behaviours")
    var = run(variance, args.steps, args.population, args.sigma, lr=0.03)
    print("maximize entropy of behaviours")
    ent = run(entropy, args.steps, args.population, args.sigma, lr=0.10)
    return var, ent


if __name__ == "__main__":
    main()
