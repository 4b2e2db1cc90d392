// The CLI over Hugging Face model directories (issue #20's interface): `moe logits`, `moe tokenize`,
// `moe generate --model` and `moe chat`, run as the real binary. The numbers are checked against the
// transformers references of tests/data/hf (logits) and against the tokenizer library, itself
// checked id for id against Python `tokenizers` in test_hf_tokenizer.cc.
#include <gtest/gtest.h>

#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <atomic>
#include <csignal>
#include <cmath>
#include <filesystem>
#include <string>
#include <vector>

#include <moe/moe.h>

#include "cli_util.h"
#include "io/hf_model.h"
#include "io/safetensors.h"
#include "model/config.h"
#include "io/tokenizer.h"

using namespace moe_test;

namespace {

const std::string kData = std::string(MOE_TEST_DIR) + "/data/";

class CliHf : public CliTest {
protected:
    // A model directory `name` in the test directory: the tiny transformers model `family`'s
    // config.json + model.safetensors, and the tokenizer files of tests/data/tokenizers/`tok`.
    std::string model_dir(const std::string& name, const std::string& family, const std::string& tok_file,
                          const std::string& tok_config = "") {
        const std::string d = path(name);
        fs::create_directories(d);
        for (const char* f : {"config.json", "model.safetensors", "generation_config.json"})
            fs::copy_file(kData + "hf/" + family + "/" + f, d + "/" + f);
        if (!tok_file.empty()) fs::copy_file(kData + "tokenizers/" + tok_file, d + "/tokenizer.json");
        if (!tok_config.empty()) write_file(d + "/tokenizer_config.json", tok_config);
        return d;
    }

