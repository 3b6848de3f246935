"""cffi build script for ``scaleml._core``: compiles ``csrc/{core,collectives,compress}/*.c`` against MPI.

The MPI compiler wrapper is taken from ``$MPICC`` if set (a cluster's own MPI),
else ``<sys.prefix>/bin/mpicc`` (the ``mpich`` package from PyPI, the
``scaleml[mpich]`` extra), else ``mpicc`` on ``PATH``. No MPI is a build
requirement (pyproject.toml says why): in an isolated build ``sys.prefix`` is
pip's temporary environment, so build with ``--no-build-isolation``. The
wrapper's ``-show``/``-showme`` output gives the include and link flags; the
extension also gets an rpath to the environment's ``lib`` so ``libmpi`` is
found at run time without ``LD_LIBRARY_PATH``, even when the build ran in a
temporary environment.
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

from cffi import FFI

ROOT = Path(__file__).resolve().parent.parent
CSRC = ROOT / "csrc"


def find_mpicc() -> str:
    candidates = [os.environ.get("MPICC"), str(Path(sys.prefix) / "bin" / "mpicc"), shutil.which("mpicc")]
    for cand in candidates:
        if cand and shutil.which(cand):
            return cand
    raise RuntimeError(
        "no MPI C compiler wrapper found: set MPICC to your MPI's mpicc, or install PyPI's MPICH "
        "(pip install 'mpich>=5,<6') and build in that environment with pip's --no-build-isolation"
    )


def mpi_flags(mpicc: str) -> dict[str, list[str]]:
    """Split the wrapper's command line into include dirs, libraries and link args."""
    for flag in ("-show", "-showme"):
        try:
            out = subprocess.run([mpicc, flag], capture_output=True, text=True, check=True).stdout
        except (OSError, subprocess.CalledProcessError):
            continue
        if out.strip():
            break
    else:
        raise RuntimeError(f"{mpicc} answered neither -show nor -showme")
    flags: dict[str, list[str]] = {"include_dirs": [], "library_dirs": [], "libraries": [], "extra_link_args": []}
    tokens = shlex.split(out)[1:]  # drop the underlying compiler
    for tok in tokens:
        if tok.startswith("-I"):
            flags["include_dirs"].append(tok[2:])
        elif tok.startswith("-L"):
            flags["library_dirs"].append(tok[2:])
        elif tok.startswith("-l"):
            flags["libraries"].append(tok[2:])
        elif tok.startswith("-Wl,") or tok == "-pthread":
            flags["extra_link_args"].append(tok)
    for libdir in flags["library_dirs"] + [str(Path(sys.prefix) / "lib")]:
        flags["extra_link_args"].append(f"-Wl,-rpath,{libdir}")
    # Installed layout <prefix>/lib/pythonX.Y/site-packages/scaleml/_core*.so -> <prefix>/lib
    flags["extra_link_args"].append("-Wl,-rpath,$ORIGIN/../../..")
    return flags


# Every csrc/api_*.h is both a cdef (plain declarations after its header
# comment) and a header the generated C includes.
API_HEADERS = sorted(CSRC.glob("api_*.h"))

_INCLUDE_GUARD = re.compile(r"^#(ifndef|define|endif)\b\s*(SCALEML_API_\w+_H)?\s*$")


def cdef_text(header: Path) -> str:
    """The declarations of an API header: after its comment, without the include guard."""
    body = header.read_text().split("*/", 1)[1]
    return "\n".join(line for line in body.splitlines()
                     if not (_INCLUDE_GUARD.match(line) and (line.startswith("#endif") or "SCALEML_API_" in line)))


def c_string(text: str) -> str:
    """``text`` as a C string literal (the value of a ``-D`` define)."""
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


ffibuilder = FFI()
for header in API_HEADERS:
    ffibuilder.cdef(cdef_text(header))
_flags = mpi_flags(find_mpicc())
# -fopenmp: the kernels split large inputs over the rank's cores (csrc/core/threads.h)
_compile_args = ["-std=c11", "-O3", "-Wall", "-Wextra", "-fvisibility=hidden", "-fopenmp"] \
    + shlex.split(os.environ.get("SCALEML_CFLAGS", ""))
ffibuilder.set_source(
    "scaleml._core",
    "#include <stdint.h>\n" + "".join(f'#include "{h.name}"\n' for h in API_HEADERS),
    # csrc/core, csrc/collectives, csrc/compress (csrc/cuda is built by nvcc, csrc/python by setup.py's
    # ext_modules: a CPython extension, not part of the cffi core)
    sources=sorted(str(p.relative_to(ROOT)) for p in CSRC.glob("*/*.c") if p.parent.name not in ("cuda", "python")),
    include_dirs=[str(CSRC)] + _flags["include_dirs"],
    library_dirs=_flags["library_dirs"],
    libraries=_flags["libraries"] + ["m"],
    extra_compile_args=_compile_args,
    # recorded for `python -m scaleml` (scaleml_build_cflags in csrc/core/build_info.c)
    define_macros=[("SCALEML_BUILD_CFLAGS", c_string(" ".join(_compile_args)))],
    extra_link_args=_flags["extra_link_args"] + ["-fopenmp"] + shlex.split(os.environ.get("SCALEML_LDFLAGS", "")),
)

if __name__ == "__main__":
    os.chdir(ROOT)
    ffibuilder.compile(verbose=True)
