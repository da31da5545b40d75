"""Population-based training: vectorized speed, quality against a grid, Ray Tune's toy schedule,
TaylorGLO against cross-entropy. One run on this machine, written with device, versions and SHA.

    python benchmarks/pbt.py --out benchmarks/results/pbt_cpu.json

* speed — 32 MLPs (64-64-10) on digits for the same steps: one VectorizedPBT of 32 members
  against 32 one-member trainings run one after another with the same code (same optimizer,
  same hyperparameters, exploit off in both so the work is identical).
* quality — PBT (16 members, validation accuracy as fitness) against a 16-point grid over the
  same hyperparameters (lr × momentum × weight decay), equal total training steps; the grid's
  best configuration is chosen on the same validation split; both report held-out test accuracy.
  Seeds 0–2.
* toy — Ray Tune's PBT toy (the ``pbt_function`` example's dynamics, re-written): the learning
  rate that makes progress follows a triangle over the "accuracy" (0.001 → 0.01 at 100 → 0.001
  at 200), so only a schedule keeps up. PBT (8 members, perturbation every 4 iterations) against
  fixed learning rates, same iterations; the target is accuracy 200.
* taylorglo — examples/09_taylorglo.py for seeds 0–2.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import torch  # noqa: E402

import fastes  # noqa: E402
from fastes import pbt  # noqa: E402

EXAMPLES = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "examples")


def _example(name: str):
    spec = importlib.util.spec_from_file_location(name, os.path.join(EXAMPLES, f"{name}.py"))
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def speed(steps: int = 300, n: int = 32) -> dict:
    ex = _example("08_vectorized_pbt")
    train_set, _, _ = ex.digits(0)
    space = pbt.as_space(ex.SPACE)
    drawn = space.sample(fastes.key(1), n)
    members = [space.member(drawn, i) for i in range(n)]

    def run(population, initial, seed):
        pop = pbt.VectorizedPBT(ex.model(), ex.SPACE, ex.optimizer, population_size=population,
                                key=fastes.key(seed), interval=100, quantile=0.0,
                                initial=initial)  # fmt: skip
        pop.run(train_set, steps=steps, batch_size=64, fitness=lambda p: torch.zeros(population))

    run(n, members, 0)  # warm-up (first vmap trace, allocator)
    t0 = time.perf_counter()
    run(n, members, 0)
    vectorized = time.perf_counter() - t0
    t0 = time.perf_counter()
    for i in range(n):
        run(1, [members[i]], i)
    sequential = time.perf_counter() - t0
    return {"members": n, "steps": steps, "batch_size": 64, "vectorized_s": vectorized,
            "sequential_s": sequential, "speedup": sequential / vectorized}  # fmt: skip


GRID = {"lr": [0.01, 0.03, 0.1, 0.3], "momentum": [0.0, 0.9], "weight_decay": [1e-5, 1e-3]}


def quality(seed: int, steps: int = 1500) -> dict:
    ex = _example("08_vectorized_pbt")
    grid = pbt.grid.configurations(GRID)
    pbt_result, pbt_test = ex.train(seed, steps, population=len(grid))
    grid_result, grid_test = ex.train(seed, steps, population=len(grid), initial=grid,
                                      quantile=0.0)  # fmt: skip
    return {"seed": seed, "steps_per_member": steps, "members": len(grid),
            "pbt_validation": pbt_result.best_score, "pbt_test": pbt_test,
            "pbt_best_hyperparameters": pbt_result.best_hyperparameters,
            "grid_validation": grid_result.best_score, "grid_test": grid_test,
            "grid_best_configuration": grid_result.best_hyperparameters}  # fmt: skip


def toy_train(c: pbt.Candidate) -> pbt.Candidate:
    """Four iterations of the toy: progress needs lr within a factor 3 of a moving optimum."""
    state = c.checkpoint or {"accuracy": 0.0, "iterations": 0, "reached_200": -1}
    acc, lr = state["accuracy"], c.hyperparameters["lr"]
    g = torch.Generator().manual_seed(int(c.key[0]) + (int(c.key[1]) << 32))
    it, reached = state["iterations"], state["reached_200"]
    for _ in range(4):
        optimal = 0.01 * acc / 100 if acc < 100 else 0.01 - 0.01 * (acc - 100) / 100
        optimal = min(0.01, max(0.001, optimal))
        q = max(lr, optimal) / min(lr, optimal)
        u = float(torch.rand((), generator=g))
        if q < 3:
            acc += u / q
        elif lr > optimal:
            acc -= (q - 3) * u
        acc = max(0.0, acc + 2.0 * float(torch.randn((), generator=g)))
        it += 1
        if acc >= 200 and reached < 0:
            reached = it
    c.checkpoint = {"accuracy": acc, "iterations": it, "reached_200": reached}
    c.fitness = acc
    return c


def toy(seed: int, iterations: int = 800) -> dict:
    space = {"lr": pbt.Float(1e-4, 0.02)}
    rounds = iterations // 4
    pop = pbt.ProcessPBT(toy_train, space, population_size=8, key=fastes.key(seed))
    pop.run(rounds)
    best = max(pop.checkpoints, key=lambda s: s["accuracy"])
    fixed_lrs = [1e-4, 5e-4, 1e-3, 2e-3, 3e-3, 5e-3, 7.5e-3, 1e-2, 1.5e-2, 2e-2]
    grid = pbt.ProcessPBT(toy_train, space, population_size=len(fixed_lrs), key=fastes.key(seed),
                          quantile=0.0, initial=[{"lr": v} for v in fixed_lrs])  # fmt: skip
    grid.run(rounds)
    return {"seed": seed, "iterations": iterations,
            "pbt_accuracy": best["accuracy"], "pbt_reached_200_at": best["reached_200"],
            "pbt_lr_schedule": [r["hp_lr"] for r in pop.history[:: max(1, rounds // 10)]],
            "fixed": {str(v): {"accuracy": s["accuracy"], "reached_200_at": s["reached_200"]}
                      for v, s in zip(fixed_lrs, grid.checkpoints, strict=True)}}  # fmt: skip


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out")
    ap.add_argument("--seeds", type=int, default=3)
    args = ap.parse_args()
    from _common import environment, write_json

    out = {"environment": environment("cpu")}
    out["speed"] = s = speed()
    print(f"speed: 32 members x {s['steps']} steps: vectorized {s['vectorized_s']:.2f} s, "
          f"sequential {s['sequential_s']:.2f} s, {s['speedup']:.1f}x")  # fmt: skip
    out["quality"] = [quality(seed) for seed in range(args.seeds)]
    for q in out["quality"]:
        print(f"quality seed {q['seed']}: PBT test {q['pbt_test']:.3f} (val "
              f"{q['pbt_validation']:.3f}); grid best test {q['grid_test']:.3f} (val "
              f"{q['grid_validation']:.3f}, {q['grid_best_configuration']})")  # fmt: skip
    out["toy"] = [toy(seed) for seed in range(args.seeds)]
    for t in out["toy"]:
        fixed = max(t["fixed"].items(), key=lambda kv: kv[1]["accuracy"])
        reached = [lr for lr, v in t["fixed"].items() if v["reached_200_at"] >= 0]
        print(f"toy seed {t['seed']}: PBT accuracy {t['pbt_accuracy']:.1f} (200 reached at "
              f"iteration {t['pbt_reached_200_at']}); best fixed lr {fixed[0]}: "
              f"{fixed[1]['accuracy']:.1f}; fixed lrs reaching 200: "
              f"{reached or 'none'}")  # fmt: skip
    glo = _example("09_taylorglo")
    out["taylorglo"] = []
    for seed in range(args.seeds):
        r = glo.main(["--seed", str(seed)])
        out["taylorglo"].append({"seed": seed, **r})
    if args.out:
        write_json(args.out, out)


if __name__ == "__main__":
    main()
