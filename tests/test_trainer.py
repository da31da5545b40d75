import math
import os
import signal
import subprocess
import sys
import time

import pytest
import torch

import fastes
from fastes._io import atomic_write
from fastes.rl import EnvTask, FunctionTask
from fastes.trainer import load_checkpoint


def _cartpole_trainer(run_dir, generations, **kw):
    task = EnvTask("cartpole", hidden=(8,), episodes=2, normalize_obs=True, eval_episodes=3)
    params = task.init_params(fastes.key(1))
    strategy = fastes.strategies.make(
        "openai_es", params, population_size=16, mode="batched",
        sigma=fastes.schedules.exponential_decay(0.1, 0.95), learning_rate=0.05,
    )  # fmt: skip
    return fastes.Trainer(
        strategy, task, key=fastes.key(0), generations=generations, params=params,
        eval_every=3, run_dir=run_dir, checkpoint_every=2, progress=False, **kw,
    )  # fmt: skip


def test_resumed_run_is_bit_identical_to_an_uninterrupted_one(tmp_path):
    full = _cartpole_trainer(tmp_path / "full", 9).run()
    first = _cartpole_trainer(tmp_path / "split", 5).run()  # stops (and saves) at 5
    assert first.generation == 5
    # A fresh trainer (fresh strategy, task and normaliser objects) picks up the checkpoint.
    resumed = _cartpole_trainer(tmp_path / "split", 9).run(resume=True)
    assert resumed.generation == 9
    for k in full.params:
        assert torch.equal(full.params[k], resumed.params[k]), k
        assert torch.equal(full.best_params[k], resumed.best_params[k]), k
    strip = lambda h: [{k: v for k, v in r.items() if k != "time_s"} for r in h]
    assert strip(full.history) == strip(resumed.history)
    a = load_checkpoint(tmp_path / "full" / "checkpoint.pt")
    b = load_checkpoint(tmp_path / "split" / "checkpoint.pt")
    assert all(torch.equal(x, y) for x, y in zip(a["task"]["norm"], b["task"]["norm"]))
    # σ decays once per generation (not once per parameter tensor, PyTorch-ES's bug).
    assert [r["sigma"] for r in full.history] == [0.1 * 0.95**g for g in range(9)]


