"""fastes.pbt: search-space operators, exploit rules, the vectorized population, TaylorGLO."""

import dataclasses
import math
import os

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn
from torch.func import functional_call

import fastes
from fastes import optim, pbt
from fastes.run_files import CheckpointError

SPACE = {
    "lr": pbt.Float(1e-4, 1.0, log=True),
    "coef": pbt.Float(-1.0, 1.0),
    "width": pbt.Int(1, 64, log=True),
    "layers": pbt.Int(1, 4),
    "act": pbt.Choice(("relu", "tanh", "gelu")),
    "flag": pbt.Bool(),
    "batch": 32,  # fixed
}


def binomial_band(n, p, z=5.0):
    """[lo, hi] holding a Binomial(n, p) count with probability > 1 − 6e-7 (z = 5 sigma)."""
    sd = math.sqrt(n * p * (1 - p))
    return n * p - z * sd, n * p + z * sd


# ---- search space ---------------------------------------------------------------------------
def test_sample_stays_in_bounds_and_log_scale_is_log_uniform():
    space = pbt.as_space(SPACE)
    v = space.sample(fastes.key(0), 4000)
    space.check(v, 4000)  # raises if any value leaves its bounds or has the wrong dtype
    # log-uniform on [1e-4, 1]: the fraction below 1e-2 (half the log range) is 1/2.
    lo, hi = binomial_band(4000, 0.5)
    assert lo <= int((v["lr"] < 1e-2).sum()) <= hi
    assert set(v["layers"].tolist()) == {1, 2, 3, 4}
    assert set(v["act"].tolist()) == {0, 1, 2}
    assert v["flag"].dtype == torch.bool and 0 < int(v["flag"].sum()) < 4000
    assert space.member(v, 0)["batch"] == 32
    assert space.member(v, 0)["act"] in ("relu", "tanh", "gelu")


@settings(max_examples=30, deadline=None)
@given(seed=st.integers(0, 2**32 - 1), resample=st.floats(0, 1), up=st.floats(1.01, 5.0),
       down=st.floats(0.05, 0.99))  # fmt: skip
def test_perturb_never_leaves_the_space(seed, resample, up, down):
    space = pbt.as_space(SPACE)
    v = space.sample(fastes.key(seed), 64)
    for i in range(5):  # repeated explore steps drive values to the bounds
        v = space.perturb(v, fastes.key(seed + i), factors=(up, down),
                          resample_probability=resample)  # fmt: skip
        space.check(v, 64)


def test_perturb_rules_per_type():
    space = pbt.as_space(SPACE)
    v = space.encode([{"lr": 0.01, "coef": 0.0, "width": 8, "layers": 2, "act": "tanh",
                       "flag": False}] * 400)  # fmt: skip
    new = space.perturb(v, fastes.key(3), resample_probability=0.0)
    up = new["lr"] > 0.01
    # Log scale: exactly ×1.2 or ×0.8 (not clamped here), chosen with probability 1/2 each.
    f64 = lambda v: torch.tensor(v, dtype=torch.float64)  # noqa: E731
    expect = torch.where(up, f64(0.01 * 1.2), f64(0.01 * 0.8))
    torch.testing.assert_close(new["lr"], expect, rtol=1e-15, atol=0)
    lo, hi = binomial_band(400, 0.5)
    assert lo <= int(up.sum()) <= hi
    # A linear range around 0 moves additively by ±0.2·(high − low)/2 = ±0.2: it can cross 0.
    assert torch.allclose(new["coef"].abs(), torch.tensor(0.2).double())
    assert bool((new["coef"] > 0).any()) and bool((new["coef"] < 0).any())
    # Ints always move (8 → 10 or 6: round(8·1.2) = 10, round(8·0.8) = 6), 2 → 3 or 1.
    assert set(new["width"].tolist()) == {6, 10}
    assert set(new["layers"].tolist()) == {1, 3}
    # A choice moves to a neighbour.
    assert set(new["act"].tolist()) == {0, 2}


