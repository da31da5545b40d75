"""What scale-out costs and buys, on this machine (gloo, 127.0.0.1).

    python benchmarks/distributed.py --out benchmarks/results/distributed_cpu.json

Launches itself under ``torchrun --standalone`` and measures, per generation:

* bytes each rank receives for ``es_step`` at D = 1e3, 1e5, 1e6 (P = 64, 2 processes): the
  fitness-only exchange sends P numbers whatever D is;
* the fixed cost of one fitness all-gather (P = 256 float32) on 2 processes, median of 200;
* wall time of a rollout-bound generation (gymnasium LunarLander-v3, P = 64, 1 episode per member,
  workers = 0 so each process steps its own members) on 1 and 2 processes: the speed-up.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, ROOT)


def worker(out: str) -> None:
    """Run under torchrun: every measurement, rank 0 writes JSON to ``out``."""
    import torch

    import fastes
    from fastes import distributed

    group = distributed.init(timeout_s=120)
    world = 1 if group is None else group.world_size
    res: dict = {"world_size": world}
    if world > 1:
        traffic = {}
        for D in (1_000, 100_000, 1_000_000):
            p = {"x": torch.zeros(D)}
            fit = lambda q: -(q["x"] ** 2).sum()
            p = fastes.es_step(p, fit, fastes.key(0), population_size=64, sigma=0.1,
                               learning_rate=0.01)  # fmt: skip
            distributed.reset_traffic()
            for t in range(3):
                p = fastes.es_step(p, fit, fastes.fold_in(fastes.key(0), t), population_size=64,
                                   sigma=0.1, learning_rate=0.01)  # fmt: skip
            tr = distributed.traffic()
            traffic[str(D)] = {"bytes_per_generation": tr["bytes"] / 3,
                               "collectives_per_generation": tr["collectives"] / 3}  # fmt: skip
        res["es_step_traffic_P64"] = traffic
        local = torch.zeros(256 // world)
        times = []
        for _ in range(200):
            t0 = time.perf_counter()
            distributed.gather_members(local, 256)
            times.append(time.perf_counter() - t0)
        res["gather_256_floats_median_us"] = statistics.median(times) * 1e6
    from fastes.rl.gym import GymTask

    task = GymTask("LunarLander-v3", hidden=(16,), episodes=1, workers=0, normalize_obs=True)
    params = task.init_params(fastes.key(1))
    s = fastes.strategies.make("openai_es", params, population_size=64, mode=task.mode, sigma=0.1)
    state = s.init(params)
    times = []
    for g in range(10):
        t0 = time.perf_counter()
        state, _ = s.step(state, task.fitness, fastes.fold_in(fastes.key(2), g),
                          fitness_args=(fastes.fold_in(fastes.key(3), g),))  # fmt: skip
        task.end_generation()
        times.append(time.perf_counter() - t0)
    res["lunarlander_generation_s"] = statistics.median(times[1:])
    task.close()
    if distributed.is_main():
        with open(out, "w") as fh:
            json.dump(res, fh)
    distributed.shutdown()


def launch(nproc: int) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        out = os.path.join(tmp, "r.json")
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone",
               f"--nproc-per-node={nproc}", __file__, "--worker", out]  # fmt: skip
        env = {**os.environ, "PYTHONPATH": ROOT, "OMP_NUM_THREADS": "1"}
        subprocess.run(cmd, check=True, env=env, timeout=600, capture_output=True)
        with open(out) as fh:
            return json.load(fh)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out")
    ap.add_argument("--worker")
    args = ap.parse_args()
    if args.worker:
        worker(args.worker)
        return
    from _common import environment, write_json

    one, two = launch(1), launch(2)
    speedup = one["lunarlander_generation_s"] / two["lunarlander_generation_s"]
    result = {
        "environment": environment("cpu"),
        "processes_1": one,
        "processes_2": two,
        "lunarlander_speedup_2_vs_1": speedup,
        "command": "python benchmarks/distributed.py --out benchmarks/results/distributed_cpu.json",
    }
    print(json.dumps(result, indent=2))
    if args.out:
        write_json(args.out, result)


if __name__ == "__main__":
    main()
