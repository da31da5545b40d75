import os

import numpy as np
import pytest
import torch

# Without a GPU, Triton kernels run on CPU tensors in the interpreter. The flag must be set before
# triton is first imported (fastes itself never imports it on the CPU).
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

M0, M1, W0, W1 = 0xD2511F53, 0xCD9E8D57, 0x9E3779B9, 0xBB67AE85


def philox_numpy(c, k, rounds=10):
    """Independent Philox4x32 oracle in numpy uint64 (exact modular arithmetic).

    c: (4, n) uint64 counter words, k: (k0, k1). Returns (4, n) uint64 output words.
    """
    c0, c1, c2, c3 = (np.asarray(w, dtype=np.uint64) for w in c)
    k0, k1 = np.uint64(k[0]), np.uint64(k[1])
    mask = np.uint64(0xFFFFFFFF)
    for r in range(rounds):
        if r:
            k0 = (k0 + np.uint64(W0)) & mask
            k1 = (k1 + np.uint64(W1)) & mask
        p0 = c0 * np.uint64(M0)
        p1 = c2 * np.uint64(M1)
        c0, c1, c2, c3 = (
            (p1 >> np.uint64(32)) ^ c1 ^ k0,
            p1 & mask,
            (p0 >> np.uint64(32)) ^ c3 ^ k1,
            p0 & mask,
        )
    return np.stack([c0, c1, c2, c3])


@pytest.fixture
def stop_and_resume(tmp_path):
    """``run(make, stop, total)`` -> (uninterrupted, resumed) results: ``make(run_dir,
    generations)`` builds a Trainer; one runs ``total`` generations, another stops at ``stop``
    and a fresh trainer in the same run_dir resumes it to ``total``."""

    def run(make, stop: int, total: int):
        full = make(tmp_path / "full", total).run()
        make(tmp_path / "split", stop).run()
        return full, make(tmp_path / "split", total).run(resume=True)

    return run


@pytest.fixture
def smoke_run():
    """``run(script)``: ``benchmarks/<script> --smoke`` in a fresh process — tiny sizes through
    the Triton interpreter on CPU (real kernels on a GPU) — asserting it exits 0; its stdout."""
    import pathlib
    import subprocess
    import sys

    def run(script: str) -> str:
        path = pathlib.Path(__file__).resolve().parent.parent / "benchmarks" / script
        env = dict(os.environ)
        if not torch.cuda.is_available():
            env["TRITON_INTERPRET"] = "1"
        out = subprocess.run(
            [sys.executable, str(path), "--smoke"], capture_output=True, text=True, env=env
        )
        assert out.returncode == 0, out.stderr
        return out.stdout

    return run


@pytest.fixture
def oracle():
    return philox_numpy


@pytest.fixture
def compile_counter():
    """``(backend, graphs)``: a Dynamo backend that records every graph it compiles and runs it
    eagerly — checks graph capture and recompilation without Inductor's C++ build."""
    import torch._dynamo

    torch._dynamo.reset()
    graphs = []

    def backend(gm, example_inputs):
        graphs.append(gm)
        return gm.forward

    return backend, graphs


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)
