"""Low-rank perturbations (EGGROLL, Sarkar et al. 2025, https://arxiv.org/abs/2511.16652).

For a 2-D weight W (m×n) member i's noise is E_i = A_i B_iᵀ / √r with A_i (m×r), B_i (n×r)
standard normals regenerated from (key, leaf, member) — the leaf's key is ``split(key, L)[leaf]``
and the factors are the leaf's noise row ``i`` of length r·(m + n) (A first, row-major), from the
same sources as every other noise (:mod:`fastes.noise`; counters 64-bit). Each entry of E_i is a
sum of r products of independent unit normals divided by √r: mean 0, variance 1, so σ means what
it means for full-rank noise. Antithetic pairs share the factors with opposite signs. Leaves that
are not such weights (biases, norms, other 2-D tensors) get full-rank noise, or none when frozen.

Two uses, one noise:

* :class:`LowRankNoise` is a noise source (``rows``, ``weighted_sum``, ``perturb``, like
  ``PhiloxNoise``/``TableNoise``): any strategy or ``es_step`` can run on it, with members
  materialised as flat vectors (the reference path; O(P·D) memory like any full-rank run).
* :class:`fastes.population.Population` runs a module for P members at once **without
  per-member weights**: each ``nn.Linear`` computes the shared GEMM x Wᵀ + b once for every
  member's inputs plus the member's thin correction (σ/√r)(x B_i) A_iᵀ.

The update Σ_i w_i E_i is one GEMM per weight, (m × P·r)·(P·r × n) (:meth:`LowRankNoise.
weighted_sum_drawn`), never a per-member m×n matrix.
"""

from __future__ import annotations

import fnmatch
import math
from collections.abc import Mapping
from typing import Any, NamedTuple

import torch
from torch.utils import _pytree as pytree

from ._validate import positive_int
from .es import resolve_noise
from .noise import _as_rows, _fill_members
from .prng import check_key, split
from .tree import Raveler, raveler

__all__ = ["Leaf", "LowRankNoise", "leaf_layout"]


class Leaf(NamedTuple):
    """One params leaf in the flat vector: ``kind`` is ``"lowrank"`` (an ``nn.Linear`` or
    ``nn.Embedding`` weight, ``shape`` = (m, n)), ``"full"`` or ``"frozen"``."""

    name: str
    kind: str
    offset: int
    size: int
    shape: tuple[int, ...]
    module: str  # the owning module's name (for "lowrank" leaves)


