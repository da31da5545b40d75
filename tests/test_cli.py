import json
import subprocess
import sys

import pytest
import torch

import fastes
from fastes.cli import FLAGS, build, main, preset
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


_SMALL = ["--generations", "1", "--population", "8", "--episodes", "1", "--eval-episodes", "1",
          "--no-progress"]  # fmt: skip


@pytest.mark.parametrize("strategy", sorted(FLAGS))
def test_every_flag_takes_effect_or_is_a_clear_error(strategy, tmp_path):
    # Defect: flags were mapped by introspection: --sigma-decay crashed pgpe, snes, ... with
    # "sigma must be a real number; got function", --sigma vanished for xnes and --lr for snes,
    # while config.json recorded them.
    run = tmp_path / "r"
    args = ["train", "cartpole", "--strategy", strategy, "--run-dir", str(run), *_SMALL]
    assert main([*args, "--sigma", "0.37", "--population", "16"]) == 0
    s = build(json.loads((run / "config.json").read_text()))[1]
    sigma = getattr(s, "sigma0", None) or getattr(s, "sigma", None)
    sigma = s.inner(0).sigma0 if strategy == "ipop_cma_es" else sigma
    assert (sigma(0) if callable(sigma) else sigma) == 0.37
    lr_flag = FLAGS[strategy]["lr"]
    other = tmp_path / "o"
    other_args = ["train", "cartpole", "--strategy", strategy, "--run-dir", str(other), *_SMALL]
    if lr_flag is None:
        with pytest.raises(SystemExit, match="--lr does not apply"):
            main([*other_args, "--lr", "0.3"])
        assert not other.exists()  # nothing written for a rejected command
        assert json.loads((run / "config.json").read_text())["lr"] is None
    else:
        main([*other_args, "--lr", "0.3", "--lr-decay", "0.5"])
        s = build(json.loads((other / "config.json").read_text()))[1]
        lr = getattr(s, lr_flag[0], None) or getattr(s, "eta_mu", None)
        if strategy == "pgpe":  # ClipUp's schedule lives in the optimizer: check it moved
            lr = None
        if lr is not None:
            assert lr(0) == 0.3 and lr(1) == 0.15
    if not FLAGS[strategy]["sigma"][1]:
        with pytest.raises(SystemExit, match="--sigma-decay does not apply"):
            main([*other_args[:-1], "--run-dir", str(tmp_path / "d"), "--sigma-decay", "0.9"])


def test_strategy_knobs_can_be_set_and_unknown_ones_are_named(tmp_path):
    run = tmp_path / "ars"
    small = [*_SMALL[:2], *_SMALL[4:]]  # without --population
    base = ["train", "cartpole", "--strategy", "ars", "--population", "16", *small]
    assert main([*base, "--run-dir", str(run), "--set", "top_directions=3"]) == 0
    config = json.loads((run / "config.json").read_text())
    assert config["strategy_args"] == {"top_directions": 3}
    assert build(config)[1].top == 3
    with pytest.raises(SystemExit, match=r"--set \['elite_ratio'\] are not settings of ars"):
        main([*base, "--run-dir", str(tmp_path / "x"), "--set", "elite_ratio=0.1"])
    with pytest.raises(SystemExit, match="top_directions must be <= population_size / 2"):
        main([*base, "--run-dir", str(tmp_path / "y"), "--set", "top_directions=99"])
    cem = tmp_path / "cem"
    main(["train", "cartpole", "--strategy", "cem", "--population", "20", *small,
          "--run-dir", str(cem), "--set", "elite_ratio=0.25"])  # fmt: skip
    assert build(json.loads((cem / "config.json").read_text()))[1].n_elite == 5