def test_killed_cli_run_resumes_to_the_same_params(tmp_path):
    # SIGKILL a `fastes train` process once a few checkpoints exist, `fastes resume` it, and
    # compare with an uninterrupted run: the final strategy states are equal bit for bit.
    args = ["train", "cartpole", "--generations", "14", "--checkpoint-every", "1",
            "--goal", "1e9", "--population", "16", "--episodes", "2", "--hidden", "8",
            "--no-progress"]  # fmt: skip
    cli = [sys.executable, "-m", "fastes"]
    env = {**os.environ, "PYTHONPATH": os.getcwd()}
    subprocess.run([*cli, *args, "--run-dir", str(tmp_path / "full")], check=True, env=env,
                   capture_output=True)  # fmt: skip
    killed = tmp_path / "killed"
    proc = subprocess.Popen([*cli, *args, "--run-dir", str(killed)], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        path = killed / "checkpoint.pt"
        if path.exists() and load_checkpoint(path)["generation"] >= 3:
            break
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    done = load_checkpoint(killed / "checkpoint.pt")["generation"]
    assert 3 <= done < 14, done  # killed mid-run
    out = subprocess.run([*cli, "resume", str(killed), "--no-progress"], check=True, env=env,
                         capture_output=True, text=True)  # fmt: skip
    assert "after 14 generations" in out.stdout
    a = load_checkpoint(tmp_path / "full" / "checkpoint.pt")
    b = load_checkpoint(killed / "checkpoint.pt")
    assert a["generation"] == b["generation"] == 14
    for x, y in zip(a["strategy_state"], b["strategy_state"], strict=True):
        assert torch.equal(x, y)


def _sphere_trainer(scores, **kw):
    """OpenAI-ES on a sphere whose 'evaluation' replays a fixed sequence of scores."""
    it = iter(scores)
    task = FunctionTask(lambda p: -(p["x"] ** 2).sum(), eval_fn=lambda p, k: next(it))
    params = {"x": torch.ones(4)}
    strategy = fastes.strategies.make("openai_es", params, population_size=8)
    return fastes.Trainer(strategy, task, key=fastes.key(0), params=params, eval_every=1,
                          progress=False, **kw)  # fmt: skip


def test_goal_needs_consecutive_evaluations():
    scores = [1, 5, 5, 1, 5, 0, 5, 5, 5, 9, 9]
    res = _sphere_trainer(scores, generations=11, goal=5.0, goal_count=3).run()
    assert (res.stop_reason, res.generation) == ("goal", 9)  # the third 5 in a row
    assert res.best_score == 5.0
    # goal=0 is a real goal (PyTorch-ES treated it as "no goal").
    res = _sphere_trainer([-1, 0, 3], generations=3, goal=0.0).run()
    assert (res.stop_reason, res.generation) == ("goal", 2)
    res = _sphere_trainer([1, 2, 3], generations=3).run()  # no goal: all generations
    assert (res.stop_reason, res.generation, res.best_score) == ("generations", 3, 3.0)


def test_outputs_csv_png_tensorboard_and_best(tmp_path):
    pytest.importorskip("matplotlib")
    tb = pytest.importorskip("tensorboard.backend.event_processing.event_accumulator")
    res = _cartpole_trainer(tmp_path, 4, plot=True, tensorboard=True).run()
    rows = (tmp_path / "history.csv").read_text().splitlines()
    assert len(rows) == 1 + 4 and rows[0].startswith("generation,fitness_mean")
    assert (tmp_path / "curve.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    best = torch.load(tmp_path / "best.pt", weights_only=True)
    assert best["score"] == res.best_score
    assert all(torch.equal(best["params"][k], res.best_params[k]) for k in best["params"])
    acc = tb.EventAccumulator(str(tmp_path / "tb"))
    acc.Reload()
    steps = [e.step for e in acc.Scalars("fitness_mean")]
    assert steps == [0, 1, 2, 3]
    assert not [f for f in os.listdir(tmp_path) if f.endswith(".tmp")]


def test_atomic_write_keeps_the_old_file_on_failure(tmp_path):
    path = tmp_path / "ckpt.pt"
    atomic_write(path, lambda fh: fh.write(b"old"))

    def crash(fh):
        fh.write(b"half-written")
        raise RuntimeError("disk full")

    with pytest.raises(RuntimeError, match="disk full"):
        atomic_write(path, crash)
    assert path.read_bytes() == b"old"
    assert os.listdir(tmp_path) == ["ckpt.pt"]  # no temp file left behind


def test_bad_arguments_are_named(tmp_path):
    params = {"x": torch.ones(3)}
    strategy = fastes.strategies.make("openai_es", params, population_size=4)
    sphere = lambda p: -(p["x"] ** 2).sum()
    with pytest.raises(ValueError, match="generations must be an int >= 1; got 0"):
        fastes.Trainer(strategy, sphere, key=fastes.key(0), generations=0, params=params)
    with pytest.raises(ValueError, match="mode 'batched' but the strategy was built with"):
        fastes.Trainer(strategy, EnvTask("cartpole"), key=fastes.key(0), generations=1)
    with pytest.raises(TypeError, match="strategy must be a fastes Strategy"):
        fastes.Trainer(object(), sphere, key=fastes.key(0), generations=1, params=params)
    _cartpole_trainer(tmp_path, 2).run()
    other = _cartpole_trainer(tmp_path, 4)
    other.strategy.name = "pgpe"
    with pytest.raises(ValueError, match="is for strategy 'openai_es', not 'pgpe'"):
        other.run(resume=True)
    with pytest.raises(ValueError, match="not a fastes Trainer checkpoint"):
        torch.save({"x": 1}, tmp_path / "junk.pt")
        load_checkpoint(tmp_path / "junk.pt")


def test_atomic_write_gives_files_the_usual_permissions(tmp_path):
    path = tmp_path / "out.csv"
    atomic_write(path, lambda fh: fh.write("a,b\n"), mode="w")
    old = os.umask(0o022)
    os.umask(old)
    assert (path.stat().st_mode & 0o777) == 0o666 & ~old  # not mkstemp's 0600


@pytest.mark.parametrize(
    "name,torch_opt",
    [(n, False) for n in sorted(fastes.strategies.REGISTRY)] + [("openai_es", True)],
)
def test_every_strategy_checkpoints_and_resumes_bit_identically(
    name, torch_opt, tmp_path, stop_and_resume
):
    # The checkpoint stores the strategy state as pytree leaves and rebuilds it from a fresh
    # strategy's template: this must hold for every state layout (CMA's matrices, IPOP's nested
    # restart state, ARS's observation statistics, optimizer states — torch.optim's too, whose
    # state torch creates lazily on the first step).
    settings = dict(fastes.strategies.TEST_FUNCTION_SETTINGS[name])
    settings["population_size"] = 8 if name != "cem" else 16
    if torch_opt:
        settings["optimizer"] = fastes.optim.torch_optimizer(torch.optim.RAdam, lr=0.05)
    params = {"x": torch.linspace(-1, 1, 5), "y": torch.ones(2, dtype=torch.float64)}
    sphere = lambda p: -(p["x"] ** 2).sum() - (p["y"] ** 2).sum().float()

    def trainer(run_dir, generations):
        s = fastes.strategies.make(name, params, **settings)
        return fastes.Trainer(s, sphere, key=fastes.key(3), generations=generations,
                              params=params, run_dir=run_dir, checkpoint_every=2,
                              progress=False)  # fmt: skip

    full, resumed = stop_and_resume(trainer, 3, 5)
    for k in params:
        assert torch.equal(full.params[k], resumed.params[k]), k
    a = load_checkpoint(tmp_path / "full" / "checkpoint.pt")["strategy_state"]
    b = load_checkpoint(tmp_path / "split" / "checkpoint.pt")["strategy_state"]
    assert len(a) == len(b)
    for x, y in zip(a, b, strict=True):  # bit-identical; IPOP's history is NaN-padded
        torch.testing.assert_close(x, y, rtol=0, atol=0, equal_nan=True)


def test_minimize_is_honoured_for_best_goal_and_summaries(tmp_path):
    # Defect: the Trainer compared raw fitness with `>`: a minimizing CMA-ES stopped "on goal"
    # after 2 generations at 47.3 and best.pt kept the worst params.
    params = {"x": torch.full((5,), 3.0)}
    sphere = lambda q: (q["x"] ** 2).sum()
    strategy = fastes.strategies.make("cma_es", params, sigma=0.5, minimize=True)
    trainer = fastes.Trainer(strategy, sphere, key=fastes.key(0), params=params, generations=300,
                             goal=1e-3, goal_count=2, run_dir=tmp_path, progress=False)  # fmt: skip
    res = trainer.run()
    assert res.stop_reason == "goal" and res.best_score <= 1e-3
    scores = [r["fitness_mean"] for r in res.history]
    assert res.best_score == min(scores)  # the lowest mean fitness, not the highest
    assert float(sphere(res.best_params)) < 1.0  # best params solve the problem (start: 45)
    saved = torch.load(tmp_path / "best.pt", weights_only=True)
    assert saved["score"] == res.best_score
    assert all(r["fitness_best"] == r["fitness_min"] for r in res.history)
    assert load_checkpoint(tmp_path / "checkpoint.pt")["minimize"] is True


def test_a_run_shorter_than_eval_every_is_evaluated_and_resumes_as_if_not(tmp_path):
    # Defect: 3 generations with eval_every=10 were never scored (best score -inf, best.pt
    # absent, `fastes eval --which best` scored the initial params).
    def trainer(run_dir, generations):
        t = _cartpole_trainer(run_dir, generations)
        t.eval_every = 10
        return t

    short = trainer(tmp_path / "s", 3).run()
    assert math.isfinite(short.best_score)
    assert short.history[-1]["final_eval"] == 1 and "score" in short.history[-1]
    for k in short.params:  # the evaluated params are the final ones
        assert torch.equal(short.best_params[k], short.params[k])
    assert torch.load(tmp_path / "s" / "best.pt", weights_only=True)["score"] == short.best_score
    # Resumed to 12 generations it equals a run that never stopped (history, best, params).
    resumed = trainer(tmp_path / "s", 12).run(resume=True)
    full = trainer(tmp_path / "f", 12).run()
    strip = lambda h: [{k: v for k, v in r.items() if k != "time_s"} for r in h]
    assert strip(full.history) == strip(resumed.history)
    assert full.best_score == resumed.best_score
    for k in full.params:
        assert torch.equal(full.params[k], resumed.params[k])
        assert torch.equal(full.best_params[k], resumed.best_params[k])


@pytest.mark.parametrize(
    "damage,match",
    [
        (b"", "is empty"),
        (b"garbage, not a zip file", "cannot be read"),
        (None, "cannot be read"),  # truncated to half its size
    ],
)
def test_damaged_checkpoints_name_the_file_and_change_nothing(tmp_path, damage, match):
    _cartpole_trainer(tmp_path, 2).run()
    path = tmp_path / "checkpoint.pt"
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2] if damage is None else damage)
    before = path.read_bytes()
    with pytest.raises(fastes.trainer.CheckpointError, match=match) as err:
        _cartpole_trainer(tmp_path, 4).run(resume=True)
    assert str(path) in str(err.value) and "weights_only" not in str(err.value)
    assert path.read_bytes() == before
    with pytest.raises(fastes.trainer.CheckpointError, match="does not exist"):
        load_checkpoint(tmp_path / "missing.pt")


