import io

import numpy as np
import pytest
import torch

import fastes
from fastes.prng import philox4x32

# Random123 known-answer vectors for Philox4x32-10 (kat_vectors: ctr, key -> output).
KAT = [
    ((0, 0, 0, 0), (0, 0), (0x6627E8D5, 0xE169C58D, 0xBC57AC4C, 0x9B00DBD8)),
    ((0xFFFFFFFF,) * 4, (0xFFFFFFFF, 0xFFFFFFFF), (0x408F276D, 0x41C83B0E, 0xA20BC7C6, 0x6D5451FD)),
    (
        (0x243F6A88, 0x85A308D3, 0x13198A2E, 0x03707344),
        (0xA4093822, 0x299F31D0),
        (0xD16CFE09, 0x94FDCCEB, 0x5001E420, 0x24126EA1),
    ),
]


@pytest.mark.parametrize("ctr,k,expected", KAT)
def test_philox_known_answer_vectors(ctr, k, expected):
    out = philox4x32(*(torch.tensor([c]) for c in ctr), *k)
    assert tuple(int(w) for w in out) == expected


@pytest.mark.parametrize("n", [1, 3, 4, 16, 17, 256, 257, 1003, 2049])
def test_philox_matches_numpy_uint64_oracle_on_random_words(oracle, n):
    # int64 products wrap mod 2^64; the numpy oracle is exact unsigned arithmetic. Random words
    # exercise the high bit (where signed and unsigned differ). The sizes cover the four CPU
    # paths: Python ints (<= 3 counters), lanes of one Python int (<= 256), numpy (<= 2048)
    # and torch tensors (more).
    rng = np.random.default_rng(n)
    c = rng.integers(0, 2**32, size=(4, n), dtype=np.uint64)
    k = rng.integers(0, 2**32, size=2, dtype=np.uint64)
    got = philox4x32(*(torch.from_numpy(w.astype(np.int64)) for w in c), int(k[0]), int(k[1]))
    want = oracle(c, k)
    assert np.array_equal(np.stack([w.numpy() for w in got]).astype(np.uint64), want)


@pytest.mark.parametrize("runs,n", [(1, 5), (64, 10), (3, 700), (2, 2049)])
def test_philox_with_a_batch_of_keys_matches_each_key_alone(oracle, runs, n):
    # Keys as (R, 1) tensors against (n,) counters (BatchedRuns' table offsets): Python-int
    # lanes with a key each up to 2048 outputs, torch's above; row r equals the oracle for key
    # r.
    rng = np.random.default_rng(runs * n)
    c = rng.integers(0, 2**32, size=(4, n), dtype=np.uint64)
    k = rng.integers(0, 2**32, size=(runs, 2), dtype=np.uint64)
    kt = torch.from_numpy(k.astype(np.int64))
    got = philox4x32(*(torch.from_numpy(w.astype(np.int64)) for w in c), kt[:, :1], kt[:, 1:])
    for r in range(runs):
        want = oracle(c, k[r])
        assert np.array_equal(np.stack([w[r].numpy() for w in got]).astype(np.uint64), want)


def test_key_words_and_validation():
    assert fastes.key(5).tolist() == [5, 0]
    assert fastes.key(2**40 + 3).tolist() == [3, 2**8]
    with pytest.raises(ValueError, match="seed must be in"):
        fastes.key(-1)
    with pytest.raises(TypeError, match="seed must be an int"):
        fastes.key(1.5)
    with pytest.raises(TypeError, match="key must be a key made by fastes.key"):
        fastes.split(torch.zeros(3, dtype=torch.int64))
    with pytest.raises(TypeError, match="key must be"):
        fastes.fold_in([1, 2], 0)
    with pytest.raises(ValueError, match="num must be a positive int"):
        fastes.split(fastes.key(0), 0)


