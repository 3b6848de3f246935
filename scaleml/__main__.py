"""``python -m scaleml``: what this installation is and how it is configured.

Prints ScaleML's version, the MPI library (mpi4py's, and the one the C core
was built against), the thread level, the nodes the ranks sit on (and whether
MPI or ``SCALEML_RANKS_PER_NODE`` gave them), how the C core was compiled and which
SIMD paths it uses on this CPU, whether CUDA is available, and every
``SCALEML_*`` variable with its effective value and source. ``--json`` prints
the same as one JSON object. Under ``mpiexec`` only rank 0 prints.

``python -m scaleml timeline merge FILES... -o OUT`` merges per-rank
timeline files (``SCALEML_TIMELINE``) into one Chrome trace.
"""

from __future__ import annotations

import argparse
import ctypes
import importlib.metadata
import importlib.util
import json
import logging
import os
import platform
import sys
from pathlib import Path
from typing import Any

import mpi4py
import numpy as np
from mpi4py import MPI

from . import _cuda, config, cost_model, engine, timeline
from ._native import BUILT_MPI_VENDOR, ffi, lib
from ._version import __version__

_CPU_FLAGS = ("sse4_2", "avx", "avx2", "fma", "f16c", "bmi2", "avx512f", "avx512bw", "neon", "asimd", "sve")


def _version(package: str) -> str | None:
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return None


def mpi_report() -> dict[str, Any]:
    """The MPI library mpi4py loaded, the one the C core was built against, and the thread level."""
    levels = {MPI.THREAD_SINGLE: "MPI_THREAD_SINGLE", MPI.THREAD_FUNNELED: "MPI_THREAD_FUNNELED",
              MPI.THREAD_SERIALIZED: "MPI_THREAD_SERIALIZED", MPI.THREAD_MULTIPLE: "MPI_THREAD_MULTIPLE"}
    vendor, vendor_version = MPI.get_vendor()
    built = lib.scaleml_mpi_version()
    return {
        "mpi4py": mpi4py.__version__,
        "library": MPI.Get_library_version().strip(),
        "vendor": f"{vendor} {'.'.join(map(str, vendor_version))}",
        "standard": "MPI {}.{}".format(*MPI.Get_version()),
        "built_against": f"{BUILT_MPI_VENDOR} (MPI {built // 10}.{built % 10} headers)",
        "thread_level": levels.get(MPI.Query_thread(), str(MPI.Query_thread())),
        "thread_level_requested": str(mpi4py.rc.thread_level),
        "world_size": MPI.COMM_WORLD.Get_size(),
    }


def topology_report() -> dict[str, Any]:
    """The nodes of ``MPI.COMM_WORLD`` as the engine finds them (collective: every rank makes its state), and where
    they came from: ``SCALEML_RANKS_PER_NODE`` (emulated) or MPI's shared-memory nodes."""
    topology = engine.engine_state(MPI.COMM_WORLD).topology
    assert topology is not None  # engine_state always finds the nodes
    source = (f"SCALEML_RANKS_PER_NODE={topology.ranks_per_node}" if topology.ranks_per_node
              else "MPI: MPI_Comm_split_type(MPI_COMM_TYPE_SHARED)")
    return {"nodes": topology.nodes, "ranks_per_node_min": topology.node_size_min,
            "ranks_per_node_max": topology.node_size_max, "from": source}


def _topology_text(t: dict[str, Any]) -> str:
    low, high = t["ranks_per_node_min"], t["ranks_per_node_max"]
    ranks = f"{low} rank{'s' if low > 1 else ''}" if low == high else f"{low} to {high} ranks"
    return f"{t['nodes']} node{'s' if t['nodes'] > 1 else ''} of {ranks} ({t['from']})"


def cpu_flags() -> tuple[str, list[str]]:
    """The CPU's model name and which of the SIMD extensions that matter here it has (``/proc/cpuinfo``)."""
    model, flags = platform.processor() or platform.machine(), set()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, value = line.partition(":")
            key = key.strip()
            if key in ("model name", "Model") and model in ("", platform.machine(), platform.processor()):
                model = value.strip()
            elif key in ("flags", "Features") and not flags:
                flags = set(value.split())
    except OSError:
        pass
    return model, [f for f in _CPU_FLAGS if f in flags]


