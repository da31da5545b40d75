"""Counter-based keys and the Philox4x32-10 generator, in plain PyTorch.

Philox4x32-10 (Salmon et al., "Parallel random numbers: as easy as 1, 2, 3", SC 2011,
https://doi.org/10.1145/2063384.2063405) maps a 128-bit counter and a 64-bit key to 128 random
bits. It is the generator Triton's ``tl.philox`` implements, so the CPU reference here and the GPU
kernels produce bit-identical uint32 streams for the same (key, counter).

A *key* is an int64 tensor of shape (2,) holding two uint32 words ``(k0, k1)``. Because it is a
tensor, a changing key is data to ``torch.compile``, not a constant that triggers recompilation.
Keys are derived with :func:`key`, :func:`split` and :func:`fold_in`; nothing here touches torch's
global RNG.

uint32 words are stored in int64 tensors: torch has no shifts for uint64, but int64 multiplication
wraps modulo 2^64, which gives the exact low 64 bits of the 32x32-bit product (checked against
numpy's uint64 arithmetic in tests/test_prng.py).
"""

from __future__ import annotations

import functools
import math

import numpy as np
import torch

__all__ = ["key", "split", "fold_in", "philox4x32", "check_key", "check_keys", "key_words"]

MASK32 = 0xFFFFFFFF
_M0, _M1 = 0xD2511F53, 0xCD9E8D57  # round multipliers
_W0, _W1 = 0x9E3779B9, 0xBB67AE85  # Weyl key increments

# Domain tags in counter word 3, so that split, fold_in and the noise-table offsets never reuse a
# counter that noise generation (word 3 = high half of a row index) could reach.
TAG_SPLIT = 0x53504C54  # "SPLT"
TAG_FOLD = 0x464F4C44  # "FOLD"
TAG_OFFSET = 0x4F464653  # "OFFS"


_SMALL = 2048  # below this many counters numpy's ~1 µs ops beat torch's ~3 µs dispatch (measured)
_LANES = 256  # up to this many, all counters as lanes of one Python int (see _philox_lanes)
# Up to this many counters with a key each (R keys' rows in table_offsets): lanes of one Python
# int too; beyond, philox4x32's route (the big-int operations grow with the lanes). philox4x32
# itself takes keys given as tensors as lanes up to its _SMALL counters.
_KEYED_LANES = 4096
_TINY = 3  # below 4 counters, one Python-int Philox each (fold_in, split of a few keys)


def _small_cpu(*words) -> int:
    """The number of outputs when the eager CPU shortcuts apply (CPU tensor counters, keys ints
    or CPU tensors — a batch of keys, one per run —, at most _SMALL outputs); 0 otherwise."""
    tensors = [w for w in words if isinstance(w, torch.Tensor)]
    if not all(isinstance(w, torch.Tensor) for w in words[:4]) or torch.compiler.is_compiling():
        return 0
    if not all(isinstance(k, (int, torch.Tensor)) for k in words[4:]):
        return 0
    if not all(w.is_cpu for w in tensors):
        return 0
    n = math.prod(np.broadcast_shapes(*(tuple(w.shape) for w in tensors)))
    return n if n <= _SMALL else 0


def _philox4x32_python(c0, c1, c2, c3, k0, k1, rounds):
    """The same rounds on Python ints, for a handful of counters: a key derivation took ~80 µs
    through numpy's per-call overhead and takes ~10 µs this way (measured on the dev CPU); from
    4 counters on, all of them at once as lanes of one Python int (:func:`_philox_lanes`). Keys
    given as tensors (a batch of keys, one per run) become lanes too, one key per counter."""
    keyed = [k for k in (k0, k1) if isinstance(k, torch.Tensor)]
    shape = np.broadcast_shapes(*(tuple(w.shape) for w in (c0, c1, c2, c3, *keyed)))
    flat = lambda w: w.expand(shape).reshape(-1).numpy().astype(np.uint64)  # noqa: E731
    words = [flat(w) for w in (c0, c1, c2, c3)]
    if keyed or words[0].size > _TINY:
        k0, k1 = (k if isinstance(k, int) else flat(k) for k in (k0, k1))
        out = _philox_lanes(*words, k0, k1, rounds)
        return tuple(torch.from_numpy(o.astype(np.int64)).reshape(shape) for o in out)
    words = [w.tolist() for w in words]
    out = list(zip(*(_philox_ints(*c, k0, k1, rounds) for c in zip(*words, strict=True))))
    out = out or [(), (), (), ()]
    return tuple(torch.tensor(o, dtype=torch.int64).reshape(shape) for o in out)


