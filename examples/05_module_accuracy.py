"""Digits classifier trained with the stateful ES optimizer: block sampling, two objectives.

The pytorch-optimize workflow, re-done on fastes: wrap an ``nn.Module`` and any ``torch.optim``
optimizer (Adam here) in ``fastes.ESOptimizer``; each step perturbs and updates one layer
(bottom-up, cycling), and the fitness has two objectives — minibatch accuracy and negative
cross-entropy — each shaped to centered ranks, then weighted 1.0 / 0.25.

    python examples/05_module_accuracy.py
    python examples/05_module_accuracy.py --steps 100   # a quick check
"""

from __future__ import annotations

import argparse
import importlib.util
import pathlib
import time

import torch

import fastes


def _digits():
    path = pathlib.Path(__file__).with_name("01_digits_accuracy.py")
    spec = importlib.util.spec_from_file_location("digits_demo", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod.load_digits_split


def objective(net, x, y):
    """Two objectives per member: accuracy (the target) and −cross-entropy (a smoother guide)."""
    logits = net(x)
    accuracy = (logits.argmax(-1) == y).float().mean()
    return torch.stack([accuracy, -torch.nn.functional.cross_entropy(logits, y)])


def main(argv=None) -> float:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--steps", type=int, default=2000)
    ap.add_argument("--population", type=int, default=128)
    ap.add_argument("--sigma", type=float, default=0.05)
    ap.add_argument("--lr", type=float, default=0.02)
    ap.add_argument("--blocks", default="bottom_up", choices=fastes.es_optimizer.BLOCK_ORDERS)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)

    torch.manual_seed(args.seed)
    xtr, ytr, xte, yte = _digits()(args.seed)
    model = torch.nn.Sequential(torch.nn.Linear(64, 32), torch.nn.Tanh(), torch.nn.Linear(32, 10))
    es = fastes.ESOptimizer(
        model, torch.optim.Adam(model.parameters(), lr=args.lr), objective,
        population_size=args.population, sigma=args.sigma, blocks=args.blocks,
        objective_weights=[1.0, 0.25], seed=args.seed,
    )  # fmt: skip
    batches = torch.Generator().manual_seed(args.seed)
    t0 = time.perf_counter()
    for step in range(args.steps):
        idx = torch.randint(0, xtr.shape[0], (256,), generator=batches)
        result = es.step(xtr[idx], ytr[idx])
        if step % 250 == 0 or step == args.steps - 1:
            acc, neg_ce = result.stats.mean.tolist()
            print(
                f"step {step:5d} block {result.block:>3s}: "
                f"batch accuracy {acc:.3f}, CE {-neg_ce:.3f}"
            )
    with torch.no_grad():
        test_acc = (model(xte).argmax(-1) == yte).float().mean().item()
    print(
        f"{args.steps} steps in {time.perf_counter() - t0:.1f} s: held-out accuracy {test_acc:.3f}"
    )
    return test_acc


if __name__ == "__main__":
    main()
