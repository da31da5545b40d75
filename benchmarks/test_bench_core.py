"""pytest-benchmark suite for fastes' CPU hot paths.

    pytest benchmarks --benchmark-only          # measure
    pytest benchmarks --benchmark-disable       # smoke mode (CI): each runs once, asserts shapes

The naive-vs-fastes comparison of a whole generation is benchmarks/es_generation.py.
"""

import pytest
import torch

import fastes
from fastes.noise import PhiloxNoise, TableNoise, noise_table

D, P = 100_000, 256


@pytest.fixture(scope="module")
def table():
    return noise_table()


def test_philox_noise_rows(benchmark):
    out = benchmark(PhiloxNoise().rows, fastes.key(0), torch.arange(16), D)
    assert out.shape == (16, D)


def test_table_weighted_sum(benchmark, table):
    w = torch.randn(P // 2)
    out = benchmark(TableNoise(table).weighted_sum, fastes.key(0), torch.arange(P // 2), w, D)
    assert out.shape == (D,)


def test_torch_randn_baseline(benchmark):
    out = benchmark(torch.randn, 16, D)
    assert out.shape == (16, D)


def test_centered_ranks(benchmark):
    f = torch.randn(4096)
    w, _ = benchmark(fastes.shape_fitness, f)
    assert w.shape == (4096,)


@pytest.mark.parametrize("noise", ["table", "philox"])
def test_es_step_sphere(benchmark, table, noise):
    theta = torch.full((D,), 0.5)

    def step():
        return fastes.es_step(
            theta, lambda x: -(x * x).sum(), fastes.key(0), population_size=P, sigma=0.02,
            learning_rate=0.01, noise=noise,
        )  # fmt: skip

    out = benchmark(step)
    assert out.shape == (D,) and torch.isfinite(out).all()


def test_cartpole_rollout_population(benchmark):
    from fastes.envs import cartpole, rollout

    w = torch.tensor([0.1, 0.5, 1.0, 0.6], dtype=torch.float64)
    out = benchmark(
        rollout, lambda o: (o @ w > 0).long(), fastes.key(0), (4,), cartpole, members=256
    )
    assert out.lengths.shape == (256, 4) and bool((out.lengths > 0).all())


def test_env_steps_script_smoke(tmp_path):
    pytest.importorskip("gymnasium")
    import env_steps

    res = env_steps.main(["--population", "8", "--episodes", "1", "--sync-population", "2",
                          "--reps", "1", "--out", str(tmp_path / "r.json")])  # fmt: skip
    row = res["rows"][0]
    assert row["envs"] == 8 and row["fastes torch-native"] > 0 and row["speedup"] > 0
    assert (tmp_path / "r.json").exists()
