"""The files of a training run: checkpoints (loaded safely, errors that name the file), the
history as CSV, the learning-curve PNG and TensorBoard events. Used by :class:`fastes.Trainer`
and the CLI; every write is atomic."""

from __future__ import annotations

import csv
import io
import os
from collections.abc import Callable
from typing import Any

import torch
import torch.utils._pytree as pytree

from ._io import atomic_write

__all__ = ["FORMAT", "CheckpointError", "add_gif", "load_checkpoint", "plot_history",
           "summary_writer", "unflatten_like", "write_csv"]  # fmt: skip

FORMAT = 1  # the checkpoint layout written by Trainer.checkpoint()


class CheckpointError(ValueError):
    """A run directory's file is missing, damaged or from another run (the message names it)."""


_CHECKPOINT_KEYS = {  # what each kind of run writes (Trainer checkpoints carry no "kind")
    "trainer": ("generation", "key", "strategy", "strategy_state", "task", "history",
                "best_score", "best_flat", "streak"),
    "pbt-vectorized": ("config", "round", "hyperparameters", "history", "best", "step", "params",
                       "opt_state"),
    "pbt-process": ("config", "round", "hyperparameters", "history", "best", "checkpoints"),
}  # fmt: skip
_NAMES = {"trainer": "Trainer", "pbt-vectorized": "VectorizedPBT", "pbt-process": "ProcessPBT"}


def load_checkpoint(path: str | os.PathLike, kind: str = "trainer") -> dict:
    """A checkpoint written by :class:`Trainer` (``kind="trainer"``), by
    :class:`fastes.pbt.VectorizedPBT` (``"pbt-vectorized"``) or :class:`fastes.pbt.ProcessPBT`
    (``"pbt-process"``): tensors and plain data only.

    Raises :class:`CheckpointError` naming the file when it is missing, empty, truncated,
    not a torch file, or not a fastes checkpoint of that kind.
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
            f"{_NAMES[kind]} checkpoint ({reason})"
        ) from None
    if (not isinstance(ckpt, dict) or ckpt.get("format") != FORMAT
            or ckpt.get("kind", "trainer") != kind):  # fmt: skip
        raise CheckpointError(f"{path} is not a fastes {_NAMES[kind]} checkpoint (format {FORMAT})")
    missing = [k for k in _CHECKPOINT_KEYS[kind] if k not in ckpt]
    if missing:
        raise CheckpointError(f"checkpoint {path} is incomplete: it lacks {missing}")
    return ckpt


def unflatten_like(leaves: list, template: Any, path: str, what: str) -> Any:
    """Saved flat ``leaves`` (``tree_flatten(tree)[0]``) back into ``template``'s structure, on
    its leaves' devices; a CheckpointError naming ``path`` unless count, shapes and dtypes match."""
    ref, spec = pytree.tree_flatten(template)
    if (
        not isinstance(leaves, list)
        or len(leaves) != len(ref)
        or any(
            isinstance(a, torch.Tensor) != isinstance(b, torch.Tensor)
            or isinstance(a, torch.Tensor)
            and (a.shape != b.shape or a.dtype != b.dtype)
            for a, b in zip(leaves, ref, strict=False)
        )
    ):
        raise CheckpointError(
            f"checkpoint {path} does not match {what} layout (other hyperparameters or params "
            "than the run that wrote it?)"
        )
    # Checkpoints load on the CPU; each leaf goes back to the template's device.
    leaves = [a.to(b.device) if isinstance(a, torch.Tensor) else a
              for a, b in zip(leaves, ref, strict=True)]  # fmt: skip
    return pytree.tree_unflatten(leaves, spec)


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


def add_gif(writer, tag: str, gif: bytes, shape: tuple, step: int) -> None:
    """Log an animated GIF (frames of ``shape`` (H, W, 3)) to TensorBoard's image tab: the
    summary ``SummaryWriter.add_video`` writes, without its moviepy encoder."""
    from tensorboard.compat.proto.summary_pb2 import Summary

    h, w = int(shape[0]), int(shape[1])
    image = Summary.Image(height=h, width=w, colorspace=3, encoded_image_string=gif)
    summary = Summary(value=[Summary.Value(tag=tag, image=image)])
    writer._get_file_writer().add_summary(summary, step)  # as add_video does, after encoding


def summary_writer(logdir: str, purge_step: int) -> Callable:
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        raise ImportError('tensorboard=True needs tensorboard: pip install "fastes[rl]"') from None
    return SummaryWriter(logdir, purge_step=purge_step)
