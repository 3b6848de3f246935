#!/usr/bin/env python3
"""Emulated bandwidth-limited cluster on one Linux machine, for MPI jobs.

Brings up N emulated hosts, each in its own network namespace with its own
address, with a per-host bandwidth limit, runs an MPI job across them with
MPICH's hydra (R ranks per host), prints the job's output, and tears everything
down afterwards: on success, on failure, on exceptions, on Ctrl-C and SIGTERM.

    sudo scripts/emulated_cluster.py --hosts 4 --rate 1gbit -- \\
        .venv/bin/python scripts/allreduce_probe.py --count 4194304

Requires root, iproute2 (`ip netns`, `ip link`) and `tc` with the `tbf` qdisc
(Debian/Ubuntu: `apt-get install iproute2`). Uses only the Python standard
library (3.9+).

Topology (all names start with ``sml-<pid>`` or ``sml<pid>``, <pid> being the
pid of the script, so `--cleanup` can find leftovers of a crashed run):

    netns sml-<pid>-br      bridge "br0"; the bridge ends of all veths
    netns sml-<pid>-h<i>    emulated host i, address <subnet>.<i+1>, interface "sml0"
    netns sml-<pid>-l       the launcher: runs mpiexec, address <subnet>.254, "sml0"

Each host is joined to the bridge by a veth pair with a `tc tbf` limit on BOTH
ends: the end inside the host namespace limits what the host sends, the end in
the bridge namespace limits what it receives, so every host has --rate up and
--rate down, like a host with a full-duplex NIC of that speed on a
non-blocking switch. The launcher's link is not shaped (it carries only hydra's
control traffic). Nothing is added to the root namespace: all traffic stays
inside the namespaces this script creates.

MPI: mpiexec (hydra) runs inside the launcher namespace with `-localhost
<launcher address>`, `-launcher ssh -launcher-exec <temp script>`; the temp
script receives hydra's ssh-style arguments (`-x HOST COMMAND...`) and runs the
command as `ip netns exec <namespace of HOST> sh -c COMMAND` (shell semantics,
as ssh would), so each hydra_pmi_proxy and its ranks live inside the host's
namespace and connect back to mpiexec over the bridge.

Namespaces share /dev/shm and everything else but the network, so MPICH would
bypass the limit through shared memory; the script forces it onto TCP with
MPIR_CVAR_CH4_NETMOD=ofi, FI_PROVIDER=tcp, FI_TCP_IFACE=sml0. Ranks on
different emulated hosts are on different hydra proxies, so MPICH treats them as
different nodes and uses the network. With --ranks-per-host R > 1, ranks on the
same emulated host use MPICH's shared memory between themselves, like ranks on
one real node; --no-shm sets MPIR_CVAR_NOLOCAL=1 to send them through the
netmod too (over loopback of the host's namespace, which is NOT shaped; only
traffic between hosts is).

What is emulated: a per-host bandwidth cap (token bucket) in both directions.
What is not: latency/delay (the `netem` qdisc is not available in every kernel
and is not used), packet loss, switch oversubscription, and CPU: all ranks
share this machine's cores, and TCP over veth costs CPU (on a 2-core machine
one rank tops out near 3-4 Gbit/s), so only limits clearly below what the
machine can push (about 2 Gbit/s and below on 2 cores) are meaningful.

Exit status: the job's exit status; 2 for usage errors and missing
requirements (not root, no `ip netns`, no `tc`); 124 when --timeout expired;
130 on Ctrl-C (143 on SIGTERM).

    scripts/emulated_cluster.py --cleanup      # remove leftovers of crashed runs
"""

from __future__ import annotations

import argparse
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

PREFIX = "sml"  # namespaces "sml-<pid>-...", links "sml<pid>...", temp dirs "sml-<pid>-..."
INNER_IFACE = "sml0"  # name of the veth end inside each host/launcher namespace
BRIDGE = "br0"
REPO = Path(__file__).resolve().parent.parent
CMD_TIMEOUT = 30  # seconds, for each ip/tc command

_RATE_UNITS = {
    "bit": 1,
    "kbit": 10**3,
    "mbit": 10**6,
    "gbit": 10**9,
    "tbit": 10**12,
    "bps": 8,
    "kbps": 8 * 10**3,
    "mbps": 8 * 10**6,
    "gbps": 8 * 10**9,
}


