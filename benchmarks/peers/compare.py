"""fastes vs evosax, EvoTorch and EvoX on the same ES problems, in one run.

Every library runs the same OpenAI-ES generation — antithetic sampling, centered ranks, plain SGD,
fixed σ — configured as its own documentation recommends for speed:

* evosax (JAX): ``Open_ES`` with ``optax.sgd``, ``ask`` / ``tell`` under ``jax.jit``, fitness
  evaluated inside one jitted function.
* EvoTorch: it has no OpenAI-ES class; its PGPE with ``stdev_learning_rate=0``,
  ``optimizer="sgd"``, ``ranking_method="centered"``, ``symmetric=True`` is that algorithm, on a
  ``vectorized=True`` Problem. Its centre gradient is σ² times OpenAI-ES's (it uses ε = σz, not
  z/σ), so ``center_learning_rate = lr / σ²`` gives the identical update.
* EvoX (PyTorch): ``OpenES`` in a ``StdWorkflow``. Its OpenES uses raw fitness, so the EvoX
  problem returns the centered ranks of the fitness — the same update as the others.

Problems (all minimized by the peers, maximized as −f by fastes):
1. sphere and Rastrigin at (D, P) in {(1e3, 256), (1e5, 256), (1e6, 1024)}: median ms per
   generation (alternating repetitions across libraries, after a warm-up that includes JIT
   compilation) and peak RSS growth over set-up plus two generations (a fresh process per
   library, measured from the RSS after the imports);
2. neuroevolution: MLP 64-64-64-10 (tanh) on digits, P = 1024, fitness = accuracy on a 256-sample
   minibatch: generations per second;
3. the fitness of the centre after a fixed number of generations of each problem.

    pip install -e ".[peers]"
    python benchmarks/peers/compare.py --out benchmarks/results/peers_cpu.json
    python benchmarks/peers/compare.py --quick         # small sizes, whatever is installed
    python benchmarks/peers/compare.py --device cuda --out benchmarks/results/peers_gpu.json
"""

from __future__ import annotations

import argparse
import importlib.util
import math
import os
import statistics
import subprocess
import sys
import time

import torch

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))
from _common import environment, peak_rss_growth, write_json  # noqa: E402

SIGMA, LR = 0.02, 0.01
# Where every library runs: "cpu", or "cuda" (--device; child processes read it from the
# environment). On a GPU each step ends with the device's work finished, so wall-clock times are
# the generation's.
DEVICE = os.environ.get("FASTES_PEERS_DEVICE", "cpu")


def _sync():
    if DEVICE != "cpu":
        torch.cuda.synchronize()


def sphere_t(x):
    return (x * x).sum(-1)


def rastrigin_t(x):
    return 10 * x.shape[-1] + (x * x - 10 * torch.cos(2 * math.pi * x)).sum(-1)


TORCH_PROBLEMS = {"sphere": sphere_t, "rastrigin": rastrigin_t}


def centered_ranks_t(f):
    ranks = torch.argsort(torch.argsort(f)).to(f.dtype)
    return ranks / (f.numel() - 1) - 0.5


# -- runners: setup(problem, D, P, x0) then step(); center() returns the mean as a torch tensor --


def _start(x0, D):
    x = x0.clone().float() if isinstance(x0, torch.Tensor) else torch.full((D,), float(x0))
    return x.to(DEVICE)


class FastesRunner:
    name = "fastes"

    def __init__(self, problem, D, P, x0, fitness=None, args=()):
        import fastes

        self.fastes = fastes
        self.theta = _start(x0, D)
        f = fitness or TORCH_PROBLEMS[problem]
        fit = lambda x, *a: -f(x, *a)  # noqa: E731 — fastes maximizes
        kw = dict(population_size=P, sigma=SIGMA, learning_rate=LR)
        # One generation from (θ, key, *fitness args); the compiled runner compiles this.
        self.generation = lambda th, k, *a: fastes.es_step(th, fit, k, fitness_args=a, **kw)
        self.key, self.t, self.args = fastes.key(0, device=DEVICE), 0, args

    def step(self):
        k = self.fastes.fold_in(self.key, self.t)
        self.theta = self.generation(self.theta, k, *self.args)
        _sync()
        self.t += 1

    def center(self):
        return self.theta


