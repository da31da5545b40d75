"""Train a small transformer to sort digits with low-rank ES, on a reward with no gradient.

A 2-layer transformer (fastes.nn.TinyTransformer, d = 64) reads 6 random digits and must output
them sorted, one token per position. The fitness is the fraction of output tokens that are right
(argmax: no gradient exists), on a fresh batch of sequences each generation shared by every
member. ``eggroll`` perturbs every nn.Linear / nn.Embedding weight by a rank-r matrix and runs
the whole population through the model at once (one shared GEMM per layer, per-member thin
corrections); the update is one GEMM per weight. The score reported is exact-match accuracy
(all 6 tokens right) on 2000 held-out sequences.

    python examples/10_lowrank_transformer.py                 # ~10 minutes on a 2-core CPU
    python examples/10_lowrank_transformer.py --generations 30   # a quick check
"""

from __future__ import annotations

import argparse
import time

import torch

import fastes
from fastes.nn import TinyTransformer

LENGTH, VOCAB = 6, 10


def batch(key: torch.Tensor, n: int) -> tuple[torch.Tensor, torch.Tensor]:
    """n sequences of LENGTH random digits and their sorted versions, drawn from ``key``."""
    u = fastes.noise.uniform(key, (n, LENGTH), [0.0], [float(VOCAB)])[..., 0]
    x = u.floor().long().clamp_(0, VOCAB - 1)
    return x, x.sort(dim=-1).values


def token_accuracy(population, x, y):
    """(P,) fraction of right tokens per member: the fitness (argmax: not differentiable)."""
    return (population(x).argmax(-1) == y).float().mean(dim=(1, 2))


@torch.no_grad()
def accuracy(net, params, x, y) -> tuple[float, float]:
    """(exact-match, per-token) accuracy of ``params`` on (x, y)."""
    right = torch.func.functional_call(net, params, (x,)).argmax(-1) == y
    return float(right.all(-1).float().mean()), float(right.float().mean())


def main(argv=None) -> tuple[float, float]:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--generations", type=int, default=900)
    ap.add_argument("--population", type=int, default=256)
    ap.add_argument("--rank", type=int, default=4)
    ap.add_argument("--batch", type=int, default=64, help="sequences per generation")
    ap.add_argument("--sigma", type=float, default=0.03)
    ap.add_argument("--lr", type=float, default=0.01)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)

    torch.manual_seed(args.seed)
    net = TinyTransformer(VOCAB, d_model=64, n_heads=4, n_layers=2, max_len=LENGTH).eval()
    params = {k: v.detach() for k, v in net.named_parameters()}
    strategy = fastes.strategies.make(
        "eggroll", params, module=net, rank=args.rank, sigma=args.sigma,
        learning_rate=args.lr, population_size=args.population,
    )  # fmt: skip
    state = strategy.init(params)
    key = fastes.key(args.seed)
    x_test, y_test = batch(fastes.fold_in(key, 2**40), 2000)
    print(f"D = {strategy.dim} parameters, P = {args.population}, rank {args.rank}")
    t0 = time.perf_counter()
    for g in range(args.generations):
        es_key, data_key = fastes.split(fastes.fold_in(key, g))
        x, y = batch(data_key, args.batch)
        state, stats = strategy.step(state, token_accuracy, es_key, fitness_args=(x, y))
        if g % 100 == 0:
            exact, token = accuracy(net, strategy.params(state), x_test, y_test)
            print(f"gen {g:5d}  held-out exact match {exact:.3f}, tokens {token:.3f}  "
                  f"{time.perf_counter() - t0:6.1f} s", flush=True)  # fmt: skip
    exact, token = accuracy(net, strategy.params(state), x_test, y_test)
    print(f"final, {args.generations} generations in {time.perf_counter() - t0:.0f} s: held-out "
          f"exact match {exact:.3f}, tokens {token:.3f}")  # fmt: skip
    return exact, token


if __name__ == "__main__":
    main()
