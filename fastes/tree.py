"""Pytrees of tensors <-> one flat vector.

A pytree is any nesting of dict, list, tuple, NamedTuple and OrderedDict with tensor leaves —
e.g. ``dict(model.named_parameters())``. ES works on the flat mean θ (D,); these helpers move
between the two and back, keeping structure, shapes, dtypes and the device.

The flat vector is float32 for fp16/bf16/fp32 leaves (exact for all three) and float64 when any
leaf is float64, so every round trip is bit-exact.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import numpy as np
import torch
from torch.utils import _pytree as pytree

__all__ = ["Raveler", "ravel", "raveler", "tree_map", "tree_leaves"]

_FLOATS = (torch.float16, torch.bfloat16, torch.float32, torch.float64)


def tree_leaves(tree: Any) -> list:
    """The leaves of ``tree`` in flattening order."""
    if isinstance(tree, torch.Tensor):  # a single leaf (a strategy's flat state): no pytree walk
        return [tree]
    return pytree.tree_leaves(tree)


def tree_map(fn: Callable, tree: Any, *rest: Any) -> Any:
    """Apply ``fn`` leaf-wise over one or more pytrees of the same structure."""
    if isinstance(tree, torch.Tensor) and all(isinstance(r, torch.Tensor) for r in rest):
        return fn(tree, *rest)  # a single leaf (a strategy's flat state): skip pytree's ~20 µs
    return pytree.tree_map(fn, tree, *rest)


# Up to this many elements an eager CPU tensor's arithmetic may run in numpy (host_view): torch's
# elementwise grain size, below which its kernels run on one thread as numpy's do.
HOST_MAX = 2**15
# Whether small eager CPU arithmetic may run in numpy at all (host_view, on_host): tests set it
# False to run the same expressions on the tensors and compare the bits.
HOST_ARITHMETIC = True
# The dtypes a tensor's numpy view can have (numpy has no bfloat16 or float8)
_NUMPY_DTYPES = frozenset({
    torch.float16, torch.float32, torch.float64, torch.complex64, torch.complex128, torch.bool,
    torch.uint8, torch.int8, torch.int16, torch.int32, torch.int64,
})  # fmt: skip


def tree_map_n(fn: Callable, n: int, tree: Any, *rest: Any) -> tuple:
    """:func:`tree_map` of a function returning n values: n pytrees of ``tree``'s structure."""
    leaves, spec = pytree.tree_flatten(tree)
    outs = [fn(*xs) for xs in zip(leaves, *map(pytree.tree_leaves, rest), strict=True)]
    return tuple(pytree.tree_unflatten([o[i] for o in outs], spec) for i in range(n))


def host_view(t: torch.Tensor) -> torch.Tensor | np.ndarray:
    """A numpy view of a small eager CPU tensor (no grad, at most HOST_MAX elements), else the
    tensor itself: for arithmetic on a generation's P weights or a small problem's D numbers,
    where a numpy operation costs ~0.6 µs against ~1.2-3 µs of torch dispatch and a slice
    ~0.1 µs against ~1.2 µs (measured on 16 values). numpy rounds +, −, ×, /, min, max on
    float32/float64 as torch does (IEEE; a Python number taken in the array's dtype), so the
    same expression gives the same bits on either. Reductions, roots and transcendental
    functions do not (their summation orders and approximations differ): code that needs the
    same bits on both sides leaves them to torch, and those that run on either side anyway
    (ClipUp's norms, PGPE's noise sums) sum in float64 and round once, so that both sides are
    within a derived bound of the exact value. A dtype numpy lacks (bfloat16, float8) stays a
    tensor."""
    if not HOST_ARITHMETIC or not _viewable(t) or torch.compiler.is_compiling():
        return t
    return t.numpy()


def _viewable(t: torch.Tensor) -> bool:
    """Whether an eager tensor may be worked on through a numpy view (:func:`host_view`)."""
    return (t.is_cpu and not t.requires_grad and t.numel() <= HOST_MAX
            and t.dtype in _NUMPY_DTYPES)  # fmt: skip


