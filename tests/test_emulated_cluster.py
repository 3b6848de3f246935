"""Tests of scripts/emulated_cluster.py (the emulated bandwidth-limited cluster).

The argument-parsing tests always run. The cluster tests need root, `ip netns`,
`tc`, an mpiexec (make install) and mpi4py; they are skipped with the reason
otherwise, and run on CI (root). Every subprocess has a timeout; the whole
module takes about 20-30 s on a 2-core machine.
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
SCRIPT = REPO / "scripts" / "emulated_cluster.py"
PROBE = REPO / "scripts" / "allreduce_probe.py"


def _load_script():
    spec = importlib.util.spec_from_file_location("emulated_cluster", SCRIPT)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


ec = _load_script()


# ---------------------------------------------------------------------------
# argument parsing (no root needed)


def test_parse_rate_units():
    assert ec.parse_rate("1gbit") == 10**9
    assert ec.parse_rate("500mbit") == 500 * 10**6
    assert ec.parse_rate("2.5Gbit") == 2_500_000_000
    assert ec.parse_rate("100mbps") == 800 * 10**6
    assert ec.parse_rate("123456") == 123456
    assert ec.parse_rate("none") is None
    for bad in ("fast", "1gbits", "-1gbit", "10bit", ""):
        with pytest.raises(ec.argparse.ArgumentTypeError):
            ec.parse_rate(bad)
    assert ec.format_rate(10**9) == "1gbit"
    assert ec.format_rate(500 * 10**6) == "500mbit"
    assert ec.format_rate(None) == "none"
    assert ec.default_burst(10**9) == 250_000  # 2 ms at 1 Gbit/s
    assert ec.default_burst(100 * 10**6) == 65536  # floor: one GSO segment


def test_parse_args_command_and_defaults():
    a = ec.parse_args(["--hosts", "4", "--rate", "1gbit", "--", "python", "x.py", "--count", "5"])
    assert a.hosts == 4 and a.rate == 10**9 and a.ranks_per_host == 1
    assert a.command == ["python", "x.py", "--count", "5"]
    assert a.subnet == "10.77.0" and not a.keep_going and a.timeout is None
    a = ec.parse_args(["--hosts", "2", "--rate", "none", "--ranks-per-host", "3", "--subnet", "10.88.1.0/24",
                       "--", "prog", "--hosts", "9"])  # fmt: skip
    assert a.rate is None and a.ranks_per_host == 3 and a.subnet == "10.88.1"
    assert a.command == ["prog", "--hosts", "9"]
    assert ec.parse_args(["--cleanup"]).cleanup


@pytest.mark.parametrize(
    "argv",
    [
        ["--rate", "1gbit", "--", "prog"],  # no --hosts
        ["--hosts", "2", "--", "prog"],  # no --rate
        ["--hosts", "2", "--rate", "1gbit"],  # no command
        ["--hosts", "0", "--rate", "1gbit", "--", "prog"],
        ["--hosts", "2", "--rate", "1gbit", "--ranks-per-host", "0", "--", "prog"],
        ["--hosts", "2", "--rate", "1gbit", "--subnet", "10.77", "--", "prog"],
        ["--cleanup", "--hosts", "2"],
        ["--hosts", "2", "--rate", "1gbit", "--force", "--", "prog"],
        ["--hosts", "2", "--rate", "1gbit", "--burst", "100", "--", "prog"],
    ],
)
def test_parse_args_errors_exit_2(argv, capsys):
    with pytest.raises(SystemExit) as e:
        ec.parse_args(argv)
    assert e.value.code == 2


def test_mpiexec_command_line():
    c = ec.Cluster(ec.Runner(), hosts=3, rate=None, subnet="10.77.0")
    c.launcher_script = "launcher-dir/launch.sh"
    cmd = c.mpiexec_command("/m/mpiexec", 2, ["python", "p.py"], ["-verbose"])
    assert cmd[:5] == ["ip", "netns", "exec", c.launcher_ns, "/m/mpiexec"]
    s = " ".join(cmd)
    assert "-launcher ssh -launcher-exec launcher-dir/launch.sh" in s
    assert "-localhost 10.77.0.254" in s
    assert "-hosts 10.77.0.1:2,10.77.0.2:2,10.77.0.3:2 -ppn 2 -n 6 -verbose python p.py" in s
    env = ec.mpi_environment(no_shm=True)
    assert env["MPIR_CVAR_CH4_NETMOD"] == "ofi" and env["FI_PROVIDER"] == "tcp"
    assert env["FI_TCP_IFACE"] == ec.INNER_IFACE and env["MPIR_CVAR_NOLOCAL"] == "1"


# ---------------------------------------------------------------------------
# on a real emulated cluster (root)


def _skip_reason() -> str | None:
    if not sys.platform.startswith("linux"):
        return "the emulated cluster needs Linux network namespaces"
    if os.geteuid() != 0:
        return "the emulated cluster needs root (network namespaces, veths, tc): run the tests as root"
    if shutil.which("ip") is None:
        return "`ip` (iproute2) is not installed: apt-get install iproute2"
    try:
        r = subprocess.run(["ip", "netns", "list"], capture_output=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired) as e:
        return f"`ip netns` is unavailable: {e}"
    if r.returncode != 0:
        return f"`ip netns` is unavailable: {r.stderr.decode(errors='replace').strip()}"
    if shutil.which("tc") is None:
        return "`tc` (iproute2) is not installed: apt-get install iproute2"
    if not (REPO / ".venv" / "bin" / "mpiexec").exists() and shutil.which("mpiexec") is None:
        return "no mpiexec: run `make install`"
    if importlib.util.find_spec("mpi4py") is None or importlib.util.find_spec("numpy") is None:
        return "mpi4py/numpy not importable by this Python (run the tests with .venv/bin/python)"
    return None


needs_cluster = pytest.mark.skipif(_skip_reason() is not None, reason=str(_skip_reason()))


def _leftovers(tag: str) -> list[str]:
    """Namespaces, links and temp dirs of the run whose script had pid in tag."""
    pid = tag.split("-")[1]
    ns = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True, timeout=10).stdout
    links = subprocess.run(["ip", "-o", "link", "show"], capture_output=True, text=True, timeout=10).stdout
    left = [line.split()[0] for line in ns.splitlines() if line.startswith(tag + "-")]
    left += re.findall(rf"\b{ec.PREFIX}{pid}(?:h\d+|L)[ab]\b", links)
    left += [str(p) for p in Path("/tmp").glob(f"{tag}-*")]
    return left


def _all_sml() -> set[str]:
    ns = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True, timeout=10).stdout
    links = subprocess.run(["ip", "-o", "link", "show"], capture_output=True, text=True, timeout=10).stdout
    names = {line.split()[0] for line in ns.splitlines() if line.startswith(ec.PREFIX + "-")}
    names |= set(re.findall(rf"\b{ec.PREFIX}\d+(?:h\d+|L)[ab]\b", links))
    return names


def _cluster(args: list[str], timeout: float = 60) -> tuple[subprocess.CompletedProcess, str]:
    """Run the script; returns (result, 'sml-<pid>') and checks nothing is left."""
    before = _all_sml()
    p = subprocess.Popen(
        [sys.executable, str(SCRIPT), *args],
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        out, err = p.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        p.kill()
        out, err = p.communicate(timeout=30)
        subprocess.run([sys.executable, str(SCRIPT), "--cleanup"], timeout=60)
        pytest.fail(f"emulated_cluster.py did not finish in {timeout}s\n{out}\n{err}")
    tag = f"{ec.PREFIX}-{p.pid}"
    assert _leftovers(tag) == [], f"left behind: {_leftovers(tag)}\n{err}"
    assert _all_sml() <= before, f"new leftovers: {_all_sml() - before}"
    return subprocess.CompletedProcess(p.args, p.returncode, out, err), tag


def _probe(rate: str, count: int, iterations: int = 5) -> dict:
    r, _ = _cluster(
        ["--hosts", "2", "--rate", rate, "--timeout", "45", "--", sys.executable, str(PROBE),
         "--count", str(count), "--warmup", "2", "--iterations", str(iterations), "--json"]
    )  # fmt: skip
    assert r.returncode == 0, f"rc={r.returncode}\n{r.stdout}\n{r.stderr}"
    lines = [ln for ln in r.stdout.splitlines() if ln.startswith("PROBE_JSON ")]
    assert len(lines) == 1, r.stdout + r.stderr
    rec = json.loads(lines[0][len("PROBE_JSON ") :])
    assert rec["P"] == 2 and rec["hosts"] == 2, rec  # two ranks on two distinct addresses
    assert rec["correct"] is True
    assert rec["count"] == count and 0 < rec["min_s"] <= rec["avg_s"] <= rec["max_s"]
    return rec


@needs_cluster
def test_two_hosts_shaped_is_slower_and_nothing_left():
    count = 1 << 20  # 4 MiB of float32
    unshaped = _probe("none", count)
    shaped = _probe("200mbit", count)
    # At 200 Mbit/s per host, 2 ranks exchange ~4 MiB each way: >= ~170 ms;
    # unshaped TCP over veth: ~10-30 ms. Assert a robust ratio only.
    assert shaped["min_s"] > 2 * unshaped["min_s"], (shaped, unshaped)
    assert shaped["min_s"] > 0.08, shaped  # 33.5 Mbit at 200 Mbit/s takes >= 0.168 s


@needs_cluster
def test_failing_command_tears_down():
    r, _ = _cluster(["--hosts", "2", "--rate", "100mbit", "--timeout", "30", "--", "sh", "-c", "exit 3"])
    assert r.returncode == 3, r.stderr


@needs_cluster
def test_setup_failure_tears_down():
    # tc rejects this bucket on the first host, after the bridge and that host exist
    r, _ = _cluster(["--hosts", "2", "--rate", "1gbit", "--burst", "100000000000", "--", "true"])
    assert r.returncode == 2 and "tc tbf failed" in r.stderr, r.stderr


@needs_cluster
def test_timeout_tears_down():
    r, _ = _cluster(["--hosts", "2", "--rate", "none", "--timeout", "2", "--", "sleep", "60"])
    assert r.returncode == 124, r.stderr


@needs_cluster
def test_sigint_tears_down():
    before = _all_sml()
    p = subprocess.Popen(
        [sys.executable, str(SCRIPT), "--hosts", "2", "--rate", "1gbit", "--timeout", "60",
         "--", "sleep", "60"],
        cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    tag = f"{ec.PREFIX}-{p.pid}"
    try:
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline and len(_leftovers(tag)) < 4:  # wait for the namespaces
            time.sleep(0.2)
        time.sleep(1.0)  # let mpiexec start the job
        p.send_signal(signal.SIGINT)
        out, err = p.communicate(timeout=30)
    finally:
        if p.poll() is None:
            p.kill()
            p.communicate(timeout=30)
    assert p.returncode == 130, err
    assert _leftovers(tag) == [], err
    assert _all_sml() <= before


@needs_cluster
def test_cleanup_mode_runs():
    r = subprocess.run([sys.executable, str(SCRIPT), "--cleanup"], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
