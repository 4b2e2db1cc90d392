#pragma once
// The OpenAI request bodies `moe serve` accepts, parsed and checked into what the engine runs, with
// no HTTP in it (the server's handlers call it; fuzz/fuzz_server_request.cc drives it with
// arbitrary bytes): every bad field, type or value is an HttpError (400 and OpenAI's error object
// {"message", "type", "code"}), never an assert or a crash.
#include <cmath>
#include <cstdint>
#include <sstream>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include <moe/moe.h>

#include "infer/engine.h"
#include "io/tokenizer.h"

namespace moe::srv {

using json = nlohmann::json;

struct HttpError {
    int status;
    std::string message, type, code;
};

[[noreturn]] void bad(const std::string& msg, const std::string& code = "invalid_value");

// Text from a tokenizer may end inside a UTF-8 character: replace, never throw.
std::string dump(const json& j);

// A request's fields, each read with its type and range checked (absent or null: the default).
struct Fields {
    const json& j;
    bool has(const char* k) const { return j.contains(k) && !j[k].is_null(); }
    double number(const char* k, double def, double lo, double hi) const {
        if (!has(k)) return def;
        if (!j[k].is_number()) bad(std::string("'") + k + "' must be a number, got " + j[k].type_name(), "invalid_type");
        const double v = j[k].get<double>();
        if (!(v >= lo && v <= hi) || !std::isfinite(v)) {
            std::ostringstream os;
            os << "'" << k << "' must be in [" << lo << ", " << hi << "], got " << v;
            bad(os.str());
        }
        return v;
    }
    int64_t integer(const char* k, int64_t def, int64_t lo, int64_t hi) const {
        if (!has(k)) return def;
        const json& v = j[k];
        if (!v.is_number_integer() && !(v.is_number_float() && std::floor(v.get<double>()) == v.get<double>()))
            bad(std::string("'") + k + "' must be an integer, got " + (v.is_number() ? dump(v) : v.type_name()), "invalid_type");
        if (v.is_number_float() && std::fabs(v.get<double>()) > 9e18) bad(std::string("'") + k + "' is out of range");
        const int64_t x = v.is_number_unsigned() ? (v.get<uint64_t>() > (uint64_t)INT64_MAX ? INT64_MAX : (int64_t)v.get<uint64_t>())
                          : v.is_number_integer() ? v.get<int64_t>() : (int64_t)v.get<double>();
        if (x < lo || x > hi)
            bad(std::string("'") + k + "' must be in [" + std::to_string(lo) + ", " + std::to_string(hi) + "], got " +
                std::to_string(x));
        return x;
    }
    bool boolean(const char* k, bool def) const {
        if (!has(k)) return def;
        if (!j[k].is_boolean()) bad(std::string("'") + k + "' must be a boolean, got " + j[k].type_name(), "invalid_type");
        return j[k].get<bool>();
    }
    std::string string(const char* k, const std::string& def) const {
        if (!has(k)) return def;
        if (!j[k].is_string()) bad(std::string("'") + k + "' must be a string, got " + j[k].type_name(), "invalid_type");
        return j[k].get<std::string>();
    }
    const json* object(const char* k) const {
        if (!has(k)) return nullptr;
        if (!j[k].is_object()) bad(std::string("'") + k + "' must be an object, got " + j[k].type_name(), "invalid_type");
        return &j[k];
    }
};

// The body as a JSON object (else a 400 "invalid_json").
json parse_body(const std::string& text);

// A completion request, checked, up to the engine: the engine's request and how to answer.
struct CompletionRequest {
    EngineRequest q;             // prompt (1 .. n_ctx - 1 ids), sampling, n, stop, logprobs, routing
    bool stream = false;
    bool include_usage = false;  // stream_options.include_usage
    bool echo = false;           // completions: the prompt's text starts each choice
    std::string echo_text;
    bool want_logprobs = false;  // "logprobs" given and not false
};

// What the checks need from the served model.
struct RequestParser {
    LoadedModel& model;
    const Tokenizer& tok;
    std::string model_id;    // the name /v1/models lists
    std::string model_path;  // --model as given (also accepted as the model name)
    int64_t n_ctx = 0;       // the engine's context length

    // POST /v1/completions (chat false) or /v1/chat/completions (chat true)
    CompletionRequest completion(const json& body, bool chat) const;
    // POST /tokenize: the ids of "content" (with special tokens when "add_special")
    std::vector<int32_t> tokenize(const json& body) const;
    // POST /detokenize: the ids of "tokens", each inside the vocabulary
    std::vector<int32_t> detokenize_ids(const json& body) const;

    void check_model(const Fields& f) const;
    // Fields of OpenAI's API that moe does not use: ignored, but a value of the wrong type is a 400
    // as OpenAI's own server answers it.
    void check_unused(const Fields& f, bool chat) const;
    // The sampling fields shared by both endpoints.
    EngineRequest sampling(const Fields& f, bool chat) const;
    std::vector<int32_t> prompt_ids(const json& p) const;
    // The ids of list a, each an integer inside the vocabulary (else a 400: not_integer, or
    // id_prefix + "<id> is outside the vocabulary [0, V)")
    std::vector<int32_t> vocab_ids(const json& a, const std::string& not_integer, const std::string& id_prefix) const;
    std::string chat_prompt(const json& msgs) const;
};

}  // namespace moe::srv
