#!/usr/bin/env python3
"""Writes tests/data/quant/*.bin: gguf-py's own quantization and dequantization of ggml block types,
the oracle of tests/test_ggml_quants.cc (which reads the files; no Python at test time).

    $(scripts/oracle_venv.sh) scripts/gen_quant_refs.py     # gguf==0.19.0, numpy (requirements-oracle.txt)

One file per type, little-endian:
    magic b"MOEQ", u32 version (1), u32 ggml type id, u32 rows, u32 values per row, u32 has_input
    [has_input: float32 (rows, values): the input to gguf.quants.quantize]
    u8 (rows, row bytes): quantize(input) where has_input, else random blocks (the K-quants: gguf-py
                          dequantizes them but has no quantizer)
    float32 (rows, values): gguf.quants.dequantize(those bytes)
Inputs: normal rows of several scales plus edge rows (zeros, a single large value, negative maxima,
ties after scaling, f32 denormals beside normal values, values whose fp16 scale is denormal; f16 /
bf16 also inf, NaN, overflow and a ragged row length of 37). Random K-quant blocks draw their fp16
scales from several decades, including zero, denormal and negative ones.
"""

import os
import struct

import numpy as np
from gguf import GGMLQuantizationType as T
from gguf import quants

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
OUT = os.path.join(ROOT, "tests", "data", "quant")


def edge_rows(n, rng):
    rows = []
    rows.append(np.zeros(n, np.float32))                                 # all zero
    r = np.zeros(n, np.float32); r[5] = 1000.0; rows.append(r)           # a single large value
    r = rng.normal(0, 1, n).astype(np.float32); r[::32] = -7.5; rows.append(r)  # negative maxima
    r = rng.normal(0, 1, n).astype(np.float32)
    r[1::32] = 7.5; r[2::32] = -7.5; rows.append(r)                      # +-max tie: the first wins
    r = (np.arange(n, dtype=np.float32) % 32 - 16) / 16 * 127 / 2; r[0::32] = 127.0
    rows.append(r.astype(np.float32))                                    # x / d lands on .5
    r = rng.normal(0, 1, n).astype(np.float32); r[3::7] = 1e-40; rows.append(r)  # f32 denormals
    rows.append((rng.normal(0, 1, n) * 1e-5).astype(np.float32))        # fp16-denormal scales
    rows.append((rng.normal(0, 1, n) * 1e4).astype(np.float32))         # large
    rows.append(rng.standard_t(2, n).astype(np.float32))                 # heavy tails
    rows.append(rng.uniform(0, 1, n).astype(np.float32))                 # all positive (the K mins)
    return rows


def half_rows(n, rng):
    rows = edge_rows(n, rng)
    r = rng.normal(0, 1, n).astype(np.float32)
    r[:8] = [np.inf, -np.inf, np.nan, 65504.0, 65519.0, 65520.0, 1e6, -3e-8]
    rows.append(r)
    rows.append(np.array([2.0 ** -e for e in range(n)], np.float32))     # every exponent down to 2^-36
    return rows


def random_blocks(qtype, rows, blocks_per_row, rng):
    block, size = quants.GGML_QUANT_SIZES[qtype]
    raw = rng.integers(0, 256, (rows * blocks_per_row, size), dtype=np.uint8)
    scales = np.concatenate([rng.normal(0, 1, 8) * 10.0 ** rng.integers(-6, 1, 8), [0.0, 3e-6, -0.02, 6e-8]])
    nscale = 2 if qtype in (T.Q4_K, T.Q5_K) else 1
    offs = [0, 2][:nscale] if qtype != T.Q6_K else [size - 2]
    for b in range(raw.shape[0]):
        for o in offs:
            raw[b, o:o + 2] = np.frombuffer(np.float16(rng.choice(scales)).tobytes(), np.uint8)
    return raw.reshape(rows, blocks_per_row * size)


def write(name, qtype, rows, inp, q, deq):
    os.makedirs(OUT, exist_ok=True)
    with open(os.path.join(OUT, name + ".bin"), "wb") as f:
        f.write(b"MOEQ")
        f.write(struct.pack("<5I", 1, int(qtype), rows, deq.shape[1], 1 if inp is not None else 0))
        if inp is not None:
            f.write(np.ascontiguousarray(inp, "<f4").tobytes())
        f.write(np.ascontiguousarray(q, np.uint8).tobytes())
        f.write(np.ascontiguousarray(deq, "<f4").tobytes())
    print(f"{name}: {rows} rows x {deq.shape[1]} values, {q.shape[1]} bytes per row")


def main():
    rng = np.random.default_rng(21)
    for name, qt, n in (("q8_0", T.Q8_0, 256), ("q4_0", T.Q4_0, 256)):
        inp = np.stack(edge_rows(n, rng))
        q = quants.quantize(inp, qt)
        write(name, qt, inp.shape[0], inp, q, quants.dequantize(q, qt))
    for name, qt in (("f16", T.F16), ("bf16", T.BF16)):
        inp = np.stack(half_rows(37, rng))
        q = quants.quantize(inp, qt).view(np.uint8).reshape(inp.shape[0], -1)
        write(name, qt, inp.shape[0], inp, q, quants.dequantize(q, qt))
    for name, qt in (("q4_k", T.Q4_K), ("q5_k", T.Q5_K), ("q6_k", T.Q6_K)):
        q = random_blocks(qt, 6, 2, rng)
        write(name, qt, 6, None, q, quants.dequantize(q, qt))


if __name__ == "__main__":
    main()