def from_host(x: torch.Tensor | np.ndarray, device: torch.device | None = None) -> torch.Tensor:
    """An array worked out on the host (:func:`host_view`) back as a tensor (no copy on the
    CPU), on ``device`` when one is given; a tensor as it is."""
    if not isinstance(x, np.ndarray):
        return x
    t = torch.from_numpy(x)
    return t if device is None or device.type == "cpu" else t.to(device)


def on_host(fn: Callable, *xs: torch.Tensor, host: bool = True) -> Any:
    """``fn(*xs)`` (one value or a tuple) for arithmetic written once for tensors and numpy
    arrays: in numpy on the host where every x has a :func:`host_view` (the same roundings, a
    fraction of the dispatch cost), the results back as tensors; else on the tensors.
    ``host=False``: always the tensors (e.g. hyperparameters given as tensors, which numpy
    arrays do not mix with). Same bits on both sides for operands of one dtype and Python
    numbers; not for a 0-d operand of a wider dtype (numpy promotes the result to it, torch
    casts the 0-d operand down): cast it first."""
    if not host or not HOST_ARITHMETIC or torch.compiler.is_compiling():
        return fn(*xs)
    hs = []
    for x in xs:  # host_view's test, the compile check made once for all of them
        if not _viewable(x):
            return fn(*xs)  # a tensor without a host view: all of them stay tensors
        hs.append(x.numpy())
    out = fn(*hs)
    return tuple(map(from_host, out)) if isinstance(out, tuple) else from_host(out)


def next_count(c: torch.Tensor, n: int | None = None) -> torch.Tensor:
    """``c + 1`` for a step counter ``c`` (an int64 0-d tensor; ``n`` its value where the caller
    has read it): on the eager CPU a fresh tensor made from the Python int (~1 µs against ~2.5
    µs of a tensor add, made twice in a small-D generation); elsewhere the add (no host read)."""
    if c.is_cpu and c.ndim == 0 and c.dtype == torch.int64 and not torch.compiler.is_compiling():
        return torch.from_numpy(np.array((int(c) if n is None else n) + 1, dtype=np.int64))
    return c + 1


