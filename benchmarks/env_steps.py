"""Environment steps per second: fastes' torch-native CartPole vs gymnasium's vector CartPole.

A whole ES generation of rollouts: population P × E episodes of CartPole-v1 under one fixed
linear policy (the same weights everywhere, a policy that balances for a while, so episodes end
at different times). Counted: live env steps (the sum of episode lengths) per second of wall
time, policy included.

* fastes: ``fastes.envs.rollout`` — all P·E envs in one batched tensor program; finished envs
  stay frozen until the last one ends (their steps are not counted).
* gymnasium ``make_vec`` (numpy-vectorised ``CartPoleVectorEnv``) with P·E envs, stepped until
  every env finished its first episode (autoreset steps are not counted).
* gymnasium ``SyncVectorEnv`` of P·E Python ``CartPoleEnv`` objects, the same way (smaller P:
  it is much slower).

Repetitions alternate the contenders (the machine is shared); medians are reported.

    python benchmarks/env_steps.py --out benchmarks/results/env_steps_cpu.json
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

import numpy as np
import torch

import fastes
from fastes.envs import cartpole, rollout

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
from _common import environment, write_json  # noqa: E402

W = np.array([0.1, 0.5, 1.0, 0.6])  # action = [obs·W > 0]: balances for ~100-500 steps


def fastes_steps(P: int, E: int, seed: int) -> tuple[int, float]:
    w = torch.tensor(W)
    t0 = time.perf_counter()
    out = rollout(lambda o: (o @ w > 0).long(), fastes.key(seed), (E,), cartpole, members=P)
    return int(out.lengths.sum()), time.perf_counter() - t0


def gym_steps(P: int, E: int, seed: int, sync: bool) -> tuple[int, float]:
    import gymnasium as gym

    n = P * E
    if sync:
        envs = gym.vector.SyncVectorEnv([lambda: gym.make("CartPole-v1") for _ in range(n)])
    else:
        envs = gym.make_vec("CartPole-v1", num_envs=n, vectorization_mode="vector_entry_point")
    obs, _ = envs.reset(seed=seed)
    t0 = time.perf_counter()
    live = np.ones(n, dtype=bool)
    steps = 0
    while live.any():
        obs, _, term, trunc, _ = envs.step((obs @ W > 0).astype(np.int64))
        steps += int(live.sum())
        live &= ~(term | trunc)
    seconds = time.perf_counter() - t0
    envs.close()
    return steps, seconds


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--population", type=int, default=1024)
    ap.add_argument("--episodes", type=int, nargs="+", default=[1, 4])
    ap.add_argument("--sync-population", type=int, default=64)
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--out", default=None)
    a = ap.parse_args(argv)
    rows = []
    for E in a.episodes:
        contenders = {
            "fastes torch-native": lambda s, E=E: fastes_steps(a.population, E, s),
            "gymnasium make_vec (numpy)": lambda s, E=E: gym_steps(a.population, E, s, False),
        }
        rates = {k: [] for k in contenders}
        for rep in range(a.reps + 1):
            for name, fn in contenders.items():
                steps, seconds = fn(rep)
                if rep:  # the first repetition warms up
                    rates[name].append(steps / seconds)
        row = {"population": a.population, "episodes": E, "envs": a.population * E}
        row.update({k: statistics.median(v) for k, v in rates.items()})
        row["speedup"] = row["fastes torch-native"] / row["gymnasium make_vec (numpy)"]
        rows.append(row)
        print(f"P={a.population} x E={E}: fastes {row['fastes torch-native']:,.0f} steps/s, "
              f"gymnasium make_vec {row['gymnasium make_vec (numpy)']:,.0f} steps/s "
              f"({row['speedup']:.1f}x)")  # fmt: skip
    P = a.sync_population
    sync = [gym_steps(P, 1, s, True) for s in range(3)]
    ours = [fastes_steps(P, 1, s) for s in range(3)]
    sync_row = {
        "population": P, "episodes": 1,
        "gymnasium SyncVectorEnv": statistics.median(s / t for s, t in sync),
        "fastes torch-native": statistics.median(s / t for s, t in ours),
    }  # fmt: skip
    print(
        f"P={P} x 1: SyncVectorEnv {sync_row['gymnasium SyncVectorEnv']:,.0f} steps/s, "
        f"fastes {sync_row['fastes torch-native']:,.0f} steps/s"
    )
    res = {"environment": environment(), "rows": rows, "sync_row": sync_row}
    if a.out:
        write_json(a.out, res)
    return res


if __name__ == "__main__":
    main()
