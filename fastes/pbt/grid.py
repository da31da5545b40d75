"""Grid search: every configuration of a product of values, one run directory each.

``grid_search(fn, {"lr": [0.01, 0.1], "sigma": [0.05, 0.1]}, "runs/grid")`` calls
``fn(config, run_dir)`` for the four configurations, in product order, each with its own
directory ``runs/grid/lr=0.01,sigma=0.05`` (a hash when the name would be too long). ``fn``
returns its results: a dict of numbers, or one number (stored as ``score``). A finished
configuration leaves ``result.json`` (written atomically), so running the same grid again skips
it and only runs what is missing or failed; a configuration whose ``fn`` raises is reported and
retried next time. The table of all configurations and results goes to ``results.csv``.
The command-line form is ``fastes grid TASK --grid lr=0.01,0.1 --grid sigma=0.05,0.1 ...``.
"""

from __future__ import annotations

import concurrent.futures as cf
import hashlib
import itertools
import json
import multiprocessing
import os
import re
from collections.abc import Callable
from typing import Any

from .._io import write_json
from .._validate import check_callable, positive_int
from ..run_files import write_csv
from .process import error_text

__all__ = ["grid_search", "configurations", "config_name"]


def configurations(grid: dict[str, list]) -> list[dict]:
    """Every combination of the grid's values, the last name varying fastest."""
    if not isinstance(grid, dict) or not grid:
        raise ValueError(f"grid must be a non-empty dict of name: list of values; got {grid!r}")
    for name, values in grid.items():
        if not isinstance(values, (list, tuple)) or not values:
            raise ValueError(f"grid[{name!r}] must be a non-empty list of values; got {values!r}")
    names = list(grid)
    return [dict(zip(names, combo, strict=True)) for combo in itertools.product(*grid.values())]


def config_name(config: dict) -> str:
    """A directory name for a configuration: ``a=1,b=x`` (safe characters only), or a hash."""
    name = ",".join(f"{k}={v}" for k, v in config.items())
    safe = re.sub(r"[^A-Za-z0-9_.=,+-]", "_", name)
    if len(safe) > 100 or safe != name:
        digest = hashlib.sha256(json.dumps(config, sort_keys=True, default=str).encode())
        safe = safe[:80] + "-" + digest.hexdigest()[:12]
    return safe


def _run_one(fn: Callable, config: dict, run_dir: str) -> dict:
    result = fn(dict(config), run_dir)
    if not isinstance(result, dict):
        result = {"score": float(result)}
    write_json(os.path.join(run_dir, "result.json"), {"config": config, "result": result})
    return result


def grid_search(fn: Callable[[dict, str], Any], grid: dict[str, list],
                run_dir: str | os.PathLike, *, workers: int = 0,
                start_method: str = "spawn") -> list[dict]:  # fmt: skip
    """Run every configuration not finished yet; returns the table (one dict per configuration:
    its values, its results, ``run_dir`` and ``status`` — ``ran``, ``done before`` or
    ``failed: <error>``). ``workers`` > 0 runs configurations in that many processes."""
    check_callable(fn, "fn")
    configs = configurations(grid)
    workers = positive_int(workers, "workers", minimum=0)
    root = os.fspath(run_dir)
    dirs = [os.path.join(root, config_name(c)) for c in configs]
    rows: list[dict | None] = [None] * len(configs)
    todo = []
    for i, (config, d) in enumerate(zip(configs, dirs, strict=True)):
        done = os.path.join(d, "result.json")
        if os.path.exists(done):
            with open(done) as fh:
                saved = json.load(fh)
            rows[i] = {**config, **saved["result"], "run_dir": d, "status": "done before"}
        else:
            os.makedirs(d, exist_ok=True)
            todo.append(i)
    pool = None
    if workers and todo:
        ctx = multiprocessing.get_context(start_method)
        pool = cf.ProcessPoolExecutor(workers, mp_context=ctx)
    try:
        futures = {i: pool.submit(_run_one, fn, configs[i], dirs[i]) for i in todo} if pool else {}
        for i in todo:
            try:
                result = futures[i].result() if pool else _run_one(fn, configs[i], dirs[i])
                rows[i] = {**configs[i], **result, "run_dir": dirs[i], "status": "ran"}
            except Exception as e:  # reported, retried on the next call
                rows[i] = {**configs[i], "run_dir": dirs[i], "status": f"failed: {error_text(e)}"}
    finally:
        if pool is not None:
            pool.shutdown(cancel_futures=True)
    table = [r for r in rows if r is not None]
    write_csv(os.path.join(root, "results.csv"), table)
    return table
