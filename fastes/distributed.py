"""Scale-out on torch.distributed: population members sharded by global id, fitness-only traffic.

Launch any fastes script or the CLI with ``torchrun`` (gloo on CPUs, NCCL on GPUs)::

    torchrun --nproc-per-node 2 -m fastes train cartpole --run-dir runs/c
    TORCH_DISABLE_SHARE_RDZV_TCP_STORE=1 \\
    torchrun --nnodes 1:4 --nproc-per-node 2 --rdzv-backend c10d --rdzv-endpoint HOST:29400 \\
        --max-restarts 8 -m fastes train gym:LunarLander-v3 --run-dir /shared/runs/l

(elastic jobs: with torch's default shared rendezvous store, a node joining a running job left
every agent waiting in the rendezvous here, torch 2.13; the variable makes each group bring up
its own store).

and call :func:`init` once at the top of a script (the CLI does; without torchrun's environment
variables it does nothing). Then every ``es_step``, ``estimate_grad``, strategy ``step`` and
:class:`fastes.Trainer` in the process works on the group:

* rank r evaluates members ``member_range(P)[r]`` — a balanced, contiguous slice of the global
  ids 0..P−1 (antithetic pairs kept together); member i's noise is a function of (key, i) only,
  so it does not matter which rank evaluates it;
* the ranks all-gather the fitness (P·K numbers, in global member order) and each computes the
  same shaping and update from the key: a generation exchanges O(P) bytes whatever D is;
* the result does not depend on the world size: a deterministic fitness gives bit-identical
  params on 1, 2 or N processes, which is what lets torchrun restart a group of another size
  from the last checkpoint and continue the same run.

Every collective runs under the group's timeout (``init(timeout_s=...)``, default 300 s), so a
vanished peer ends in an error that torchrun turns into a restart, never a silent hang. Nothing
is pickled: only tensors cross the wire (``torch.distributed`` collectives), and run
configurations are compared by hash.

The rendezvous endpoint (c10d's TCPStore) has no authentication: bind it to a trusted network
(e.g. ``--rdzv-endpoint 10.0.0.5:29400`` on a private interface, or ``127.0.0.1`` on one
machine), never to a public address.
"""

from __future__ import annotations

import atexit
import hashlib
import os
import time
from datetime import timedelta
from typing import Any, NamedTuple

import torch
import torch.distributed as dist

from ._validate import EXCHANGES, positive_int, real

__all__ = [
    "EXCHANGES",
    "Group",
    "broadcast_from_main",
    "check_consistent",
    "checksum",
    "choose_exchange",
    "current",
    "devices_differ",
    "gather_members",
    "gather_rows",
    "gather_varying",
    "init",
    "is_main",
    "member_range",
    "reset_traffic",
    "restarted",
    "shutdown",
    "sum_in_rank_order",
    "traffic",
]

DEFAULT_TIMEOUT_S = 300.0  # overridden by the FASTES_DIST_TIMEOUT_S environment variable
# Seconds a leaving rank waits, GIL released, for gloo's threads to drop their last tensors
# (see shutdown): once per process, at its end.
SETTLE_S = 0.2

# What this process has exchanged: collectives run and bytes received (the gathered output),
# for benchmarks/distributed.py. Plain counters: read with traffic(), zeroed by reset_traffic().
_TRAFFIC = {"collectives": 0, "bytes": 0}


def traffic() -> dict:
    """``{"collectives": n, "bytes": b}`` this process exchanged since the last reset."""
    return dict(_TRAFFIC)


def reset_traffic() -> None:
    _TRAFFIC.update(collectives=0, bytes=0)


def _all_gather(blocks: list[torch.Tensor], block: torch.Tensor) -> None:
    dist.all_gather(blocks, block)
    _TRAFFIC["collectives"] += 1
    _TRAFFIC["bytes"] += block.numel() * block.element_size() * len(blocks)


class Group(NamedTuple):
    """The process group fastes works on: this process's rank and the world size."""

    rank: int
    world_size: int
    device: torch.device  # where collectives' tensors live (CPU for gloo, the local GPU for NCCL)


def _launched() -> bool:
    return all(v in os.environ for v in ("RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT"))


