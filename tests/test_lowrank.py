"""Low-rank ES (fastes.lowrank, the eggroll strategy): the population forward equals running
each materialised member, the update equals the explicit sum, determinism, layouts, errors."""

import math

import pytest
import torch
from torch.func import functional_call

import fastes
from fastes.lowrank import LowRankNoise, leaf_layout
from fastes.nn import TinyTransformer
from fastes.strategies import make
from fastes.tree import raveler

# float64 models: the only rounding left is float64's (2^-53 ≈ 1.1e-16 relative) over dot
# products of length <= 64·4 with terms of size <= ~30, through <= 12 layers: well under 1e-11.
TOL64 = 1e-11


def _params(net):
    return {k: v.detach() for k, v in net.named_parameters()}


def _mlp(dtype=torch.float64):
    torch.manual_seed(0)  # odd widths: 5 -> 7 -> 3
    net = torch.nn.Sequential(torch.nn.Linear(5, 7), torch.nn.Tanh(), torch.nn.Linear(7, 3))
    return net.to(dtype)


def _transformer(dtype=torch.float64):
    torch.manual_seed(0)
    net = TinyTransformer(vocab=11, d_model=12, n_heads=3, n_layers=2, max_len=9, n_out=5)
    return net.to(dtype)


def _explicit_members(strategy, state, key, P):
    """Member params built by hand from the drawn factors: W + σ·sign·A Bᵀ/√r (float64)."""
    noise, sigma = strategy.noise, strategy.sigma(0)
    drawn = noise.draw(key, torch.arange(P // 2))
    mean = strategy.params(state)
    members = []
    for i in range(P):
        row, sign = i // 2, 1 - 2 * (i % 2)
        p = {}
        for leaf, d in zip(noise.layout, drawn):
            theta = mean[leaf.name]
            if leaf.kind == "lowrank":
                A, B = d[0][row].double(), d[1][row].double()
                E = A @ B.T / math.sqrt(noise.rank)
            elif leaf.kind == "full":
                E = d[row].double().reshape(leaf.shape)
            else:
                E = torch.zeros_like(theta)
            p[leaf.name] = theta + sign * sigma * E
        members.append(p)
    return members


@pytest.fixture(params=["fused", "plain"])
def linear_path(request, monkeypatch):
    """Both ways a population runs its nn.Linear layers: the fused batching rule (large outputs)
    and vmap's own rules on plain ops (small ones), chosen by fastes.population._SMALL_OUTPUT."""
    monkeypatch.setattr(
        fastes.population, "_SMALL_OUTPUT", 0 if request.param == "fused" else 2**62
    )
    return request.param


@pytest.mark.parametrize("rank", [1, 3])
@pytest.mark.parametrize("model", ["mlp", "transformer"])
def test_population_forward_equals_materialised_members(model, rank, linear_path):
    net = _mlp() if model == "mlp" else _transformer()
    p = _params(net)
    P = 6
    s = make("eggroll", p, module=net, rank=rank, sigma=0.3, population_size=P)
    st = s.init(p)
    key = fastes.key(7)
    if model == "mlp":
        x = torch.randn(4, 5, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    else:
        x = torch.randint(0, 11, (4, 9), generator=torch.Generator().manual_seed(1))
    out = s.ask_population(st, key)(x)  # shared inputs
    ref = torch.stack([functional_call(net, m, (x,)) for m in _explicit_members(s, st, key, P)])
    assert out.shape == ref.shape
    torch.testing.assert_close(out, ref, rtol=0, atol=TOL64)
    # per-member inputs (in_dims=0): member i sees x_i
    xs = torch.stack([x.roll(i, 0) for i in range(P)])
    out = s.ask_population(st, key)(xs, in_dims=0)
    ref = torch.stack(
        [functional_call(net, m, (xs[i],)) for i, m in enumerate(_explicit_members(s, st, key, P))]
    )
    torch.testing.assert_close(out, ref, rtol=0, atol=TOL64)


def test_layout_of_a_transformer():
    net = _transformer()
    p = _params(net)
    layout = {leaf.name: leaf.kind for leaf in leaf_layout(p, raveler(p), net, ["ln.*"])}
    assert layout["tok.weight"] == layout["pos.weight"] == "lowrank"
    assert layout["blocks.0.qkv.weight"] == layout["head.weight"] == "lowrank"
    assert layout["blocks.0.qkv.bias"] == layout["blocks.1.ln1.weight"] == "full"
    assert layout["ln.weight"] == layout["ln.bias"] == "frozen"


def test_tied_and_multihead_attention_weights_are_full_rank(linear_path):
    class Net(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.emb = torch.nn.Embedding(7, 6)
            self.attn = torch.nn.MultiheadAttention(6, 2, batch_first=True)
            self.head = torch.nn.Linear(6, 7, bias=False)
            self.head.weight = self.emb.weight  # tied: one parameter, two layers

        def forward(self, t):
            x = self.emb(t)
            return self.head(self.attn(x, x, x, need_weights=False)[0])

    net = Net().double()
    p = _params(net)
    layout = {leaf.name: leaf.kind for leaf in leaf_layout(p, raveler(p), net)}
    assert layout["emb.weight"] == "full"  # tied with head.weight: a hook would miss one use
    assert layout["attn.out_proj.weight"] == "full"  # read by F.multi_head_attention_forward
    assert layout["attn.in_proj_weight"] == "full"  # not an nn.Linear
    s = make("eggroll", p, module=net, sigma=0.2, population_size=4)
    st, key = s.init(p), fastes.key(0)
    t = torch.randint(0, 7, (2, 5), generator=torch.Generator().manual_seed(0))
    ref = torch.stack([functional_call(net, m, (t,)) for m in _explicit_members(s, st, key, 4)])
    torch.testing.assert_close(s.ask_population(st, key)(t), ref, rtol=0, atol=TOL64)


def test_a_layer_whose_weight_is_used_without_its_forward_is_an_error():
    class Net(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.b = torch.nn.Linear(3, 3), torch.nn.Linear(3, 2)

        def forward(self, x):
            return self.a(x) @ self.b.weight.T  # b's weight read directly

    net = Net()
    p = _params(net)
    s = make("eggroll", p, module=net, population_size=4)
    with pytest.raises(ValueError, match=r"low-rank layers \['b'\] were not called"):
        s.ask_population(s.init(p), fastes.key(0))(torch.ones(2, 3))
    s = make("eggroll", p, module=net, population_size=4, freeze=["b.*"])
    assert s.ask_population(s.init(p), fastes.key(0))(torch.ones(2, 3)).shape == (4, 2, 2)


@pytest.mark.parametrize("rank", [1, 4])
def test_update_equals_the_explicit_weighted_sum(rank):
    net = _mlp(torch.float32)
    p = _params(net)
    rav = raveler(p)
    noise = LowRankNoise(leaf_layout(p, rav, net), rank, fastes.noise.PhiloxNoise())
    key, rows = fastes.key(3), torch.arange(9)
    w = torch.linspace(-1, 1, 9)
    got = noise.weighted_sum(key, rows, w, rav.dim)
    explicit = (noise.rows(key, rows, rav.dim).double() * w.double()[:, None]).sum(0)
    # float32 terms |w·E| <= ~20, 9·r products per entry: rounding <= 9·r·20·2^-24 ≈ 1e-4·r/4.
    torch.testing.assert_close(got.double(), explicit, rtol=0, atol=2e-5 * rank)


def test_noise_is_a_pure_function_of_key_leaf_and_member():
    net = _transformer(torch.float32)
    p = _params(net)
    rav = raveler(p)
    noise = LowRankNoise(leaf_layout(p, rav, net), 2, fastes.noise.PhiloxNoise())
    k = fastes.key(11)
    all_rows = noise.rows(k, torch.arange(6), rav.dim)
    assert torch.equal(noise.rows(k, torch.tensor([4, 1]), rav.dim), all_rows[[4, 1]])
    assert torch.equal(noise.rows(fastes.key(11), torch.arange(6), rav.dim), all_rows)
    assert not torch.equal(noise.rows(fastes.key(12), torch.arange(6), rav.dim), all_rows)
    big = noise.rows(k, torch.tensor([2**33 + 1]), rav.dim)  # 64-bit member counters
    assert torch.isfinite(big).all() and not torch.equal(big[0], all_rows[1])
    # Low-rank segments have rank <= r; E has unit variance per entry.
    leaf = next(x for x in noise.layout if x.name == "blocks.0.fc.weight")
    E = all_rows[0, leaf.offset : leaf.offset + leaf.size].reshape(leaf.shape)
    # float32 E: its rounding leaves singular values ~2^-24·‖E‖, under float32's default rtol
    assert int(torch.linalg.matrix_rank(E)) == 2
    many = noise.rows(k, torch.arange(400), rav.dim)[:, leaf.offset : leaf.offset + leaf.size]
    # 400·48·12 ≈ 230k entries of variance 1: the sample variance is within ~5 std errors
    # (std error of a variance estimate ≈ √(2/n)·... heavier tails for products: √(8/n) ≈ 0.006).
    assert abs(float(many.var()) - 1.0) < 0.03


def test_step_equals_ask_and_tell_and_the_vmap_mode():
    net = _mlp(torch.float32)
    p = _params(net)
    x = torch.randn(16, 5, generator=torch.Generator().manual_seed(0))
    y = torch.randint(0, 3, (16,), generator=torch.Generator().manual_seed(1))

    def accuracy(pop):  # no gradient: argmax
        return (pop(x).argmax(-1) == y).float().mean(-1) + 1e-3 * pop(x)[..., 0].mean(-1)

    def accuracy_one(q):
        out = functional_call(net, q, (x,))
        return (out.argmax(-1) == y).float().mean() + 1e-3 * out[..., 0].mean()

    s = make("eggroll", p, module=net, rank=2, sigma=0.05, population_size=8)
    st, key = s.init(p), fastes.key(4)
    a, stats = s.step(st, accuracy, key)
    b = s.tell(st, key, stats.fitness)
    # tell regenerates the factors and sums the same GEMMs: the same bits
    assert torch.equal(a.mean, b.mean)
    v = make("eggroll", p, module=net, rank=2, sigma=0.05, population_size=8, mode="vmap")
    c, vstats = v.step(v.init(p), accuracy_one, key)
    # materialised members run the same function: fitness equal to float32 rounding of the
    # outputs (~1e-6), ranks equal, so the updates agree to the rounding of Adam's step
    torch.testing.assert_close(vstats.fitness, stats.fitness, rtol=0, atol=1e-5)
    torch.testing.assert_close(c.mean, a.mean, rtol=0, atol=1e-5)


def test_frozen_leaves_never_move_and_chunks_give_the_same_step():
    net = _mlp(torch.float32)
    p = _params(net)
    x = torch.randn(8, 5, generator=torch.Generator().manual_seed(0))

    def f(pop):
        return -(pop(x) ** 2).mean((1, 2))

    kw = dict(module=net, sigma=0.1, population_size=8, weight_decay=0.1, freeze=["0.*"])
    s = make("eggroll", p, **kw)
    st = s.init(p)
    for t in range(3):
        st, _ = s.step(st, f, fastes.key(t))
    out = s.params(st)
    assert torch.equal(out["0.weight"], p["0.weight"]) and torch.equal(out["0.bias"], p["0.bias"])
    assert not torch.equal(out["2.weight"], p["2.weight"])
    c = make("eggroll", p, chunk_size=2, **kw)
    sc = c.init(p)
    for t in range(3):
        sc, _ = c.step(sc, f, fastes.key(t))
    torch.testing.assert_close(sc.mean, st.mean, rtol=0, atol=0)


def test_trainer_runs_a_population_task_and_resumes_bit_identically(stop_and_resume):
    net = _mlp(torch.float32)
    p = _params(net)
    x = torch.randn(8, 5, generator=torch.Generator().manual_seed(0))
    task = fastes.tasks.FunctionTask(lambda pop: -(pop(x) ** 2).mean((1, 2)), mode="population")

    def trainer(run_dir, gens):
        s = make("eggroll", p, module=net, sigma=0.1, population_size=8)
        return fastes.Trainer(s, task, key=fastes.key(2), generations=gens, params=p,
                              run_dir=run_dir, checkpoint_every=2, progress=False)  # fmt: skip

    full, resumed = stop_and_resume(trainer, 3, 5)
    for k in p:
        assert torch.equal(full.params[k], resumed.params[k]), k


def test_bad_input_names_the_argument():
    net = _mlp(torch.float32)
    p = _params(net)
    with pytest.raises(ValueError, match="mode='population' runs the module"):
        make("eggroll", p, mode="population")
    with pytest.raises(ValueError, match="'population' needs a low-rank strategy"):
        make("openai_es", p, mode="population")
    with pytest.raises(ValueError, match="freeze pattern 'x.*' matches no parameter"):
        make("eggroll", p, module=net, freeze=["x.*"])
    with pytest.raises(ValueError, match="eggroll exchanges fitness only"):
        make("eggroll", p, module=net, exchange="partial_sums")
    with pytest.raises(ValueError, match="rank must be an int >= 1"):
        make("eggroll", p, module=net, rank=0)
    with pytest.raises(ValueError, match="not parameters of the module"):
        make("eggroll", {"w": torch.zeros(3, 3)}, module=net)
    s = make("eggroll", p, module=net, population_size=4)
    pop = s.ask_population(s.init(p), fastes.key(0))
    with pytest.raises(ValueError, match="must have 4 members along dim 0"):
        pop(torch.ones(3, 2, 5), in_dims=0)
    with pytest.raises(ValueError, match=r"fitness_fn must return \(chunk,\)"):
        s.step(s.init(p), lambda pop: pop(torch.ones(2, 5)), fastes.key(0))


@pytest.mark.parametrize("bias", [None, "shared", "member"])
@pytest.mark.parametrize("x_dim", [None, 0, 1])
def test_lowrank_linear_batching_rule_equals_one_member_at_a_time(bias, x_dim):
    # The fused rule (one GEMM for all members) against the one-member formula in a loop, for
    # shared inputs, members along dim 0 or 1, and no / shared / per-member bias (float64).
    from fastes.population import lowrank_linear

    g = torch.Generator().manual_seed(0)
    P, S, n, m, r = 5, 3, 7, 4, 2
    W = torch.randn(m, n, generator=g, dtype=torch.float64)
    A = torch.randn(P, m, r, generator=g, dtype=torch.float64)
    B = torch.randn(P, n, r, generator=g, dtype=torch.float64)
    b = {None: None, "shared": torch.randn(m, generator=g, dtype=torch.float64),
         "member": torch.randn(P, m, generator=g, dtype=torch.float64)}[bias]  # fmt: skip
    x = torch.randn(S, n, generator=g, dtype=torch.float64)
    if x_dim is not None:
        x = torch.stack([x * (i + 1) for i in range(P)], dim=x_dim)
    in_dims = (x_dim, None, 0 if bias == "member" else None, 0, 0)
    got = torch.vmap(lowrank_linear, in_dims=in_dims)(x, W, b, A, B)
    for i in range(P):
        xi = x if x_dim is None else x.select(x_dim, i)
        bi = None if b is None else (b[i] if bias == "member" else b)
        want = xi @ W.T + (xi @ B[i]) @ A[i].T + (0 if bi is None else bi)
        torch.testing.assert_close(got[i], want, rtol=0, atol=TOL64)


@pytest.mark.parametrize("entry", ["es_step", "openai_es", "pgpe"])
def test_low_rank_noise_runs_behind_other_entry_points(entry):
    # DESIGN §12: full-rank and low-rank are two noise families behind the same strategies.
    # With 2 noise rows of rank 1 the update of a 20 × 30 weight has rank <= 2 (full-rank noise
    # would move it in a full-rank direction); the 1-D leaf still moves.
    p = {"w": torch.zeros(20, 30), "b": torch.zeros(5)}
    noise = LowRankNoise.for_params(p, rank=1)
    assert [leaf.kind for leaf in noise.layout] == ["lowrank", "full"]

    def f(q):
        return -((q["w"] - 0.3) ** 2).sum() - ((q["b"] + 0.2) ** 2).sum()

    key = fastes.key(1)
    if entry == "es_step":
        out = fastes.es_step(
            p, f, key, population_size=4, sigma=0.1, learning_rate=0.1, noise=noise
        )
    else:
        # SGD: Adam's per-coordinate scaling would turn a low-rank gradient into a full-rank step
        opt = dict(optimizer=fastes.optim.sgd(0.1)) if entry == "openai_es" else {}
        s = make(entry, p, population_size=4, noise=noise, **opt)
        out = s.params(s.step(s.init(p), f, key)[0])
    assert int(torch.linalg.matrix_rank(out["w"])) <= 2 and out["w"].abs().sum() > 0
    assert out["b"].abs().sum() > 0


def _pendulum_policy():
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(3, 16), torch.nn.Tanh(), torch.nn.Linear(16, 1))
    return fastes.rl.ModulePolicy(net, 3, discrete=False, low=-2.0, high=2.0)


def test_module_policy_acts_the_same_for_a_population_and_its_materialised_members():
    policy = _pendulum_policy()
    p = policy.init()
    s = make("eggroll", p, module=policy.module, rank=2, sigma=0.3, population_size=8)
    st, key = s.init(p), fastes.key(0)
    obs = torch.randn(8, 5, 3, generator=torch.Generator().manual_seed(1))
    got = policy.act(s.ask_population(st, key), obs)
    want = policy.act(s.ask(st, key), obs)  # stacked (8, ...) weights, vmap of functional_call
    # float32 layers of width <= 16 on the same member weights: rounding ~1e-6 before tanh
    torch.testing.assert_close(got, want, rtol=0, atol=1e-5)


def test_env_task_trains_a_module_policy_in_population_mode_and_resumes(stop_and_resume):
    policy = _pendulum_policy()
    p = policy.init()
    with pytest.raises(ValueError, match="pass policy=fastes.rl.ModulePolicy"):
        fastes.rl.EnvTask("pendulum", mode="population")

    def trainer(run_dir, gens):
        task = fastes.rl.EnvTask("pendulum", policy, episodes=2, eval_episodes=2,
                                 normalize_obs=True, mode="population")  # fmt: skip
        s = make("eggroll", p, module=policy.module, sigma=0.3, population_size=8)
        return fastes.Trainer(s, task, key=fastes.key(1), generations=gens, params=p,
                              run_dir=run_dir, checkpoint_every=1, eval_every=2,
                              progress=False)  # fmt: skip

    full, resumed = stop_and_resume(trainer, 2, 4)
    for k in p:
        assert torch.equal(full.params[k], resumed.params[k]), k
    assert not torch.equal(full.params["2.weight"], p["2.weight"])


def test_a_linear_subclass_with_its_own_forward_gets_full_rank_noise():
    class Scaled(torch.nn.Linear):
        def forward(self, x):  # not nn.Linear's computation: the population must not replace it
            return 2 * super().forward(x)

    net = torch.nn.Sequential(Scaled(3, 4), torch.nn.Tanh(), torch.nn.Linear(4, 2)).double()
    p = _params(net)
    assert [leaf.kind for leaf in leaf_layout(p, raveler(p), net)] == [
        "full",
        "full",
        "lowrank",
        "full",
    ]
    s = make("eggroll", p, module=net, rank=1, sigma=0.2, population_size=4)
    st, key = s.init(p), fastes.key(0)
    x = torch.randn(3, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    ref = torch.stack([functional_call(net, m, (x,)) for m in _explicit_members(s, st, key, 4)])
    torch.testing.assert_close(s.ask_population(st, key)(x), ref, rtol=0, atol=TOL64)


def test_an_sgd_step_is_fused_into_the_update_gemms():
    """With sgd, eggroll writes θ + lr·ĝ from its GEMMs (fastes.optim's ``linear`` form); the
    unfused path (ĝ, then the optimizer's updates, then θ + updates) gives the same step to
    float32 rounding, and frozen leaves stay bit-identical."""
    net = _mlp(torch.float32)
    p = _params(net)
    x = torch.randn(8, 5, generator=torch.Generator().manual_seed(0))

    def f(pop):
        return -(pop(x) ** 2).mean((1, 2))

    lr, P, sigma = 0.5, 8, 0.1
    kw = dict(module=net, sigma=sigma, population_size=P, rank=2, freeze=["0.bias"])
    fused = make("eggroll", p, optimizer=fastes.optim.sgd(lr), **kw)
    plain = make("eggroll", p, optimizer=fastes.optim.sgd(lr)._replace(linear=None), **kw)
    st, key = fused.init(p), fastes.key(5)
    a, stats = fused.step(st, f, key)
    b, _ = plain.step(st, f, key)
    assert torch.equal(a.opt_state.count, b.opt_state.count) and int(a.generation) == 1
    # Each entry is θ + Σ_j c_j·E_j (c_j = lr·(w_2j − w_2j+1)/(Pσ), j < P/2, r products each).
    # Both forms round the θ-sized sum (2 roundings of u = 2^-24 relative at most, |θ_new|) and
    # the P/2·r products and partial sums (≤ (P/2·r + 2)·u·Σ_j|c_j·E_j| each): the bound below.
    w = stats.weights
    c = lr * (w[0::2] - w[1::2]) / (P * sigma)
    E = fused.noise.rows(key, torch.arange(P // 2), fused.dim)
    terms = (c[:, None].double() * E.double()).abs().sum(0)
    u = 2.0**-24
    bound = 2 * u * a.mean.abs().double() + 2 * (P // 2 * 2 + 2) * u * terms
    assert ((a.mean.double() - b.mean.double()).abs() <= bound).all()
    assert not torch.equal(a.mean, st.mean)
    frozen = next(leaf for leaf in fused.layout if leaf.name == "0.bias")
    sl = slice(frozen.offset, frozen.offset + frozen.size)
    assert torch.equal(a.mean[sl], st.mean[sl])