class FastesCompiledRunner(FastesRunner):
    """``es_step`` under ``torch.compile(fullgraph=True)`` (GPU runs only: Inductor takes tens
    of seconds a graph on the dev CPU). The noise table is made before compiling (the graph
    reads it at D <= 4.2 M); the first step's compile is part of the warm-up, not the timing."""

    name = "fastes-compiled"

    def __init__(self, problem, D, P, x0, fitness=None, args=()):
        super().__init__(problem, D, P, x0, fitness, args)
        self.fastes.noise_table(device=self.theta.device)
        self.generation = torch.compile(self.generation, fullgraph=True)


class EvosaxRunner:
    name = "evosax"

    def __init__(self, problem, D, P, x0, fitness=None, args=()):
        import jax
        import jax.numpy as jnp
        import optax
        from evosax.algorithms import Open_ES

        if DEVICE == "cpu":
            jax.config.update("jax_platforms", "cpu")
        es = Open_ES(
            population_size=P, solution=jnp.zeros(D), use_antithetic_sampling=True,
            optimizer=optax.sgd(LR), std_schedule=optax.constant_schedule(SIGMA),
        )  # fmt: skip
        self.params = es.default_params
        self.state = es.init(
            jax.random.key(0), jnp.asarray(_start(x0, D).cpu().numpy()), self.params
        )
        if fitness is None:
            fitness = {
                "sphere": lambda x: (x * x).sum(-1),
                "rastrigin": lambda x: (
                    10 * x.shape[-1] + (x * x - 10 * jnp.cos(2 * jnp.pi * x)).sum(-1)
                ),
            }[problem]
        self.args = args

        def generation(key, state, params, *args):
            k1, k2 = jax.random.split(key)
            pop, state = es.ask(k1, state, params)
            state, _ = es.tell(k2, pop, fitness(pop, *args), state, params)
            return state

        self.generation = jax.jit(generation)
        self.key, self.jax = jax.random.key(0), jax

    def step(self):
        self.key, k = self.jax.random.split(self.key)
        self.state = self.generation(k, self.state, self.params, *self.args)
        self.state.mean.block_until_ready()

    def center(self):
        import numpy as np

        return torch.from_numpy(np.asarray(self.state.mean)).to(DEVICE)


class EvoTorchRunner:
    name = "evotorch"

    def __init__(self, problem, D, P, x0, fitness=None, args=()):
        import logging

        from evotorch import Problem
        from evotorch.algorithms import PGPE

        logging.getLogger("evotorch").setLevel(logging.WARNING)
        f = fitness or TORCH_PROBLEMS[problem]
        self.args = args
        self.problem = Problem(
            "min", lambda x: f(x, *self.args), solution_length=D, initial_bounds=(-1, 1),
            vectorized=True, device=DEVICE,
        )  # fmt: skip
        self.searcher = PGPE(
            self.problem, popsize=P, center_learning_rate=LR / SIGMA**2, stdev_learning_rate=0.0,
            stdev_init=SIGMA, optimizer="sgd", ranking_method="centered", symmetric=True,
            center_init=_start(x0, D),
        )  # fmt: skip

    def step(self):
        self.searcher.step()
        _sync()

    def center(self):
        return self.searcher.status["center"].detach().clone()


class EvoXRunner:
    name = "evox"

    def __init__(self, problem, D, P, x0, fitness=None, args=()):
        from evox.algorithms import OpenES
        from evox.core import Problem
        from evox.workflows import StdWorkflow

        f = fitness or TORCH_PROBLEMS[problem]
        runner = self

        class Ranked(Problem):
            def evaluate(self, pop):
                return centered_ranks_t(f(pop, *runner.args))

        self.args = args
        self.algo = OpenES(
            pop_size=P, center_init=_start(x0, D), learning_rate=LR, noise_stdev=SIGMA,
            mirrored_sampling=True, device=torch.device(DEVICE),  # else torch's default device
        )  # fmt: skip
        self.wf = StdWorkflow(self.algo, Ranked())
        self.wf.init_step()

    def step(self):
        self.wf.step()
        _sync()

    def center(self):
        return self.algo.center.detach().clone()