def test_damaged_run_directories_are_named_and_left_alone(tmp_path):
    run = tmp_path / "r"
    main(["train", "cartpole", "--run-dir", str(run), *_SMALL])
    ckpt = run / "checkpoint.pt"
    good = ckpt.read_bytes()
    for command in (
        ["resume", str(run), "--no-progress"],
        ["eval", str(run)],
        ["summary", str(run)],
    ):
        for damage in (b"", good[: len(good) // 3], b"not a checkpoint"):
            ckpt.write_bytes(damage)
            with pytest.raises(SystemExit, match=str(ckpt)) as err:
                main(command)
            assert "Traceback" not in str(err.value) and "weights_only" not in str(err.value)
            assert ckpt.read_bytes() == damage
        ckpt.unlink()
        with pytest.raises(SystemExit, match="checkpoint.pt does not exist"):
            main(command)  # resume does not silently start from scratch
        assert not ckpt.exists()
        ckpt.write_bytes(good)
    config = run / "config.json"
    text = config.read_text()
    for bad, match in (("{not json", "is not valid JSON"), ("[1, 2]", "must hold a JSON object"),
                       ('{"task": "cartpole"}', "lacks the settings")):  # fmt: skip
        config.write_text(bad)
        with pytest.raises(SystemExit, match=match):
            main(["resume", str(run), "--no-progress"])
        assert config.read_text() == bad
    config.write_text(text)


def test_eval_best_after_a_run_shorter_than_eval_every(tmp_path, capsys):
    # Defect: `fastes eval` (--which best) scored the initial params of such a run.
    run = tmp_path / "r"
    main(["train", "cartpole", "--run-dir", str(run), "--generations", "3", "--eval-every", "10",
          "--population", "16", "--episodes", "2", "--no-progress"])  # fmt: skip
    assert "best score -inf" not in capsys.readouterr().out
    for which in ("best", "last"):
        main(["eval", str(run), "--episodes", "3", "--which", which])
    best, last = capsys.readouterr().out.strip().splitlines()
    assert best.split("mean return")[1] == last.split("mean return")[1]  # the same params


def test_any_torch_optim_optimizer_through_the_cli(tmp_path):
    run = tmp_path / "r"
    args = ["train", "cartpole", "--run-dir", str(run), "--optimizer", "RAdam", "--lr", "0.05",
            *_SMALL]  # fmt: skip
    assert main(args) == 0
    _, strategy, params = build(json.loads((run / "config.json").read_text()))
    assert isinstance(strategy.init(params).opt_state, fastes.optim.TorchOptimizerState)
    assert main(["resume", str(run), "--generations", "2", "--no-progress"]) == 0
    with pytest.raises(SystemExit, match="--optimizer must name a torch.optim optimizer"):
        main(["train", "cartpole", "--run-dir", str(tmp_path / "x"), "--optimizer", "Adamm"])
    with pytest.raises(SystemExit, match=r"--optimizer does not apply to cma_es"):
        main(["train", "cartpole", "--run-dir", str(tmp_path / "y"), "--strategy", "cma_es",
              "--optimizer", "Adam"])  # fmt: skip


def test_eval_films_the_agent_to_a_gif_with_the_right_frames(tmp_path, capsys):
    pytest.importorskip("imageio")
    from PIL import Image

    run = tmp_path / "r"
    main(["train", "cartpole", "--run-dir", str(run), "--eval-every", "1", *_SMALL])
    capsys.readouterr()
    gif = tmp_path / "best.gif"
    assert main(["eval", str(run), "--episodes", "2", "--video", str(gif),
                 "--video-episodes", "2"]) == 0  # fmt: skip
    out = capsys.readouterr().out
    lengths = [int(n) for n in out.split("lengths [")[1].split("]")[0].split(",")]
    frames = int(out.split("video: ")[1].split(" frames")[0])
    assert frames == sum(lengths) + 2  # one frame after each reset, one per step
    # Film the same episodes again (the first two evaluation seeds, the best params): the GIF
    # holds them, except that its writer (Pillow) merges consecutive identical frames.
    from fastes.cli import _trainer
    from fastes.rl.gym import GymTask

    trainer = _trainer(json.loads((run / "config.json").read_text()), str(run), progress=False)
    trainer.load(run / "checkpoint.pt")
    best = trainer.strategy.raveler.unravel(trainer.best()[1])
    seeds = GymTask.seeds(fastes.fold_in(fastes.key(12345), 2**31 - 1), 2)
    again, _, again_lengths = trainer.task.record(best, seeds)
    assert [int(n) for n in again_lengths] == lengths and len(again) == frames
    distinct = 1 + sum(not (a == b).all() for a, b in zip(again, again[1:]))
    with Image.open(gif) as im:
        assert im.n_frames == distinct
        assert im.size == (600, 400)  # CartPole's rgb_array frame


@pytest.mark.parametrize("kind", ["gru", "lstm"])
def test_recurrent_policies_through_the_cli(kind, tmp_path, capsys):
    run = tmp_path / kind
    main(["train", "cartpole", "--policy", kind, "--hidden", "8", "--generations", "2",
          "--population", "16", "--run-dir", str(run), "--no-progress"])  # fmt: skip
    config = json.loads((run / "config.json").read_text())
    assert config["policy"] == kind
    task, _, params = build(config)
    cls = {"gru": fastes.rl.GRUPolicy, "lstm": fastes.rl.LSTMPolicy}[kind]
    assert isinstance(task.policy, cls) and task.policy.hidden == 8
    assert set(params) == set(task.policy.init(fastes.key(0)))
    main(["eval", str(run), "--episodes", "2"])  # rebuilt from config.json: the same policy
    assert "mean return" in capsys.readouterr().out
    with pytest.raises(SystemExit, match="takes one --hidden size"):
        main(["train", "cartpole", "--policy", kind, "--hidden", "8,8",
              "--run-dir", str(tmp_path / "bad")])  # fmt: skip
    with pytest.raises(SystemExit, match="--policy must be one of"):
        main(["train", "cartpole", "--policy", "rnn", "--run-dir", str(tmp_path / "bad")])
    assert not (tmp_path / "bad").exists()


def test_eggroll_runs_from_the_cli_with_low_rank_weights(tmp_path):
    run = tmp_path / "e"
    args = ["train", "cartpole", "--strategy", "eggroll", "--run-dir", str(run), "--hidden",
            "8,8", "--set", "rank=2", *_SMALL]  # fmt: skip
    assert main(args) == 0
    config = json.loads((run / "config.json").read_text())
    s = build(config)[1]
    assert s.rank == 2 and [leaf.kind for leaf in s.layout].count("lowrank") == 3
    with pytest.raises(SystemExit, match=r"--set \['module'\] are not settings of eggroll"):
        main([*args[:5], str(tmp_path / "m"), *args[6:], "--set", "module=1"])


def test_a_preset_may_carry_strategy_knobs_for_its_own_strategy(tmp_path, monkeypatch):
    from fastes import cli_config

    cartpole = dict(strategy="ars", strategy_args={"top_directions": 3}, population=16)
    monkeypatch.setitem(cli_config.PRESETS, "cartpole", cartpole)
    small = [*_SMALL[:2], *_SMALL[4:]]  # without --population
    assert main(["train", "cartpole", "--run-dir", str(tmp_path / "a"), *small]) == 0
    config = json.loads((tmp_path / "a" / "config.json").read_text())
    assert config["strategy_args"] == {"top_directions": 3} and build(config)[1].top == 3
    # --set overrides the preset's knob; another --strategy does not inherit it
    args = ["train", "cartpole", "--run-dir", str(tmp_path / "b"), "--set", "top_directions=5"]
    assert main([*args, *small]) == 0
    assert json.loads((tmp_path / "b" / "config.json").read_text())["strategy_args"] == {
        "top_directions": 5
    }
    args = ["train", "cartpole", "--run-dir", str(tmp_path / "c"), "--strategy", "openai_es"]
    assert main([*args, *small]) == 0
    assert json.loads((tmp_path / "c" / "config.json").read_text())["strategy_args"] == {}


def test_video_every_logs_clips_through_the_cli(tmp_path):
    pytest.importorskip("imageio")
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    run = tmp_path / "v"
    args = ["train", "cartpole", "--run-dir", str(run), "--eval-every", "1", "--video-every", "1"]
    with pytest.raises(SystemExit, match="add --tensorboard"):
        main([*args, *_SMALL])
    assert main([*args, "--tensorboard", *_SMALL]) == 0
    events = EventAccumulator(str(run / "tb"), size_guidance={"images": 0})
    events.Reload()
    assert [c.step for c in events.Images("clip")] == [0]


def test_reward_clip_reaches_gym_tasks_and_is_refused_for_built_in_envs(tmp_path):
    pytest.importorskip("gymnasium")
    config = {**preset("gym:CartPole-v1"), "task": "gym:CartPole-v1", "reward_clip": 1.0,
              "workers": 0, "strategy_args": {}}  # fmt: skip
    task = build(config)[0]
    try:
        assert task.reward_clip == 1.0
    finally:
        task.close()
    with pytest.raises(SystemExit, match="--reward-clip applies to gym: tasks"):
        main(["train", "cartpole", "--reward-clip", "1", "--run-dir", str(tmp_path / "r"), *_SMALL])


@pytest.mark.parametrize(
    "task,needs,top,clip",
    [("gym:HalfCheetah-v5", "mujoco", 4, None), ("gym:BipedalWalker-v3", "Box2D", 16, 1.0)],
)
def test_locomotion_presets_build_what_they_promise(task, needs, top, clip):
    # The README's locomotion rows run these presets: ARS on a linear policy with their b, and
    # BipedalWalker's training rewards clipped to ±1.
    pytest.importorskip("gymnasium")
    pytest.importorskip(needs)
    config = {**preset(task), "task": task, "workers": 0}
    config["strategy_args"] = config.pop("strategy_args", {})
    built, strategy, params = build(config)
    try:
        assert strategy.name == "ars" and strategy.top == top
        assert built.reward_clip == clip and list(params) == ["w0", "b0"]
    finally:
        built.close()
