"""Run a module for P low-rank members at once, without per-member weights.

Member i's weights are W + σE_i with E_i = A_i B_iᵀ/√r for each ``nn.Linear``/``nn.Embedding``
weight (:mod:`fastes.lowrank`) and θ + σz_i for the other, small leaves. The module runs under
``torch.func.vmap`` over members with the shared W unbatched and the factors batched, so norms,
activations and attention vectorize as usual, and two layer types are rewritten:

* ``nn.Linear`` computes, for all members' inputs at once (``lowrank_linear``'s batching rule),
  C_i = b_i + (x_i B_i)(σ/√r·A_i)ᵀ with one ``baddbmm`` (for r = 1 an outer product: one
  ``addcmul``), then C += x Wᵀ with one GEMM over all P·B rows accumulating into C (BLAS's
  β = 1). The output is written about as often as by plain
  inference's ``addmm`` (bias copy + GEMM); the correction adds O(P·B·r·(m + n)) flops to the
  GEMM's P·B·m·n.
  Layers with small outputs (P·rows·m ≤ 2^18) use plain ops under vmap's own rules instead:
  the custom rule's dispatch would cost more than they do.
* ``nn.Embedding`` adds (σ/√r)·A_i[token] B_iᵀ to its output (a forward hook).
* ``nn.LayerNorm`` with per-member (full-rank) weight and bias normalises without them and
  applies them with one ``addcmul``: vmap's rule for ``layer_norm`` with batched affine
  parameters runs the norm, a multiply and an add (measured, 64 members × 32 rows × 256:
  1.46 -> 0.31 ms a call; 1024 members: 39.5 -> 26.0 ms).

Contract for the user's fitness: ``population(*inputs)`` behaves like ``module(*inputs)`` with a
leading member dim on the output; inputs are shared by every member unless ``in_dims`` says
which dim holds members. The module must call its low-rank layers as modules (a layer whose
weight is read directly is reported, not silently left unperturbed).
"""

from __future__ import annotations

import math
import types
from contextlib import contextmanager
from typing import Any

import torch
from torch.func import functional_call, vmap

from . import _dispatch
from .lowrank import Leaf, LowRankNoise

__all__ = ["Population", "lowrank_linear", "population_inputs"]


class Population:
    """P members of a module, run at once (see the module docstring).

    Made by ``EGGROLL.ask_population`` / ``step`` and handed to a population fitness.
    ``population(x)`` with inputs shared by all members returns outputs (P, ...);
    ``population(x, in_dims=0)`` takes per-member inputs (P, ...) (``in_dims`` as in
    ``torch.func.vmap``: one entry per positional argument, or one for all). Keyword arguments
    are shared. ``len(population)`` is P.
    """

    def __init__(
        self, module, layout: tuple[Leaf, ...], shared: dict, factors: dict, full: dict, size: int
    ):
        self.module, self.layout, self.size = module, layout, size
        self._shared, self._factors, self._full = shared, factors, full
        self._lowrank = {leaf.module for leaf in layout if leaf.kind == "lowrank"}
        self._norms = {name.rpartition(".")[0] for name in full}  # modules with member leaves

    def __len__(self) -> int:
        return self.size

    def __call__(self, *args, in_dims=None, **kwargs):
        dims = in_dims if isinstance(in_dims, tuple) else (in_dims,) * len(args)
        if len(dims) != len(args):
            raise ValueError(
                f"in_dims must have one entry per positional argument ({len(args)}); got {in_dims}"
            )
        for a, d in zip(args, dims):
            if d is not None and (not isinstance(a, torch.Tensor) or a.shape[d] != self.size):
                raise ValueError(
                    f"an argument with in_dims={d} must have {self.size} members along dim {d}; "
                    f"got shape {tuple(getattr(a, 'shape', ()))}"
                )

        def member(factors, full, *xs):
            with _rewritten(self.module, self._lowrank, self._norms, factors, self.size) as fired:
                out = functional_call(self.module, {**self._shared, **full}, xs, kwargs)
            missed = sorted(self._lowrank - fired)
            if missed:  # its weight was read without its forward: the members would be wrong
                raise ValueError(
                    f"the low-rank layers {missed} were not called in the forward, so their "
                    "members' perturbations would be missing; freeze their weights "
                    "(freeze=[...]) if they are unused, or call the layers as modules"
                )
            return out

        return vmap(member, in_dims=(0, 0, *dims))(self._factors, self._full, *args)


