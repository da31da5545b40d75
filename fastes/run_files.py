"""The files of a training run: checkpoints (loaded safely, errors that name the file), the
history as CSV, the learning-curve PNG and TensorBoard events. Used by :class:`fastes.Trainer`
and the CLI; every write is atomic."""

from __future__ import annotations

import csv
import io
import os
from collections.abc import Callable

import torch

from ._io import atomic_write

__all__ = ["FORMAT", "CheckpointError", "load_checkpoint", "plot_history", "summary_writer",
           "write_csv"]  # fmt: skip

FORMAT = 1  # the checkpoint layout written by Trainer.checkpoint()


class CheckpointError(ValueError):
    """A run directory's file is missing, damaged or from another run (the message names it)."""


_CHECKPOINT_KEYS = ("generation", "key", "strategy", "strategy_state", "task", "history",
                    "best_score", "best_flat", "streak")  # fmt: skip


def load_checkpoint(path: str | os.PathLike) -> dict:
    """A checkpoint written by :class:`Trainer` (tensors and plain data only).

    Raises :class:`CheckpointError` naming the file when it is missing, empty, truncated,
    not a torch file, or not a fastes Trainer checkpoint.
    """
    path = os.fspath(path)
    if not os.path.exists(path):
        raise CheckpointError(f"checkpoint {path} does not exist")
    if os.path.getsize(path) == 0:
        raise CheckpointError(f"checkpoint {path} is empty (0 bytes): the file is damaged")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # zip, unpickling and storage errors all mean "unreadable"
        # torch's unpickling errors suggest weights_only=False, which would be unsafe and would
        # not repair a damaged file: report the kind of error only.
        text = str(e).strip()
        reason = type(e).__name__
        if text and "weights_only" not in text:
            reason += ": " + text.splitlines()[0][:200]
        raise CheckpointError(
            f"checkpoint {path} cannot be read: it is damaged (truncated?) or not a fastes "
            f"Trainer checkpoint ({reason})"
        ) from None
    if not isinstance(ckpt, dict) or ckpt.get("format") != FORMAT:
        raise CheckpointError(f"{path} is not a fastes Trainer checkpoint (format {FORMAT})")
    missing = [k for k in _CHECKPOINT_KEYS if k not in ckpt]
    if missing:
        raise CheckpointError(f"checkpoint {path} is incomplete: it lacks {missing}")
    return ckpt


def write_csv(path: str, history: list[dict]) -> None:
    """The history as CSV (one row per generation, columns = union of keys), atomically."""
    columns: list[str] = []
    for row in history:
        columns += [k for k in row if k not in columns]
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=columns)
    w.writeheader()
    w.writerows(history)
    atomic_write(path, lambda fh: fh.write(buf.getvalue()), mode="w")


def plot_history(history: list[dict], path: str) -> None:
    """A learning-curve PNG: population fitness (mean, best) and evaluation scores."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise ImportError('plot=True needs matplotlib: pip install "fastes[rl]"') from None
    gens = [r["generation"] for r in history]
    fig, ax = plt.subplots(figsize=(7, 4))
    ax.plot(gens, [r["fitness_mean"] for r in history], label="population mean")
    best = [r.get("fitness_best", r["fitness_max"]) for r in history]
    ax.plot(gens, best, label="population best", alpha=0.5)
    ev = [(r["generation"], r["score"]) for r in history if "score" in r]
    if ev:
        ax.plot(*zip(*ev, strict=True), "o-", label="evaluation (unperturbed)")
    ax.set_xlabel("generation")
    ax.set_ylabel("fitness / return")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    atomic_write(path, lambda fh: fig.savefig(fh, format="png", dpi=100))
    plt.close(fig)


def summary_writer(logdir: str, purge_step: int) -> Callable:
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        raise ImportError('tensorboard=True needs tensorboard: pip install "fastes[rl]"') from None
    return SummaryWriter(logdir, purge_step=purge_step)
