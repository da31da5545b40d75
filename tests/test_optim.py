import io
import math
from fractions import Fraction

import numpy as np
import pytest
import torch

import fastes
from fastes import optim


def _grads(n=5, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [
        {"w": torch.randn(3, 2, generator=g), "b": torch.randn(2, generator=g)} for _ in range(n)
    ]


def _run(opt, params, grads):
    state = opt.init(params)
    for g in grads:
        u, state = opt.update(g, state, params)
        params = optim.apply_updates(params, u)
    return params, state


def _torch_run(make, params, grads):
    # torch.optim minimizes; feeding it .grad = -ĝ makes it ascend ĝ, which fastes.optim does.
    ps = {k: torch.nn.Parameter(v.clone()) for k, v in params.items()}
    opt = make(ps.values())
    for g in grads:
        for k, p in ps.items():
            p.grad = -g[k]
        opt.step()
    return {k: p.detach() for k, p in ps.items()}


@pytest.mark.parametrize(
    "ours,theirs",
    [
        (lambda: optim.sgd(0.1), lambda ps: torch.optim.SGD(ps, lr=0.1)),
        (lambda: optim.momentum(0.1, 0.9), lambda ps: torch.optim.SGD(ps, lr=0.1, momentum=0.9)),
        (
            lambda: optim.momentum(0.1, 0.9, nesterov=True),
            lambda ps: torch.optim.SGD(ps, lr=0.1, momentum=0.9, nesterov=True),
        ),
        (lambda: optim.adam(0.01), lambda ps: torch.optim.Adam(ps, lr=0.01)),
    ],
)
def test_matches_torch_optim_ascending(ours, theirs):
    params = {"w": torch.zeros(3, 2), "b": torch.ones(2)}
    grads = _grads()
    a, _ = _run(ours(), params, grads)
    b = _torch_run(theirs, params, grads)
    # Same formulas, different operation order: agreement to a few float32 ulps of values ~1.
    for k in params:
        torch.testing.assert_close(a[k], b[k], rtol=1e-6, atol=1e-6)


def test_clipup_normalises_the_gradient_and_caps_speed():
    params = {"w": torch.zeros(3, 2), "b": torch.zeros(2)}
    opt = optim.clipup(learning_rate=0.1, max_speed=0.15, beta=0.9)
    state = opt.init(params)
    g = {"w": 100 * torch.ones(3, 2), "b": torch.zeros(2)}
    u, state = opt.update(g, state, params)
    # First step: v = lr·ĝ/‖ĝ‖, norm exactly lr whatever ‖ĝ‖ is.
    assert abs(float(optim._global_norm(u)) - 0.1) < 1e-6
    for _ in range(20):
        u, state = opt.update(g, state, params)
        assert float(optim._global_norm(u)) <= 0.15 * (1 + 1e-6)
    assert abs(float(optim._global_norm(u)) - 0.15) < 1e-6  # the cap binds at steady state
    assert torch.all(u["w"] > 0)  # ascent: moves along +ĝ


def test_clipup_scale_on_the_host_rounds_as_torch():
    # ClipUp's lr / ‖ĝ‖ is worked out on the host; for the float32 norm it must round as torch's
    # lr / tensor (its reciprocal, then times lr, each in float32), so the steps keep their bits.
    g = torch.Generator().manual_seed(0)
    norms = torch.cat([torch.rand(3000, generator=g) * 10.0 ** torch.randint(-30, 30, (3000,),
                       generator=g), torch.tensor([1e-45, 3e-39, 3e38, float("inf")])])  # fmt: skip
    for norm in norms.float():
        lr = float(torch.rand((), generator=g)) * 10.0 ** int(torch.randint(-6, 3, ()))
        host = optim._round32(optim._round32(1.0 / float(norm)) * optim._round32(lr))
        assert host == float(lr / norm), (float(norm), lr)


def test_weight_decay_chain_and_checkpointable_state():
    params = {"w": torch.ones(2)}
    opt = optim.chain(optim.add_decayed_weights(0.5), optim.sgd(0.1))
    u, state = opt.update({"w": torch.zeros(2)}, opt.init(params), params)
    assert torch.allclose(u["w"], torch.full((2,), -0.05))
    _, adam_state = _run(optim.adam(0.1), params, [{"w": torch.ones(2)}] * 3)
    assert isinstance(adam_state, optim.AdamState) and int(adam_state.count) == 3
    buf = io.BytesIO()
    torch.save(adam_state, buf)
    buf.seek(0)
    loaded = torch.load(buf, weights_only=False)
    assert torch.equal(loaded.mu["w"], adam_state.mu["w"])


def test_half_precision_params_keep_float32_state():
    params = {"w": torch.ones(4).half()}
    new, state = _run(optim.adam(1e-3), params, [{"w": torch.full((4,), 1e-3).half()}] * 3)
    assert new["w"].dtype == torch.float16 and state.mu["w"].dtype == torch.float32


def test_bad_hyperparameters():
    with pytest.raises(ValueError, match=r"learning_rate must be a finite number >= 0; got -1.0"):
        optim.sgd(-1)
    with pytest.raises(ValueError, match=r"beta must be <= 1; got 1.5"):
        optim.momentum(0.1, beta=1.5)
    with pytest.raises(TypeError, match="learning_rate must be a real number"):
        optim.adam("fast")
    with pytest.raises(ValueError, match="add_decayed_weights needs params"):
        optim.add_decayed_weights(0.1).update({"w": torch.ones(1)}, optim.EmptyState(), None)


def test_estimate_grad_plus_optimizer_improves_fitness():
    params = {"x": torch.full((30,), 2.0)}
    f = lambda p: -(p["x"] ** 2).sum()
    opt = optim.adam(0.1)
    state = opt.init(params)
    for t in range(60):
        g, _ = fastes.estimate_grad(
            params, f, fastes.fold_in(fastes.key(0), t), population_size=32, sigma=0.1
        )
        u, state = opt.update(g, state, params)
        params = optim.apply_updates(params, u)
    assert f(params) > 0.05 * -120  # from f = -120 to within 5% of the start


@pytest.mark.parametrize(
    "ours,theirs",
    [
        # Decoupled: the decay chained after Adam is torch's AdamW.
        (lambda: optim.adamw(0.01, weight_decay=0.3),
         lambda ps: torch.optim.AdamW(ps, lr=0.01, weight_decay=0.3)),
        (lambda: optim.chain(optim.adam(0.01), optim.add_decayed_weights(0.3, 0.01)),
         lambda ps: torch.optim.AdamW(ps, lr=0.01, weight_decay=0.3)),
        # Coupled: the decay chained before Adam is L2 in the gradient, torch's Adam(weight_decay).
        (lambda: optim.chain(optim.add_decayed_weights(0.3), optim.adam(0.01)),
         lambda ps: torch.optim.Adam(ps, lr=0.01, weight_decay=0.3)),
    ],
)  # fmt: skip
def test_weight_decay_is_decoupled_after_adam_and_coupled_before(ours, theirs):
    # Defect: add_decayed_weights was documented as decoupled but chained before the optimizer,
    # which before Adam is coupled L2. Params far from 0 make the two rules differ visibly.
    params = {"w": torch.full((3, 2), 4.0), "b": torch.full((2,), -3.0)}
    grads = _grads()
    a, _ = _run(ours(), params, grads)
    b = _torch_run(theirs, params, grads)
    # Values ~4, five steps, a few roundings each: within 8 float32 ulps of 4 (2^-20 each).
    for k in params:
        torch.testing.assert_close(a[k], b[k], rtol=0, atol=8 * 2**-20)
    coupled, _ = _run(optim.chain(optim.add_decayed_weights(0.3), optim.adam(0.01)), params, grads)
    decoupled, _ = _run(optim.adamw(0.01, weight_decay=0.3), params, grads)
    assert (coupled["w"] - decoupled["w"]).abs().min() > 1e-3  # really two different rules


TORCH_OPTIMIZERS = [
    (torch.optim.SGD, dict(lr=0.1, momentum=0.9, nesterov=True)),
    (torch.optim.Adam, dict(lr=0.01, weight_decay=0.1)),  # coupled L2
    (torch.optim.AdamW, dict(lr=0.01, weight_decay=0.1)),  # decoupled
    (torch.optim.RAdam, dict(lr=0.01)),
    (torch.optim.NAdam, dict(lr=0.01)),
    (torch.optim.Adagrad, dict(lr=0.1)),
    (torch.optim.RMSprop, dict(lr=0.01, momentum=0.5)),
]


@pytest.mark.parametrize("cls,kw", TORCH_OPTIMIZERS, ids=lambda x: getattr(x, "__name__", ""))
def test_torch_optimizer_adapter_matches_torch_optim_step_for_step(cls, kw):
    params = {"w": torch.full((3, 2), 2.0), "b": torch.ones(2)}
    opt = optim.torch_optimizer(cls, **kw)
    state = opt.init(params)
    layout = [(t.shape, t.dtype) for t in fastes.tree.tree_leaves(state)]
    ours, theirs = params, {k: torch.nn.Parameter(v.clone()) for k, v in params.items()}
    reference = cls(theirs.values(), **kw)
    for g in _grads(6):
        u, state = opt.update(g, state, ours)
        ours = optim.apply_updates(ours, u)
        for k, p in theirs.items():
            p.grad = -g[k]
        reference.step()
        # θ + (θ' − θ) rounds once more than torch's θ': within one float32 ulp of |θ| <= 4.
        for k in params:
            torch.testing.assert_close(ours[k], theirs[k].detach(), rtol=0, atol=2**-21)
    # The state keeps the layout it was created with (checkpoints of any step match a fresh one).
    assert [(t.shape, t.dtype) for t in fastes.tree.tree_leaves(state)] == layout


def test_torch_optimizer_needs_a_torch_optim_class():
    # (Resuming strategies that use one: test_trainer's every-strategy checkpoint test.)
    with pytest.raises(TypeError, match="torch.optim.Optimizer subclass"):
        optim.torch_optimizer(optim.adam, lr=0.1)


def test_sgd_declares_its_linear_form_and_nothing_else_does():
    opt = optim.sgd(fastes.schedules.exponential_decay(0.1, 0.5))  # a different c every step
    state = opt.init({"x": torch.zeros(3)})
    for _ in range(3):  # the scalar and the state update() uses, step after step
        g = {"x": torch.tensor([1.0, -2.0, 0.5])}
        updates, new = opt.update(g, state, None)
        c, lin_state = opt.linear(state)
        assert torch.equal(updates["x"], c * g["x"]) and torch.equal(new.count, lin_state.count)
        state = new
    # per-member rates, stateful or chained transformations have no single scalar
    assert optim.sgd(torch.tensor([0.1, 0.2])).linear is None
    for other in (optim.adam(0.1), optim.momentum(0.1), optim.chain(optim.sgd(0.1))):
        assert other.linear is None


ELEMENTWISE = {
    "sgd": lambda: optim.sgd(0.1),
    "momentum": lambda: optim.momentum(0.1, nesterov=True),
    "adam": lambda: optim.adam(0.1),
    "adamw": lambda: optim.adamw(0.1, weight_decay=0.1),
    "coupled decay": lambda: optim.chain(optim.add_decayed_weights(0.1), optim.adam(0.1)),
}


@pytest.mark.parametrize("name", sorted(ELEMENTWISE))
def test_elementwise_transformations_step_stacked_params_slice_by_slice(name):
    # What BatchedRuns relies on: params stacked along a leading dim (runs) step exactly as
    # each slice alone, the step count shared.
    opt = ELEMENTWISE[name]()
    assert opt.elementwise
    gen = torch.Generator().manual_seed(0)
    params = torch.randn(4, 7, generator=gen)
    state = opt.init(params)
    alone = [(params[r].clone(), opt.init(params[r])) for r in range(4)]
    for _ in range(3):
        g = torch.randn(4, 7, generator=gen)
        updates, state = opt.update(g, state, params)
        params = params + updates
        for r, (p, s) in enumerate(alone):
            u, s = opt.update(g[r], s, p)
            alone[r] = (p + u, s)
    for r, (p, _) in enumerate(alone):
        assert torch.equal(params[r], p)


def test_transformations_whose_step_spans_the_tree_are_not_elementwise():
    assert not optim.clipup(0.1).elementwise
    assert not optim.chain(optim.adam(0.1), optim.clipup(0.1)).elementwise
    assert not optim.torch_optimizer(torch.optim.Adam, lr=0.1).elementwise


@pytest.mark.parametrize(
    "make", [lambda: optim.adam(0.01), lambda: optim.clipup(0.05, max_speed=0.06)]
)
def test_arithmetic_on_the_host_gives_the_bits_of_the_tensor_ops(make, monkeypatch):
    # Adam's and ClipUp's elementwise arithmetic runs in numpy for small leaves
    # (fastes.tree.host_view; Adam's roots stay torch's), as tensor ops for large ones and
    # off the CPU. Forced onto the tensors here, the same steps must give the same bits:
    # float32 and float64 leaves, a leaf past HOST_MAX, ClipUp's speed cap reached. ClipUp's
    # norms differ on the two sides by design (float64 on the host: see the next tests), so
    # torch's stands in for the host's here: the elementwise arithmetic is what is compared.
    from fastes.tree import HOST_MAX

    torch_norm = lambda leaves: optim._torch_norm([torch.as_tensor(x) for x in leaves])  # noqa: E731
    monkeypatch.setattr(optim, "_leaves_norm", torch_norm)

    g = torch.Generator().manual_seed(5)
    params = {"w": torch.zeros(3, 4), "b": torch.zeros(7, dtype=torch.float64)}
    for big in (False, True):  # ClipUp: all leaves on the host, or all tensors for one big
        if big:
            params["big"] = torch.zeros(HOST_MAX + 1)
        grads = [
            {k: torch.randn(v.shape, generator=g, dtype=v.dtype) * 10.0**e
             for k, v in params.items()}
            for e in (-3, 0, 2, -1, 1)
        ]  # fmt: skip
        host = _run(make(), params, grads)
        with monkeypatch.context() as m:
            m.setattr(fastes.tree, "HOST_ARITHMETIC", False)  # host_view / on_host: tensors
            tensors = _run(make(), params, grads)
        leaves = zip(fastes.tree.tree_leaves(host), fastes.tree.tree_leaves(tensors), strict=True)
        for a, b in leaves:
            assert a.dtype == b.dtype and torch.equal(a, b)


def _exact_norm32(leaves) -> float:
    """The float32 nearest the exact ‖leaves‖₂: the squares summed exactly (fractions), the
    root to double precision (a double's sqrt of the exact sum rounded to double is within
    1 ulp of double of the true root), then rounded to float32."""
    total = sum(Fraction(float(x)) ** 2 for leaf in leaves for x in leaf.reshape(-1).tolist())
    return optim._round32(math.sqrt(total))


def test_global_norm_is_the_nearest_float32_on_both_paths():
    # Squares summed in float64, rooted, rounded once: numpy's sum on the host for small eager
    # CPU leaves, torch's elsewhere. The float64 sum of n exact squares is within n·2^-53 of
    # the exact sum, the root within half that plus 2^-53, so the float32 result is the float32
    # nearest the true norm unless the true norm lies within ~n·2^-53 relative of a float32
    # rounding boundary — at most 1 float32 ulp away then, on either path.
    g = torch.Generator().manual_seed(11)
    worst = 0
    for trial in range(300):
        sizes = [int(s) for s in torch.randint(1, 40, (int(torch.randint(1, 4, ())),), generator=g)]
        scale = 10.0 ** int(torch.randint(-12, 12, (), generator=g))
        leaves = [torch.randn(s, generator=g) * scale for s in sizes]
        if trial % 3 == 0:
            leaves.append(torch.randn(5, generator=g, dtype=torch.float64) * scale)
        host = optim._leaves_norm(leaves)
        exact = _exact_norm32(leaves)
        ulp = float(np.spacing(np.float32(exact)))  # float32 spacing at the exact norm
        worst = max(worst, abs(host - exact) / ulp)
        assert abs(host - exact) <= ulp, (sizes, scale, host, exact)
        tensors = optim._torch_norm(leaves)  # the path of large leaves, GPUs, torch.compile
        worst = max(worst, abs(tensors - exact) / ulp)
        assert abs(tensors - exact) <= ulp, (sizes, scale, tensors, exact)
    assert worst <= 1
    # in float64 chunks: a leaf split across chunks gives the same float32 norm (a sum of
    # chunk sums differs from one dot product only in float64's last bits)
    leaf = torch.randn(1000, generator=g)
    whole = optim._torch_norm([leaf])
    with pytest.MonkeyPatch.context() as m:
        m.setattr(optim, "_NORM_CHUNK", 64)
        assert abs(optim._torch_norm([leaf]) - whole) <= float(np.spacing(np.float32(whole)))
    assert optim._torch_norm([torch.zeros(0)]) == 0.0 == optim._leaves_norm([])


def test_clipup_steps_agree_on_the_host_and_on_the_tensors(monkeypatch):
    # A first ClipUp step from rest is lr·ĝ/‖ĝ‖ elementwise: on the host and on the tensors it
    # differs only through ‖ĝ‖ (1 ulp apart at most, above), so leaf by leaf by 1 ulp of the
    # norm plus lr/‖ĝ‖'s two roundings and the product's: 4 ulps relative.
    g = torch.Generator().manual_seed(3)
    params = {"w": torch.zeros(3, 4), "b": torch.zeros(7)}
    grad = {k: torch.randn(v.shape, generator=g) for k, v in params.items()}
    # Gradients past float32's square root (~1.8e19) as well: float32 squares would overflow
    # to an infinite norm, which zeroes the step; in float64 the step keeps ‖step‖ = lr
    huge = {k: v * 1e25 for k, v in grad.items()}
    opt, rel = optim.clipup(0.05), 4 * 2.0**-24
    host = [opt.update(gr, opt.init(params), params)[0] for gr in (grad, huge)]
    with monkeypatch.context() as m:
        m.setattr(fastes.tree, "HOST_ARITHMETIC", False)  # everything on the tensors
        tensors = [opt.update(gr, opt.init(params), params)[0] for gr in (grad, huge)]
    for a, b in zip(host, tensors, strict=True):
        assert abs(optim._global_norm(a) - 0.05) <= rel * 0.05
        for k in params:
            torch.testing.assert_close(a[k], b[k], rtol=rel, atol=0)
            assert bool((a[k] != 0).any())  # a step was taken


@pytest.mark.parametrize("make", [lambda: optim.adam(0.01), lambda: optim.clipup(0.05)])
def test_bfloat16_leaves_take_the_tensor_ops(make):
    # numpy has no bfloat16: such leaves stay tensors (host_view hands them back as they are)
    params = {"w": torch.ones(4, dtype=torch.bfloat16), "b": torch.zeros(3)}
    grads = [{"w": torch.full((4,), 0.5, dtype=torch.bfloat16), "b": torch.ones(3)}] * 2
    new, _ = _run(make(), params, grads)
    assert new["w"].dtype == torch.bfloat16 and bool((new["w"] > 1).all())
    assert fastes.tree.host_view(params["w"]) is params["w"]
