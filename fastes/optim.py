"""Functional optimizers for ES gradients, optax style: ``(init, update)`` pairs.

Every transformation here **ascends**: it takes the fitness gradient ĝ from
:func:`fastes.estimate_grad` (which points uphill) and returns updates to *add* to the params::

    opt = fastes.optim.adam(learning_rate=0.01)
    state = opt.init(params)
    grad, stats = fastes.estimate_grad(params, fitness_fn, key, population_size=..., sigma=...)
    updates, state = opt.update(grad, state, params)
    params = fastes.optim.apply_updates(params, updates)

States are NamedTuples of tensors/pytrees, so they checkpoint with ``torch.save``. Hyperparameters
are closed over; ``learning_rate`` may be a number or a schedule (``fastes.schedules``), evaluated
at the state's step count.

**Stacked populations.** The hyperparameters of :func:`sgd`, :func:`momentum`, :func:`adam`,
:func:`adamw` and :func:`add_decayed_weights` may also be float tensors of shape (N,): one value
per member of a population whose params are stacked along dim 0 (every leaf of shape (N, ...)),
as in :mod:`fastes.pbt`. Member n's slice then steps exactly as that transformation with the
scalar hyperparameters ``h[n]`` would, computed in the leaf's dtype.
"""

from __future__ import annotations

import array
import math
from collections.abc import Callable
from typing import Any, NamedTuple

import numpy as np
import torch
from torch.utils import _pytree as pytree

from ._validate import real
from .tree import host_view, next_count, on_host, tree_leaves, tree_map, tree_map_n

__all__ = [
    "GradientTransformation",
    "apply_updates",
    "sgd",
    "momentum",
    "adam",
    "adamw",
    "clipup",
    "add_decayed_weights",
    "chain",
    "DecayState",
    "EmptyState",
    "SgdState",
    "MomentumState",
    "AdamState",
    "ClipUpState",
    "TorchOptimizerState",
    "torch_optimizer",
]


class GradientTransformation(NamedTuple):
    """An optimizer: ``state = init(params)``; ``updates, state = update(grad, state, params)``."""

    init: Callable[[Any], Any]
    update: Callable[[Any, Any, Any], tuple[Any, Any]]
    # Set by transformations whose updates are c·ĝ with a scalar c that does not depend on ĝ or
    # the params (sgd): ``state -> (c, new_state)``, the same c and state ``update`` uses. A
    # strategy may then fold c into its own reduction (eggroll: θ + c·Σ w_i ε_i as one GEMM per
    # weight, no D-sized ĝ or updates). None for every other transformation.
    linear: Callable[[Any], tuple[float, Any]] | None = None
    # True for transformations whose update of each element depends only on that element's
    # gradient, state and param (and the step count): params stacked along a leading dim then
    # step slice by slice exactly as each slice alone (sgd, momentum, adam, adamw, decay and
    # chains of them; not clipup, whose norms span the whole tree, nor torch_optimizer).
    elementwise: bool = False


class EmptyState(NamedTuple):
    """State of a stateless transformation."""


class SgdState(NamedTuple):
    count: torch.Tensor  # () int64, steps taken (for learning-rate schedules)


class MomentumState(NamedTuple):
    velocity: Any  # pytree like params
    count: torch.Tensor


class AdamState(NamedTuple):
    count: torch.Tensor  # () int64, steps taken
    mu: Any  # first moment, pytree like params
    nu: Any  # second moment, pytree like params


class ClipUpState(NamedTuple):
    velocity: Any  # pytree like params
    count: torch.Tensor


def _count(params: Any) -> torch.Tensor:
    """A () int64 step counter on the params' device."""
    leaves = tree_leaves(params)
    device = leaves[0].device if leaves and isinstance(leaves[0], torch.Tensor) else None
    return torch.zeros((), dtype=torch.int64, device=device)


