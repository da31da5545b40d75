"""OpenAI-ES: the gradient estimate and one functional step.

Salimans et al. 2017, "Evolution Strategies as a Scalable Alternative to Reinforcement Learning",
https://arxiv.org/abs/1703.03864. For a mean θ (D,) and noise ε_i ~ N(0, I):

    members      θ_i = θ + σ·s_i·ε_row(i)       (antithetic: s = +1, −1 for members 2j, 2j+1,
                                                  which share row j; otherwise s = +1, row i)
    fitness      F_i = fitness_fn(θ_i)           (maximized; (P,) or (P, K))
    weights      w = shape(F)                    (centered ranks, NES utilities, z-score, raw)
    gradient     ĝ = 1/(P·σ) Σ_i w_i s_i ε_row(i)  ≈ ∇_θ E[F(θ + σε)]
    step         θ ← θ + lr·ĝ − lr·weight_decay·θ   (gradient ascent, decoupled decay)

Noise is regenerated from (key, row) for the gradient, never stored as a (P, D) matrix unless it
fits ``memory_budget``; members are built and evaluated ``chunk_size`` at a time, so peak memory
is O(chunk·D + P + D).
"""

from __future__ import annotations

import functools
import itertools
import math
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import torch

from . import distributed, optim
from ._validate import (
    check_callable,
    check_evaluation,
    check_exchange,
    check_finite_flat,
    check_fitness_args,
    check_population,
    positive_int,
    real,
)
from .evaluate import evaluate_population
from .noise import (
    _GATHER_MAX_DIM,
    TableNoise,
    _fill_members,
    _tiled_weighted_sum,
    resolve_noise,  # public here too (es.__all__), its home is fastes.noise
)
from .prng import _LANES, check_key, key_words
from .shaping import METHODS, shape_fitness
from .tree import Raveler, as_dtype, from_host, host_view, on_host, raveler

__all__ = [
    "DEFAULT_MEMORY_BUDGET",
    "FitnessStats",
    "default_chunk_size",
    "es_step",
    "estimate_grad",
    "resolve_noise",
    "sgd_with_decay",
]

# Bytes that cached noise rows may use before they are regenerated instead (DESIGN §4).
DEFAULT_MEMORY_BUDGET = 256 * 2**20
# Target bytes of one chunk of flat members. Measured on the dev CPU (sphere, D = 1e5, P = 256,
# `python benchmarks/es_generation.py --chunk-sweep`): 1.5 MiB 29.8 ms, 3 MiB 24.4 ms,
# 6 MiB 22.4 ms, 12 MiB 28.9 ms, 49 MiB 52.1 ms, 98 MiB 64.5 ms per generation. Small chunks
# pay per-call overhead; large ones miss the cache and fault in fresh pages on every allocation.
DEFAULT_CHUNK_BYTES = 6 * 2**20
# On GPUs a chunk must hold enough members to fill the device. Measured on an H100 (sphere,
# D = 1e6, P = 1024, `python benchmarks/bench_kernels.py`, git e644c86): 122 MiB 68.3 ms,
# 244 MiB 41.3, 488 MiB 28.2, 977 MiB 25.1, 1953 MiB 24.3, 3906 MiB 23.9 per generation.
# 1 GiB is within 5% of the fastest at a quarter of its memory.
DEFAULT_CHUNK_BYTES_CUDA = 2**30


class FitnessStats(NamedTuple):
    """What one generation saw: raw fitness in member order and the weights the update used.

    ``weights`` are each member's weight in the strategy's update, as that strategy uses them
    (centered ranks or another shaping for OpenAI-ES, NES utilities for SNES / xNES, CMA's
    recombination weights, ARS's reward differences, CEM's elite weights). The counts are ints
    (0-dim tensors inside ``torch.compile``, where graphs do not read values back).
    ``minimize`` records the objective's sense, so :attr:`best` is the best member either way.
    """

    fitness: torch.Tensor  # (P,) or (P, K), as returned by fitness_fn
    weights: torch.Tensor  # (P,) each member's weight in the update
    nan_count: int | torch.Tensor  # NaN fitness values (ranked last, see fastes.shaping)
    inf_count: int | torch.Tensor  # ±inf fitness values
    minimize: bool = False  # the sense of the fitness: smaller is better when True

    @property
    def mean(self) -> torch.Tensor:
        """Mean fitness over members, ignoring NaN: () or (K,)."""
        return self.fitness.float().nanmean(dim=0)

    @property
    def max(self) -> torch.Tensor:
        """Largest fitness over members, ignoring NaN: () or (K,) (the best unless minimizing)."""
        f = self.fitness.float()
        return torch.where(torch.isnan(f), -math.inf, f).max(dim=0).values

    @property
    def min(self) -> torch.Tensor:
        """Smallest fitness over members, ignoring NaN: () or (K,)."""
        f = self.fitness.float()
        return torch.where(torch.isnan(f), math.inf, f).min(dim=0).values

    @property
    def best(self) -> torch.Tensor:
        """Best fitness in the objective's sense (:attr:`min` when minimizing), ignoring NaN."""
        return self.min if self.minimize else self.max


