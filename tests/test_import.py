import subprocess
import sys


def test_import_and_cpu_step_do_not_import_triton_init_cuda_or_change_torch_settings():
    # A fresh interpreter: the test process itself may have imported triton for kernel tests.
    code = """
import sys, torch
settings = lambda: (torch.get_num_threads(), torch.get_default_dtype(),
                    torch.are_deterministic_algorithms_enabled())
before = settings()
import fastes
fastes.es_step({"x": torch.zeros(8)}, lambda p: -(p["x"] ** 2).sum(), fastes.key(0),
               population_size=4, sigma=0.1, learning_rate=0.1)
print("triton" in sys.modules, torch.cuda.is_initialized(), before == settings())
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["False", "False", "True"]


def test_every_subpackage_is_listed_for_packaging():
    # An editable install imports unlisted subpackages from the source tree, so a missing entry
    # in [tool.setuptools] packages only shows in a built wheel: check the list directly.
    import pathlib

    import pytest

    tomllib = pytest.importorskip("tomllib")
    root = pathlib.Path(__file__).resolve().parent.parent
    listed = set(
        tomllib.loads((root / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"]
    )
    on_disk = {
        ".".join(p.parent.relative_to(root).parts) for p in (root / "fastes").rglob("__init__.py")
    }
    assert on_disk | {"fastes.kernels"} == listed