def build_report() -> dict[str, Any]:
    """How the C core was compiled and which hand-written SIMD paths it takes on this CPU."""
    model, flags = cpu_flags()
    no_simd = os.environ.get("SCALEML_NO_SIMD", "")
    cflags = ffi.string(lib.scaleml_build_cflags()).decode()
    march = [f for f in cflags.split() if f.startswith(("-march=", "-mcpu=", "-mavx", "-msse"))]
    return {
        "compiler": ffi.string(lib.scaleml_build_compiler()).decode(),
        "cflags": cflags,
        "simd_dispatch": ("compiled for " + " ".join(march) + ", plus" if march else
                          "baseline ISA (no -march), with") + " run-time dispatch: AVX2/BMI2/F16C/AVX-512F kernels "
                         "where the CPU has them, AVX2 target_clones for the random numbers",
        "simd_in_use": {"avx2": bool(lib.scaleml_cpu_avx2()), "bmi2": bool(lib.scaleml_cpu_bmi2()),
                        "f16c": bool(lib.scaleml_cpu_f16c()), "avx512f": bool(lib.scaleml_cpu_avx512f())},
        "scaleml_no_simd": bool(no_simd and no_simd != "0"),
        "kernel_threads": {"threads": lib.scaleml_get_num_threads(), "from": config.num_threads()[1]},
        "cpu": model,
        "cpu_flags": flags,
    }


def _cuda_driver() -> dict[str, Any]:
    for name in ("libcuda.so.1", "libcuda.so", "nvcuda.dll"):
        try:
            cuda = ctypes.CDLL(name)
        except OSError:
            continue
        count = ctypes.c_int(0)
        if cuda.cuInit(0) != 0:
            return {"available": False, "detail": f"{name} loaded, cuInit failed (no usable GPU)"}
        if cuda.cuDeviceGetCount(ctypes.byref(count)) != 0:
            return {"available": False, "detail": f"{name} loaded, cuDeviceGetCount failed"}
        version = ctypes.c_int(0)
        cuda.cuDriverGetVersion(ctypes.byref(version))
        v = version.value
        return {"available": count.value > 0, "devices": count.value,
                "detail": f"driver API {v // 1000}.{v % 1000 // 10}, {count.value} device(s)"}
    return {"available": False, "detail": "no CUDA driver (libcuda) found"}


def cuda_report() -> dict[str, Any]:
    """Whether CUDA is usable: the driver, and cupy and torch when installed (never imported when absent)."""
    report: dict[str, Any] = {"driver": _cuda_driver()}
    for module, probe in (("cupy", "cupy.cuda.runtime.getDeviceCount()"), ("torch", "torch.cuda.device_count()")):
        if importlib.util.find_spec(module) is None:
            report[module] = {"installed": False}
            continue
        entry: dict[str, Any] = {"installed": True, "version": _version(module)}
        try:
            imported = __import__(module)
            if module == "cupy":
                devices = imported.cuda.runtime.getDeviceCount()
            else:
                devices = imported.cuda.device_count() if imported.cuda.is_available() else 0
            entry["devices"] = int(devices)
        except Exception as exc:  # a broken install or no GPU: report it, never fail
            entry["devices"] = 0
            entry["error"] = f"{probe}: {type(exc).__name__}: {exc}"[:200]
        report[module] = entry
    library = _cuda.library_report()
    report["scaleml_library"] = library
    how = ffi.new("const char **")
    aware = lib.scaleml_mpi_cuda_aware(how)
    report["mpi_cuda_aware"] = {"value": {1: "yes", 0: "no", -1: "unknown"}[aware],
                                "how": ffi.string(how[0]).decode()}
    report["transport"] = ("device pointers to MPI where a call goes to MPI as a whole; the engine's calls "
                           "staged through host memory" if aware == 1 else
                           "staged through host memory (the MPI is not CUDA-aware)")
    report["available"] = bool(report["driver"].get("available")) or any(
        isinstance(v, dict) and v.get("devices") for k, v in report.items() if k in ("cupy", "torch"))
    return report


def config_report() -> dict[str, Any]:
    """Every ``SCALEML_*`` variable: effective value, source and meaning."""
    def show(value: Any) -> Any:
        if isinstance(value, Path):
            return str(value)
        if isinstance(value, tuple):
            return ":".join(map(str, value))
        return value

    return {s.name: {"value": show(s.value), "source": s.source, "help": s.help} for s in config.settings().values()}


def effective_notes() -> dict[str, Any]:
    """What the configuration amounts to (the cost file in use, the timeline file, the logger's level)."""
    params = cost_model.get_params()
    return {
        "cost_file": str(cost_model.calibration_file()),
        "cost_params": {"alpha": params.alpha, "beta": params.beta, "gamma": params.gamma, "delta": params.delta},
        "timeline_file": str(timeline.path()) if timeline.path() else None,
        "log_level": logging.getLevelName(logging.getLogger("scaleml").getEffectiveLevel()),
    }


def report() -> dict[str, Any]:
    """Everything ``python -m scaleml`` prints."""
    return {
        "scaleml": {"version": __version__, "path": str(Path(__file__).parent)},
        "python": sys.version.split()[0],
        "numpy": np.__version__,
        "platform": platform.platform(),
        "mpi": mpi_report(),
        "topology": topology_report(),
        "build": build_report(),
        "cuda": cuda_report(),
        "configuration": config_report(),
        "effective": effective_notes(),
    }


def _yes(flag: bool) -> str:
    return "yes" if flag else "no"