def _philox_lanes(c0, c1, c2, c3, k0: int, k1: int, rounds: int = 10):
    """Philox4x32 rounds for n counters at once (one key): each counter word is a uint64 numpy
    array of n uint32 values, or a Python int shared by all n counters. Word j of counter i is
    lane i (bits 64i..64i+63) of one Python int, so a round is a dozen big-int operations for
    all lanes. Exact: a 32x32-bit product fits its 64-bit lane, and the masks keep each lane's
    high half out of its neighbour. Returns four uint64 arrays. Measured here: 16 counters 14 µs
    (47 µs one Python-int Philox each), 128 counters 50 µs (numpy 76 µs)."""
    n = next((len(w) for w in (c0, c1, c2, c3) if not isinstance(w, int)), 1)
    if n == 0:
        return tuple(np.zeros(0, dtype=np.uint64) for _ in range(4))
    return tuple(_from_lanes(w, n) for w in _philox_lane_ints(n, c0, c1, c2, c3, k0, k1, rounds))


def _from_lanes(w: int, n: int) -> np.ndarray:
    """The n 64-bit lanes of a Python int as a uint64 array."""
    return np.frombuffer(w.to_bytes(8 * n, "little"), dtype="<u8").astype(np.uint64)


class _Lanes(int):
    """A counter word already packed as the lanes of one Python int (word i in bits
    64i..64i+63), e.g. row ids made once and reused; a plain int is one word shared by all."""


def _philox_lane_ints(n: int, c0, c1, c2, c3, k0, k1, rounds: int = 10):
    """:func:`_philox_lanes`' rounds, returning the four words as lane-packed Python ints.
    A word is a uint64 array of n values, a :class:`_Lanes`, or an int shared by all n. The key
    words are ints (one key for every lane) or uint64 arrays of n values (a key per lane: the
    offsets of R runs' rows at once, :func:`fastes.noise.table_offsets`)."""
    ones, low = _lane_masks(n)
    a, b, c, d = _as_lanes(c0, ones), _as_lanes(c1, ones), _as_lanes(c2, ones), _as_lanes(c3, ones)
    if isinstance(k0, int) and isinstance(k1, int):
        r0, r1 = k0, k1  # the round keys, bumped as they go (a fresh key each call: no cache)
        for _ in range(rounds):
            p0, p1 = a * _M0, c * _M1
            a, b, c, d = ((p1 >> 32) & low) ^ b ^ (r0 * ones), p1 & low, \
                ((p0 >> 32) & low) ^ d ^ (r1 * ones), p0 & low  # fmt: skip
            r0, r1 = (r0 + _W0) & MASK32, (r1 + _W1) & MASK32
        return a, b, c, d
    # A key per lane: the round keys are lanes too (k + r·W < 2^36 stays inside each lane)
    r0, r1 = (k * ones if isinstance(k, int) else _to_lanes(k) for k in (k0, k1))
    w0, w1 = _W0 * ones, _W1 * ones
    for _ in range(rounds):
        p0, p1 = a * _M0, c * _M1
        a, b, c, d = ((p1 >> 32) & low) ^ b ^ r0, p1 & low, \
            ((p0 >> 32) & low) ^ d ^ r1, p0 & low  # fmt: skip
        r0, r1 = (r0 + w0) & low, (r1 + w1) & low
    return a, b, c, d


def _as_lanes(w, ones: int) -> int:
    """A counter word as lanes: a :class:`_Lanes` as it is, an int in every lane, or an array's
    values one per lane."""
    return w if isinstance(w, _Lanes) else w * ones if isinstance(w, int) else _to_lanes(w)


def _to_lanes(w: np.ndarray) -> int:
    """A uint64 array as the 64-bit lanes of one Python int (value i in bits 64i..64i+63)."""
    return int.from_bytes(np.ascontiguousarray(w, dtype="<u8").tobytes(), "little")


