"""mpi4py's own test suite, plain and with every communicator a ``scaleml.Comm``: the same tests must pass.

Usage::

    .venv/bin/python scripts/mpi4py_parity.py                 # the default modules at 1, 2 and 3 ranks
    .venv/bin/python scripts/mpi4py_parity.py --ranks 2 --modules test_cco_buf test_comm

Steps:

1. The sdist of the *installed* mpi4py (``pip download --no-binary :all:
   --no-deps mpi4py==<version>``) into ``build/mpi4py-parity/`` (git-ignored;
   reused when present), unpacked there. The downloaded files are not edited.
2. For every rank count, mpi4py's test runner (``test/main.py``) on the chosen
   modules under ``mpiexec``, twice: plain, and wrapped, where this script
   gives the test modules an ``MPI`` module whose ``COMM_WORLD`` and
   ``COMM_SELF`` are ``scaleml.Comm`` objects over them (so every communicator
   the tests use or derive with ``Dup``, ``Split``, ``Create``... is a
   ``scaleml.Comm``; objects the tests build with ``MPI.Intracomm(...)`` stay
   mpi4py's). Every rank records each test's outcome as it goes (a crash or a
   timeout leaves the tests it did not finish as failed), and every launch
   has a timeout that kills the whole job.
3. A table of tests run / passed / failed / skipped per module and rank
   count, plain and wrapped. A test passes where it passed on every rank. The
   exit status is 0 when the wrapped runs pass exactly the tests the plain
   runs pass, 1 when they differ (the differing tests are listed) or a launch
   crashed or timed out, 2 when the sdist cannot be fetched or the plain runs
   ran no test.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import tarfile
import time
import types
import unittest
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
CACHE = ROOT / "build" / "mpi4py-parity"
# The collectives (nonblocking ones included), point-to-point, communicators and requests. mpi4py's
# other modules of these families (test_cco_vec, test_cco_nb_vec, test_cco_pr_*, test_cco_ngh_buf,
# test_p2p_buf_part) take 20-40 s each at 3 ranks on 2 cores: --modules runs them too.
DEFAULT_MODULES = (
    "test_cco_buf", "test_cco_nb_buf", "test_cco_obj", "test_cco_buf_inter", "test_cco_obj_inter",
    "test_cco_vec_inter", "test_cco_ngh_obj",
    "test_p2p_buf", "test_p2p_obj", "test_p2p_buf_matched", "test_p2p_obj_matched",
    "test_comm", "test_comm_inter", "test_comm_topo",
    "test_request",
)
FAMILIES = ("test_cco_", "test_p2p_", "test_comm", "test_request")
MODES = ("plain", "wrapped")


class FetchError(RuntimeError):
    """The mpi4py sdist could not be downloaded or unpacked."""


# ---- step 1: the test modules of the installed mpi4py -----------------------------------------------------


def installed_mpi4py_version() -> str:
    """The version of the mpi4py this Python imports (without initializing MPI)."""
    out = subprocess.run([sys.executable, "-c", "import mpi4py; print(mpi4py.__version__)"],
                         capture_output=True, text=True, check=True, timeout=60)
    return out.stdout.strip()


def fetch_tests(version: str, cache: Path) -> Path:
    """The ``test/`` folder of mpi4py ``version``'s sdist, downloaded and unpacked into ``cache`` once."""
    testdir = cache / f"mpi4py-{version}" / "test"
    if (testdir / "main.py").is_file():
        return testdir
    cache.mkdir(parents=True, exist_ok=True)
    archive = cache / f"mpi4py-{version}.tar.gz"
    if not archive.is_file():
        # No build isolation: the sdist's metadata needs only setuptools (in the venv); an isolated build would
        # first build setuptools and Cython from their sdists (--no-binary :all:), 20 s more.
        cmd = [sys.executable, "-m", "pip", "download", "--no-binary", ":all:", "--no-deps", "--no-build-isolation",
               "--quiet", f"mpi4py=={version}", "-d", str(cache)]
        try:
            result = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
        except subprocess.TimeoutExpired as exc:
            raise FetchError(f"{' '.join(cmd)} timed out after 300 s") from exc
        if result.returncode != 0 or not archive.is_file():
            raise FetchError(f"{' '.join(cmd)} failed (exit {result.returncode}):\n{result.stdout}{result.stderr}")
    try:
        with tarfile.open(archive) as tar:
            members = [m for m in tar.getmembers() if m.name.startswith(f"mpi4py-{version}/test/")]
            if sys.version_info >= (3, 12):
                tar.extractall(cache, members=members, filter="data")
            else:  # the members are checked: files of the test folder only
                if any(m.issym() or m.islnk() or ".." in Path(m.name).parts for m in members):
                    raise FetchError(f"{archive}: unexpected links or paths in test/")
                tar.extractall(cache, members=members)
    except (tarfile.TarError, OSError) as exc:
        raise FetchError(f"cannot unpack {archive}: {exc}") from exc
    if not (testdir / "main.py").is_file():
        raise FetchError(f"{archive} has no test/main.py")
    return testdir


