// libFuzzer target: loading a Hugging Face model directory (io/hf_model.h load_hf_model), config.json
// and model.safetensors together: the config's fields and family, the tensor name map (per-expert or
// fused layouts), every tensor's dtype and shape against the config, and the conversions, then the
// same directory as int8. fuzz_hf_config and fuzz_safetensors take each file alone; here a field
// of one must agree with the other.
//
// Input: u32 n (little-endian) | n bytes of config.json | the rest: model.safetensors. Both go to
// a private directory (fuzz_files.h), since the loader maps the file. Seeds: tiny models of three
// families exported by `moe export --format hf` (qwen2_moe with a gated shared expert, mixtral,
// llama). moe::error is the expected outcome for bad input; anything else is a bug.
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <string>

#include "core/error.h"
#include "fuzz_files.h"
#include "io/hf_model.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
    const std::string& dir = moe_fuzz::private_dir("hf");  // made on the first call
    if (size < 4) return 0;
    uint32_t n = 0;
    std::memcpy(&n, data, 4);
    if (n > size - 4) return 0;
    moe_fuzz::write_file(dir + "/config.json", data + 4, n);
    moe_fuzz::write_file(dir + "/model.safetensors", data + 4 + n, size - 4 - n);
    try {
        (void)moe::load_hf_model(dir, "", 16);
        (void)moe::load_hf_model(dir, "int8", 16);
    } catch (const moe::error&) {
    }
    return 0;
}
