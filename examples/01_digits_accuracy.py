"""Train an MLP on scikit-learn's digits by directly maximizing minibatch accuracy with ES.

Accuracy is piecewise constant, so backprop has no gradient to follow; ES only needs to compare
members. Each generation samples a minibatch, evaluates every member on it in one vmap'd
``functional_call`` pass, shapes the accuracies into centered ranks and takes an Adam step on the
ES gradient. Runs on the CPU in about a minute; held-out accuracy is reported at the end.

    python examples/01_digits_accuracy.py              # `make demo`
    python examples/01_digits_accuracy.py --generations 50 --no-progress   # a quick check
"""

from __future__ import annotations

import argparse
import time

import torch

import fastes


def load_digits_split(seed: int = 0):
    """Digits (1797 8x8 images, bundled with scikit-learn: no download), 80/20 stratified."""
    try:
        from sklearn.datasets import load_digits
        from sklearn.model_selection import train_test_split
    except ImportError as e:  # pragma: no cover - the demo extra installs it
        raise SystemExit('this example needs scikit-learn: pip install "fastes[demo]"') from e
    x, y = load_digits(return_X_y=True)
    xtr, xte, ytr, yte = train_test_split(x, y, test_size=0.2, random_state=seed, stratify=y)
    f = lambda a: torch.tensor(a / 16.0, dtype=torch.float32)
    return f(xtr), torch.tensor(ytr), f(xte), torch.tensor(yte)


def progress(total: int, enabled: bool):
    if enabled:
        try:
            from tqdm import tqdm

            return tqdm(total=total, unit="gen", dynamic_ncols=True)
        except ImportError:
            print('(progress bar needs tqdm: pip install "fastes[demo]"; printing instead)')
    return None


def main(argv=None) -> float:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--generations", type=int, default=3000)
    ap.add_argument("--population", type=int, default=256)
    ap.add_argument("--sigma", type=float, default=0.05)
    ap.add_argument("--lr", type=float, default=0.03)
    ap.add_argument("--batch", type=int, default=256)
    ap.add_argument("--hidden", type=int, default=32)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--no-progress", action="store_true")
    args = ap.parse_args(argv)

    torch.manual_seed(args.seed)  # initial weights only; all ES noise comes from fastes keys
    xtr, ytr, xte, yte = load_digits_split(args.seed)
    model = torch.nn.Sequential(
        torch.nn.Linear(64, args.hidden), torch.nn.Tanh(), torch.nn.Linear(args.hidden, 10)
    )
    apply = fastes.functional(model)
    params = {n: p.detach() for n, p in model.named_parameters()}

    def accuracy(p, x, y):  # one member's fitness: fraction of the batch classified right
        return (apply(p, x).argmax(-1) == y).float().mean()

    opt = fastes.optim.adam(args.lr)
    state = opt.init(params)
    run_key = fastes.key(args.seed)
    batches = torch.Generator().manual_seed(args.seed)
    bar = progress(args.generations, not args.no_progress)
    t0 = time.perf_counter()
    for gen in range(args.generations):
        idx = torch.randint(0, xtr.shape[0], (args.batch,), generator=batches)
        grad, stats = fastes.estimate_grad(
            params, accuracy, fastes.fold_in(run_key, gen),
            population_size=args.population, sigma=args.sigma,
            fitness_args=(xtr[idx], ytr[idx]),
        )  # fmt: skip
        updates, state = opt.update(grad, state, params)
        params = fastes.optim.apply_updates(params, updates)
        if bar is not None:
            bar.update(1)
            bar.set_postfix(batch_acc=f"{stats.mean.item():.3f}", best=f"{stats.max.item():.3f}")
        elif gen % 50 == 0 or gen == args.generations - 1:
            print(f"gen {gen:4d}  mean batch accuracy {stats.mean.item():.3f}")
    if bar is not None:
        bar.close()
    elapsed = time.perf_counter() - t0
    with torch.no_grad():
        test_acc = accuracy(params, xte, yte).item()
        train_acc = accuracy(params, xtr, ytr).item()
    print(
        f"{args.generations} generations x {args.population} members in {elapsed:.1f} s: "
        f"train accuracy {train_acc:.3f}, held-out accuracy {test_acc:.3f}"
    )
    return test_acc


if __name__ == "__main__":
    main()