def test_trainer_logs_a_clip_of_the_agent_to_tensorboard(tmp_path):
    pytest.importorskip("imageio")
    pytest.importorskip("tensorboard")
    import io

    from PIL import Image
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    task = fastes.rl.EnvTask("cartpole", hidden=(4,), episodes=1, eval_episodes=1)
    params = task.init_params(fastes.key(1))
    s = fastes.strategies.make("openai_es", params, population_size=8, mode=task.mode)
    with pytest.raises(ValueError, match="video_every logs clips to TensorBoard"):
        fastes.Trainer(s, task, key=fastes.key(0), generations=2, video_every=1)
    trainer = fastes.Trainer(s, task, key=fastes.key(0), generations=4, params=params,
                             run_dir=tmp_path, tensorboard=True, eval_every=1, video_every=2,
                             progress=False)  # fmt: skip
    trainer.run()
    events = EventAccumulator(str(tmp_path / "tb"), size_guidance={"images": 0})
    events.Reload()
    clips = events.Images("clip")
    assert [c.step for c in clips] == [1, 3]  # evaluations 2 and 4 (every second one)
    gif = Image.open(io.BytesIO(clips[0].encoded_image_string))
    assert gif.format == "GIF" and gif.n_frames >= 2
    assert (gif.width, gif.height) == (clips[0].width, clips[0].height)