    static std::vector<int32_t> parse_ids(const std::string& out) {
        std::vector<int32_t> ids;
        for (const auto& v : json::parse(out)) ids.push_back(v.get<int32_t>());
        return ids;
    }
};

std::string join(const std::vector<int32_t>& ids, size_t n) {
    std::string s;
    for (size_t i = 0; i < n; ++i) s += (i ? "," : "") + std::to_string(ids[i]);
    return s;
}

// `moe logits` over the 64-token prompt of every MoE family's reference: within 1e-4 of
// transformers' fp32 logits (each row's largest error over its largest logit).
TEST_F(CliHf, LogitsMatchTransformers) {
    for (const std::string fam : {"mixtral", "qwen2_moe", "qwen3_moe", "olmoe", "llama_tied"}) {
        const moe::SafetensorsSource ref = moe::SafetensorsSource::open(kData + "hf/" + fam + "/reference.safetensors");
        const moe::TensorView& p = ref.get("prompt");
        std::vector<int32_t> prompt(p.numel());
        for (int64_t i = 0; i < p.numel(); ++i) prompt[i] = (int32_t) static_cast<const int64_t*>(p.data)[i];
        const moe::TensorView& l = ref.get("logits");
        const int64_t V = l.shape[1], N = (int64_t)prompt.size();
        RunResult r = moe("logits --model " + q(kData + "hf/" + fam) + " --tokens " + join(prompt, prompt.size()) +
                          " --out l.bin --threads 1");
        ASSERT_EQ(r.code(), 0) << fam << "\n" << r.describe();
        const std::string bytes = read_file(path("l.bin"));
        ASSERT_EQ((int64_t)bytes.size(), N * V * 4) << fam;
        const float* got = reinterpret_cast<const float*>(bytes.data());
        double worst = 0;
        for (int64_t i = 0; i < N; ++i) {
            double d = 0, m = 0;
            for (int64_t j = 0; j < V; ++j) {
                d = std::max(d, (double)std::fabs(got[i * V + j] - l.f32()[i * V + j]));
                m = std::max(m, (double)std::fabs(l.f32()[i * V + j]));
            }
            worst = std::max(worst, d / m);
        }
        EXPECT_LT(worst, 1e-4) << fam;
    }
}

TEST_F(CliHf, LogitsBadInput) {
    const std::string m = q(kData + "hf/qwen3_moe");
    expect_clean_error(moe("logits --model " + m + " --tokens 1,x,3 --out l.bin"), {"--tokens", "'x'"});
    expect_clean_error(moe("logits --model " + m + " --tokens 1,,3 --out l.bin"), {"--tokens"});
    expect_clean_error(moe("logits --model " + m + " --tokens 1,-3 --out l.bin"), {"--tokens", "-3"});
    expect_clean_error(moe("logits --model " + m + " --tokens 1,256 --out l.bin"), {"256"});
    expect_clean_error(moe("logits --model nowhere --tokens 1 --out l.bin"), {"nowhere", "does not exist"});
    expect_clean_error(moe("logits --model " + m + " --tokens 1 --out l.bin --dtype int4"), {"--dtype", "int4"});
    EXPECT_FALSE(fs::exists(path("l.bin")));
}

// `moe tokenize` prints what the tokenizer library encodes (with and without the post-processor's
// BOS), reading only the tokenizer files of a Hugging Face directory.
TEST_F(CliHf, TokenizeMatchesTheTokenizer) {
    const std::string d = model_dir("m", "mixtral", "mixtral/tokenizer.json");
    fs::copy_file(kData + "tokenizers/mixtral/tokenizer_config.json", d + "/tokenizer_config.json",
                  fs::copy_options::overwrite_existing);
    const moe::Tokenizer tok = moe::Tokenizer::from_hf_files(d + "/tokenizer.json", d + "/tokenizer_config.json", "");
    for (const std::string text : {"Hello world", " café  \n\t 12345 👨‍👩‍👧", "<s>[INST] hi [/INST]", ""}) {
        RunResult r = moe("tokenize --model m --text " + q(text));
        ASSERT_EQ(r.code(), 0) << r.describe();
        EXPECT_EQ(parse_ids(r.out), tok.encode(text, "t", true)) << text;
        RunResult n = moe("tokenize --model m --no-special --text " + q(text));
        ASSERT_EQ(n.code(), 0) << n.describe();
        EXPECT_EQ(parse_ids(n.out), tok.encode(text, "t", false)) << text;
        const std::vector<int32_t> with = parse_ids(r.out), without = parse_ids(n.out);
        ASSERT_EQ(with.size(), without.size() + 1) << "mixtral's post-processor adds BOS";
        EXPECT_EQ(with[0], 1);
    }
    const std::string bare = model_dir("bare", "mixtral", "");
    expect_clean_error(moe("tokenize --model bare --text hi"), {"bare", "tokenizer.json"});
}

// Generation from a Hugging Face directory: greedy is deterministic, and a text prompt without a
// tokenizer is a clean error (ids-only use, like `moe logits`, still works).
TEST_F(CliHf, GenerateFromAHuggingFaceDirectory) {
    model_dir("m", "qwen3_moe", "moe_export/byte.tokenizer.json");
    RunResult a = moe("generate --model m --prompt 'Once upon a time' --max-tokens 12 --temperature 0 --threads 1");
    ASSERT_EQ(a.code(), 0) << a.describe();
    RunResult b = moe("generate --model m --prompt 'Once upon a time' --max-tokens 12 --temperature 0 --threads 2");
    ASSERT_EQ(b.code(), 0) << b.describe();
    EXPECT_EQ(a.out, b.out);
    EXPECT_NE(a.out.find("Once upon a time"), std::string::npos) << a.out;
    model_dir("bare", "qwen3_moe", "");
    expect_clean_error(moe("generate --model bare --prompt hi --max-tokens 2"), {"bare", "tokenizer.json"});
}

}  // namespace

