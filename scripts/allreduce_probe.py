#!/usr/bin/env python3
"""Time MPI_Allreduce (SUM) of COUNT float32 with mpi4py: a check that the
emulated cluster's bandwidth limit works.

    mpiexec -n 4 .venv/bin/python scripts/allreduce_probe.py --count 4194304
    scripts/emulated_cluster.py --hosts 4 --rate 1gbit -- .venv/bin/python scripts/allreduce_probe.py

Each iteration is timed between barriers; the time of an iteration is the
maximum over ranks. Rank 0 prints one human-readable line and, with --json, one
JSON line prefixed "PROBE_JSON " (the format the test parses):

    allreduce_probe: P=4 hosts=4 count=4194304 bytes=16777216 iters=10 min=40.1 ms avg=42.0 ms
        max=45.3 ms algbw=0.418 GB/s busbw=0.627 GB/s busbw=5.02 Gbit/s

algbw = bytes / time; busbw = algbw * 2 (P-1) / P (the nccl-tests convention:
the per-rank traffic of a bandwidth-optimal allreduce). The result is checked
against the exact sum.
"""

from __future__ import annotations

import argparse
import json
import socket
import sys

import numpy as np
from mpi4py import MPI


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--count", type=int, default=1 << 22, help="float32 elements (2^22)")
    p.add_argument("--warmup", type=int, default=3, help="untimed iterations (3)")
    p.add_argument("--iterations", type=int, default=10, help="timed iterations (10)")
    p.add_argument("--json", action="store_true", help="also print a PROBE_JSON line")
    args = p.parse_args(argv)

    comm = MPI.COMM_WORLD
    rank, size = comm.Get_rank(), comm.Get_size()
    hosts = comm.gather(socket.gethostname() + "/" + _address(), root=0)

    send = np.full(args.count, rank + 1, dtype=np.float32)
    recv = np.empty_like(send)
    expected = np.float32(size * (size + 1) / 2)
    times = []
    for it in range(args.warmup + args.iterations):
        comm.Barrier()
        t0 = MPI.Wtime()
        comm.Allreduce(send, recv, op=MPI.SUM)
        dt = MPI.Wtime() - t0
        dt = comm.allreduce(dt, op=MPI.MAX)
        if it >= args.warmup:
            times.append(dt)
    ok = bool(np.all(recv == expected))
    ok = comm.allreduce(ok, op=MPI.LAND)

    if rank == 0:
        nbytes = args.count * 4
        tmin, tavg, tmax = min(times), sum(times) / len(times), max(times)
        algbw = nbytes / tmin / 1e9
        busbw = algbw * 2 * (size - 1) / size if size > 1 else 0.0
        distinct = len(set(h.split("/", 1)[1] for h in hosts))
        print(
            f"allreduce_probe: P={size} hosts={distinct} count={args.count} bytes={nbytes} "
            f"iters={args.iterations} min={tmin * 1e3:.1f} ms avg={tavg * 1e3:.1f} ms "
            f"max={tmax * 1e3:.1f} ms algbw={algbw:.3f} GB/s busbw={busbw:.3f} GB/s "
            f"busbw={busbw * 8:.2f} Gbit/s correct={ok}",
            flush=True,
        )
        if args.json:
            rec = {
                "P": size,
                "hosts": distinct,
                "addresses": hosts,
                "count": args.count,
                "bytes": nbytes,
                "iterations": args.iterations,
                "min_s": tmin,
                "avg_s": tavg,
                "max_s": tmax,
                "algbw_GBps": algbw,
                "busbw_GBps": busbw,
                "correct": ok,
            }
            print("PROBE_JSON " + json.dumps(rec), flush=True)
    return 0 if ok else 1


def _address() -> str:
    """This rank's address on the emulated network (the veth sml0), else 'local'."""
    try:
        import fcntl
        import struct

        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        try:
            req = struct.pack("256s", b"sml0")
            return socket.inet_ntoa(fcntl.ioctl(s.fileno(), 0x8915, req)[20:24])  # SIOCGIFADDR
        finally:
            s.close()
    except OSError:
        return "local"


if __name__ == "__main__":
    sys.exit(main())
