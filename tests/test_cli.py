import subprocess
import sys

import pytest
import torch

from fastes.cli import main, preset
from fastes.trainer import load_checkpoint


@pytest.mark.parametrize("task", ["cartpole", "acrobot", "pendulum", "mountain_car"])
def test_train_summary_eval_on_each_builtin_env(task, tmp_path, capsys):
    run = tmp_path / task
    args = [
        "train",
        task,
        "--generations",
        "2",
        "--population",
        "8",
        "--episodes",
        "1",
        "--eval-every",
        "1",
        "--eval-episodes",
        "2",
        "--run-dir",
        str(run),
        "--no-progress",
    ]
    assert main(args) == 0
    assert "after 2 generations" in capsys.readouterr().out
    assert main(["summary", str(run)]) == 0
    out = capsys.readouterr().out
    assert f"task {task}" in out and "generations 2 / 2" in out
    assert main(["eval", str(run), "--episodes", "3"]) == 0
    assert "on 3 episodes: mean return" in capsys.readouterr().out
    with pytest.raises(SystemExit, match="already holds a run"):
        main(args)


def test_resume_extends_a_finished_run(tmp_path, capsys):
    run = tmp_path / "r"
    base = ["--population", "8", "--episodes", "1", "--goal", "1e9", "--no-progress"]
    main(["train", "cartpole", "--generations", "2", "--run-dir", str(run), *base])
    assert main(["resume", str(run), "--generations", "4", "--no-progress"]) == 0
    assert load_checkpoint(run / "checkpoint.pt")["generation"] == 4
    other = tmp_path / "o"
    main(["train", "cartpole", "--generations", "4", "--run-dir", str(other), *base])
    a = load_checkpoint(run / "checkpoint.pt")["strategy_state"]
    b = load_checkpoint(other / "checkpoint.pt")["strategy_state"]
    assert all(torch.equal(x, y) for x, y in zip(a, b, strict=True))


def test_gym_task_through_the_cli(tmp_path, capsys):
    pytest.importorskip("gymnasium")
    run = tmp_path / "g"
    assert main(["train", "gym:CartPole-v1", "--generations", "2", "--population", "4",
                 "--workers", "0", "--eval-every", "1", "--eval-episodes", "2",
                 "--run-dir", str(run), "--no-progress"]) == 0  # fmt: skip
    assert main(["eval", str(run), "--episodes", "2", "--which", "last"]) == 0
    assert "mean return" in capsys.readouterr().out


def test_errors_and_module_entry_point(tmp_path):
    with pytest.raises(ValueError, match="unknown environment 'pong'"):
        preset("pong")
    with pytest.raises(SystemExit, match="not a fastes run directory"):
        main(["summary", str(tmp_path)])
    out = subprocess.run([sys.executable, "-m", "fastes", "--help"], capture_output=True,
                         text=True, check=True)  # fmt: skip
    assert "train" in out.stdout and "resume" in out.stdout


@pytest.mark.parametrize("strategy", ["pgpe", "snes", "sep_cma_es", "cma_es", "ars", "cem"])
def test_train_with_other_strategies(strategy, tmp_path, capsys):
    # --sigma / --lr map onto each strategy's own hyperparameters (sigma, learning_rate or
    # center_learning_rate) where it has them.
    run = tmp_path / strategy
    args = ["train", "cartpole", "--strategy", strategy, "--generations", "2", "--population",
            "16", "--episodes", "1", "--eval-every", "1", "--eval-episodes", "2", "--run-dir",
            str(run), "--no-progress"]  # fmt: skip
    assert main(args) == 0
    assert main(["resume", str(run), "--generations", "3", "--no-progress"]) == 0
    assert load_checkpoint(run / "checkpoint.pt")["strategy"] == strategy
