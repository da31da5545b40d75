"""fastes.pbt.ProcessPBT: a training callback in worker processes."""

import math
import os

import pytest
import torch

import fastes
from fastes import pbt
from fastes.run_files import CheckpointError

SPACE = {"lr": pbt.Float(1e-3, 1.0, log=True), "decay": pbt.Float(0.0, 0.5)}


def train(c: pbt.Candidate) -> pbt.Candidate:
    """A deterministic toy 'training' (module level, so spawned workers can import it): the
    checkpoint is a weight vector pulled towards a target at rate lr, with noise from c.key."""
    w = torch.zeros(4) if c.checkpoint is None else c.checkpoint["w"]
    g = torch.Generator().manual_seed(int(c.key[0]) + (int(c.key[1]) << 32))
    target = torch.arange(4.0)
    for _ in range(5):
        w = w + c.hyperparameters["lr"] * (target - w) + 0.01 * torch.randn(4, generator=g)
        w = w * (1 - c.hyperparameters["decay"] * 0.01)
    c.checkpoint = {"w": w}
    c.fitness = -float((w - target).norm())
    return c


def flaky(c: pbt.Candidate) -> pbt.Candidate:
    if c.member == 1 and c.round == 0:
        raise RuntimeError("member 1 crashed")
    out = train(c)
    if c.member == 2 and c.round == 0:
        out.fitness = math.nan
    return out


def _run(workers, rounds=4, fn=train, **kw):
    pop = pbt.ProcessPBT(fn, SPACE, population_size=6, key=fastes.key(3), workers=workers, **kw)
    return pop, pop.run(rounds)


def test_same_result_with_0_1_or_2_worker_processes():
    pop0, r0 = _run(0)
    pop2, r2 = _run(2)
    pop1, r1 = _run(1)
    assert r0.history == r1.history == r2.history
    assert r0.best_score == r1.best_score == r2.best_score
    for a, b in zip(pop0.checkpoints, pop2.checkpoints, strict=True):
        assert torch.equal(a["w"], b["w"])
    assert r0.best_score > -1.0  # the population got close to the target


def test_failing_members_are_recorded_rank_last_and_are_replaced():
    pop, result = _run(0, rounds=3, fn=flaky)
    first = result.history[0]
    assert first["failed"] == 2
    assert "member 1 crashed" in first["errors"][1] and first["errors"][2] == "fitness is NaN"
    assert set(first["replaced"]) == {1, 2}  # 0.25 of 6 → the two worst: the two failures
    assert all(r["failed"] == 0 for r in result.history[1:])  # the run went on
    assert pop.checkpoints[1] is not None


def test_generator_yields_the_best_candidate_each_round():
    pop = pbt.ProcessPBT(train, SPACE, population_size=4, key=fastes.key(0))
    best = list(pop.rounds(3))
    assert len(best) == 3
    scores = [b.fitness for b in best]
    assert scores == sorted(scores)  # best so far never gets worse
    assert best[-1].fitness == max(r["fitness_best"] for r in pop.history)
    assert isinstance(best[-1].checkpoint["w"], torch.Tensor)


def test_resume_continues_the_same_run(tmp_path):
    _, whole = _run(0, rounds=4)
    pbt.ProcessPBT(train, SPACE, population_size=6, key=fastes.key(3)).run(2, run_dir=tmp_path)
    pop = pbt.ProcessPBT(train, SPACE, population_size=6, key=fastes.key(3))
    resumed = pop.run(4, run_dir=tmp_path)
    assert resumed.history == whole.history and resumed.best_score == whole.best_score
    assert os.path.exists(tmp_path / "history.csv")
    other = pbt.ProcessPBT(train, SPACE, population_size=6, key=fastes.key(4))
    with pytest.raises(CheckpointError, match="other settings: \\['key'\\]"):
        other.run(4, run_dir=tmp_path)


def test_bad_arguments_are_named():
    with pytest.raises(TypeError, match="train must be callable"):
        pbt.ProcessPBT(None, SPACE, population_size=4, key=fastes.key(0))
    with pytest.raises(ValueError, match="workers must be an int >= 0"):
        pbt.ProcessPBT(train, SPACE, population_size=4, key=fastes.key(0), workers=-1)
    with pytest.raises(ValueError, match="start_method must be one of"):
        pbt.ProcessPBT(train, SPACE, population_size=4, key=fastes.key(0), start_method="x")