class SetupError(RuntimeError):
    """A requirement is missing or a setup command failed."""


class Interrupted(BaseException):
    """Raised from the signal handler on SIGINT/SIGTERM (BaseException so that
    `except Exception` blocks do not swallow it)."""

    def __init__(self, signum: int):
        super().__init__(signum)
        self.signum = signum


def parse_rate(text: str) -> int | None:
    """'1gbit' -> 1e9 bits/s; 'none' -> None (no shaping). Units as in tc:
    bit, kbit, mbit, gbit, tbit (bits/s, powers of 10), bps, kbps, mbps, gbps
    (bytes/s); a bare number is bits/s."""
    t = text.strip().lower()
    if t in ("none", "off", "0", "unlimited"):
        return None
    m = re.fullmatch(r"(\d+(?:\.\d+)?)\s*([a-z]*)", t)
    if not m or (m.group(2) and m.group(2) not in _RATE_UNITS):
        raise argparse.ArgumentTypeError(f"bad rate {text!r}: use e.g. 1gbit, 500mbit, 2gbit, or 'none'")
    bits = float(m.group(1)) * _RATE_UNITS[m.group(2) or "bit"]
    if bits < 8000:
        raise argparse.ArgumentTypeError(f"rate {text!r} is too small (minimum 8kbit)")
    return int(bits)


def format_rate(bits: int | None) -> str:
    if bits is None:
        return "none"
    for unit, mult in (("gbit", 10**9), ("mbit", 10**6), ("kbit", 10**3)):
        if bits % mult == 0:
            return f"{bits // mult}{unit}"
    return f"{bits}bit"


def default_burst(rate: int) -> int:
    """tbf bucket in bytes: 2 ms worth of the rate, at least 64 KiB (a full
    GSO/TSO segment). Measured on a 2-core VM at 1gbit, P = 4, 2^22 float32:
    buckets of 0.125-0.5 ms at the rate (16-64 KiB) collapse the throughput
    (1.0-2.8 s instead of 0.23 s: the qdisc is not woken up often enough to use
    its tokens), 1-4 ms give the same 232 ms. A larger bucket lets messages
    smaller than it pass at veth speed when the bucket is full."""
    return max(int(rate / 8 * 0.002), 65536)


