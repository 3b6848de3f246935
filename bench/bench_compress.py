"""Throughput of the compression kernels vs straightforward numpy and vs copy bandwidth.

    OMP_NUM_THREADS=1 OPENBLAS_NUM_THREADS=1 taskset -c 0 \
        .venv/bin/python bench/bench_compress.py [--log2n 24] [--repeat 5]

For each kernel on 2^log2n float32 values (one core): input GB/s of encode and
decode (bytes of the float32 tensor / best time), the same for a vectorized
numpy implementation of the same method (below), numpy copy bandwidth
(``np.copyto`` into a preallocated array) measured in the same run, and bits
per element achieved vs the theory of the format. Prints a markdown table.
Our decode is timed into a preallocated ``out`` array (as the copy is); the
"fresh" column times it allocating a new array each call, as the numpy
versions do.
Targets from issue 3: every kernel >= 10x the numpy version and within 4x of
copy bandwidth (kernel GB/s >= copy GB/s / 4).

This is a benchmark, not a test: timings depend on the machine and its load.
"""

from __future__ import annotations

import argparse
import math
import time

import numpy as np

from scaleml import compress as C


def best_time(fn, repeat: int) -> float:
    fn()  # warm up (page faults, caches)
    best = math.inf
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best


# ----------------------------------------------------------------------------- numpy implementations


def pack_fields(codes: np.ndarray, width: int) -> np.ndarray:
    """Pack each code's low `width` bits LSB-first into a byte stream."""
    bits = np.unpackbits(codes.astype("<u2").view(np.uint8).reshape(-1, 2), axis=1, bitorder="little")
    return np.packbits(bits[:, :width].reshape(-1), bitorder="little")


def unpack_fields(buf: np.ndarray, n: int, width: int) -> np.ndarray:
    bits = np.unpackbits(buf, bitorder="little")[: n * width].reshape(n, width)
    return (bits.astype(np.uint16) << np.arange(width, dtype=np.uint16)).sum(axis=1, dtype=np.uint16)


class NumpyQSGD:
    def __init__(self, bits: int, d: int, norm: str):
        self.bits, self.d, self.s, self.norm = bits, d, (1 << bits) - 1, norm
        self.rng = np.random.default_rng(0)

    def encode(self, x):
        n = x.size
        pad = (-n) % self.d
        v = np.concatenate([x, np.zeros(pad, x.dtype)]).reshape(-1, self.d)
        nrm = np.linalg.norm(v, axis=1) if self.norm == "l2" else np.abs(v).max(axis=1)
        nrm = nrm.astype(np.float32)
        safe = np.where(nrm > 0, nrm, 1)
        r = np.abs(v) / safe[:, None] * self.s
        lv = np.floor(r)
        lv += self.rng.random(r.shape, dtype=np.float32) < (r - lv)
        lv = np.minimum(lv, self.s).astype(np.uint16)
        codes = lv | ((v < 0) & (lv > 0)).astype(np.uint16) << self.bits
        return nrm, pack_fields(codes.reshape(-1)[:n], self.bits + 1), n

    def decode(self, enc):
        nrm, packed, n = enc
        codes = unpack_fields(packed, n, self.bits + 1)
        lv = (codes & self.s).astype(np.float32)
        sign = np.where(codes >> self.bits, -1.0, 1.0).astype(np.float32)
        scale = np.repeat(nrm / self.s, self.d)[:n]
        return lv * sign * scale


class NumpyOneBit:
    def __init__(self, d: int):
        self.d = d

    def encode(self, x):
        v = x.reshape(-1, self.d)
        neg = v < 0
        cn = neg.sum(axis=1)
        sn = np.where(neg, v, 0).sum(axis=1, dtype=np.float64)
        sp = np.where(neg, 0, v).sum(axis=1, dtype=np.float64)
        rp = np.where(cn < self.d, sp / np.maximum(self.d - cn, 1), 0).astype(np.float32)
        rn = np.where(cn > 0, sn / np.maximum(cn, 1), 0).astype(np.float32)
        return rp, rn, np.packbits(neg.reshape(-1), bitorder="little"), x.size

    def decode(self, enc):
        rp, rn, bits, n = enc
        neg = np.unpackbits(bits, bitorder="little")[:n].reshape(-1, self.d).astype(bool)
        return np.where(neg, rn[:, None], rp[:, None]).reshape(-1)