@functools.lru_cache(maxsize=64)  # a pure function of its arguments, asked every generation
def default_chunk_size(dim: int, dtype: torch.dtype, device: torch.device, per_row: int) -> int:
    """Members per evaluation chunk: about DEFAULT_CHUNK_BYTES (CPU) or
    DEFAULT_CHUNK_BYTES_CUDA of flat members, a multiple of ``per_row`` (antithetic pairs)."""
    target = DEFAULT_CHUNK_BYTES_CUDA if device.type == "cuda" else DEFAULT_CHUNK_BYTES
    size = max(per_row, target // (dim * dtype.itemsize))
    return size - size % per_row


def _flat_estimate(
    theta: torch.Tensor,
    rav: Raveler,
    fitness_fn: Callable[..., Any],
    key: torch.Tensor,
    *,
    population_size: int,
    sigma: float,
    antithetic: bool,
    shaping: str,
    objective_weights,
    minimize: bool,
    mode: str,
    chunk_size: int | None,
    noise: Any,
    fitness_args: tuple,
    memory_budget: int = DEFAULT_MEMORY_BUDGET,
    exchange: str = "fitness",
) -> tuple[torch.Tensor, FitnessStats]:
    """The estimate on the flat mean θ (D,): returns (ĝ (D,) in θ's dtype, stats)."""
    P, D = population_size, theta.numel()
    source = resolve_noise(noise, D, theta.device)
    key = key if key.device == theta.device else key.to(theta.device)
    n_rows = P // 2 if antithetic else P
    per_row = 2 if antithetic else 1
    if chunk_size is None:
        chunk_size = default_chunk_size(D, theta.dtype, theta.device, per_row)
    rows_per_chunk = max(1, min(chunk_size // per_row, n_rows))
    # Under torch.distributed this rank evaluates its slice of the rows; others' come by gather.
    group = distributed.current()
    if (group is None and n_rows <= min(rows_per_chunk, _LANES) and theta.is_cpu
            and isinstance(source, TableNoise) and D <= _GATHER_MAX_DIM
            and n_rows * D * 4 <= memory_budget
            and not torch.compiler.is_compiling()):  # fmt: skip
        # A small problem in one process (every small-D generation): the loop below's single
        # chunk from row 0 — the table's first rows, kept for ĝ — without its bookkeeping
        eps = source.first_rows(key_words(key), n_rows, D)
        members = _fill_members(theta, eps, sigma, antithetic, None)
        out = evaluate_population(fitness_fn, members, rav, mode=mode, fitness_args=fitness_args)
        fitness = out.detach() if out.requires_grad else out
        weights, counts, row_w = _row_weights(fitness, shaping, objective_weights, minimize,
                                              antithetic, theta.device)  # fmt: skip
        g = _tiled_weighted_sum(_kept_rows([eps]), range(n_rows), row_w, D)
        return _scaled(g, P, sigma, theta.dtype), FitnessStats(fitness, weights, *counts, minimize)
    r_lo, r_hi = (0, n_rows) if group is None else distributed.member_range(n_rows, group)
    if exchange == "auto":  # measured once per group and configuration (fastes.distributed)
        exchange = distributed.choose_exchange(
            n_rows, D, lambda n: source.weighted_sum(key, torch.arange(r_lo, r_lo + n,
                device=theta.device), torch.ones(n, device=theta.device), D),
            type(source).__name__, group,
        )  # fmt: skip
    # Which rows this process sums for ĝ: all of them (one process, or the fitness-only
    # exchange: every rank regenerates every row, so all get the same bits), or its own rows
    # (the partial-sum exchange: the (D,) sums are then gathered and added in rank order).
    partial = group is not None and exchange == "partial_sums"
    s_lo, s_hi = (r_lo, r_hi) if partial else (0, n_rows)
    # Keep the drawn rows for the gradient pass only while they fit the budget, and only when
    # this process evaluated every row it sums.
    cache = (group is None or partial) and (s_hi - s_lo) * D * 4 <= memory_budget
    cached: list[torch.Tensor] = []
    n_cached = 0  # rows in ``cached``
    # One member buffer reused by every chunk on the CPU, where fresh large allocations fault in
    # new pages each time (measured: a fresh 100 MB cat took 150 ms here). Elsewhere the sources
    # allocate (the CUDA caching allocator recycles; the perturb kernel returns its own tensor).
    pop = None
    if theta.is_cpu and not torch.compiler.is_compiling():
        pop = torch.empty(rows_per_chunk * per_row, D, dtype=theta.dtype, device=theta.device)
    fitness = None
    for r0 in range(r_lo, r_hi, rows_per_chunk):
        n_chunk = min(r0 + rows_per_chunk, r_hi) - r0  # rows r0 .. r0 + n_chunk − 1
        n = n_chunk * per_row
        buf = None if pop is None else pop if pop.shape[0] == n else pop[:n]
        if r0 == 0 and pop is not None and n_chunk <= _LANES \
                and isinstance(source, TableNoise) and D <= _GATHER_MAX_DIM:  # fmt: skip
            # rows 0..n−1 of a checked CPU key: the table's rows without rows()' own key check
            # and offsets memo (this pass keeps them for the gradient)
            eps = source.first_rows(key_words(key), n_chunk, D)
            members = _fill_members(theta, eps, sigma, antithetic, buf)
        else:
            rows = torch.arange(r0, r0 + n_chunk, device=theta.device)
            members, eps = source.perturb(key, rows, theta, sigma, antithetic, buf)
        if cache and eps is not None:
            cached.append(eps)
            n_cached += eps.shape[0]
        out = evaluate_population(fitness_fn, members, rav, mode=mode, fitness_args=fitness_args)
        if fitness is None and n == (r_hi - r_lo) * per_row:  # one chunk: it, as it came
            fitness = out.detach() if out.requires_grad else out  # (`pop` is not reused now)
            continue
        if fitness is None:
            fitness = out.new_empty(((r_hi - r_lo) * per_row, *out.shape[1:]))
        elif out.shape[1:] != fitness.shape[1:]:
            raise ValueError(
                f"fitness_fn returned {tuple(out.shape[1:]) or 'scalars'} for some members and "
                f"{tuple(fitness.shape[1:]) or 'scalars'} for others"
            )
        m0 = (r0 - r_lo) * per_row
        fitness[m0 : m0 + out.shape[0]] = out.detach()  # copy now: `pop` is reused next chunk
    if group is not None:
        fitness = distributed.gather_rows(fitness, n_rows, per_row, group)
    weights, counts, row_w = _row_weights(fitness, shaping, objective_weights, minimize,
                                          antithetic, theta.device)  # fmt: skip
    if cache and n_cached == s_hi - s_lo:
        # In the sources' tiles, whatever the evaluation chunks were: a BLAS whose gemv sums
        # several rows at once (AVX-512 builds) rounds chunk-by-chunk sums differently, so the
        # chunk size would change the bits. The tiles are cut from the kept chunks (a tile's
        # pieces joined: no (n_rows, D) concatenation) and the weights are the rows' own.
        w = row_w if s_hi - s_lo == row_w.shape[0] else row_w[s_lo:s_hi]
        g = _tiled_weighted_sum(_kept_rows(cached), range(s_hi - s_lo), w, D)
    else:
        rows = torch.arange(s_lo, s_hi, device=theta.device)
        g = source.weighted_sum(key, rows, row_w[s_lo:s_hi], D)
    if partial:
        g = distributed.sum_in_rank_order(g, group)
    return _scaled(g, P, sigma, theta.dtype), FitnessStats(fitness, weights, *counts, minimize)


def _row_weights(fitness, shaping, objective_weights, minimize, antithetic, device):
    """The generation's shaped weights (P,), their NaN / inf counts, and each noise row's
    weight (float32 on ``device``): w⁺ − w⁻ of its antithetic pair, or its member's."""
    weights, counts = shape_fitness(
        fitness, shaping, objective_weights=objective_weights, minimize=minimize
    )
    w = host_view(weights)  # the fold on the host where the weights are small
    row_w = from_host(w[0::2] - w[1::2] if antithetic else w)  # (n_rows,)
    if row_w.dtype != torch.float32 or row_w.device != device:
        row_w = row_w.to(device=device, dtype=torch.float32)
    return weights, counts, row_w


def _scaled(g: torch.Tensor, P: int, sigma: float, dtype: torch.dtype) -> torch.Tensor:
    """ĝ = Σ / (Pσ) in θ's dtype: on the host where small (a Python number divides in the
    array's dtype on both sides)."""
    return on_host(lambda x: x / (P * sigma), as_dtype(g, dtype))


def _kept_rows(chunks: list[torch.Tensor]) -> Callable[[range], torch.Tensor]:
    """``make_rows`` of :func:`fastes.noise._tiled_weighted_sum` over row chunks kept in order:
    the rows at a range of positions as one tensor, a view of one chunk or the pieces of
    several joined."""
    if len(chunks) == 1:  # one chunk (every small problem): its rows as they are, or a slice
        one = chunks[0]
        return lambda ids: (
            one if ids.start == 0 and ids.stop == len(one) else one[ids.start : ids.stop]
        )
    starts = list(itertools.accumulate((c.shape[0] for c in chunks), initial=0))

    def rows(ids: range) -> torch.Tensor:
        i, j = ids.start, ids.stop
        parts = [
            c[max(i - a, 0) : j - a]
            for c, a, b in zip(chunks, starts, starts[1:], strict=False)
            if a < j and b > i
        ]
        return parts[0] if len(parts) == 1 else torch.cat(parts)

    return rows


def _check_args(
    fitness_fn, key, population_size, sigma, antithetic, shaping, mode, chunk_size, memory_budget
) -> float:
    """Validate the shared arguments of estimate_grad / es_step; return sigma as a float."""
    check_callable(fitness_fn, "fitness_fn")
    check_key(key)
    check_population(population_size, antithetic)
    sigma = real(sigma, "sigma", positive=True)
    if shaping not in METHODS:
        raise ValueError(f"shaping must be one of {METHODS}; got {shaping!r}")
    check_evaluation(mode, chunk_size)
    positive_int(memory_budget, "memory_budget", 0)
    return sigma


def _validated_estimate(
    params, fitness_fn, key, population_size, sigma, antithetic, shaping, objective_weights,
    minimize, mode, chunk_size, noise, fitness_args, memory_budget, exchange,
):  # fmt: skip
    """Validate, ravel and estimate: ``(θ flat, raveler, ĝ flat, FitnessStats)``."""
    sigma = _check_args(
        fitness_fn, key, population_size, sigma, antithetic, shaping, mode, chunk_size,
        memory_budget,
    )  # fmt: skip
    fitness_args = check_fitness_args(fitness_args)
    check_exchange(exchange)
    rav = raveler(params)
    theta = check_finite_flat(rav.ravel(params))
    g, stats = _flat_estimate(
        theta, rav, fitness_fn, key,
        population_size=population_size, sigma=sigma, antithetic=antithetic, shaping=shaping,
        objective_weights=objective_weights, minimize=minimize, mode=mode,
        chunk_size=chunk_size, noise=noise, fitness_args=fitness_args,
        memory_budget=memory_budget, exchange=exchange,
    )  # fmt: skip
    return theta, rav, g, stats


def estimate_grad(
    params: Any,
    fitness_fn: Callable[..., Any],
    key: torch.Tensor,
    *,
    population_size: int,
    sigma: float,
    antithetic: bool = True,
    shaping: str = "centered_ranks",
    objective_weights: Sequence[float] | torch.Tensor | None = None,
    minimize: bool = False,
    mode: str = "vmap",
    chunk_size: int | None = None,
    noise: Any = "auto",
    fitness_args: tuple = (),
    memory_budget: int = DEFAULT_MEMORY_BUDGET,
    exchange: str = "fitness",
) -> tuple[Any, FitnessStats]:
    """ES gradient of E[fitness(θ + σε)] at ``params``: (gradient pytree, FitnessStats).

    The gradient points uphill (fitness is maximized unless ``minimize=True``) and has the
    structure, shapes, dtypes and device of ``params``; use it with any ``fastes.optim``
    optimizer, or negate it into ``.grad`` for a ``torch.optim`` one.

    Args:
        params: pytree of float tensors (e.g. ``dict(model.named_parameters())``), the mean θ.
        fitness_fn: ``fitness_fn(member_params, *fitness_args)`` -> scalar or (K,) per member
            (see :mod:`fastes.evaluate` for ``mode``).
        key: a fastes key for this step (e.g. ``fastes.fold_in(run_key, step)``).
        population_size: P, members per generation (even when ``antithetic``).
        sigma: σ > 0, the noise standard deviation.
        antithetic: pair members θ ± σε (mirrored sampling).
        shaping: a :data:`fastes.shaping.METHODS` name.
        objective_weights: K weights when fitness has K objectives (default 1/K each).
        minimize: treat smaller fitness as better.
        mode: ``"vmap"``, ``"batched"`` or ``"loop"``.
        chunk_size: members evaluated at once (default: ~6 MiB of flat parameters).
        noise: ``"auto"``, ``"table"``, ``"philox"``, a NoiseTable or a noise source.
        fitness_args: data shared by all members, passed after the params.
        memory_budget: bytes of noise rows that may be kept between evaluation and the
            gradient; beyond it rows are regenerated.
        exchange: under torch.distributed (:mod:`fastes.distributed`), what the processes
            exchange: ``"fitness"`` (P numbers; every rank regenerates every noise row for ĝ;
            the result is bit-identical on any number of processes) or ``"partial_sums"`` (each
            rank sums its own members' weighted noise, and the (D,) sums are added in rank
            order: no regeneration, D numbers per rank, equal up to float rounding) or
            ``"auto"`` (the cheaper of the two, measured once per group:
            :func:`fastes.distributed.choose_exchange`).

    Example:
        >>> params = {"x": torch.ones(10)}
        >>> grad, stats = estimate_grad(params, lambda p: -(p["x"] ** 2).sum(), fastes.key(0),
        ...                             population_size=64, sigma=0.1)
    """
    _, rav, g, stats = _validated_estimate(
        params, fitness_fn, key, population_size, sigma, antithetic, shaping,
        objective_weights, minimize, mode, chunk_size, noise, fitness_args, memory_budget,
        exchange,
    )  # fmt: skip
    return rav.unravel(g), stats


def es_step(
    params: Any,
    fitness_fn: Callable[..., Any],
    key: torch.Tensor,
    *,
    population_size: int,
    sigma: float,
    learning_rate: float,
    antithetic: bool = True,
    shaping: str = "centered_ranks",
    weight_decay: float = 0.0,
    objective_weights: Sequence[float] | torch.Tensor | None = None,
    minimize: bool = False,
    mode: str = "vmap",
    chunk_size: int | None = None,
    noise: Any = "auto",
    fitness_args: tuple = (),
    memory_budget: int = DEFAULT_MEMORY_BUDGET,
    exchange: str = "fitness",
    return_stats: bool = False,
) -> Any:
    """One OpenAI-ES generation: θ ← θ + learning_rate·ĝ − learning_rate·weight_decay·θ.

    Pure: ``params`` is not modified; the updated pytree is returned with the same structure,
    shapes, dtypes and device. Arguments are those of :func:`estimate_grad`, plus
    ``learning_rate`` (>= 0), ``weight_decay`` (>= 0, decoupled: θ ← θ + lr·ĝ − lr·wd·θ) and
    ``return_stats`` (return ``(params, FitnessStats)`` instead of the params alone).

    Example:
        >>> model = torch.nn.Linear(4, 1)
        >>> params = dict(model.named_parameters())
        >>> apply = fastes.functional(model)
        >>> x, y = torch.randn(32, 4), torch.randn(32, 1)
        >>> def fitness(p):
        ...     return -((apply(p, x) - y) ** 2).mean()
        >>> for step in range(100):
        ...     params = es_step(params, fitness, fastes.fold_in(fastes.key(0), step),
        ...                      population_size=64, sigma=0.05, learning_rate=0.1)
        >>> _ = model.load_state_dict(params, strict=False)  # (buffers keep their values)
    """
    opt = sgd_with_decay(learning_rate, weight_decay)
    theta, rav, g, stats = _validated_estimate(
        params, fitness_fn, key, population_size, sigma, antithetic, shaping,
        objective_weights, minimize, mode, chunk_size, noise, fitness_args, memory_budget,
        exchange,
    )  # fmt: skip
    updates, _ = opt.update(g, opt.init(theta), theta)
    new = rav.unravel(theta + updates)
    return (new, stats) if return_stats else new


def sgd_with_decay(learning_rate, weight_decay: float = 0.0) -> optim.GradientTransformation:
    """es_step's optimizer, and OpenAI-ES's with ``optimizer=fastes.optim.sgd(lr)``: plain ascent
    plus decoupled weight decay, updates = lr·ĝ − lr·weight_decay·θ."""
    sgd = optim.sgd(learning_rate)
    weight_decay = real(weight_decay, "weight_decay")
    if not weight_decay:
        return sgd
    return optim.chain(sgd, optim.add_decayed_weights(weight_decay, learning_rate))