def parse_subnet(text: str) -> str:
    """'10.77.0.0/24' or '10.77.0' -> '10.77.0' (a /24 is used)."""
    t = text.strip()
    t = t[:-3] if t.endswith("/24") else t
    parts = t.split(".")
    if len(parts) == 4 and parts[3] == "0":
        parts = parts[:3]
    if len(parts) != 3 or not all(p.isdigit() and 0 <= int(p) <= 255 for p in parts):
        raise argparse.ArgumentTypeError(f"bad subnet {text!r}: expected a /24 like 10.77.0.0/24")
    return ".".join(parts)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="emulated_cluster.py",
        description=(
            "Run an MPI job on N emulated hosts (network namespaces on this machine) with a "
            "per-host bandwidth limit (tc tbf on both ends of each host's veth), then tear "
            "everything down. Needs root, iproute2 and tc."
        ),
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=(
            "examples:\n"
            "  emulated_cluster.py --hosts 4 --rate 1gbit -- .venv/bin/python "
            "scripts/allreduce_probe.py --count 4194304\n"
            "  emulated_cluster.py --hosts 4 --rate none -- .venv/bin/python "
            "scripts/allreduce_probe.py\n"
            "  emulated_cluster.py --hosts 2 --ranks-per-host 2 --rate 500mbit -- "
            ".venv/bin/scaleml-bench\n"
            "  emulated_cluster.py --cleanup\n\n"
            "COMMAND is the program each rank runs; the script builds the mpiexec command line\n"
            "(-n N*R -ppn R -hosts ... -launcher ssh -launcher-exec ... -localhost ...).\n"
            "Ranks are placed host by host: ranks 0..R-1 on host 0, R..2R-1 on host 1, ...\n"
            "Ranks on the same emulated host talk through shared memory unless --no-shm.\n"
            "Only bandwidth is shaped: there is no added latency (netem is not used).\n"
            "See the module docstring and docs/emulated_cluster.md for details."
        ),
    )
    p.add_argument("--hosts", type=int, default=None, metavar="N", help="number of emulated hosts")
    p.add_argument(
        "--rate",
        type=parse_rate,
        default=argparse.SUPPRESS,
        metavar="RATE",
        help="bandwidth limit per host and direction, tc units (1gbit, 500mbit, ...), or 'none' "
        "for no shaping (required with --hosts)",
    )
    p.add_argument("--ranks-per-host", type=int, default=1, metavar="R", help="MPI ranks per host (1)")
    p.add_argument(
        "--mpiexec",
        default=None,
        metavar="PATH",
        help="mpiexec (hydra) to use; default <repo>/.venv/bin/mpiexec if it exists, else mpiexec on PATH",
    )
    p.add_argument(
        "--subnet",
        type=parse_subnet,
        default="10.77.0",
        metavar="A.B.C.0/24",
        help="private /24 used inside the namespaces (10.77.0.0/24); hosts get .1.., the launcher .254",
    )
    p.add_argument(
        "--burst",
        type=int,
        default=None,
        metavar="BYTES",
        help="tbf bucket size in bytes (default: 2 ms at the rate, at least 65536); smaller buckets "
        "collapse the throughput on a busy machine",
    )
    p.add_argument(
        "--no-shm",
        action="store_true",
        help="also keep ranks on the same host off shared memory (MPIR_CVAR_NOLOCAL=1)",
    )
    p.add_argument(
        "--timeout",
        type=float,
        default=None,
        metavar="SECONDS",
        help="kill the job after this many seconds (exit status 124)",
    )
    p.add_argument(
        "--keep-going",
        action="store_true",
        help="after the job ends (success or failure), keep the cluster up and wait for Ctrl-C "
        "(or SIGTERM) before tearing it down, to inspect it with `ip netns exec`",
    )
    p.add_argument(
        "--mpiexec-arg",
        action="append",
        default=[],
        metavar="ARG",
        help="extra argument for mpiexec (repeatable), e.g. --mpiexec-arg=-verbose",
    )
    p.add_argument("-v", "--verbose", action="store_true", help="print the ip/tc/mpiexec commands run")
    p.add_argument(
        "--cleanup",
        action="store_true",
        help="remove leftovers (namespaces, veths, temp dirs named sml-*) of runs whose script is no "
        "longer running, then exit",
    )
    p.add_argument(
        "--force",
        action="store_true",
        help="with --cleanup: also remove leftovers of runs that still seem to be alive",
    )
    p.add_argument("command", nargs=argparse.REMAINDER, help="-- PROGRAM [ARGS...] run by every rank")
    return p


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = build_parser()
    args = p.parse_args(argv)
    cmd = list(args.command)
    if cmd and cmd[0] == "--":
        cmd = cmd[1:]
    args.command = cmd
    if args.cleanup:
        if cmd or args.hosts is not None:
            p.error("--cleanup takes no --hosts and no command")
        return args
    if args.force:
        p.error("--force only goes with --cleanup")
    if args.hosts is None:
        p.error("--hosts N is required")
    if not 1 <= args.hosts <= 200:
        p.error("--hosts must be between 1 and 200")
    if args.ranks_per_host < 1:
        p.error("--ranks-per-host must be >= 1")
    if not hasattr(args, "rate"):
        p.error("--rate RATE is required (e.g. 1gbit, or 'none' for no shaping)")
    if not cmd:
        p.error("no command given: put the program after '--'")
    if args.burst is not None and args.burst < 1600:
        p.error("--burst must be at least 1600 bytes (one MTU-sized frame)")
    if args.timeout is not None and args.timeout <= 0:
        p.error("--timeout must be positive")
    return args


# ---------------------------------------------------------------------------
# running commands