def test_perturb_honours_resample_reset_and_mask():
    space = pbt.as_space({"x": pbt.Float(1.0, 2.0, default=1.5)})
    v = {"x": torch.full((2000,), 1.25, dtype=torch.float64)}
    new = space.perturb(v, fastes.key(0), resample_probability=0.25)["x"]
    moved_by_factor = torch.isclose(new, torch.tensor(1.5, dtype=torch.float64)) | torch.isclose(
        new, torch.tensor(1.0, dtype=torch.float64)
    )  # ×1.2 → 1.5, ×0.8 → 1.0 (clamped)
    lo, hi = binomial_band(2000, 0.75)
    assert lo <= int(moved_by_factor.sum()) <= hi  # the rest (≈ 25%) were resampled
    reset = space.perturb(v, fastes.key(1), resample_probability=0.0, reset_probability=1.0)
    assert torch.equal(reset["x"], torch.full((2000,), 1.5, dtype=torch.float64))
    mask = torch.arange(2000) % 2 == 0
    part = space.perturb(v, fastes.key(2), mask)["x"]
    assert torch.equal(part[~mask], v["x"][~mask]) and bool((part[mask] != 1.25).all())


def test_both_bounds_do_not_pin_values_to_the_max():
    # EPBT applied min/max the wrong way round: with both bounds every value became the max.
    space = pbt.as_space({"lr": pbt.Float(1e-6, 1.0, log=True)})
    lr = torch.full((100,), 1e-3, dtype=torch.float64)
    v = space.perturb({"lr": lr}, fastes.key(0), resample_probability=0.0)
    assert set(v["lr"].tolist()) == {1e-3 * 1.2, 1e-3 * 0.8}


@pytest.mark.parametrize("p", [0.0, 0.1, 0.5, 1.0])
def test_crossover_honours_its_probability(p):
    # EPBT's CrossoverOperator ignored swap_p and always used 0.5.
    space = pbt.as_space({f"x{j}": pbt.Float(0.0, 1.0) for j in range(4)})
    v = space.sample(fastes.key(0), 1000)
    pairs = torch.arange(1000).reshape(500, 2)
    new = space.crossover(v, fastes.key(1), pairs, swap_probability=p)
    swapped = 0
    for name in v:
        a, b = v[name][pairs[:, 0]], v[name][pairs[:, 1]]
        na, nb = new[name][pairs[:, 0]], new[name][pairs[:, 1]]
        kept, swap = (na == a) & (nb == b), (na == b) & (nb == a)
        assert bool((kept | swap).all())  # values are exchanged, never invented
        swapped += int(swap.sum())
    lo, hi = binomial_band(2000, p)
    assert lo <= swapped <= hi


def test_dataclass_space_and_bad_declarations():
    @dataclasses.dataclass
    class HP:
        lr: float = pbt.hparam(1e-3, 1e-5, 1e-1, log=True)
        layers: int = pbt.hparam(2, 1, 8)
        opt: str = pbt.hparam("adam", choices=("sgd", "adam"))
        nesterov: bool = pbt.hparam(False)
        epochs: int = 3  # fixed

    space = pbt.as_space(HP)
    assert space.names() == ["lr", "layers", "opt", "nesterov"]
    m = space.member(space.defaults(2), 1)
    assert m == HP()
    assert space.member(space.encode([HP(lr=0.01, opt="sgd")]), 0) == HP(lr=0.01, opt="sgd")
    with pytest.raises(ValueError, match="'lr': a log scale needs low > 0"):
        pbt.as_space({"lr": pbt.Float(0.0, 1.0, log=True)})
    with pytest.raises(ValueError, match="'x': low must be < high"):
        pbt.as_space({"x": pbt.Float(1.0, 1.0)})
    with pytest.raises(ValueError, match="'x': default 5.0 is outside"):
        pbt.as_space({"x": pbt.Float(0.0, 1.0, default=5.0)})
    with pytest.raises(TypeError, match="space must be"):
        pbt.as_space([1, 2])


