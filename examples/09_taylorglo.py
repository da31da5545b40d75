"""Evolving the loss function itself: TaylorGLO coefficients as PBT hyperparameters.

The TaylorGLO loss (Gonzalez & Miikkulainen, https://arxiv.org/abs/2002.00059) is a third-order
Taylor polynomial in (label, prediction) with eight coefficients; ``fastes.pbt.taylorglo``
derives it. Here the coefficients are hyperparameters of a vectorized PBT population (32 MLPs on
digits, as in example 08), evolved together with the learning rate and momentum, starting from
the expansion of cross-entropy around (0, 0.5). The baseline is the same PBT with cross-entropy
and the same budget (steps, members, schedule, initial lr and momentum). Both report the
held-out test accuracy of their best member.

    python examples/09_taylorglo.py
    python examples/09_taylorglo.py --steps 300     # a quick check
"""

from __future__ import annotations

import argparse
import importlib.util
import pathlib
import time

import fastes
from fastes import pbt


def _example_08():
    path = pathlib.Path(__file__).with_name("08_vectorized_pbt.py")
    spec = importlib.util.spec_from_file_location("pbt_example", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def taylorglo_loss(outputs, targets, hp):
    return pbt.taylorglo_loss(outputs, targets, hp)


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--steps", type=int, default=1500)
    ap.add_argument("--population", type=int, default=32)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    ex = _example_08()
    base = {"lr": ex.SPACE["lr"], "momentum": ex.SPACE["momentum"]}
    opt = lambda hp: ex.optim.momentum(hp["lr"], beta=hp["momentum"])  # noqa: E731
    glo = pbt.as_space({**base, **pbt.taylorglo_space()})
    # Both runs start from the same sampled lr and momentum; TaylorGLO's θ start at the
    # expansion of cross-entropy (the space's defaults) and evolve from there.
    initial = glo.sample(fastes.key(args.seed + 1000), args.population)
    initial.update(
        {k: v for k, v in glo.defaults(args.population).items() if k.startswith("theta")}
    )
    out = {}
    for name, space, loss in (("cross-entropy", base, None), ("TaylorGLO", glo, taylorglo_loss)):
        t0 = time.perf_counter()
        start = {k: initial[k] for k in pbt.as_space(space).dims}
        result, test = ex.train(args.seed, args.steps, args.population, space=space,
                                optimizer=opt, loss_fn=loss, initial=start)  # fmt: skip
        out[name] = test
        hp = result.best_hyperparameters
        theta = [round(hp[k], 2) for k in pbt.taylorglo.NAMES if k in hp]
        print(f"{name}: validation {result.best_score:.3f}, held-out test accuracy {test:.3f} "
              f"(lr {hp['lr']:.3g}, momentum {hp['momentum']:.2f}"
              f"{f', θ {theta}' if theta else ''}); {time.perf_counter() - t0:.1f} s")  # fmt: skip
    return out


if __name__ == "__main__":
    main()
