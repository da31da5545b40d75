"""Running mean and variance for observation normalisation (Salimans et al. 2017 §2.2; Mania
et al. 2018, ARS V2).

The statistics are a NamedTuple of float64 tensors (count, mean, M2 = Σ (x − mean)²), merged
batch by batch with Chan et al.'s parallel update, so any split of the same observations into
batches gives the same mean and variance up to float64 rounding, and a fixed merge order gives
the same bits. Policies see ``clip((obs − mean) / std, ±clip)``; statistics are frozen during a
generation and updated from the observations of its rollouts afterwards.

    norm = running_norm(obs_dim)
    norm = merge(norm, moments(observations))     # (N, obs_dim) batch, or masked
    mean, std = mean_std(norm)
"""

from __future__ import annotations

from typing import NamedTuple

import torch

__all__ = ["RunningNorm", "running_norm", "moments", "merge", "mean_std", "normalize"]


class RunningNorm(NamedTuple):
    count: torch.Tensor  # () float64, observations folded in
    mean: torch.Tensor  # (obs_dim,) float64
    m2: torch.Tensor  # (obs_dim,) float64, sum of squared deviations from the mean


def running_norm(obs_dim: int) -> RunningNorm:
    """Empty statistics for ``obs_dim`` features (identity normalisation until 2 observations)."""
    if not isinstance(obs_dim, int) or obs_dim < 1:
        raise ValueError(f"obs_dim must be a positive int; got {obs_dim!r}")
    z = torch.zeros(obs_dim, dtype=torch.float64)
    return RunningNorm(torch.zeros((), dtype=torch.float64), z, z.clone())


def moments(obs: torch.Tensor, mask: torch.Tensor | None = None) -> RunningNorm:
    """Statistics of a batch ``obs`` (..., obs_dim); ``mask`` (...) keeps only True rows."""
    x = torch.as_tensor(obs).to(torch.float64).reshape(-1, obs.shape[-1])
    if mask is None:
        w = torch.ones(x.shape[0], dtype=torch.float64, device=x.device)
    else:
        w = torch.as_tensor(mask).reshape(-1).to(torch.float64)
    n = w.sum()
    if float(n) == 0:
        return running_norm(x.shape[-1])
    mean = (w @ x) / n
    m2 = w @ (x - mean).square()
    return RunningNorm(n.cpu(), mean.cpu(), m2.cpu())


def merge(a: RunningNorm, b: RunningNorm) -> RunningNorm:
    """Statistics of the union of the observations behind ``a`` and ``b`` (Chan et al. 1979)."""
    if a.mean.shape != b.mean.shape:
        raise ValueError(
            f"cannot merge statistics of {a.mean.numel()} and {b.mean.numel()} features"
        )
    n = a.count + b.count
    if float(n) == 0:
        return a
    delta = b.mean - a.mean
    mean = a.mean + delta * (b.count / n)
    m2 = a.m2 + b.m2 + delta.square() * (a.count * b.count / n)
    return RunningNorm(n, mean, m2)


def mean_std(norm: RunningNorm, eps: float = 1e-8) -> tuple[torch.Tensor, torch.Tensor]:
    """(mean, std) as float64 tensors; (0, 1) before two observations; std floored at ``eps``."""
    if float(norm.count) < 2:
        return torch.zeros_like(norm.mean), torch.ones_like(norm.mean)
    return norm.mean, (norm.m2 / norm.count).sqrt().clamp_min(eps)


def normalize(norm: RunningNorm, obs: torch.Tensor, clip: float = 5.0) -> torch.Tensor:
    """``clamp((obs − mean) / std, −clip, clip)`` in obs's dtype and device."""
    mean, std = mean_std(norm)
    return ((obs - mean.to(obs)) / std.to(obs)).clamp(-clip, clip)
