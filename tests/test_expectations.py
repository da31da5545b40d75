import math

import pytest
import torch

import fastes
from fastes.expectations import expectation, mixture, normal, sample


def test_value_is_the_plain_monte_carlo_mean():
    mu = torch.zeros(3, requires_grad=True)
    d = normal(mu, 0.5)
    x = sample(d, 64, fastes.key(0))
    f = (x**2).sum(-1)
    assert torch.allclose(expectation(f, x, d), f.mean())


def test_gradients_equal_the_analytic_score_function_estimate_for_mean_and_sigma():
    # Same samples, so autograd must reproduce (1/N) Σ f_i ∇log p(x_i) up to float32 rounding:
    # ∇_μ log p = (x − μ)/σ², ∇_σ log p = (‖x − μ‖² − Dσ²)/σ³ for an isotropic σ over D dims.
    D_, N = 4, 256
    mu = torch.tensor([0.5, -1.0, 2.0, 0.0], requires_grad=True)
    sigma = torch.tensor(0.7, requires_grad=True)
    d = normal(mu, sigma)
    x = sample(d, N, fastes.key(1), antithetic=True)
    f = torch.sin(x).sum(-1)
    expectation(f, x, d).backward()
    z = x - mu.detach()
    want_mu = (f[:, None] * z / 0.7**2).mean(0)
    want_sigma = (f * ((z**2).sum(-1) - D_ * 0.7**2) / 0.7**3).mean()
    torch.testing.assert_close(mu.grad, want_mu, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(sigma.grad, want_sigma, rtol=1e-5, atol=1e-6)


def test_quadratic_matches_the_closed_form_gradient_within_sampling_error():
    # f(x) = −(x − 5)², x ~ N(μ, σ²): E f = −(μ − 5)² − σ², so ∂μ = −2(μ − 5) = 8, ∂σ = −2σ = −1
    # at μ = 1, σ = 0.5. The estimate is a mean of N i.i.d. terms g_i: its standard error is
    # std(g_i)/√N, computed from the same samples; 5 standard errors bound it.
    N = 20000
    mu = torch.tensor([1.0], requires_grad=True)
    sigma = torch.tensor(0.5, requires_grad=True)
    d = normal(mu, sigma)
    x = sample(d, N, fastes.key(2))
    f = -((x - 5) ** 2).sum(-1)
    expectation(f, x, d).backward()
    z = (x - 1.0)[:, 0]
    se_mu = (f * z / 0.25).std() / math.sqrt(N)
    se_sigma = (f * (z**2 - 0.25) / 0.125).std() / math.sqrt(N)
    assert abs(mu.grad.item() - 8.0) < 5 * se_mu
    assert abs(sigma.grad.item() + 1.0) < 5 * se_sigma


def test_nested_variance_gradient():
    # Var[x] under N(μ, σ²) is σ², so ∂Var/∂σ = 2σ and ∂Var/∂μ = 0. Var = E[x²] − E[x]², built
    # from two expectations; its estimate's gradient converges to the true one. With N = 40000
    # antithetic samples the σ-gradient's spread over keys 0-9 measured SD 0.056 (mean 1.608):
    # the bound is 5 SD. Antithetic pairs make the estimate even in x − μ, so its μ-gradient is
    # zero up to float32 rounding of the N-term means (terms ≈ 10, so ≲ 10·2^-24 each; measured
    # max 1e-6 over the same keys): bound 1e-5.
    mu = torch.tensor([3.0], requires_grad=True)
    sigma = torch.tensor(0.8, requires_grad=True)
    d = normal(mu, sigma)
    x = sample(d, 40000, fastes.key(3), antithetic=True)[:, 0]
    var = expectation(x**2, x[:, None], d) - expectation(x, x[:, None], d) ** 2
    var.backward()
    assert abs(sigma.grad.item() - 1.6) < 5 * 0.056
    assert abs(mu.grad.item()) < 1e-5


def test_dim_argument_and_trailing_dims():
    mu = torch.zeros(2, requires_grad=True)
    d = normal(mu, 1.0)
    x = sample(d, 10, fastes.key(4))
    vals = torch.stack([x[:, 0], x[:, 1], x.sum(-1)], 1)  # (N, 3)
    a = expectation(vals, x, d)
    b = expectation(vals.T, x, d, dim=1)
    assert a.shape == (3,) and torch.equal(a, b)
    with pytest.raises(ValueError, match=r"sample axis \(length 10, from samples\) at dim 0"):
        expectation(torch.ones(9), x, d)
    with pytest.raises(TypeError, match="dist must be a torch.distributions.Distribution"):
        expectation(vals, x, "normal")


def test_mixture_gradient_is_responsibility_weighted_score():
    means = torch.tensor([[0.0, 0.0], [2.0, 1.0], [-1.0, 3.0]], requires_grad=True)
    logits = torch.tensor([0.0, 0.5, -0.5], requires_grad=True)
    d = mixture(means, 0.8, logits)
    x = sample(d, 512, fastes.key(5))
    f = -((x - torch.tensor([1.0, 1.0])) ** 2).sum(-1)
    expectation(f, x, d).backward()
    # ∇_{μ_k} log p(x) = r_k(x)·(x − μ_k)/σ², r_k = posterior responsibility of component k.
    with torch.no_grad():
        comp_lp = torch.distributions.Normal(means[None], 0.8).log_prob(x[:, None]).sum(-1)
        r = torch.softmax(comp_lp + torch.log_softmax(logits, 0), dim=1)  # (N, C)
        want = (f[:, None, None] * r[..., None] * (x[:, None] - means[None]) / 0.64).mean(0)
    torch.testing.assert_close(means.grad, want, rtol=1e-4, atol=1e-5)
    assert logits.grad is not None and torch.isfinite(logits.grad).all()


def test_mixture_sampling_follows_the_weights_and_antithetic_pairs():
    means = torch.tensor([[0.0], [10.0]])
    d = mixture(means, 0.1, torch.log(torch.tensor([0.25, 0.75])))
    x = sample(d, 4000, fastes.key(6), antithetic=True)
    frac = (x[:, 0] > 5).float().mean().item()
    assert abs(frac - 0.75) < 5 * math.sqrt(0.75 * 0.25 / 2000)  # 2000 independent pairs
    assert torch.allclose(x[0::2] + x[1::2], 2 * torch.where(x[0::2] > 5, 10.0, 0.0))
    assert torch.equal(sample(d, 10, fastes.key(6)), sample(d, 10, fastes.key(6)))
    with pytest.raises(ValueError, match="even when antithetic"):
        sample(d, 5, fastes.key(0), antithetic=True)


def test_training_the_mean_with_torch_optim_reaches_the_peak():
    mu = torch.tensor([1.0], requires_grad=True)
    opt = torch.optim.SGD([mu], lr=0.03)
    for t in range(300):
        d = normal(mu, 0.5)
        x = sample(d, 200, fastes.fold_in(fastes.key(7), t), antithetic=True)
        f = -((x - 5) ** 2).sum(-1)
        loss = -expectation((f - f.mean()) / f.std(), x, d)
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert abs(mu.item() - 5) < 0.2