class Runner:
    def __init__(self, verbose: bool = False):
        self.verbose = verbose

    def run(self, *cmd: str, check: bool = True, timeout: float = CMD_TIMEOUT) -> subprocess.CompletedProcess:
        if self.verbose:
            print("+ " + shlex.join(cmd), file=sys.stderr, flush=True)
        try:
            r = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
        except subprocess.TimeoutExpired as e:
            raise SetupError(f"timed out after {timeout}s: {shlex.join(cmd)}") from e
        if check and r.returncode != 0:
            raise SetupError(f"command failed ({r.returncode}): {shlex.join(cmd)}\n{r.stderr.strip()}")
        return r

    def ns(self, ns: str, *cmd: str, check: bool = True) -> subprocess.CompletedProcess:
        return self.run("ip", "netns", "exec", ns, *cmd, check=check)


def check_requirements(runner: Runner, need_tc: bool) -> None:
    """Exit with status 2 and a clear message if something is missing."""
    if os.geteuid() != 0:
        die("needs root (network namespaces, veths and tc need CAP_NET_ADMIN): run it with sudo", 2)
    if shutil.which("ip") is None:
        die("`ip` not found: install iproute2 (apt-get install iproute2)", 2)
    r = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True, timeout=CMD_TIMEOUT)
    if r.returncode != 0:
        die(f"`ip netns` is unavailable: {r.stderr.strip()} (needs iproute2 and a kernel with netns)", 2)
    if need_tc and shutil.which("tc") is None:
        die("`tc` not found: install iproute2 (apt-get install iproute2), or use --rate none", 2)


def die(msg: str, code: int) -> None:
    print(f"emulated_cluster: error: {msg}", file=sys.stderr, flush=True)
    sys.exit(code)


def find_mpiexec(given: str | None) -> str:
    if given:
        path = shutil.which(given) or given
        if not os.access(path, os.X_OK):
            die(f"--mpiexec {given!r} is not an executable", 2)
        return os.path.abspath(path)
    venv = REPO / ".venv" / "bin" / "mpiexec"
    if venv.exists():
        return str(venv)
    path = shutil.which("mpiexec")
    if path is None:
        die("no mpiexec: run `make install` (creates .venv with MPICH) or pass --mpiexec PATH", 2)
    return path


# ---------------------------------------------------------------------------
# the cluster


