"""Triton kernels for fastes, installed as ``fastes.kernels``.

Each kernel has a pure-PyTorch reference in ``fastes`` with the same semantics; the reference is
the CPU path and the test oracle. Importing this package does not import triton.
"""
