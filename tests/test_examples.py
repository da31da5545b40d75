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
