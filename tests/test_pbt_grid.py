"""Grid search: one run directory per configuration, finished ones skipped, a results table."""

import csv

import pytest

from fastes.cli import main
from fastes.pbt.grid import config_name, configurations, grid_search


def test_grid_runs_each_configuration_once_and_retries_failures(tmp_path):
    calls = []

    def fn(config, run_dir):
        calls.append(dict(config))
        if config == {"a": 2, "b": "y"} and len(calls) < 5:
            raise RuntimeError("flaky")
        return config["a"] * 10 + (config["b"] == "y")

    grid = {"a": [1, 2], "b": ["x", "y"]}
    assert configurations(grid) == [{"a": 1, "b": "x"}, {"a": 1, "b": "y"},
                                    {"a": 2, "b": "x"}, {"a": 2, "b": "y"}]  # fmt: skip
    table = grid_search(fn, grid, tmp_path)
    assert [r["status"] for r in table] == ["ran", "ran", "ran", "failed: RuntimeError: flaky"]
    assert [r.get("score") for r in table] == [10.0, 11.0, 20.0, None]
    table = grid_search(fn, grid, tmp_path)  # only the failed configuration runs again
    assert len(calls) == 5 and calls[-1] == {"a": 2, "b": "y"}
    assert [r["status"] for r in table] == ["done before"] * 3 + ["ran"]
    with open(tmp_path / "results.csv") as fh:
        rows = list(csv.DictReader(fh))
    assert [float(r["score"]) for r in rows] == [10.0, 11.0, 20.0, 21.0]
    assert (tmp_path / config_name({"a": 1, "b": "x"}) / "result.json").exists()
    with pytest.raises(ValueError, match="grid\\['a'\\] must be a non-empty list"):
        grid_search(fn, {"a": []}, tmp_path)


def test_config_names_are_safe_directory_names():
    assert config_name({"lr": 0.01, "opt": "adam"}) == "lr=0.01,opt=adam"
    odd = config_name({"path": "a/b c"})
    assert "/" not in odd and " " not in odd
    assert odd != config_name({"path": "a_b_c"})  # the hash keeps distinct configs apart


def test_cli_grid_skips_finished_runs(tmp_path, capsys):
    argv = ["grid", "cartpole", "--grid", "sigma=0.05,0.1", "--generations", "2",
            "--population", "8", "--episodes", "1", "--run-dir", str(tmp_path)]  # fmt: skip
    assert main(argv) == 0
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert out.count("(ran)") == 2 and out.count("(done before)") == 2
    with open(tmp_path / "results.csv") as fh:
        rows = list(csv.DictReader(fh))
    assert [r["sigma"] for r in rows] == ["0.05", "0.1"] and all(r["best_score"] for r in rows)
    with pytest.raises(SystemExit, match="has no --bogus"):
        main(["grid", "cartpole", "--grid", "bogus=1", "--run-dir", str(tmp_path)])
