import math

import numpy as np
import pytest
import torch

import fastes
from fastes.noise import (
    PhiloxNoise,
    TableNoise,
    noise_table,
    philox_normal_rows,
    philox_uint32_rows,
    table_offsets,
)
from fastes.prng import MASK32


def test_uint32_stream_matches_the_counter_layout(oracle):
    # Element k of row r comes from counter (k//4 lo, k//4 hi, r lo, r hi), lane k % 4.
    k = fastes.key(77)
    rows = torch.tensor([0, 5, 2**32 + 3])  # a row index above 2^32 uses counter word 3
    got = philox_uint32_rows(k, rows, 10).numpy().astype(np.uint64)
    for i, r in enumerate(rows.tolist()):
        blocks = np.arange(3, dtype=np.uint64)
        c = np.stack([blocks, blocks * 0, blocks * 0 + (r & MASK32), blocks * 0 + (r >> 32)])
        want = oracle(c, k.tolist()).T.reshape(-1)[:10]
        assert np.array_equal(got[i], want)


def test_64bit_element_counters(oracle):
    # Blocks past 2^32 (elements past 2^34) carry into counter word 1 instead of wrapping.
    from fastes.normals import _philox_words

    k = fastes.key(5)
    b0 = 2**32 - 2
    words = _philox_words(k, torch.tensor([1]), b0, 4)
    blocks = np.arange(b0, b0 + 4, dtype=np.uint64)
    c = np.stack([blocks & np.uint64(MASK32), blocks >> np.uint64(32), blocks * 0 + 1, blocks * 0])
    want = oracle(c, k.tolist())
    assert np.array_equal(np.stack([w[0].numpy() for w in words]).astype(np.uint64), want)


def test_noise_is_a_pure_function_of_key_row_element():
    k = fastes.key(1)
    full = philox_normal_rows(k, torch.arange(6), 37)
    assert torch.equal(philox_normal_rows(k, [4, 1], 37), full[[4, 1]])
    assert torch.equal(philox_normal_rows(k, [3], 13), full[3:4, :13])  # prefix of a longer row
    assert torch.equal(philox_normal_rows(k, torch.arange(6), 37), full)  # same key, same bits
    assert not torch.equal(philox_normal_rows(fastes.key(2), torch.arange(6), 37), full)


def test_normal_moments():
    # n = 2^20 samples: the standard error of the mean is 1/sqrt(n) ≈ 1e-3, of the variance
    # sqrt(2/n) ≈ 1.4e-3, of the 4th moment sqrt(96/n) ≈ 1e-2; bounds are 5 standard errors.
    x = philox_normal_rows(fastes.key(3), torch.arange(4), 2**18).double().flatten()
    n = x.numel()
    assert abs(x.mean()) < 5 / math.sqrt(n)
    assert abs(x.var() - 1) < 5 * math.sqrt(2 / n)
    assert abs((x**4).mean() - 3) < 5 * math.sqrt(96 / n)
    # Tails: P(|x| > 3) = 0.0027, binomial standard error sqrt(p(1-p)/n).
    p = 0.0026998
    assert abs((x.abs() > 3).double().mean() - p) < 5 * math.sqrt(p * (1 - p) / n)
    # Rows are uncorrelated: sample correlation has standard error 1/sqrt(D).
    rows = philox_normal_rows(fastes.key(3), torch.arange(8), 2**15).double()
    corr = torch.corrcoef(rows)
    off = corr[~torch.eye(8, dtype=torch.bool)]
    assert off.abs().max() < 5 / math.sqrt(2**15)


def test_table_is_philox_row_zero_and_memoised():
    t = noise_table(size=1000, seed=4)
    assert torch.equal(t.values, philox_normal_rows(fastes.key(4), [0], 1000)[0])
    assert noise_table(size=1000, seed=4) is t


def test_table_offsets_of_a_few_rows_equal_the_vectorised_ones():
    # Up to 256 rows take the Python-int lanes path (the small-D fixed cost); more take tensor
    # ops (and philox4x32's numpy path); a batch of one key takes the tensor path too.
    from fastes.noise import table_offsets

    k = fastes.key(2**40 + 17)
    rows = torch.arange(2**32 - 150, 2**32 + 150)  # row ids past 2^32: both counter words used
    whole = table_offsets(k, rows, 10, 2**24)  # 300 rows: the tensor path
    parts = torch.cat([table_offsets(k, rows[i : i + 10], 10, 2**24) for i in range(0, 300, 10)])
    assert torch.equal(whole, parts)
    assert torch.equal(table_offsets(k[None], rows[:20], 10, 2**24)[0], whole[:20])
    # The eager CPU memo (its own call of the lanes path up to 256 rows), asked twice each.
    from fastes.noise import _offsets_memo

    for n in (0, 20, 300, 20):
        for _ in range(2):
            assert torch.equal(_offsets_memo(k, rows[:n], 10, 2**24), whole[:n])
    with pytest.raises(ValueError, match="dim must be <= the noise table size"):
        _offsets_memo(k, rows[:2], 2**24 + 1, 2**24)