# ---- step 2: one rank of one run (this script under mpiexec) -----------------------------------------------


class _Recorder(unittest.TextTestResult):
    """Writes each test's outcome to this rank's record file as it happens (a crash keeps what came before)."""

    record: Path

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self._file = open(self.record, "w", encoding="utf-8")  # noqa: SIM115 (open for the whole run)
        self._subtest_failed: set[str] = set()

    def _write(self, test: unittest.TestCase, outcome: str) -> None:
        self._file.write(json.dumps({"test": test.id(), "outcome": outcome}) + "\n")
        self._file.flush()

    def startTest(self, test):  # noqa: N802 (unittest's names)
        super().startTest(test)
        self._write(test, "crash")  # replaced by the outcome unless the process dies first

    def addSuccess(self, test):  # noqa: N802
        super().addSuccess(test)
        self._write(test, "fail" if test.id() in self._subtest_failed else "pass")

    def addSubTest(self, test, subtest, err):  # noqa: N802
        super().addSubTest(test, subtest, err)
        if err is not None:
            self._subtest_failed.add(test.id())
            self._write(test, "fail")

    def addFailure(self, test, err):  # noqa: N802
        super().addFailure(test, err)
        self._write(test, "fail")

    def addError(self, test, err):  # noqa: N802
        super().addError(test, err)
        self._write(test, "error")

    def addSkip(self, test, reason):  # noqa: N802
        super().addSkip(test, reason)
        self._write(test, "skip")

    def addExpectedFailure(self, test, err):  # noqa: N802
        super().addExpectedFailure(test, err)
        self._write(test, "xfail")

    def addUnexpectedSuccess(self, test):  # noqa: N802
        super().addUnexpectedSuccess(test)
        self._write(test, "upass")


class _WrappedMPI(types.ModuleType):
    """``mpi4py.MPI`` as the wrapped run's test modules see it: its own attributes, else mpi4py.MPI's."""

    def __init__(self, mpi: types.ModuleType) -> None:
        super().__init__(mpi.__name__, mpi.__doc__)
        self._mpi = mpi

    def __getattr__(self, name: str) -> object:
        return getattr(self._mpi, name)


def worker(mode: str, testdir: Path, record_prefix: Path, modules: list[str]) -> None:
    """Run mpi4py's test runner on ``modules`` on this rank, recording outcomes to ``<prefix>.<rank>.jsonl``."""
    sys.dont_write_bytecode = True
    sys.path.insert(0, str(testdir))
    from mpi4py import MPI  # noqa: PLC0415 (initializes MPI: in the ranks only, not in the driver)

    rank = MPI.COMM_WORLD.Get_rank()
    if mode == "wrapped":
        import mpi4py  # noqa: PLC0415

        import scaleml  # noqa: PLC0415

        # The test modules' `from mpi4py import MPI` reads the package's attribute: a module that is
        # mpi4py.MPI but for COMM_WORLD and COMM_SELF, set before the test modules are imported (their class
        # attributes, COMM = MPI.COMM_WORLD, take these). sys.modules keeps the real module, where pickle
        # finds mpi4py's own predefined objects by name.
        wrapped_mpi = _WrappedMPI(MPI)
        wrapped_mpi.COMM_WORLD = scaleml.Comm(MPI.COMM_WORLD)
        wrapped_mpi.COMM_SELF = scaleml.Comm(MPI.COMM_SELF)
        mpi4py.MPI = wrapped_mpi
    import main as mpi4py_test_main  # noqa: PLC0415 (mpi4py's test/main.py)

    _Recorder.record = Path(f"{record_prefix}.{rank}.jsonl")
    with open(f"{record_prefix}.{rank}.log", "w", encoding="utf-8") as log:
        runner = unittest.TextTestRunner(stream=log, verbosity=0, resultclass=_Recorder)
        includes = [arg for module in modules for arg in ("-i", f"^{module}\\.py$")]
        try:
            mpi4py_test_main.main(module=None, argv=["mpi4py-tests", "--no-builddir", *includes], testRunner=runner)
        except SystemExit:  # mpi4py's runner exits with the result; the records say it
            pass
    if mode == "wrapped":  # every test module saw the wrapped MPI (else the wrapped run tested plain mpi4py)
        unwrapped = [name for name, module in list(sys.modules.items())
                     if name.startswith("test_") and getattr(module, "MPI", wrapped_mpi) is not wrapped_mpi]
        if unwrapped:
            print(f"mpi4py_parity: modules {unwrapped} did not see the wrapped MPI", file=sys.stderr, flush=True)
            sys.exit(3)


