"""tests/gpu (the GPU machine's tests) run here on the CPU emulation of the CUDA library, so that the tests
scripts/gpu_check.sh runs on a GPU are themselves tested in CI: their kernels' comparisons, the device arrays'
plumbing and the MPI module at 1, 2 and 4 ranks (what needs CUDA torch skips, saying so)."""

from __future__ import annotations

import os
import sys

from conftest import ROOT, run_killing_on_timeout


def test_gpu_tests_pass_on_the_emulation():
    env = dict(os.environ, SCALEML_CUDA_EMULATE="1",
               PYTHONPATH=os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]))
    result = run_killing_on_timeout([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "tests/gpu"],
                                    600, env, "pytest tests/gpu (emulated)")
    assert result.returncode == 0, result.stdout[-6000:]
    assert " passed" in result.stdout and "error" not in result.stdout.splitlines()[-1], result.stdout[-2000:]