def _hyper(value: Any, name: str, high: float | None = None) -> float | torch.Tensor:
    """A hyperparameter: a finite real >= 0 (< ``high`` when given), or a float tensor of shape
    (N,) holding one such value per member of a stacked population."""
    if not isinstance(value, torch.Tensor):
        return real(value, name) if high is None else real(value, name, high=high)
    if not value.is_floating_point() or value.ndim != 1:
        raise TypeError(
            f"{name} given as a tensor must be a float tensor of shape (N,), one value per member "
            f"of a stacked population; got dtype {value.dtype} and shape {tuple(value.shape)}"
        )
    if value.is_cpu and not torch.compiler.is_compiling():
        bad = ~torch.isfinite(value) | (value < 0)
        if high is not None:
            bad |= value >= high
        if bool(bad.any()):
            limit = f" and < {high:g}" if high is not None else ""
            raise ValueError(
                f"{name} must hold finite values >= 0{limit}; got {value[bad][:4].tolist()} "
                f"at members {bad.nonzero().flatten()[:4].tolist()}"
            )
    return value.detach()


def _member(h: Any, leaf: torch.Tensor) -> Any:
    """A scalar hyperparameter as is; an (N,) one as an (N, 1, ..., 1) tensor in leaf's dtype."""
    if not isinstance(h, torch.Tensor):
        return h
    if leaf.ndim == 0 or leaf.shape[0] != h.shape[0]:
        raise ValueError(
            f"a per-member hyperparameter of shape {tuple(h.shape)} needs params stacked along "
            f"dim 0 with {h.shape[0]} members; got a leaf of shape {tuple(leaf.shape)}"
        )
    return h.to(leaf.dtype).reshape(h.shape + (1,) * (leaf.ndim - 1))


def _lr_schedule(learning_rate) -> Callable[[int], float]:
    if callable(learning_rate) and not isinstance(learning_rate, torch.Tensor):
        return learning_rate
    lr = _hyper(learning_rate, "learning_rate")
    return lambda t: lr


def apply_updates(params: Any, updates: Any) -> Any:
    """params + updates, leaf-wise, keeping each param's dtype."""
    return tree_map(lambda p, u: (p.detach() + u).to(p.dtype), params, updates)


def _zeros_f32(params: Any) -> Any:
    # Optimizer state in float32 (float64 for float64 params) so fp16/bf16 params don't lose it.
    return tree_map(
        lambda p: torch.zeros_like(p, dtype=torch.promote_types(p.dtype, torch.float32)), params
    )


def _global_norm(tree: Any) -> float:
    """‖tree‖₂ over all leaves as a Python float, read back: :func:`_leaves_norm`."""
    return _leaves_norm(tree_leaves(tree))


def _leaves_norm(leaves) -> float:
    """‖·‖₂ of a sequence of leaves (tensors or host arrays) taken as one vector, as a Python
    float rounded to float32: the squares summed in float64 and rooted by ``math.sqrt``, then
    rounded once. The squares of float16/float32 values are exact in float64 and the sum's
    relative error is below n·2⁻⁵³, so this is the float32 nearest the true norm but in
    near-ties, and no finite leaf overflows it (float32 squares overflow past ~1.8e19).

    Where every leaf has a :func:`~fastes.tree.host_view` (small, eager CPU) the sum is numpy's
    (~3 µs against ~6 µs of tensor ops at D = 10); elsewhere (large leaves, GPUs,
    ``torch.compile``) torch's, in float64 chunks (:func:`_torch_norm`)."""
    hosts = [x if isinstance(x, np.ndarray) else host_view(x) for x in leaves]
    if all(isinstance(h, np.ndarray) and h.dtype.kind == "f" for h in hosts):
        total = 0.0
        for h in hosts:
            x = h.astype(np.float64).ravel()  # a fresh contiguous copy: ravel is a view
            total += float(x.dot(x))
        return _round32(math.sqrt(total))
    return _torch_norm([torch.from_numpy(x) if isinstance(x, np.ndarray) else x for x in leaves])


# Elements squared in float64 at a time off the host: a float64 copy of at most 128 MiB.
_NORM_CHUNK = 2**24


def _torch_norm(leaves) -> float:
    """:func:`_leaves_norm` of tensors off the host path: float64 dot products of chunks of
    each leaf, summed on the leaves' device and read back once."""
    total = None
    for leaf in leaves:
        for chunk in leaf.detach().reshape(-1).split(_NORM_CHUNK):
            x = chunk.double()
            sq = torch.dot(x, x)
            total = sq if total is None else total + sq
    return _round32(math.sqrt(float(total))) if total is not None else 0.0