# ---- step 2: the launches ----------------------------------------------------------------------------------------


def mpiexec() -> str:
    """The mpiexec next to this Python (the venv's MPICH), else the one on PATH."""
    local = Path(sys.executable).parent / "mpiexec"
    found = str(local) if local.exists() else shutil.which("mpiexec")
    if not found:
        raise SystemExit("mpi4py_parity: no mpiexec found (run `make install`)")
    return found


def launch(mode: str, nprocs: int, testdir: Path, modules: list[str], workdir: Path,
           timeout: float) -> tuple[dict[str, list[str]], str, float]:
    """One run: ({test id: outcome on each rank}, what happened to the launch, seconds)."""
    prefix = workdir / f"{mode}-{nprocs}"
    for stale in workdir.glob(f"{prefix.name}.*"):
        stale.unlink()
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])))
    cmd = [mpiexec(), "-n", str(nprocs), sys.executable, str(Path(__file__).resolve()), "--worker", mode,
           "--testdir", str(testdir), "--record", str(prefix), "--modules", *modules]
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, cwd=testdir, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True)
    try:
        output, _ = proc.communicate(timeout=timeout)
        status = "ok" if proc.returncode == 0 else f"exit {proc.returncode}"  # failed tests exit 0: records say
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)  # the whole job: mpiexec and every rank
        output, _ = proc.communicate()
        status = f"timeout after {timeout:.0f} s"
    seconds = time.perf_counter() - start
    outcomes: dict[str, list[str]] = {}
    for rank in range(nprocs):
        record = Path(f"{prefix}.{rank}.jsonl")
        seen: dict[str, str] = {}
        if record.is_file():
            for line in record.read_text(encoding="utf-8").splitlines():
                entry = json.loads(line)
                seen[entry["test"]] = entry["outcome"]
        for test in seen.keys() | outcomes.keys():
            outcomes.setdefault(test, ["missing"] * rank).append(seen.get(test, "missing"))
    if status != "ok":
        tail = output[-3000:].strip()
        status += f"\n    {tail.replace(chr(10), chr(10) + '    ')}" if tail else ""
    return outcomes, status, seconds


def verdict(per_rank: list[str]) -> str:
    """A test's outcome over the ranks: pass (every rank), skip (every rank), else fail."""
    if all(o in ("pass", "xfail") for o in per_rank):
        return "pass"
    if all(o == "skip" for o in per_rank):
        return "skip"
    return "fail"


# ---- step 3: the comparison ----------------------------------------------------------------------------------