def format_text(r: dict[str, Any]) -> str:
    """The report as aligned text."""
    lines = [f"ScaleML {r['scaleml']['version']}  ({r['scaleml']['path']})",
             f"Python {r['python']}, numpy {r['numpy']}, {r['platform']}", "", "MPI"]
    m = r["mpi"]
    for key, label in (("mpi4py", "mpi4py"), ("library", "library"), ("vendor", "vendor (mpi4py)"),
                       ("standard", "standard"), ("built_against", "ScaleML built against"),
                       ("thread_level", "thread level"), ("world_size", "ranks")):
        value = " ".join(str(m[key]).splitlines()[0].split()) if key == "library" else m[key]
        if key == "thread_level":
            value = f"{value} (mpi4py.rc.thread_level = {m['thread_level_requested']!r})"
        lines.append(f"  {label:<24}{value}")
    lines.append(f"  {'topology':<24}{_topology_text(r['topology'])}")
    b = r["build"]
    simd = ", ".join(f"{k.upper()} {_yes(v)}" for k, v in b["simd_in_use"].items())
    lines += ["", "Build and CPU",
              f"  {'compiler':<24}{b['compiler']}",
              f"  {'flags':<24}{b['cflags']}",
              f"  {'SIMD':<24}{b['simd_dispatch']}",
              f"  {'SIMD paths in use':<24}{simd}" + ("  (SCALEML_NO_SIMD set)" if b["scaleml_no_simd"] else ""),
              f"  {'kernel threads':<24}{b['kernel_threads']['threads']} ({b['kernel_threads']['from']})",
              f"  {'CPU':<24}{b['cpu']}",
              f"  {'CPU flags':<24}{' '.join(b['cpu_flags']) or '-'}"]
    c = r["cuda"]
    lines += ["", "CUDA", f"  {'available':<24}{_yes(c['available'])}", f"  {'driver':<24}{c['driver']['detail']}"]
    for module in ("cupy", "torch"):
        e = c[module]
        text = "not installed" if not e["installed"] else \
            f"{e['version']}, {e.get('devices', 0)} device(s)" + (f" ({e['error']})" if "error" in e else "")
        lines.append(f"  {module:<24}{text}")
    lib_report = c["scaleml_library"]
    lines.append(f"  {'ScaleML CUDA library':<24}{lib_report['detail']}"
                 + ("  (SCALEML_CUDA_EMULATE: the CPU emulation runs instead)" if lib_report.get("emulated") else ""))
    aware = c["mpi_cuda_aware"]
    lines.append(f"  {'MPI CUDA-aware':<24}{aware['value']} ({aware['how']})")
    lines.append(f"  {'transport':<24}{c['transport']}")
    lines += ["", "Configuration (SCALEML_*: value, source)"]
    width = max(24, 2 + max(len(name) for name in r["configuration"]))
    for name, s in r["configuration"].items():
        value = "-" if s["value"] is None else s["value"]
        if isinstance(value, bool):
            value = int(value)
        lines.append(f"  {name:<{width}}{str(value):<28}{s['source']:<9}{s['help']}")
    e = r["effective"]
    p = e["cost_params"]
    lines += [f"  {'(cost file in use)':<24}{e['cost_file']}",
              f"  {'(cost parameters)':<24}alpha {p['alpha']:.3g} s, beta {p['beta']:.3g} s/B, "
              f"gamma {p['gamma']:.3g} s/B, delta {p['delta']:.3g} s",
              f"  {'(logger level)':<24}{e['log_level']}",
              f"  {'(timeline file)':<24}{e['timeline_file'] or '-'}"]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``python -m scaleml``."""
    parser = argparse.ArgumentParser(prog="python -m scaleml", description=__doc__.split("\n\n")[0])
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    sub = parser.add_subparsers(dest="command")
    tl = sub.add_parser("timeline", help="timeline tools")
    tl_sub = tl.add_subparsers(dest="action", required=True)
    merge = tl_sub.add_parser("merge", help="merge per-rank timeline files into one Chrome trace")
    merge.add_argument("files", nargs="+", help="the ranks' files, or the SCALEML_TIMELINE path they came from")
    merge.add_argument("-o", "--output", required=True, help="the merged trace")
    args = parser.parse_args(argv)

    if args.command == "timeline":
        try:
            merged = timeline.merge(args.files, args.output)
        except (OSError, ValueError) as exc:
            print(f"python -m scaleml timeline merge: {exc}", file=sys.stderr)
            return 1
        ranks = sorted({e["pid"] for e in merged["traceEvents"] if "pid" in e})
        calls = sum(1 for e in merged["traceEvents"] if e.get("cat") == "call")
        print(f"{args.output}: {calls} calls of {len(ranks)} rank(s) from {len(merged['otherData']['files'])} file(s)")
        return 0

    r = report()
    if MPI.COMM_WORLD.Get_rank() != 0:
        return 0
    print(json.dumps(r, indent=1, default=str) if args.json else format_text(r))
    return 0


if __name__ == "__main__":
    sys.exit(main())
