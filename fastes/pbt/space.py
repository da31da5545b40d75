"""Search spaces of hyperparameters, and the explore operators PBT applies to them.

A :class:`Space` maps names to dimensions — :class:`Float` (linear or log scale), :class:`Int`,
:class:`Choice`, :class:`Bool` — and may hold fixed values that are passed through unchanged.
Declare it as a dict (``{"lr": Float(1e-4, 1e-1, log=True), "batch": 64}``) or as a dataclass
whose searched fields use :func:`hparam`.

A population's hyperparameters are a dict of (N,) tensors, one entry per searched name: floats
as float64, ints as int64, choices as the int64 index of the option, booleans as bool. Every
operator is a pure function of a fastes key, so a PBT run is reproducible:

* :meth:`Space.sample` draws N members (log-uniform for ``log=True``), :meth:`Space.defaults`
  repeats the defaults.
* :meth:`Space.perturb` is Ray Tune's explore rule (``PopulationBasedTraining``): with probability
  ``resample_probability`` a value is redrawn from its distribution; otherwise it is multiplied by
  one of ``factors`` (1.2 or 0.8) — on a log scale, or for a positive linear range; a linear range
  that reaches 0 or below moves by (factor − 1)·(high − low)/2 instead, so it can cross zero —,
  an int moves by at least 1, a choice moves to a neighbouring option. Values are clamped to
  their bounds: a member never leaves the space. With ``reset_probability`` a value returns to
  its default (EPBT's reset).
* :meth:`Space.crossover` is uniform crossover between pairs: each value of a pair is swapped
  with probability ``swap_probability`` — the probability given, not a fixed 0.5 (EPBT's bug).
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, NamedTuple

import torch

from .._validate import real
from ..noise import uniform
from ..prng import check_key, fold_in

__all__ = ["Float", "Int", "Choice", "Bool", "Space", "hparam", "as_space"]


class Float(NamedTuple):
    """A real in [low, high]; ``log=True`` samples and perturbs it on a log scale (low > 0)."""

    low: float
    high: float
    log: bool = False
    default: float | None = None  # None: the midpoint (geometric midpoint on a log scale)


class Int(NamedTuple):
    """An integer in [low, high] (both included); ``log=True`` samples it log-uniformly."""

    low: int
    high: int
    log: bool = False
    default: int | None = None  # None: the midpoint, rounded down


class Choice(NamedTuple):
    """One of ``options`` (ordered: perturbation moves to a neighbour)."""

    options: tuple
    default: Any = None  # None: the first option


class Bool(NamedTuple):
    """True or False."""

    default: bool = False


_DIMENSIONS = (Float, Int, Choice, Bool)
_DTYPES = {Float: torch.float64, Int: torch.int64, Choice: torch.int64, Bool: torch.bool}


def hparam(default: Any, low: Any = None, high: Any = None, *, log: bool = False,
           choices: Any = None) -> Any:  # fmt: skip
    """A dataclass field searched by PBT: ``lr: float = hparam(1e-3, 1e-5, 1e-1, log=True)``.

    ``choices=(...)`` makes a :class:`Choice`; a bool default makes a :class:`Bool`; an int
    default with bounds an :class:`Int`; otherwise a :class:`Float`. Fields without ``hparam``
    are fixed values.
    """
    if choices is not None:
        dim = Choice(tuple(choices), default)
    elif isinstance(default, bool):
        dim = Bool(default)
    elif low is None or high is None:
        raise ValueError(f"hparam({default!r}) needs low and high bounds (or choices=...)")
    elif isinstance(default, int) and isinstance(low, int) and isinstance(high, int):
        dim = Int(low, high, log, default)
    else:
        dim = Float(float(low), float(high), log, float(default))
    return dataclasses.field(default=default, metadata={"fastes.pbt": dim})


def _check(name: str, dim: Any) -> Any:
    """The dimension with its default filled in, after checking bounds and default."""
    where = f"hyperparameter {name!r}"
    if isinstance(dim, (Float, Int)):
        cast = float if isinstance(dim, Float) else int
        if isinstance(dim, Int) and not all(
            isinstance(v, int) and not isinstance(v, bool) for v in (dim.low, dim.high)
        ):
            raise TypeError(f"{where}: Int bounds must be ints; got {dim.low!r}, {dim.high!r}")
        low = real(dim.low, f"{where} low", low=-math.inf)
        high = real(dim.high, f"{where} high", low=-math.inf)
        if not low < high:
            raise ValueError(f"{where}: low must be < high; got low={dim.low}, high={dim.high}")
        if dim.log and low <= 0:
            raise ValueError(f"{where}: a log scale needs low > 0; got low={dim.low}")
        if dim.default is None:
            mid = math.sqrt(low * high) if dim.log else (low + high) / 2
            default = cast(mid) if isinstance(dim, Float) else math.floor(mid)
        else:
            default = cast(dim.default)
        if not low <= default <= high:
            raise ValueError(f"{where}: default {dim.default} is outside [{low}, {high}]")
        return dim._replace(default=default)
    if isinstance(dim, Choice):
        options = tuple(dim.options)
        if not options:
            raise ValueError(f"{where}: Choice needs at least one option")
        default = options[0] if dim.default is None else dim.default
        if default not in options:
            raise ValueError(f"{where}: default {default!r} is not one of {options}")
        return Choice(options, default)
    if isinstance(dim, Bool):
        return Bool(bool(dim.default))
    raise TypeError(f"{where}: expected Float, Int, Choice or Bool; got {dim!r}")


class Space:
    """Named hyperparameter dimensions plus fixed values (see the module docstring)."""

    def __init__(self, dims: dict[str, Any], fixed: dict[str, Any] | None = None,
                 dataclass: type | None = None) -> None:  # fmt: skip
        if not isinstance(dims, dict) or not dims:
            raise ValueError(f"a search space needs at least one searched dimension; got {dims!r}")
        self.dims = {str(k): _check(str(k), v) for k, v in dims.items()}
        self.fixed = dict(fixed or {})
        self.dataclass = dataclass

    def __repr__(self) -> str:
        return f"Space({self.dims!r}, fixed={self.fixed!r})"

    def names(self) -> list[str]:
        return list(self.dims)

    # ---- populations of values ------------------------------------------------------------
    def defaults(self, n: int) -> dict[str, torch.Tensor]:
        """(n,) tensors holding every dimension's default."""
        return {name: torch.full((n,), self._encode(name, d.default), dtype=_DTYPES[type(d)])
                for name, d in self.dims.items()}  # fmt: skip

    def sample(self, key: torch.Tensor, n: int) -> dict[str, torch.Tensor]:
        """n members drawn from the space (uniform, log-uniform on a log scale)."""
        check_key(key)
        return {name: self._draw(fold_in(key, i), d, n) for i, (name, d) in
                enumerate(self.dims.items())}  # fmt: skip

    def check(self, values: dict[str, torch.Tensor], n: int | None = None) -> None:
        """Raise a ValueError naming the entry unless ``values`` is a population of this space."""
        if not isinstance(values, dict) or set(values) != set(self.dims):
            got = sorted(values) if isinstance(values, dict) else type(values).__name__
            raise ValueError(f"hyperparameters must be a dict with keys {self.names()}; got {got}")
        for name, d in self.dims.items():
            v = values[name]
            if not isinstance(v, torch.Tensor) or v.ndim != 1 or v.dtype != _DTYPES[type(d)]:
                raise ValueError(
                    f"hyperparameter {name!r} must be a {_DTYPES[type(d)]} tensor of shape (N,); "
                    f"got {v!r}"
                )
            if n is not None and v.shape[0] != n:
                raise ValueError(f"hyperparameter {name!r} has {v.shape[0]} members, expected {n}")
            low, high = self._range(d)
            if not bool(((v >= low) & (v <= high)).all()):
                raise ValueError(f"hyperparameter {name!r} leaves [{low}, {high}]: {v.tolist()}")

    def member(self, values: dict[str, torch.Tensor], i: int) -> Any:
        """Member i's hyperparameters as Python values (choices decoded), fixed values included;
        an instance of the dataclass when the space was declared by one."""
        out = dict(self.fixed)
        for name, d in self.dims.items():
            v = values[name][i].item()
            out[name] = (d.options[v] if isinstance(d, Choice) else
                         bool(v) if isinstance(d, Bool) else v)  # fmt: skip
        return self.dataclass(**out) if self.dataclass is not None else out

    def encode(self, members: list[Any]) -> dict[str, torch.Tensor]:
        """The population holding these members (dicts or dataclass instances)."""
        rows = [m if isinstance(m, dict) else dataclasses.asdict(m) for m in members]
        return {name: torch.tensor([self._encode(name, r[name]) for r in rows],
                                   dtype=_DTYPES[type(d)])
                for name, d in self.dims.items()}  # fmt: skip

    # ---- explore ----------------------------------------------------------------------------
    def perturb(self, values: dict[str, torch.Tensor], key: torch.Tensor,
                mask: torch.Tensor | None = None, *, factors: tuple[float, ...] = (1.2, 0.8),
                resample_probability: float = 0.25,
                reset_probability: float = 0.0) -> dict[str, torch.Tensor]:  # fmt: skip
        """Explore: perturb the members where ``mask`` is True (all when None); see the module
        docstring for the rule. Returns new tensors; ``values`` is not modified."""
        check_key(key)
        resample_probability = real(resample_probability, "resample_probability", high=1.0)
        reset_probability = real(reset_probability, "reset_probability", high=1.0)
        factors = tuple(real(f, "factors", positive=True) for f in factors)
        if not factors or all(f == 1.0 for f in factors):
            raise ValueError(f"factors must hold at least one value other than 1; got {factors}")
        n = next(iter(values.values())).shape[0]
        self.check(values, n)
        mask = torch.ones(n, dtype=torch.bool) if mask is None else mask.to(torch.bool)
        out = {}
        for i, (name, d) in enumerate(self.dims.items()):
            k = fold_in(key, i)
            u = uniform(fold_in(k, 0), (n,), [0.0] * 3, [1.0] * 3)  # (n, 3)
            f = torch.tensor(factors, dtype=torch.float64)[(u[:, 1] * len(factors)).long()]
            new = self._perturb(d, values[name], f)
            resampled = self._draw(fold_in(k, 1), d, n)
            new = torch.where(u[:, 0] < resample_probability, resampled, new)
            default = torch.full_like(new, self._encode(name, d.default))
            new = torch.where(u[:, 2] < reset_probability, default, new)
            out[name] = torch.where(mask, new, values[name])
        return out

    def crossover(self, values: dict[str, torch.Tensor], key: torch.Tensor, pairs: torch.Tensor,
                  swap_probability: float = 0.5) -> dict[str, torch.Tensor]:  # fmt: skip
        """Uniform crossover: for each (a, b) row of ``pairs`` (int64, shape (M, 2), disjoint
        members) and each dimension, swap the two values with probability ``swap_probability``."""
        check_key(key)
        p = real(swap_probability, "swap_probability", high=1.0)
        pairs = torch.as_tensor(pairs, dtype=torch.int64).reshape(-1, 2)
        if pairs.unique().numel() != pairs.numel():
            raise ValueError(f"pairs must not share members; got {pairs.tolist()}")
        m = pairs.shape[0]
        if m == 0:
            return dict(values)
        u = uniform(key, (m,), [0.0] * len(self.dims), [1.0] * len(self.dims))  # (m, dims)
        out = {}
        for j, name in enumerate(self.dims):
            v = values[name].clone()
            swap = pairs[u[:, j] < p]
            v[swap[:, 0]], v[swap[:, 1]] = values[name][swap[:, 1]], values[name][swap[:, 0]]
            out[name] = v
        return out

    # ---- one dimension ------------------------------------------------------------------------
    def _encode(self, name: str, value: Any) -> Any:
        d = self.dims[name]
        if isinstance(d, Choice):
            if value not in d.options:
                raise ValueError(f"hyperparameter {name!r}: {value!r} is not one of {d.options}")
            return d.options.index(value)
        low, high = self._range(d)
        if not low <= value <= high:
            raise ValueError(f"hyperparameter {name!r}: {value!r} is outside [{low}, {high}]")
        return value

    @staticmethod
    def _range(d: Any) -> tuple[Any, Any]:
        if isinstance(d, (Float, Int)):
            return d.low, d.high
        return (0, len(d.options) - 1) if isinstance(d, Choice) else (False, True)

    @staticmethod
    def _draw(key: torch.Tensor, d: Any, n: int) -> torch.Tensor:
        u = uniform(key, (n,), [0.0], [1.0])[:, 0]  # (n,) float64 in (0, 1)
        if isinstance(d, Float):
            if d.log:
                lo, hi = math.log(d.low), math.log(d.high)
                return (lo + (hi - lo) * u).exp().clamp(d.low, d.high)
            return (d.low + (d.high - d.low) * u).clamp(d.low, d.high)
        if isinstance(d, Int):
            if d.log:  # log-uniform over [low, high + 1), floored: each int gets its log-width
                lo, hi = math.log(d.low), math.log(d.high + 1)
                return (lo + (hi - lo) * u).exp().floor().long().clamp(d.low, d.high)
            return (d.low + (d.high - d.low + 1) * u).floor().long().clamp(d.low, d.high)
        if isinstance(d, Choice):
            return (u * len(d.options)).long().clamp(0, len(d.options) - 1)
        return u < 0.5

    @staticmethod
    def _perturb(d: Any, v: torch.Tensor, f: torch.Tensor) -> torch.Tensor:
        up = f > 1
        if isinstance(d, Float):
            if d.log or d.low > 0:
                new = v * f
            else:
                new = v + (f - 1) * (d.high - d.low) / 2
            return new.clamp(d.low, d.high)
        if isinstance(d, Int):
            if d.log or d.low > 0:
                new = torch.round(v.double() * f).long()
            else:
                new = v + torch.round((f - 1) * (d.high - d.low) / 2).long()
            step = torch.where(up, 1, -1)
            new = torch.where(new == v, v + step, new)  # an int always moves
            return new.clamp(d.low, d.high)
        if isinstance(d, Choice):
            return (v + torch.where(up, 1, -1)).clamp(0, len(d.options) - 1)
        return up.clone()  # Bool: the factor's direction picks True (up) or False


