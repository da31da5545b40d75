import numpy as np
import pytest
import torch

import fastes

try:
    import gymnasium
except ImportError:  # the gymnasium tests skip
    gymnasium = None
from fastes import normalization as nz
from fastes.rl import EnvTask, MLPPolicy


def test_running_norm_merges_batches_like_one_pass():
    x = torch.randn(1000, 5, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    x = x * torch.tensor([1.0, 10.0, 0.1, 3.0, 100.0]) + 7
    norm = nz.running_norm(5)
    for part in torch.split(x, [1, 3, 496, 500]):
        norm = nz.merge(norm, nz.moments(part))
    mean, std = nz.mean_std(norm)
    # Chan's update is exact algebra; float64 rounding over 4 merges leaves ~1e-15 relative.
    torch.testing.assert_close(mean, x.mean(0), rtol=1e-13, atol=0)
    torch.testing.assert_close(std, x.std(0, unbiased=False), rtol=1e-13, atol=0)
    mask = torch.arange(1000) % 3 == 0
    masked = nz.moments(x, mask)
    assert float(masked.count) == int(mask.sum())
    torch.testing.assert_close(masked.mean, x[mask].mean(0), rtol=1e-13, atol=0)
    # Before two observations: identity; normalize clips to ±clip.
    m0, s0 = nz.mean_std(nz.running_norm(2))
    assert torch.equal(m0, torch.zeros(2)) and torch.equal(s0, torch.ones(2))
    big = nz.normalize(norm, torch.full((1, 5), 1e9), clip=5.0)
    assert torch.equal(big, torch.full((1, 5), 5.0))
    with pytest.raises(ValueError, match="cannot merge statistics of 5 and 2 features"):
        nz.merge(norm, nz.running_norm(2))
    with pytest.raises(ValueError, match="obs_dim must be a positive int; got 0"):
        nz.running_norm(0)


def test_policy_batched_unbatched_numpy_and_torch_agree():
    pol = MLPPolicy(4, 3, (8, 8))
    members = [pol.init(fastes.key(i)) for i in range(3)]
    for p in members:  # a non-neutral output layer, so actions vary
        p["w2"] = torch.randn(8, 3, generator=torch.Generator().manual_seed(1))
    stacked = {k: torch.stack([m[k] for m in members]) for k in members[0]}
    obs = torch.randn(3, 5, 4, generator=torch.Generator().manual_seed(2))
    norm = (torch.full((4,), 0.5), torch.full((4,), 2.0))
    batched = pol.act(stacked, obs, norm)
    assert batched.shape == (3, 5)
    for m in range(3):
        assert torch.equal(batched[m], pol.act(members[m], obs[m], norm))
        np_norm = tuple(t.double().numpy() for t in norm)
        out = pol.act(pol.numpy_params(members[m]), obs[m].double().numpy(), np_norm)
        assert np.array_equal(out, batched[m].numpy())
    cont = MLPPolicy(3, 2, (), discrete=False, low=-2.0, high=2.0)
    p = cont.init(fastes.key(0))
    p["w0"] = torch.full((3, 2), 100.0)
    a = cont.act(p, torch.tensor([[1.0, 1.0, 1.0], [-1.0, -1.0, -1.0]]))
    assert torch.equal(a, torch.tensor([[2.0, 2.0], [-2.0, -2.0]]))  # squashed into [low, high]
    with pytest.raises(ValueError, match="act_dim must be a positive int; got 0"):
        MLPPolicy(3, 0)
    with pytest.raises(ValueError, match="need low < high"):
        MLPPolicy(3, 1, discrete=False, low=1.0, high=1.0)


def test_env_task_common_random_numbers_and_normaliser():
    task = EnvTask("cartpole", hidden=(4,), episodes=3, normalize_obs=True)
    p = task.init_params(fastes.key(0))
    p["w1"] = torch.randn(4, 2, generator=torch.Generator().manual_seed(0))
    same = {k: torch.stack([v, v]) for k, v in p.items()}  # two identical members
    f = task.fitness(same, fastes.key(5))
    assert f[0] == f[1]  # same params, same episodes (common random numbers)
    assert torch.equal(task.fitness(same, fastes.key(5)), f)  # same key, same result
    info = task.end_generation()
    assert float(task.norm.count) == info["env_steps"]  # one observation per step acted on
    before = task.norm
    task.end_generation()  # nothing new observed: unchanged
    assert torch.equal(task.norm.mean, before.mean)


def test_gym_task_is_the_same_for_any_worker_count():
    pytest.importorskip("gymnasium")
    from fastes.rl.gym import GymTask, _policy_for

    results = []
    for workers in (0, 2):
        task = GymTask("CartPole-v1", hidden=(4,), episodes=2, workers=workers, eval_episodes=3)
        params = task.init_params(fastes.key(0))
        params["w1"] = torch.randn(4, 2, generator=torch.Generator().manual_seed(3))
        stacked = {k: torch.stack([v, 0.5 * v, v]) for k, v in params.items()}
        try:
            f = task.fitness(stacked, fastes.key(7))
            info = task.end_generation()
            ev = task.evaluate(params, fastes.key(8))
        finally:
            task.close()
        results.append((f, info, ev, task.norm))
    (f0, i0, e0, n0), (f2, i2, e2, n2) = results
    assert torch.equal(f0, f2) and i0 == i2 and e0 == e2
    assert torch.equal(n0.mean, n2.mean) and torch.equal(n0.m2, n2.m2)
    assert f0[0] == f0[2]  # identical members, identical episodes
    assert float(n0.count) == i0["env_steps"] > 0
    with pytest.raises(ValueError, match="needs finite, uniform action bounds"):
        _policy_for(_Env(), (4,), gymnasium)


def test_gym_reward_clip_shapes_the_fitness_and_not_the_evaluation():
    # CartPole pays +1 a step: clipped to ±0.5 the fitness is half the return, exactly (sums of
    # halves of small integers are exact); the unperturbed evaluation reports true returns.
    pytest.importorskip("gymnasium")
    from fastes.rl.gym import GymTask

    out = {}
    for clip in (None, 0.5):
        task = GymTask("CartPole-v1", hidden=(4,), episodes=2, workers=0, eval_episodes=2,
                       reward_clip=clip)  # fmt: skip
        params = task.init_params(fastes.key(0))
        params["w1"] = torch.randn(4, 2, generator=torch.Generator().manual_seed(3))
        stacked = {k: torch.stack([v, 0.5 * v]) for k, v in params.items()}
        out[clip] = task.fitness(stacked, fastes.key(7)), task.evaluate(params, fastes.key(8))
    assert torch.equal(out[0.5][0], 0.5 * out[None][0]) and bool((out[None][0] > 1).all())
    assert out[0.5][1] == out[None][1]
    for bad in (0.0, -1.0, float("nan")):
        with pytest.raises(ValueError, match="reward_clip"):
            GymTask("CartPole-v1", workers=0, reward_clip=bad)


def test_box2d_episodes_do_not_depend_on_the_episodes_before_them():
    # Box2D envs keep one b2World across resets: a member's return depended on the members the
    # same process had played before it (here: 3rd in a job list vs alone), so on the worker
    # count and scheduling. GymTask makes them fresh per job; the member's fitness is now the
    # same either way (small weights keep the walker up long enough for it to show).
    pytest.importorskip("Box2D")
    from fastes.rl.gym import GymTask

    def fitness(order):
        task = GymTask("BipedalWalker-v3", hidden=(), episodes=2, workers=0, normalize_obs=False)
        p = task.init_params(fastes.key(0))
        g = torch.Generator().manual_seed(1)
        cand = [{k: torch.randn(v.shape, generator=g) * 0.05 for k, v in p.items()} for _ in order]
        return task.fitness({k: torch.stack([cand[i][k] for i in order]) for k in p}, fastes.key(5))

    alone, after_others = fitness([0]), fitness([1, 2, 0])
    assert torch.equal(alone[0], after_others[2])


class _Env:  # a Box action space with per-dimension bounds
    observation_space = gymnasium.spaces.Box(-1, 1, (3,)) if gymnasium else None
    action_space = (
        gymnasium.spaces.Box(-np.arange(1.0, 3.0), np.arange(1.0, 3.0)) if gymnasium else None
    )


def test_gym_task_continuous_mujoco_env():
    # A MuJoCo env with a Box action space: the default policy squashes into its bounds (±3).
    pytest.importorskip("mujoco")
    from fastes.rl.gym import GymTask

    task = GymTask("InvertedPendulum-v5", hidden=(8,), episodes=1, workers=0, eval_episodes=2)
    assert (task.policy.discrete, task.policy.low, task.policy.high) == (False, -3.0, 3.0)
    params = task.init_params(fastes.key(0))
    stacked = {k: torch.stack([v, v + 0.1]) for k, v in params.items()}
    f = task.fitness(stacked, fastes.key(1))
    assert f.shape == (2,) and bool(torch.isfinite(f).all()) and bool((f >= 1).all())
    assert task.evaluate(params, fastes.key(2))["eval_length"] >= 1


def test_gym_workers_exit_when_the_training_process_is_killed(tmp_path):
    pytest.importorskip("gymnasium")
    import os
    import signal
    import subprocess
    import sys
    import time

    code = (
        "import fastes, torch\n"
        "from fastes.rl.gym import GymTask\n"
        "if __name__ == '__main__':\n"
        "    t = GymTask('CartPole-v1', hidden=(4,), workers=2)\n"
        "    p = {k: v[None].repeat(4, *[1] * v.dim()) for k, v in "
        "t.init_params(fastes.key(0)).items()}\n"
        "    t.fitness(p, fastes.key(1))\n"
        "    print(*t._pool._processes, flush=True)\n"
        "    import time; time.sleep(60)\n"
    )
    script = tmp_path / "run.py"
    script.write_text(code)
    proc = subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE, text=True,
                            env={**os.environ, "PYTHONPATH": os.getcwd()})  # fmt: skip
    pids = [int(x) for x in proc.stdout.readline().split()]
    assert len(pids) == 2
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    deadline = time.monotonic() + 10
    alive = pids
    while alive and time.monotonic() < deadline:
        time.sleep(0.2)
        alive = [p for p in pids if _alive(p)]
    assert not alive, f"workers {alive} outlived their killed parent"