@functools.lru_cache(maxsize=64)
def _lane_masks(n: int) -> tuple[int, int]:
    """(1 in every lane, 2^32 - 1 in every lane) for n 64-bit lanes."""
    ones = int.from_bytes(np.ones(n, dtype="<u8").tobytes(), "little")
    return ones, ones * MASK32


def _philox_ints(a: int, b: int, c: int, d: int, k0: int, k1: int, rounds: int = 10):
    """One counter's Philox4x32 rounds on Python ints: four output words. The round keys are
    bumped as they go: a fresh key each call (fold_in's every generation) would miss a cache of
    them (fold_in at D = 10: 7.3 -> 5.8 µs a call for the rounds)."""
    for _ in range(rounds):
        p0, p1 = a * _M0, c * _M1
        a, b, c, d = (p1 >> 32) ^ b ^ k0, p1 & MASK32, (p0 >> 32) ^ d ^ k1, p0 & MASK32
        k0, k1 = (k0 + _W0) & MASK32, (k1 + _W1) & MASK32
    return a, b, c, d


def _philox4x32_numpy(c0, c1, c2, c3, k0: int, k1: int, rounds):
    """The same rounds in numpy uint64 (exact: products of uint32 values wrap mod 2^64 there
    too, and shifts are logical), for a few hundred to 2048 counters of one key given as ints
    (keys given as tensors take the Python-int lanes up to 2048 counters: :func:`philox4x32`)."""
    shape = torch.broadcast_shapes(*(w.shape for w in (c0, c1, c2, c3)))
    c0, c1, c2, c3 = (w.expand(shape).numpy().astype(np.uint64) for w in (c0, c1, c2, c3))
    k0, k1 = np.uint64(k0), np.uint64(k1)
    m0, m1, mask, s32 = np.uint64(_M0), np.uint64(_M1), np.uint64(MASK32), np.uint64(32)
    w0, w1 = np.uint64(_W0), np.uint64(_W1)
    for r in range(rounds):
        if r:
            k0 = (k0 + w0) & mask
            k1 = (k1 + w1) & mask
        p0, p1 = c0 * m0, c2 * m1
        c0, c1, c2, c3 = (
            (p1 >> s32) ^ c1 ^ k0,
            p1 & mask,
            (p0 >> s32) ^ c3 ^ k1,
            p0 & mask,
        )
    return tuple(torch.from_numpy(np.asarray(w, dtype=np.int64)) for w in (c0, c1, c2, c3))


def philox4x32(c0, c1, c2, c3, k0, k1, rounds: int = 10):
    """Philox4x32 rounds on uint32 words held in int64 tensors (or Python ints).

    Args:
        c0, c1, c2, c3: counter words, int64 tensors (broadcastable) with values in [0, 2^32).
        k0, k1: key words, Python ints or int64 tensors in [0, 2^32).
        rounds: number of rounds; 10 is Philox4x32-10.

    Returns:
        Four int64 tensors with the output words, values in [0, 2^32).

    Example:
        >>> z = torch.zeros(1, dtype=torch.int64)
        >>> [hex(int(w)) for w in philox4x32(z, z, z, z, 0, 0)]
        ['0x6627e8d5', '0xe169c58d', '0xbc57ac4c', '0x9b00dbd8']
    """
    n = _small_cpu(c0, c1, c2, c3, k0, k1)
    if n:  # up to _SMALL counters: lanes up to _LANES, or with a key per counter; numpy beyond
        int_keys = isinstance(k0, int) and isinstance(k1, int)
        small = _philox4x32_python if n <= _LANES or not int_keys else _philox4x32_numpy
        return small(c0, c1, c2, c3, k0, k1, rounds)
    for r in range(rounds):
        if r:
            k0 = (k0 + _W0) & MASK32
            k1 = (k1 + _W1) & MASK32
        p0 = c0 * _M0  # wraps mod 2^64: exact 64-bit product of two uint32 values
        p1 = c2 * _M1
        # (p >> 32) is an arithmetic shift, so mask the sign extension away.
        c0, c1, c2, c3 = (
            ((p1 >> 32) & MASK32) ^ c1 ^ k0,
            p1 & MASK32,
            ((p0 >> 32) & MASK32) ^ c3 ^ k1,
            p0 & MASK32,
        )
    return c0, c1, c2, c3


