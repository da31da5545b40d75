"""Locomotion through the CLI presets, against published thresholds.

    python benchmarks/locomotion.py --out benchmarks/results/locomotion_cpu.json
    python benchmarks/locomotion.py --task gym:BipedalWalker-v3 \
        --out benchmarks/results/bipedalwalker_cpu.json

BipedalWalker-v3 (Box2D): the preset's ARS on a linear policy with training rewards clipped to
±1, until the mean of 10 evaluation episodes (true returns) is >= 300, the env's "solved"
score, three evaluations in a row; then 100 unseen episodes.

For each seed: ``fastes train gym:HalfCheetah-v5 --workers 2 --seed S --plot`` with the preset
(ARS V2-t, linear policy, Mania et al. 2018's HalfCheetah settings; the run stops once the
unperturbed policy's mean over 10 evaluation episodes reaches their threshold, 3430, on three
evaluations in a row, at most 300 generations), then
``fastes eval RUN --episodes 100`` on unseen episodes. Recorded: generations, training env steps
(plus the evaluation episodes' steps), wall time, the learning curve (history.csv, and seed 0's
PNG copied to ``benchmarks/results/``) and the 100-episode score.
"""

from __future__ import annotations

import argparse
import csv
import os
import re
import shutil
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from _common import environment, write_json  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))


def fastes(*args: str) -> str:
    out = subprocess.run([sys.executable, "-m", "fastes", *args], capture_output=True, text=True)
    if out.returncode:
        raise SystemExit(f"fastes {' '.join(args)} failed:\n{out.stderr[-2000:]}")
    return out.stdout


def run(task: str, seed: int, workers: int, runs: str) -> dict:
    run_dir = os.path.join(runs, f"{task.replace(':', '_')}-{seed}")
    shutil.rmtree(run_dir, ignore_errors=True)
    t0 = time.perf_counter()
    fastes("train", task, "--workers", str(workers), "--seed", str(seed), "--run-dir", run_dir,
           "--plot", "--no-progress")  # fmt: skip
    seconds = time.perf_counter() - t0
    with open(os.path.join(run_dir, "history.csv")) as fh:
        rows = list(csv.DictReader(fh))
    evals = [(int(r["generation"]), float(r["score"])) for r in rows if r["score"]]
    text = fastes("eval", run_dir, "--episodes", "100")
    m = re.search(r"(-?[\d.]+) ± ([\d.]+)", text)
    result = {
        "task": task, "seed": seed, "generations": len(rows), "wall_s": seconds,
        "train_env_steps": int(float(rows[-1]["env_steps"])),
        "evaluations": evals, "eval_100": text.strip().splitlines()[-1],
        "eval_100_mean": float(m.group(1)) if m else None,
        "eval_100_std": float(m.group(2)) if m else None,
        "curve": [float(r["fitness_mean"]) for r in rows],
    }  # fmt: skip
    print(f"{task} seed {seed}: {result['generations']} generations, "
          f"{result['train_env_steps']:,} env steps, {seconds:.0f} s; evaluations {evals}; "
          f"100 unseen episodes: {result['eval_100']}", flush=True)  # fmt: skip
    return result, run_dir


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--task", default="gym:HalfCheetah-v5")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--runs", default="runs")
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    results = []
    for seed in args.seeds:
        result, run_dir = run(args.task, seed, args.workers, args.runs)
        results.append(result)
        if seed == args.seeds[0] and args.out:
            name = args.task.split(":")[-1].split("-")[0].lower()
            shutil.copy(os.path.join(run_dir, "curve.png"),
                        os.path.join(HERE, "results", f"{name}_curve.png"))  # fmt: skip
    if args.out:
        write_json(args.out, {"environment": environment(), "runs": results})


if __name__ == "__main__":
    main()
