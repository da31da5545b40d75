"""The array operations of the covariance strategies' updates (CMA-ES, sep-CMA-ES, xNES): one
interface, two namespaces — numpy float64 for small problems in eager CPU code, torch elsewhere.

Each update is written once against :func:`ops_for`'s namespace. Why numpy where D is small:

* a small-D generation is a few dozen operations on D-vectors and D x D matrices, and a numpy
  operation on them costs ~0.3-1 µs against ~1-3 µs of torch dispatch (measured);
* numpy's stacked ``matmul`` and ``linalg.eigh`` run BLAS / LAPACK on every slice as on an
  array of its own (tested here: 1,728 product shapes up to 64, ``eigh`` at D = 10-50), so R runs
  stacked along a leading dim (:class:`fastes.strategies.BatchedRuns`) get each run's bits in
  one call. torch's batched kernels round some shapes differently from a single matrix, and
  MKL's results depend on a slice's memory alignment, so the torch namespace computes products
  and decompositions run by run (:func:`each_run`).

The namespaces differ in the last bits (OpenBLAS vs MKL sums, numpy's vs torch's ``exp``), so a
run's numbers depend on which one it used: deterministic per key, device and problem size. On the
CPU the torch namespace runs on one thread up to ONE_THREAD_MAX_DIM (below), so there a run's
numbers do not depend on the machine's thread count either (MKL's do, above it).
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch

from ..tree import as_dtype

# Up to this D the eager CPU updates run in numpy. Above it LAPACK's eigh switches to divide and
# conquer (n > 25), whose threaded OpenBLAS products leave threads spinning that starve torch's
# on small machines. Measured on the 2-core dev CPU, CMA-ES ms per generation, numpy / torch
# namespace, interleaved: D = 10 0.36 / 0.48, D = 24 0.38 / 0.50, D = 28 0.45 / 1.06 (the torch
# generations after numpy ones slowed 2x; 0.52 with OPENBLAS_NUM_THREADS=1).
NUMPY_MAX_DIM = 24
# A separable update (sep-CMA-ES: no eigh, no D x D products) runs in numpy further up. Measured
# here, sep-CMA-ES ms per generation at P = 32, numpy / torch namespace, OpenBLAS with 2 threads
# and a torch strategy interleaved (not slowed: 0.22 / 0.23 ms): D = 100 0.29 / 0.42, D = 1000
# 0.42 / 0.51, D = 10,000 5.2 / 4.7 (numpy's single-threaded elementwise ops lose there).
NUMPY_MAX_DIM_SEPARABLE = 1024


# Up to this D the torch namespace's products and decompositions on the CPU run on one thread.
# With two, MKL's eigh and matmuls wait at each parallel region for both threads, and a core
# taken by anything else (a rollout worker, another process, a VM's neighbour) stalls them:
# measured on the 2-core dev CPU, CMA-ES at D = 100, P = 32, ms per generation, 2 / 1 threads:
# 1.3 / 1.3 with the cores free, 5.6 / 1.4 with one busy (16.9 in a benchmark run on a loaded
# VM); the second thread pays from D ~ 200 (1.55 / 1.73 free; D = 400: 3.2 / 4.0).
ONE_THREAD_MAX_DIM = 128


class _OneThread:
    """torch (its OpenMP pool and MKL) on one thread inside, the thread count restored after.
    The count is process-wide: other Python threads' torch ops in that window run on one too."""

    __slots__ = ("threads",)

    def __enter__(self) -> None:
        self.threads = torch.get_num_threads()
        if self.threads > 1:
            torch.set_num_threads(1)

    def __exit__(self, *exc: object) -> None:
        if self.threads > 1:
            torch.set_num_threads(self.threads)


_NO_CONTEXT = contextlib.nullcontext()


def one_thread(ops: Any, x: torch.Tensor) -> contextlib.AbstractContextManager:
    """Where ``ops`` is the torch namespace for an eager CPU problem of D = x.shape[-1] <=
    ONE_THREAD_MAX_DIM: a context that runs its products and decompositions on one thread
    (results then also do not depend on the machine's thread count); else a no-op context."""
    if (ops is TorchOps and x.is_cpu and x.shape[-1] <= ONE_THREAD_MAX_DIM
            and not torch.compiler.is_compiling()):  # fmt: skip
        return _OneThread()
    return _NO_CONTEXT


def ops_for(x: torch.Tensor, separable: bool = False) -> Any:
    """The namespace for an update on tensors like ``x`` (its last dim is D); ``separable``:
    an update without eigendecompositions or D x D products (its own, higher bound)."""
    bound = NUMPY_MAX_DIM_SEPARABLE if separable else NUMPY_MAX_DIM
    small = x.is_cpu and x.shape[-1] <= bound
    return NumpyOps if small and not torch.compiler.is_compiling() else TorchOps