def _sqrt(x):
    """torch's square root of a tensor or of a host array (numpy's float32 root is correctly
    rounded and torch's is not always: the arithmetic around it may move to the host, the
    root's bits stay torch's)."""
    if isinstance(x, torch.Tensor):
        return x.sqrt()
    return torch.from_numpy(x).sqrt_().numpy()  # x is a fresh temporary: rooted in place


def _round32(x: float) -> float:
    """x rounded to the nearest float32 (±inf past its range), as a Python float."""
    return array.array("f", (x,))[0]


def sgd(learning_rate) -> GradientTransformation:
    """Plain gradient ascent: updates = learning_rate·ĝ."""
    schedule = _lr_schedule(learning_rate)

    def update(grad, state, params=None):
        n = int(state.count)
        lr = schedule(n)
        return tree_map(lambda g: _member(lr, g) * g, grad), SgdState(next_count(state.count, n))

    def linear(state):  # per-member (tensor) rates are not one scalar: no linear form then
        n = int(state.count)
        return schedule(n), SgdState(next_count(state.count, n))

    per_member = isinstance(learning_rate, torch.Tensor)
    init = lambda params: SgdState(_count(params))  # noqa: E731
    return GradientTransformation(init, update, None if per_member else linear, elementwise=True)


def momentum(learning_rate, beta: float = 0.9, nesterov: bool = False):
    """Heavy-ball momentum: v ← β·v + ĝ; updates = lr·v (lr·(β·v + ĝ) with Nesterov)."""
    schedule = _lr_schedule(learning_rate)
    beta = _hyper(beta, "beta", high=1.0)

    def init(params):
        return MomentumState(_zeros_f32(params), _count(params))

    def update(grad, state, params=None):
        n = int(state.count)
        lr = schedule(n)
        v = tree_map(lambda v, g: _member(beta, v) * v + g, state.velocity, grad)
        step = tree_map(lambda v, g: _member(beta, v) * v + g, v, grad) if nesterov else v
        new_state = MomentumState(v, next_count(state.count, n))
        return tree_map(lambda s: _member(lr, s) * s, step), new_state

    return GradientTransformation(init, update, elementwise=True)


def adam(learning_rate, b1: float = 0.9, b2: float = 0.999, eps: float = 1e-8):
    """Adam (Kingma & Ba 2015, https://arxiv.org/abs/1412.6980), ascending.

    m ← b1·m + (1−b1)·ĝ; v ← b2·v + (1−b2)·ĝ²; updates = lr·m̂ / (√v̂ + eps) with the usual
    bias corrections m̂ = m / (1 − b1^t), v̂ = v / (1 − b2^t).
    """
    schedule = _lr_schedule(learning_rate)
    b1 = _hyper(b1, "b1", high=1.0)
    b2 = _hyper(b2, "b2", high=1.0)
    eps = _hyper(eps, "eps")

    def init(params):
        return AdamState(_count(params), _zeros_f32(params), _zeros_f32(params))

    scalars = not any(isinstance(h, torch.Tensor) for h in (learning_rate, b1, b2, eps))

    def update(grad, state, params=None):
        n = int(state.count)
        lr, c1, c2 = schedule(n), 1 - b1 ** (n + 1), 1 - b2 ** (n + 1)

        def moments(m, v, g):  # one leaf's moments and step
            if scalars:  # numbers as they are (no per-member views to make)
                m = b1 * m + (1 - b1) * g
                v = b2 * v + (1 - b2) * g * g
                return m, v, lr * (m / c1) / (_sqrt(v / c2) + eps)
            at = lambda h: _member(h, m)  # noqa: E731
            m = at(b1) * m + (1 - at(b1)) * g
            v = at(b2) * v + (1 - at(b2)) * g * g
            return m, v, at(lr) * (m / at(c1)) / (_sqrt(v / at(c2)) + at(eps))

        leaf = lambda m, v, g: on_host(moments, m, v, g, host=scalars)  # noqa: E731

        if isinstance(grad, torch.Tensor):  # a strategy's flat mean: one leaf
            mu, nu, step = leaf(state.mu, state.nu, grad)
        else:
            mu, nu, step = tree_map_n(leaf, 3, state.mu, state.nu, grad)
        return step, AdamState(next_count(state.count, n), mu, nu)

    return GradientTransformation(init, update, elementwise=True)


