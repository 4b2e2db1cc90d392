#pragma once
// Chat templates: the Jinja templates Hugging Face models carry (tokenizer_config.json's
// "chat_template", chat_template.jinja, GGUF's tokenizer.chat_template), rendered the way
// transformers' apply_chat_template renders them: jinja2's ImmutableSandboxedEnvironment with
// trim_blocks, lstrip_blocks and the loopcontrols extension, the globals raise_exception,
// strftime_now, namespace and dict, and a tojson filter that is Python's json.dumps with
// ensure_ascii=False. The language is moe's own subset of Jinja (src/io/jinja_*): no Python at run
// time. docs/chat-templates.md lists what is supported and where it differs from jinja2.
#include <cstdint>
#include <ctime>
#include <functional>
#include <memory>
#include <string>

#include <nlohmann/json.hpp>

#include <moe/error.h>

namespace moe {

namespace jinja {
struct Program;
}

// Every problem with a template, at parse or render time. what() is "chat template[, line L[,
// column C]]: <detail>"; detail() is the message alone, e.g. the text a template passed to
// raise_exception().
class ChatTemplateError : public error {
public:
    enum class Kind {
        syntax,       // the template does not parse (line and column name the spot)
        raised,       // the template called raise_exception(message)
        undefined,    // an operation on an undefined value (jinja2's UndefinedError)
        type,         // Python would raise TypeError / ValueError / ZeroDivisionError / ...
        security,     // what jinja2's sandbox refuses (mutating a list, a '_' attribute, ...)
        limit,        // a resource limit of ChatTemplateLimits
        unsupported,  // valid jinja2 that moe's subset leaves out (named in the message)
    };
    ChatTemplateError(Kind kind, std::string detail, int line = 0, int column = 0);
    Kind kind() const { return kind_; }
    const std::string& detail() const { return detail_; }
    int line() const { return line_; }
    int column() const { return column_; }

private:
    Kind kind_;
    std::string detail_;
    int line_, column_;
};

// Bounds that hold for any template and any input: each one, when reached, is a ChatTemplateError
// of kind limit, so no input can hang the renderer or exhaust memory.
struct ChatTemplateLimits {
    size_t max_output_bytes = size_t(32) << 20;  // the rendered text, and any one string value
    int64_t max_items = int64_t(1) << 20;        // elements of one list or dict
    int64_t max_loop_iterations = 1'000'000;     // for-loop iterations, all loops together
    int max_depth = 500;                         // nesting: expressions, blocks, macro calls, values
    // Evaluation steps: one per expression and statement evaluated, one per 8 bytes of every
    // string and 4 per item of every list the template builds, so this bounds both the time and
    // all the memory a render allocates.
    int64_t max_steps = 100'000'000;
};

class ChatTemplate {
public:
    // Parses once; a syntax error, an unknown filter or test (outside an if, as jinja2 checks at
    // compile time) or invalid UTF-8 is a ChatTemplateError naming line and column.
    explicit ChatTemplate(const std::string& source, ChatTemplateLimits limits = {});

    // Renders with `context` as the template's variables. Objects keep their key order (it shows
    // in tojson and in items()), so prefer ordered_json; the nlohmann::json overload sees its keys
    // sorted.
    std::string render(const nlohmann::ordered_json& context) const;
    std::string render(const nlohmann::json& context) const;

    // What transformers' apply_chat_template(messages, tokenize=False, ...) renders: the context
    // is messages, tools and documents (None unless `extra` has them), add_generation_prompt,
    // bos_token, eos_token and every other key of `extra` (enable_thinking, date_string, ...).
    // Messages whose reasoning_content / thinking / reasoning is set get both "thinking" and
    // "reasoning_content", as transformers aliases them.
    std::string apply(const nlohmann::ordered_json& messages, bool add_generation_prompt,
                      const std::string& bos_token, const std::string& eos_token,
                      const nlohmann::ordered_json& extra = nlohmann::ordered_json::object()) const;

    // The template source a tokenizer_config.json carries under "chat_template": the string, or
    // from a list of {"name", "template"} the one called `name`, else "tool_use" when the request
    // has tools and there is one, else "default" (transformers' get_chat_template). Throws
    // ChatTemplateError when there is none.
    static std::string source_from_tokenizer_config(const nlohmann::ordered_json& config, bool with_tools = false,
                                                    const std::string& name = "");

    // The time strftime_now() formats; the default is the local time when it is called.
    void set_clock(std::function<std::tm()> clock) { clock_ = std::move(clock); }
    const ChatTemplateLimits& limits() const { return limits_; }

private:
    std::shared_ptr<const jinja::Program> program_;
    ChatTemplateLimits limits_;
    std::function<std::tm()> clock_;
};

}  // namespace moe
