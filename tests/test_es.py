import math
from collections import namedtuple

import pytest
import torch

import fastes
from fastes.es import resolve_noise
from fastes.noise import PhiloxNoise, TableNoise, noise_table
from fastes.shaping import shape_fitness

Pair = namedtuple("Pair", "w b")


def sphere(p):
    return -sum((leaf.float() ** 2).sum() for leaf in fastes.tree.tree_leaves(p))


def rosenbrock(p):
    x = p["x"]
    return -((1 - x[:-1]) ** 2 + 100 * (x[1:] - x[:-1] ** 2) ** 2).sum()


SMALL_TABLE = noise_table(size=2**16, seed=0)
SOURCES = {"philox": PhiloxNoise(), "table": TableNoise(SMALL_TABLE)}


@pytest.mark.parametrize("noise", list(SOURCES))
@pytest.mark.parametrize("antithetic", [True, False])
def test_estimate_matches_the_dense_formula(noise, antithetic):
    # ĝ = 1/(Pσ) Σ_i w_i s_i ε_row(i), computed densely in float64 from the same noise rows.
    P, D, sigma = 10, 33, 0.1
    source = SOURCES[noise]
    theta = torch.linspace(-1, 2, D)
    k = fastes.key(5)
    g, stats = fastes.estimate_grad(
        {"x": theta}, sphere, k, population_size=P, sigma=sigma, antithetic=antithetic,
        noise=source, chunk_size=4,
    )  # fmt: skip
    n_rows = P // 2 if antithetic else P
    eps = source.rows(k, torch.arange(n_rows), D).double()
    signs = torch.tensor([1.0, -1.0] * (P // 2)) if antithetic else torch.ones(P)
    row_of = torch.arange(P) // 2 if antithetic else torch.arange(P)
    members = theta.double() + sigma * signs[:, None].double() * eps[row_of]
    fitness = -(members**2).sum(1)
    torch.testing.assert_close(stats.fitness.double(), fitness, rtol=1e-6, atol=0)
    w, _ = shape_fitness(stats.fitness)
    want = (w.double() * signs.double()) @ eps[row_of] / (P * sigma)
    # float32 accumulation of ≤ P terms each ≤ 0.5·|ε|/(Pσ): error ≤ P·2^-24·Σ|w ε|/(Pσ).
    bound = P * 2**-24 * (w.abs().double() @ eps[row_of].abs()) / (P * sigma)
    assert torch.all((g["x"].double() - want).abs() <= bound)


def test_same_key_same_bits_and_chunking_does_not_change_the_result():
    params = {"x": torch.randn(300, generator=torch.Generator().manual_seed(0))}
    kw = dict(population_size=20, sigma=0.05, learning_rate=0.1)
    a = fastes.es_step(params, sphere, fastes.key(1), **kw)
    assert torch.equal(a["x"], fastes.es_step(params, sphere, fastes.key(1), **kw)["x"])
    assert not torch.equal(a["x"], fastes.es_step(params, sphere, fastes.key(2), **kw)["x"])
    for chunk in (2, 6, 20):  # chunking only changes which members are evaluated together
        b = fastes.es_step(params, sphere, fastes.key(1), chunk_size=chunk, **kw)
        assert torch.equal(a["x"], b["x"])


def test_chunks_across_the_sums_tiles_give_the_bits_of_one_chunk_and_of_regenerated_rows():
    # D = 2^14 (the largest D whose drawn rows are kept): the gradient sums 4 MiB tiles of 64
    # rows, so 80 rows make two tiles. Evaluation chunks that cut across them (1, 25 and 35
    # rows) must give the bits of one chunk (the sum follows the tiles, not the chunks: AVX-512
    # gemv rounds chunk-by-chunk sums differently), and kept rows the bits of regenerated ones.
    D = 2**14
    params = {"x": torch.randn(D, generator=torch.Generator().manual_seed(1))}
    kw = dict(population_size=160, sigma=0.05)
    g, _ = fastes.estimate_grad(params, sphere, fastes.key(5), **kw)
    for chunk in (2, 50, 70):
        c, _ = fastes.estimate_grad(params, sphere, fastes.key(5), chunk_size=chunk, **kw)
        assert torch.equal(g["x"], c["x"]), chunk
    r, _ = fastes.estimate_grad(params, sphere, fastes.key(5), memory_budget=0, **kw)
    assert torch.equal(g["x"], r["x"])


def test_regenerated_noise_matches_cached_noise():
    # memory_budget=0 forces the gradient pass to regenerate every row; the cached path does one
    # matmul instead. Both sum the same P/2 products in float32 in different orders, so they
    # agree to P/2 · 2^-24 · Σ|w ε| / (Pσ).
    params = {"x": torch.zeros(500)}
    kw = dict(population_size=40, sigma=0.1, noise="philox")
    g1, s = fastes.estimate_grad(params, sphere, fastes.key(3), **kw)
    g2, _ = fastes.estimate_grad(params, sphere, fastes.key(3), memory_budget=0, **kw)
    eps = PhiloxNoise().rows(fastes.key(3), torch.arange(20), 500)
    w = (s.weights[0::2] - s.weights[1::2]).abs()
    bound = 20 * 2**-24 * (w @ eps.abs()) / (40 * 0.1)
    assert torch.all((g1["x"] - g2["x"]).abs() <= bound)


def test_antithetic_pairs_cancel_the_even_part_of_the_fitness():
    # At θ = 0 the pair ±σε is exactly symmetric, so any even fitness gives both members the same
    # value and the same weight: the estimate is exactly zero.
    params = {"x": torch.zeros(64)}
    even = lambda p: torch.cos(p["x"]).sum() - (p["x"] ** 4).sum()
    for shaping in ("centered_ranks", "raw", "zscore", "nes"):
        g, _ = fastes.estimate_grad(
            params, even, fastes.key(0), population_size=32, sigma=0.3, shaping=shaping
        )
        assert torch.count_nonzero(g["x"]) == 0


def test_estimate_is_unbiased_for_a_linear_fitness():
    # f(x) = c·x with raw shaping: E[ĝ] = c exactly. Averaging n = 200 estimates of P = 100, the
    # per-coordinate standard deviation is about |c| / sqrt(P/2 · n) · sqrt(1 + 1) ≈ 0.014 here
    # (antithetic rows give (2/P) Σ_j ε_j ε_jᵀ c, whose entries have variance 2|c|²/P); 5 SDs.
    D, P, n = 8, 100, 200
    c = torch.linspace(-1, 1, D)
    lin = lambda p: (p["x"] * c).sum()
    g = torch.stack([
        fastes.estimate_grad({"x": torch.zeros(D)}, lin, fastes.fold_in(fastes.key(9), i),
                             population_size=P, sigma=0.1, shaping="raw")[0]["x"]
        for i in range(n)
    ])  # fmt: skip
    sd = math.sqrt(2 * float(c.norm() ** 2) / P / n)
    assert torch.all((g.mean(0) - c).abs() < 5 * sd)


def test_structure_dtype_and_device_are_preserved():
    params = {
        "enc": [torch.randn(3, 2).half(), Pair(torch.randn(4).bfloat16(), torch.randn(()))],
        "d": torch.randn(2).double(),
    }
    new, stats = fastes.es_step(
        params,
        sphere,
        fastes.key(0),
        population_size=6,
        sigma=0.1,
        learning_rate=0.01,
        return_stats=True,
    )
    flat_old, spec_old = torch.utils._pytree.tree_flatten(params)
    flat_new, spec_new = torch.utils._pytree.tree_flatten(new)
    assert spec_old == spec_new
    for a, b in zip(flat_old, flat_new):
        assert (a.shape, a.dtype, a.device) == (b.shape, b.dtype, b.device)
    assert isinstance(new["enc"][1], Pair)
    assert stats.fitness.shape == (6,) and stats.weights.shape == (6,)
    assert not torch.equal(flat_old[-1], flat_new[-1])  # params were updated, input untouched


def test_sphere_converges_in_a_fixed_budget():
    # D = 100 from x = 1 (f = -100): 150 SGD steps with P = 64 reach f > -1 (measured -0.25 at
    # this seed; the rank-shaped step has a noise floor that scales with lr, hence the decay).
    params = {"x": torch.ones(100)}
    for t in range(150):
        lr = 0.5 * 0.98**t
        params = fastes.es_step(
            params,
            sphere,
            fastes.fold_in(fastes.key(0), t),
            population_size=64,
            sigma=0.05,
            learning_rate=lr,
        )
    assert sphere(params) > -1.0


def test_rosenbrock_converges_in_a_fixed_budget():
    # D = 10 from 0 (f = -9): Adam on the ES gradient, 1500 generations of P = 64, reaches
    # f > -0.5 (measured about -0.1 at this seed).
    params = {"x": torch.zeros(10)}
    opt = fastes.optim.adam(0.01)
    state = opt.init(params)
    for t in range(1500):
        g, _ = fastes.estimate_grad(
            params, rosenbrock, fastes.fold_in(fastes.key(1), t), population_size=64, sigma=0.02
        )
        u, state = opt.update(g, state, params)
        params = fastes.optim.apply_updates(params, u)
    assert rosenbrock(params) > -0.5


def test_nan_fitness_is_ranked_last_and_counted_all_nan_raises():
    params = {"x": torch.zeros(4)}
    bad = lambda p: torch.where(p["x"][0] > 0, torch.tensor(float("nan")), -(p["x"] ** 2).sum())
    g, stats = fastes.estimate_grad(params, bad, fastes.key(0), population_size=16, sigma=0.1)
    assert 0 < stats.nan_count < 16 and torch.isfinite(g["x"]).all()
    assert (
        stats.weights[torch.isnan(stats.fitness)].max()
        < stats.weights[~torch.isnan(stats.fitness)].min()
    )
    with pytest.raises(ValueError, match="NaN for every member"):
        fastes.estimate_grad(
            params,
            lambda p: p["x"].sum() * float("nan"),
            fastes.key(0),
            population_size=4,
            sigma=0.1,
        )


def test_boundary_errors_name_argument_expectation_and_value():
    p = {"x": torch.zeros(3)}
    kw = dict(population_size=4, sigma=0.1, learning_rate=0.1)
    cases = [
        (dict(sigma=0.0), ValueError, r"sigma must be a finite number > 0; got 0.0"),
        (dict(sigma=-1), ValueError, r"sigma must be a finite number > 0; got -1"),
        (dict(sigma=float("nan")), ValueError, r"sigma must be a finite number > 0; got nan"),
        (dict(sigma="big"), TypeError, r"sigma must be a real number; got str"),
        (
            dict(population_size=5),
            ValueError,
            r"population_size must be even with antithetic=True.*got 5",
        ),
        (
            dict(population_size=1, antithetic=False),
            ValueError,
            r"population_size must be an int >= 2; got 1",
        ),
        (
            dict(learning_rate=-0.1),
            ValueError,
            r"learning_rate must be a finite number >= 0; got -0.1",
        ),
        (dict(weight_decay=float("inf")), ValueError, r"weight_decay must be a finite number >= 0"),
        (dict(shaping="softmax"), ValueError, r"shaping must be one of .*'softmax'"),
        (dict(mode="threads"), ValueError, r"mode must be one of .*'threads'"),
        (dict(chunk_size=0), ValueError, r"chunk_size must be an int >= 1; got 0"),
        (dict(noise="sobol"), ValueError, r"noise must be 'auto', 'table', 'philox'.*'sobol'"),
    ]
    for override, exc, msg in cases:
        with pytest.raises(exc, match=msg):
            fastes.es_step(p, sphere, fastes.key(0), **{**kw, **override})
    with pytest.raises(ValueError, match="params must be a non-empty pytree"):
        fastes.es_step({}, sphere, fastes.key(0), **kw)
    with pytest.raises(TypeError, match=r"params\['n'\] must be a floating-point tensor"):
        fastes.es_step({"n": torch.ones(3, dtype=torch.int32)}, sphere, fastes.key(0), **kw)
    with pytest.raises(ValueError, match="must be on one device"):
        fastes.es_step(
            {"a": torch.ones(2), "b": torch.ones(2, device="meta")}, sphere, fastes.key(0), **kw
        )
    with pytest.raises(TypeError, match="key must be a key made by fastes.key"):
        fastes.es_step(p, sphere, 0, **kw)
    with pytest.raises(TypeError, match="fitness_fn must be callable"):
        fastes.es_step(p, "sphere", fastes.key(0), **kw)
    with pytest.raises(ValueError, match=r"fitness_fn must return a scalar or \(K,\) per member"):
        fastes.es_step(p, lambda q: q["x"][:2, None] * torch.ones(2), fastes.key(0), **kw)
    with pytest.raises(ValueError, match="noise='table' needs D <= the table size"):
        resolve_noise("table", 2**25, torch.device("cpu"))


def test_auto_noise_picks_the_table_on_cpu_and_philox_for_large_d():
    assert isinstance(resolve_noise("auto", 1000, torch.device("cpu")), TableNoise)
    assert isinstance(resolve_noise("auto", 2**23, torch.device("cpu")), PhiloxNoise)
    assert isinstance(resolve_noise(SMALL_TABLE, 10, torch.device("cpu")), TableNoise)


def test_minimize_and_weight_decay():
    p = {"x": torch.full((20,), 2.0)}
    up = lambda q: (q["x"] ** 2).sum()  # minimizing this is maximizing sphere
    kw = dict(population_size=16, sigma=0.1, learning_rate=0.05)
    a = fastes.es_step(p, up, fastes.key(4), minimize=True, **kw)
    b = fastes.es_step(p, sphere, fastes.key(4), **kw)
    assert torch.equal(a["x"], b["x"])
    # Decoupled weight decay: the step adds -lr·wd·θ on top of the ES step.
    c = fastes.es_step(p, sphere, fastes.key(4), weight_decay=0.5, **kw)
    # Values are ~2 and each side rounds twice more than the other: within 2 ulps(2) = 2^-21.
    torch.testing.assert_close(c["x"], b["x"] - 0.05 * 0.5 * p["x"], rtol=0, atol=2**-21)


@pytest.mark.parametrize("noise", ["auto", "philox", "table"])
def test_es_step_compiles_fullgraph_without_recompiling_on_a_new_key(noise, compile_counter):
    # es_step has no host reads on its traced path (sync-free shaping, tensor keys, gather-based
    # table rows), so Dynamo captures one graph; a new key is data, not a recompile. The counting
    # backend runs the graph eagerly (Inductor's C++ build takes minutes on this CPU). "auto"
    # picks the same source compiled and eager (the table at this D, DESIGN §3); the table path
    # needs the table made before tracing.
    backend, graphs = compile_counter
    src = fastes.noise_table(size=2**12) if noise == "table" else noise
    table = fastes.noise_table() if noise == "auto" else src  # auto: the default, made eagerly
    max_eps = float(table.values.abs().max()) if noise != "philox" else 0.0
    params = {"w": torch.randn(6, 5, generator=torch.Generator().manual_seed(0)),
              "b": torch.zeros(5, dtype=torch.float64)}  # fmt: skip
    fit = lambda p: -(p["w"] ** 2).sum() - (p["b"] ** 2).sum().float()
    kw = dict(population_size=8, sigma=0.1, learning_rate=0.05, noise=src)
    step = torch.compile(
        lambda p, k: fastes.es_step(p, fit, k, **kw), backend=backend, fullgraph=True
    )
    eager_noise = src
    p_c, p_e = params, params
    for t in range(3):
        p_c = step(p_c, fastes.key(t))
        p_e = fastes.es_step(p_e, fit, fastes.key(t), **{**kw, "noise": eager_noise})
        # Philox: the traced path does the same float operations as the eager one (stacked
        # Box-Muller lanes instead of out= writes): equal bit for bit. Table: the traced
        # reduction is one matmul over R = 4 rows instead of 4 sequential axpys, so float32
        # rounding differs by at most R·2^-24·Σ|w_r|·max|ε| per element (Σ|w_r| ≤ 4 for paired
        # centered ranks, max|ε| read off the table), times lr/(Pσ), accumulated over t+1
        # steps.
        bound = (t + 1) * 0.05 / (8 * 0.1) * 4 * 2**-24 * 4 * max_eps
        for k in params:
            if noise != "philox":
                assert (p_c[k] - p_e[k]).abs().max() <= bound, (t, k)
            else:
                assert torch.equal(p_c[k], p_e[k]), (t, k)
            assert p_c[k].dtype == params[k].dtype
    assert len(graphs) == 1
    if noise != "philox":  # the table not made beforehand: a clear error, not a traced table
        fastes.noise.clear_caches()
        with pytest.raises(Exception, match=rf"noise='{noise}' reads the noise table \(D=35\)"):
            torch.compile(lambda p, k: fastes.es_step(p, fit, k, **{**kw, "noise": noise}),
                          backend=backend, fullgraph=True)(params, fastes.key(0))  # fmt: skip


@pytest.mark.parametrize("weight_decay", [0.0, 0.3])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("noise", ["table", "philox"])
def test_openai_es_strategy_with_sgd_is_es_step(weight_decay, dtype, noise):
    # One implementation: es_step is the openai_es strategy with an SGD optimizer (same
    # estimator, chunking, dtype and decoupled weight decay), bit for bit, step after step.
    p = {"w": torch.linspace(-1, 1, 30, dtype=dtype).reshape(5, 6), "b": torch.ones(3, dtype=dtype)}
    f = lambda q: -((q["w"] - 0.3) ** 2).sum() - (q["b"] ** 2).sum()
    kw = dict(population_size=16, sigma=0.1, chunk_size=6, noise=noise)
    s = fastes.strategies.make(
        "openai_es", p, optimizer=fastes.optim.sgd(0.05), learning_rate=0.05,
        weight_decay=weight_decay, **kw,
    )  # fmt: skip
    state, q = s.init(p), p
    for t in range(3):
        k = fastes.fold_in(fastes.key(7), t)
        q, stats_e = fastes.es_step(q, f, k, learning_rate=0.05, weight_decay=weight_decay,
                                    return_stats=True, **kw)  # fmt: skip
        state, stats_s = s.step(state, f, k)
        for name in p:
            assert torch.equal(s.params(state)[name], q[name]), (t, name)
            assert q[name].dtype == dtype
        assert torch.equal(stats_e.weights, stats_s.weights)


@pytest.mark.parametrize(
    "override,exc,match",
    [
        (dict(sigma=1e39), ValueError, r"sigma must be <= 3.40282e\+38 \(float32's largest"),
        (dict(learning_rate=1e39), ValueError, r"learning_rate must be <= 3.40282e\+38"),
        (dict(weight_decay=1e39), ValueError, r"weight_decay must be <= 3.40282e\+38"),
        (
            dict(fitness_args=torch.ones(2)),
            TypeError,
            r"fitness_args must be a tuple .* fitness_args=\(x,\)\); got Tensor",
        ),
        (dict(fitness_args=None), TypeError, r"fitness_args must be a tuple.*got NoneType"),
    ],
)
def test_bad_values_are_caught_at_the_boundary(override, exc, match):
    # Defect: these passed validation and failed deep inside torch with unrelated messages.
    kw = {**dict(population_size=8, sigma=0.1, learning_rate=0.1), **override}
    with pytest.raises(exc, match=match):
        fastes.es_step({"x": torch.ones(3)}, sphere, fastes.key(0), **kw)


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf")])
def test_non_finite_params_are_blamed_on_the_params(bad):
    # Defect: NaN params were reported as "fitness is NaN for every member ...; check the
    # fitness function", and inf params passed silently.
    p = {"a": torch.ones(2), "x": torch.tensor([1.0, bad, 2.0])}
    with pytest.raises(ValueError, match=r"params must be finite; 1 of 5 .* flat index 3"):
        fastes.es_step(p, lambda q: q["x"].sum(), fastes.key(0), population_size=4, sigma=0.1,
                       learning_rate=0.1)  # fmt: skip
    s = fastes.strategies.make("snes", p)
    with pytest.raises(ValueError, match="params must be finite"):
        s.init(p)


def test_auto_noise_depends_on_d_only_not_on_the_device():
    # DESIGN §3 / issue 12: the same key gives the same members on every device and rank. The
    # "meta" device stands in for any non-CPU device here (its table is the CPU one's copy).
    from fastes.es import resolve_noise
    from fastes.noise import DEFAULT_TABLE_SIZE, PhiloxNoise, TableNoise

    for D, kind in ((10, TableNoise), (DEFAULT_TABLE_SIZE // 4, TableNoise),
                    (DEFAULT_TABLE_SIZE // 4 + 1, PhiloxNoise)):  # fmt: skip
        for device in ("cpu", "meta"):
            assert type(resolve_noise("auto", D, torch.device(device))) is kind, (D, device)
