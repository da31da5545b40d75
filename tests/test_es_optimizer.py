import pytest
import torch

import fastes
from fastes.es_optimizer import ESOptimizer, module_blocks


def _model():
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.Tanh(), torch.nn.Linear(4, 2))


X = torch.randn(32, 3, generator=torch.Generator().manual_seed(1))
Y = (X[:, 0] > 0).long()


def objective(net, x, y):
    logits = net(x)
    acc = (logits.argmax(-1) == y).float().mean()
    return torch.stack([acc, -torch.nn.functional.cross_entropy(logits, y)])


KW = dict(population_size=16, sigma=0.1, objective_weights=[1.0, 0.5])


def test_blocks_default_to_top_level_submodules():
    assert module_blocks(_model()) == {"0": ["0.weight", "0.bias"], "2": ["2.weight", "2.bias"]}


def test_update_equals_estimate_grad_plus_the_torch_optimizer_step():
    model = _model()
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    es = ESOptimizer(model, torch.optim.SGD(model.parameters(), lr=0.3), objective, **KW, seed=5)
    result = es.step(X, Y)
    # The same estimate by hand: fitness of a member = objective on the module with its params.
    apply = fastes.functional(_model())

    def fitness(p, x, y):
        return objective(lambda *a: apply(p, *a), x, y)

    grad, _ = fastes.estimate_grad(
        before, fitness, fastes.fold_in(fastes.key(5), 0), fitness_args=(X, Y), **KW
    )
    for n, p in model.named_parameters():
        assert torch.equal(result.grad[n], grad[n])
        # SGD on .grad = -ĝ: p ← p + lr·ĝ, rounded the same way torch does it.
        assert torch.equal(p.detach(), before[n].add(-grad[n], alpha=-0.3))


@pytest.mark.parametrize(
    "order,expected",
    [("bottom_up", ["0", "2", "0", "2"]), ("top_down", ["2", "0", "2", "0"]), ("all", ["all"] * 4)],
)
def test_block_orders(order, expected):
    model = _model()
    es = ESOptimizer(
        model, torch.optim.SGD(model.parameters(), lr=0.1), objective, blocks=order, **KW
    )
    assert [es.step(X, Y).block for _ in range(4)] == expected


def test_random_order_is_seeded_and_visits_every_block():
    def blocks(seed):
        model = _model()
        es = ESOptimizer(
            model,
            torch.optim.SGD(model.parameters(), lr=0.1),
            objective,
            blocks="random",
            seed=seed,
            **KW,
        )
        return [es.step(X, Y).block for _ in range(12)]

    assert blocks(3) == blocks(3)
    assert set(blocks(3)) == {"0", "2"}


def test_only_the_chosen_block_moves_and_stale_momentum_is_not_reapplied():
    model = _model()
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=0.01)
    es = ESOptimizer(model, opt, objective, blocks="bottom_up", **KW)
    snap = lambda: {n: p.detach().clone() for n, p in model.named_parameters()}
    s0 = snap()
    es.step(X, Y)  # block "0"
    s1 = snap()
    assert all(not torch.equal(s0[n], s1[n]) for n in ("0.weight", "0.bias"))
    assert all(torch.equal(s0[n], s1[n]) for n in ("2.weight", "2.bias"))
    es.step(X, Y)  # block "2": block "0" has momentum but no grad, so it must not move
    s2 = snap()
    assert all(torch.equal(s1[n], s2[n]) for n in ("0.weight", "0.bias"))
    assert all(not torch.equal(s1[n], s2[n]) for n in ("2.weight", "2.bias"))
    assert model[0].weight.grad is None


def test_objective_weights_change_the_estimate():
    def grad_with(weights):
        model = _model()
        es = ESOptimizer(
            model,
            torch.optim.SGD(model.parameters(), lr=0.1),
            objective,
            population_size=16,
            sigma=0.1,
            objective_weights=weights,
        )
        return es.step(X, Y)

    a, b = grad_with([1.0, 0.0]), grad_with([0.0, 1.0])
    # Each weighting is the centered ranks of that objective alone.
    w_acc, _ = fastes.shape_fitness(a.stats.fitness[:, 0])
    assert torch.allclose(a.stats.weights, w_acc)
    assert not torch.equal(a.grad["0.weight"], b.grad["0.weight"])


def test_state_dict_round_trip_resumes_identically():
    m1, m2 = _model(), _model()
    e1 = ESOptimizer(
        m1, torch.optim.Adam(m1.parameters(), lr=0.01), objective, blocks="random", **KW
    )
    for _ in range(3):
        e1.step(X, Y)
    e2 = ESOptimizer(
        m2, torch.optim.Adam(m2.parameters(), lr=0.01), objective, blocks="random", **KW
    )
    m2.load_state_dict(m1.state_dict())
    e2.load_state_dict(e1.state_dict())
    for _ in range(3):
        assert e1.step(X, Y).block == e2.step(X, Y).block
    assert all(torch.equal(a, b) for a, b in zip(m1.parameters(), m2.parameters()))


def test_bad_arguments():
    model = _model()
    sgd = torch.optim.SGD(model.parameters(), lr=0.1)
    with pytest.raises(ValueError, match="blocks must be one of"):
        ESOptimizer(model, sgd, objective, blocks="sideways", **KW)
    with pytest.raises(TypeError, match="optimizer must be a torch.optim.Optimizer"):
        ESOptimizer(model, "adam", objective, **KW)
    with pytest.raises(ValueError, match=r"groups\['g'\] must list parameter names.*nope"):
        ESOptimizer(model, sgd, objective, groups={"g": ["nope"]}, **KW)
    with pytest.raises(ValueError, match="sigma must be a finite number > 0"):
        ESOptimizer(model, sgd, objective, population_size=8, sigma=0).step(X, Y)


def test_user_groups_define_the_blocks():
    model = _model()
    groups = {"weights": ["0.weight", "2.weight"], "biases": ["0.bias", "2.bias"]}
    es = ESOptimizer(
        model,
        torch.optim.SGD(model.parameters(), lr=0.1),
        objective,
        blocks="top_down",
        groups=groups,
        **KW,
    )
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    result = es.step(X, Y)
    assert result.block == "biases" and set(result.grad) == {"0.bias", "2.bias"}
    moved = {n for n, p in model.named_parameters() if not torch.equal(p, before[n])}
    assert moved == {"0.bias", "2.bias"}
