"""tests/gpu: every test is marked ``gpu`` and skips, with the reason, where no device (nor the emulation) is.

See gpu_support.py for the order of the libraries and SCALEML_GPU_TESTS_REQUIRED.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from . import gpu_support

_HERE = Path(__file__).resolve().parent


def pytest_collection_modifyitems(config, items):
    mine = [item for item in items if _HERE in Path(str(item.fspath)).resolve().parents]
    if not mine:
        return
    reason = gpu_support.skip_reason()
    for item in mine:
        item.add_marker(pytest.mark.gpu)
        if reason is not None and not gpu_support.required():
            item.add_marker(pytest.mark.skip(reason=reason))


@pytest.fixture(autouse=True)
def required_device():
    """Where a device is required (SCALEML_GPU_TESTS_REQUIRED=1) and there is none, fail instead of skipping."""
    reason = gpu_support.skip_reason()
    if reason is not None:
        pytest.fail(f"SCALEML_GPU_TESTS_REQUIRED=1 but {reason}")


@pytest.fixture(scope="session")
def dev() -> gpu_support.ArrayFactory:
    """The array factory of the first available library (emulation, torch, CuPy)."""
    return gpu_support.ArrayFactory(gpu_support.libraries()[0])


def pytest_generate_tests(metafunc):
    """``any_dev``: one run per available library (torch and CuPy on a GPU machine)."""
    if "any_dev" in metafunc.fixturenames:
        kinds = gpu_support.libraries() or ["none"]
        metafunc.parametrize("any_dev", kinds, indirect=True, ids=kinds)


@pytest.fixture(scope="session")
def any_dev(request) -> gpu_support.ArrayFactory:
    return gpu_support.ArrayFactory(request.param)