def as_dtype(x: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """``x.to(dtype)``, without the call when x has that dtype already (a ~1 µs no-op dispatch
    that small-D generations make a dozen times)."""
    return x if x.dtype == dtype else x.to(dtype)


class Raveler(NamedTuple):
    """How to cut a flat vector back into a pytree: made by :func:`raveler`."""

    spec: pytree.TreeSpec
    shapes: tuple[torch.Size, ...]
    dtypes: tuple[torch.dtype, ...]
    sizes: tuple[int, ...]
    device: torch.device
    flat_dtype: torch.dtype
    # The keys of a flat dict of tensors (``dict(model.named_parameters())``, ``{"x": t}``):
    # rebuilt directly, the same dict tree_unflatten makes at ~4x its cost. None otherwise.
    dict_keys: tuple | None = None
    # The key of a dict's one leaf when it is a vector in the flat dtype (``{"x": t}``, the
    # black-box problems): the flat vectors themselves are its values, with nothing to cut.
    vector_key: Any = None

    @property
    def dim(self) -> int:
        """D, the number of flat parameters."""
        return sum(self.sizes)

    def ravel(self, tree: Any) -> torch.Tensor:
        """Flatten a pytree of this structure into a (D,) vector of ``flat_dtype``."""
        leaves = pytree.tree_leaves(tree)
        return torch.cat([leaf.detach().reshape(-1).to(self.flat_dtype) for leaf in leaves])

    def unravel(self, flat: torch.Tensor) -> Any:
        """(D,) -> pytree with the original structure, shapes and dtypes."""
        return self._cut(flat, ())

    def unravel_batch(self, flat: torch.Tensor) -> Any:
        """(B, D) -> pytree whose leaves have a leading batch dim: (B, *shape); more leading
        dims alike ((R, P, D) -> leaves (R, P, *shape))."""
        return self._cut(flat, tuple(flat.shape[:-1]))

    def _cut(self, flat: torch.Tensor, batch: tuple[int, ...]) -> Any:
        if self.vector_key is not None and flat.dtype == self.flat_dtype:
            return {self.vector_key: flat}  # what the general path below builds for it
        # One leaf (a flat problem): the whole vector, as split's single part would view it
        parts = (flat,) if len(self.sizes) == 1 else torch.split(flat, self.sizes, dim=-1)
        leaves = []
        for p, shape, dtype in zip(parts, self.shapes, self.dtypes):
            # reshape / to only where they change something (each a ~1 µs no-op call otherwise)
            p = p if p.shape == (*batch, *shape) else p.reshape((*batch, *shape))
            leaves.append(as_dtype(p, dtype))
        if self.dict_keys is not None:
            return dict(zip(self.dict_keys, leaves, strict=True))
        return pytree.tree_unflatten(leaves, self.spec)


def raveler(tree: Any, name: str = "params") -> Raveler:
    """Check that ``tree`` is a non-empty pytree of float tensors on one device; describe it.

    Raises:
        ValueError: the pytree has no leaves, or its leaves are on different devices.
        TypeError: a leaf is not a tensor, or not a floating-point tensor.
    """
    leaves, spec = pytree.tree_flatten(tree)
    if not leaves:
        raise ValueError(f"{name} must be a non-empty pytree of float tensors; got {tree!r}")

    def paths() -> list[str]:  # key paths for error messages, built only when one is raised
        return [pytree.keystr(p) for p, _ in pytree.tree_flatten_with_path(tree)[0]]

    for i, leaf in enumerate(leaves):
        if isinstance(leaf, torch.Tensor) and leaf.dtype in _FLOATS:
            continue
        path = paths()[i]
        if not isinstance(leaf, torch.Tensor):
            raise TypeError(
                f"{name}{path} must be a torch.Tensor; got {type(leaf).__name__} {leaf!r}"
            )
        if leaf.dtype not in _FLOATS:
            raise TypeError(
                f"{name}{path} must be a floating-point tensor (float16, bfloat16, float32 or "
                f"float64); got dtype {leaf.dtype}"
            )
    devices = {leaf.device for leaf in leaves}
    if len(devices) > 1:
        where = ", ".join(f"{name}{p} on {leaf.device}" for p, leaf in zip(paths(), leaves))
        raise ValueError(f"all leaves of {name} must be on one device; got {where}")
    flat_dtype = torch.float64 if any(x.dtype == torch.float64 for x in leaves) else torch.float32
    keys = tuple(tree) if type(tree) is dict else None
    if keys is not None and pytree.tree_structure(dict.fromkeys(keys, 0)) != spec:
        keys = None  # nested: pytree rebuilds it
    vector = keys is not None and len(leaves) == 1 and leaves[0].ndim == 1
    return Raveler(
        spec=spec,
        shapes=tuple(leaf.shape for leaf in leaves),
        dtypes=tuple(leaf.dtype for leaf in leaves),
        sizes=tuple(leaf.numel() for leaf in leaves),
        device=leaves[0].device,
        flat_dtype=flat_dtype,
        dict_keys=keys,
        vector_key=keys[0] if vector and leaves[0].dtype == flat_dtype else None,
    )


def ravel(tree: Any) -> tuple[torch.Tensor, Callable[[torch.Tensor], Any]]:
    """Flatten a pytree of float tensors: returns ``(flat, unravel)``.

    Example:
        >>> params = dict(torch.nn.Linear(3, 2).named_parameters())
        >>> flat, unravel = ravel(params)  # flat: (8,) float32
        >>> unravel(flat)["weight"].shape
        torch.Size([2, 3])
    """
    r = raveler(tree)
    return r.ravel(tree), r.unravel
