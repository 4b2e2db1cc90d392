// The server's request parsing (server/request.h).
#include "server/request.h"

#include <algorithm>
#include <cmath>
#include <random>
#include <sstream>

namespace moe::srv {

void bad(const std::string& msg, const std::string& code) { throw HttpError{400, msg, "invalid_request_error", code}; }

std::string dump(const json& j) { return j.dump(-1, ' ', false, json::error_handler_t::replace); }

json parse_body(const std::string& text) {
    json j;
    try {
        j = json::parse(text);
    } catch (const json::exception& e) {
        bad(std::string("the body is not valid JSON: ") + e.what(), "invalid_json");
    }
    if (!j.is_object()) bad("the body must be a JSON object", "invalid_json");
    return j;
}

void RequestParser::check_model(const Fields& f) const {
    if (!f.has("model")) return;
    const std::string m = f.string("model", "");
    if (m != model_id && (model_path.empty() || m != model_path))
        bad("the model '" + m + "' does not exist; this server serves '" + model_id + "'", "model_not_found");
}

void RequestParser::check_unused(const Fields& f, bool chat) const {
    f.string("user", "");
    f.object("logit_bias");
    f.object("metadata");
    f.boolean("store", false);
    if (chat) {
        f.object("response_format");
        f.boolean("parallel_tool_calls", false);
        if (f.has("tools") && !f.j["tools"].is_array()) bad("'tools' must be a list", "invalid_type");
        if (f.has("tool_choice") && !f.j["tool_choice"].is_string() && !f.j["tool_choice"].is_object())
            bad("'tool_choice' must be a string or an object", "invalid_type");
    } else {
        f.string("suffix", "");
        f.integer("best_of", 1, 1, 20);
    }
}

EngineRequest RequestParser::sampling(const Fields& f, bool chat) const {
    EngineRequest q;
    q.opt.temperature = f.number("temperature", 1.0, 0, 2);
    q.opt.top_p = f.number("top_p", 1.0, 0, 1);
    if (q.opt.top_p == 0) bad("'top_p' must be in (0, 1], got 0");
    q.opt.top_k = f.integer("top_k", 0, 0, 1 << 30);
    q.min_p = f.number("min_p", 0, 0, 1);
    q.presence_penalty = f.number("presence_penalty", 0, -2, 2);
    q.frequency_penalty = f.number("frequency_penalty", 0, -2, 2);
    q.opt.repetition_penalty = f.number("repetition_penalty", 1.0, 1e-6, 100);
    if (f.has("seed")) q.opt.seed = (uint64_t)f.integer("seed", 0, INT64_MIN, INT64_MAX);
    else q.opt.seed = std::random_device{}() ^ ((uint64_t)std::random_device{}() << 32);
    const int64_t cap = std::max<int64_t>(1, n_ctx);
    int64_t mt = f.integer("max_tokens", chat ? -1 : 16, 1, 1 << 30);
    mt = f.integer("max_completion_tokens", mt, 1, 1 << 30);
    q.opt.max_tokens = mt < 0 ? cap : mt;  // the context ends a reply anyway
    q.n = f.integer("n", 1, 1, 16);
    q.ignore_eos = f.boolean("ignore_eos", false);  // vLLM's and llama.cpp's extension
    if (f.has("stop")) {
        const json& s = f.j["stop"];
        if (s.is_string()) q.stop.push_back(s.get<std::string>());
        else if (s.is_array()) {
            if (s.size() > 16) bad("'stop' holds at most 16 strings, got " + std::to_string(s.size()));
            for (const json& x : s) {
                if (!x.is_string()) bad("'stop' must be a string or a list of strings", "invalid_type");
                q.stop.push_back(x.get<std::string>());
            }
        } else bad("'stop' must be a string or a list of strings, got " + std::string(s.type_name()), "invalid_type");
        for (const std::string& x : q.stop)
            if (x.empty()) bad("'stop' strings must not be empty");
    }
    if (f.has("moe")) {
        const json& m = f.j["moe"];
        if (!m.is_object()) bad(std::string("'moe' must be an object, got ") + m.type_name(), "invalid_type");
        if (m.contains("return_routing") && !m["return_routing"].is_null()) {
            if (!m["return_routing"].is_boolean())
                bad(std::string("'moe.return_routing' must be a boolean, got ") + m["return_routing"].type_name(),
                    "invalid_type");
            q.return_routing = m["return_routing"].get<bool>();
        }
    }
    if (chat) {
        const bool lp = f.boolean("logprobs", false);
        const int64_t top = f.integer("top_logprobs", 0, 0, 20);
        if (f.has("top_logprobs") && !lp) bad("'top_logprobs' needs 'logprobs': true");
        q.top_logprobs = lp ? top : -1;
    } else {
        q.top_logprobs = f.has("logprobs") ? f.integer("logprobs", 0, 0, 5) : -1;
    }
    return q;
}

std::vector<int32_t> RequestParser::prompt_ids(const json& p) const {
    if (p.is_string()) return model.tokenize(p.get<std::string>(), true);
    if (p.is_array() && p.size() == 1 && p[0].is_string()) return model.tokenize(p[0].get<std::string>(), true);
    if (p.is_array() && !p.empty() && p[0].is_number_integer())
        return vocab_ids(p, "'prompt' as token ids must hold integers only", "'prompt' token id ");
    bad("'prompt' must be a string, a list of one string or a list of token ids", "invalid_type");
}

std::string RequestParser::chat_prompt(const json& msgs) const {
    if (!msgs.is_array() || msgs.empty()) bad("'messages' must be a non-empty list", "invalid_type");
    std::vector<ChatMessage> m;
    for (const json& x : msgs) {
        if (!x.is_object()) bad("each message must be an object", "invalid_type");
        if (!x.contains("role") || !x["role"].is_string()) bad("each message needs a string 'role'", "invalid_type");
        std::string content;
        if (x.contains("content") && !x["content"].is_null()) {
            const json& c = x["content"];
            if (c.is_string()) content = c.get<std::string>();
            else if (c.is_array()) {
                for (const json& part : c) {
                    if (!part.is_object() || !part.contains("type") || part["type"] != "text" || !part.contains("text") ||
                        !part["text"].is_string())
                        bad("message content parts must be {\"type\": \"text\", \"text\": ...}", "invalid_type");
                    content += part["text"].get<std::string>();
                }
            } else bad("message 'content' must be a string or a list of text parts", "invalid_type");
        }
        m.push_back({x["role"].get<std::string>(), content});
    }
    return model.apply_chat_template(m, true);
}

CompletionRequest RequestParser::completion(const json& body, bool chat) const {
    const Fields f{body};
    check_model(f);
    check_unused(f, chat);
    CompletionRequest r;
    EngineRequest& q = r.q;
    q = sampling(f, chat);
    r.stream = f.boolean("stream", false);
    if (const json* so = f.object("stream_options")) r.include_usage = Fields{*so}.boolean("include_usage", false);
    r.echo = !chat && f.boolean("echo", false);
    if (chat) {
        if (!f.has("messages")) bad("'messages' is required", "missing_field");
        q.prompt = model.tokenize(chat_prompt(body["messages"]), false);
    } else {
        if (!f.has("prompt")) bad("'prompt' is required", "missing_field");
        q.prompt = prompt_ids(body["prompt"]);
        if (r.echo) r.echo_text = body["prompt"].is_string() ? body["prompt"].get<std::string>() : tok.decode(q.prompt, true);
    }
    if (q.prompt.empty()) bad("the prompt is empty");
    if ((int64_t)q.prompt.size() >= n_ctx)
        throw HttpError{400,
                        "the prompt has " + std::to_string(q.prompt.size()) + " tokens, but the context holds " +
                            std::to_string(n_ctx) + " (the prompt and at least one generated token must fit)",
                        "invalid_request_error", "context_length_exceeded"};
    r.want_logprobs = body.contains("logprobs") && !body["logprobs"].is_null() && body["logprobs"] != false;
    return r;
}

std::vector<int32_t> RequestParser::tokenize(const json& body) const {
    const Fields f{body};
    const std::string text = f.string("content", "");
    const bool special = f.boolean("add_special", false);
    return model.tokenize(text, special);
}

std::vector<int32_t> RequestParser::detokenize_ids(const json& b) const {
    if (!b.contains("tokens") || !b["tokens"].is_array()) bad("'tokens' must be a list of token ids", "invalid_type");
    return vocab_ids(b["tokens"], "'tokens' must hold integers only", "token id ");
}

std::vector<int32_t> RequestParser::vocab_ids(const json& a, const std::string& not_integer,
                                              const std::string& id_prefix) const {
    std::vector<int32_t> ids;
    const int64_t V = model.vocab_size();
    for (const json& x : a) {
        if (!x.is_number_integer()) bad(not_integer, "invalid_type");
        const int64_t v = x.get<int64_t>();
        if (v < 0 || v >= V) bad(id_prefix + std::to_string(v) + " is outside the vocabulary [0, " + std::to_string(V) + ")");
        ids.push_back((int32_t)v);
    }
    return ids;
}

}  // namespace moe::srv
