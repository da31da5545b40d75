"""Differentiable expectations: score-function (NES) gradients through autograd.

For samples x_i ~ p_θ drawn *without* a gradient path, the estimate

    E_{x~p_θ}[f(x)] ≈ (1/N) Σ_i f(x_i) · w_i,   w_i = exp(log p_θ(x_i) − stopgrad(log p_θ(x_i)))

has the value of the plain Monte-Carlo mean (w_i = 1) and, through autograd, the gradient
(1/N) Σ_i [∇f(x_i)·w_i + f(x_i)·∇log p_θ(x_i)] — the score-function / NES gradient (Wierstra
et al. 2014, https://arxiv.org/abs/1106.4487); w_i is the "magic box" of DiCE (Foerster et al.
2018, https://arxiv.org/abs/1802.05098). Because ``values`` may themselves be built from other
expectations (a variance, a kernel-density entropy of behaviours), nested objectives such as
evolvability ES (Gajewski et al. 2019, https://arxiv.org/abs/1907.06077) differentiate correctly.

Any ``torch.distributions`` distribution with ``log_prob`` works — Normal with learnable mean
and σ, mixtures (``MixtureSameFamily``) with learnable means, weights and σ. :func:`sample`
draws from fastes keys, so runs are reproducible, and supports antithetic (paired) Normal samples.

Example:
    >>> mu = torch.tensor([1.0], requires_grad=True)
    >>> dist = normal(mu, 0.5)
    >>> x = sample(dist, 500, fastes.key(0), antithetic=True)       # (500, 1), no grad path
    >>> objective = expectation(-((x - 5) ** 2).sum(-1), x, dist)   # ≈ E[f], differentiable
    >>> objective.backward()                                         # mu.grad ≈ -2(mu - 5) = 8
"""

from __future__ import annotations

import torch
from torch import distributions as D

from .noise import philox_normal_rows, philox_uint32_rows
from .prng import check_key, fold_in

__all__ = ["expectation", "normal", "mixture", "sample"]


def expectation(
    values: torch.Tensor, samples: torch.Tensor, dist: D.Distribution, dim: int = 0
) -> torch.Tensor:
    """Monte-Carlo estimate of E_{x~dist}[values] whose gradient is the score-function gradient.

    Args:
        values: f(x_i) for each sample, the sample axis at ``dim``; any further dims are
            broadcast (e.g. (N, M) for M statistics of each sample).
        samples: (N, *event_shape) samples of ``dist`` (detached; see :func:`sample`).
        dist: the distribution whose parameters receive gradients.
        dim: the sample axis of ``values``.

    Returns:
        ``values`` averaged over ``dim`` (shape of ``values`` without ``dim``).
    """
    if not isinstance(values, torch.Tensor) or not isinstance(samples, torch.Tensor):
        raise TypeError("values and samples must be tensors")
    if not isinstance(dist, D.Distribution):
        raise TypeError(
            f"dist must be a torch.distributions.Distribution; got {type(dist).__name__}"
        )
    n = samples.shape[0]
    dim = dim % values.dim() if values.dim() else 0
    if values.dim() == 0 or values.shape[dim] != n:
        raise ValueError(
            f"values must have the sample axis (length {n}, from samples) at dim {dim}; got "
            f"shape {tuple(values.shape)}"
        )
    lp = dist.log_prob(samples.detach())
    lp = lp.reshape(n, -1).sum(1)  # (N,): sums independent event dims a plain Normal leaves
    box = torch.exp(lp - lp.detach())  # value 1, gradient ∇log p
    shape = [1] * values.dim()
    shape[dim] = n
    return (values * box.reshape(shape)).mean(dim)


def normal(mean: torch.Tensor, sigma: float | torch.Tensor) -> D.Distribution:
    """Isotropic (or diagonal) Normal over vectors: ``Independent(Normal(mean, sigma), 1)``.

    ``mean`` (D,) and ``sigma`` (scalar or (D,)) may require grad.
    """
    mean = torch.as_tensor(mean)
    if mean.dim() == 0:
        mean = mean.reshape(1)
    sigma = torch.as_tensor(sigma, dtype=mean.dtype, device=mean.device)
    return D.Independent(D.Normal(mean, sigma.expand_as(mean)), 1)


def mixture(
    means: torch.Tensor, sigma: float | torch.Tensor, logits: torch.Tensor | None = None
) -> D.Distribution:
    """Mixture of C Normals: component k is N(means[k], sigma²I), weights softmax(logits).

    ``means`` (C, D), ``sigma`` (scalar, (C,) or (C, D)) and ``logits`` (C,) may require grad;
    equal weights when ``logits`` is None.
    """
    means = torch.as_tensor(means)
    if means.dim() != 2:
        raise ValueError(f"means must have shape (C, D); got {tuple(means.shape)}")
    C = means.shape[0]
    sigma = torch.as_tensor(sigma, dtype=means.dtype, device=means.device)
    sigma = sigma.reshape(C, 1) if sigma.dim() == 1 else sigma
    if logits is None:
        logits = torch.zeros(C, dtype=means.dtype, device=means.device)
    comps = D.Independent(D.Normal(means, sigma.expand_as(means)), 1)
    return D.MixtureSameFamily(D.Categorical(logits=logits), comps)


def _normal_parts(dist: D.Distribution):
    base = dist.base_dist if isinstance(dist, D.Independent) else dist
    if not isinstance(base, D.Normal):
        return None
    return base.loc.detach(), base.scale.detach()


def sample(
    dist: D.Distribution, n: int, key: torch.Tensor, *, antithetic: bool = False
) -> torch.Tensor:
    """n detached samples of a Normal or a Normal mixture, drawn from a fastes key.

    Antithetic sampling pairs samples 2j and 2j+1 as μ ± σε_j (for a mixture: the same component
    and ±ε around its mean); every sample is still marginally distributed as ``dist``.
    """
    check_key(key)
    if isinstance(n, bool) or not isinstance(n, int) or n < 1 or (antithetic and n % 2):
        raise ValueError(f"n must be a positive int (even when antithetic); got {n!r}")
    rows = n // 2 if antithetic else n
    if isinstance(dist, D.MixtureSameFamily):
        probs = dist.mixture_distribution.probs.detach()
        u = philox_uint32_rows(fold_in(key, 1), torch.arange(rows), 1)[:, 0]
        comp = torch.searchsorted(torch.cumsum(probs, 0), (u.double() + 0.5) / 2**32)
        comp = comp.clamp_max(probs.numel() - 1).to(probs.device)
        loc, scale = _normal_parts(dist.component_distribution)
        loc, scale = loc[comp], scale[comp]  # (rows, D)
    else:
        parts = _normal_parts(dist)
        if parts is None:
            raise TypeError(
                f"sample draws Normal or MixtureSameFamily of Normals; got {type(dist).__name__}; "
                "use dist.sample() for others"
            )
        loc, scale = parts
    dim = loc.shape[-1] if loc.dim() else 1
    eps = philox_normal_rows(fold_in(key, 0), torch.arange(rows), dim).to(loc)
    eps = eps.reshape(rows, *loc.shape[-1:]) if loc.dim() else eps[:, 0]
    if antithetic:
        eps = torch.stack([eps, -eps], 1).reshape(n, *eps.shape[1:])
        loc = loc.repeat_interleave(2, 0) if loc.dim() == 2 else loc
        scale = scale.repeat_interleave(2, 0) if scale.dim() == 2 else scale
    return (loc + scale * eps).detach()
