// libFuzzer target: the bytes are a tokenizer.json (and, after a line "#config", a
// tokenizer_config.json). Loading may fail with moe::error, the only exception allowed; a
// tokenizer that loads then encodes, decodes and stream-decodes a few fixed texts, which must not
// crash, hang or trip a sanitizer either.
#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>

#include "core/error.h"
#include "io/hf_tokenizer.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
    const std::string_view all(reinterpret_cast<const char*>(data), size);
    const size_t cut = all.find("\n#config\n");
    const std::string_view tj = all.substr(0, cut);
    const std::string_view cfg = cut == std::string_view::npos ? std::string_view() : all.substr(cut + 9);
    std::shared_ptr<const moe::HfTokenizer> tok;
    try {
        tok = moe::HfTokenizer::from_string(tj, cfg, "fuzz/tokenizer.json");
    } catch (const moe::error&) {
        return 0;
    }
    static const char* const kTexts[] = {
        "Hello world! I'm here, you're there.  \n\n\tTabs\t and 12345 numbers 3.14",
        " <s>[INST] café cafe\xCC\x81 <|im_start|>user\n\xE4\xBD\xA0\xE5\xA5\xBD<|im_end|> \xF0\x9F\x91\xA8\xE2\x80\x8D\xF0\x9F\x91\xA9",
        "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaab   ",
        "",
        " ",
        "\xC2\x85\xE2\x80\xA8\xE1\xA0\x8E x",
    };
    for (const char* text : kTexts) {
        for (bool add_special : {false, true}) {
            try {
                const std::vector<int32_t> ids = tok->encode(text, add_special);
                (void)tok->decode(ids, false);
                (void)tok->decode(ids, true);
                moe::HfDecodeStream stream(tok, add_special);
                std::string streamed;
                for (int32_t id : ids) {
                    streamed += stream.step(id);
                    (void)tok->decode_one(id);
                    (void)tok->is_special(id);
                    (void)tok->token_text(id);
                }
                streamed += stream.finish();
            } catch (const moe::error&) {
                // a regex over its backtracking limit, a WordLevel piece without an unknown token
            }
        }
    }
    // every id, including ones past the vocabulary
    const int64_t n = tok->vocab_size();
    for (int64_t id = 0; id < n && id < 4096; ++id) {
        try {
            (void)tok->decode_one((int32_t)id);
            (void)tok->decode({(int32_t)id, (int32_t)id}, false);
        } catch (const moe::error&) {
        }
    }
    for (int32_t id : {-1, (int32_t)n, INT32_MAX}) {
        try {
            (void)tok->decode({id});
        } catch (const moe::error&) {
        }
    }
    return 0;
}
