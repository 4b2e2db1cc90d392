"""Reader and writer for moe's tensor container (src/io/tensor_file.{h,cc}).

Layout, little-endian:

    "MOETNSR1" | u64 header_len | header JSON | zero pad to 64 | tensor data (each 64-aligned)
    | trailer: u64 file_size, u32 crc32 of every byte before the trailer, u32 "MOE!"

Header JSON: {"meta": {...}, "tensors": [{"name", "dtype": "f32"|"f64"|"i32", "shape",
"offset", "nbytes"}]}, offsets relative to the start of the data. The crc32 is zlib's, the same
function src/io/tensor_file.cc calls.
"""

import json
import os
import struct
import zlib

import numpy as np

MAGIC = b"MOETNSR1"
TRAILER_MAGIC = 0x21454F4D  # "MOE!" read as a little-endian u32
DTYPES = {"f32": np.dtype("<f4"), "f64": np.dtype("<f8"), "i32": np.dtype("<i4")}


def _align64(x):
    return (x + 63) // 64 * 64


def _dtype_name(arr):
    for name, dt in DTYPES.items():
        if arr.dtype == dt:
            return name
    raise TypeError(f"tensor dtype {arr.dtype} is not one of f32, f64, i32")


def encode(tensors, meta=None):
    """The file's bytes for `tensors` (a list of (name, numpy array) or a dict) and `meta`."""
    items = list(tensors.items()) if isinstance(tensors, dict) else list(tensors)
    arrays, entries, off = [], [], 0
    for name, arr in items:
        arr = np.ascontiguousarray(arr)
        dt = _dtype_name(arr)
        arr = arr.astype(DTYPES[dt], copy=False)  # force little-endian
        entries.append({"name": name, "dtype": dt, "shape": list(arr.shape),
                        "offset": off, "nbytes": arr.nbytes})
        arrays.append(arr)
        off = _align64(off + arr.nbytes)
    header = json.dumps({"meta": meta or {}, "tensors": entries}, separators=(",", ":")).encode()
    data_start = _align64(8 + 8 + len(header))
    buf = bytearray(data_start + off + 16)
    buf[0:8] = MAGIC
    buf[8:16] = struct.pack("<Q", len(header))
    buf[16:16 + len(header)] = header
    for e, arr in zip(entries, arrays):
        p = data_start + e["offset"]
        buf[p:p + arr.nbytes] = arr.tobytes()
    body = data_start + off
    crc = zlib.crc32(memoryview(buf)[:body]) & 0xFFFFFFFF
    buf[body:] = struct.pack("<QII", len(buf), crc, TRAILER_MAGIC)
    return bytes(buf)


def write(path, tensors, meta=None):
    """Writes atomically: a temp file in the same directory, fsync, rename."""
    data = encode(tensors, meta)
    tmp = f"{path}.tmp.{os.getpid()}"
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def decode(buf, where="<bytes>"):
    """(meta, {name: numpy array}) from the file's bytes; checks magic, size and crc32."""
    size = len(buf)
    if size < 32 or buf[:8] != MAGIC:
        raise ValueError(f"'{where}' is not a moe tensor file")
    total, crc_stored, tmagic = struct.unpack("<QII", buf[size - 16:])
    if tmagic != TRAILER_MAGIC or total != size:
        raise ValueError(f"'{where}' is truncated or damaged (no valid trailer)")
    crc = zlib.crc32(memoryview(buf)[:size - 16]) & 0xFFFFFFFF
    if crc != crc_stored:
        raise ValueError(f"'{where}' is corrupted: checksum mismatch (stored {crc_stored}, computed {crc})")
    (hl,) = struct.unpack("<Q", buf[8:16])
    header = json.loads(bytes(buf[16:16 + hl]))
    data_start = _align64(16 + hl)
    out = {}
    for t in header["tensors"]:
        dt = DTYPES[t["dtype"]]
        count = int(np.prod(t["shape"], dtype=np.int64))
        if t["nbytes"] != count * dt.itemsize:
            raise ValueError(f"'{where}': tensor '{t['name']}' size does not match its shape")
        p = data_start + t["offset"]
        if p + t["nbytes"] > size - 16:
            raise ValueError(f"'{where}': tensor '{t['name']}' extends past the end of the data")
        out[t["name"]] = np.frombuffer(buf, dtype=dt, count=count, offset=p).reshape(t["shape"]).copy()
    return header["meta"], out


def read(path):
    with open(path, "rb") as f:
        return decode(f.read(), path)
