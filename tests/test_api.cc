// The public API (include/moe/moe.h, moe/viz.h) as a program that embeds moe sees it: this file
// includes no header of src/. One error class for the engine and the tool, the JSON of `params`
// and `bench` (keys in their order, the values as the CLI always printed them), and a model
// trained, loaded and continued with stop strings through the API alone.
#include <gtest/gtest.h>

#include <cmath>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <string>
#include <string_view>
#include <vector>

#include <moe/moe.h>
#include <moe/viz.h>

#include "kernels/ggml_quants.h"
#include <nlohmann/json.hpp>

namespace fs = std::filesystem;
using ojson = nlohmann::ordered_json;

namespace {

std::vector<std::string> keys(const ojson& j) {
    std::vector<std::string> k;
    for (auto it = j.begin(); it != j.end(); ++it) k.push_back(it.key());
    return k;
}

std::string source(const std::string& rel) { return std::string(MOE_TEST_DIR) + "/../" + rel; }

}  // namespace

TEST(Api, ErrorsAreMoeErrorsNamingTheOption) {
    moe::SampleOptions o;
    o.max_tokens = 0;
    try {
        moe::check_sample_options(o, "--");
        FAIL() << "no error";
    } catch (const moe::error& e) {
        EXPECT_EQ(std::string(e.what()), "--max-tokens must be >= 1, got 0");
    }
    EXPECT_THROW(moe::set_threads(-1), moe::error);
    EXPECT_THROW(moe::param_report("/nonexistent/config.json"), moe::error);
    EXPECT_THROW(moe::LoadedModel("/nonexistent/checkpoint"), moe::error);
    EXPECT_THROW(moe::bench("", "", "", {}), moe::error);  // neither a config nor a checkpoint
}

TEST(Api, ApplyEnvironmentRejectsABadSwitch) {
    EXPECT_NO_THROW(moe::apply_environment());
    ::setenv("MOE_FUSED_EXPERT_ADAMW", "yes", 1);
    EXPECT_THROW(moe::apply_environment(), moe::error);
    ::unsetenv("MOE_FUSED_EXPERT_ADAMW");
    EXPECT_NO_THROW(moe::apply_environment());
    ::setenv("MOE_REPACK", "off", 1);  // 0 or 1 only, named in the error
    try {
        moe::apply_environment();
        ADD_FAILURE() << "MOE_REPACK=off accepted";
    } catch (const moe::error& e) {
        EXPECT_NE(std::string(e.what()).find("MOE_REPACK"), std::string::npos) << e.what();
    }
    ::setenv("MOE_REPACK", "0", 1);
    EXPECT_NO_THROW(moe::apply_environment());
    EXPECT_FALSE(moe::kernels::repack_enabled());
    ::unsetenv("MOE_REPACK");
    EXPECT_NO_THROW(moe::apply_environment());
    EXPECT_TRUE(moe::kernels::repack_enabled());  // the default
}

TEST(Api, ParamsJsonKeysAndValues) {
    const moe::ParamReport r = moe::param_report(source("configs/mixtral-8x7b.json"));
    EXPECT_EQ(r.total, 46702792704);
    EXPECT_EQ(r.active, 12879925248);
    const ojson j = ojson::parse(moe::to_json(r));
    EXPECT_EQ(keys(j), (std::vector<std::string>{"total", "active", "seq_len", "forward_flops_per_token",
                                                 "training_flops_per_token", "fp32_bytes_total",
                                                 "fp32_bytes_per_token", "bf16_bytes_total", "bf16_bytes_per_token",
                                                 "int8_bytes_total", "int8_bytes_per_token", "f16_bytes_total",
                                                 "f16_bytes_per_token", "q8_0_bytes_total", "q8_0_bytes_per_token",
                                                 "q6_k_bytes_total", "q6_k_bytes_per_token", "q5_k_bytes_total",
                                                 "q5_k_bytes_per_token", "q4_k_bytes_total", "q4_k_bytes_per_token",
                                                 "q4_0_bytes_total", "q4_0_bytes_per_token"}));
    EXPECT_EQ(j["total"].get<int64_t>(), 46702792704);
    EXPECT_EQ(j["active"].get<int64_t>(), 12879925248);
    // printed with %.0f / as integers before: integers still
    for (const auto& [k, v] : j.items()) EXPECT_TRUE(v.is_number_integer()) << k;
    EXPECT_EQ(j["forward_flops_per_token"].get<int64_t>(), (int64_t)std::llround(r.forward_flops_per_token));
}

