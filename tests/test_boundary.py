"""Property tests of the public boundary (hypothesis): any input gives a result or a ValueError /
TypeError that names the argument — never a crash deep inside torch or numpy.

Each case draws valid arguments and, at most, one argument from a pool of bad values, so the
error can be checked to name that argument. Example counts are small and deadlines off, to keep
the suite fast on 2 cores.
"""

import math

import pytest
import torch

hypothesis = pytest.importorskip("hypothesis")
from hypothesis import given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

import fastes  # noqa: E402
from fastes.shaping import METHODS  # noqa: E402
from fastes.strategies import REGISTRY, make  # noqa: E402

FAST = settings(max_examples=60, deadline=None, derandomize=True, database=None)

# Values that are wrong for most arguments: kinds and ranges a user can plausibly pass.
JUNK = st.sampled_from(
    [None, "0.1", [1, 2], -1, 0, -0.5, 0.0, math.nan, math.inf, -math.inf, 1e39, True, 1 + 2j,
     torch.ones(2), object()]
)  # fmt: skip

VALID = dict(
    population_size=st.sampled_from([2, 4, 6, 8]),
    sigma=st.floats(1e-3, 2.0),
    learning_rate=st.floats(0.0, 1.0),
    antithetic=st.booleans(),
    shaping=st.sampled_from(METHODS),
    weight_decay=st.floats(0.0, 0.5),
    minimize=st.booleans(),
    mode=st.sampled_from(["vmap", "loop"]),
    chunk_size=st.sampled_from([None, 1, 2, 3, 16]),
    noise=st.sampled_from(["auto", "table", "philox"]),
)


def sphere(p):
    return -sum((leaf.float() ** 2).sum() for leaf in fastes.tree.tree_leaves(p))


def _call_or_named_error(fn, names):
    """Run ``fn``; an error must be a ValueError / TypeError naming one of ``names``."""
    try:
        return fn()
    except (ValueError, TypeError) as e:
        assert any(n and n in str(e) for n in names), (names, str(e))
        return None


@st.composite
def es_arguments(draw):
    kw = {k: draw(v) for k, v in VALID.items()}
    if kw["antithetic"] and kw["population_size"] % 2:
        kw["population_size"] += 1
    bad = draw(st.sampled_from([None, *VALID, "key", "fitness_args"]))
    if bad is not None:
        kw[bad] = draw(JUNK)
    return kw, bad


@FAST
@given(es_arguments(), st.sampled_from([torch.float32, torch.float64, torch.bfloat16]))
def test_es_step_returns_the_params_structure_or_names_the_argument(args, dtype):
    kw, bad = args
    key = kw.pop("key", fastes.key(0))
    params = {"w": torch.ones(2, 3, dtype=dtype), "b": [torch.zeros(2, dtype=dtype)]}
    out = _call_or_named_error(
        lambda: fastes.es_step(params, sphere, key, **kw), [bad or "no error expected"]
    )
    if bad is None:
        assert out is not None
    if out is not None:
        assert [(t.shape, t.dtype) for t in fastes.tree.tree_leaves(out)] == [
            (t.shape, t.dtype) for t in fastes.tree.tree_leaves(params)
        ]
        assert all(torch.isfinite(t.float()).all() for t in fastes.tree.tree_leaves(out))


@FAST
@given(es_arguments())
def test_estimate_grad_gives_a_finite_gradient_or_names_the_argument(args):
    kw, bad = args
    for name in ("learning_rate", "weight_decay"):
        if kw.pop(name, None) is not None and bad == name:
            bad = None  # not an argument of estimate_grad
    key = kw.pop("key", fastes.key(1))
    params = {"x": torch.linspace(-1, 1, 5)}
    out = _call_or_named_error(
        lambda: fastes.estimate_grad(params, sphere, key, **kw), [bad or "no error expected"]
    )
    if out is not None:
        grad, stats = out
        assert grad["x"].shape == (5,) and torch.isfinite(grad["x"]).all()
        assert stats.weights.shape == (kw["population_size"],)


@FAST
@given(
    st.lists(
        st.one_of(st.floats(allow_nan=True, allow_infinity=True, width=32), st.just(math.nan)),
        min_size=1, max_size=12,
    ),
    st.sampled_from(METHODS),
    st.booleans(),
)  # fmt: skip
def test_shaping_weights_are_finite_ordered_and_tie_aware(values, method, minimize):
    f = torch.tensor(values, dtype=torch.float32)
    if torch.isnan(f).all():
        with pytest.raises(ValueError, match="NaN for every member"):
            fastes.shape_fitness(f, method, minimize=minimize)
        return
    w, stats = fastes.shape_fitness(f, method, minimize=minimize)
    assert w.shape == f.shape and torch.isfinite(w).all()
    assert stats.nan_count == int(torch.isnan(f).sum())
    sense = -f if minimize else f
    for i in range(len(values)):
        for j in range(len(values)):
            a, b = sense[i], sense[j]
            if torch.isnan(a) and torch.isnan(b) or a == b:
                assert w[i] == w[j]  # equal fitness, equal weight (NaNs tie with each other)
            elif (torch.isnan(b) or a > b) and method in ("centered_ranks", "nes"):
                assert w[i] >= w[j]  # better (or non-NaN vs NaN) never weighs less


@FAST
@given(st.sampled_from(sorted(REGISTRY)), st.data())
def test_every_strategy_steps_or_names_the_argument(name, data):
    kw = dict(population_size=data.draw(st.sampled_from([4, 8, 20])))
    bad = data.draw(st.sampled_from([None, "sigma", "population_size", "mode", "minimize"]))
    if bad is not None:
        kw[bad] = data.draw(JUNK)
    params = {"x": torch.linspace(-1, 1, 3), "y": torch.ones(2, dtype=torch.float64)}
    # Valid draws may still clash (CEM's default elite_ratio keeps < 2 elites of 4 members):
    # then the error must name population_size.
    s = _call_or_named_error(lambda: make(name, params, **kw), [bad, "population_size"])
    if s is None:
        return
    state = s.init(params)
    key = data.draw(st.sampled_from([fastes.key(2), torch.tensor([-1, 0]), torch.ones(3)]))
    out = _call_or_named_error(lambda: s.step(state, sphere, key), ["key"])
    if out is not None:
        new, stats = out
        assert torch.isfinite(s.mean(new)).all()
        assert stats.fitness.shape == (s.population(state),)


@FAST
@given(
    st.one_of(st.integers(-(2**70), 2**70), st.floats(allow_nan=True), st.text(max_size=3)),
    st.one_of(st.integers(-(2**70), 2**70), st.none()),
)
def test_keys_from_any_seed_and_data_are_valid_or_rejected(seed, data):
    k = _call_or_named_error(lambda: fastes.key(seed), ["seed"])
    if k is None:
        return
    assert k.dtype == torch.int64 and all(0 <= w < 2**32 for w in k.tolist())
    folded = _call_or_named_error(lambda: fastes.fold_in(k, data), ["data"])
    if folded is not None:
        assert all(0 <= w < 2**32 for w in folded.tolist())
