// libFuzzer target: the GGUF header parser and validator (io/gguf.h) on arbitrary bytes, through the
// same entry point GgufSource uses, then what a loader reads from a header that passes: the model
// hyper-parameters (gguf_to_hf_config) and the tokenizer.json synthesised from tokenizer.ggml.* keys;
// and, for a header whose hyper-parameters pass, the whole model load (load_gguf_model: every tensor
// against the config, the Q / K un-permute, conversions) from a copy of the bytes in a private
// temporary directory (under /dev/shm when it exists: the loader maps a file).
// moe::error is the expected outcome for bad input; anything else (a crash, a sanitizer report,
// another exception) is a bug. For a file that passes, every tensor's byte range is touched so that
// ASan sees a view outside the buffer.
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "core/error.h"
#include "io/gguf.h"
#include "io/gguf_model.h"
#include "fuzz_files.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
    const std::string& dir = moe_fuzz::private_dir("gguf");  // made on the first call
    std::vector<unsigned char> buf(data, data + size);  // exactly `size` bytes: a read past the end is a report
    try {
        const moe::GgufHeader h = moe::parse_gguf(buf.data(), buf.size(), "fuzz");
        unsigned sum = 0;
        for (const auto& t : h.tensors) {
            if (t.nbytes == 0) continue;
            sum += buf[h.data_start + t.offset];
            sum += buf[h.data_start + t.offset + t.nbytes - 1];
        }
        volatile unsigned sink = sum;
        (void)sink;
        bool hparams = false;
        try {
            (void)moe::gguf_to_hf_config(h);
            hparams = true;
        } catch (const moe::error&) {
        }
        if (hparams) {
            const std::string path = dir + "/model.gguf";
            moe_fuzz::write_file(path, buf.data(), buf.size());
            try {
                (void)moe::load_gguf_model(path, "", 16);
            } catch (const moe::error&) {
            }
        }
        nlohmann::json tj, cfg;
        (void)moe::gguf_tokenizer_json(h, tj, cfg);
    } catch (const moe::error&) {
    }
    return 0;
}
