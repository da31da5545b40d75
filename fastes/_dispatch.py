"""The one place that decides whether a Triton kernel or its PyTorch reference runs (DESIGN §5).

Kernels run when the tensors are on CUDA, triton is importable, and the environment variable
``FASTES_FORCE_REFERENCE`` is unset (or empty / "0"). Everything else — the CPU, a GPU without
triton, a forced reference — runs the reference in :mod:`fastes.noise`. Triton is imported only
here, and only once a CUDA tensor asks.
"""

from __future__ import annotations

import importlib.util
import os

import torch


def force_reference() -> bool:
    """True when FASTES_FORCE_REFERENCE asks for the PyTorch reference everywhere."""
    return os.environ.get("FASTES_FORCE_REFERENCE", "") not in ("", "0")


# Whether triton is installed, looked up once at import (find_spec imports nothing). A module
# constant, not a cached function: torch.compile refuses to trace importlib.util.find_spec.
_TRITON = importlib.util.find_spec("triton") is not None


def lowrank_kernel(device: torch.device):
    """``fastes.kernels.lowrank`` for a population's low-rank linear layers, or None for the
    PyTorch path. Opt-in (``FASTES_LOWRANK_KERNEL=1``, on CUDA, not forced to the reference):
    measured on an H100 (``benchmarks/lowrank_gpu.py``, README) the kernel reached 0.22-0.27 of
    ``x @ W.T`` at rank 1 where the PyTorch path (cuBLAS GEMM plus the thin corrections) reached
    0.68-0.94 (CUDA-graph replays), and whole eggroll generations ran 1.4-2.8x slower with it,
    so it is the default nowhere."""
    if os.environ.get("FASTES_LOWRANK_KERNEL", "") in ("", "0"):
        return None
    if device.type != "cuda" or force_reference() or not _TRITON:
        return None
    from fastes.kernels import lowrank

    return lowrank


def kernel_ops(device: torch.device):
    """The kernel ops (``fastes.kernels.ops``) for ``device``, or None for the reference."""
    if device.type != "cuda" or force_reference() or not _TRITON:
        return None
    from fastes.kernels import ops

    return ops