def clipup(learning_rate, max_speed: float | None = None, beta: float = 0.9):
    """ClipUp (Toklu et al. 2020, https://arxiv.org/abs/2008.02387), ascending.

    v ← β·v + lr·ĝ/‖ĝ‖; if ‖v‖ > max_speed then v ← max_speed·v/‖v‖; updates = v.
    The paper's rule of thumb ``max_speed = 2·learning_rate`` is the default.
    """
    schedule = _lr_schedule(learning_rate)
    speed = None if max_speed is None else real(max_speed, "max_speed")
    beta = real(beta, "beta", high=1.0)

    def init(params):
        return ClipUpState(_zeros_f32(params), _count(params))

    def update(grad, state, params=None):
        n = int(state.count)
        lr = schedule(n)
        max_speed = 2 * lr if speed is None else speed

        def clip(*leaves):  # the velocity's leaves, then the gradient's: host arrays or tensors
            vs, gs = leaves[: len(leaves) // 2], leaves[len(leaves) // 2 :]
            g_norm = _leaves_norm(gs)
            # lr / ‖ĝ‖ rounded as torch does for a float32 norm (its reciprocal, then times lr,
            # each rounded to float32: a double quotient or product of floats rounded once to
            # float32 is the correctly rounded float32 one), on the host: no dispatches
            scale = _round32(_round32(1.0 / g_norm) * _round32(lr)) if g_norm > 0 else 0.0
            vs = [beta * v + scale * g for v, g in zip(vs, gs, strict=True)]
            v_norm = _leaves_norm(vs)
            if v_norm > max_speed:
                cap = max_speed / v_norm
                vs = [v * cap for v in vs]
            return tuple(vs)

        # All leaves on the host where each is small, else all tensors (the same bits for the
        # elementwise steps; the norms as _leaves_norm says)
        if isinstance(grad, torch.Tensor):  # a strategy's flat mean: one leaf
            (v,) = on_host(clip, state.velocity, grad)
        else:
            g_leaves, spec = pytree.tree_flatten(grad)
            vs = on_host(clip, *tree_leaves(state.velocity), *g_leaves)
            v = pytree.tree_unflatten(list(vs), spec)
        return v, ClipUpState(v, next_count(state.count, n))

    return GradientTransformation(init, update)


class DecayState(NamedTuple):
    count: torch.Tensor  # () int64, steps taken (for a learning-rate schedule)


def add_decayed_weights(weight_decay: float, learning_rate=1.0) -> GradientTransformation:
    """updates ← updates − learning_rate·weight_decay·θ (``learning_rate`` may be a schedule).

    Where it sits in a :func:`chain` decides which weight decay it is (for ascent):

    * **after** the optimizer — ``chain(adam(lr), add_decayed_weights(wd, lr))`` — it is
      *decoupled* weight decay (AdamW, Loshchilov & Hutter, https://arxiv.org/abs/1711.05101):
      θ shrinks by lr·wd·θ whatever Adam's per-parameter scaling, as in ``torch.optim.AdamW``
      (see :func:`adamw`).
    * **before** the optimizer — ``chain(add_decayed_weights(wd), adam(lr))`` — it is *coupled*
      L2 regularisation: −wd·θ joins the gradient and is rescaled by Adam like the rest, as in
      ``torch.optim.Adam(weight_decay=wd)``. With plain SGD the two coincide.
    """
    wd = _hyper(weight_decay, "weight_decay")
    schedule = _lr_schedule(learning_rate)

    def update(grad, state, params):
        if params is None:
            raise ValueError("add_decayed_weights needs params: call update(grad, state, params)")
        n = int(state.count)
        scale = schedule(n) * wd
        new = tree_map(lambda g, p: g - _member(scale, p) * p.detach(), grad, params)
        return new, DecayState(next_count(state.count, n))

    init = lambda params: DecayState(_count(params))  # noqa: E731
    return GradientTransformation(init, update, elementwise=True)


def adamw(
    learning_rate, weight_decay: float = 0.01, b1: float = 0.9, b2: float = 0.999,
    eps: float = 1e-8,
) -> GradientTransformation:  # fmt: skip
    """Adam with decoupled weight decay (``torch.optim.AdamW``'s rule), ascending:
    ``chain(adam(learning_rate, b1, b2, eps), add_decayed_weights(weight_decay, learning_rate))``.
    """
    return chain(adam(learning_rate, b1, b2, eps), add_decayed_weights(weight_decay, learning_rate))


def chain(*transforms: GradientTransformation) -> GradientTransformation:
    """Compose transformations left to right; the state is a tuple of their states."""

    def init(params):
        return tuple(t.init(params) for t in transforms)

    def update(grad, state, params=None):
        new_states = []
        for t, s in zip(transforms, state):
            grad, s = t.update(grad, s, params)
            new_states.append(s)
        return grad, tuple(new_states)

    elementwise = all(t.elementwise for t in transforms)
    return GradientTransformation(init, update, elementwise=elementwise)


class TorchOptimizerState(NamedTuple):
    count: torch.Tensor  # () int64, steps taken
    state: Any  # optimizer.state_dict()["state"]: {param index: {name: tensor}}


def torch_optimizer(optimizer_class: type, **hyperparameters: Any) -> GradientTransformation:
    """Any ``torch.optim`` optimizer as a functional transformation, ascending.

    ``torch_optimizer(torch.optim.RAdam, lr=0.01)`` steps exactly as ``torch.optim.RAdam`` does
    on params whose ``.grad`` is −ĝ (so its descent climbs the fitness); its state (moments, step
    counts) lives in :class:`TorchOptimizerState`, a pytree of tensors that checkpoints and
    resumes bit-identically with the strategy. Weight decay is the optimizer's own: coupled L2 in
    ``Adam``, ``RAdam``, ``NAdam``, ``SGD``, ``Adagrad``, ``RMSprop`` (unless their
    ``decoupled_weight_decay=True``), decoupled in ``AdamW``.

    Each update builds the optimizer on copies of the params, loads the state, steps once and
    returns the difference: θ + updates equals torch's new θ up to one rounding of that
    subtraction (≤ 1 ulp of θ per step).
    """
    if not (
        isinstance(optimizer_class, type) and issubclass(optimizer_class, torch.optim.Optimizer)
    ):
        raise TypeError(
            "optimizer_class must be a torch.optim.Optimizer subclass (e.g. torch.optim.RAdam); "
            f"got {optimizer_class!r}"
        )

    def build(params):
        copies = [p.detach().clone() for p in tree_leaves(params)]
        return copies, optimizer_class(copies, **hyperparameters)

    def init(params):
        # torch optimizers create their state on the first step; make its layout now (so a
        # checkpoint of any later state matches a fresh one), with zeros that are never read:
        # update() starts from a fresh optimizer while count is 0.
        copies, opt = build(params)
        for p in copies:
            p.grad = torch.zeros_like(p)
        opt.step()
        layout = tree_map(lambda t: torch.zeros_like(t) if isinstance(t, torch.Tensor) else t,
                          opt.state_dict()["state"])  # fmt: skip
        return TorchOptimizerState(_count(params), layout)

    def update(grad, state, params):
        if params is None:
            raise ValueError("torch_optimizer needs params: call update(grad, state, params)")
        copies, opt = build(params)
        if int(state.count) > 0:
            saved = opt.state_dict()
            saved["state"] = tree_map(
                lambda t: t.clone() if isinstance(t, torch.Tensor) else t, state.state
            )
            opt.load_state_dict(saved)
        for p, g in zip(copies, tree_leaves(grad), strict=True):
            p.grad = (-g).to(p.dtype)
        opt.step()
        old = tree_leaves(params)
        spec = pytree.tree_structure(params)
        updates = pytree.tree_unflatten(
            [new.detach() - o.detach() for new, o in zip(copies, old, strict=True)], spec
        )
        new_state = tree_map(
            lambda t: t.detach().clone() if isinstance(t, torch.Tensor) else t,
            opt.state_dict()["state"],
        )
        return updates, TorchOptimizerState(next_count(state.count), new_state)

    return GradientTransformation(init, update)