def init(backend: str | None = None, timeout_s: float | None = None) -> Group | None:
    """Join the torchrun group (once per process); without torchrun's variables, do nothing.

    Args:
        backend: ``"gloo"`` or ``"nccl"``; default NCCL when this process has a GPU, else gloo
            (a group mixing CPU and GPU ranks must pass ``"gloo"``).
        timeout_s: the bound on every collective (and on the rendezvous); default
            ``FASTES_DIST_TIMEOUT_S`` from the environment, else 300 s.

    Returns the :class:`Group`, or None when not launched by torchrun.
    """
    if timeout_s is None:
        timeout_s = float(os.environ.get("FASTES_DIST_TIMEOUT_S", DEFAULT_TIMEOUT_S))
    timeout_s = real(timeout_s, "timeout_s", positive=True)
    if not dist.is_available():
        return None
    if not dist.is_initialized():
        if not _launched():
            return None
        if backend is None:
            backend = "nccl" if torch.cuda.is_available() else "gloo"
        if backend not in ("gloo", "nccl"):
            raise ValueError(f"backend must be 'gloo' or 'nccl'; got {backend!r}")
        if backend == "nccl":
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", 0)))
        timeout = timedelta(seconds=timeout_s)
        store, rank, world_size = next(dist.rendezvous("env://", timeout=timeout))
        store = dist.PrefixStore(_round_namespace(store, rank, world_size), store)
        dist.init_process_group(
            backend, store=store, rank=rank, world_size=world_size, timeout=timeout
        )
        atexit.register(_shutdown)
    return current()


def _round_namespace(store, rank: int, world_size: int) -> str:
    """A store namespace that every rank of this rendezvous round computes alike.

    torchrun's agent keeps its store across restarts, so a restarted group could read the dead
    group's gloo addresses (measured here: "Connection refused" and a 150 s stall on 3 of 4
    restarts without a namespace). TORCHELASTIC_RESTART_COUNT is per agent — a node that joins
    later starts at 0 — so each rank instead counts, in the store, how many groups of this
    world size it has started; every rank of a round started the same number of them.
    """
    started = store.add(f"fastes/started/w{world_size}/r{rank}", 1)
    return f"fastes/w{world_size}/round{started}"


def shutdown() -> None:
    """Leave the group cleanly: wait for every rank (a barrier, under the timeout), then destroy
    the group. Call it at the end of a script that finished normally (the CLI does).

    Without it, a rank that exits while a peer still has a collective in flight can die with
    "terminate called without an active exception" (SIGABRT) as gloo's threads are torn down —
    seen here on about 1 launch in 10, and torchrun then reports the job failed.

    Even after the barrier a rank could abort the same way (3 of 109 three-process launches
    under load, 0 of 112 with the wait below; a core dump showed why): gloo's worker thread
    destroys a finished collective's work object just after waking the caller, and the last
    reference to its tensors then needs the GIL; if the interpreter has begun to finalize by
    then, taking the GIL ends the thread and ``std::terminate`` aborts the process. So the
    caller waits a moment, GIL released, after destroying the group, for those threads to
    finish (:data:`SETTLE_S`).
    """
    if dist.is_available() and dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()
        time.sleep(SETTLE_S)


def _shutdown() -> None:
    """At exit, destroy a group :func:`shutdown` did not (no barrier: the exit may be an error,
    and peers may never arrive)."""
    if dist.is_initialized():
        dist.destroy_process_group()
        time.sleep(SETTLE_S)


def current() -> Group | None:
    """The active group, or None in a single process (no torchrun, or :func:`init` not called)."""
    if not (dist.is_available() and dist.is_initialized()):
        return None
    nccl = dist.get_backend() == "nccl"
    device = torch.device("cuda", torch.cuda.current_device()) if nccl else torch.device("cpu")
    return Group(dist.get_rank(), dist.get_world_size(), device)


def is_main() -> bool:
    """True on rank 0 (and in a single process): the rank that writes files and prints."""
    group = current()
    return group is None or group.rank == 0


def member_range(n: int, group: Group | None = None) -> tuple[int, int]:
    """This rank's contiguous slice [start, stop) of items 0..n−1, balanced over the group (the
    first n mod world ranks get one more). The whole range without a group."""
    positive_int(n, "n", 0)
    group = current() if group is None else group
    if group is None:
        return 0, n
    if n < group.world_size:
        raise ValueError(
            f"a population of {n} rows (members, or antithetic pairs) cannot be shared by "
            f"{group.world_size} processes: every rank needs at least one; raise "
            "population_size or run fewer processes"
        )
    base, extra = divmod(n, group.world_size)
    start = group.rank * base + min(group.rank, extra)
    return start, start + base + (group.rank < extra)


def _gather_padded(local: torch.Tensor, sizes: list[int], group: Group) -> torch.Tensor:
    """Concatenate every rank's ``local`` (``sizes[r]`` rows on rank r) in rank order: one
    all-gather of blocks padded to the largest size."""
    block = torch.zeros((max(sizes), *local.shape[1:]), dtype=local.dtype, device=group.device)
    block[: local.shape[0]] = local.to(group.device)
    blocks = [torch.empty_like(block) for _ in range(group.world_size)]
    _all_gather(blocks, block)
    return torch.cat([b[:s] for b, s in zip(blocks, sizes, strict=True)]).to(local.device)


