import numpy as np
import pytest
import torch

import fastes
from fastes.envs import acrobot, cartpole, episode_returns, get, mountain_car, pendulum, rollout


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


def _controller(mod, obs, rng):
    """Random actions mixed with a heuristic that reaches each env's goal (so termination is
    exercised too): pump energy on Acrobot / MountainCar, random torques on Pendulum."""
    if mod is acrobot:
        return int(rng.integers(0, 3)) if rng.random() < 0.1 else 2 if obs[5] > 0 else 0
    a = rng.uniform(-1.3, 1.3, size=(1,)) * mod.ACTION_HIGH  # beyond the bounds: clipping
    if mod is mountain_car and rng.random() < 0.8:
        a = np.sign([obs[1] + 1e-6]) * rng.uniform(0.5, 1.3)
    return a.astype(np.float32)


@pytest.mark.parametrize("mod", [acrobot, pendulum, mountain_car], ids=lambda m: m.GYM_ID)
def test_env_matches_gymnasium_step_for_step(mod):
    # Each step, gymnasium's env is set to our state and both take the same action, for whole
    # episodes (random actions mixed with a goal-reaching heuristic). Tolerances:
    # * MountainCar's state is float32 on both sides and its maths is emulated exactly: equal.
    # * Acrobot / Pendulum call cos/sin; torch's (SLEEF) and libm's differ by one ulp in ~0.1% of
    #   arguments (measured on 200k points), which one RK4 step spreads through at most ~200
    #   operations on terms of size ≤ (9π)² ≈ 800: 2^-52·800·200 ≈ 4e-11 on the float64 state
    #   (measured over 20 episodes: max 1.8e-15, nonzero on 7 of 2259 Acrobot steps and 3 of 4000
    #   Pendulum steps). Float32 observations may then round one ulp apart (rtol 2^-23).
    # * Pendulum's reward may also differ by an ulp of its float32 torque term 0.001·u² ≤ 0.004
    #   (numpy's scalar power rounds differently): 0.004·2^-23 ≈ 5e-10.
    gym = pytest.importorskip("gymnasium")
    env = gym.make(mod.GYM_ID).unwrapped
    rng = np.random.default_rng(0)
    exact = mod is mountain_car
    state_tol = 0.0 if exact else 4e-11
    reward_tol = 1e-9 if mod is pendulum else 0.0
    terminations = 0
    for i in range(4):
        s = mod.reset(fastes.key(i), (1,))
        env.reset(seed=0)
        obs = s.obs[0].numpy()
        for t in range(mod.MAX_STEPS):
            env.state = (s.obs if exact else s.s)[0].numpy().copy()
            a = _controller(mod, obs, rng)
            obs, reward, terminated, _, _ = env.step(a)
            s, r, term, trunc = mod.step(s, torch.as_tensor(a)[None])
            ours = (s.obs if exact else s.s)[0].numpy()
            assert np.abs(ours - env.state).max() <= state_tol, (i, t)
            np.testing.assert_allclose(s.obs[0].numpy(), obs, rtol=0 if exact else 2**-23)
            assert abs(float(r[0]) - reward) <= reward_tol, (i, t, float(r[0]), reward)
            assert bool(term[0]) == terminated
            assert bool(trunc[0]) == (t == mod.MAX_STEPS - 1 and not terminated)
            if terminated:
                terminations += 1
                break
    assert terminations == (0 if mod is pendulum else 4)  # the goal was reached every episode


def test_registry_and_rollout_statistics():
    assert get("acrobot") is acrobot
    with pytest.raises(ValueError, match="unknown environment 'pong'"):
        get("pong")
    with pytest.raises(ValueError, match="batch must be a tuple"):
        cartpole.reset(fastes.key(0), 3)
    out = rollout(lambda o: torch.ones(o.shape[:-1], dtype=torch.long), fastes.key(4), (2, 3),
                  observe=True)  # fmt: skip
    assert torch.equal(out.lengths.double(), out.returns)  # CartPole: reward 1 per live step
    # The observation moments count exactly the observations acted on (one per live step).
    assert float(out.obs_stats.count) == float(out.lengths.sum())


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
    # Measured: 20 generations, 2.5 s (seed 0; seeds 0-4: 15-25 generations) on the 2-core dev
    # CPU. The goal: the unperturbed policy scores 500 on 3 evaluations in a row.
    import importlib.util
    import pathlib

    path = pathlib.Path(__file__).resolve().parent.parent / "examples" / "02_cartpole.py"
    spec = importlib.util.spec_from_file_location("cartpole_example", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    result = mod.main([])
    assert result.stop_reason == "goal" and result.generation <= 200
    assert result.history[-1]["score"] == 500.0
