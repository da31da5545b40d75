"""Time one OpenAI-ES generation: fastes vs a naive PyTorch implementation, same run.

One generation = antithetic sampling, fitness of all P members, centered ranks, the gradient
estimate and a plain SGD step. The naive version is what most ES code does on PyTorch:

    half = torch.randn(P // 2, D); eps = torch.cat([half, -half])     # (P, D) noise, stored
    f = fitness(theta + sigma * eps); w = centered_ranks(f)
    theta = theta + lr / (P * sigma) * (w @ eps)

Timings alternate fastes and naive repetitions (the machine is shared and noisy) and report the
median. Peak memory is the peak RSS growth of a fresh subprocess running one generation (table
generation included for fastes), relative to its RSS just before the generation.

    python benchmarks/es_generation.py                 # D=1e5 P=256; memory at D=1e6 P=1024
    python benchmarks/es_generation.py --chunk-sweep   # how DEFAULT_CHUNK_BYTES was chosen
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
from fastes.shaping import centered_ranks

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
from _common import environment, peak_rss_growth, write_json  # noqa: E402

SIGMA, LR = 0.02, 0.01


def sphere(x):
    return -(x * x).sum(-1)


def rastrigin(x):
    return -(10 * x.shape[-1] + (x * x - 10 * torch.cos(2 * math.pi * x)).sum(-1))


PROBLEMS = {"sphere": sphere, "rastrigin": rastrigin}


def naive_generation(theta, fitness, key, P):
    gen = torch.Generator(device=theta.device).manual_seed(int(key[0]))
    half = torch.randn(P // 2, theta.numel(), generator=gen, device=theta.device)
    eps = torch.cat([half, -half])  # (P, D)
    f = fitness(theta + SIGMA * eps)
    w = centered_ranks(f)
    return theta + LR / (P * SIGMA) * (w @ eps)


def fastes_generation(theta, fitness, key, P, chunk_size=None, noise="auto"):
    return fastes.es_step(
        theta, fitness, key, population_size=P, sigma=SIGMA, learning_rate=LR,
        chunk_size=chunk_size, noise=noise,
    )  # fmt: skip


def time_pair(problem, D, P, reps, chunk_size=None):
    """Median seconds per generation for (fastes, naive), alternating repetitions."""
    fit = PROBLEMS[problem]
    theta = torch.full((D,), 0.5)
    fastes.noise_table()  # one-off table generation is not part of a generation's time
    times = {"fastes": [], "naive": []}
    for rep in range(reps + 1):
        k = fastes.fold_in(fastes.key(0), rep)
        for name in ("fastes", "naive"):
            t0 = time.perf_counter()
            if name == "fastes":
                fastes_generation(theta, fit, k, P, chunk_size)
            else:
                naive_generation(theta, fit, k, P)
            if rep:  # the first repetition warms up both
                times[name].append(time.perf_counter() - t0)
    return {n: statistics.median(t) for n, t in times.items()}


def _peak_child(impl, D, P):
    """Peak RSS growth (bytes) of one generation in a fresh process, table generation included."""
    setup = (
        f"import torch, fastes, es_generation as b\ntheta = torch.full(({D},), 0.5)\n"
        "k = fastes.key(1)"
    )
    fn = "b.fastes_generation" if impl == "fastes" else "b.naive_generation"
    peak, err = peak_rss_growth(setup, f"{fn}(theta, b.sphere, k, {P})", HERE)
    if err:
        raise RuntimeError(f"{impl} at D={D}, P={P}: {err}")
    return peak


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--dim", type=int, default=100_000)
    ap.add_argument("--pop", type=int, default=256)
    ap.add_argument("--reps", type=int, default=7)
    ap.add_argument("--mem-dim", type=int, default=1_000_000)
    ap.add_argument("--mem-pop", type=int, default=1024)
    ap.add_argument("--no-mem", action="store_true")
    ap.add_argument("--chunk-sweep", action="store_true")
    ap.add_argument("--out", default=None, help="write results JSON here")
    a = ap.parse_args()
    if a.chunk_sweep:
        for c in (4, 8, 16, 32, 64, 128, 256):
            t = time_pair("sphere", a.dim, a.pop, a.reps, chunk_size=c)
            mib = c * a.dim * 4 / 2**20
            print(f"chunk {c:4d} ({mib:6.1f} MiB): fastes {t['fastes'] * 1e3:7.1f} ms")
        return
    res = {"env": environment(), "time": {}, "memory": {}}
    print(f"one generation, D={a.dim:,} P={a.pop}, median of {a.reps} (ms)")
    print(f"{'problem':10s} {'fastes':>9s} {'naive':>9s} {'ratio':>7s}")
    for prob in PROBLEMS:
        t = time_pair(prob, a.dim, a.pop, a.reps)
        ratio = t["fastes"] / t["naive"]
        res["time"][prob] = {"D": a.dim, "P": a.pop, **t, "ratio": ratio}
        print(f"{prob:10s} {t['fastes'] * 1e3:9.1f} {t['naive'] * 1e3:9.1f} {ratio:7.2f}")
    if not a.no_mem:
        print(f"peak memory growth of one generation, D={a.mem_dim:,} P={a.mem_pop} (MiB)")
        for impl in ("fastes", "naive"):
            peak = _peak_child(impl, a.mem_dim, a.mem_pop)
            res["memory"][impl] = {"D": a.mem_dim, "P": a.mem_pop, "peak_bytes": peak}
            print(f"{impl:10s} {peak / 2**20:9.0f}")
    if a.out:
        write_json(a.out, res)


if __name__ == "__main__":
    main()
