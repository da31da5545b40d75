"""The fixed cost of a generation where D is small: fastes against pycma, evosax and a naive loop.

Median milliseconds per generation on the sphere, everything in one process, repetitions of the
libraries interleaved (this machine is shared and noisy), after a warm-up that includes JAX's
compilation:

* CMA-ES at D = 10 (λ = 10) and D = 100 (λ = 17): fastes ``cma_es`` ``step`` (mode "batched"),
  pycma's ``ask`` / ``tell`` (``CMAEvolutionStrategy``, no logging), evosax's ``CMA_ES``
  ``ask`` + fitness + ``tell`` in one ``jax.jit`` function;
* every fastes strategy at D ∈ {10, 100, 1000} (P = 16, 16, 256) against evosax's counterpart
  where it has one, same jitted form;
* OpenAI-ES at D = 1000, P = 256: ``fastes.es_step`` against the naive PyTorch loop
  (``torch.randn``, ``cat`` of ±ε, members, fitness, centered ranks, one matmul);
* R = 64 runs at D = 10 advanced together (``fastes.strategies.BatchedRuns``: CMA-ES, xNES,
  sep-CMA-ES, SNES, CEM, OpenAI-ES and PGPE with Adam, ARS) against the same 64 runs one after
  another.

A ratio ``fastes/<peer>`` is the median of the per-repetition ratios (the two timed moments
apart). Every runner restarts from x = 1 before each repetition (outside the timer): a run left
going for the whole measurement (~1,500 generations) reaches float32 fitness that underflows to 0
for every member, and a generation of tied fitness is not the fixed cost this measures (fastes
SNES at D = 10 went 0.32 -> 0.49 ms per generation that way, its shaping taking the tie path).

    python benchmarks/small_dim.py --out benchmarks/results/small_dim_cpu.json
    python benchmarks/small_dim.py --quick          # fewer repetitions
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

# numpy's OpenBLAS and XLA's Eigen pool spin-wait between calls and starve torch's OpenMP threads
# on 2 cores (measured: a torch eigh right after a numpy eigh took 14 ms instead of 0.5 ms). One
# thread each is also the peers' faster setting at these sizes (pycma D = 100: 0.97 ms vs 1.17;
# evosax D = 100: 1.16 vs 1.39), so every library runs at its best in one process.
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
os.environ.setdefault("XLA_FLAGS", "--xla_cpu_multi_thread_eigen=false "
                      "intra_op_parallelism_threads=1")  # fmt: skip

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import numpy as np  # noqa: E402
import torch  # noqa: E402

import fastes  # noqa: E402
from fastes.strategies import make  # noqa: E402


def sphere_t(p):
    return (p["x"] ** 2).sum(-1)


class Fastes:
    def __init__(self, name, D, P, **kw):
        self.p0 = {"x": torch.full((D,), 1.0)}
        self.s = make(name, self.p0, population_size=P, minimize=True, mode="batched", **kw)
        self.g, self.key = 0, fastes.key(0)
        self.reset()

    def reset(self):
        self.state = self.s.init(self.p0)

    def step(self):
        self.state, _ = self.s.step(self.state, sphere_t, fastes.fold_in(self.key, self.g))
        self.g += 1


class EsStep:
    def __init__(self, D, P):
        self.D, self.g, self.key, self.P = D, 0, fastes.key(0), P
        self.reset()

    def reset(self):
        self.p = {"x": torch.full((self.D,), 1.0)}

    def step(self):
        k = fastes.fold_in(self.key, self.g)
        self.p = fastes.es_step(self.p, lambda p: -(p["x"] ** 2).sum(), k,
                                population_size=self.P, sigma=0.1, learning_rate=0.01)  # fmt: skip
        self.g += 1


class Naive:
    """The loop a user writes by hand: randn, ±ε, members, fitness, centered ranks, matmul."""

    def __init__(self, D, P):
        self.D, self.P, self.gen = D, P, torch.Generator().manual_seed(0)
        self.reset()

    def reset(self):
        self.x = torch.full((self.D,), 1.0)

    def step(self):
        eps = torch.randn(self.P // 2, self.x.numel(), generator=self.gen)
        eps = torch.cat([eps, -eps])
        f = -((self.x + 0.1 * eps) ** 2).sum(-1)
        ranks = torch.empty_like(f)
        ranks[f.argsort()] = torch.arange(self.P, dtype=f.dtype)
        w = ranks / (self.P - 1) - 0.5
        self.x = self.x + 0.01 / (self.P * 0.1) * (w @ eps)


class PyCMA:
    def __init__(self, D, P):
        self.D, self.P, self.seed = D, P, 0
        self.reset()

    def reset(self):
        import cma

        self.seed += 1
        self.es = cma.CMAEvolutionStrategy(np.ones(self.D), 1.0, {"popsize": self.P,
                                           "verbose": -9, "seed": self.seed})  # fmt: skip

    def step(self):
        xs = self.es.ask()
        self.es.tell(xs, [float((x * x).sum()) for x in xs])


class Evosax:
    def __init__(self, name, D, P):
        import jax
        import jax.numpy as jnp
        from evosax import algorithms

        jax.config.update("jax_platforms", "cpu")
        es = getattr(algorithms, name)(population_size=P, solution=jnp.zeros(D))
        self.params = es.default_params
        self.reset = lambda: setattr(self, "state", es.init(jax.random.key(0), jnp.ones(D),
                                                            self.params))  # fmt: skip
        self.reset()

        def generation(key, state, params):
            k1, k2 = jax.random.split(key)
            pop, state = es.ask(k1, state, params)
            state, _ = es.tell(k2, pop, (pop * pop).sum(-1), state, params)
            return state

        self.generation, self.key, self.jax = jax.jit(generation), jax.random.key(0), jax

    def step(self):
        self.key, k = self.jax.random.split(self.key)
        self.state = self.generation(k, self.state, self.params)
        self.jax.block_until_ready(self.state)


EVOSAX = {"openai_es": "Open_ES", "pgpe": "PGPE", "snes": "SNES", "xnes": "xNES",
          "cma_es": "CMA_ES", "sep_cma_es": "Sep_CMA_ES", "ars": "ARS",
          "cem": "SimpleES"}  # fmt: skip


def timed(runners: dict, reps: int, inner: int | None = None, budget_s: float = 0.05) -> dict:
    """Median ms per generation of each runner; repetitions interleaved across runners. With
    ``inner`` None, each repetition runs about ``budget_s`` of generations of the slowest.

    Also ``"fastes/<peer>"``: the median over repetitions of fastes' time divided by the peer's
    in the same repetition (taken moments apart, so a slow spell of the shared machine slows
    both; the ratio of the two medians can pair a fast fastes spell with a slow peer one)."""
    for r in runners.values():
        for _ in range(3):
            r.step()
    if inner is None:
        t0 = time.perf_counter()
        for r in runners.values():
            r.step()
        inner = max(1, int(budget_s / max(time.perf_counter() - t0, 1e-6)))
    times = {n: [] for n in runners}
    for _ in range(reps):
        for n, r in runners.items():
            r.reset()
            r.step()  # the first step after a restart: caches and memos warm again
            t0 = time.perf_counter()
            for _ in range(inner):
                r.step()
            times[n].append((time.perf_counter() - t0) / inner * 1e3)
    out = {n: statistics.median(t) for n, t in times.items()}
    for n in times:
        if n != "fastes" and "fastes" in times:
            pairs = zip(times["fastes"], times[n], strict=True)
            out[f"fastes/{n}"] = statistics.median(a / b for a, b in pairs)
    return out


def batched_runs(name: str = "cma_es", R: int = 64, D: int = 10, gens: int = 20,
                 reps: int = 5) -> dict:  # fmt: skip
    """R runs advanced together vs the same R runs one after another (ms/generation)."""
    from fastes.strategies import BatchedRuns

    x0 = {"x": torch.full((D,), 1.0)}
    kw = dict(optimizer=fastes.optim.adam(0.05)) if name == "pgpe" else {}  # not ClipUp
    s = make(name, x0, minimize=True, mode="batched", **kw)
    runs, keys = BatchedRuns(s, R), torch.stack([fastes.key(r) for r in range(R)])

    def together():
        state = runs.init(x0)
        for g in range(gens):
            state, _ = runs.step(state, sphere_t, fastes.fold_in(keys, g))

    def one_by_one():
        for r in range(R):
            state = s.init(x0)
            for g in range(gens):
                state, _ = s.step(state, sphere_t, fastes.fold_in(keys[r], g))

    times = {"batched": [], "sequential": []}
    together()
    for _ in range(reps):
        for name, fn in (("batched", together), ("sequential", one_by_one)):
            t0 = time.perf_counter()
            fn()
            times[name].append((time.perf_counter() - t0) / gens * 1e3)
    out = {k: statistics.median(v) for k, v in times.items()}
    out["speedup"] = out["sequential"] / out["batched"]
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out")
    ap.add_argument("--quick", action="store_true")
    args = ap.parse_args()
    reps, inner = (5, 20) if args.quick else (15, 50)
    out = {}
    for D, P in ((10, 10), (100, 17)):
        runners = {"fastes": Fastes("cma_es", D, P), "pycma": PyCMA(D, P)}
        try:
            runners["evosax"] = Evosax("CMA_ES", D, P)
        except ImportError:
            pass
        out[f"cma_es D={D} P={P}"] = t = timed(runners, reps, inner)
        print(f"CMA-ES D={D} λ={P}: " + ", ".join(f"{k} {v:.3f}" for k, v in t.items()))
    out["es_step D=1000 P=256"] = t = timed({"fastes": EsStep(1000, 256),
                                             "naive": Naive(1000, 256)}, reps, inner)  # fmt: skip
    print("es_step D=1000 P=256: " + ", ".join(f"{k} {v:.3f}" for k, v in t.items()))
    for D, P in ((10, 16), (100, 32), (1000, 256)):
        for name in sorted(fastes.strategies.REGISTRY):
            runners = {"fastes": Fastes(name, D, P)}
            if name in EVOSAX:
                try:
                    runners["evosax"] = Evosax(EVOSAX[name], D, P)
                except Exception as e:  # noqa: BLE001 - report, keep measuring the rest
                    print(f"evosax {EVOSAX[name]} D={D}: {type(e).__name__}: {e}")
            out[f"{name} D={D} P={P}"] = t = timed(runners, reps)
            print(f"{name} D={D} P={P}: " + ", ".join(f"{k} {v:.3f}" for k, v in t.items()))
    for name in ("cma_es", "sep_cma_es", "xnes", "snes", "cem", "openai_es", "pgpe", "ars"):
        out[f"batched_runs R=64 {name} D=10"] = t = batched_runs(name, reps=3 if args.quick else 7)
        print(f"64 {name} runs, D=10: batched {t['batched']:.2f} ms/gen, one after another "
              f"{t['sequential']:.2f} ms/gen, {t['speedup']:.1f}x")  # fmt: skip
    if args.out:
        from _common import environment, write_json

        write_json(args.out, {"environment": environment("cpu"), "ms_per_generation": out})


if __name__ == "__main__":
    main()