namespace {

const char* kChatConfig =
    R"({"chat_template": "{% for m in messages %}<{{ m.role }}>{{ m.content }}\n{% endfor %}{% if add_generation_prompt %}<assistant>{% endif %}"})";

// `moe chat` over stdin: each prompt renders the whole history with the model's template, /reset
// forgets it (the same greedy answer comes again), a bad command or line is not the end.
TEST_F(CliHf, ChatKeepsHistoryAndResets) {
    model_dir("m", "qwen3_moe", "moe_export/byte.tokenizer.json", kChatConfig);
    RunResult r = moe("chat --model m --max-tokens 6 --temperature 0 --verbose-prompt", "",
                      "hello there\nhow are you\n/reset\nhello there\n/bogus\n");
    ASSERT_EQ(r.code(), 0) << r.describe();
    EXPECT_NE(r.out.find("its chat template"), std::string::npos) << r.out;
    EXPECT_NE(r.out.find("(history cleared)"), std::string::npos) << r.out;
    EXPECT_NE(r.out.find("commands: /reset"), std::string::npos) << r.out;
    // the prompts as rendered: 1st turn, 2nd turn with the 1st exchange, after /reset the 1st again
    std::vector<std::string> prompts;
    for (size_t at = 0; (at = r.err.find("--- prompt (", at)) != std::string::npos;) {
        at = r.err.find("---\n", at + 4) + 4;
        const size_t end = r.err.find("\n--- end of prompt ---", at);
        ASSERT_NE(end, std::string::npos) << r.err;
        prompts.push_back(r.err.substr(at, end - at));
        at = end + 10;
    }
    ASSERT_EQ(prompts.size(), 3u) << r.err;
    EXPECT_EQ(prompts[0], "<user>hello there\n<assistant>");
    EXPECT_EQ(prompts[2], prompts[0]);
    EXPECT_EQ(prompts[1].rfind("<user>hello there\n<assistant>", 0), 0u) << prompts[1];
    EXPECT_NE(prompts[1].find("\n<user>how are you\n<assistant>"), std::string::npos) << prompts[1];
}

TEST_F(CliHf, ChatBadInput) {
    model_dir("m", "qwen3_moe", "moe_export/byte.tokenizer.json", kChatConfig);
    model_dir("bare", "qwen3_moe", "");
    expect_clean_error(moe("chat --model bare", "", "hi\n"), {"bare", "tokenizer.json"});
    write_file(path("bad.jinja"), "{% for m in messages %}");
    expect_clean_error(moe("chat --model m --chat-template bad.jinja", "", "hi\n"), {"chat template"});
    expect_clean_error(moe("chat --model m --chat-template nowhere.jinja", "", "hi\n"), {"--chat-template", "nowhere.jinja"});
    expect_clean_error(moe("chat --model m --temperature -1", "", "hi\n"), {"--temperature"});
    // a template that raises: that turn fails with the template's message, the chat goes on
    write_file(path("raise.jinja"), "{% if messages[-1]['content'] == 'boom' %}{{ raise_exception('no booms here') }}{% endif %}"
                                    "{% for m in messages %}{{ m.content }}{% endfor %}");
    RunResult r = moe("chat --model m --chat-template raise.jinja --max-tokens 2", "", "boom\nfine\n");
    EXPECT_EQ(r.code(), 0) << r.describe();
    EXPECT_NE(r.err.find("no booms here"), std::string::npos) << r.err;
}

// In-process: a cancelled reply keeps its text in the history; the oldest turns leave the prompt
// when the context is full; a message longer than the context is refused and not kept.
TEST_F(CliHf, ChatSessionCancelAndContext) {
    const std::string d = model_dir("m", "qwen3_moe", "moe_export/byte.tokenizer.json", kChatConfig);
    moe::LoadedModel model(d, "", "--dtype", 96);
    ASSERT_TRUE(model.has_chat_template());
    moe::SampleOptions opt;
    opt.temperature = 0;
    opt.max_tokens = 20;
    moe::ChatSession chat(model, opt, "be brief");
    std::atomic<bool> cancel{false};
    int pieces = 0;
    const auto r = chat.reply("hi", [&](std::string_view) { if (++pieces == 3) cancel = true; }, &cancel);
    EXPECT_TRUE(r.cancelled);
    EXPECT_LT(r.result.tokens, 20);
    ASSERT_EQ(chat.history().size(), 3u);
    EXPECT_EQ(chat.history()[0].role, "system");
    EXPECT_EQ(chat.history()[2].content, r.result.text);
    // 96 tokens of context, 20 for the reply: the third turn drops the first exchange
    int64_t dropped = 0;
    for (int i = 0; i < 4; ++i) dropped += chat.reply("tell me more " + std::to_string(i)).dropped;
    EXPECT_GT(dropped, 0);
    EXPECT_EQ(chat.history()[0].content, "be brief");
    EXPECT_LE(chat.last_prompt().size() + 20, 96u);  // byte tokenizer: one token per byte
    const size_t kept = chat.history().size();
    EXPECT_THROW(chat.reply(std::string(200, 'x')), moe::error);
    EXPECT_EQ(chat.history().size(), kept);
    chat.reset();
    ASSERT_EQ(chat.history().size(), 1u);
}

}  // namespace

