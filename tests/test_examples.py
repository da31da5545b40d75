"""Every example runs; the main job (make demo) meets its accuracy target."""

import importlib.util
import pathlib

import pytest

EXAMPLES = pathlib.Path(__file__).resolve().parent.parent / "examples"


def _load(name):
    spec = importlib.util.spec_from_file_location(name, EXAMPLES / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_every_example_has_a_main():
    scripts = sorted(p.stem for p in EXAMPLES.glob("[0-9][0-9]_*.py"))
    assert scripts, "no examples found"
    for name in scripts:
        assert callable(getattr(_load(name), "main", None)), name


def test_digits_demo_reaches_90_percent_held_out_accuracy():
    # The full `make demo` run (3000 generations, about 45 s on the 2-core dev CPU): the issue's
    # target is >= 90% held-out accuracy; seed 0 measured 0.944.
    pytest.importorskip("sklearn")
    acc = _load("01_digits_accuracy").main(["--no-progress"])
    assert acc >= 0.90


def test_module_accuracy_example_trains_with_block_sampling():
    # 300 steps of bottom-up blocks (about 3 s) measured 0.958 held-out accuracy (full 2000-step
    # run: 0.964); 0.6 is far above the 10% of chance, and far below what a working run reaches.
    pytest.importorskip("sklearn")
    assert _load("05_module_accuracy").main(["--steps", "300"]) > 0.6


def test_nes_expectation_example_finds_the_peak():
    # The full demo (2000 steps, ~4 s): μ from 1 to the peak at 5; measured 5.0000.
    assert abs(_load("06_nes_expectation").main([]) - 5.0) < 0.05


def test_evolvability_example_moves_to_high_variance_and_entropy():
    # Var[b] for b = 5 sin(0.2x) sin(20x) peaks near 25/2 where |sin(0.2μ)| = 1 (μ ≈ 7.85);
    # starting at μ = 0.5, 300 steps measured Var 12.55 at μ = 7.63, and entropy 1.12 -> 2.35.
    (mu_var, var), (mu_ent, ent) = _load("07_evolvability").main(["--steps", "300"])
    assert var > 10.0 and abs(mu_var - 7.85) < 0.5
    assert ent > 2.0


def test_pendulum_example_swings_up():
    # Full run: 120 generations, 6.5 s on the 2-core dev CPU (seed 0), final params -156.5 over
    # 20 unseen episodes; random policies score about -1200. The goal is >= -200 twice in a row.
    result, test = _load("04_pendulum").main([])
    assert result.stop_reason == "goal"
    assert test["score"] > -400  # unseen episodes: well above random, with sampling slack


def test_lunarlander_example_runs_end_to_end():
    # The full run (>= 200 over 100 episodes; figures in the README) takes minutes; this checks
    # the whole path — workers, evaluation, outputs — on 2 tiny generations.
    pytest.importorskip("Box2D")
    final, best = _load("03_lunarlander").main(
        ["--generations", "2", "--population", "4", "--workers", "2"]
    )
    assert set(final) >= {"score", "score_std", "eval_length"}


def test_vectorized_pbt_example_trains_32_members():
    # 300 steps (about 3 s): measured 0.972 held-out accuracy for the best member (the full
    # 2000-step run: 0.978); 0.9 is far above chance (0.1) and below any working run.
    pytest.importorskip("sklearn")
    assert _load("08_vectorized_pbt").main(["--steps", "300"]) > 0.9


def test_taylorglo_example_trains_with_an_evolved_loss():
    # 300 steps, 8 members (about 5 s): measured 0.967 (cross-entropy) and 0.756 (TaylorGLO,
    # which starts slower from its polynomial); 0.5 is 5x chance. Full run: see the README.
    pytest.importorskip("sklearn")
    out = _load("09_taylorglo").main(["--steps", "300", "--population", "8"])
    assert out["cross-entropy"] > 0.5 and out["TaylorGLO"] > 0.5


def test_lowrank_transformer_example_learns_to_sort_with_a_reward_without_gradient():
    # 40 generations of 32 members (about 2 s): held-out token accuracy 0.07 at the start (chance
    # 0.1) measured 0.242 after; the full run (900 generations of 256) is in the README.
    exact, token = _load("10_lowrank_transformer").main(
        ["--generations", "40", "--population", "32", "--batch", "32"]
    )
    assert token > 0.15 and 0.0 <= exact <= 1.0
