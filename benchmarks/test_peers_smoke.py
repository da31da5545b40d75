"""The peer comparison script runs end to end (CI: only the installed libraries, tiny sizes)."""

import importlib.util
import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "peers"))


def test_compare_quick_runs_with_whatever_is_installed():
    import compare

    libs = compare.available()
    assert "fastes" in libs
    res = compare.main(["--quick", "--no-mem", "--libs", "fastes"])
    rows = res["time"]
    assert {r["library"] for r in rows} == {"fastes"}
    assert all(r["ms_per_generation"] > 0 and r["final_fitness"] >= 0 for r in rows)
    if importlib.util.find_spec("sklearn") is not None:
        assert 0.0 <= res["neuro"]["fastes"]["accuracy_all"] <= 1.0
