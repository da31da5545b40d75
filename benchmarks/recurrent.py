"""GRU policies on the torch-native envs with Portable ES's budget: 25 generations, P = 256
antithetic, centered ranks (its reported figures: CartPole-v1 ≈ 497.6, Acrobot-v1 ≈ −82).

    python benchmarks/recurrent.py --out benchmarks/results/recurrent_cpu.json

OpenAI-ES (Adam, σ = 0.1, lr = 0.05), GRU with 16 units, 4 episodes per member, running
observation normalisation; the score is the mean return of the final params on 100 unseen
episodes (the evaluation key of the last generation).
"""

from __future__ import annotations

import argparse
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import fastes  # noqa: E402
from fastes.rl import EnvTask, GRUPolicy  # noqa: E402


def run(env: str, seed: int) -> dict:
    mod = fastes.envs.get(env)
    task = EnvTask(env, policy=GRUPolicy(mod.OBS_DIM, mod.ACTIONS, 16), episodes=4,
                   normalize_obs=True, eval_episodes=100)  # fmt: skip
    params = task.init_params(fastes.key(seed + 1))
    strategy = fastes.strategies.make("openai_es", params, population_size=256, sigma=0.1,
                                      learning_rate=0.05, mode=task.mode)  # fmt: skip
    t0 = time.perf_counter()
    res = fastes.Trainer(strategy, task, key=fastes.key(seed), params=params, generations=25,
                         eval_every=25, progress=False).run()  # fmt: skip
    last = res.history[-1]
    return {"env": mod.GYM_ID, "seed": seed, "generations": res.generation,
            "score_100_episodes": last["score"], "score_std": last["score_std"],
            "env_steps": last["env_steps"], "seconds": time.perf_counter() - t0}  # fmt: skip


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out")
    ap.add_argument("--seeds", type=int, default=3)
    args = ap.parse_args()
    from _common import environment, write_json

    rows = [run(env, s) for env in ("cartpole", "acrobot") for s in range(args.seeds)]
    for r in rows:
        print(f"{r['env']} seed {r['seed']}: {r['score_100_episodes']:.1f} ± {r['score_std']:.1f} "
              f"after {r['generations']} generations, {r['seconds']:.1f} s")  # fmt: skip
    if args.out:
        write_json(args.out, {"environment": environment("cpu"), "runs": rows,
                              "reference": {"CartPole-v1": 497.6, "Acrobot-v1": -82}})  # fmt: skip


if __name__ == "__main__":
    main()
