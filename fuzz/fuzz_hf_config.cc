// libFuzzer target: Hugging Face config.json / generation_config.json / model.safetensors.index.json
// parsing (io/hf_config.h, io/safetensors.h) and the name map built from a config that parses, on
// arbitrary text. moe::error is the expected outcome for bad input; anything else is a bug.
#include <cstddef>
#include <cstdint>
#include <string_view>

#include <nlohmann/json.hpp>

#include "core/error.h"
#include "io/hf_config.h"
#include "io/hf_names.h"
#include "io/safetensors.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
    const std::string_view text(reinterpret_cast<const char*>(data), size);
    try {
        const moe::HfConfig c = moe::parse_hf_config_text(text, "fuzz");
        // keep the map small: a config may name billions of layers or experts
        if (c.num_hidden_layers <= 8 && c.num_experts <= 16)
            for (auto layout : {moe::HfExpertLayout::per_expert, moe::HfExpertLayout::fused})
                (void)moe::hf_tensor_map(c, layout);
    } catch (const moe::error&) {
    }
    try {
        moe::HfConfig c;
        moe::parse_hf_generation_config(c, nlohmann::json::parse(text, nullptr, false), "fuzz");
    } catch (const moe::error&) {
    }
    try {
        (void)moe::parse_safetensors_index(text, "fuzz");
    } catch (const moe::error&) {
    }
    return 0;
}