def _alive(pid: int) -> bool:
    import os

    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie (exited, not yet reaped by init) counts as gone.
    with open(f"/proc/{pid}/stat") as fh:
        return fh.read().split(") ")[1][0] != "Z"


def test_gym_task_init_errors_come_alone_and_workers_are_validated(capfd):
    # Defect: a failing GymTask.__init__ added "Exception ignored ... no attribute '_pool'".
    pytest.importorskip("gymnasium")
    from fastes.rl.gym import GymTask

    with pytest.raises(ValueError, match=r"workers must be an int >= 0 or None .*got -1"):
        GymTask("CartPole-v1", workers=-1)
    with pytest.raises(gymnasium.error.Error):
        GymTask("NoSuchEnv-v0", workers=0)
    import gc

    gc.collect()
    assert "Exception ignored" not in capfd.readouterr().err
    assert 'if __name__ == "__main__":' in GymTask.__doc__


def test_policy_params_and_env_task_follow_the_device():
    # Defect: MLPPolicy.init took no device, so EnvTask(device=...) got CPU params.
    policy = MLPPolicy(4, 2, (3,))
    p = policy.init(fastes.key(0), device="meta")
    assert {v.device.type for v in p.values()} == {"meta"}
    task = EnvTask("cartpole", hidden=(3,), device="meta")
    assert {v.device.type for v in task.init_params(fastes.key(0)).values()} == {"meta"}
    cpu = policy.init(fastes.key(0), dtype=torch.float64)
    assert all(v.dtype == torch.float64 for v in cpu.values())