def as_space(space: Any) -> Space:
    """A :class:`Space` from a Space, a dict of dimensions and fixed values, or a dataclass type
    whose searched fields use :func:`hparam`."""
    if isinstance(space, Space):
        return space
    if isinstance(space, dict):
        dims = {k: v for k, v in space.items() if isinstance(v, _DIMENSIONS)}
        fixed = {k: v for k, v in space.items() if not isinstance(v, _DIMENSIONS)}
        return Space(dims, fixed)
    if isinstance(space, type) and dataclasses.is_dataclass(space):
        dims, fixed = {}, {}
        for f in dataclasses.fields(space):
            if "fastes.pbt" in f.metadata:
                dims[f.name] = f.metadata["fastes.pbt"]
            elif f.default is not dataclasses.MISSING:
                fixed[f.name] = f.default
            elif f.default_factory is not dataclasses.MISSING:
                fixed[f.name] = f.default_factory()
            else:
                raise ValueError(f"field {f.name!r} of {space.__name__} needs a default")
        return Space(dims, fixed, dataclass=space)
    raise TypeError(
        "space must be a fastes.pbt.Space, a dict of dimensions (Float, Int, Choice, Bool) and "
        f"fixed values, or a dataclass type with hparam(...) fields; got {type(space).__name__}"
    )