class TorchOps:
    """torch tensors as they are; products and decompositions of R runs run by run."""

    @staticmethod
    def arr(t: torch.Tensor) -> torch.Tensor:
        return t

    @staticmethod
    def tensor(a: torch.Tensor, dtype: torch.dtype | None = None) -> torch.Tensor:
        return a if dtype is None else as_dtype(a, dtype)

    @staticmethod
    def fields(state: Any) -> Any:
        """The state as the update reads it (see :meth:`NumpyOps.fields`): as it is."""
        return state

    @staticmethod
    def each(f: Callable, *xs: torch.Tensor, runs: bool):
        return each_run(f, *xs, runs=runs)

    @staticmethod
    def mv(m: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        return torch.mv(m, v)

    @staticmethod
    def vecmat(v: torch.Tensor, m: torch.Tensor) -> torch.Tensor:
        return v @ m

    @staticmethod
    def eye(n: int, like: torch.Tensor) -> torch.Tensor:
        return torch.eye(n, dtype=like.dtype, device=like.device)

    eigh = staticmethod(torch.linalg.eigh)
    trace = staticmethod(torch.trace)
    exp = staticmethod(torch.exp)
    sqrt = staticmethod(torch.sqrt)
    addcmul = staticmethod(torch.addcmul)

    @staticmethod
    def add(a: torch.Tensor, b: torch.Tensor, alpha: float) -> torch.Tensor:
        return torch.add(a, b, alpha=alpha)

    @staticmethod
    def add_(a: torch.Tensor, b: torch.Tensor, alpha: float) -> torch.Tensor:
        """a + alpha·b written into a (a fresh result: no D x D temporaries at large D)."""
        return a.add_(b, alpha=alpha)

    @staticmethod
    def norm(x: torch.Tensor) -> torch.Tensor:
        return torch.linalg.vector_norm(x, dim=-1)

    @staticmethod
    def sumsq(x: torch.Tensor) -> torch.Tensor:
        """Σ x² along the last dim."""
        return (x * x).sum(-1)

    @staticmethod
    def clamp_min(x: torch.Tensor, c: float) -> torch.Tensor:
        return x.clamp_min(c)

    @staticmethod
    def f64(x: torch.Tensor) -> torch.Tensor:
        return x.double()

    @staticmethod
    def join(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        """[a, b] along the last dim, a (n,) shared by every leading index of b (..., m)."""
        return torch.cat([a.expand(*b.shape[:-1], a.shape[-1]), b], -1)

    @staticmethod
    def scatter(order: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        """out[..., order[..., i]] = w[i]: each member's weight from the sorted weights."""
        return torch.empty_like(order, dtype=w.dtype).scatter_(-1, order, w.expand_as(order))

    @staticmethod
    def mT(x: torch.Tensor) -> torch.Tensor:
        return x.mT


_add_reduce = np.add.reduce
# numpy's own LAPACK eigh gufunc (what np.linalg.eigh calls); None where a numpy lacks it.
_EIGH_LO = getattr(getattr(np.linalg, "_umath_linalg", None), "eigh_lo", None)
_NUMPY_DTYPES = {torch.float32: np.float32, torch.float64: np.float64}
_EYES: dict[tuple[int, str], np.ndarray] = {}


class NumpyOps:
    """numpy views of CPU tensors (no copies); stacked operations act slice by slice."""

    @staticmethod
    def arr(t: torch.Tensor | np.ndarray) -> np.ndarray:
        if type(t) is np.ndarray:  # already on the host (a generation kept there)
            return t
        return t.detach().numpy() if t.requires_grad else t.numpy()

    @staticmethod
    def fields(state: Any) -> Any:
        """The state's fields as numpy views (no copies), its generation (last) as it is."""
        arr = NumpyOps.arr
        return type(state)(*(arr(t) for t in state[:-1]), state.generation)

    @staticmethod
    def tensor(a, dtype: torch.dtype | None = None) -> torch.Tensor:
        """The array as a tensor (no copy); in ``dtype`` when given (cast here: numpy rounds
        float64 to float32 as torch does, without a dispatch)."""
        a = np.asarray(a)
        if dtype is not None and dtype in _NUMPY_DTYPES:
            a = a.astype(_NUMPY_DTYPES[dtype], copy=False)
        return as_dtype(torch.from_numpy(a), dtype) if dtype is not None else torch.from_numpy(a)

    @staticmethod
    def each(f: Callable, *xs: np.ndarray, runs: bool):
        return f(*xs)  # numpy's stacked operations already act slice by slice

    @staticmethod
    def mv(m: np.ndarray, v: np.ndarray) -> np.ndarray:
        return (m @ v[..., None])[..., 0]  # stacked vectors: one column each

    @staticmethod
    def vecmat(v: np.ndarray, m: np.ndarray) -> np.ndarray:
        return (v[..., None, :] @ m)[..., 0, :]  # stacked vectors: one row each

    @staticmethod
    def eye(n: int, like: np.ndarray) -> np.ndarray:
        """The identity, made once per size and dtype (read-only: every use makes a new array
        from it)."""
        key = (n, like.dtype.str)
        if key not in _EYES:
            if len(_EYES) >= 64:
                _EYES.clear()
            _EYES[key] = np.eye(n, dtype=like.dtype)
            _EYES[key].flags.writeable = False
        return _EYES[key]

    @staticmethod
    def eigh(a: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """``np.linalg.eigh`` of float64 symmetric a (..., n, n) (its lower triangle): the same
        LAPACK gufunc called directly, minus the wrapper's checks and ``errstate`` context (10
        of 22 µs at n = 10, measured; same bits). Where LAPACK does not converge the gufunc
        returns NaN (numpy warns "invalid value"): then ``np.linalg.eigh`` runs again and raises
        its ``LinAlgError``."""
        if _EIGH_LO is None or a.dtype != np.float64:
            return np.linalg.eigh(a)
        evals, vecs = _EIGH_LO(a, signature="d->dd")
        if not math.isfinite(_add_reduce(evals, axis=None)):
            return np.linalg.eigh(a)
        return evals, vecs

    exp = staticmethod(np.exp)
    sqrt = staticmethod(np.sqrt)

    @staticmethod
    def trace(m: np.ndarray) -> np.ndarray:
        return m.trace(axis1=-2, axis2=-1)  # the method: np.trace's wrapper costs a call

    @staticmethod
    def addcmul(a: np.ndarray, s: np.ndarray, b: np.ndarray) -> np.ndarray:
        return a + s * b

    @staticmethod
    def add(a: np.ndarray, b: np.ndarray, alpha: float) -> np.ndarray:
        return a + alpha * b

    @staticmethod
    def add_(a: np.ndarray, b: np.ndarray, alpha: float) -> np.ndarray:
        a += alpha * b
        return a

    @staticmethod
    def norm(x: np.ndarray) -> np.ndarray:
        return np.sqrt(_add_reduce(x * x, -1))

    @staticmethod
    def sumsq(x: np.ndarray) -> np.ndarray:
        return _add_reduce(x * x, -1)  # .sum(-1)'s own reduction, minus its Python wrapper

    @staticmethod
    def clamp_min(x: np.ndarray, c: float) -> np.ndarray:
        return np.maximum(x, c)

    @staticmethod
    def f64(x) -> np.ndarray:
        return np.asarray(x, dtype=np.float64)

    @staticmethod
    def join(a: np.ndarray, b: np.ndarray) -> np.ndarray:
        out = np.empty((*b.shape[:-1], a.shape[-1] + b.shape[-1]), dtype=b.dtype)
        out[..., : a.shape[-1]], out[..., a.shape[-1] :] = a, b
        return out

    @staticmethod
    def scatter(order: torch.Tensor | np.ndarray, w: np.ndarray) -> torch.Tensor:
        """out[..., order[..., i]] = w[i] (a tensor): each member's weight from the sorted
        weights (``order`` a tensor or its numpy view)."""
        o, wn = NumpyOps.arr(order), w
        out = np.empty(o.shape, dtype=wn.dtype)
        if o.ndim == 1:
            out[o] = wn
        elif o.ndim == 2:  # R runs: plain fancy indexing (put_along_axis's wrappers cost more)
            out[np.arange(o.shape[0])[:, None], o] = wn
        else:
            np.put_along_axis(out, o, np.broadcast_to(wn, o.shape), -1)
        return torch.from_numpy(out)

    @staticmethod
    def mT(x: np.ndarray) -> np.ndarray:
        return np.swapaxes(x, -1, -2)


def each_run(f: Callable[..., torch.Tensor], *xs: torch.Tensor, runs: bool) -> torch.Tensor:
    """``f(*xs)`` for one run's tensors; with ``runs``, f of each run's slices of xs (a leading
    run dim), stacked (each output of a tuple-valued f). For the products and decompositions of
    :class:`BatchedRuns`' updates in torch, so R runs get each run's bits: a batched float64
    matmul rounds some shapes differently from the single run's (measured on this CPU: 299 of
    1,728 (m, k, n) shapes up to 64), and MKL's results depend on where the data sits in memory
    (a batched ``eigh`` at D = 17 or 31, a matrix-vector product on a slice at an odd offset). A
    slice that does not start on the 64-byte boundary of a fresh tensor (what the single run
    computes on) is copied to one first."""
    if not runs:
        return f(*xs)
    outs = [f(*(_aligned(t) for t in x)) for x in zip(*xs, strict=True)]
    if isinstance(outs[0], tuple):
        return tuple(_stack(o) for o in zip(*outs, strict=True))
    return _stack(outs)


def _stack(ts: Sequence[torch.Tensor]) -> torch.Tensor:
    """Stack along a new leading dim, each slice in the layout of ts (row- or column-major
    matrices, as LAPACK returns them), so later products on a slice see what the run alone sees."""
    if ts[0].ndim >= 2 and not ts[0].is_contiguous() and ts[0].mT.is_contiguous():
        return torch.stack([t.mT for t in ts]).mT
    return torch.stack(ts)


def _aligned(t: torch.Tensor) -> torch.Tensor:
    """t, or a copy of it (same strides) in a fresh allocation where t starts off its boundary."""
    return t if t.data_ptr() % 64 == 0 else t.clone()
