"""The thin base every strategy stands on (evosax style: one strategy, one small file).

A strategy is built from a params *template* (the pytree structure, like a hyperparameter) and
its hyperparameters; its state is a NamedTuple of tensors, checkpointable with ``torch.save``::

    strategy = fastes.strategies.make("snes", params, population_size=32)
    state = strategy.init(params)
    for t in range(100):
        state, stats = strategy.step(state, fitness_fn, fastes.fold_in(key, t))
    best_guess = strategy.params(state)

``ask(state, key)`` returns the members as a batched params pytree (each leaf (P, *shape)) that
the user evaluates however they like; ``tell(state, key, fitness)`` updates the state. Both
regenerate the members' standard-normal noise z_i from (key, i), so nothing of size P·D is kept
between them. ``step`` evaluates chunk by chunk without materialising all members.

State lives on the params' device. The search centre is kept in the params' flat dtype (float32
for fp16/bf16/fp32 leaves, float64 when a leaf is float64; see :mod:`fastes.tree`), or in float64
by strategies that adapt a covariance (CMA-ES family, xNES), so ``params(init(p))`` returns ``p``
exactly.
Fitness is maximized (``minimize=True`` flips it); non-finite fitness follows fastes.shaping's
policy: NaN ranks last and is counted, an all-NaN population raises.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch
from torch.utils import _pytree as pytree

from .. import distributed
from .._validate import (
    MODES,
    check_callable,
    check_evaluation,
    check_finite_flat,
    check_fitness_args,
    check_population,
)
from ..es import FitnessStats, default_chunk_size, resolve_noise
from ..evaluate import evaluate_population
from ..noise import TableNoise
from ..prng import _LANES, check_key
from ..shaping import (
    ShapeStats,
    _all_finite,
    _numpy_shortcut,
    _rank_weights_small,
    shape_fitness,
)
from ..tree import HOST_MAX, as_dtype, host_view, raveler
from ._ops import NumpyOps, one_thread, ops_for

__all__ = ["Strategy"]

_MEMO_ELEMENTS = 2**18  # float32 noise rows kept from one generation's members to its tell
# Up to this many values (P, or R runs x P) one objective's order is sorted in numpy (measured
# at P = 10: ~4 µs against ~20 µs of tensor ops and host reads).
_SMALL_ORDER = 8192


class Strategy:
    """Base class. Subclasses set ``name``, ``antithetic`` and implement ``init``, ``_tell``,
    ``_members_from`` (members from noise z, leading run dims allowed) or, for members
    c + s·z, ``_affine`` (c and s), and (when the state has no ``mean`` field) ``mean``."""

    name = "base"
    antithetic = False
    modes = MODES  # the evaluation modes its step takes

    def __init__(
        self,
        params: Any,
        population_size: int | None = None,
        *,
        minimize: bool = False,
        objective_weights: Sequence[float] | None = None,
        mode: str = "vmap",
        chunk_size: int | None = None,
        noise: Any = "auto",
    ) -> None:
        self.raveler = raveler(params)
        self.dim = self.raveler.dim
        if population_size is None:
            population_size = self.default_population(self.dim)
        check_population(population_size, self.antithetic, f"for {self.name}")
        check_evaluation(mode, chunk_size, self.modes)
        if not isinstance(minimize, bool):
            raise TypeError(f"minimize must be True or False; got {minimize!r}")
        self.population_size = population_size
        self.minimize, self.objective_weights = minimize, objective_weights
        self.mode, self.chunk_size = mode, chunk_size
        self.noise = resolve_noise(noise, self.dim, self.raveler.device)

    # -- to implement -------------------------------------------------------------------------
    def init(self, params: Any, key: torch.Tensor | None = None):
        raise NotImplementedError

    def _members(self, state, key: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
        """Flat members (len(ids), D) for member indices ``ids``."""
        if self.antithetic and self._whole_pairs(ids):
            form = self._affine(state)
            if form is not None:  # c ± s·row per pair, without z = ±rows in between
                return _pair_members(*form, self._noise_rows(key, self._ids(0, ids.numel() // 2)))
        return self._members_from(state, self._z(key, ids))

    def _affine(self, state) -> tuple[torch.Tensor, Any] | None:
        """(c, s) where the members are c + s·z (s a tensor or a number, leading run dims of
        the state allowed), or None for other forms (which implement :meth:`_members_from`)."""
        return None

    def _members_from(self, state, z: torch.Tensor) -> torch.Tensor:
        """Members from their standard-normal noise z (..., m, D): c + s·z from
        :meth:`_affine` (R runs: their (R, D) c and s against (R, m, D) noise)."""
        form = self._affine(state)
        if form is None:
            raise NotImplementedError
        c, s = form
        if c.ndim > 1:  # R runs: (R, 1, D); one run's (D,) broadcasts as it is
            c = c.unsqueeze(-2)
            s = s.unsqueeze(-2) if isinstance(s, torch.Tensor) else s
        return c + s * z

    def _tell(self, state, key: torch.Tensor, fitness: torch.Tensor):
        """The update from checked fitness (P,) or (P, K): ``(new_state, weights (P,))``, where
        ``weights`` are each member's weight in the update (reported in FitnessStats)."""
        raise NotImplementedError

    def mean(self, state) -> torch.Tensor:
        """The current search center, flat (D,)."""
        return state.mean

    @staticmethod
    def default_population(dim: int) -> int:
        return 4 + int(3 * math.log(dim))  # Hansen's λ; strategies may override

    @staticmethod
    def paired_population(dim: int) -> int:
        """An even default for antithetic strategies: 2·(2 + ⌊1.5 ln D⌋) ≈ Hansen's λ."""
        return 2 * (2 + int(1.5 * math.log(dim)))

    def population(self, state) -> int:
        """Members per generation in ``state`` (constant except for restart strategies)."""
        return self.population_size

    # -- provided -----------------------------------------------------------------------------
    def params(self, state) -> Any:
        """The search center as a params pytree (structure, shapes, dtypes of the template)."""
        return self.raveler.unravel(self.mean(state).to(self.raveler.flat_dtype))

    def ask(self, state, key: torch.Tensor, *, flat: bool = False, local: bool = False) -> Any:
        """This generation's members: a params pytree whose leaves are stacked (P, *shape), in
        the template's dtypes, ready for a batched or vmapped fitness. ``flat=True`` gives the
        (P, D) flat members instead. ``local=True`` (under torch.distributed) gives only this
        rank's slice of the members (:meth:`local_members`), to pass to ``tell(local=True)``."""
        check_key(key)
        lo, hi = self.local_members(state) if local else (0, self.population(state))
        members = self._members(state, key, self._ids(lo, hi))
        members = members.to(self.raveler.flat_dtype)
        return members if flat else self.raveler.unravel_batch(members)

    def tell(self, state, key: torch.Tensor, fitness: Any, *, local: bool = False):
        """The new state from this generation's fitness ((P,) or (P, K), a tensor or a list;
        maximized unless ``minimize=True``), with the same ``key`` as :meth:`ask`.
        ``local=True``: ``fitness`` holds this rank's members only (``ask(local=True)``); the
        ranks gather it, in member order, and all compute the same new state."""
        check_key(key)
        if local:
            fitness = fitness if isinstance(fitness, torch.Tensor) else torch.as_tensor(fitness)
            fitness = self._gather_local(fitness, state)
        return self._tell(state, key, self._check_fitness(fitness, state))[0]

    def local_members(self, state) -> tuple[int, int]:
        """This rank's member ids [start, stop) under torch.distributed (whole antithetic pairs);
        all of them in a single process."""
        lo, hi = distributed.member_range(self.population(state) // self._per_pair)
        return self._per_pair * lo, self._per_pair * hi

    def _gather_local(self, fitness: torch.Tensor, state) -> torch.Tensor:
        """Every rank's fitness for its :meth:`local_members`, in member order (a no-op in a
        single process)."""
        P = self.population(state)
        return distributed.gather_rows(fitness, P // self._per_pair, self._per_pair)

    @property
    def _per_pair(self) -> int:
        """Members per noise row: 2 for antithetic pairs."""
        return 2 if self.antithetic else 1

    def step(self, state, fitness_fn: Callable[..., Any], key: torch.Tensor, fitness_args=()):
        """Ask, evaluate (chunked), tell: returns ``(new_state, FitnessStats)``."""
        check_key(key)
        check_callable(fitness_fn, "fitness_fn")
        fitness_args = check_fitness_args(fitness_args)
        given, chunk = self.__dict__.get("_chunk", (None, None))
        if chunk is None or given != self.chunk_size:  # fixed by the template and settings
            chunk = self.chunk_size or default_chunk_size(
                self.dim, self.raveler.flat_dtype, self.raveler.device, self._per_pair
            )
            chunk += chunk % self._per_pair  # keep antithetic pairs together
            self._chunk = (self.chunk_size, chunk)
        # Under torch.distributed this rank evaluates its slice of the members (whole pairs).
        alone = distributed.current() is None
        lo, hi = (0, self.population(state)) if alone else self.local_members(state)
        # A small problem's generation on the host (P·D ≤ HOST_MAX: beyond it, its kept (P, D)
        # arrays cost more than the round trips they save — sep-CMA-ES at D = 1000, P = 256
        # measured 1.08x the general path, at P = 32 0.95x).
        if alone and hi <= chunk and hi * self.dim <= HOST_MAX and self._on_host(state):
            return self._step_on_host(state, fitness_fn, key, fitness_args)
        parts = []
        for m0 in range(lo, hi, chunk):
            members = self._members(state, key, self._ids(m0, min(m0 + chunk, hi)))
            parts.append(self._evaluate(fitness_fn, members, fitness_args))
        fitness = parts[0] if len(parts) == 1 else torch.cat(parts)
        if not alone:
            fitness = self._gather_local(fitness, state)
        fitness = self._check_fitness(fitness, state)
        new_state, weights = self._tell(state, key, fitness)
        return new_state, self._stats(fitness, weights)

    def _evaluate(self, fitness_fn: Callable[..., Any], members: torch.Tensor, fitness_args):
        """Fitness of flat members (m, D), detached."""
        out = evaluate_population(
            fitness_fn, as_dtype(members, self.raveler.flat_dtype), self.raveler,
            mode=self.mode, fitness_args=fitness_args,
        )  # fmt: skip
        return out.detach() if out.requires_grad else out

    def _on_host(self, state) -> bool:
        """Whether :meth:`step` runs this generation through :meth:`_step_on_host` (strategies
        whose update has a numpy namespace say when it applies)."""
        return False

    def _step_on_host(self, state, fitness_fn: Callable[..., Any], key, fitness_args):
        """One whole generation of a small eager-CPU problem in one process, its arrays kept in
        numpy between the stages: the state's fields read once, the float64 noise and what the
        members were built from handed to the update as they are (no tensor round trips, each
        ~1-3 µs inside a generation, ~15 of them). The same operations as ask / tell: the same
        bits (tested). Strategies implement :meth:`_sample` and :meth:`_host_tell`."""
        s = NumpyOps.fields(state)
        z = NumpyOps.f64(self._z(key, self._ids(0, self.population(state))).numpy())
        x, aux = self._sample(NumpyOps, s, z, False)
        members = NumpyOps.tensor(x, self.raveler.flat_dtype)
        fitness = self._check_fitness(self._evaluate(fitness_fn, members, fitness_args), state)
        new_state, weights = self._host_tell(state, s, z, aux, fitness)
        return new_state, self._stats(fitness, weights)

    def _sample(self, ops, s, z, runs: bool):
        """Members (..., m, D) from the state's fields ``s`` and float64 noise z in the
        namespace ``ops``, with what the update may reuse of them (or None)."""
        raise NotImplementedError

    def _host_tell(self, state, s, z, aux, fitness):
        """:meth:`_tell` from the numpy fields ``s``, float64 noise z (P, D) and ``aux`` of
        :meth:`_sample`: ``(new_state, weights)``."""
        raise NotImplementedError

    # -- helpers for subclasses ---------------------------------------------------------------
    def _ids(self, start: int, stop: int) -> torch.Tensor:
        """Member ids [start, stop). Those from 0 are made once per size and handed out again
        (callers never write to them), so :meth:`_is_prefix` knows them without comparing."""
        if start != 0:
            return torch.arange(start, stop, device=self.raveler.device)
        made = self.__dict__.setdefault("_prefix_ids", {})
        if stop not in made:
            if len(made) >= 16:  # bounded: restart strategies grow the population
                made.clear()
            made[stop] = torch.arange(stop, device=self.raveler.device)
        return made[stop]

    def _is_prefix(self, ids: torch.Tensor) -> bool:
        """Whether ``ids`` are 0..n−1 in order."""
        n = ids.numel()
        if ids is self.__dict__.get("_prefix_ids", {}).get(n):
            return True
        return torch.equal(ids, torch.arange(n, device=ids.device))

    def _whole_pairs(self, ids: torch.Tensor) -> bool:
        """Whether antithetic ``ids`` are whole pairs from member 0 on (a generation's members,
        their rows small enough to keep for tell)."""
        n = ids.numel()
        return n % 2 == 0 and n * self.dim <= 2 * _MEMO_ELEMENTS and self._is_prefix(ids)

    def _z(self, key: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
        """Standard-normal z for member ids (m, D), float32; antithetic pairs share rows (±)."""
        if not self.antithetic:
            return self._noise_rows(key, ids)
        n = ids.numel()
        if self._whole_pairs(ids):  # rows 0..n/2−1, each for a pair (kept for tell); z, −z
            rows = self._noise_rows(key, self._ids(0, n // 2))
            return torch.stack([rows, -rows], 1).reshape(n, self.dim)
        sign = (1 - 2 * (ids % 2)).to(torch.float32)[:, None]
        return self._noise_rows(key, ids // 2) * sign

    def _memo_rows(self, key: torch.Tensor, n: int) -> torch.Tensor | None:
        """Rows 0..n−1 of ``key`` if :meth:`_noise_rows` kept them for a key with these words
        (eager CPU code), else None."""
        memo = self.__dict__.get("_rows_memo")
        if memo is None or not key.is_cpu or torch.compiler.is_compiling():
            return None
        if memo[0] != tuple(key.tolist()) or memo[1].shape[0] < n:
            return None
        return memo[1] if memo[1].shape[0] == n else memo[1][:n]

    def _noise_rows(self, key: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
        """``noise.rows(key, rows, D)``, remembering rows 0..n−1 of the last key where they are
        small (≤ 1 MiB, CPU, eager): a generation draws them for the members, then again, in
        rank order, in tell. The memo holds the key's two words (not the tensor's identity and
        version counter: inference-mode tensors have none), so another key recomputes; the rows
        are a pure function of (key, row), so reuse is exact."""
        if not key.is_cpu or torch.compiler.is_compiling():
            return self.noise.rows(key, rows, self.dim)
        words = tuple(key.tolist())  # the key was checked by the public method that got it
        memo = self.__dict__.get("_rows_memo")
        if memo is not None and memo[0] == words and rows.numel():
            kept = memo[1]
            if rows is self.__dict__.get("_prefix_ids", {}).get(kept.shape[0]):
                return kept  # all of them, in order: as the first call handed them out
            r = rows.numpy()  # numpy's min/max: ~2 µs against ~8 µs of aminmax
            if np.minimum.reduce(r) >= 0 and np.maximum.reduce(r) < kept.shape[0]:
                return torch.from_numpy(kept.numpy()[r])  # a copy, as index_select's
        prefix, n = self._is_prefix(rows), rows.numel()
        if prefix and n <= _LANES and isinstance(self.noise, TableNoise):
            z = self.noise.first_rows(words, n, self.dim)  # the rows, minus rows()' bookkeeping
        else:
            z = self.noise.rows(key, rows, self.dim)
        if prefix and 0 < z.numel() <= _MEMO_ELEMENTS:
            self._rows_memo = (words, z)
        return z

    def _z_weighted_sum(
        self, key: torch.Tensor, weights: torch.Tensor, *, per_row: bool = False
    ) -> torch.Tensor:
        """Σ_i weights[i]·z_i (D,) float32, regenerating z (folded over antithetic pairs).
        ``per_row``: the weights are given per noise row (a pair's w⁺ − w⁻ already taken)."""
        w = as_dtype(weights, torch.float32)
        if self.antithetic and not per_row:
            w = w[0::2] - w[1::2]
        rows = self._memo_rows(key, w.numel())
        if rows is not None:  # the same product the noise source computes, on kept rows
            return _rows_weighted_sum(rows, w)
        return self.noise.weighted_sum(key, self._ids(0, w.numel()), w, self.dim)

    def _z_sq_weighted_sum(
        self, key: torch.Tensor, weights: torch.Tensor, *, per_row: bool = False
    ) -> torch.Tensor:
        """Σ_i weights[i]·z_i² (D,) float32, regenerating z chunk by chunk. ``per_row``: the
        weights are given per noise row (an antithetic pair's two members already summed)."""
        w = as_dtype(weights, torch.float32)
        if self.antithetic and not per_row:
            w = w[0::2] + w[1::2]  # z² is the same for both members of a pair
        kept = self._memo_rows(key, w.numel())
        if kept is not None:
            return _rows_weighted_sum(kept.square(), w)
        out = torch.zeros(self.dim, dtype=torch.float32, device=self.raveler.device)
        step = max(1, (4 * 2**20) // (4 * self.dim))
        for r0 in range(0, w.numel(), step):
            rows = self._ids(r0, min(r0 + step, w.numel()))
            out.addmv_(self.noise.rows(key, rows, self.dim).square_().T, w[rows])
        return out

    def _scores(self, fitness: torch.Tensor, method: str = "centered_ranks") -> torch.Tensor:
        """Shaped fitness (P,): larger is better, NaN last; multi-objective combined."""
        w, counts = shape_fitness(
            fitness, method, objective_weights=self.objective_weights, minimize=self.minimize
        )
        self._shaped = (fitness, counts)  # its NaN / inf counts, for _stats of this fitness
        return w

    def _order(self, fitness: torch.Tensor) -> torch.Tensor:
        """Member indices from best to worst (NaN last, ties by index): the order of the shaped
        scores, found for one objective by sorting the fitness itself (a few ops instead of
        shaping's twenty: it is most of a small-D generation's fixed cost)."""
        if fitness.dim() == 2 and fitness.shape[1] > 1:
            return torch.argsort(self._scores(fitness), descending=True, stable=True)
        return self._order_runs(fitness.reshape(-1), fitness)

    def _order_runs(self, f: torch.Tensor, fitness: torch.Tensor | None = None) -> torch.Tensor:
        """Order of one objective along the last dim: (P,) for one run, (R, P) for R runs.
        ``fitness``: the generation's fitness f was taken from; when the numpy path finds every
        value finite, its NaN / inf counts (none) are kept for :meth:`_stats`."""
        f = f if f.is_floating_point() else f.float()
        small = f.ndim <= 2 and f.numel() <= _SMALL_ORDER and f.is_cpu
        if small and f.dtype in (torch.float32, torch.float64):  # numpy has no bfloat16
            if not torch.compiler.is_compiling():  # numpy's stable sort: the same order
                v = f.detach().numpy() if self.minimize else -f.detach().numpy()
                finite = np.logical_and.reduce(np.isfinite(v), axis=None)
                if finite or not np.logical_or.reduce(np.isnan(v), axis=None):
                    if finite and fitness is not None:
                        self._shaped = (fitness, ShapeStats(0, 0))
                    return torch.from_numpy(v.argsort(axis=-1, kind="stable"))
        nan = torch.isnan(f)
        if not torch.compiler.is_compiling() and bool(nan.all(-1).any()):
            raise ValueError(
                "fitness is NaN for every member of the population (objective column(s) [0]); "
                "check the fitness function"
            )
        score = f if self.minimize else -f
        if not torch.compiler.is_compiling() and not bool(nan.any()):
            return torch.argsort(score, dim=-1, stable=True)
        order = torch.argsort(torch.where(nan, torch.inf, score), dim=-1, stable=True)
        last = torch.argsort(nan.gather(-1, order).to(torch.uint8), dim=-1, stable=True)
        return order.gather(-1, last)  # NaN after +inf

    def _check_fitness(self, fitness: Any, state) -> torch.Tensor:
        """Fitness as a detached real tensor of shape (P,) or (P, K) on the state's device."""
        if not isinstance(fitness, torch.Tensor):
            try:
                fitness = torch.as_tensor(fitness)
            except (TypeError, ValueError, RuntimeError) as e:
                raise TypeError(
                    f"fitness must be a tensor or a list of numbers; got {type(fitness).__name__}"
                    f" ({e})"
                ) from None
        P = self.population(state)
        if fitness.dim() not in (1, 2) or fitness.shape[0] != P:
            raise ValueError(
                f"fitness must have shape ({P},) or ({P}, K); got {tuple(fitness.shape)}"
            )
        if fitness.is_complex() or fitness.dtype == torch.bool:
            raise TypeError(f"fitness must be real numbers; got dtype {fitness.dtype}")
        if fitness.requires_grad:
            fitness = fitness.detach()
        return fitness if fitness.device == self.raveler.device else fitness.to(self.raveler.device)

    def _stats(self, fitness: torch.Tensor, weights: torch.Tensor) -> FitnessStats:
        shaped = self.__dict__.get("_shaped")
        if shaped is not None and shaped[0] is fitness:  # tell shaped it: its counts, as they are
            self._shaped = None
            return FitnessStats(fitness, weights, *shaped[1], self.minimize)
        nan = inf = 0
        if fitness.is_floating_point() and not _all_finite(fitness):
            nan, inf = int(torch.isnan(fitness).sum()), int(torch.isinf(fitness).sum())
        return FitnessStats(fitness, weights, nan, inf, self.minimize)

    def _flat_params(self, params: Any) -> torch.Tensor:
        """``params`` (the template's structure and shapes, finite) as the flat (D,) vector."""
        leaves, spec = pytree.tree_flatten(params)
        if spec != self.raveler.spec or any(
            not isinstance(x, torch.Tensor) or x.shape != s
            for x, s in zip(leaves, self.raveler.shapes)
        ):
            raise ValueError(
                f"params must have the structure and shapes of the template {self.name} was "
                f"built for ({len(self.raveler.shapes)} leaves, shapes "
                f"{[tuple(s) for s in self.raveler.shapes]}); got "
                f"{[tuple(getattr(x, 'shape', ())) for x in leaves]}"
            )
        return check_finite_flat(self.raveler.ravel(params))

    def _counter(self) -> torch.Tensor:
        """A () int64 generation counter on the params' device."""
        return torch.zeros((), dtype=torch.int64, device=self.raveler.device)

    def _check_runs(self) -> None:
        """Raise NotImplementedError when this configuration cannot run as batched runs."""

    def _require_elementwise(self, optimizer, hint: str = "") -> None:
        """BatchedRuns steps R runs' stacked state with one optimizer call: refuse optimizers
        that do not step each element alone (``GradientTransformation.elementwise``)."""
        if optimizer is not None and not optimizer.elementwise:
            raise NotImplementedError(
                "BatchedRuns needs an optimizer that steps each element alone (sgd, momentum, "
                f"adam, adamw, decay) to update R runs at once; {self.name}'s is not{hint}"
            )

    def _runs_scores(self, fitness: torch.Tensor, method: str) -> torch.Tensor:
        """Shaped fitness (R, P) of R runs' fitness (R, P), each row as :meth:`_scores` alone:
        all rows ranked in one numpy call where every run takes that shortcut alone."""
        f = fitness if fitness.is_floating_point() else fitness.float()
        if method in ("centered_ranks", "nes") and _numpy_shortcut(f, self.objective_weights):
            w = _rank_weights_small(f, method, self.minimize)
            if w is not None:
                return w
        return torch.stack([self._scores(row, method) for row in fitness])


class OpsSampled:
    """Mixin (before :class:`Strategy` in the bases) for strategies whose members come from
    float64 noise through :meth:`Strategy._sample` written against the namespaces of
    :mod:`fastes.strategies._ops` (CMA-ES, sep-CMA-ES, xNES): their members, and whether a
    generation runs on the host. ``separable``: an update without eigendecompositions or D x D
    products (its own, higher numpy bound)."""

    separable = False

    def _members_from(self, state, z):
        """x from z (..., m, D) (a leading run dim for batched runs) by :meth:`_sample`,
        computed in float64 and returned in the params' flat dtype."""
        ops = ops_for(z, self.separable)
        with one_thread(ops, z):
            x, _ = self._sample(ops, ops.fields(state), ops.f64(ops.arr(z)), z.ndim > 2)
            return ops.tensor(x, self.raveler.flat_dtype)

    def _on_host(self, state) -> bool:
        return ops_for(state.mean, self.separable) is NumpyOps

    def _in_namespace(self, body, state, z, *args, host=None):
        """``body(ops, state, z, *args, host)`` in the namespace of z (numpy where ``host``, a
        generation kept on the host, is given), a small problem's torch products on one thread
        (:func:`fastes.strategies._ops.one_thread`): the frame of the strategies' updates."""
        ops = NumpyOps if host is not None else ops_for(z, self.separable)
        with one_thread(ops, z):
            return body(ops, state, z, *args, host)


def diagonal_form(state) -> tuple[torch.Tensor, torch.Tensor]:
    """Members μ + σ ⊙ z: the :meth:`Strategy._affine` of the strategies with a per-coordinate
    σ in their state (SNES, CEM, PGPE)."""
    return state.mean, state.sigma


def scheduled_sigma_form(self, state) -> tuple[torch.Tensor, float]:
    """Members θ + σ_t·z: the :meth:`Strategy._affine` of the strategies whose σ is a schedule
    of the generation (OpenAI-ES, ARS)."""
    return state.mean, self.sigma(int(state.generation))


def _pair_members(c: torch.Tensor, s: Any, rows: torch.Tensor) -> torch.Tensor:
    """Members c + s·row (2j) and c − s·row (2j + 1) of each noise row j: what c + s·z gives
    for z = ±row bit for bit (s·(−r) is −(s·r), c + (−x) is c − x), in numpy on the host where
    the rows are small (host_view: the same roundings, a few calls instead of z's stack, the
    product and the sum as tensor ops)."""
    n, dim = rows.shape
    c_, r_ = host_view(c), host_view(rows)
    s_ = host_view(s) if isinstance(s, torch.Tensor) else s
    if isinstance(c_, np.ndarray) and isinstance(r_, np.ndarray) and not torch.is_tensor(s_):
        sz = s_ * r_
        out = np.empty((n, 2, dim), dtype=np.result_type(c_, sz))
        np.add(c_, sz, out=out[:, 0])
        np.subtract(c_, sz, out=out[:, 1])
        return torch.from_numpy(out.reshape(2 * n, dim))
    sz = s * rows
    return torch.stack([c + sz, c - sz], 1).reshape(2 * n, dim)


def _rows_weighted_sum(rows: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    """Σ_i w_i·rows_i (D,) float32 for kept rows (n, D): the product every strategy's gradient
    uses on rows it holds, so R runs advanced together (looping this per run) get the bits of
    each run alone (a batched matmul rounds some sizes differently, measured). ``mv`` is the
    BLAS product that ``zeros(D).addmv_`` computes (β = 0 instead of adding to zeros: tested bit
    for bit, signs of zero included), one dispatch fewer."""
    return torch.mv(rows.T, w)


def _runs_weighted_sums(z: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    """:func:`_rows_weighted_sum` of every run: z (R, n, D), w (R, n) -> (R, D)."""
    return torch.stack([_rows_weighted_sum(zr, wr) for zr, wr in zip(z, w, strict=True)])
