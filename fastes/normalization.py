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

__all__ = [
    "RunningNorm",
    "combine",
    "mean_std",
    "merge",
    "moments",
    "moments_by_member",
    "normalize",
    "running_norm",
]


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


def moments_by_member(obs: torch.Tensor, mask: torch.Tensor | None = None) -> RunningNorm:
    """Statistics per leading index of ``obs`` (M, ..., obs_dim): count (M,), mean and M2
    (M, obs_dim); ``mask`` (M, ...) keeps only True rows. Members without a row get zeros."""
    x = torch.as_tensor(obs).to(torch.float64).reshape(obs.shape[0], -1, obs.shape[-1])
    if mask is None:
        w = torch.ones(x.shape[:2], dtype=torch.float64, device=x.device)
    else:
        w = torch.as_tensor(mask).reshape(x.shape[:2]).to(torch.float64)
    n = w.sum(1)  # (M,)
    mean = (w[..., None] * x).sum(1) / n.clamp_min(1)[:, None]
    m2 = (w[..., None] * (x - mean[:, None]).square()).sum(1)
    return RunningNorm(n, mean, m2)


def merge(a: RunningNorm, b: RunningNorm) -> RunningNorm:
    """Statistics of the union of the observations behind ``a`` and ``b`` (Chan et al. 1979);
    statistics with a leading member dim (count (M,)) merge member by member."""
    if a.mean.shape[-1] != b.mean.shape[-1]:
        raise ValueError(
            f"cannot merge statistics of {a.mean.shape[-1]} and {b.mean.shape[-1]} features"
        )
    n = a.count + b.count
    if n.dim() == 0 and float(n) == 0:
        return a
    safe = torch.where(n > 0, n, 1.0)  # members with no observations keep a's (zero) values
    delta = b.mean - a.mean
    mean = a.mean + delta * (b.count / safe)[..., None]
    m2 = a.m2 + b.m2 + delta.square() * (a.count * b.count / safe)[..., None]
    return RunningNorm(n, mean, m2)


def combine(per_member: RunningNorm) -> RunningNorm:
    """One set of statistics from per-member ones (count (M,), mean / M2 (M, obs_dim)), by the
    pooled formula: n = Σ n_i, mean = Σ n_i·mean_i / n, M2 = Σ M2_i + Σ n_i·(mean_i − mean)².

    Fixed-shape reductions over the member dim, so the result depends only on the (M, ...)
    tensors, not on how members were split between processes.
    """
    n = per_member.count.sum()
    if float(n) == 0:
        return running_norm(per_member.mean.shape[-1])
    w = per_member.count[:, None]
    mean = (w * per_member.mean).sum(0) / n
    m2 = per_member.m2.sum(0) + (w * (per_member.mean - mean).square()).sum(0)
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