class Cluster:
    """N host namespaces + a launcher namespace on a bridge in its own namespace."""

    def __init__(self, runner: Runner, hosts: int, rate: int | None, subnet: str, burst: int | None = None):
        self.r = runner
        self.burst = burst
        self.n = hosts
        self.rate = rate
        self.subnet = subnet
        self.pid = os.getpid()
        self.tag = f"{PREFIX}-{self.pid}"
        self.br_ns = f"{self.tag}-br"
        self.launcher_ns = f"{self.tag}-l"
        self.launcher_addr = f"{subnet}.254"
        self.host_ns = [f"{self.tag}-h{i}" for i in range(hosts)]
        self.host_addr = [f"{subnet}.{i + 1}" for i in range(hosts)]
        self.tmpdir: str | None = None
        self.launcher_script: str | None = None

    # names of the veth ends while in the root namespace (<= 15 chars)
    def _veth(self, idx: str) -> tuple[str, str]:
        return f"{PREFIX}{self.pid}{idx}a", f"{PREFIX}{self.pid}{idx}b"

    def up(self) -> None:
        r = self.r
        # leftovers of a crashed run whose pid was the same as ours: not alive, remove
        cleanup(r, tags=[self.tag])
        self.tmpdir = tempfile.mkdtemp(prefix=f"{self.tag}-")
        r.run("ip", "netns", "add", self.br_ns)
        r.ns(self.br_ns, "ip", "link", "set", "lo", "up")
        r.ns(self.br_ns, "ip", "link", "add", BRIDGE, "type", "bridge")
        r.ns(self.br_ns, "ip", "link", "set", BRIDGE, "up")
        ends = [(ns, addr, f"h{i}", True) for i, (ns, addr) in enumerate(zip(self.host_ns, self.host_addr))]
        ends.append((self.launcher_ns, self.launcher_addr, "L", False))
        for ns, addr, idx, shaped in ends:
            inner, outer = self._veth(idx)
            r.run("ip", "netns", "add", ns)
            r.ns(ns, "ip", "link", "set", "lo", "up")
            r.run("ip", "link", "add", inner, "type", "veth", "peer", "name", outer)
            r.run("ip", "link", "set", inner, "netns", ns)
            r.run("ip", "link", "set", outer, "netns", self.br_ns)
            r.ns(ns, "ip", "link", "set", inner, "name", INNER_IFACE)
            r.ns(ns, "ip", "addr", "add", f"{addr}/24", "dev", INNER_IFACE)
            r.ns(ns, "ip", "link", "set", INNER_IFACE, "up")
            r.ns(self.br_ns, "ip", "link", "set", outer, "master", BRIDGE)
            r.ns(self.br_ns, "ip", "link", "set", outer, "up")
            if shaped and self.rate is not None:
                self._shape(ns, INNER_IFACE)  # host -> switch (upload)
                self._shape(self.br_ns, outer)  # switch -> host (download)
        self._write_launcher()
        self._check_connectivity()

    def _shape(self, ns: str, dev: str) -> None:
        assert self.rate is not None
        rate_bytes = self.rate / 8
        burst = self.burst or default_burst(self.rate)
        # Queue up to ~20 ms at the rate (at least 256 KiB), then drop: TCP adapts.
        limit = max(int(rate_bytes * 0.020), 262144)
        r = self.r.ns(
            ns, "tc", "qdisc", "replace", "dev", dev, "root", "tbf",
            "rate", f"{self.rate}bit", "burst", str(burst), "limit", str(limit),
            check=False,
        )  # fmt: skip
        if r.returncode != 0:
            raise SetupError(
                f"tc tbf failed on {dev} in {ns}: {r.stderr.strip()}\n"
                "(if the qdisc kind is unknown, the kernel lacks sch_tbf (CONFIG_NET_SCH_TBF): "
                "use --rate none)"
            )

    def _write_launcher(self) -> None:
        """The script hydra runs instead of ssh: `script [-x ...] HOST CMD...`."""
        assert self.tmpdir is not None
        cases = "\n".join(
            f"    {addr}) ns={shlex.quote(ns)} ;;" for addr, ns in zip(self.host_addr, self.host_ns)
        )
        text = f"""#!/bin/sh
# Written by emulated_cluster.py (pid {self.pid}); removed at teardown.
# hydra calls it like ssh: [options] HOST COMMAND...; run COMMAND in HOST's namespace.
while [ $# -gt 0 ]; do
  case "$1" in
    -o|-p|-l|-i|-F) shift 2 ;;
    -*) shift ;;
    *) break ;;
  esac
done
host="$1"; shift
case "$host" in
{cases}
    *) echo "emulated_cluster launcher: unknown host $host" >&2; exit 255 ;;
esac
exec ip netns exec "$ns" sh -c "$*"
"""
        path = os.path.join(self.tmpdir, "launch.sh")
        with open(path, "w") as f:
            f.write(text)
        os.chmod(path, 0o700)
        self.launcher_script = path

    def _check_connectivity(self) -> None:
        """Every host reaches the launcher (hydra's control port) over the bridge:
        a TCP connect to a closed port must be refused (not time out)."""
        probe = (
            "import socket,sys,time\n"
            "for _ in range(50):\n"
            "    s = socket.socket(); s.settimeout(1)\n"
            "    try:\n"
            "        s.connect((sys.argv[1], 9)); sys.exit(0)\n"
            "    except ConnectionRefusedError:\n"
            "        sys.exit(0)\n"
            "    except OSError:\n"
            "        time.sleep(0.1)\n"
            "    finally:\n"
            "        s.close()\n"
            "sys.exit(1)\n"
        )
        for ns in self.host_ns:
            r = self.r.ns(ns, sys.executable, "-c", probe, self.launcher_addr, check=False)
            if r.returncode != 0:
                raise SetupError(
                    f"{ns} cannot reach the launcher at {self.launcher_addr}: {r.stderr.strip()}"
                )

    def mpiexec_command(
        self, mpiexec: str, ranks_per_host: int, command: list[str], extra: list[str]
    ) -> list[str]:
        assert self.launcher_script is not None
        hosts = ",".join(f"{a}:{ranks_per_host}" for a in self.host_addr)
        return [
            "ip", "netns", "exec", self.launcher_ns, mpiexec,
            "-launcher", "ssh", "-launcher-exec", self.launcher_script,
            "-localhost", self.launcher_addr,
            "-hosts", hosts, "-ppn", str(ranks_per_host), "-n", str(self.n * ranks_per_host),
            *extra, *command,
        ]  # fmt: skip

    def down(self) -> list[str]:
        """Tear down everything of this run; returns a list of problems (empty if clean)."""
        return cleanup(self.r, tags=[self.tag])