# ---- exploit --------------------------------------------------------------------------------
def test_truncation_bottom_quantile_copies_the_top():
    f = torch.tensor([0.5, float("nan"), 0.9, 0.1, 0.7, 0.3, 0.8, 0.2])
    e = pbt.truncation(f, fastes.key(0), quantile=0.25)  # 2 of 8
    assert e.replaced.nonzero().flatten().tolist() == [1, 3]  # NaN ranks last, then 0.1
    assert set(e.source[[1, 3]].tolist()) <= {2, 6}  # the two best
    keep = ~e.replaced
    assert torch.equal(e.source[keep], torch.arange(8)[keep])
    e_min = pbt.truncation(f, fastes.key(0), quantile=0.25, minimize=True)
    assert e_min.replaced.nonzero().flatten().tolist() == [1, 2]  # NaN, then 0.9


def test_tournament_keeps_elites_and_winners_beat_a_rival():
    f = torch.arange(10, dtype=torch.float64)  # member i has fitness i
    e = pbt.tournament(f, fastes.key(0), elite_fraction=0.5, size=2)
    assert e.replaced.nonzero().flatten().tolist() == [0, 1, 2, 3, 4]
    # A winner of a 2-member tournament is never the worst member.
    assert bool((e.source[e.replaced] > 0).all())
    e2 = pbt.tournament(f, fastes.key(0), elite_fraction=0.5, size=2)
    assert torch.equal(e.source, e2.source)  # a pure function of the key


# ---- per-member optimizer hyperparameters ---------------------------------------------------
def test_stacked_optimizer_equals_each_member_alone():
    n = 3
    lr = torch.tensor([0.1, 0.01, 0.5], dtype=torch.float64)
    b1 = torch.tensor([0.9, 0.5, 0.0], dtype=torch.float64)
    wd = torch.tensor([0.0, 0.1, 0.01], dtype=torch.float64)
    params = {"w": torch.randn(n, 4, 5, dtype=torch.float64), "b": torch.randn(n, 5).double()}
    grads = [{k: torch.randn_like(v) for k, v in params.items()} for _ in range(4)]

    def run(opt, p, gs):
        s = opt.init(p)
        for g in gs:
            u, s = opt.update(g, s, p)
            p = optim.apply_updates(p, u)
        return p

    stacked = run(optim.chain(optim.adam(lr, b1=b1), optim.add_decayed_weights(wd, lr)), params,
                  grads)  # fmt: skip
    for i in range(n):
        alone = run(
            optim.chain(optim.adam(float(lr[i]), b1=float(b1[i])),
                        optim.add_decayed_weights(float(wd[i]), float(lr[i]))),
            {k: v[i] for k, v in params.items()}, [{k: v[i] for k, v in g.items()} for g in grads],
        )  # fmt: skip
        for k in params:
            # Same float64 operations except b ** t (torch's pow for a tensor b, libm's for a
            # float: ≤ 1 ulp apart), carried through 4 steps: a few ulps of 1 at most.
            torch.testing.assert_close(stacked[k][i], alone[k], rtol=1e-14, atol=1e-14)
    with pytest.raises(TypeError, match="shape \\(N,\\)"):
        optim.sgd(torch.ones(2, 2))
    with pytest.raises(ValueError, match="b1 must hold finite values >= 0 and < 1"):
        optim.adam(0.1, b1=torch.tensor([0.5, 1.5]))


# ---- the vectorized population --------------------------------------------------------------
def _data(n=256, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 6, generator=g)
    y = (x[:, :3].sum(1) > 0).long() + (x[:, 3] > 1).long()
    return x, y


def _pop(**kw):
    space = {"lr": pbt.Float(1e-3, 1.0, log=True), "beta": pbt.Float(0.0, 0.95)}
    args = dict(population_size=6, key=fastes.key(7), interval=4)
    args.update(kw)
    model = nn.Sequential(nn.Linear(6, 8), nn.Tanh(), nn.Linear(8, 3))
    opt = lambda hp: optim.momentum(hp["lr"], beta=hp["beta"])  # noqa: E731
    return pbt.VectorizedPBT(model, space, opt, **args)


