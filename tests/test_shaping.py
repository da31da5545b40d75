import math

import pytest
import torch

from fastes.shaping import METHODS, centered_ranks, nes_utilities, shape_fitness, zscore

nan, inf = math.nan, math.inf


def test_centered_ranks_range_order_and_sum():
    f = torch.randn(101, generator=torch.Generator().manual_seed(0))
    w = centered_ranks(f)
    assert w.min() == -0.5 and w.max() == 0.5
    assert torch.equal(w.argsort(), f.argsort())
    assert abs(float(w.sum())) < 1e-5
    # Invariant to monotone transforms and equivariant to permutations.
    assert torch.equal(centered_ranks(torch.exp(f) * 3 + 1), w)
    perm = torch.randperm(101, generator=torch.Generator().manual_seed(1))
    assert torch.equal(centered_ranks(f[perm]), w[perm])


def test_ties_share_a_weight_and_flat_population_gives_zero():
    w = centered_ranks(torch.tensor([1.0, 2.0, 2.0, 3.0]))
    assert torch.allclose(w, torch.tensor([-0.5, 0.0, 0.0, 0.5]))
    for m in METHODS[:3]:
        assert torch.count_nonzero(shape_fitness(torch.full((6,), 4.0), m)[0]) == 0


def test_nes_utilities_match_the_formula():
    P = 10
    f = torch.arange(P, dtype=torch.float64)  # member P-1 is best (k = 1)
    u = nes_utilities(f)
    raw = [max(0.0, math.log(P / 2 + 1) - math.log(k)) for k in range(1, P + 1)]
    want = [r / sum(raw) - 1 / P for r in raw][::-1]
    assert torch.allclose(u, torch.tensor(want, dtype=torch.float64))
    assert abs(float(u.sum())) < 1e-12


def test_zscore_moments_and_minimize_flag():
    f = torch.tensor([1.0, 4.0, 2.0, 9.0])
    z = zscore(f)
    assert abs(float(z.mean())) < 1e-6 and abs(float(z.std(unbiased=False)) - 1) < 1e-6
    w_max, _ = shape_fitness(f)
    w_min, _ = shape_fitness(f, minimize=True)
    assert torch.equal(w_min, -w_max)
    assert torch.equal(shape_fitness(f, "raw")[0], f)


def test_multiple_objectives_are_shaped_then_weighted():
    f = torch.tensor([[1.0, 30.0], [2.0, 10.0], [3.0, 20.0]])
    w, _ = shape_fitness(f, objective_weights=[1.0, 3.0])
    want = centered_ranks(f[:, 0]) + 3 * centered_ranks(f[:, 1])
    assert torch.allclose(w, want)
    default, _ = shape_fitness(f)
    assert torch.allclose(default, (centered_ranks(f[:, 0]) + centered_ranks(f[:, 1])) / 2)
    with pytest.raises(ValueError, match="objective_weights must be 2 finite numbers"):
        shape_fitness(f, objective_weights=[1.0])


def test_nan_ranks_last_and_is_counted():
    f = torch.tensor([nan, 1.0, -inf, 5.0, nan])
    w, stats = shape_fitness(f)
    assert stats == (2, 1)
    assert w[0] == w[4] and w[0] < w[2] < w[1] < w[3]  # NaN below −inf, tied with each other
    wz, _ = shape_fitness(torch.tensor([nan, 1.0, 3.0, inf]), "zscore")
    assert wz[0] == wz[1] and torch.isfinite(wz).all()  # NaN -> lowest finite, inf -> highest
    assert wz[3] == wz[2]
    with pytest.raises(ValueError, match="NaN for every member"):
        shape_fitness(torch.full((4,), nan))
    with pytest.raises(ValueError, match=r"objective column\(s\) \[1\]"):
        shape_fitness(torch.tensor([[1.0, nan], [2.0, nan]]))


def test_bad_inputs():
    with pytest.raises(ValueError, match="method must be one of"):
        shape_fitness(torch.ones(3), "softmax")
    with pytest.raises(
        ValueError, match=r"fitness must have shape \(P,\) or \(P, K\); got \(2, 2, 2\)"
    ):
        shape_fitness(torch.ones(2, 2, 2))
    with pytest.raises(TypeError, match="fitness must be a torch.Tensor"):
        shape_fitness([1.0, 2.0])


@pytest.mark.parametrize("method", ["centered_ranks", "nes", "zscore"])
def test_one_objective_fast_path_equals_the_general_path_bit_for_bit(method):
    # One finite objective on the CPU skips the NaN counts and the combination, and rank shaping
    # without ties skips the tie groups; the general path is forced by explicit weights [1.0].
    g = torch.Generator().manual_seed(0)
    for f in (torch.randn(33, generator=g), torch.tensor([3.0, 1.0, 3.0, 2.0, 1.0])):
        fast, stats = shape_fitness(f, method)
        general, _ = shape_fitness(f[:, None], method, objective_weights=[1.0])
        assert torch.equal(fast, general) and stats == (0, 0)


hypothesis = pytest.importorskip("hypothesis")
from hypothesis import given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

# Values that exercise every branch of the small-population shortcuts: ties, ±0, ±inf, NaN.
_VALUES = st.sampled_from([0.0, -0.0, 1.0, -1.5, 2.5, 1e30, math.inf, -math.inf, math.nan])
_FITNESS = st.lists(st.one_of(_VALUES, st.floats(-10, 10)), min_size=2, max_size=40)


@settings(max_examples=150, deadline=None)
@given(values=_FITNESS, method=st.sampled_from(METHODS), minimize=st.booleans(),
       dtype=st.sampled_from([torch.float32, torch.float64]))  # fmt: skip
def test_small_population_shortcuts_equal_the_general_path(values, method, minimize, dtype):
    # P <= 256 shapes on Python floats (a NaN, an inf or a tie falls back); the general path is
    # forced by explicit objective weights [1.0]. Same bits, same dtype, or the same error.
    f = torch.tensor(values, dtype=dtype)
    try:
        general, g_stats = shape_fitness(f[:, None], method, objective_weights=[1.0],
                                         minimize=minimize)  # fmt: skip
    except ValueError:
        with pytest.raises(ValueError):
            shape_fitness(f, method, minimize=minimize)
        return
    fast, stats = shape_fitness(f, method, minimize=minimize)
    assert fast.dtype == general.dtype and torch.equal(fast, general) and stats == g_stats
    assert fast.data_ptr() != f.data_ptr()  # never the caller's tensor


@settings(max_examples=100, deadline=None)
@given(values=_FITNESS, minimize=st.booleans())
def test_small_population_order_equals_the_stable_argsort(values, minimize):
    # Strategies order members best first (NaN last, ties by index); P <= 256 sorts on Python
    # floats. The reference: the tensor path of the same method, forced past the shortcut.
    from fastes.strategies import base, make

    s = make("cma_es", {"x": torch.zeros(3)}, population_size=len(values), minimize=minimize)
    f = torch.tensor(values)
    if torch.isnan(f).all():
        return
    fast = s._order(f)
    old, base._SMALL_ORDER = base._SMALL_ORDER, 0
    try:
        reference = s._order(f)
    finally:
        base._SMALL_ORDER = old
    assert torch.equal(fast, reference)
