"""Run by tests/test_pbt_process.py under torchrun: ProcessPBT with members sharded over the
ranks; rank 0 writes the history, best score and final checkpoints to OUT (torch.save)."""

import sys

import torch

import fastes
from fastes import distributed, pbt

SPACE = {"lr": pbt.Float(1e-3, 1.0, log=True), "decay": pbt.Float(0.0, 0.5)}


def train(c: pbt.Candidate) -> pbt.Candidate:
    """Deterministic toy training: a weight vector pulled towards a target at rate lr."""
    w = torch.zeros(4) if c.checkpoint is None else c.checkpoint["w"]
    g = torch.Generator().manual_seed(int(c.key[0]) + (int(c.key[1]) << 32))
    for _ in range(5):
        w = w + c.hyperparameters["lr"] * (torch.arange(4.0) - w) + 0.01 * torch.randn(4, generator=g)
        w = w * (1 - c.hyperparameters["decay"] * 0.01)
    c.checkpoint = {"w": w}
    c.fitness = -float((w - torch.arange(4.0)).norm())
    return c


def run(run_dir: str, rounds: int = 4):
    pop = pbt.ProcessPBT(train, SPACE, population_size=6, key=fastes.key(3))
    result = pop.run(rounds, run_dir=run_dir)
    return pop, result


if __name__ == "__main__":
    out, run_dir = sys.argv[1], sys.argv[2]
    group = distributed.init(timeout_s=60)
    pop, result = run(run_dir)
    if distributed.is_main():
        torch.save({"world_size": group.world_size, "history": result.history,
                    "best_score": result.best_score, "best_state": result.best_state}, out)
    distributed.shutdown()