namespace {

// Ctrl-C during a reply ends that reply, not the chat: SIGINT reaches a chat whose reply would
// run for minutes (a tiny moe model, 10^7 tokens); the next line (/exit) is still read.
TEST_F(CliHf, ChatCtrlCStopsTheReplyNotTheChat) {
    train_ok("ck");
    // the tiny corpus has no ':' for the plain template: a template of its own characters
    write_file(path("t.jinja"), "{% for m in messages %}{{ m.content }}\n{% endfor %}");
    int in[2], out[2];
    ASSERT_EQ(::pipe(in), 0);
    ASSERT_EQ(::pipe(out), 0);
    const std::string ck = path("ck"), tj = path("t.jinja");
    const pid_t pid = ::fork();
    ASSERT_GE(pid, 0);
    if (pid == 0) {
        ::dup2(in[0], 0);
        ::dup2(out[1], 1);
        ::close(in[1]);
        ::close(out[0]);
        std::signal(SIGINT, SIG_DFL);
        ::setenv("OMP_WAIT_POLICY", "passive", 1);
        ::execl(MOE_BINARY, MOE_BINARY, "chat", "--model", ck.c_str(), "--chat-template", tj.c_str(), "--max-tokens",
                "10000000", "--threads", "1", (char*)nullptr);
        ::_exit(127);
    }
    ::close(in[0]);
    ::close(out[1]);
    ASSERT_EQ(::write(in[1], "the\n", 4), 4);
    // read until the reply has begun: the banner, "> ", then reply text
    std::string got;
    char buf[4096];
    while (got.find("> ") == std::string::npos || got.size() < got.find("> ") + 40) {
        const ssize_t n = ::read(out[0], buf, sizeof buf);
        ASSERT_GT(n, 0) << got;
        got.append(buf, (size_t)n);
    }
    ::kill(pid, SIGINT);
    ASSERT_EQ(::write(in[1], "/exit\n", 6), 6);
    ::close(in[1]);
    for (ssize_t n; (n = ::read(out[0], buf, sizeof buf)) > 0;) got.append(buf, (size_t)n);
    ::close(out[0]);
    int status = 0;
    ASSERT_EQ(::waitpid(pid, &status, 0), pid);
    EXPECT_TRUE(WIFEXITED(status) && WEXITSTATUS(status) == 0) << status;
    EXPECT_NE(got.find("(stopped)"), std::string::npos) << got.substr(got.size() > 2000 ? got.size() - 2000 : 0);
}

}  // namespace