TEST(Api, BenchJsonKeysAndRoundedValues) {
    moe::BenchOptions o;
    o.mode = "prefill";
    o.prompt = 8;
    o.repeats = 1;
    moe::set_threads(1);
    const moe::BenchReport r = moe::bench(source("tests/ref/configs/tiny-moe.json"), "", "", o);
    EXPECT_EQ(r.dtype, "fp32");
    EXPECT_EQ(r.threads, 1);
    const std::string text = moe::to_json(r);
    EXPECT_EQ(text.find('\n'), std::string::npos);
    const ojson j = ojson::parse(text);
    EXPECT_EQ(keys(j), (std::vector<std::string>{"model", "mode", "dtype", "cache_type", "threads", "batch", "total_params",
                                                 "active_params", "tokens", "seconds", "tokens_per_sec",
                                                 "weight_bytes_per_token", "weight_gbytes_per_sec", "read_probe_gbytes_per_sec", "gflops",
                                                 "parallel_regions_per_step", "peak_rss_mb", "weights_mb", "kv_mb",
                                                 "expert_parallel", "expert_bytes_total", "expert_bytes_rank",
                                                 "peak_rss_mb_rank"}));
    EXPECT_EQ(j["expert_parallel"], 1);  // one process: one rank holding every expert
    ASSERT_EQ(j["expert_bytes_rank"].size(), 1u);
    EXPECT_EQ(j["expert_bytes_rank"][0].get<double>(), j["expert_bytes_total"].get<double>());
    EXPECT_GT(j["expert_bytes_total"].get<double>(), 0);
    EXPECT_EQ(j["mode"], "prefill");
    EXPECT_EQ(j["tokens"].get<int64_t>(), r.result.tokens);
    EXPECT_TRUE(j["weight_bytes_per_token"].is_number_integer());  // %.0f before
    // seconds kept 6 decimals (%.6f), tokens_per_sec 3 (%.3f)
    EXPECT_NEAR(j["seconds"].get<double>(), r.result.seconds, 5e-7);
    EXPECT_DOUBLE_EQ(j["seconds"].get<double>() * 1e6, std::round(j["seconds"].get<double>() * 1e6));
    EXPECT_NEAR(j["tokens_per_sec"].get<double>(), r.result.tokens_per_sec, 5e-4);
    // memory: the weights and the KV cache of this model, and a peak RSS that holds at least them
    // (a tiny model: its sizes round to 0.0 MB in the JSON; the result keeps them unrounded)
    EXPECT_GT(r.result.weights_mb, 0);
    EXPECT_GT(r.result.kv_mb, 0);
    EXPECT_GE(r.result.peak_rss_mb, r.result.weights_mb + r.result.kv_mb);
    EXPECT_NEAR(j["peak_rss_mb"].get<double>(), r.result.peak_rss_mb, 0.05 + 1e-9);
}

// Train a tiny model, load it, generate greedily; then the same with a stop string taken from that
// output: the text ends right before it, and what the callback saw is the returned text.
TEST(Api, TrainLoadGenerateWithStopStrings) {
    char tmpl[] = "/tmp/moe_api_test_XXXXXX";
    ASSERT_NE(::mkdtemp(tmpl), nullptr);
    const std::string dir = tmpl;
    {
        std::ofstream data(dir + "/data.txt");
        for (int i = 0; i < 30; ++i) data << "the quick brown fox jumps over the lazy dog.\n";
        nlohmann::json cfg = {
            {"model",
             {{"n_layer", 1}, {"n_embd", 16}, {"n_head", 2}, {"n_ctx", 16}, {"ffn", "moe"}, {"n_expert", 4},
              {"n_expert_used", 2}, {"n_ff_exp", 32}}},
            {"train",
             {{"data", dir + "/data.txt"}, {"batch_size", 2}, {"block_size", 16}, {"steps", 4}, {"lr", 1e-2},
              {"eval_interval", 4}, {"eval_batches", 1}, {"log_interval", 1}, {"seed", 1}}}};
        std::ofstream(dir + "/tiny.json") << cfg.dump(2);
    }
    moe::TrainOptions t;
    t.out_dir = dir + "/ck";
    t.threads = 1;
    t.summary = false;
    const moe::TrainResult tr = moe::train(dir + "/tiny.json", t);
    EXPECT_EQ(tr.steps_done, 4);

    moe::LoadedModel m(dir + "/ck");
    EXPECT_EQ(m.context_length(), 16);
    EXPECT_EQ(m.stored_weight_type(), "fp32");
    EXPECT_THROW(m.encode_prompt("the Zebra"), moe::error);       // 'Z' is not in the vocabulary
    EXPECT_THROW(m.encode_prompt(std::string(17, 'a')), moe::error);  // longer than n_ctx
    const std::vector<int32_t> ids = m.encode_prompt("the");
    moe::SampleOptions so;
    so.max_tokens = 30;
    so.temperature = 0;
    const moe::GenerateResult full = moe::generate_text(m, ids, so);
    ASSERT_EQ(full.text.size(), 30u);  // char tokenizer: one character a token
    EXPECT_FALSE(full.stopped);

    const std::string piece = full.text.substr(10, 2);
    std::string seen;
    const moe::GenerateResult cut =
        moe::generate_text(m, ids, so, {piece}, [&](std::string_view s) { seen += s; });
    EXPECT_EQ(cut.text, full.text.substr(0, full.text.find(piece)));
    EXPECT_TRUE(cut.stopped);
    EXPECT_EQ(seen, cut.text);

    moe::viz::RoutingMapOptions ro;
    moe::viz::write_routing_map(m, "the fox", dir + "/routing.png", ro);
    EXPECT_GT(fs::file_size(dir + "/routing.png"), 0u);
    fs::remove_all(dir);
}