RUNNERS = {
    r.name: r
    for r in (FastesRunner, FastesCompiledRunner, EvosaxRunner, EvoTorchRunner, EvoXRunner)
}
MODULES = {"fastes": "fastes", "fastes-compiled": "fastes", "evosax": "evosax",
           "evotorch": "evotorch", "evox": "evox"}  # fmt: skip


def available():
    """The installed libraries; fastes under torch.compile on GPU runs only."""
    names = [n for n in RUNNERS if n != "fastes-compiled" or DEVICE == "cuda"]
    return [n for n in names if importlib.util.find_spec(MODULES[n]) is not None]


def versions(libs):
    """Installed distribution versions (evosax and evox have no ``__version__``)."""
    from importlib.metadata import PackageNotFoundError, version

    out = {}
    for n in libs:
        try:
            out[n] = version(n)
        except PackageNotFoundError:
            out[n] = getattr(__import__(MODULES[n]), "__version__", "unknown")
    if "evosax" in libs:
        out["jax"] = version("jax")
    return out


# Above this many population elements the peers' (P, D) matrices (several GB each, with
# temporaries) do not fit in memory side by side: libraries then run one after another, each in
# a fresh process (a library that runs out of memory is reported as such).
ALTERNATE_MAX_ELEMENTS = 5 * 10**7


def _measure(runners, reps):
    """Warm up every runner, then time ``reps`` generations each, alternating runners."""
    for r in runners.values():
        for _ in range(2):  # warm-up: evosax's jit compiles twice (initial, told state)
            r.step()
    times = {n: [] for n in runners}
    for _ in range(reps):
        for n, r in runners.items():
            t0 = time.perf_counter()
            r.step()
            times[n].append(time.perf_counter() - t0)
    return times


def run_one(problem, D, P, lib, reps, gens):
    """Time one library alone; returns its result row (used in a child process, see below)."""
    runners = {lib: RUNNERS[lib](problem, D, P, 0.5)}
    times = _measure(runners, reps)
    r = runners[lib]
    for _ in range(max(0, gens - reps - 2)):
        r.step()
    final = float(TORCH_PROBLEMS[problem](r.center().double()))
    return {"problem": problem, "D": D, "P": P, "library": lib,
            "ms_per_generation": statistics.median(times[lib]) * 1e3,
            "generations": max(gens, reps + 2), "final_fitness": final}  # fmt: skip