namespace {

// Fine-tuning a Hugging Face model (qwen2_moe: a dense layer, then an MoE layer with a gated shared
// expert): its weights become fp32 master weights, its tokenizer encodes the data, the loss goes
// down, every routed tensor (the router included) moves, and the checkpoint generates with the
// tokenizer it carries.
TEST_F(CliHf, TrainInitFineTunesAHuggingFaceModel) {
    const std::string d = model_dir("m", "qwen2_moe", "moe_export/byte.tokenizer.json");
    std::string text;
    for (int i = 0; i < 8; ++i) text += corpus();
    write_file(path("text.txt"), text);
    write_config("ft.json", json{{"train",
                                  {{"data", "text.txt"}, {"batch_size", 4}, {"block_size", 32}, {"steps", 40},
                                   {"lr", 3e-3}, {"warmup_steps", 2}, {"eval_interval", 20}, {"eval_batches", 2},
                                   {"log_interval", 1}, {"seed", 3}}},
                                 {"router", {{"balance_loss", 0.01}}}});
    RunResult r = moe("train --init m --config ft.json --out ft --threads 1 --no-sample --log log.jsonl");
    ASSERT_EQ(r.code(), 0) << r.describe();
    EXPECT_NE(r.out.find("fine-tuning m"), std::string::npos) << r.out;
    const Log log = parse_log(read_file(path("log.jsonl")));
    EXPECT_TRUE(log.problems.empty()) << log.problems.front();
    ASSERT_GE(log.steps.size(), 40u);
    const double first = log.steps.begin()->second["loss"].get<double>();
    const double last = log.steps.rbegin()->second["loss"].get<double>();
    EXPECT_LT(last, 0.8 * first) << first << " -> " << last;

    moe::Checkpoint hf = moe::load_model(d, "fp32"), ft = moe::load_model(path("ft"), "fp32");
    EXPECT_EQ(moe::config_to_json(ft.config)["model"], moe::config_to_json(hf.config)["model"]);
    ASSERT_EQ(ft.tokenizer.kind(), moe::Tokenizer::Kind::hf);
    int moved = 0, routers = 0;
    for (const auto& p : hf.model->table().params()) {
        if (!p.trainable) continue;
        const auto& q = *std::find_if(ft.model->table().params().begin(), ft.model->table().params().end(),
                                      [&](const auto& x) { return x.name == p.name; });
        const float *a = hf.model->param_f32(p), *b = ft.model->param_f32(q);
        ASSERT_TRUE(a && b) << p.name;
        bool diff = false;
        for (int64_t i = 0; i < p.numel && !diff; ++i) diff = a[i] != b[i];
        moved += diff;
        if (p.name.find("ffn_gate_inp") != std::string::npos) {
            ++routers;
            EXPECT_TRUE(diff) << p.name << " did not learn";
        }
    }
    EXPECT_GE(routers, 2);  // the router and the shared expert's gate
    EXPECT_GT(moved, 10);
    RunResult g = moe("generate --model ft --prompt 'the quick' --max-tokens 8 --temperature 0");
    ASSERT_EQ(g.code(), 0) << g.describe();

    // bad combinations, each one clear line
    write_config("with_model.json", tiny_config());
    expect_clean_error(moe("train --init m --config with_model.json --out x"), {"with_model.json", "'model'", "--init"});
    write_config("bad_router.json", json{{"train", {{"data", "text.txt"}}}, {"router", {{"norm_topk", false}}}});
    expect_clean_error(moe("train --init m --config bad_router.json --out x"), {"router.norm_topk", "--init"});
    expect_clean_error(moe("train --init m --resume ft --config ft.json --out x"), {"--init", "--resume"});
    expect_clean_error(moe("train --init m --out x"), {"no training data"});
    model_dir("bare", "qwen2_moe", "");
    expect_clean_error(moe("train --init bare --config ft.json --out x"), {"bare", "tokenizer.json"});
    write_config("long.json", json{{"train", {{"data", "text.txt"}, {"block_size", 100000}}}});
    expect_clean_error(moe("train --init m --config long.json --out x"), {"block_size", "100000"});
}

}  // namespace