def check_key(k: torch.Tensor, name: str = "key") -> torch.Tensor:
    """Validate that ``k`` is a key: an int64 tensor of shape (2,) holding two uint32 words.

    The word range is checked for CPU keys outside ``torch.compile`` (where reading two values is
    free); a GPU key is not read back, so checking it would cost a device sync every step.
    """
    _checked_words(_check_key_type(k, name), name)
    return k


def _check_key_type(k: torch.Tensor, name: str) -> torch.Tensor:
    """:func:`check_key`'s type, dtype and shape test (not the word range)."""
    if not isinstance(k, torch.Tensor) or k.dtype != torch.int64 or tuple(k.shape) != (2,):
        got = (
            f"tensor of dtype {k.dtype} and shape {tuple(k.shape)}"
            if isinstance(k, torch.Tensor)
            else repr(type(k).__name__)
        )
        raise TypeError(
            f"{name} must be a key made by fastes.key(seed): an int64 tensor of shape (2,); "
            f"got {got}"
        )
    return k


def _checked_words(k: torch.Tensor, name: str = "key") -> tuple[int, int] | None:
    """The words of a key whose type and shape :func:`check_key` checked: for an eager CPU key
    its two Python ints, checked to be uint32 values (one read serves the check and the
    caller's arithmetic); None for keys not read here (GPUs, ``torch.compile``)."""
    if k.is_cpu and not torch.compiler.is_compiling():
        k0, k1 = k.tolist()
        if not (0 <= k0 <= MASK32 and 0 <= k1 <= MASK32):
            raise ValueError(
                f"{name} words must be uint32 values in [0, 2**32); got {[k0, k1]} "
                "(make keys with fastes.key(seed), split and fold_in)"
            )
        return k0, k1
    return None


def key(seed: int, device: torch.device | str | None = None) -> torch.Tensor:
    """Make a key from an integer seed in [0, 2^64).

    The key's words are the seed's low and high 32 bits, so ``key(s)`` is printable and
    round-trips through ``torch.save`` or ``key.tolist()``.

    Example:
        >>> key(42)
        tensor([42,  0])
    """
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise TypeError(f"seed must be an int in [0, 2**64); got {type(seed).__name__} {seed!r}")
    if not 0 <= seed < 2**64:
        raise ValueError(f"seed must be in [0, 2**64); got {seed}")
    return torch.tensor([seed & MASK32, seed >> 32], dtype=torch.int64, device=device)


def key_words(k: torch.Tensor):
    """The key's two uint32 words: Python ints for eager CPU code (cheap scalar operands, and
    the numpy path for small inputs), 0-d tensors on GPUs (no host sync) and inside
    ``torch.compile`` (a new key is data, not a recompile)."""
    if k.is_cpu and not torch.compiler.is_compiling():
        k0, k1 = k.tolist()
        return k0, k1
    return k[0], k[1]


def _batch_key_words(k: torch.Tensor, n: int) -> tuple[np.ndarray, np.ndarray]:
    """The two words of a batch of eager CPU keys (R, 2) as uint64 arrays, each key repeated
    for n counters: a key per lane of R·n lanes (key i in lanes i·n..i·n + n − 1), for
    :func:`_philox_lane_ints` without philox4x32's tensor plumbing (~140 µs for 64 keys)."""
    kw = k.numpy().astype(np.uint64)
    if n == 1:
        return kw[:, 0], kw[:, 1]
    return np.repeat(kw[:, 0], n), np.repeat(kw[:, 1], n)


def _derive(k: torch.Tensor, c0, c1, tag: int) -> torch.Tensor:
    zero = torch.zeros_like(c0)
    words = key_words(k) if k.ndim == 1 else (k[:, 0], k[:, 1])  # one key, or a batch (R, 2)
    w0, w1, _, _ = philox4x32(c0, c1, zero, zero + tag, *words)
    return torch.stack([w0, w1], dim=-1)


