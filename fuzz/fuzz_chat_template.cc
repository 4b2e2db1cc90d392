// libFuzzer target: the input is a chat template. It is parsed and rendered over a small fixed
// conversation (with tools and a tool call, so tool branches run too); a moe::error is a valid
// outcome, anything else (a crash, a sanitizer report, a leak, another exception) is a bug.
// Tighter limits than the defaults keep each run short; they are what a template hits first.
#include <cstddef>
#include <cstdint>
#include <string>

#include "io/chat_template.h"

namespace {

const nlohmann::ordered_json& conversation() {
    static const nlohmann::ordered_json c = nlohmann::ordered_json::parse(R"({
        "messages": [
            {"role": "system", "content": "You are helpful."},
            {"role": "user", "content": "Hi {{ x }} é 😀"},
            {"role": "assistant", "content": "<think>hm</think>Hello", "reasoning_content": "hm",
             "tool_calls": [{"id": "call12345", "type": "function",
                             "function": {"name": "f", "arguments": {"a": 1, "b": [1.5, null, true]}}}]},
            {"role": "tool", "tool_call_id": "call12345", "content": "42"},
            {"role": "user", "content": ["part", {"type": "text", "text": "t"}]}
        ],
        "tools": [{"type": "function", "function": {"name": "f", "description": "d",
                   "parameters": {"type": "object", "properties": {"a": {"type": "integer"}}, "required": ["a"]}}}],
        "add_generation_prompt": true,
        "bos_token": "<s>",
        "eos_token": "</s>",
        "enable_thinking": false
    })");
    return c;
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
    moe::ChatTemplateLimits lim;
    lim.max_output_bytes = 1 << 20;
    lim.max_items = 1 << 16;
    lim.max_loop_iterations = 20000;
    lim.max_steps = 200000;
    try {
        moe::ChatTemplate t(std::string(reinterpret_cast<const char*>(data), size), lim);
        t.set_clock([] {
            std::tm tm{};
            tm.tm_year = 124;
            tm.tm_mon = 6;
            tm.tm_mday = 26;
            return tm;
        });
        std::string out = t.render(conversation());
        (void)out;
    } catch (const moe::error&) {
    }
    return 0;
}
