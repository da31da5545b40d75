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
