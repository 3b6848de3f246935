"""Brief fuzz of every decoder: truncations and byte flips of valid buffers.

Each corrupted buffer must either decode to an array of the declared shape or
raise CorruptBufferError (a ValueError); anything else (another exception, a
crash, an out-of-bounds read caught by `make sanitize`) fails. Flips land both
in the header (caught by its CRC or its checks) and, mostly, in the payload
(caught by the C decoders' validation); some header fields are changed and
the header re-signed, so the semantic header checks are exercised too. Forged
element counts and shapes (re-signed) are tests/test_compress_forged.py; a
long randomized run of all of it is tests/fuzz_decoders.py.
"""

from __future__ import annotations

import numpy as np
import pytest

from scaleml import compress as C

FUZZ_CASES = 60  # per compressor; 10 compressors -> 600 cases


def compressors():
    return {
        "qsgd-fixed": C.QSGD(bits=3, bucket=32),
        "qsgd-elias": C.QSGD(bits=2, bucket=50, format="elias"),
        "onebit": C.OneBit(bucket=16),
        "onebit-cols": C.OneBit(),
        "topk": C.TopK(ratio=0.2),
        "adaptive": C.AdaptiveQuant(pi=3),
        "adaptive-wide": C.AdaptiveQuant(pi=2000),
        "zipml": C.ZipML(np.linspace(-3, 3, 6)),
        "fp16": C.Cast("fp16"),
        "bf16": C.Cast("bf16"),
    }


@pytest.mark.parametrize("name", list(compressors()))
def test_fuzz_decoder(name):
    comp = compressors()[name]
    rng = np.random.default_rng(abs(hash(name)) % 2**32)
    x = rng.standard_normal((40000, 1) if name == "adaptive-wide" else (23, 9)).astype(np.float32)
    valid = comp.encode(x)
    raw = bytearray(valid.to_bytes())
    h = valid.header_bytes
    outcomes = {"decoded": 0, "rejected": 0}
    for case in range(FUZZ_CASES):
        b = bytearray(raw)
        kind = case % 4
        if kind == 0:  # truncation
            b = b[:int(rng.integers(0, len(b)))]
        elif kind == 1:  # payload byte flips
            for _ in range(int(rng.integers(1, 4))):
                i = int(rng.integers(h, len(b)))
                b[i] ^= int(rng.integers(1, 256))
        elif kind == 2:  # anywhere, including the header (the header CRC catches those)
            i = int(rng.integers(0, len(b)))
            b[i] = int(rng.integers(0, 256))
        else:  # a header field (method, dtype, ndim, parameters) changed and re-signed
            i = int(rng.choice([5, 6, 7] + list(range(24, 40))))
            b[i] = int(rng.integers(0, 256)) if rng.random() < 0.5 else b[i] ^ 1
            b[40:44] = C._header_crc(np.frombuffer(bytes(b[:h]), dtype=np.uint8)).to_bytes(4, "little")
        try:
            y = C.decode(bytes(b))
        except C.CorruptBufferError:
            outcomes["rejected"] += 1
            continue
        assert y.shape == x.shape and y.dtype in (np.float32, np.float64)
        outcomes["decoded"] += 1
    # every truncation must be rejected (no format accepts a shorter message)
    assert outcomes["rejected"] >= FUZZ_CASES // 4


def test_fuzz_random_garbage():
    rng = np.random.default_rng(0)
    for _ in range(200):
        with pytest.raises(C.CorruptBufferError):
            C.decode(rng.integers(0, 256, int(rng.integers(0, 200)), dtype=np.uint8).tobytes())
