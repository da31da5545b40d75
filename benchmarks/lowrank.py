"""Low-rank ES (eggroll) throughput vs plain inference, and its memory at a size full-rank
members could not have.

    python benchmarks/lowrank.py --out benchmarks/results/lowrank_cpu.json

For each model and population size P, every member sees B inputs of its own:

* ``plain``: the unperturbed model on the same P·B inputs, one batched forward (no_grad);
* ``eggroll r``: one whole ES generation — draw the factors, the population forward, fitness,
  shaping, the update GEMMs and the optimizer step — with SGD and with Adam;
* ``full-rank``: one openai_es generation through the vmap path on materialised members (P = 64
  only: at 256 members of 4.2 M parameters the members alone need 4.3 GB, at 1024 17 GB).

Throughput = members' inputs per second; the ratio eggroll / plain is the target (>= 0.7 at
r = 1; the SGD step is the paper's update, Adam adds its D-sized passes). The runners of one row
are timed in turn (plain, eggroll, plain, ...) ``--repeats`` times, each timed call right after
an untimed one; times are medians, a ratio is the median of the per-repetition ratios. All in
one process and one run.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from _common import environment, peak_rss_growth, timer, write_json  # noqa: E402

import fastes  # noqa: E402
from fastes.nn import TinyTransformer  # noqa: E402
from fastes.strategies import make  # noqa: E402


def mlp(width: int = 1024, layers: int = 4) -> torch.nn.Sequential:
    mods: list[torch.nn.Module] = []
    for i in range(layers):
        mods += [torch.nn.Linear(width, width)] + ([torch.nn.ReLU()] if i < layers - 1 else [])
    return torch.nn.Sequential(*mods)


def models():
    torch.manual_seed(0)
    yield "mlp 4x1024", mlp(), lambda P, B: torch.randn(P, B, 1024), 8
    tr = TinyTransformer(vocab=64, d_model=256, n_heads=4, n_layers=4, max_len=16)
    yield "transformer 4x256", tr, lambda P, B: torch.randint(0, 64, (P, B, 16)), 2


def interleaved(runners: dict, repeats: int) -> dict:
    """Median seconds of each runner, their repetitions interleaved (plain, eggroll, plain, ...)
    so a slow spell of this shared machine hits all of them alike (timed one runner after
    another, a P = 64 plain forward once read 46 ms instead of 25 and its ratio 1.3). Each timed
    call follows an untimed call of the same runner, as generations follow one another in a
    training loop: right after another runner's allocations, glibc has returned the D-sized
    blocks to the OS and a first call pays their page faults again (~4 ms of 34 at P = 64)."""
    times: dict[str, list[float]] = {k: [] for k in runners}
    for _ in range(repeats):
        for k, fn in runners.items():
            times[k].append(timer("cpu", fn, 1))  # one warm-up call, then the timed one
    return times


def medians(times: dict) -> dict:
    """Median seconds per runner, and per eggroll runner the median over repetitions of
    plain / eggroll within the repetition (neighbours in time share the machine's state)."""
    out = {k: statistics.median(v) for k, v in times.items()}
    for k, v in times.items():
        if k.startswith("eggroll_"):
            ratio = statistics.median(p / t for p, t in zip(times["plain_s"], v, strict=True))
            out["ratio_" + k[len("eggroll_") : -2]] = ratio
    return out


def throughput_rows(populations, ranks, repeats: int, full_rank: bool) -> list[dict]:
    rows = []
    for name, net, make_x, B in models():
        net.eval()
        p = {k: v.detach() for k, v in net.named_parameters()}
        D = sum(v.numel() for v in p.values())
        for P in populations:
            x = make_x(P, B)

            def plain(net=net, x=x, P=P, B=B):
                with torch.no_grad():
                    return net(x.reshape(P * B, *x.shape[2:]))

            row = {"model": name, "D": D, "P": P, "B": B}

            def fitness(pop, x=x):
                return pop(x, in_dims=0).float().flatten(1).mean(1)

            runners = {"plain_s": plain}
            for r in ranks:
                for opt in ("sgd", "adam"):
                    optimizer = (fastes.optim.sgd if opt == "sgd" else fastes.optim.adam)(1e-3)
                    s = make("eggroll", p, module=net, rank=r, sigma=0.01, population_size=P,
                             optimizer=optimizer)  # fmt: skip
                    st = s.init(p)
                    key = fastes.key(1)
                    runners[f"eggroll_r{r}_{opt}_s"] = lambda s=s, st=st, key=key: s.step(
                        st, fitness, key
                    )
            row.update(medians(interleaved(runners, repeats)))
            t_plain = row["plain_s"]
            if full_rank and P == 64:
                apply = fastes.functional(net)
                s = make("openai_es", p, sigma=0.01, population_size=P, mode="vmap",
                         optimizer=fastes.optim.sgd(1e-3), chunk_size=P)  # fmt: skip
                st = s.init(p)

                def fr_fitness(q, apply=apply, x=x):  # one member, B inputs (x[0]: same work)
                    return apply(q, x[0]).float().mean()

                t = timer("cpu", lambda s=s, st=st: s.step(st, fr_fitness, fastes.key(1)), repeats)
                row["full_rank_sgd_s"] = t
                row["ratio_full_rank"] = t_plain / t
            rows.append(row)
            print(_line(row), flush=True)
    return rows


def _line(row: dict) -> str:
    parts = [f"{row['model']:<18} P={row['P']:<5} plain {row['plain_s'] * 1e3:8.1f} ms"]
    for k, v in row.items():
        if k.startswith("ratio"):
            parts.append(f"{k[6:]} {v:.2f}")
    return " | ".join(parts)


MEMORY_SETUP = """
import torch, fastes
from fastes.strategies import make
torch.manual_seed(0)
layers = []
for i in range(4):
    layers += [torch.nn.Linear(4096, 4096), torch.nn.ReLU()]
net = torch.nn.Sequential(*layers[:-1])
p = {k: v.detach() for k, v in net.named_parameters()}
P = 1024
x = torch.randn(P, 1, 4096)
s = make("eggroll", p, module=net, rank=1, sigma=0.01, population_size=P,
         optimizer=fastes.optim.sgd(1e-3))
st = s.init(p)
f = lambda pop: pop(x, in_dims=0).mean((1, 2))
"""


def memory_row(path: str) -> dict:
    D = 4 * (4096 * 4096 + 4096)
    P = 1024
    grown, why = peak_rss_growth(MEMORY_SETUP, "s.step(st, f, fastes.key(1))", path)
    return {
        "model": "mlp 4x4096", "D": D, "P": P, "rank": 1, "B": 1,
        "peak_rss_growth_bytes": grown, "error": why,
        "full_rank_members_bytes": P * D * 4,
        "factors_bytes": (P // 2) * 1 * (4096 + 4096) * 4 * 4,
        "params_bytes": D * 4,
    }  # fmt: skip


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--populations", type=int, nargs="+", default=[64, 256, 1024])
    ap.add_argument("--ranks", type=int, nargs="+", default=[1, 4, 16])
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--no-full-rank", action="store_true")
    ap.add_argument("--no-memory", action="store_true")
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    rows = throughput_rows(args.populations, args.ranks, args.repeats, not args.no_full_rank)
    result = {"environment": environment(), "throughput": rows}
    if not args.no_memory:
        here = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
        result["memory"] = memory_row(here)
        m = result["memory"]
        print(
            f"memory, mlp 4x4096 P=1024 r=1: peak RSS growth {m['peak_rss_growth_bytes']} B "
            f"(full-rank members would be {m['full_rank_members_bytes'] / 2**30:.0f} GiB)"
        )
    if args.out:
        write_json(args.out, result)


if __name__ == "__main__":
    main()