def test_tasks_do_not_depend_on_the_policy_parameter_names():
    # EnvTask reads the member count from any leaf, not from MLPPolicy's "w0".
    task = EnvTask("cartpole", hidden=(3,), episodes=1)
    params = task.init_params(fastes.key(0))
    stacked = {k: v.expand(5, *v.shape).clone() for k, v in params.items()}
    stacked = dict(reversed(list(stacked.items())))  # first leaf is now "b1", not "w0"
    assert task.fitness(stacked, fastes.key(1)).shape == (5,)
    assert isinstance(task, fastes.tasks.Task)


def _gru_params(policy, seed=0):
    p = policy.init(fastes.key(seed))
    p["w_out"] = torch.randn(
        policy.hidden, policy.act_dim, generator=torch.Generator().manual_seed(seed)
    )
    return p


def test_gru_policy_torch_numpy_and_batched_paths_agree():
    from fastes.rl import GRUPolicy

    pol = GRUPolicy(4, 2, 6)
    members = [_gru_params(pol, s) for s in range(3)]
    stacked = {k: torch.stack([m[k] for m in members]) for k in members[0]}
    numpy_members = [pol.numpy_params(m) for m in members]
    obs = torch.randn(3, 5, 4, generator=torch.Generator().manual_seed(9))  # (M, E, obs)
    h_b, h_t, h_np = None, [None] * 3, [None] * 3
    for _ in range(4):  # four steps: the state carries
        a_b, h_b = pol.act(stacked, obs, None, h_b)
        for m in range(3):
            a_t, h_t[m] = pol.act(members[m], obs[m], None, h_t[m])
            a_np, h_np[m] = pol.act(numpy_members[m], obs[m].double().numpy(), None, h_np[m])
            assert torch.equal(a_b[m], a_t) and np.array_equal(a_t.numpy(), a_np)
            # Batched vs one-member matmuls, float32 vs float64: values ~1, a few ulps apart.
            torch.testing.assert_close(h_b[m], h_t[m], rtol=0, atol=1e-6)
            torch.testing.assert_close(h_t[m].double(), torch.from_numpy(h_np[m]), rtol=0,
                                       atol=1e-6)  # fmt: skip
        obs = obs.roll(1, dims=1)
    with pytest.raises(ValueError, match="hidden must be an int >= 1"):
        GRUPolicy(4, 2, 0)


