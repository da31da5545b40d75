"""Shared by the benchmark scripts: where a result was measured, and atomic result files."""

from __future__ import annotations

import json
import os
import platform
import subprocess
import tempfile
import time

import torch


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
    sha = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True).stdout
    env = {
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "cpu": cpu_name(),
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "python": platform.python_version(),
        "git_sha": sha.strip(),
        "date": time.strftime("%Y-%m-%d"),
    }
    try:
        import triton

        env["triton"] = triton.__version__
    except ImportError:
        env["triton"] = None
    env["triton_interpreter"] = os.environ.get("TRITON_INTERPRET") == "1"
    return env


def write_json(path: str, obj) -> None:
    """Write ``obj`` as JSON to ``path`` atomically (temp file in the same folder + rename)."""
    folder = os.path.dirname(os.path.abspath(path))
    with tempfile.NamedTemporaryFile("w", dir=folder, delete=False, suffix=".tmp") as fh:
        json.dump(obj, fh, indent=2, default=str)
    os.replace(fh.name, path)