def leaf_layout(
    params: Any, rav: Raveler, module: torch.nn.Module | None = None, freeze=()
) -> tuple[Leaf, ...]:
    """The :class:`Leaf` of every leaf of ``params``, in the raveler's order.

    With ``module``, ``params`` is a dict of its parameters (``dict(module.named_parameters())``
    or a subset) and the weights of its ``nn.Linear``/``nn.Embedding`` layers are low-rank.
    Without, every 2-D leaf of any pytree is (named by its pytree path). ``freeze``: names or
    glob patterns (``"*.bias"``) of leaves kept fixed."""
    if module is None:
        paths = [pytree.keystr(p) for p, _ in pytree.tree_flatten_with_path(params)[0]]
        names = list(params) if isinstance(params, Mapping) and len(params) == len(paths) else paths
        owners = {n: ("", None, "weight") for n in names}
    else:
        if not isinstance(module, torch.nn.Module):
            raise TypeError(f"module must be a torch.nn.Module; got {type(module).__name__}")
        if not isinstance(params, Mapping):
            raise TypeError(
                "with module=, params must be a dict of its parameters, e.g. "
                f"dict(module.named_parameters()); got {type(params).__name__}"
            )
        owners, users = {}, {}
        for mod_name, mod in module.named_modules(remove_duplicate=False):
            for p_name, p in mod.named_parameters(recurse=False, remove_duplicate=False):
                owners[f"{mod_name}.{p_name}" if mod_name else p_name] = (mod_name, mod, p_name)
                users[id(p)] = users.get(id(p), 0) + 1
        # nn.MultiheadAttention reads its out_proj's weight without calling out_proj: no hook.
        inside_mha = {
            f"{n}.{c}" if n else c
            for n, m in module.named_modules() if isinstance(m, torch.nn.MultiheadAttention)
            for c, _ in m.named_children()
        }  # fmt: skip
        names = list(params)  # dict order = the raveler's leaf order (torch pytree)
        unknown = [n for n in names if n not in owners]
        if unknown:
            raise ValueError(
                f"params has names that are not parameters of the module: {unknown[:5]}; pass "
                "dict(module.named_parameters()) or a subset of it"
            )
    if isinstance(freeze, str):
        freeze = [freeze]
    try:
        patterns = list(freeze)
    except TypeError:
        raise TypeError(f"freeze must be names or glob patterns; got {freeze!r}") from None
    for pat in patterns:
        if not any(fnmatch.fnmatchcase(n, pat) for n in names):
            raise ValueError(f"freeze pattern {pat!r} matches no parameter; names are {names[:8]}")
    layout, offset = [], 0
    for name, size, shape in zip(names, rav.sizes, rav.shapes):
        mod_name, mod, attr = owners[name]
        lowrank = attr == "weight" and len(shape) == 2
        if module is not None:  # a layer fastes can correct, and its own weight (not tied)
            lowrank = lowrank and _rewritable(mod) and mod_name not in inside_mha
            lowrank = lowrank and users[id(getattr(mod, attr))] == 1
        if isinstance(mod, torch.nn.Embedding) and mod.max_norm is not None:
            lowrank = False  # max_norm renormalises rows in place: members would not be θ + σE
        kind = "lowrank" if lowrank else "full"
        if any(fnmatch.fnmatchcase(name, pat) for pat in patterns):
            kind = "frozen"
        layout.append(Leaf(name, kind, offset, size, tuple(shape), mod_name))
        offset += size
    return tuple(layout)


def _rewritable(mod) -> bool:
    """An ``nn.Linear`` / ``nn.Embedding`` whose forward is the class's own: the population
    forward replaces (Linear) or extends (Embedding) exactly that computation, so a subclass
    with a forward of its own gets full-rank noise instead."""
    return any(
        isinstance(mod, cls) and type(mod).forward is cls.forward
        for cls in (torch.nn.Linear, torch.nn.Embedding)
    )


