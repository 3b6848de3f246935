"""Long randomized run of the decoders against corrupted and forged messages (not collected by pytest).

Usage::

    PYTHONPATH=. python tests/fuzz_decoders.py --iterations 100000 [--seed 1] [--time-limit 0.05]

Each iteration takes a valid message of a random method, shape and dtype (with
or without its payload checksum) and corrupts it one way: truncation, byte
flips anywhere, a header field changed and the header re-signed, or the shape
and count forged (re-signed, mostly giant: up to 2^47 elements) with the
payload kept, replaced by a few random bytes, or cut. Every outcome must be a
decoded array of the declared shape and dtype or a ``CorruptBufferError``;
a rejection must come within ``--time-limit`` seconds, and no decode may
allocate (``tracemalloc``) more than the message justifies: its own size, the
decoded output when it decodes, and 1 MiB. A checksummed message whose payload
was changed must be rejected. The brief version runs in the test suite
(tests/test_compress_fuzz.py, tests/test_compress_forged.py).
"""

from __future__ import annotations

import argparse
import struct
import sys
import time
import tracemalloc
import zlib

import numpy as np

from scaleml import compress as C

SLACK = 1 << 20


def compressors(rng: np.random.Generator) -> list[C.Compressor]:
    return [
        C.QSGD(bits=int(rng.integers(1, 9)), bucket=int(rng.choice([1, 7, 8, 64, 512])), norm="l2"),
        C.QSGD(bits=int(rng.integers(1, 9)), bucket=int(rng.choice([1, 5, 16, 300])), format="elias", norm="max"),
        C.OneBit(bucket=int(rng.choice([1, 3, 16, 512]))),
        C.TopK(ratio=float(rng.choice([0.0, 0.01, 0.3, 1.0]))),
        C.TopK(ratio=0.2, approximate=True),
        C.AdaptiveQuant(pi=float(rng.choice([1, 3, 40]))),
        C.ZipML.uniform(-2, 2, int(rng.integers(2, 20))),
        C.Cast(str(rng.choice(["fp16", "bf16"]))),  # type: ignore[arg-type]
    ]


def resign(b: bytearray, header_bytes: int) -> None:
    head = bytearray(b[:header_bytes])
    head[40:44] = bytes(4)
    b[40:44] = struct.pack("<I", zlib.crc32(bytes(head)))


def giant_shape(rng: np.random.Generator) -> tuple[int, ...]:
    ndim = int(rng.integers(1, 4))
    log_total = int(rng.integers(31, 48))
    cuts = sorted(int(v) for v in rng.integers(0, log_total + 1, ndim - 1))
    logs = [b - a for a, b in zip([0, *cuts], [*cuts, log_total])]
    return tuple(1 << v for v in logs)


def corrupt(raw: bytes, header_bytes: int, rng: np.random.Generator) -> tuple[bytes, str]:
    b = bytearray(raw)
    kind = int(rng.integers(0, 5))
    if kind == 0:
        return bytes(b[:int(rng.integers(0, len(b)))]), "truncate"
    if kind == 1:
        for _ in range(int(rng.integers(1, 4))):
            i = int(rng.integers(0, len(b)))
            b[i] ^= int(rng.integers(1, 256))
        return bytes(b), "flip"
    if kind == 2:
        i = int(rng.choice([4, 5, 6, 7, *range(16, 48)]))
        b[i] = int(rng.integers(0, 256))
        resign(b, header_bytes)
        return bytes(b), "field"
    # forged shape and count, re-signed; the payload kept, replaced or cut
    shape = giant_shape(rng) if rng.random() < 0.9 else tuple(int(v) for v in rng.integers(0, 50, rng.integers(1, 3)))
    payload = bytes(b[header_bytes:])
    choice = int(rng.integers(0, 3))
    if choice == 1:
        payload = rng.integers(0, 256, int(rng.integers(0, 40)), dtype=np.uint8).tobytes()
    elif choice == 2:
        payload = payload[:int(rng.integers(0, len(payload) + 1))]
    count = 1
    for d in shape:
        count *= d
    head = bytearray(b[:48])
    head[7] = len(shape)
    struct.pack_into("<QQ", head, 8, count, len(payload))
    if head[4] == 2:
        struct.pack_into("<I", head, 44, zlib.crc32(payload))
    head += struct.pack(f"<{len(shape)}Q", *shape)
    resign(head, len(head))
    return bytes(head) + payload, "forge"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--iterations", type=int, default=10000)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--time-limit", type=float, default=0.05, help="seconds a rejection may take")
    parser.add_argument("--verbose", action="store_true", help="print rejections slower than a tenth of the limit")
    args = parser.parse_args(argv)
    rng = np.random.default_rng(args.seed)
    outcomes: dict[tuple[str, str], int] = {}
    slowest = 0.0
    t_start = time.perf_counter()
    for it in range(args.iterations):
        comp = compressors(rng)[int(rng.integers(0, 8))]
        shape = (int(rng.integers(0, 60)), int(rng.integers(1, 9))) if rng.random() < 0.7 else (
            int(rng.integers(0, 300)),)
        dtype = np.float32 if rng.random() < 0.5 else np.float64
        x = rng.standard_normal(shape).astype(dtype)
        x[rng.random(shape) < 0.5] = 0
        valid = comp.encode(x, checksum=bool(rng.random() < 0.5))
        message, kind = corrupt(valid.to_bytes(), valid.header_bytes, rng)
        payload_changed = message[valid.header_bytes:] != valid.to_bytes()[valid.header_bytes:]
        tracemalloc.start()
        t0 = time.perf_counter()
        try:
            y = C.decode(message)
            result = "decoded"
        except C.CorruptBufferError:
            y, result = None, "rejected"
        elapsed = time.perf_counter() - t0
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
        outcomes[kind, result] = outcomes.get((kind, result), 0) + 1
        where = f"iteration {it} ({comp.name}, {kind}, {len(message)} bytes)"
        if y is not None:
            parsed = C.Compressed.from_bytes(message)
            if y.shape != parsed.shape or y.dtype != parsed.dtype:
                print(f"FAIL {where}: decoded {y.dtype}{y.shape}, header says {parsed.dtype}{parsed.shape}")
                return 1
            if valid.checksum and message[4] == 2 and kind in ("flip", "truncate") and payload_changed:
                print(f"FAIL {where}: a checksummed payload changed and still decoded")
                return 1
        else:
            slowest = max(slowest, elapsed)
            if args.verbose and elapsed > args.time_limit / 10:
                print(f"slow {where}: {elapsed * 1e3:.1f} ms")
            if elapsed > args.time_limit:
                print(f"FAIL {where}: rejection took {elapsed * 1e3:.1f} ms")
                return 1
        allowed = 2 * len(message) + SLACK + (y.nbytes if y is not None else 0)
        if peak > allowed:
            print(f"FAIL {where}: {peak} bytes allocated, {allowed} allowed")
            return 1
    total = time.perf_counter() - t_start
    print(f"{args.iterations} iterations in {total:.1f} s; slowest rejection {slowest * 1e3:.2f} ms")
    for (kind, result), count in sorted(outcomes.items()):
        print(f"  {kind:9s} {result:9s} {count}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