def gather_members(local: torch.Tensor, n: int, group: Group | None = None) -> torch.Tensor:
    """All ranks' ``local`` rows (this rank's slice of ``member_range(n)``) concatenated in rank
    order, i.e. in global member order: an (n, ...) tensor on every rank, on ``local``'s device.
    Only tensors cross the wire."""
    group = current() if group is None else group
    if group is None or group.world_size == 1:
        return local
    ranges = [member_range(n, group._replace(rank=r)) for r in range(group.world_size)]
    sizes = [stop - start for start, stop in ranges]
    if local.shape[0] != sizes[group.rank]:
        raise ValueError(
            f"rank {group.rank} holds {local.shape[0]} rows but its slice of {n} has "
            f"{sizes[group.rank]}"
        )
    return _gather_padded(local, sizes, group)


def gather_varying(local: torch.Tensor, group: Group | None = None) -> torch.Tensor:
    """All ranks' ``local`` rows (any number per rank, same trailing shape and dtype)
    concatenated in rank order, on every rank: the row counts are all-gathered first."""
    group = current() if group is None else group
    if group is None or group.world_size == 1:
        return local
    count = torch.tensor([local.shape[0]], dtype=torch.int64, device=group.device)
    counts = [torch.empty_like(count) for _ in range(group.world_size)]
    _all_gather(counts, count)
    return _gather_padded(local, [int(c) for c in counts], group)


def gather_rows(
    local: torch.Tensor, n_rows: int, per_row: int, group: Group | None = None
) -> torch.Tensor:
    """:func:`gather_members` for members that come ``per_row`` to a noise row (antithetic
    pairs): ``local`` is (rows·per_row, ...) for this rank's rows; returns (n_rows·per_row, ...)."""
    group = current() if group is None else group
    if group is None or group.world_size == 1:
        return local
    rest = local.shape[1:]
    rows = local.reshape(-1, per_row, *rest)
    return gather_members(rows, n_rows, group).reshape(n_rows * per_row, *rest)


def sum_in_rank_order(partial: torch.Tensor, group: Group | None = None) -> torch.Tensor:
    """Σ over ranks of ``partial`` (same shape everywhere), added in rank order 0, 1, ... so that
    every rank gets the same bits (an all-reduce's order is the backend's choice)."""
    group = current() if group is None else group
    if group is None or group.world_size == 1:
        return partial
    flat = partial.reshape(1, -1)
    parts = _gather_padded(flat, [1] * group.world_size, group)  # (world, numel)
    total = parts[0].clone()
    for r in range(1, group.world_size):
        total += parts[r]
    return total.reshape(partial.shape)


def restarted() -> bool:
    """Whether torchrun has restarted this job's workers at least once, on any rank.

    TORCHELASTIC_RESTART_COUNT is per agent: a node that joins a running job starts at 0 while
    the agents already there count the restart that admitted it, so the group takes the largest
    count (one all-reduce under the timeout). Without a group: this process's own count."""
    mine = int(os.environ.get("TORCHELASTIC_RESTART_COUNT", "0"))
    group = current()
    if group is None or group.world_size == 1:
        return mine > 0
    count = torch.tensor([mine], dtype=torch.int64, device=group.device)
    dist.all_reduce(count, op=dist.ReduceOp.MAX)
    _TRAFFIC["collectives"] += 1
    _TRAFFIC["bytes"] += count.numel() * count.element_size()
    return int(count) > 0


# Exchanges chosen by choose_exchange, per (world size, rows, D, noise source, device): measured
# once per group and process, every rank holding the same answer (it is decided on shared data).
_EXCHANGE_CHOICES: dict[tuple, str] = {}


