import numpy as np
import pytest
import torch

import fastes
from fastes.envs import cartpole, episode_returns


def test_cartpole_matches_gymnasium_step_for_step():
    # Same start state, same actions: float64 states identical, and the same rewards and
    # termination step, for several episodes of random actions (both use float64 libm math).
    gym = pytest.importorskip("gymnasium")
    start = cartpole.reset(fastes.key(0), (5,))
    env = gym.make("CartPole-v1").unwrapped
    rng = np.random.default_rng(0)
    for i in range(5):
        env.reset(seed=0)
        env.state = start.obs[i].numpy().copy()
        s = cartpole.CartPoleState(start.obs[i : i + 1], start.done[i : i + 1], start.steps)
        for _ in range(500):
            a = int(rng.integers(0, 2))
            obs, reward, terminated, truncated, _ = env.step(a)
            s, r, term, trunc = cartpole.step(s, torch.tensor([a]))
            assert np.array_equal(env.state, s.obs[0].numpy())
            assert float(r[0]) == reward and bool(term[0]) == terminated
            if terminated:
                break
        assert terminated


def test_batched_episodes_freeze_when_done_and_truncate_at_500():
    push_right = lambda obs: torch.ones(obs.shape[:-1], dtype=torch.long)
    returns = episode_returns(push_right, fastes.key(1), (3, 2))
    assert returns.shape == (3, 2)
    assert torch.all((returns > 0) & (returns < 500))  # always pushing right falls over quickly
    # A balancing controller (push toward the pole's lean) survives to the 500-step limit.
    lean = lambda obs: (obs[..., 2] + 0.5 * obs[..., 3] > 0).long()
    assert torch.equal(episode_returns(lean, fastes.key(2), (4,)), torch.full((4,), 500.0))
    s = cartpole.reset(fastes.key(3), (2,))
    assert torch.all(s.obs.abs() <= 0.05)
    assert torch.equal(s.obs, cartpole.reset(fastes.key(3), (2,)).obs)  # same key, same starts


def test_cartpole_example_reaches_500_within_200_generations():
    # Measured: 48 generations, 2.4 s (seed 0) on the 2-core dev CPU.
    import importlib.util
    import pathlib

    path = pathlib.Path(__file__).resolve().parent.parent / "examples" / "02_cartpole.py"
    spec = importlib.util.spec_from_file_location("cartpole_example", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    assert mod.main([]) >= 500.0