def mpi_environment(no_shm: bool) -> dict[str, str]:
    env = dict(os.environ)
    env.update(
        {
            "MPIR_CVAR_CH4_NETMOD": "ofi",  # not ucx: ucx would find shared memory / cma
            "FI_PROVIDER": "tcp",  # not libfabric's shm provider
            "FI_TCP_IFACE": INNER_IFACE,  # the shaped veth in each host namespace
            "FI_SOCKETS_IFACE": INNER_IFACE,
        }
    )
    if no_shm:
        env["MPIR_CVAR_NOLOCAL"] = "1"
    return env


# ---------------------------------------------------------------------------
# teardown


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return False
    return b"emulated_cluster" in cmdline


def _kill_ns_processes(runner: Runner, ns: str) -> None:
    """A namespace with live processes outlives `ip netns del` (and its veth
    with it): end them first, TERM then KILL."""
    for sig, wait in ((signal.SIGTERM, 2.0), (signal.SIGKILL, 2.0)):
        r = runner.run("ip", "netns", "pids", ns, check=False)
        pids = [int(p) for p in r.stdout.split() if p.isdigit() and int(p) != os.getpid()]
        if not pids:
            return
        for pid in pids:
            try:
                os.kill(pid, sig)
            except ProcessLookupError:
                pass
        deadline = time.monotonic() + wait
        while time.monotonic() < deadline:
            r = runner.run("ip", "netns", "pids", ns, check=False)
            if not r.stdout.split():
                return
            time.sleep(0.05)


def list_namespaces(runner: Runner) -> list[str]:
    r = runner.run("ip", "netns", "list", check=False)
    return [line.split()[0] for line in r.stdout.splitlines() if line.strip()]


def list_links(runner: Runner) -> list[str]:
    r = runner.run("ip", "-o", "link", "show", check=False)
    names = []
    for line in r.stdout.splitlines():
        parts = line.split(":", 2)
        if len(parts) >= 2:
            names.append(parts[1].strip().split("@")[0])
    return names


def cleanup(runner: Runner, tags: list[str] | None = None, force: bool = False) -> list[str]:
    """Remove namespaces, root-namespace veths and temp dirs of the given run
    tags ('sml-<pid>'), or of every dead run when tags is None."""
    ns_re = re.compile(rf"^{PREFIX}-(\d+)-")
    link_re = re.compile(rf"^{PREFIX}(\d+)(?:h\d+|L)[ab]$")

    def wanted(pid: int) -> bool:
        if tags is not None:
            return f"{PREFIX}-{pid}" in tags
        return force or not _pid_alive(pid)

    problems: list[str] = []
    skipped: set[int] = set()
    namespaces = [ns for ns in list_namespaces(runner) if ns_re.match(ns)]
    # hosts and launcher first (their processes and veth ends), the bridge last
    namespaces.sort(key=lambda ns: ns.endswith("-br"))
    for ns in namespaces:
        pid = int(ns_re.match(ns).group(1))
        if not wanted(pid):
            skipped.add(pid)
            continue
        _kill_ns_processes(runner, ns)
        r = runner.run("ip", "netns", "del", ns, check=False)
        if r.returncode != 0:
            problems.append(f"ip netns del {ns}: {r.stderr.strip()}")
    for link in list_links(runner):
        m = link_re.match(link)
        if m and wanted(int(m.group(1))):
            r = runner.run("ip", "link", "del", link, check=False)
            # deleting one end of a pair deletes the other: "Cannot find device" is fine
            if r.returncode != 0 and link in list_links(runner):
                problems.append(f"ip link del {link}: {r.stderr.strip()}")
    tmp = Path(tempfile.gettempdir())
    for d in tmp.glob(f"{PREFIX}-*-*"):
        m = re.match(rf"^{PREFIX}-(\d+)-", d.name)
        if m and d.is_dir() and wanted(int(m.group(1))):
            shutil.rmtree(d, ignore_errors=True)
            if d.exists():
                problems.append(f"could not remove {d}")
    # verify: nothing of ours is left
    for ns in list_namespaces(runner):
        m = ns_re.match(ns)
        if m and wanted(int(m.group(1))):
            problems.append(f"namespace {ns} still exists")
    for link in list_links(runner):
        m = link_re.match(link)
        if m and wanted(int(m.group(1))):
            problems.append(f"link {link} still exists")
    if skipped and tags is None:
        print(
            "emulated_cluster: left alone (their script is still running; --force removes them): "
            + ", ".join(f"{PREFIX}-{p}-*" for p in sorted(skipped)),
            file=sys.stderr,
        )
    return problems