@contextmanager
def _rewritten(module: torch.nn.Module, lowrank: set, member_leaves: set, factors: dict,
               members: int):  # fmt: skip
    """Low-rank layers of ``module`` run with this member's factors while inside, and layer
    norms whose parameters are per member (``member_leaves``: module names) apply them in one
    op."""
    handles, patched, fired = [], [], set()
    try:
        for name, mod in module.named_modules():
            if name in member_leaves and type(mod) is torch.nn.LayerNorm and mod.weight is not None:
                mod.forward = types.MethodType(_layer_norm_forward, mod)
                patched.append(mod)
            if name not in lowrank:
                continue
            A, B = factors[name]  # (m, r) with σ/√r and the sign folded in, (n, r)
            if isinstance(mod, torch.nn.Embedding):
                handles.append(mod.register_forward_hook(_embedding_hook(A, B, name, fired)))
            else:
                mod.forward = types.MethodType(_linear_forward(A, B, name, fired, members), mod)
                patched.append(mod)
        yield fired
    finally:
        for h in handles:
            h.remove()
        for mod in patched:
            del mod.forward  # back to the class's forward


# Up to this many output elements over all members a layer runs on plain ops under vmap's own
# batching rules: the custom rule's dispatch costs ~0.4 ms a call here, more than a small layer's
# whole forward (an RL policy calls its layers every env step: 2.0 -> 1.3 ms per population call
# of a 3-64-64-1 MLP, P = 128, 8 episodes), while on large outputs its fused passes win (the
# sorting transformer of examples/10, P = 256, 384 rows per member: 0.65 s a generation with the
# rule, 1.07 s without).
_SMALL_OUTPUT = 2**18