def choose_exchange(
    n_rows: int, dim: int, regenerate, what: str = "", group: Group | None = None
) -> str:
    """``"fitness"`` or ``"partial_sums"`` for a generation of ``n_rows`` noise rows of ``dim``
    numbers: the exchange whose measured extra cost is smaller (``exchange="auto"``).

    The fitness-only exchange costs every rank the regeneration of the rows other ranks
    evaluated, (n_rows − its own)·t_row, with t_row timed on ``regenerate(r)`` (the weighted sum
    of this rank's first r rows); the partial-sum exchange costs one all-gather of ``dim``
    floats, timed on the group itself. Each is the median of 3; the ranks take the largest of
    every figure (one all-reduce), so all of them choose alike. Measured once per group and
    configuration (``what`` names the noise source), then remembered: a restarted group
    measures again, and may choose the other exchange; pass the exchange explicitly to pin it
    (the fitness-only exchange is the one with bit-identical results on any world size).
    Without a group: ``"fitness"``.
    """
    group = current() if group is None else group
    if group is None or group.world_size == 1:
        return "fitness"
    memo = (group.world_size, n_rows, dim, what, str(group.device))
    if memo in _EXCHANGE_CHOICES:
        return _EXCHANGE_CHOICES[memo]
    lo, hi = member_range(n_rows, group)
    probe = min(hi - lo, 8)

    def median_s(fn) -> float:
        times = []
        for _ in range(3):
            t0 = time.perf_counter()
            fn()
            times.append(time.perf_counter() - t0)
        return sorted(times)[1]

    t_row = median_s(lambda: regenerate(probe)) / probe
    zeros = torch.zeros(1, dim, dtype=torch.float32, device=group.device)
    blocks = [torch.empty_like(zeros) for _ in range(group.world_size)]
    t_gather = median_s(lambda: dist.all_gather(blocks, zeros))
    costs = torch.tensor([(n_rows - (hi - lo)) * t_row, t_gather], dtype=torch.float64,
                         device=group.device)  # fmt: skip
    dist.all_reduce(costs, op=dist.ReduceOp.MAX)
    choice = "partial_sums" if float(costs[0]) > float(costs[1]) else "fitness"
    _EXCHANGE_CHOICES[memo] = choice
    return choice


def devices_differ(device: torch.device | str, group: Group | None = None) -> bool:
    """Whether the ranks compute on different kinds of device (CPU and CUDA ranks in one gloo
    group): one all-gather of a device code. Such replicas round their updates differently, so
    the :class:`fastes.Trainer` keeps them equal with :func:`broadcast_from_main`."""
    group = current() if group is None else group
    if group is None or group.world_size == 1:
        return False
    mine = torch.tensor([torch.device(device).type == "cuda"], dtype=torch.int64,
                        device=group.device)  # fmt: skip
    everyone = [torch.empty_like(mine) for _ in range(group.world_size)]
    _all_gather(everyone, mine)
    return len({int(t) for t in everyone}) > 1


def broadcast_from_main(tree: Any, group: Group | None = None) -> Any:
    """``tree`` with every tensor replaced by rank 0's value (on this rank's device and dtype):
    one broadcast per tensor leaf, O(size of the tree) bytes. Makes replicas that computed the
    same update on different devices (different float rounding) identical again."""
    from torch.utils import _pytree as pytree

    group = current() if group is None else group
    if group is None or group.world_size == 1:
        return tree
    leaves, spec = pytree.tree_flatten(tree)
    out = []
    for leaf in leaves:
        if not isinstance(leaf, torch.Tensor):
            out.append(leaf)
            continue
        wire = torch.uint8 if leaf.dtype == torch.bool else leaf.dtype  # gloo has no bool
        buf = leaf.detach().to(device=group.device, dtype=wire).contiguous().clone()
        dist.broadcast(buf, src=0)
        _TRAFFIC["collectives"] += 1
        _TRAFFIC["bytes"] += buf.numel() * buf.element_size()
        out.append(buf.to(device=leaf.device, dtype=leaf.dtype))
    return pytree.tree_unflatten(out, spec)


def checksum(tree: Any) -> int:
    """A 63-bit hash of the bytes of every tensor (and the repr of other leaves) in ``tree``:
    equal trees give equal checksums on any rank."""
    from torch.utils import _pytree as pytree

    h = hashlib.blake2b(digest_size=8)
    for leaf in pytree.tree_leaves(tree):
        if isinstance(leaf, torch.Tensor):
            t = leaf.detach().cpu().contiguous()
            h.update(str((t.dtype, tuple(t.shape))).encode())
            h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
        else:
            h.update(repr(leaf).encode())
    return int.from_bytes(h.digest(), "little") >> 1


def check_consistent(what: str, value: Any, group: Group | None = None) -> None:
    """Raise on every rank when ranks disagree about ``value`` (a string, or a pytree hashed with
    :func:`checksum`): the error names ``what`` and the ranks that differ from rank 0."""
    group = current() if group is None else group
    if group is None or group.world_size == 1:
        return
    digest = checksum(value) if not isinstance(value, str) else checksum([value])
    mine = torch.tensor([digest], dtype=torch.int64, device=group.device)
    everyone = [torch.empty_like(mine) for _ in range(group.world_size)]
    _all_gather(everyone, mine)
    values = [int(t) for t in everyone]
    differ = [r for r, v in enumerate(values) if v != values[0]]
    if differ:
        raise RuntimeError(
            f"ranks {differ} disagree with rank 0 about {what} (this is rank {group.rank}): "
            "every rank must run the same configuration, key and state"
        )