def compare(ranks: list[int], modules: list[str], results: dict[tuple[str, int], dict[str, list[str]]]) -> int:
    """Print the table and the differences; 0 when every wrapped run passes the plain run's tests, else 1."""
    header = (f"{'module':<22}{'ranks':>5} | {'plain: run':>10}{'pass':>6}{'fail':>6}{'skip':>6} | "
              f"{'wrapped: run':>12}{'pass':>6}{'fail':>6}{'skip':>6} | same")
    print(header)
    print("-" * len(header))
    differences: list[str] = []
    totals = {mode: Counter() for mode in MODES}
    for nprocs in ranks:
        for module in modules:
            cells = []
            passed = {}
            for mode in MODES:
                tests = {t: verdict(o) for t, o in results[mode, nprocs].items() if t.split(".")[0] == module}
                counts = Counter(tests.values())
                totals[mode].update(run=len(tests), **counts)
                passed[mode] = {t for t, v in tests.items() if v == "pass"}
                cells.append((len(tests), counts["pass"], counts["fail"], counts["skip"]))
            same = passed["plain"] == passed["wrapped"]
            (pr, pp, pf, ps), (wr, wp, wf, ws) = cells
            print(f"{module:<22}{nprocs:>5} | {pr:>10}{pp:>6}{pf:>6}{ps:>6} | {wr:>12}{wp:>6}{wf:>6}{ws:>6} | "
                  f"{'yes' if same else 'NO'}")
            for test in sorted(passed["plain"] ^ passed["wrapped"]):
                plain = results["plain", nprocs].get(test, ["not run"])
                wrapped = results["wrapped", nprocs].get(test, ["not run"])
                differences.append(f"  {nprocs} ranks  {test}: plain {'/'.join(plain)}, wrapped {'/'.join(wrapped)}")
    print("-" * len(header))
    p, w = totals["plain"], totals["wrapped"]
    print(f"{'total':<22}{'':>5} | {p['run']:>10}{p['pass']:>6}{p['fail']:>6}{p['skip']:>6} | "
          f"{w['run']:>12}{w['pass']:>6}{w['fail']:>6}{w['skip']:>6} | {'yes' if not differences else 'NO'}")
    if differences:
        print(f"\n{len(differences)} tests pass in one run and not in the other (outcome on each rank):")
        print("\n".join(differences[:100]))
        return 1
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--ranks", type=int, nargs="+", default=[1, 2, 3], help="rank counts (default 1 2 3)")
    parser.add_argument("--modules", nargs="+", default=list(DEFAULT_MODULES),
                        help="mpi4py test modules (default: %(default)s); 'all' for every module of the "
                             "four families")
    parser.add_argument("--timeout", type=float, default=240, help="seconds per mpiexec launch (default 240)")
    parser.add_argument("--cache", type=Path, default=CACHE, help="where the sdist goes (default build/mpi4py-parity)")
    parser.add_argument("--worker", choices=MODES, help=argparse.SUPPRESS)
    parser.add_argument("--testdir", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--record", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        worker(args.worker, args.testdir, args.record, args.modules)
        return 0

    version = installed_mpi4py_version()
    try:
        testdir = fetch_tests(version, args.cache)
    except FetchError as exc:
        print(f"mpi4py_parity: cannot fetch the test suite of mpi4py {version}: {exc}", file=sys.stderr)
        return 2
    modules = args.modules
    if modules == ["all"]:
        modules = sorted(p.stem for p in testdir.glob("test_*.py") if p.stem.startswith(FAMILIES))
    unknown = [m for m in modules if not (testdir / f"{m}.py").is_file()]
    if unknown:
        print(f"mpi4py_parity: no such test modules in mpi4py {version}: {' '.join(unknown)}", file=sys.stderr)
        return 2
    workdir = args.cache / "runs"
    workdir.mkdir(parents=True, exist_ok=True)
    print(f"mpi4py {version} test suite ({testdir}), ranks {' '.join(map(str, args.ranks))}")
    results = {}
    failed_launches: list[str] = []
    for nprocs in args.ranks:
        for mode in MODES:
            outcomes, status, seconds = launch(mode, nprocs, testdir, modules, workdir, args.timeout)
            results[mode, nprocs] = outcomes
            if status != "ok":
                failed_launches.append(f"  {mode} {nprocs} ranks: {status}")
            print(f"  {mode:<8}{nprocs} ranks: {len(outcomes)} tests in {seconds:.1f} s ({status.splitlines()[0]})",
                  flush=True)
    print()
    status = compare(args.ranks, modules, results)
    if not any(results["plain", n] for n in args.ranks):
        print("mpi4py_parity: the plain runs ran no test: nothing was compared", file=sys.stderr)
        return 2
    if failed_launches:
        print("\nlaunches that did not end normally:\n" + "\n".join(failed_launches))
        return 1
    return status


if __name__ == "__main__":
    sys.exit(main())