class NumpyTopK:
    def __init__(self, k: int, approximate: bool, sample: int):
        self.k, self.approximate, self.sample = k, approximate, sample
        self.rng = np.random.default_rng(0)

    def encode(self, x):
        a = np.abs(x)
        if self.approximate:
            smp = a[self.rng.integers(0, x.size, self.sample)]
            ks = max(1, round(self.sample * self.k / x.size))
            t = np.partition(smp, self.sample - ks)[self.sample - ks]
            idx = np.flatnonzero(a >= t).astype(np.uint32)
        else:
            idx = np.sort(np.argpartition(a, x.size - self.k)[x.size - self.k:]).astype(np.uint32)
        return idx, x[idx], x.size

    def decode(self, enc):
        idx, val, n = enc
        out = np.zeros(n, dtype=val.dtype)
        out[idx] = val
        return out


class NumpyAdaptive:
    def __init__(self, pi: float, sample: int):
        self.pi, self.sample = pi, sample
        self.rng = np.random.default_rng(0)

    def encode(self, m):
        smp = m.reshape(-1)[self.rng.integers(0, m.size, self.sample)].astype(np.float64)
        ks = math.ceil(self.sample / self.pi)
        t = np.partition(np.abs(smp), self.sample - ks)[self.sample - ks]
        sent = smp[np.abs(smp) >= t]
        tp = sent[sent > 0].min()
        tn = sent[sent < 0].max()
        pos, neg = m >= tp, m <= tn
        rp = np.where(pos, m, 0).sum(axis=0, dtype=np.float64) / np.maximum(pos.sum(axis=0), 1)
        rn = np.where(neg, m, 0).sum(axis=0, dtype=np.float64) / np.maximum(neg.sum(axis=0), 1)
        rp, rn = rp.astype(np.float32), rn.astype(np.float32)
        cols, rows = np.nonzero((pos | neg).T)  # column-major order: per-column runs, rows increasing
        words = (rows.astype(np.uint16) << 1) | neg[rows, cols].astype(np.uint16)
        offsets = np.concatenate([[0], np.cumsum((pos | neg).sum(axis=0))]).astype(np.uint64)
        return offsets, rp, rn, words, m.shape

    def decode(self, enc):
        offsets, rp, rn, words, shape = enc
        out = np.zeros(shape, dtype=np.float32)
        cols = np.repeat(np.arange(shape[1]), np.diff(offsets).astype(np.int64))
        rows = words >> 1
        out[rows, cols] = np.where(words & 1, rn[cols], rp[cols])
        return out


class NumpyZipML:
    def __init__(self, levels: np.ndarray):
        self.levels = levels.astype(np.float32)
        self.rng = np.random.default_rng(0)

    def encode(self, x):
        L = self.levels
        v = np.clip(x, L[0], L[-1])
        j = np.clip(np.searchsorted(L, v, side="right") - 1, 0, L.size - 2)
        p = (v - L[j]) / (L[j + 1] - L[j])
        idx = (j + (self.rng.random(x.size, dtype=np.float32) < p)).astype(np.uint8)
        return (idx[0::2] | (idx[1::2] << 4)).astype(np.uint8), x.size

    def decode(self, enc):
        packed, n = enc
        idx = np.empty(2 * packed.size, dtype=np.uint8)
        idx[0::2], idx[1::2] = packed & 15, packed >> 4
        return self.levels[idx[:n]]


class NumpyCast:
    def __init__(self, fmt: str):
        self.fmt = fmt

    def encode(self, x):
        if self.fmt == "fp16":
            return x.astype(np.float16)
        b = x.view(np.uint32)
        return ((b + np.uint32(0x7FFF) + ((b >> 16) & 1)) >> 16).astype(np.uint16)

    def decode(self, h):
        if self.fmt == "fp16":
            return h.astype(np.float32)
        return (h.astype(np.uint32) << 16).view(np.float32)


# ----------------------------------------------------------------------------- main


