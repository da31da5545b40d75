"""Population-based training of 32 digit classifiers at once, in one batched program.

32 MLPs (64-64-10) learn scikit-learn's digits with SGD + momentum + weight decay; each member
has its own learning rate, momentum and weight decay, drawn from the search space below. Every
100 steps the members are scored on a validation split, the worst quarter copies the weights,
optimizer state and hyperparameters of a random member of the best quarter, and the copies'
hyperparameters are perturbed (×1.2 / ×0.8, or resampled with probability 0.25): Ray Tune's PBT
rule, run by ``fastes.pbt.VectorizedPBT`` as one ``vmap`` over members.

    python examples/08_vectorized_pbt.py
    python examples/08_vectorized_pbt.py --steps 300     # a quick check
"""

from __future__ import annotations

import argparse
import importlib.util
import pathlib
import time

import torch
from torch import nn
from torch.func import functional_call

import fastes
from fastes import optim, pbt

SPACE = {
    "lr": pbt.Float(1e-3, 1.0, log=True),
    "momentum": pbt.Float(0.0, 0.99),
    "weight_decay": pbt.Float(1e-6, 1e-2, log=True),
}


def optimizer(hp: dict) -> optim.GradientTransformation:
    """SGD with heavy-ball momentum and decoupled weight decay, one set of values per member."""
    return optim.chain(optim.momentum(hp["lr"], beta=hp["momentum"]),
                       optim.add_decayed_weights(hp["weight_decay"], hp["lr"]))  # fmt: skip


def model() -> nn.Module:
    return nn.Sequential(nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 10))


def digits(seed: int = 0):
    """Train / validation / test: the demo's 80/20 split, with 25% of train held for validation
    (PBT's fitness); the test split is only used to report the chosen member."""
    path = pathlib.Path(__file__).with_name("01_digits_accuracy.py")
    spec = importlib.util.spec_from_file_location("digits_demo", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    xtr, ytr, xte, yte = mod.load_digits_split(seed)
    n_val = len(xtr) // 4
    return (xtr[n_val:], ytr[n_val:]), (xtr[:n_val], ytr[:n_val]), (xte, yte)


def test_accuracy(params: dict, x: torch.Tensor, y: torch.Tensor) -> float:
    """Accuracy of one member's params (e.g. ``result.best_state``) on (x, y)."""
    with torch.no_grad():
        return float((functional_call(model(), params, (x,)).argmax(-1) == y).double().mean())


def train(seed: int = 0, steps: int = 2000, population: int = 32, interval: int = 100,
          **pbt_args) -> tuple[pbt.PBTResult, float]:  # fmt: skip
    """One PBT run; returns its result and the held-out accuracy of its best member."""
    train_set, (xv, yv), (xte, yte) = digits(seed)
    pop = pbt.VectorizedPBT(model(), pbt_args.pop("space", SPACE),
                            pbt_args.pop("optimizer", optimizer), population_size=population,
                            key=fastes.key(seed), interval=interval, **pbt_args)  # fmt: skip
    result = pop.run(train_set, steps=steps, batch_size=64, fitness=lambda p: p.accuracy(xv, yv))
    return result, test_accuracy(result.best_state, xte, yte)


def main(argv=None) -> float:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--steps", type=int, default=2000)
    ap.add_argument("--population", type=int, default=32)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    t0 = time.perf_counter()
    result, test = train(args.seed, args.steps, args.population)
    for r in result.history:
        print(f"step {r['step']:5d}: validation accuracy best {r['fitness_best']:.3f} "
              f"mean {r['fitness_mean']:.3f}; best member lr {r['hp_lr']:.3g} momentum "
              f"{r['hp_momentum']:.2f} wd {r['hp_weight_decay']:.2g}")  # fmt: skip
    hp = result.best_hyperparameters
    print(f"best member (round {result.best_round}): validation {result.best_score:.3f}, "
          f"held-out test accuracy {test:.3f}; lr {hp['lr']:.3g}, momentum {hp['momentum']:.2f}, "
          f"weight decay {hp['weight_decay']:.2g}; {time.perf_counter() - t0:.1f} s")  # fmt: skip
    return test


if __name__ == "__main__":
    main()
