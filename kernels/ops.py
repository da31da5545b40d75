"""The kernels as ``torch.library`` custom ops (``torch.ops.fastes.*``).

Registered with ``torch.library.triton_op`` so ``torch.compile`` (fullgraph) traces through them
and CUDA graphs can capture them: the key is read from a device tensor, never from the host. The
CPU implementation of each op is its PyTorch reference in :mod:`fastes.noise`, so the ops are
usable (and testable) on any device.

Importing this module imports triton; ``fastes._dispatch`` does so only for CUDA tensors.
"""

from __future__ import annotations

import torch
from torch import Tensor

from fastes import noise as _ref

from . import noise as _noise
from . import offsets as _offsets
from . import perturb as _perturb
from . import reduce as _reduce

__all__ = ["philox_normal_rows", "philox_weighted_sum", "philox_perturb", "table_offsets"]


def _wrap(kernel):
    # wrap_triton (torch >= 2.6) lets Dynamo trace the launch; eager calls pass straight through.
    wrap = getattr(torch.library, "wrap_triton", None)
    return wrap(kernel) if wrap is not None else kernel


@torch.library.triton_op("fastes::philox_normal_rows", mutates_args=())
def philox_normal_rows(key: Tensor, rows: Tensor, dim: int) -> Tensor:
    """(R, dim) float32 Philox normals (kernels/noise.py)."""
    return _noise.philox_normal_rows(key, rows, dim, launch=_wrap)


@torch.library.triton_op("fastes::philox_weighted_sum", mutates_args=())
def philox_weighted_sum(key: Tensor, rows: Tensor, weights: Tensor, dim: int) -> Tensor:
    """Σ_j weights[j]·ε[rows[j]], (dim,) float32, noise regenerated in registers."""
    return _reduce.philox_weighted_sum(key, rows, weights, dim, launch=_wrap)


@torch.library.triton_op("fastes::philox_perturb", mutates_args=())
def philox_perturb(
    key: Tensor, rows: Tensor, theta: Tensor, sigma: float, antithetic: bool
) -> Tensor:
    """Members θ ± σ·ε[rows[j]], (R or 2R, D) float32 (kernels/perturb.py)."""
    return _perturb.philox_perturb(key, rows, theta, sigma, antithetic, launch=_wrap)


@torch.library.triton_op("fastes::table_offsets", mutates_args=())
def table_offsets(key: Tensor, rows: Tensor, span: int) -> Tensor:
    """(R,) int64 noise-table offsets in [0, span) of ``rows`` (kernels/offsets.py)."""
    return _offsets.table_offsets(key, rows, span, launch=_wrap)


@philox_normal_rows.register_kernel("cpu")
def _(key, rows, dim):
    return _ref.philox_normal_rows(key, rows, dim)


@philox_weighted_sum.register_kernel("cpu")
def _(key, rows, weights, dim):
    return _ref.philox_weighted_sum(key, rows, weights, dim)


@philox_perturb.register_kernel("cpu")
def _(key, rows, theta, sigma, antithetic):
    return _ref.philox_perturb(key, rows, theta, sigma, antithetic)[0]


# Shape-only implementations for FakeTensor tracing (torch.compile / export). Explicit, so tracing
# never runs a launcher — which under TRITON_INTERPRET would touch fake data.
@philox_normal_rows.register_fake
def _(key, rows, dim):
    return rows.new_empty((rows.shape[0], dim), dtype=torch.float32)


@philox_weighted_sum.register_fake
def _(key, rows, weights, dim):
    return weights.new_empty((dim,), dtype=torch.float32)


@philox_perturb.register_fake
def _(key, rows, theta, sigma, antithetic):
    return theta.new_empty((rows.shape[0] * (2 if antithetic else 1), theta.shape[0]))


@table_offsets.register_kernel("cpu")
def _(key, rows, span):
    return _ref.table_offsets(key, rows, 1, span)  # rows of 1 element: span offsets


@table_offsets.register_fake
def _(key, rows, span):
    return torch.empty_like(rows)
