"""The ``>>>`` examples in fastes' docstrings run and print what they say (doctest)."""

import doctest
import importlib
import pkgutil

import pytest
import torch

import fastes

# fastes.kernels imports triton (CUDA machines); __main__ runs the CLI.
MODULES = sorted(
    m.name
    for m in pkgutil.walk_packages(fastes.__path__, "fastes.")
    if not m.name.startswith(("fastes.kernels", "fastes.__main__"))
)


def test_modules_are_found():
    assert {"fastes.es", "fastes.prng", "fastes.shaping", "fastes.strategies.base"} <= set(MODULES)


@pytest.mark.parametrize("name", MODULES)
def test_docstring_examples_run(name):
    module = importlib.import_module(name)
    finder = doctest.DocTestFinder(exclude_empty=True)
    runner = doctest.DocTestRunner(optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
    globs = {**vars(module), "torch": torch, "fastes": fastes}
    tests = finder.find(module, name, globs=globs)
    for test in tests:
        runner.run(test)
    assert runner.failures == 0, f"{runner.failures} docstring example(s) failed in {name}"