def elias_theory_bits(s: int, d: int) -> float:
    """Theorem 3.2 bound per element (o(1) dropped) for one bucket of d."""
    z = s * (s + math.sqrt(d))
    return ((3 + 1.5 * math.log2(2 * (s * s + d) / z)) * z + 32) / d


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--log2n", type=int, default=24)
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--numpy-repeat", type=int, default=2)
    args = ap.parse_args()
    n = 1 << args.log2n
    rng = np.random.default_rng(0)
    x = rng.standard_normal(n, dtype=np.float32)
    side = 1 << (args.log2n // 2)
    mat = x.reshape(side, n // side)
    nbytes = x.nbytes
    dst = np.empty_like(x)
    t_copy = best_time(lambda: np.copyto(dst, x), args.repeat)
    copy_gbs = nbytes / t_copy / 1e9

    k = n // 100
    zip_levels = C.ZipML.fit(x[rng.integers(0, n, 65536)], 16).levels
    kernels = [
        ("QSGD 4-bit fixed, d=512, L2", C.QSGD(bits=4, bucket=512), NumpyQSGD(4, 512, "l2"), x, 5 + 32 / 512),
        ("QSGD 8-bit fixed, d=512, max", C.QSGD(bits=8, bucket=512, norm="max"), NumpyQSGD(8, 512, "max"), x,
         9 + 32 / 512),
        ("QSGD 1-bit (s=1) Elias, d=512, L2", C.QSGD(bits=1, bucket=512, format="elias"), None, x,
         elias_theory_bits(1, 512)),
        ("1-bit SGD, d=512", C.OneBit(bucket=512), NumpyOneBit(512), x, 1 + 64 / 512),
        ("TopK exact, k=1%", C.TopK(k=k), NumpyTopK(k, False, 0), x, 0.01 * 64),
        ("TopK approx, k=1%, sample 16384", C.TopK(k=k, approximate=True, sample=16384),
         NumpyTopK(k, True, 16384), x, 0.01 * 64),
        (f"Adaptive pi=32, {side}x{n // side}", C.AdaptiveQuant(pi=32, sample=4096), NumpyAdaptive(32, 4096),
         mat, 16 / 32 + 128 / side),
        ("ZipML 16 levels (4 bit)", C.ZipML(zip_levels), NumpyZipML(zip_levels), x, 4 + 64 * 16 / n),
        ("fp16 cast", C.Cast("fp16"), NumpyCast("fp16"), x, 16.0),
        ("bf16 cast", C.Cast("bf16"), NumpyCast("bf16"), x, 16.0),
    ]
    print(f"n = 2^{args.log2n} float32 ({nbytes / 1e6:.0f} MB), best of {args.repeat} "
          f"(numpy versions best of {args.numpy_repeat}); numpy copy bandwidth {copy_gbs:.2f} GB/s\n")
    print("| kernel | bits/elem achieved | bits/elem theory | encode GB/s | numpy encode GB/s "
          "| encode speedup | decode GB/s (fresh) | numpy decode GB/s | decode speedup "
          "| slowest vs copy | targets (10x numpy, copy/4) |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for name, comp, ref, data, theory in kernels:
        c = comp.encode(data)
        out = np.empty_like(data)
        t_enc = best_time(lambda comp=comp, data=data: comp.encode(data), args.repeat)
        t_dec = best_time(lambda comp=comp, c=c, out=out: comp.decode(c, out=out), args.repeat)
        t_fresh = best_time(lambda comp=comp, c=c: comp.decode(c), args.repeat)
        achieved = 8 * c.payload.size / data.size
        enc_gbs, dec_gbs, fresh_gbs = nbytes / t_enc / 1e9, nbytes / t_dec / 1e9, nbytes / t_fresh / 1e9
        dec_cols = f"{dec_gbs:.2f} ({fresh_gbs:.2f})"
        if ref is not None:
            e = ref.encode(data)
            t_renc = best_time(lambda ref=ref, data=data: ref.encode(data), args.numpy_repeat)
            t_rdec = best_time(lambda ref=ref, e=e: ref.decode(e), args.numpy_repeat)
            # the numpy version computes the same thing: compare reconstruction errors
            err_ours = float(np.linalg.norm(comp.decode(c).reshape(-1) - data.reshape(-1)))
            err_ref = float(np.linalg.norm(ref.decode(e).reshape(-1) - data.reshape(-1)))
            assert abs(err_ours - err_ref) <= 0.1 * max(err_ref, 1e-30) + 1e-6, (name, err_ours, err_ref)
            renc, rdec = nbytes / t_renc / 1e9, nbytes / t_rdec / 1e9
            sp_e, sp_d = enc_gbs / renc, dec_gbs / rdec
            ref_cols = f"{renc:.2f} | {sp_e:.1f}x | {dec_cols} | {rdec:.2f} | {sp_d:.1f}x"
            ok_numpy = sp_e >= 10 and sp_d >= 10
        else:
            ref_cols = f"n/a | n/a | {dec_cols} | n/a | n/a"
            ok_numpy = None
        slowest = min(enc_gbs, dec_gbs) / copy_gbs
        ok_copy = slowest >= 0.25
        missed = [m for m, bad in (("10x numpy", ok_numpy is False), ("copy/4", not ok_copy)) if bad]
        if missed:
            verdict = "missed: " + ", ".join(missed)
        else:
            verdict = "met" if ok_numpy else "copy/4 met; no numpy version"
        print(f"| {name} | {achieved:.3f} | {theory:.3f} | {enc_gbs:.2f} | {ref_cols} | {slowest:.2f} "
              f"| {verdict} |")


if __name__ == "__main__":
    main()
