// libFuzzer target: the safetensors header parser and validator (io/safetensors.h) on arbitrary
// bytes, through the same entry point the file reader uses. moe::error is the expected outcome for
// bad input; anything else (a crash, a sanitizer report, another exception) is a bug. For a file
// that passes, every tensor's byte range is touched so that ASan sees a view outside the buffer.
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <vector>

#include "core/error.h"
#include "io/safetensors.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
    // a copy of exactly `size` bytes, so that a read past the end is an ASan report
    std::vector<unsigned char> buf(data, data + size);
    try {
        const moe::SafetensorsHeader h = moe::parse_safetensors(buf.data(), buf.size(), "fuzz");
        unsigned sum = 0;
        for (const auto& t : h.tensors) {
            if (t.end == t.begin) continue;
            sum += buf[h.data_start + t.begin];
            sum += buf[h.data_start + t.end - 1];
        }
        volatile unsigned sink = sum;
        (void)sink;
    } catch (const moe::error&) {
    }
    return 0;
}
