// libFuzzer target: the request bodies of `moe serve` (server/request.h) on arbitrary bytes: the
// JSON parse, every field's type and range, the chat messages through a real chat template (Qwen3's
// Jinja source, tests/data/chat_templates/qwen3.jinja), the prompt through the model's tokenizer,
// and the context-length check, for all four endpoints that take a body (/v1/chat/completions,
// /v1/completions, /tokenize, /detokenize). The model is the test suite's tiny qwen3_moe Hugging
// Face directory with its byte-level tokenizer, loaded once.
// A bad request must end as an HttpError (a 400 with OpenAI's error object) or a moe::error (the
// server answers 400 too); a crash, a sanitizer report or any other exception (a json::exception
// would mean a field read without its type checked) is a bug.
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <string>

#include <nlohmann/json.hpp>

#include <moe/moe.h>

#include "api/loaded_model.h"
#include "core/error.h"
#include "server/request.h"
#include "fuzz_files.h"

namespace {

namespace fs = std::filesystem;

std::string g_dir;
moe::LoadedModel* g_model = nullptr;
moe::srv::RequestParser* g_parser = nullptr;

std::string read_file(const std::string& p) {
    std::ifstream in(p, std::ios::binary);
    if (!in) {
        std::fprintf(stderr, "fuzz_server_request: cannot read %s\n", p.c_str());
        std::abort();
    }
    std::stringstream ss;
    ss << in.rdbuf();
    return ss.str();
}

template <class F>
void expect_clean(F&& f) {
    try {
        f();
    } catch (const moe::srv::HttpError& e) {
        if (e.status != 400) {
            std::fprintf(stderr, "HttpError %d: %s\n", e.status, e.message.c_str());
            std::abort();
        }
    } catch (const moe::error&) {
    }
}

}  // namespace

extern "C" int LLVMFuzzerInitialize(int*, char***) {
    const std::string data = std::string(MOE_SOURCE_DIR) + "/tests/data/";
    g_dir = moe_fuzz::private_dir("serve");
    for (const char* f : {"config.json", "model.safetensors", "generation_config.json"})
        fs::copy_file(data + "hf/qwen3_moe/" + f, g_dir + "/" + f);
    fs::copy_file(data + "tokenizers/moe_export/byte.tokenizer.json", g_dir + "/tokenizer.json");
    const nlohmann::json tc = {{"chat_template", read_file(data + "chat_templates/qwen3.jinja")}};
    std::ofstream(g_dir + "/tokenizer_config.json") << tc.dump();
    g_model = new moe::LoadedModel(g_dir, "", "fuzz", 64);
    g_parser = new moe::srv::RequestParser{*g_model, g_model->impl().ck.tokenizer, "tiny", g_dir,
                                           g_model->context_length()};
    return 0;
}

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
    const std::string text(reinterpret_cast<const char*>(data), size);
    nlohmann::json body;
    try {
        body = moe::srv::parse_body(text);
    } catch (const moe::srv::HttpError& e) {
        if (e.status != 400) std::abort();
        return 0;
    }
    expect_clean([&] { (void)g_parser->completion(body, true); });
    expect_clean([&] { (void)g_parser->completion(body, false); });
    expect_clean([&] { (void)g_parser->tokenize(body); });
    expect_clean([&] {
        const std::vector<int32_t> ids = g_parser->detokenize_ids(body);
        (void)g_parser->tok.decode(ids);
    });
    return 0;
}
