"""Build of ScaleML's CUDA library (``scaleml/_scaleml_cuda.so``) with nvcc, beside the cffi extension.

Every ``csrc/cuda/*.cu`` is compiled for sm_80 and sm_90 plus PTX
(``compute_90``, which later GPUs JIT-compile), overridable with
``SCALEML_CUDA_ARCHS`` (e.g. ``"80;90"``), and linked into one shared library
with CUDA's runtime linked statically: loading it needs no ``libcudart`` and no
driver, so ``import scaleml`` works on machines without a GPU. The cffi
declarations of the library (``csrc/cuda/api_*.h``) are copied beside it as
``_scaleml_cuda_api.h`` for :mod:`scaleml._cuda`.

nvcc is taken from ``$NVCC``, ``$CUDA_HOME/bin/nvcc`` or ``PATH``. Without it
the library is skipped with a one-line notice; ``SCALEML_CUDA=0`` skips it on
purpose. ``python scaleml/_cuda_build.py [OUT_DIR]`` builds it by hand.
"""

from __future__ import annotations

import os
import shlex
import shutil
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
CSRC = ROOT / "csrc"
LIBRARY = "_scaleml_cuda.so"
API = "_scaleml_cuda_api.h"
DEFAULT_ARCHS = "80;90"


def find_nvcc() -> str | None:
    """The nvcc to build with, or None."""
    home = os.environ.get("CUDA_HOME") or os.environ.get("CUDA_PATH")
    for cand in (os.environ.get("NVCC"), home and str(Path(home) / "bin" / "nvcc"), shutil.which("nvcc"),
                 "/usr/local/cuda/bin/nvcc"):
        if cand and shutil.which(cand):
            return cand
    return None


def gencode_flags(archs: str) -> list[str]:
    """``-gencode`` flags: SASS for every architecture, PTX for the newest (so later GPUs JIT-compile it)."""
    numbers = [a.strip() for a in archs.replace(",", ";").split(";") if a.strip()]
    if not numbers or not all(a.isdigit() for a in numbers):
        raise ValueError(f"SCALEML_CUDA_ARCHS must list compute capabilities like '80;90', got {archs!r}")
    flags = [f"-gencode=arch=compute_{a},code=sm_{a}" for a in numbers[:-1]]
    last = numbers[-1]
    return flags + [f"-gencode=arch=compute_{last},code=[sm_{last},compute_{last}]"]


def api_text() -> str:
    """The cffi declarations of every ``csrc/cuda/api_*.h``, concatenated."""
    return "".join(f"/* {h.name} */\n{h.read_text()}\n" for h in sorted((CSRC / "cuda").glob("api_*.h")))


def _stale(target: Path, sources: list[Path]) -> bool:
    return not target.exists() or any(s.stat().st_mtime > target.stat().st_mtime for s in sources)


def build(out_dir: Path, *, quiet: bool = False) -> Path | None:
    """Compile and link the CUDA library into ``out_dir``; returns its path, or None when skipped."""
    if os.environ.get("SCALEML_CUDA", "1") == "0":
        print("scaleml: SCALEML_CUDA=0: the CUDA library is not built (device arrays will be refused)")
        return None
    nvcc = find_nvcc()
    if nvcc is None:
        print("scaleml: nvcc not found: the CUDA library is not built (device arrays will be refused); "
              "set NVCC or CUDA_HOME to build it")
        return None
    cu_files = sorted((CSRC / "cuda").glob("*.cu"))
    headers = sorted(CSRC.glob("**/*.h"))
    out_dir.mkdir(parents=True, exist_ok=True)
    target = out_dir / LIBRARY
    (out_dir / API).write_text(api_text())
    if not _stale(target, cu_files + headers + [Path(__file__)]):
        return target
    archs = os.environ.get("SCALEML_CUDA_ARCHS", DEFAULT_ARCHS)
    obj_dir = ROOT / "build" / "cuda"
    obj_dir.mkdir(parents=True, exist_ok=True)
    common = ["-std=c++17", "-O3", "-Xcompiler", "-fPIC,-Wall,-Wextra", "-I", str(CSRC),
              f'-DSCALEML_CUDA_ARCHS="{archs}"', *gencode_flags(archs),
              *shlex.split(os.environ.get("SCALEML_NVCCFLAGS", ""))]

    def compile_one(cu: Path) -> Path:
        obj = obj_dir / (cu.stem + ".o")
        cmd = [nvcc, *common, "-c", str(cu), "-o", str(obj)]
        result = subprocess.run(cmd, capture_output=True, text=True)
        if result.returncode or "warning" in result.stderr.lower():
            sys.stderr.write(result.stderr)
        if result.returncode:
            raise RuntimeError(f"nvcc failed on {cu.relative_to(ROOT)}: {shlex.join(cmd)}")
        return obj

    with ThreadPoolExecutor(max_workers=max(1, min(len(cu_files), os.cpu_count() or 1))) as pool:
        objects = list(pool.map(compile_one, cu_files))
    link = [nvcc, "-shared", *gencode_flags(archs), "-o", str(target), *map(str, objects)]
    subprocess.run(link, check=True)
    if not quiet:
        print(f"scaleml: built the CUDA library {target.name} ({len(cu_files)} files, sm {archs.replace(';', ', ')})")
    return target


if __name__ == "__main__":
    build(Path(sys.argv[1]) if len(sys.argv) > 1 else ROOT / "scaleml")