def _run_one_isolated(problem, D, P, lib, reps, gens):
    """run_one in a fresh process: a library that exhausts memory is reported, not fatal."""
    code = (
        f"import sys, json; sys.path.insert(0, {HERE!r}); import compare; "
        f"print(json.dumps(compare.run_one({problem!r}, {D}, {P}, {lib!r}, {reps}, {gens})))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    if out.returncode:
        why = "killed (out of memory)" if out.returncode in (-9, 137) else out.stderr[-300:]
        return {"problem": problem, "D": D, "P": P, "library": lib, "error": why}
    import json

    return json.loads(out.stdout.strip().splitlines()[-1])


def time_problems(libs, configs, reps, final_gens, out=None, res=None):
    rows = []
    for problem in ("sphere", "rastrigin"):
        for D, P in configs:
            gens = max(final_gens(D), reps + 2)
            if D * P <= ALTERNATE_MAX_ELEMENTS:
                runners = {n: RUNNERS[n](problem, D, P, 0.5) for n in libs}
                times = _measure(runners, reps)
                group = []
                for n, r in runners.items():
                    for _ in range(max(0, gens - reps - 2)):
                        r.step()
                    final = float(TORCH_PROBLEMS[problem](r.center().double()))
                    group.append({"problem": problem, "D": D, "P": P, "library": n,
                                  "ms_per_generation": statistics.median(times[n]) * 1e3,
                                  "generations": gens, "final_fitness": final,
                                  "alternating": True})  # fmt: skip
                del runners
            else:
                group = [
                    {**_run_one_isolated(problem, D, P, n, reps, gens), "alternating": False}
                    for n in libs
                ]
            for row in group:
                rows.append(row)
                if "error" in row:
                    print(f"{problem:9s} D={D:>9,} P={P:5d} {row['library']:9s} {row['error']}")
                else:
                    ms, gens_run, final = (
                        row["ms_per_generation"],
                        row["generations"],
                        row["final_fitness"],
                    )
                    lib = row["library"]
                    print(
                        f"{problem:9s} D={D:>9,} P={P:5d} {lib:9s} {ms:10.1f} ms"
                        f"   f(centre) after {gens_run} gens {final:.6g}",
                        flush=True,
                    )
            if out:  # partial results survive a later crash
                write_json(out, {**res, "time": rows})
    return rows


def peak_memory(lib, problem, D, P):
    """Peak RSS growth (bytes) of set-up plus two generations, in a fresh process.

    Measured from the RSS right after the imports, so memory a library keeps across generations
    (JAX's buffers, a stored population, fastes' noise table) counts.
    """
    measured = f"r = compare.RUNNERS[{lib!r}]({problem!r}, {D}, {P}, 0.5)\nr.step()\nr.step()"
    return peak_rss_growth("import compare", measured, HERE)


# -- neuroevolution: MLP 64-64-64-10 tanh on digits, fitness = minibatch accuracy ---------------

LAYERS = [(64, 64), (64, 64), (64, 10)]
D_MLP = sum(i * o + o for i, o in LAYERS)


def mlp_accuracy_t(pop, x, y):
    """pop (P, D) flat MLPs -> accuracy (P,) on (x, y); batched torch (EvoTorch, EvoX, fastes)."""
    squeeze = pop.dim() == 1
    pop = pop[None] if squeeze else pop
    h, o = x[None].expand(pop.shape[0], -1, -1), 0
    for k, (i, out) in enumerate(LAYERS):
        w = pop[:, o : o + i * out].reshape(-1, i, out)
        b = pop[:, o + i * out : o + i * out + out]
        o += i * out + out
        h = torch.baddbmm(b[:, None, :], h, w)
        if k < len(LAYERS) - 1:
            h = torch.tanh(h)
    acc = (h.argmax(-1) == y).float().mean(-1)
    return acc[0] if squeeze else acc


def neuro(libs, P, gens, batch):
    from sklearn.datasets import load_digits

    X, Y = load_digits(return_X_y=True)
    X = torch.tensor(X / 16.0, dtype=torch.float32)
    Y = torch.tensor(Y)
    results = {}
    for n in libs:
        fit = lambda pop, x, y: -mlp_accuracy_t(pop, x, y)  # minimized by the peers
        if n == "evosax":
            import jax.numpy as jnp

            def fit(pop, x, y):
                h, o = x[None], 0
                for k, (i, out) in enumerate(LAYERS):
                    w = pop[:, o : o + i * out].reshape(-1, i, out)
                    b = pop[:, o + i * out : o + i * out + out]
                    o += i * out + out
                    h = (
                        jnp.einsum(
                            "pbi,pio->pbo", jnp.broadcast_to(h, (pop.shape[0],) + h.shape[1:]), w
                        )
                        + b[:, None]
                    )
                    h = jnp.tanh(h) if k < len(LAYERS) - 1 else h
                return -(h.argmax(-1) == y).mean(-1)

        init = torch.randn(D_MLP, generator=torch.Generator().manual_seed(1)) * 0.1
        batches = torch.Generator().manual_seed(0)  # the same minibatches for every library
        r = None
        times = []
        for t in range(gens + 2):
            idx = torch.randint(0, X.shape[0], (batch,), generator=batches)
            xb, yb = X[idx], Y[idx]
            if n == "evosax":
                import jax.numpy as jnp

                args = (jnp.asarray(xb.numpy()), jnp.asarray(yb.numpy()))
            else:
                args = (xb, yb)
            if r is None:
                r = RUNNERS[n]("mlp", D_MLP, P, init, fitness=fit, args=args)
            r.args = args
            t0 = time.perf_counter()
            r.step()
            if t >= 2:  # two warm-up generations, as above
                times.append(time.perf_counter() - t0)
        acc = float(mlp_accuracy_t(r.center().float(), X, Y))
        results[n] = {"generations_per_s": 1 / statistics.median(times), "accuracy_all": acc}
        print(f"neuro MLP D={D_MLP} P={P} {n:9s} {results[n]['generations_per_s']:7.2f} gen/s  "
              f"accuracy on all digits after {gens} gens {acc:.3f}", flush=True)  # fmt: skip
    return results


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="small sizes (a smoke run)")
    ap.add_argument("--libs", nargs="+", default=None)
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--no-mem", action="store_true")
    ap.add_argument(
        "--sections", nargs="+", default=["time", "memory", "neuro"],
        help="what to measure; with --out, other sections already in the file are kept",
    )  # fmt: skip
    ap.add_argument("--out", default=None)
    ap.add_argument(
        "--device", default="cpu", choices=["cpu", "cuda"],
        help="run every library on this device (cuda: time only, larger sizes, one process each)",
    )  # fmt: skip
    a = ap.parse_args(argv)
    global DEVICE, ALTERNATE_MAX_ELEMENTS
    DEVICE = os.environ["FASTES_PEERS_DEVICE"] = a.device
    if DEVICE == "cuda":  # a fresh process per library: one that fails is reported, not fatal,
        ALTERNATE_MAX_ELEMENTS = 0  # and JAX's preallocation leaves the others the GPU's memory
    libs = a.libs or available()
    if a.device == "cuda" and not a.quick:  # GPU sizes; RSS and the CPU neuro task do not apply
        configs, reps, neuro_p, neuro_g = [(10**5, 256), (10**6, 1024), (10**7, 256)], a.reps, 0, 0
        final_gens = lambda D: {10**5: 30}.get(D, reps + 2)
        a.sections = [x for x in a.sections if x == "time"]
    elif a.quick:
        configs, reps, neuro_p, neuro_g = [(1000, 16)], 2, 32, 3
        final_gens = lambda D: 5
    else:
        configs, reps, neuro_p, neuro_g = (
            [(10**3, 256), (10**5, 256), (10**6, 1024)],
            a.reps,
            1024,
            50,
        )
        final_gens = lambda D: {10**3: 300, 10**5: 30}.get(D, reps + 2)
    print(f"libraries: {versions(libs)}")
    res = {}
    if a.out and os.path.exists(a.out) and set(a.sections) != {"time", "memory", "neuro"}:
        import json

        with open(a.out) as fh:
            res = json.load(fh)
    env = environment(DEVICE)
    # Which run measured each section (sections merged from an earlier run keep their env).
    env_of = res.get("env_of", {k: res["env"] for k in ("time", "memory", "neuro") if k in res})
    env_of.update({k: env for k in a.sections})
    res.update(env=env, env_of=env_of, versions=versions(libs), sigma=SIGMA, lr=LR)
    if "time" in a.sections:
        res["time"] = time_problems(libs, configs, reps, final_gens, a.out, res)
    if "memory" in a.sections and not a.no_mem:
        res["memory"] = []
        for D, P in configs:
            for n in libs:
                peak, err = peak_memory(n, "sphere", D, P)
                res["memory"].append(
                    {"D": D, "P": P, "library": n, "peak_bytes": peak, "error": err}
                )
                shown = f"{peak / 2**20:9.0f} MiB" if peak is not None else f"failed: {err}"
                print(f"memory sphere D={D:>9,} P={P:5d} {n:9s} {shown}", flush=True)
                if a.out:
                    write_json(a.out, res)
    if "neuro" in a.sections and importlib.util.find_spec("sklearn") is not None:
        res["neuro"] = neuro(libs, neuro_p, neuro_g, 256)
    if a.out:
        write_json(a.out, res)
    return res


if __name__ == "__main__":
    main()
