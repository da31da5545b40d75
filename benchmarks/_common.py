"""Shared by the benchmark scripts: where a result was measured, and atomic result files."""

from __future__ import annotations

import os
import platform
import statistics
import subprocess
import sys
import time

import torch

from fastes._io import atomic_write, write_json  # noqa: F401  (re-exported for the scripts)


def cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def environment(device: torch.device | str = "cpu") -> dict:
    """Device, versions, git SHA and date, recorded with every results file."""
    device = torch.device(device)
    # A copy of the tree sent elsewhere (benchmarks/gpu_all.sh on a lent GPU) is told its commit:
    # the copy's own .git, if any, can name an older one (it did on the first GPU runs).
    sha = os.environ.get("FASTES_GIT_SHA", "")
    if not sha:
        try:
            sha = subprocess.run(
                ["git", "rev-parse", "HEAD"], capture_output=True, text=True
            ).stdout
        except OSError:  # no git on the machine
            sha = ""
    sha = sha.strip()
    env = {
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "cpu": cpu_name(),
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "python": platform.python_version(),
        "git_sha": sha,
        "date": time.strftime("%Y-%m-%d"),
    }
    try:
        import triton

        env["triton"] = triton.__version__
    except ImportError:
        env["triton"] = None
    env["triton_interpreter"] = os.environ.get("TRITON_INTERPRET") == "1"
    return env


def peak_rss_growth(setup: str, measured: str, path: str) -> tuple[int | None, str | None]:
    """Peak RSS growth (bytes) of ``measured`` code, run after ``setup`` in a fresh process.

    ru_maxrss is inherited from the parent across fork, so it is not used: the child resets its
    own high-water mark (``5 > /proc/self/clear_refs``) after ``setup`` and reports
    VmHWM − VmRSS. ``path`` goes on the child's sys.path. Returns ``(bytes, None)``, or
    ``(None, reason)`` when the child fails (e.g. killed for memory).
    """
    code = f"""
import sys
sys.path.insert(0, {path!r})
def _vm(field):
    for line in open("/proc/self/status"):
        if line.startswith(field):
            return int(line.split()[1]) * 1024
{setup}
open("/proc/self/clear_refs", "w").write("5")
_before = _vm("VmRSS")
{measured}
print(_vm("VmHWM") - _before)
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    if out.returncode:
        why = "killed (out of memory)" if out.returncode in (-9, 137) else out.stderr[-300:]
        return None, why
    return int(out.stdout.strip().splitlines()[-1]), None


def timer(device: torch.device | str, fn, reps: int) -> float:
    """Median seconds of fn() over reps runs after one warm-up (CUDA events on a GPU)."""
    device = torch.device(device)
    fn()
    times = []
    for _ in range(reps):
        if device.type == "cuda":
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            end.record()
            torch.cuda.synchronize()
            times.append(start.elapsed_time(end) / 1e3)
        else:
            t0 = time.perf_counter()
            fn()
            times.append(time.perf_counter() - t0)
    return statistics.median(times)


def graph_timer(fn, reps: int) -> float:
    """Median seconds of replaying ``fn`` captured in a CUDA graph: the GPU's time for its work
    without the host's per-launch overhead (which ``timer`` includes when it exceeds the GPU's)."""
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):  # warm-up off the capture stream, as CUDA graphs require
        for _ in range(3):
            fn()
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        fn()
    return timer("cuda", graph.replay, reps)


def cuda_profile(step, title: str, reps: int = 3) -> str:
    """torch.profiler tables of ``reps`` calls of ``step`` on CUDA after one warm-up: ops by GPU
    time, then by host time (where an eager generation's time goes when the host's launches,
    not the GPU, bound it)."""
    from torch.profiler import ProfilerActivity, profile

    step()
    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        for _ in range(reps):
            step()
        torch.cuda.synchronize()
    avg = prof.key_averages()
    return "\n".join([f"{title} ({reps} calls)", avg.table(sort_by="cuda_time_total", row_limit=30),
                      avg.table(sort_by="cpu_time_total", row_limit=40), ""])  # fmt: skip
