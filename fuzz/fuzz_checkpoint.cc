// libFuzzer target: loading a moe checkpoint (io/checkpoint.h load_checkpoint over io/tensor_file.h):
// the tensor-file header, the config and tokenizer in its metadata, and every tensor against what
// the config requires, as `moe generate --checkpoint DIR` reads them.
//
// The input is a checkpoint.bin without its 16-byte trailer: the harness appends the trailer with
// the true size and CRC-32, so the mutations reach the header, the metadata and the tensors instead
// of stopping at the checksum (a bad trailer or CRC is tested in tests/test_checkpoint.cc). The
// bytes go to a file in a private temporary directory (under /dev/shm when it exists), since the
// loader maps a file. A file that loads is loaded once more as int8 (the conversion path).
// moe::error is the expected outcome for bad input; anything else (a crash, a sanitizer report,
// another exception, an allocation of what a corrupt config claims) is a bug.
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>
#include <vector>

#include "core/crc32.h"
#include "core/error.h"
#include "io/checkpoint.h"
#include "fuzz_files.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
    const std::string& dir = moe_fuzz::private_dir("ckpt");  // made on the first call
    std::vector<unsigned char> file(data, data + size);
    const uint64_t total = size + 16;
    const uint32_t crc = moe::crc32_update(0, data, size), magic = 0x21454F4D;  // "MOE!"
    unsigned char trailer[16];
    std::memcpy(trailer, &total, 8);
    std::memcpy(trailer + 8, &crc, 4);
    std::memcpy(trailer + 12, &magic, 4);
    file.insert(file.end(), trailer, trailer + 16);
    moe_fuzz::write_file(dir + "/checkpoint.bin", file.data(), file.size());
    try {
        (void)moe::load_checkpoint(dir);
        (void)moe::load_checkpoint(dir, "int8");
    } catch (const moe::error&) {
    }
    return 0;
}