def test_split_and_fold_in_are_deterministic_and_distinct():
    k = fastes.key(123)
    a, b = fastes.split(k, 2)
    assert torch.equal(fastes.split(k, 2), torch.stack([a, b]))
    # A longer split extends a shorter one (counter i gives key i).
    assert torch.equal(fastes.split(k, 5)[:2], torch.stack([a, b]))
    # Up to 256 keys come from Python-int lanes on the eager CPU, more from the tensor route:
    # the same keys either way.
    many = fastes.split(k, 300)
    for n in (1, 2, 3, 5, 256):
        few = fastes.split(k, n)
        assert few.dtype == torch.int64 and few.shape == (n, 2)
        assert torch.equal(few, many[:n])
    keys = {tuple(x.tolist()) for x in fastes.split(k, 1000)}
    keys |= {tuple(fastes.fold_in(k, i).tolist()) for i in range(1000)}
    assert len(keys) == 2000  # no collisions between split and fold_in streams
    assert torch.equal(fastes.fold_in(k, 7), fastes.fold_in(k, torch.tensor(7)))
    assert not torch.equal(fastes.fold_in(k, 7), fastes.fold_in(fastes.key(124), 7))
    # 64-bit data: the high word matters.
    assert not torch.equal(fastes.fold_in(k, 1), fastes.fold_in(k, 1 + 2**32))
    # An integer tensor (a step counter) takes the int route on the eager CPU; the tensor route
    # (a batch of keys, or a GPU key) gives the same words, for any 64-bit value, and so does a
    # batch of keys folded with an int (lanes with a key each), key by key.
    g = torch.Generator().manual_seed(1)
    for runs in (1, 2, 64, 300):
        ks = torch.randint(0, 2**32, (runs, 2), generator=g, dtype=torch.int64)
        for d in (0, 5, 2**40 + 3, -1, 2**63 - 1, -(2**63)):
            alone = torch.stack([fastes.fold_in(kr, d) for kr in ks])
            assert torch.equal(fastes.fold_in(ks, d), alone), (runs, d)
    for d in (0, 7, 2**32 + 1, -1, -(2**63), 2**63 - 1):
        one = fastes.fold_in(k, torch.tensor(d))
        assert one.dtype == torch.int64 and one.shape == (2,)
        assert torch.equal(one, fastes.fold_in(k, d % 2**64))
        assert torch.equal(one, fastes.fold_in(k[None], torch.tensor(d))[0])
        assert torch.equal(
            one,
            fastes.fold_in(
                k, torch.tensor([d], dtype=torch.int32 if -(2**31) <= d < 2**31 else torch.int64)
            ),
        )


def test_key_is_printable_and_serialisable():
    k = fastes.fold_in(fastes.key(9), 3)
    assert "tensor([" in repr(k)
    buf = io.BytesIO()
    torch.save({"key": k}, buf)
    buf.seek(0)
    assert torch.equal(torch.load(buf)["key"], k)


def test_changing_key_does_not_recompile(compile_counter):
    backend, compiles = compile_counter

    @torch.compile(backend=backend, fullgraph=True)
    def step_key(k, step):
        return fastes.split(fastes.fold_in(k, step), 2)

    k = fastes.key(0)
    outs = [step_key(fastes.fold_in(k, i), torch.tensor(i)) for i in range(4)]
    assert len(compiles) == 1
    for i, out in enumerate(outs):
        assert torch.equal(out, fastes.split(fastes.fold_in(fastes.fold_in(k, i), i), 2))


@pytest.mark.parametrize("words", [[-1, 0], [0, -5], [2**32, 0], [0, 2**40]])
def test_keys_with_words_outside_uint32_are_rejected_at_the_boundary(words):
    # Defect: a negative word crashed with an OverflowError deep in numpy's Philox (table noise);
    # a word >= 2^32 was accepted silently.
    bad = torch.tensor(words)
    with pytest.raises(ValueError, match=r"key words must be uint32 values in \[0, 2\*\*32\)"):
        fastes.es_step({"x": torch.ones(3)}, lambda p: p["x"].sum(), bad, population_size=4,
                       sigma=0.1, learning_rate=0.1, noise="table")  # fmt: skip
    with pytest.raises(ValueError, match="key words must be uint32"):
        fastes.split(bad)
    with pytest.raises(ValueError, match="key words must be uint32"):
        fastes.fold_in(bad, 1)
