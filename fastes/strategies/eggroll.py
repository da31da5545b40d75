"""EGGROLL: OpenAI-ES with low-rank perturbations (Sarkar et al. 2025,
https://arxiv.org/abs/2511.16652).

The estimator of :mod:`fastes.strategies.open_es` (antithetic members, shaped fitness,
ĝ = 1/(Pσ) Σ_i w_i ε_i, any ``fastes.optim`` optimizer, decoupled ``weight_decay``) on the
noise of :mod:`fastes.lowrank`: every ``nn.Linear``/``nn.Embedding`` weight of ``module`` is
perturbed by E_i = A_i B_iᵀ/√r, the other leaves by full-rank noise (or not at all: ``freeze``).

``mode="population"`` (the default) is the fast path: the fitness is written for the whole
population, ``fitness_fn(population, *fitness_args) -> (P,) or (P, K)``, where ``population`` is
a :class:`fastes.population.Population` — call it like the module and get one output per member::

    strategy = fastes.strategies.make("eggroll", dict(net.named_parameters()), module=net,
                                      rank=1, sigma=0.02, population_size=256)
    def fitness(population, x, y):
        logits = population(x)                             # (P, B, classes), x shared
        return (logits.argmax(-1) == y).float().mean(-1)   # (P,): no gradient needed

The factors are drawn once per generation (O(P·r·(m + n)) memory) for the forward and the
update. ``mode="vmap"``/``"batched"``/``"loop"`` run an ordinary one-member fitness on
materialised members (O(P·D): the reference path, for small models and tests).
"""

from __future__ import annotations

from typing import Any

import torch

from .._validate import POPULATION, check_callable, check_fitness_args
from ..evaluate import _check_output
from ..lowrank import LowRankNoise
from ..population import Population, population_inputs
from ..prng import check_key
from ..tree import next_count
from .base import Strategy
from .open_es import OpenES, OpenESState


class EGGROLL(OpenES):
    name = "eggroll"
    modes = (*Strategy.modes, POPULATION)

    def __init__(
        self,
        params,
        population_size: int | None = None,
        *,
        module: torch.nn.Module | None = None,
        rank: int = 1,
        freeze=(),
        mode: str | None = None,
        noise: Any = "auto",
        **kwargs,
    ):
        if kwargs.get("exchange", "fitness") != "fitness":
            raise ValueError(
                "eggroll exchanges fitness only under torch.distributed (every rank regenerates "
                f"the factors, O(P·r·(m + n))); got exchange={kwargs['exchange']!r}"
            )
        if mode is None:
            mode = "vmap" if module is None else POPULATION
        if mode == POPULATION and module is None:
            raise ValueError(
                "mode='population' runs the module for every member: pass module= (the "
                "nn.Module whose parameters params holds), or a one-member fitness mode"
            )
        lowrank = LowRankNoise.for_params(params, rank, module=module, freeze=freeze, noise=noise)
        self.module, self.layout, self.rank = module, lowrank.layout, lowrank.rank
        super().__init__(params, population_size, mode=mode, noise=lowrank, **kwargs)
        self._frozen = None  # a (D,) mask when some leaves are frozen
        for leaf in self.layout:
            if leaf.kind == "frozen":
                if self._frozen is None:
                    device = self.raveler.device
                    self._frozen = torch.zeros(self.dim, dtype=torch.bool, device=device)
                self._frozen[leaf.offset : leaf.offset + leaf.size] = True

    def _check_runs(self) -> None:
        raise NotImplementedError(
            "BatchedRuns does not run eggroll: its update is a GEMM over low-rank factors, not "
            "sums of noise rows; advance the runs one by one"
        )

    def _update(self, state, g) -> OpenESState:
        new = super()._update(state, g)
        if self._frozen is None:
            return new
        return new._replace(mean=torch.where(self._frozen, state.mean, new.mean))

    def ask_population(self, state, key: torch.Tensor, *, local: bool = False) -> Population:
        """This generation's members as a :class:`fastes.population.Population` (this rank's
        slice with ``local=True``), for users' own loops: evaluate it, then ``tell``."""
        check_key(key)
        lo, hi = self.local_members(state) if local else (0, self.population(state))
        drawn = self._draw(key)
        return self._population(state, drawn, lo, hi)

    def _population(self, state, drawn, lo: int, hi: int) -> Population:
        sigma = self.sigma(int(state.generation))
        mean = self.raveler.unravel(state.mean.to(self.raveler.flat_dtype))
        leaves = [mean[leaf.name] for leaf in self.layout]
        shared, factors, full = population_inputs(
            self.noise, drawn, leaves, self._ids(lo, hi), sigma, antithetic=True
        )
        return Population(self.module, self.layout, shared, factors, full, hi - lo)

    def step(self, state, fitness_fn, key, fitness_args=()):
        """One generation. In ``"population"`` mode: draw the factors once, evaluate the
        population (in chunks of ``chunk_size`` members when set), reduce with one GEMM per
        weight. Other modes: the base step on materialised members (same update: step equals
        ask + tell bit for bit in every mode)."""
        if self.mode != POPULATION:
            return Strategy.step(self, state, fitness_fn, key, fitness_args)
        check_key(key)
        check_callable(fitness_fn, "fitness_fn")
        fitness_args = check_fitness_args(fitness_args)
        drawn = self._draw(key)
        lo, hi = self.local_members(state)
        chunk = self.chunk_size or (hi - lo) or 1
        chunk += chunk % 2  # whole antithetic pairs
        parts = []
        for m0 in range(lo, hi, chunk):
            m1 = min(m0 + chunk, hi)
            out = fitness_fn(self._population(state, drawn, m0, m1), *fitness_args)
            parts.append(_check_output(out, m1 - m0, "batched").detach())
        fitness = self._check_fitness(self._gather_local(torch.cat(parts), state), state)
        new_state, w = self._tell_drawn(state, drawn, fitness)
        return new_state, self._stats(fitness, w)

    def _draw(self, key: torch.Tensor) -> list:
        """This generation's factors, rows 0..P/2−1 (one per antithetic pair)."""
        return self.noise.draw(key, self._ids(0, self.population_size // 2))

    def _tell(self, state, key, fitness):
        return self._tell_drawn(state, self._draw(key), fitness)

    def _tell_drawn(self, state, drawn, fitness):
        """The update from this generation's factors: ĝ = 1/(Pσ) Σ_i w_i ε_i, one GEMM per
        low-rank weight (the scale folded into the GEMM)."""
        sigma = self.sigma(int(state.generation))
        w = self._scores(fitness, self.shaping)
        row_w = (w[0::2] - w[1::2]).to(torch.float32)
        scale = 1.0 / (self.population_size * sigma)
        linear = self.optimizer.linear
        if linear is not None and state.mean.dtype == torch.float32:
            # sgd: θ + lr·ĝ straight from the GEMMs (no D-sized ĝ, updates or where passes;
            # frozen leaves copy θ). Same sum, its rounding in the GEMM's epilogue.
            lr, opt_state = linear(state.opt_state)
            mean = self.noise.weighted_sum_drawn(drawn, row_w, scale * lr, base=state.mean)
            return OpenESState(mean, opt_state, next_count(state.generation)), w
        g = self.noise.weighted_sum_drawn(drawn, row_w, scale).to(state.mean.dtype)
        return self._update(state, g), w


__all__ = ["EGGROLL"]
