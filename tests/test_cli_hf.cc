// The CLI over Hugging Face model directories (issue #20's interface): `moe logits`, `moe tokenize`,
// `moe generate --model` and `moe chat`, run as the real binary. The numbers are checked against the
// transformers references of tests/data/hf (logits) and against the tokenizer library, itself
// checked id for id against Python `tokenizers` in test_hf_tokenizer.cc.
#include <gtest/gtest.h>

#include <cmath>
#include <filesystem>
#include <string>
#include <vector>

#include "cli_util.h"
#include "io/safetensors.h"
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