def test_a_batch_of_keys_offsets_equal_each_key_alone():
    # A batch of keys (BatchedRuns) takes Python-int lanes with a key per lane up to 4,096
    # (key, row) pairs and numpy's uint64 arrays beyond; both must give each key's offsets alone.
    from fastes.noise import table_offsets

    g = torch.Generator().manual_seed(0)
    cases = [(1, torch.arange(1)), (3, torch.randint(0, 2**40, (7,), generator=g))]
    cases += [(64, torch.arange(10)), (17, torch.arange(200)), (300, torch.arange(13))]
    for runs, rows in cases:
        keys = torch.randint(0, 2**32, (runs, 2), generator=g, dtype=torch.int64)
        for dim, size in ((10, 2**22), (1000, 2**22), (3, 50)):
            alone = torch.stack([table_offsets(k, rows, dim, size) for k in keys])
            assert torch.equal(table_offsets(keys, rows, dim, size), alone), (runs, dim)


def test_table_rows_are_slices_at_key_derived_offsets():
    t = noise_table(size=5000, seed=0)
    k = fastes.key(8)
    offs = table_offsets(k, torch.arange(10), 100, 5000)
    assert int(offs.min()) >= 0 and int(offs.max()) <= 5000 - 100
    for n in (10, 50):  # 1,000 elements gathered in numpy, 5,000 by index_select
        offs = table_offsets(k, torch.arange(n), 100, 5000)
        rows = TableNoise(t).rows(k, torch.arange(n), 100)
        assert rows.shape == (n, 100) and rows.dtype == torch.float32
        for i, o in enumerate(offs.tolist()):
            assert torch.equal(rows[i], t.values[o : o + 100])
        # first_rows (a strategy's rows 0..n-1, the key given by its words): the same rows
        assert torch.equal(TableNoise(t).first_rows(tuple(k.tolist()), n, 100), rows)
    with pytest.raises(ValueError, match="dim must be <= the noise table size"):
        table_offsets(k, torch.arange(2), 5001, 5000)
    with pytest.raises(ValueError, match="dim must be <= the noise table size"):
        TableNoise(t).first_rows((8, 0), 2, 5001)


@pytest.mark.parametrize("source", [PhiloxNoise(), TableNoise(noise_table(size=4096, seed=1))])
@pytest.mark.parametrize("antithetic", [True, False])
def test_perturb_and_weighted_sum_match_dense_rows(source, antithetic):
    k, D = fastes.key(11), 53
    rows = torch.arange(7)
    eps = source.rows(k, rows, D)  # (7, D)
    theta = torch.linspace(-1, 1, D)
    out = torch.empty(7 * (2 if antithetic else 1), D)
    source.perturb(k, rows, theta, 0.3, antithetic, out)
    # perturb may fuse θ + σ·ε into one rounding; computing it in two roundings differs by at
    # most 2^-24·(|θ| + 2|σε|), so compare to the float64 value within 2^-23·(|θ| + |σε|).
    bound = 2**-23 * (theta.abs() + 0.3 * eps.abs())
    plus, minus = (out[0::2], out[1::2]) if antithetic else (out, None)
    assert torch.all((plus.double() - (theta.double() + 0.3 * eps.double())).abs() <= bound)
    if antithetic:
        assert torch.all((minus.double() - (theta.double() - 0.3 * eps.double())).abs() <= bound)
    w = torch.tensor([0.5, -1.0, 2.0, 0.0, 0.25, -0.75, 1.5])
    got = source.weighted_sum(k, rows, w, D)
    want = (w.double() @ eps.double()).float()
    # fp32 accumulation over 7 rows: each |w_j ε_j| term rounds at most eps/2 relative, so the
    # error is below 7 · 2^-24 · Σ_j |w_j ε_j| elementwise.
    bound = 7 * 2**-24 * (w.abs() @ eps.abs())
    assert torch.all((got - want).abs() <= bound + 1e-30)


def test_table_memo_is_bounded_and_clearable():
    # Hidden module state, made explicit: at most _MAX_TABLES tables are kept, and results do
    # not depend on the memo.
    from fastes import noise

    noise.clear_caches()
    first = noise.noise_table(size=1000, seed=0).values.clone()
    for seed in range(1, noise._MAX_TABLES + 3):
        noise.noise_table(size=1000, seed=seed)
    assert len(noise._TABLES) == noise._MAX_TABLES
    assert (1000, 0, "cpu") not in noise._TABLES  # the oldest went first
    assert torch.equal(noise.noise_table(size=1000, seed=0).values, first)  # remade identically
    # The rows' numpy views: one per (table, dim), bounded, the same rows as slicing the table
    table = noise.noise_table(size=1000, seed=0)
    for dim in range(1, noise._MAX_ROW_VIEWS + 4):
        offsets = np.array([0, 1000 - dim, 7 % (1001 - dim)])
        got = noise.TableNoise(table)._slices(offsets, dim)
        assert torch.equal(got, torch.stack([table.values[o : o + dim] for o in offsets]))
        assert len(noise._ROW_VIEWS) <= noise._MAX_ROW_VIEWS
    strided = noise.NoiseTable(table.values[::3], 0)  # a table given as a strided view
    offsets = np.array([0, 5, 333 - 4])
    got = noise.TableNoise(strided)._slices(offsets, 4)
    assert torch.equal(got, torch.stack([strided.values[o : o + 4] for o in offsets]))
    noise.clear_caches()
    assert not noise._TABLES and not noise._LAST_OFFSETS and not noise._ROW_VIEWS