def test_forward_and_losses_match_each_member_alone():
    pop = _pop()
    x, y = _data(32)
    model = nn.Sequential(nn.Linear(6, 8), nn.Tanh(), nn.Linear(8, 3))
    before = {k: v.clone() for k, v in pop.params.items()}
    out = pop.forward(x)
    losses = pop.train_step(x, y)
    assert out.shape == (6, 32, 3) and losses.shape == (6,)
    for i in range(pop.n):
        ref = functional_call(model, {k: v[i] for k, v in before.items()}, (x,))
        # The batched GEMMs may sum in another order than one member's: float32 rounding of
        # reductions of length 6 and 8, far inside assert_close's float32 default (rtol 1.3e-6).
        torch.testing.assert_close(out[i], ref)
        torch.testing.assert_close(losses[i], nn.functional.cross_entropy(ref, y))


def test_members_start_from_different_inits_and_runs_are_deterministic():
    a, b = _pop(), _pop()
    w = a.params["0.weight"]
    assert not torch.equal(w[0], w[1])
    x, y = _data()
    ra = a.run((x, y), steps=12, batch_size=32, fitness=lambda p: p.accuracy(x, y))
    rb = b.run((x, y), steps=12, batch_size=32, fitness=lambda p: p.accuracy(x, y))
    assert all(torch.equal(a.params[k], b.params[k]) for k in a.params)
    assert ra.history == rb.history and len(ra.history) == 3


def test_exploit_copies_weights_optimizer_state_and_hyperparameters():
    pop = _pop()
    x, y = _data(32)
    pop.train_step(x, y)  # momentum buffers are non-zero now
    params, velocity = dict(pop.params), pop.opt_state.velocity
    hp = dict(pop.hyperparameters)
    # Best to worst: 0, 4, 2, 5, 1, 3; truncation at 0.25 of 6 replaces ceil(1.5) = 2 members.
    done = pop.exploit_explore(torch.tensor([5.0, 1.0, 3.0, 0.0, 4.0, 2.0]))
    assert done["replaced"] == [1, 3] and set(done["source"]) <= {0, 4}
    for n, src in zip(done["replaced"], done["source"], strict=True):
        for k in pop.params:
            assert torch.equal(pop.params[k][n], params[k][src])
            assert torch.equal(pop.opt_state.velocity[k][n], velocity[k][src])
        assert pop.hyperparameters["lr"][n] != hp["lr"][src]  # explored after the copy
    for n in (0, 2, 4, 5):  # kept members are untouched
        assert all(torch.equal(pop.params[k][n], params[k][n]) for k in params)
        assert pop.hyperparameters["lr"][n] == hp["lr"][n]


def test_resume_is_bit_identical(tmp_path):
    x, y = _data()
    fit = lambda p: p.accuracy(x, y)  # noqa: E731
    whole = _pop()
    whole.run((x, y), steps=20, batch_size=32, fitness=fit)
    first = _pop()
    first.run((x, y), steps=8, batch_size=32, fitness=fit, run_dir=tmp_path)
    second = _pop()  # a new process would build it the same way
    result = second.run((x, y), steps=20, batch_size=32, fitness=fit, run_dir=tmp_path)
    assert second.step == 20 and len(result.history) == 5
    assert all(torch.equal(whole.params[k], second.params[k]) for k in whole.params)
    assert all(torch.equal(a, b) for a, b in zip(whole.opt_state.velocity.values(),
                                                 second.opt_state.velocity.values()))  # fmt: skip
    assert whole.history == second.history
    assert whole.best["score"] == result.best_score
    assert os.path.exists(tmp_path / "history.csv") and os.path.exists(tmp_path / "config.json")
    with pytest.raises(CheckpointError, match="other settings: \\['interval'\\]"):
        _pop(interval=5).run((x, y), steps=20, fitness=fit, run_dir=tmp_path)
    (tmp_path / "checkpoint.pt").write_bytes(b"garbage")
    with pytest.raises(CheckpointError, match="checkpoint.pt cannot be read"):
        _pop().run((x, y), steps=20, fitness=fit, run_dir=tmp_path)