def test_gru_state_resets_per_episode_and_gym_matches_the_torch_policy():
    pytest.importorskip("gymnasium")
    from fastes.rl import GRUPolicy
    from fastes.rl.gym import run_episodes

    pol = GRUPolicy(4, 2, 6)
    params = _gru_params(pol, 11)  # a random GRU that balances for 63 steps from seed 3
    p = pol.numpy_params(params)
    both, lengths, _ = run_episodes("CartPole-v1", {}, pol, p, None, [3, 4])
    alone, _, _ = run_episodes("CartPole-v1", {}, pol, p, None, [4])
    assert both[1] == alone[0]  # the second episode starts from a fresh state
    # The torch path (float32) drives gymnasium's env to the same return as the numpy path.
    env = gymnasium.make("CartPole-v1")
    obs, _ = env.reset(seed=3)
    total, h, done, actions = 0.0, None, False, set()
    while not done:
        a, h = pol.act(params, torch.as_tensor(obs, dtype=torch.float32), None, h)
        obs, r, term, trunc, _ = env.step(int(a))
        total, done = total + r, term or trunc
        actions.add(int(a))
    assert total == both[0] == lengths[0]
    assert actions == {0, 1}  # the state and observations really steer it


@pytest.mark.parametrize("kind", ["gru", "lstm"])
def test_recurrent_env_task_batched_members_equal_each_member_alone(kind):
    from fastes.rl import GRUPolicy, LSTMPolicy

    pol = (GRUPolicy if kind == "gru" else LSTMPolicy)(6, 3, 5)
    task = EnvTask("acrobot", policy=pol, episodes=2)
    members = [_gru_params(pol, s) for s in (3, 7)]
    stacked = {k: torch.stack([m[k] for m in members]) for k in members[0]}
    together = task.fitness(stacked, fastes.key(4))
    alone = [task.fitness({k: v[None] for k, v in m.items()}, fastes.key(4)) for m in members]
    assert torch.equal(together, torch.cat(alone))