class LowRankNoise:
    """Flat noise rows whose 2-D-weight segments are rank-r (see the module docstring).

    Args:
        layout: from :func:`leaf_layout`.
        rank: r >= 1.
        base: the source of the standard normals (``PhiloxNoise``/``TableNoise``) for the
            factors and the full-rank leaves.
    """

    def __init__(self, layout: tuple[Leaf, ...], rank: int, base: Any):
        self.layout, self.rank, self.base = layout, positive_int(rank, "rank"), base
        self.dim = sum(leaf.size for leaf in layout)
        self.max_row = max((self._row_len(leaf) for leaf in layout), default=1)

    @classmethod
    def for_params(
        cls, params: Any, rank: int = 1, *, module=None, freeze=(), noise: Any = "auto"
    ) -> LowRankNoise:
        """The low-rank noise for ``params`` (see :func:`leaf_layout` for ``module`` and
        ``freeze``), its normals from ``noise`` (``"auto"``, ``"table"``, ``"philox"``, ...,
        resolved for the longest row it draws). Pass it as ``noise=`` to ``es_step`` or any
        strategy to run it on materialised members::

            noise = LowRankNoise.for_params(params, rank=2)
            params = fastes.es_step(params, fitness_fn, key, noise=noise)
        """
        rav = raveler(params)
        noise_ = cls(leaf_layout(params, rav, module, freeze), rank, None)
        noise_.base = resolve_noise(noise, noise_.max_row, rav.device)
        return noise_

    def _row_len(self, leaf: Leaf) -> int:
        """Normals drawn per row for a leaf: r·(m + n) for low-rank, its size for full."""
        return self.rank * sum(leaf.shape) if leaf.kind == "lowrank" else leaf.size

    def draw(self, k: torch.Tensor, rows) -> list[Any]:
        """Per leaf: ``(A (R, m, r), B (R, n, r))`` for low-rank leaves, ``(R, size)`` normals
        for full leaves, ``None`` for frozen ones — all float32, regenerated from the key."""
        check_key(k)
        rows = _as_rows(rows, k.device)
        keys = split(k, len(self.layout))
        out: list[Any] = []
        for j, leaf in enumerate(self.layout):
            if leaf.kind == "frozen":
                out.append(None)
                continue
            z = self.base.rows(keys[j], rows, self._row_len(leaf))
            if leaf.kind == "full":
                out.append(z)
                continue
            (m, n), r, R = leaf.shape, self.rank, rows.numel()
            out.append((z[:, : m * r].reshape(R, m, r), z[:, m * r :].reshape(R, n, r)))
        return out

    def rows(self, k: torch.Tensor, rows, dim: int) -> torch.Tensor:
        """(R, D) flat noise rows, E_i materialised for the low-rank leaves (the reference)."""
        self._check_dim(dim)
        drawn = self.draw(k, rows)
        R = _as_rows(rows, k.device).numel()
        out = torch.zeros(R, dim, dtype=torch.float32, device=k.device)
        for leaf, d in zip(self.layout, drawn):
            seg = out[:, leaf.offset : leaf.offset + leaf.size]
            if leaf.kind == "full":
                seg.copy_(d)
            elif leaf.kind == "lowrank":
                A, B = d
                torch.bmm(A, B.transpose(1, 2), out=seg.view(R, *leaf.shape))
                seg.mul_(1.0 / math.sqrt(self.rank))
        return out

    def weighted_sum(self, k: torch.Tensor, rows, weights: torch.Tensor, dim: int):
        """Σ_j weights[j]·ε[rows[j]] (D,) float32: one GEMM per low-rank leaf."""
        self._check_dim(dim)
        return self.weighted_sum_drawn(self.draw(k, rows), weights)

    def weighted_sum_drawn(
        self,
        drawn: list[Any],
        weights: torch.Tensor,
        scale: float = 1.0,
        base: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """``scale``·:meth:`weighted_sum` on factors from :meth:`draw` (drawn once per
        generation), plus ``base`` (a (D,) float32 vector) when given: θ + c·Σ_j w_j ε_j for a
        linear optimizer step in one pass. Each segment is written once, by its own product
        (the GEMM adds ``base`` in its epilogue; no zero fill, no separate scaling or adding
        pass over D: at D = 4M those passes were a third of a generation)."""
        w = weights.to(torch.float32)
        out = torch.empty(self.dim, dtype=torch.float32, device=w.device)
        for leaf, d in zip(self.layout, drawn):
            sl = slice(leaf.offset, leaf.offset + leaf.size)
            seg, add = out[sl], (None if base is None else base[sl])
            if leaf.kind == "full":
                torch.mv(d.T, w * scale, out=seg) if add is None else \
                    torch.addmv(add, d.T, w * scale, out=seg)  # fmt: skip
            elif leaf.kind == "lowrank":
                A, B = d  # (R, m, r), (R, n, r)
                (m, n), R, r = leaf.shape, w.numel(), self.rank
                ws = w * (scale / math.sqrt(r))
                Aw = (A * ws[:, None, None]).transpose(0, 1).reshape(m, R * r)  # (m, R·r)
                Bt = B.transpose(0, 1).reshape(n, R * r)  # (n, R·r)
                if add is None:
                    torch.mm(Aw, Bt.T, out=seg.view(m, n))  # one GEMM
                else:
                    torch.addmm(add.view(m, n), Aw, Bt.T, out=seg.view(m, n))
            else:
                seg.zero_() if add is None else seg.copy_(add)
        return out

    def perturb(self, k, rows, theta, sigma, antithetic, out):
        """Members θ ± σ·ε (materialised, the reference path): ``(members, eps)``."""
        eps = self.rows(k, rows, theta.numel())
        return _fill_members(theta, eps, sigma, antithetic, out), eps

    def _check_dim(self, dim: int) -> None:
        if dim != self.dim:
            raise ValueError(f"this low-rank noise is laid out for D={self.dim}; got dim={dim}")
