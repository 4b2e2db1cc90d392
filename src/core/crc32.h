#pragma once
// CRC-32 (IEEE 802.3, the polynomial of zlib, PNG and gzip: reflected 0xEDB88320, initial and
// final XOR 0xFFFFFFFF), the checksum of moe's tensor files. Written here instead of linking zlib
// for one function: slicing-by-8 tables read 8 bytes per step (about 1-2 GB/s a core, less time
// than the disk read of a checkpoint), and the values equal zlib's crc32, so files written before
// still verify.
#include <cstddef>
#include <cstdint>

namespace moe {

// Continues a CRC over `n` more bytes: crc32_update(crc32_update(0, a, na), b, nb) is the CRC of
// a followed by b; crc32_update(0, "123456789", 9) == 0xCBF43926.
uint32_t crc32_update(uint32_t crc, const void* data, size_t n);

}  // namespace moe