# ---------------------------------------------------------------------------
# main


def _on_signal(signum, frame):  # noqa: ARG001
    raise Interrupted(signum)


def _stop_job(proc: subprocess.Popen) -> None:
    """Stop mpiexec and everything it started in its process group."""
    if proc.poll() is not None:
        return
    for sig, wait in ((signal.SIGINT, 3.0), (signal.SIGTERM, 2.0), (signal.SIGKILL, 2.0)):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            return
        try:
            proc.wait(timeout=wait)
            return
        except subprocess.TimeoutExpired:
            pass


def run_cluster(args: argparse.Namespace) -> int:
    runner = Runner(args.verbose)
    check_requirements(runner, need_tc=args.rate is not None)
    mpiexec = find_mpiexec(args.mpiexec)
    cluster = Cluster(runner, args.hosts, args.rate, args.subnet, args.burst)
    proc: subprocess.Popen | None = None
    status = 1
    old = {s: signal.signal(s, _on_signal) for s in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)}
    try:
        print(
            f"emulated_cluster: {args.hosts} hosts x {args.ranks_per_host} ranks, "
            f"rate {format_rate(args.rate)} per host and direction, namespaces {cluster.tag}-*",
            file=sys.stderr,
            flush=True,
        )
        cluster.up()
        cmd = cluster.mpiexec_command(mpiexec, args.ranks_per_host, args.command, args.mpiexec_arg)
        if args.verbose:
            print("+ " + shlex.join(cmd), file=sys.stderr, flush=True)
        # own process group, so that the job can be stopped as a whole; the
        # terminal's Ctrl-C reaches us, and we stop the job.
        proc = subprocess.Popen(cmd, env=mpi_environment(args.no_shm), start_new_session=True)
        try:
            status = proc.wait(timeout=args.timeout)
        except subprocess.TimeoutExpired:
            print(f"emulated_cluster: job timed out after {args.timeout:g} s, stopping it", file=sys.stderr)
            _stop_job(proc)
            status = 124
        if args.keep_going:
            print(
                f"emulated_cluster: job ended with status {status}; cluster kept up "
                f"(e.g. ip netns exec {cluster.host_ns[0]} ip addr). Ctrl-C tears it down.",
                file=sys.stderr,
                flush=True,
            )
            try:
                while True:
                    time.sleep(3600)
            except Interrupted:
                pass
    except Interrupted as e:
        print(f"emulated_cluster: {signal.Signals(e.signum).name}, tearing down", file=sys.stderr)
        status = 128 + e.signum
    except SetupError as e:
        print(f"emulated_cluster: error: {e}", file=sys.stderr)
        status = 2
    finally:
        # no further interruption of the teardown by a second Ctrl-C
        for s in old:
            signal.signal(s, signal.SIG_IGN)
        if proc is not None:
            _stop_job(proc)
        problems = cluster.down()
        for s, h in old.items():
            signal.signal(s, h)
        if problems:
            print("emulated_cluster: teardown incomplete:\n  " + "\n  ".join(problems), file=sys.stderr)
            print("  run: emulated_cluster.py --cleanup", file=sys.stderr)
            status = status or 1
    return status


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.cleanup:
        runner = Runner(args.verbose)
        check_requirements(runner, need_tc=False)
        problems = cleanup(runner, tags=None, force=args.force)
        if problems:
            print("emulated_cluster: cleanup incomplete:\n  " + "\n  ".join(problems), file=sys.stderr)
            return 1
        return 0
    return run_cluster(args)


if __name__ == "__main__":
    sys.exit(main())