namespace {

// moe export --format gguf: the F32 file computes the Hugging Face model's logits bit for bit
// (mixtral as llama.cpp's `llama` architecture, its Q / K rows permuted and restored at load; qwen3_moe);
// F16 within its rounding.
TEST_F(CliHf, ExportGgufGivesTheSameLogits) {
    const std::string toks = "1,5,9,200,3,77,42,8";
    for (const std::string fam : {"mixtral", "qwen3_moe"}) {
        const std::string m = q(kData + "hf/" + fam);
        ASSERT_EQ(moe("logits --model " + m + " --tokens " + toks + " --out hf.bin").code(), 0);
        RunResult e = moe("export --model " + m + " --format gguf --type f32 --out " + fam + ".gguf");
        ASSERT_EQ(e.code(), 0) << e.describe();
        RunResult l = moe("logits --model " + fam + ".gguf --tokens " + toks + " --out g.bin");
        ASSERT_EQ(l.code(), 0) << l.describe();
        EXPECT_EQ(read_file(path("hf.bin")), read_file(path("g.bin"))) << fam;
        ASSERT_EQ(moe("export --model " + m + " --format gguf --type f16 --out " + fam + "16.gguf").code(), 0);
        ASSERT_EQ(moe("logits --model " + fam + "16.gguf --tokens " + toks + " --out h.bin").code(), 0);
        const std::string a = read_file(path("hf.bin")), b = read_file(path("h.bin"));
        ASSERT_EQ(a.size(), b.size());
        const float* x = reinterpret_cast<const float*>(a.data());
        const float* y = reinterpret_cast<const float*>(b.data());
        double d = 0, mx = 0;
        for (size_t i = 0; i < a.size() / 4; ++i) d = std::max(d, (double)std::fabs(x[i] - y[i])), mx = std::max(mx, (double)std::fabs(x[i]));
        EXPECT_LT(d / mx, 2e-2) << fam;
    }
    expect_clean_error(moe("export --model mixtral.gguf --format gguf --out mixtral.gguf"), {"mixtral.gguf", "--force"});
}

// Block types from the command line: q8_0 logits close to the fp32 ones (bound as in test_gguf:
// 5% relative RMS), q4_k on rows of 32 / 64 falls back to Q8_0 with a warning, and bench decodes
// the quantized file.
TEST_F(CliHf, ExportQuantizedGguf) {
    const std::string toks = "1,5,9,200,3,77,42,8";
    const std::string m = q(kData + "hf/mixtral");
    ASSERT_EQ(moe("logits --model " + m + " --tokens " + toks + " --out hf.bin").code(), 0);
    RunResult e = moe("export --model " + m + " --format gguf --type q8_0 --out q8.gguf");
    ASSERT_EQ(e.code(), 0) << e.describe();
    RunResult l = moe("logits --model q8.gguf --tokens " + toks + " --out q.bin");
    ASSERT_EQ(l.code(), 0) << l.describe();
    const std::string a = read_file(path("hf.bin")), b = read_file(path("q.bin"));
    ASSERT_EQ(a.size(), b.size());
    const float* x = reinterpret_cast<const float*>(a.data());
    const float* y = reinterpret_cast<const float*>(b.data());
    double d2 = 0, x2 = 0;
    for (size_t i = 0; i < a.size() / 4; ++i) d2 += (double)(x[i] - y[i]) * (x[i] - y[i]), x2 += (double)x[i] * x[i];
    EXPECT_LT(std::sqrt(d2 / x2), 0.05);
    RunResult k = moe("export --model " + m + " --format gguf --type q4_k --out q4k.gguf");
    ASSERT_EQ(k.code(), 0) << k.describe();
    EXPECT_NE(k.err.find("warning"), std::string::npos) << k.err;
    EXPECT_NE(k.err.find("as Q8_0"), std::string::npos) << k.err;
    RunResult bj = moe("bench --model q8.gguf --mode decode --threads 1 --json");
    ASSERT_EQ(bj.code(), 0) << bj.describe();
    EXPECT_NE(bj.out.find("\"tokens_per_sec\""), std::string::npos) << bj.out;
    EXPECT_NE(bj.out.find("\"dtype\":\"q8_0\""), std::string::npos) << bj.out;
}

}  // namespace
