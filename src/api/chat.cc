// Chat on the public API: the model's chat template (io/chat_template.h) rendered over a history,
// and ChatSession, which keeps that history for `moe chat` (and later the server's chat endpoint).
#include <moe/moe.h>

#include <algorithm>

#include "core/error.h"
#include "io/chat_template.h"
#include "api/loaded_model.h"

namespace moe {

// What a model without a template of its own chats with: "role: content" lines, the reply after
// "assistant:". A character-level model trained on plays can follow it.
static const char* kPlainTemplate =
    "{% for m in messages %}{{ m['role'] }}: {{ m['content'] }}\n{% endfor %}"
    "{% if add_generation_prompt %}assistant:{% endif %}";

static const ChatTemplate& chat_template_of(LoadedModel::Impl& m) {
    if (!m.chat) {
        std::string src = m.ck.chat_template;
        if (src.empty() && m.ck.tokenizer.hf()) {
            const nlohmann::json& cfg = m.ck.tokenizer.hf()->tokenizer_config();
            if (cfg.is_object() && cfg.contains("chat_template") && !cfg["chat_template"].is_null())
                src = ChatTemplate::source_from_tokenizer_config(nlohmann::ordered_json(cfg));
        }
        m.chat_own = !src.empty();
        m.chat = std::make_shared<const ChatTemplate>(src.empty() ? std::string(kPlainTemplate) : src);
    }
    return *m.chat;
}

bool LoadedModel::has_chat_template() const {
    chat_template_of(*impl_);
    return impl_->chat_own;
}

void LoadedModel::set_chat_template(const std::string& source) {
    impl_->chat = std::make_shared<const ChatTemplate>(source);
    impl_->chat_own = true;
}

std::string LoadedModel::apply_chat_template(const std::vector<ChatMessage>& messages,
                                             bool add_generation_prompt) const {
    const ChatTemplate& t = chat_template_of(*impl_);
    nlohmann::ordered_json msgs = nlohmann::ordered_json::array();
    for (const ChatMessage& m : messages) msgs.push_back({{"role", m.role}, {"content", m.content}});
    const Tokenizer& tok = impl_->ck.tokenizer;
    const int32_t bos = tok.bos_id();
    const std::vector<int32_t> eos = tok.eos_ids();
    return t.apply(msgs, add_generation_prompt, bos >= 0 ? tok.token_text(bos) : std::string(),
                   eos.empty() ? std::string() : tok.token_text(eos[0]));
}

// ------------------------------------------------------------------ ChatSession

ChatSession::ChatSession(LoadedModel& model, const SampleOptions& opt, const std::string& system,
                         const std::vector<std::string>& stop)
    : model_(model), opt_(opt), stop_(stop) {
    check_sample_options(opt_, "--");
    if (!system.empty()) history_.push_back({"system", system});
}

void ChatSession::reset() {
    const bool sys = !history_.empty() && history_[0].role == "system";
    history_.resize(sys ? 1 : 0);
    last_prompt_.clear();
    turn_ = 0;
}

ChatSession::Reply ChatSession::reply(const std::string& user, const std::function<void(std::string_view)>& on_text,
                                      const std::atomic<bool>* cancel) {
    Reply r;
    const int64_t n_ctx = model_.context_length();
    const size_t first = !history_.empty() && history_[0].role == "system" ? 1 : 0;
    std::vector<ChatMessage> msgs = history_;
    msgs.push_back({"user", user});
    std::vector<int32_t> ids;
    // leave out the oldest messages (a user turn and its answer at a time) until the prompt and the
    // reply fit the context
    for (;;) {
        last_prompt_ = model_.apply_chat_template(msgs, true);
        ids = model_.tokenize(last_prompt_, false);
        if ((int64_t)ids.size() + opt_.max_tokens <= n_ctx || msgs.size() <= first + 1) break;
        const size_t n = std::min<size_t>(2, msgs.size() - first - 1);
        msgs.erase(msgs.begin() + (std::ptrdiff_t)first, msgs.begin() + (std::ptrdiff_t)(first + n));
        r.dropped += (int64_t)n;
    }
    if ((int64_t)ids.size() >= n_ctx)
        fail("the message makes a prompt of ", ids.size(), " tokens, but the context holds ", n_ctx,
             " (shorten it, or give a larger context)");
    r.prompt_tokens = (int64_t)ids.size();
    SampleOptions o = opt_;
    o.seed = opt_.seed + (uint64_t)turn_++;
    r.result = generate_text(model_, ids, o, stop_, on_text, cancel);
    r.cancelled = cancel && cancel->load();
    // messages left out stay out: the history is what the model saw, plus its answer
    history_ = std::move(msgs);
    history_.push_back({"assistant", r.result.text});
    return r;
}

}  // namespace moe