@pytest.mark.parametrize("kind", ["gru", "lstm"])
def test_recurrent_cells_equal_torch_nn_cells(kind):
    from fastes.rl import GRUPolicy, LSTMPolicy

    pol = (GRUPolicy if kind == "gru" else LSTMPolicy)(4, 2, 5)
    p = {k: torch.randn(v.shape, generator=torch.Generator().manual_seed(i))
         for i, (k, v) in enumerate(pol.init(fastes.key(0)).items())}  # fmt: skip
    cell = (torch.nn.GRUCell if kind == "gru" else torch.nn.LSTMCell)(4, 5)
    with torch.no_grad():
        cell.weight_ih.copy_(p["w_ih"].T)
        cell.weight_hh.copy_(p["w_hh"].T)
        cell.bias_ih.copy_(p["b_ih"])
        cell.bias_hh.copy_(p["b_hh"])
    x = torch.randn(6, 3, 4, generator=torch.Generator().manual_seed(7))  # 6 steps, batch 3
    state, ref = None, None
    for t in range(6):
        a, state = pol.act(p, x[t], None, state)
        with torch.no_grad():
            ref = cell(x[t], ref)
        ours_h = state[0] if kind == "lstm" else state
        ref_h = ref[0] if kind == "lstm" else ref
        # Same equations, different fusing of the matmuls: values ~1, within a few float32 ulps.
        torch.testing.assert_close(ours_h, ref_h, rtol=0, atol=1e-6)
        assert torch.equal(a, (ours_h @ p["w_out"] + p["b_out"]).argmax(-1))


def test_filming_without_an_opengl_context_says_how_to_get_one(monkeypatch):
    # MuJoCo renders through OpenGL; on a machine without a display its raw error (a
    # mujoco.FatalError about "an OpenGL platform library") becomes one that names MUJOCO_GL.
    from fastes.rl import video

    def no_context(*args, **kwargs):
        raise Exception("an OpenGL platform library has not been loaded into this process")

    policy = MLPPolicy(17, 6, hidden=(), discrete=False)
    params = {k: torch.zeros(v.shape) for k, v in policy.init(fastes.key(0)).items()}
    monkeypatch.setattr(video, "run_episodes", no_context)
    with pytest.raises(RuntimeError, match="'HalfCheetah-v5'.*MUJOCO_GL=egl") as e:
        video.record("HalfCheetah-v5", policy, params, None, [0])
    assert "OpenGL platform library" in str(e.value.__cause__)

    def other(*args, **kwargs):
        raise ValueError("something else")

    monkeypatch.setattr(video, "run_episodes", other)
    with pytest.raises(ValueError, match="something else"):
        video.record("HalfCheetah-v5", policy, params, None, [0])


def test_mujoco_envs_are_filmed_from_their_tracking_camera(monkeypatch):
    # gymnasium documents that its MuJoCo envs render from a tracking camera; without a camera
    # argument gymnasium 1.x renders a free one that a fast HalfCheetah runs out of. record()
    # asks for the model's "track" camera unless a camera was chosen; other envs are untouched.
    pytest.importorskip("gymnasium")
    from fastes.rl import video

    seen = []

    def capture(env_id, env_kwargs, *args, **kwargs):
        seen.append(env_kwargs)
        return np.zeros(1), np.zeros(1), None

    monkeypatch.setattr(video, "run_episodes", capture)
    policy = MLPPolicy(4, 2, hidden=(), discrete=True)
    params = {k: torch.zeros(v.shape) for k, v in policy.init(fastes.key(0)).items()}
    video.record("HalfCheetah-v5", policy, params, None, [0])
    video.record("HalfCheetah-v5", policy, params, None, [0], env_kwargs={"camera_id": 0})
    video.record("CartPole-v1", policy, params, None, [0])
    assert seen == [{"camera_name": "track"}, {"camera_id": 0}, {}]