def check_keys(k: torch.Tensor, name: str = "keys") -> torch.Tensor:
    """Validate a batch of keys: an int64 tensor of shape (R, 2) of uint32 words (R >= 1)."""
    if (
        not isinstance(k, torch.Tensor)
        or k.dtype != torch.int64
        or k.ndim != 2
        or (k.shape[0] < 1 or k.shape[1] != 2)
    ):
        got = (f"tensor of dtype {k.dtype} and shape {tuple(k.shape)}"
               if isinstance(k, torch.Tensor) else repr(type(k).__name__))  # fmt: skip
        raise TypeError(
            f"{name} must be a batch of keys, an int64 tensor of shape (R, 2) (e.g. "
            f"torch.stack([fastes.key(s) for s in seeds])); got {got}"
        )
    if k.is_cpu and not torch.compiler.is_compiling():
        w = k.numpy()  # numpy's min/max: ~2 µs against ~10 µs of four tensor ops
        if np.minimum.reduce(w, axis=None) < 0 or np.maximum.reduce(w, axis=None) > MASK32:
            raise ValueError(f"{name} words must be uint32 values in [0, 2**32)")
    return k


def split(k: torch.Tensor, num: int = 2) -> torch.Tensor:
    """Split a key into ``num`` new independent keys, returned as a (num, 2) tensor.

    Example:
        >>> k1, k2 = split(key(0))
    """
    check_key(k)
    if isinstance(num, bool) or not isinstance(num, int) or num < 1:
        raise ValueError(f"num must be a positive int; got {num!r}")
    if k.is_cpu and not torch.compiler.is_compiling() and num <= _LANES:
        # The same counters as lanes of Python ints: ~15 µs against ~90 µs of tensor plumbing.
        w0, w1, _, _ = _philox_lanes(np.arange(num, dtype=np.uint64), 0, 0, TAG_SPLIT,
                                     *key_words(k))  # fmt: skip
        return torch.from_numpy(np.stack([w0, w1], -1).astype(np.int64))
    c0 = torch.arange(num, dtype=torch.int64, device=k.device)
    return _derive(k, c0, torch.zeros_like(c0), TAG_SPLIT)


def fold_in(k: torch.Tensor, data: int | torch.Tensor) -> torch.Tensor:
    """Derive a new key from ``k`` and a 64-bit integer ``data`` (e.g. the step number).

    ``data`` may be an int64 0-d tensor, so a step counter inside a compiled function stays data.
    ``k`` may also be a batch of keys (R, 2): each row is folded with ``data``, as one call.

    Example:
        >>> step_key = fold_in(key(0), 7)
    """
    if isinstance(k, torch.Tensor) and k.ndim == 2:
        check_keys(k, "k")
        words = None
    else:
        # one key: checked, and its words read once where eager CPU code folds with them
        words = _checked_words(_check_key_type(k, "key"))
    eager_cpu = words is not None
    if isinstance(data, torch.Tensor) and not (
        eager_cpu and data.is_cpu and data.numel() == 1
        and not (data.is_floating_point() or data.is_complex())
    ):  # fmt: skip
        d = data.to(device=k.device, dtype=torch.int64).reshape(())
    elif isinstance(data, torch.Tensor):  # one integer on the eager CPU: the int route below
        return fold_in(k, int(data.to(torch.int64)))
    elif isinstance(data, int) and not isinstance(data, bool):
        if not -(2**63) <= data < 2**64:
            raise ValueError(f"data must fit in 64 bits; got {data}")
        u = data % 2**64
        if eager_cpu:
            # One counter, all Python ints (~10 µs; the tensor route costs ~80 µs of dispatch).
            w0, w1, _, _ = _philox_ints(u & MASK32, u >> 32, 0, TAG_FOLD, *words)
            return torch.from_numpy(np.array((w0, w1), dtype=np.int64))  # ~1 µs: torch.tensor 3
        if k.ndim == 2 and k.is_cpu and not torch.compiler.is_compiling():
            # A batch of keys: one counter, a key per lane (64 keys: ~30 µs against ~190 µs
            # through the tensor route)
            n, lo, hi = k.shape[0], u & MASK32, u >> 32
            w0, w1, _, _ = _philox_lane_ints(n, lo, hi, 0, TAG_FOLD, *_batch_key_words(k, 1))
            words = np.stack([_from_lanes(w0, n), _from_lanes(w1, n)], -1)
            return torch.from_numpy(words.astype(np.int64))
        d = torch.tensor(u - (2**64 if u >= 2**63 else 0), device=k.device)
    else:
        raise TypeError(f"data must be an int or an int64 tensor; got {type(data).__name__}")
    return _derive(k, d & MASK32, (d >> 32) & MASK32, TAG_FOLD)
