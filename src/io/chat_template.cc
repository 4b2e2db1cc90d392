#include "io/chat_template.h"

#include "io/jinja_eval.h"

namespace moe {

static std::string error_text(const std::string& detail, int line, int column) {
    std::string s = "chat template";
    if (line > 0) {
        s += ", line " + std::to_string(line);
        if (column > 0) s += ", column " + std::to_string(column);
    }
    return s + ": " + detail;
}

ChatTemplateError::ChatTemplateError(Kind kind, std::string detail, int line, int column)
    : error(error_text(detail, line, column)), kind_(kind), detail_(std::move(detail)), line_(line), column_(column) {}

ChatTemplate::ChatTemplate(const std::string& source, ChatTemplateLimits limits)
    : program_(jinja::parse_template(source)), limits_(limits) {}

template <class J>
static std::string render_json(const jinja::Program& prog, const ChatTemplateLimits& lim,
                               const std::function<std::tm()>& clock, const J& context) {
    if (!context.is_object()) throw ChatTemplateError(ChatTemplateError::Kind::type, "the context must be a JSON object");
    jinja::Renderer r(prog, lim, clock);
    jinja::Value ctx = jinja::from_json(context, r.budget);
    return r.render(ctx);
}

std::string ChatTemplate::render(const nlohmann::ordered_json& context) const {
    return render_json(*program_, limits_, clock_, context);
}

std::string ChatTemplate::render(const nlohmann::json& context) const {
    return render_json(*program_, limits_, clock_, context);
}

std::string ChatTemplate::source_from_tokenizer_config(const nlohmann::ordered_json& config, bool with_tools,
                                                      const std::string& name) {
    using K = ChatTemplateError::Kind;
    auto it = config.is_object() ? config.find("chat_template") : config.end();
    if (it == config.end() || it->is_null()) throw ChatTemplateError(K::type, "tokenizer_config.json has no chat_template");
    if (it->is_string()) {
        if (!name.empty() && name != "default")
            throw ChatTemplateError(K::type, "tokenizer_config.json has one chat template, not one named '" + name + "'");
        return it->get<std::string>();
    }
    if (!it->is_array()) throw ChatTemplateError(K::type, "chat_template in tokenizer_config.json is neither a string nor a list");
    auto find = [&](const std::string& n) -> const nlohmann::ordered_json* {
        for (const auto& t : *it)
            if (t.is_object() && t.value("name", "") == n && t.contains("template") && t["template"].is_string())
                return &t["template"];
        return nullptr;
    };
    const nlohmann::ordered_json* t = nullptr;
    if (!name.empty()) t = find(name);
    else if (with_tools && (t = find("tool_use")) != nullptr) {
    } else t = find("default");
    if (!t) {
        std::string names;
        for (const auto& e : *it)
            if (e.is_object() && e.contains("name") && e["name"].is_string()) names += (names.empty() ? "" : ", ") + e["name"].get<std::string>();
        throw ChatTemplateError(K::type, "tokenizer_config.json has no chat template named '" + (name.empty() ? "default" : name) +
                                             "' (it has: " + names + ")");
    }
    return t->get<std::string>();
}

std::string ChatTemplate::apply(const nlohmann::ordered_json& messages, bool add_generation_prompt,
                                const std::string& bos_token, const std::string& eos_token,
                                const nlohmann::ordered_json& extra) const {
    if (!messages.is_array()) throw ChatTemplateError(ChatTemplateError::Kind::type, "messages must be a JSON array");
    if (!extra.is_object()) throw ChatTemplateError(ChatTemplateError::Kind::type, "the extra context must be a JSON object");
    nlohmann::ordered_json ctx = nlohmann::ordered_json::object();
    // transformers gives a message with reasoning under any of these names both "thinking" (first)
    // and "reasoning_content" (last), so templates that read either one see it
    nlohmann::ordered_json msgs = nlohmann::ordered_json::array();
    for (const auto& m : messages) {
        if (!m.is_object()) throw ChatTemplateError(ChatTemplateError::Kind::type, "every message must be a JSON object");
        const nlohmann::ordered_json* reasoning = nullptr;
        for (const char* key : {"reasoning_content", "thinking", "reasoning"}) {
            auto it = m.find(key);
            if (it != m.end() && !it->is_null()) {
                reasoning = &*it;
                break;
            }
        }
        if (!reasoning) {
            msgs.push_back(m);
            continue;
        }
        nlohmann::ordered_json a = nlohmann::ordered_json::object();
        a["thinking"] = *reasoning;
        for (auto it = m.begin(); it != m.end(); ++it) a[it.key()] = it.value();
        a["reasoning_content"] = *reasoning;
        msgs.push_back(std::move(a));
    }
    ctx["messages"] = std::move(msgs);
    ctx["tools"] = extra.contains("tools") ? extra["tools"] : nlohmann::ordered_json();
    ctx["documents"] = extra.contains("documents") ? extra["documents"] : nlohmann::ordered_json();
    ctx["add_generation_prompt"] = add_generation_prompt;
    ctx["bos_token"] = bos_token;
    ctx["eos_token"] = eos_token;
    for (auto it = extra.begin(); it != extra.end(); ++it)
        if (it.key() != "tools" && it.key() != "documents") ctx[it.key()] = it.value();
    return render(ctx);
}

}  // namespace moe