def test_a_diverging_member_ranks_last_and_is_replaced():
    x, y = _data()

    def fitness(p):
        acc = p.accuracy(x, y)
        acc[2] = float("nan")  # member 2's training "failed"
        return acc

    pop = _pop(population_size=4)
    result = pop.run((x, y), steps=8, batch_size=32, fitness=fitness)
    assert [r["failed"] for r in result.history] == [1, 1]
    assert all(2 in r["replaced"] for r in result.history)
    assert not math.isnan(result.best_score)


def test_bad_arguments_are_named():
    with pytest.raises(ValueError, match="exploit must be one of"):
        _pop(exploit="best")
    with pytest.raises(ValueError, match="quantile must be <= 0.5"):
        _pop(quantile=0.9)
    with pytest.raises(ValueError, match="population_size must be an int >= 1"):
        _pop(population_size=0)
    x, y = _data()
    with pytest.raises(ValueError, match="fitness must return 6 scores; got 1"):
        _pop().run((x, y), steps=4, fitness=lambda p: 1.0)


# ---- TaylorGLO ------------------------------------------------------------------------------
def test_taylorglo_matches_its_formula_and_cross_entropy_gradient():
    from fastes.pbt import taylorglo

    g = torch.Generator().manual_seed(0)
    logits = torch.randn(5, 4, dtype=torch.float64, generator=g)
    targets = torch.tensor([0, 3, 1, 1, 2])
    theta = torch.randn(8, dtype=torch.float64, generator=g).tolist()
    loss = pbt.taylorglo_loss(logits, targets, theta)
    y = logits.softmax(-1)
    total = 0.0
    for b in range(5):
        for c in range(4):
            dx, dy = float(targets[b] == c) - theta[0], float(y[b, c]) - theta[1]
            t = theta
            total += (t[2] * dy + t[3] * dy**2 / 2 + t[4] * dy**3 / 6 + t[5] * dx * dy
                      + t[6] * dx * dy**2 / 2 + t[7] * dx**2 * dy / 2)  # fmt: skip
    torch.testing.assert_close(loss, torch.tensor(-total / 4 / 5, dtype=torch.float64))
    # With the expansion of x·log y at (a, b), dL/dy at y = b is cross-entropy's −x/(n·b).
    a, b = 0.0, 0.25
    coef = taylorglo.cross_entropy_coefficients(a, b)
    # Equal logits over 4 classes put every y at 0.25 = b; dL/dy equal means dL/dlogits equal
    # (the same softmax Jacobian follows), and cross-entropy per class is F.cross_entropy / n.
    z = torch.zeros(1, 4, dtype=torch.float64, requires_grad=True)
    (g_taylor,) = torch.autograd.grad(pbt.taylorglo_loss(z, torch.tensor([2]), coef), z)
    (g_ce,) = torch.autograd.grad(nn.functional.cross_entropy(z, torch.tensor([2])) / 4, z)
    # Both are a few float64 operations on exact inputs (b = 1/4): a few ulps.
    torch.testing.assert_close(g_taylor, g_ce, rtol=1e-14, atol=1e-16)
    space = pbt.as_space(pbt.taylorglo_space())
    assert tuple(space.member(space.defaults(1), 0).values()) == pytest.approx(
        taylorglo.cross_entropy_coefficients()
    )


@pytest.mark.gpu
def test_vectorized_pbt_on_cuda_matches_the_cpu_run():
    # Same keys, same hyperparameters, same minibatches: only GEMM rounding differs between
    # devices, so a short run stays within float32 tolerance of the CPU run.
    x, y = _data()
    runs = []
    for device in ("cpu", "cuda"):
        pop = _pop()
        pop.params = {k: v.to(device) for k, v in pop.params.items()}
        pop.opt_state = pop.optimizer(pop.model_hyperparameters()).init(pop.params)
        xd, yd = x.to(device), y.to(device)
        fit = lambda p, xd=xd, yd=yd: p.accuracy(xd, yd)  # noqa: E731
        pop.run((xd, yd), steps=8, batch_size=32, fitness=fit)
        runs.append({k: v.cpu() for k, v in pop.params.items()})
    for k in runs[0]:
        torch.testing.assert_close(runs[1][k], runs[0][k], rtol=1e-4, atol=1e-5)
