import pytest
import torch

import fastes
from fastes.evaluate import evaluate_population, functional
from fastes.tree import raveler

torch.manual_seed(0)
NET = torch.nn.Sequential(torch.nn.Linear(5, 8), torch.nn.Tanh(), torch.nn.Linear(8, 3))
APPLY = functional(NET)
X, Y = torch.randn(16, 5), torch.randint(0, 3, (16,))


def loss_and_acc(p, x, y):  # two objectives per member: (K,) = (2,)
    logits = APPLY(p, x)
    return torch.stack(
        [-torch.nn.functional.cross_entropy(logits, y), (logits.argmax(-1) == y).float().mean()]
    )


def batched_loss_and_acc(p, x, y):  # the same, written for stacked params (leading dim = chunk)
    return torch.vmap(loss_and_acc, in_dims=(0, None, None))(p, x, y)


def _population(n=7):
    params = dict(NET.named_parameters())
    rav = raveler(params)
    theta = rav.ravel(params)
    return rav, theta + 0.1 * torch.randn(
        n, theta.numel(), generator=torch.Generator().manual_seed(1)
    )


def test_vmap_loop_and_batched_modes_agree():
    rav, pop = _population()
    v = evaluate_population(loss_and_acc, pop, rav, mode="vmap", fitness_args=(X, Y))
    lp = evaluate_population(loss_and_acc, pop, rav, mode="loop", fitness_args=(X, Y))
    b = evaluate_population(batched_loss_and_acc, pop, rav, mode="batched", fitness_args=(X, Y))
    assert v.shape == (7, 2)
    # vmap batches the matmuls, the loop does them one member at a time: different summation
    # order, so agreement is to float32 rounding of a length-8 reduction (~1e-6 relative).
    torch.testing.assert_close(v, lp, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(v, b, rtol=0, atol=0)


def test_loop_mode_accepts_python_floats_and_non_vmappable_code():
    rav, pop = _population(3)

    def fit(p):  # .item() and Python control flow: vmap cannot trace this
        s = float(p["0.weight"].sum().item())
        return s if s > 0 else 2 * s

    out = evaluate_population(fit, pop, rav, mode="loop")
    assert out.shape == (3,)


def test_functional_uses_substituted_params():
    params = {n: torch.zeros_like(p) for n, p in NET.named_parameters()}
    assert torch.equal(APPLY(params, X), torch.zeros(16, 3))
    with pytest.raises(TypeError, match="module must be a torch.nn.Module"):
        functional(lambda x: x)


def test_wrong_output_shapes_are_reported():
    rav, pop = _population(4)
    with pytest.raises(ValueError, match=r"a scalar or \(K,\) per member.*shape \(2, 2\)"):
        evaluate_population(lambda p: torch.ones(2, 2), pop, rav)
    with pytest.raises(ValueError, match=r"\(chunk,\) or \(chunk, K\).*shape \(3,\)"):
        evaluate_population(lambda p: torch.ones(3), pop, rav, mode="batched")
    with pytest.raises(ValueError, match="the same shape for all"):
        flip = iter(range(10))
        evaluate_population(lambda p: torch.ones(1 + next(flip) % 2), pop, rav, mode="loop")
    with pytest.raises(ValueError, match="mode must be one of"):
        evaluate_population(lambda p: 1.0, pop, rav, mode="threads")


def test_es_step_on_a_module_with_data_shared_across_members():
    params = dict(NET.named_parameters())
    new = fastes.es_step(
        params, loss_and_acc, fastes.key(0), population_size=8, sigma=0.05, learning_rate=0.1,
        fitness_args=(X, Y), objective_weights=[1.0, 0.0],
    )  # fmt: skip
    assert new.keys() == params.keys()
    assert all(new[n].shape == params[n].shape for n in params)


@pytest.mark.parametrize(
    "fitness",
    [lambda p: float(p["x"].sum()), lambda p: p["x"].sum().item()],
    ids=["python-float", "item"],
)
def test_vmap_failures_point_to_loop_mode(fitness):
    # Defect: torch's vmap error came alone, with no hint that mode="loop" runs such code.
    with pytest.raises(RuntimeError, match=r"(?s)failed under torch.func.vmap.*mode='loop'"):
        fastes.es_step({"x": torch.ones(3)}, fitness, fastes.key(0), population_size=4,
                       sigma=0.1, learning_rate=0.1)  # fmt: skip
    out = fastes.es_step({"x": torch.ones(3)}, fitness, fastes.key(0), population_size=4,
                         sigma=0.1, learning_rate=0.1, mode="loop")  # fmt: skip
    assert out["x"].shape == (3,)


def test_complex_fitness_is_rejected_in_every_mode():
    # Defect: in vmap mode complex fitness passed with only a torch warning.
    rav, pop = _population(4)
    for mode, fn in (("vmap", lambda p: p["0.bias"].sum() * 1j),
                     ("loop", lambda p: p["0.bias"].sum() * 1j),
                     ("batched", lambda p: p["0.bias"].sum(-1) * 1j)):  # fmt: skip
        with pytest.raises(TypeError, match="fitness_fn must return real numbers; got dtype"):
            evaluate_population(fn, pop, rav, mode=mode)


def test_batchnorm_in_train_mode_gets_a_clear_error_and_the_fixes_work():
    # Defect: vmap failed with torch's "Batch norm got a batched tensor ... running_mean" and
    # loop mode silently updated the running statistics once per member.
    net = torch.nn.Sequential(torch.nn.Linear(5, 4), torch.nn.BatchNorm1d(4), torch.nn.Linear(4, 1))
    params = dict(net.named_parameters())
    x = torch.randn(16, 5)
    fit = lambda p: -(functional(net)(p, x) ** 2).mean()
    for mode in ("vmap", "loop"):
        with pytest.raises(ValueError, match=r"BatchNorm layer '1' in train mode.*module.eval\(\)"):
            fastes.es_step(params, fit, fastes.key(0), population_size=4, sigma=0.1,
                           learning_rate=0.1, mode=mode)  # fmt: skip
    running = net[1].running_mean.clone()
    net.eval()  # fix 1: the running statistics, untouched by evaluation
    fastes.es_step(params, fit, fastes.key(0), population_size=4, sigma=0.1, learning_rate=0.1)
    assert torch.equal(net[1].running_mean, running)
    net.train()
    torch.func.replace_all_batch_norm_modules_(net)  # fix 2: each member's batch statistics
    out = fastes.es_step(params, fit, fastes.key(0), population_size=4, sigma=0.1,
                         learning_rate=0.1)  # fmt: skip
    assert all(torch.isfinite(v).all() for v in out.values())