def _linear_forward(A, B, name: str, fired: set, members: int):
    def forward(self, x):
        fired.add(name)
        A_, B_ = A.to(x.dtype), B.to(x.dtype)
        if members * (x.numel() // max(x.shape[-1], 1)) * self.weight.shape[0] <= _SMALL_OUTPUT:
            out = torch.nn.functional.linear(x, self.weight, self.bias)
            return out + (x @ B_) @ A_.T
        return lowrank_linear(x, self.weight, self.bias, A_, B_)

    return forward


def _layer_norm_forward(self, x):
    """``nn.LayerNorm.forward`` with the affine step as one ``addcmul`` (see the module
    docstring): the same values to float rounding."""
    y = torch.nn.functional.layer_norm(x, self.normalized_shape, None, None, self.eps)
    return y * self.weight if self.bias is None else torch.addcmul(self.bias, y, self.weight)


def _embedding_hook(A, B, name: str, fired: set):
    def hook(mod, args, out):  # W (V, d): out (..., d) += A[idx] Bᵀ
        fired.add(name)
        return out + torch.nn.functional.embedding(args[0], A.to(out.dtype)) @ B.to(out.dtype).T

    return hook


class _LowRankLinear(torch.autograd.Function):
    """x Wᵀ + b + (x B) Aᵀ for one member; its vmap rule runs all members with one GEMM."""

    @staticmethod
    def forward(x, W, b, A, B):
        out = x @ W.T + (x @ B) @ A.T
        return out if b is None else out + b

    @staticmethod
    def setup_context(ctx, inputs, output):
        pass  # ES needs no backward

    @staticmethod
    def vmap(info, in_dims, x, W, b, A, B):
        xd, wd, bd, ad, bbd = in_dims
        P = info.batch_size
        if wd is not None or ad is None or bbd is None:  # not the low-rank layout: plain rule
            fn = vmap(_LowRankLinear.forward, in_dims=in_dims, randomness=info.randomness)
            return fn(x, W, b, A, B), 0
        A, B = A.movedim(ad, 0), B.movedim(bbd, 0)  # (P, m, r), (P, n, r)
        m, n = W.shape
        if bd is not None:
            b = b.movedim(bd, 0)[:, None, :]  # (P, 1, m)
        if xd is None:  # inputs shared by every member: the GEMM once, corrections per member
            shape = x.shape[:-1]
            base = torch.nn.functional.linear(x, W).reshape(1, -1, m)
            C = _correction(_thin(x.reshape(1, -1, n).expand(P, -1, -1), B), A, b)
            return (C + base).reshape(P, *shape, m), 0
        x = x.movedim(xd, 0)
        shape = x.shape[1:-1]
        x3 = x.reshape(P, -1, n)  # (P, S, n)
        kernel = _dispatch.lowrank_kernel(x3.device)
        if kernel is not None:  # one Triton program per output tile: GEMM and corrections fused
            bias = None if b is None else (b if b.dim() == 1 else b.reshape(P, m))
            ones = torch.ones(P, dtype=torch.float32, device=x3.device)  # σ/√r is in A already
            out = kernel.lowrank_linear(x3, W, bias, ones, A=A.to(x3.dtype), B=B.to(x3.dtype))
            return out.reshape(P, *shape, m), 0
        C = _correction(_thin(x3, B), A, None if b is None else b.expand(P, 1, m))
        C.view(-1, m).addmm_(x3.reshape(-1, n), W.T)  # the shared GEMM, accumulated (β = 1)
        return C.reshape(P, *shape, m), 0


def _thin(x: torch.Tensor, B: torch.Tensor) -> torch.Tensor:
    """x B per member, (P, S, n) x (P, n, r) -> (P, S, r). For r <= 2 as (Bᵀ xᵀ)ᵀ: the same
    products, and MKL's kernel for that layout is 2-5x faster than bmm's for a one- or
    two-column B (measured: P = 64, S = 32, n = 1024, r = 1: 0.24 vs 1.2 ms)."""
    if B.shape[-1] <= 2:
        return torch.matmul(B.mT, x.mT).mT
    return torch.matmul(x, B)


def _correction(xB: torch.Tensor, A: torch.Tensor, b: torch.Tensor | None) -> torch.Tensor:
    """(x B) Aᵀ (+ b, (P, 1, m)) per member, (P, S, m). For r = 1 an outer product: one
    broadcast multiply(-add) instead of a K = 1 batched GEMM and its bias copy (the three
    passes over the output were a tenth of a P = 64 transformer generation)."""
    if A.shape[-1] == 1:
        return xB * A.mT if b is None else torch.addcmul(b, xB, A.mT)
    return torch.bmm(xB, A.mT) if b is None else torch.baddbmm(b, xB, A.mT)


def lowrank_linear(x, W, b, A, B) -> torch.Tensor:
    """x Wᵀ + b + (x B) Aᵀ: one member's ``nn.Linear`` with weight W + A Bᵀ (A carries the
    scale σ/√r and the sign). Under ``vmap`` over members with W shared, all members' rows go
    through one GEMM (see the module docstring)."""
    return _LowRankLinear.apply(x, W, b, A, B)


def population_inputs(
    noise: LowRankNoise,
    drawn: list[Any],
    mean_leaves: list[torch.Tensor],
    ids: torch.Tensor,
    sigma: float,
    antithetic: bool,
) -> tuple[dict, dict, dict]:
    """The pieces of a :class:`Population` for member ``ids`` from a generation's factors
    ``drawn`` (rows 0..R−1; member i uses row i // 2 with sign ± when antithetic): the shared
    leaves by name, each low-rank module's (A·σ/√r·sign (M, m, r), B (M, n, r)), and the
    full-rank leaves' members θ + σ·sign·z (M, *shape), all in the params' dtypes."""
    rows = ids // 2 if antithetic else ids
    sign = 1 - 2 * (ids % 2) if antithetic else torch.ones_like(rows)
    shared, factors, full = {}, {}, {}
    scale = sigma / math.sqrt(noise.rank)
    for leaf, d, theta in zip(noise.layout, drawn, mean_leaves):
        if leaf.kind == "lowrank":
            A, B = d[0].index_select(0, rows), d[1].index_select(0, rows)
            mult = (scale * sign.to(theta.dtype))[:, None, None]  # σ/√r in the params' dtype
            factors[leaf.module] = (A.to(mult.dtype) * mult, B.to(mult.dtype))
            shared[leaf.name] = theta
        elif leaf.kind == "full":
            z = d.index_select(0, rows).reshape(rows.numel(), *leaf.shape)
            mult = (sigma * sign.to(theta.dtype)).reshape(-1, *[1] * len(leaf.shape))
            full[leaf.name] = theta + mult * z.to(theta.dtype)
        else:
            shared[leaf.name] = theta
    return shared, factors, full
