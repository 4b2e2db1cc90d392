// The `moe` command line on bad input: every case must end with exit status 1 and exactly one
// stderr line "moe: error: ..." that names the offending file / field / value; never a crash, an
// abort or a stack of messages. Plus the happy paths of the interface (train log, generate,
// params) and the failed-save guarantee seen from the command line.
#include <sys/stat.h>

#include <fstream>

#include "cli_util.h"

using namespace moe_test;

namespace {

class Cli : public CliTest {
protected:
    // tiny.json with one field replaced (section "model" or "train", or "" for the top level)
    std::string config_with(const std::string& section, const std::string& key, const json& value,
                            const std::string& name = "edited.json") {
        json j = tiny_config();
        if (section.empty()) j[key] = value;
        else j[section][key] = value;
        return write_config(name, j);
    }
    RunResult train(const std::string& config, const std::string& extra = "") {
        return moe("train --config " + q(config) + " --out out --threads 1 --no-sample " + extra);
    }
    std::string ckpt_file(const std::string& d) { return path(d + "/checkpoint.bin"); }
};

// --- config files ---

// `moe train` runs itself again with GOMP_SPINCOUNT=3000 when the user set neither it nor
// OMP_WAIT_POLICY (libgomp reads them before main; tools/moe.cc), and leaves a user's choice alone.
// libgomp's OMP_DISPLAY_ENV=verbose prints the spin count each process started with.
TEST_F(Cli, TrainBoundsTheThreadPoolSpinUnlessTheUserChose) {
    auto run = [&](const std::string& env, const std::string& out) {
        const std::string cmd = "cd " + q(dir) + " && env -u OMP_WAIT_POLICY -u GOMP_SPINCOUNT " + env +
                                " OMP_DISPLAY_ENV=verbose " + q(MOE_BINARY) + " train --config tiny.json --steps 2 " +
                                "--threads 2 --no-sample --out " + out + " >" + q(path(".out")) + " 2>&1";
        const int rc = std::system(cmd.c_str());
        EXPECT_EQ(rc, 0) << read_file(path(".out"));
        return read_file(path(".out"));
    };
    const std::string spin = run("GOMP_SPINCOUNT=77", "c");
    if (spin.find("GOMP_SPINCOUNT = '77'") == std::string::npos)
        GTEST_SKIP() << "the OpenMP runtime is not libgomp (no GOMP_SPINCOUNT in OMP_DISPLAY_ENV)";
    EXPECT_EQ(spin.find("GOMP_SPINCOUNT = '3000'"), std::string::npos) << spin;
    const std::string unset = run("", "a");
    EXPECT_NE(unset.find("GOMP_SPINCOUNT = '3000'"), std::string::npos) << unset;
    EXPECT_NE(unset.find("step"), std::string::npos) << unset;
    const std::string active = run("OMP_WAIT_POLICY=active", "b");
    EXPECT_EQ(active.find("GOMP_SPINCOUNT = '3000'"), std::string::npos) << active;
    EXPECT_EQ(read_file(path("a/checkpoint.bin")), read_file(path("b/checkpoint.bin")));
}

TEST_F(Cli, MalformedJson) {
    const std::string cfg = path("bad.json");
    write_file(cfg, "{\"model\": {\"n_layer\": 1,, }");
    expect_clean_error(train(cfg), {cfg, "not valid JSON"});
    expect_clean_error(moe("params --config " + q(cfg)), {cfg, "not valid JSON"});
    write_file(cfg, "");
    expect_clean_error(train(cfg), {cfg, "not valid JSON"});
}

TEST_F(Cli, MissingConfigFile) {
    const std::string cfg = path("no_such_config.json");
    expect_clean_error(train(cfg), {cfg, "cannot be opened"});
    expect_clean_error(moe("params --config " + q(cfg)), {cfg, "cannot be opened"});
}

TEST_F(Cli, UnknownConfigField) {
    std::string cfg = config_with("model", "n_embed", 16);  // a typo of n_embd
    expect_clean_error(train(cfg), {cfg, "unknown field 'model.n_embed'"});
    expect_clean_error(moe("params --config " + q(cfg)), {cfg, "'model.n_embed'"});
}

TEST_F(Cli, UnknownConfigFieldNestedInTrain) {
    std::string cfg = config_with("train", "learning_rate", 0.01);
    expect_clean_error(train(cfg), {cfg, "unknown field 'train.learning_rate'"});
}

TEST_F(Cli, UnknownTopLevelSection) {
    std::string cfg = config_with("", "optimizer", json{{"lr", 1}});
    expect_clean_error(train(cfg), {cfg, "unknown field 'optimizer'"});
}

TEST_F(Cli, MissingRequiredField) {
    json j = tiny_config();
    j["model"].erase("n_embd");
    std::string cfg = write_config("missing.json", j);
    expect_clean_error(train(cfg), {cfg, "'model.n_embd'"});
}

TEST_F(Cli, NEmbdNotDivisibleByNHead) {
    std::string cfg = config_with("model", "n_head", 3);
    expect_clean_error(train(cfg), {cfg, "n_embd", "n_head", "(16)", "(3)"});
    expect_clean_error(moe("params --config " + q(cfg)), {cfg, "n_head", "(3)"});
}

TEST_F(Cli, TopKGreaterThanNumberOfExperts) {
    std::string cfg = config_with("model", "n_expert_used", 5);
    expect_clean_error(train(cfg), {cfg, "n_expert_used", "K = 5", "n_expert", "E = 4"});
    expect_clean_error(moe("params --config " + q(cfg)), {cfg, "K = 5", "E = 4"});
}

TEST_F(Cli, WrongTypes) {
    struct Case {
        std::string section, key;
        json value;
        std::vector<std::string> needles;
    };
    const std::vector<Case> cases = {
        {"model", "n_embd", "16", {"'model.n_embd'", "integer", "\"16\""}},
        {"model", "n_layer", 1.5, {"'model.n_layer'", "integer", "1.5"}},
        {"model", "tie_embeddings", 1, {"'model.tie_embeddings'", "true or false"}},
        {"model", "activation", "gelu", {"'model.activation'", "gelu"}},
        {"model", "ffn", json::array({"moe", "moe"}), {"'model.ffn'", "2 entries", "n_layer is 1"}},
        {"train", "lr", "fast", {"'train.lr'", "number", "\"fast\""}},
        {"train", "steps", json::array({10}), {"'train.steps'", "[10]"}},
        {"train", "data", 7, {"'train.data'", "string"}},
        {"train", "batch_size", 0, {"'train.batch_size'", ">= 1", "0"}},
        {"train", "seed", -3, {"'train.seed'", "-3"}},
        {"train", "block_size", 32, {"'train.block_size'", "32"}},
        {"", "model", json::array({1}), {"'model'", "object"}},
        {"", "train", "fast", {"'train'", "object"}},
    };
    for (const auto& c : cases) {
        SCOPED_TRACE(c.section + "." + c.key + " = " + c.value.dump());
        std::string cfg = config_with(c.section, c.key, c.value);
        std::vector<std::string> needles = c.needles;
        needles.push_back(cfg);
        expect_clean_error(train(cfg), needles);
    }
}

// Sizes whose arithmetic would overflow (once a segfault in `moe train` and negative counts in
// `moe params`) are rejected while reading the config.
TEST_F(Cli, AbsurdSizes) {
    std::string cfg = config_with("model", "n_embd", (int64_t)1 << 62);
    expect_clean_error(train(cfg), {cfg, "'model.n_embd'", "4611686018427387904", "too large"});
    expect_clean_error(moe("params --config " + q(cfg)), {cfg, "'model.n_embd'", "too large"});
    cfg = config_with("model", "n_layer", 1000000000);
    expect_clean_error(train(cfg), {cfg, "'model.n_layer'", "too large"});
    json j = tiny_config();
    j["model"]["n_embd"] = 1 << 20;
    j["model"]["n_ff_exp"] = 1 << 20;
    j["model"]["n_expert"] = 4096;
    cfg = write_config("big.json", j);
    expect_clean_error(train(cfg), {cfg, "parameters"});
    cfg = config_with("train", "batch_size", (int64_t)1 << 40);
    expect_clean_error(train(cfg), {cfg, "'train.batch_size'", "1099511627776"});
}

// --- data ---

TEST_F(Cli, MissingDataFile) {
    const std::string data = path("no_such_data.txt");
    std::string cfg = config_with("train", "data", data);
    expect_clean_error(train(cfg), {data, "cannot be opened"});
    // the same through --data
    expect_clean_error(train(path("tiny.json"), "--data " + q(data)), {data, "cannot be opened"});
    // and a config without any data
    json j = tiny_config();
    j["train"].erase("data");
    cfg = write_config("nodata.json", j);
    expect_clean_error(train(cfg), {cfg, "--data"});
}

TEST_F(Cli, DataTooShortOrEmpty) {
    const std::string data = path("short.txt");
    write_file(data, "tiny text");
    expect_clean_error(train(path("tiny.json"), "--data " + q(data)), {data, "too few", "block size 16"});
    write_file(data, "");
    expect_clean_error(train(path("tiny.json"), "--data " + q(data)), {data, "empty"});
}

// Paths that the filesystem itself refuses (a name longer than NAME_MAX) or that name a directory
// where a file is expected: an error line, not an uncaught std::filesystem exception.
TEST_F(Cli, PathsThatAreDirectoriesOrTooLong) {
    const std::string longname = path(std::string(5000, 'a'));
    expect_clean_error(train(longname), {"config file", "too long"});
    expect_clean_error(train(path("tiny.json"), "--data " + q(longname)), {"data file", "too long"});
    expect_clean_error(moe("train --config tiny.json --threads 1 --no-sample --out " + q(longname)), {"too long"});
    expect_clean_error(moe("train --resume " + q(longname) + " --threads 1"), {"checkpoint directory"});
    expect_clean_error(moe("generate --checkpoint " + q(longname) + " --prompt the --max-tokens 3"),
                       {"checkpoint directory"});
    fs::create_directories(path("adir"));
    expect_clean_error(train(path("adir")), {path("adir"), "is a directory"});
    expect_clean_error(train(path("tiny.json"), "--data " + q(path("adir"))), {path("adir"), "is a directory"});
    fs::create_directories(path("ck/checkpoint.bin"));
    expect_clean_error(moe("generate --checkpoint ck --prompt the --max-tokens 3"), {"ck/checkpoint.bin", "directory"});
}

// --- output paths (we may run as root, so permission bits prove nothing: use paths that
// cannot be directories) ---

TEST_F(Cli, UnwritableOutputDir) {
    write_file(path("file"), "a regular file\n");
    expect_clean_error(moe("train --config tiny.json --threads 1 --no-sample --out " + q(path("file/sub"))),
                       {path("file/sub")});
    expect_clean_error(moe("train --config tiny.json --threads 1 --no-sample --out " + q(path("file"))),
                       {path("file"), "not a directory"});
    expect_clean_error(moe("train --config tiny.json --threads 1 --no-sample --out /proc/moe_cli_test/out"),
                       {"/proc/moe_cli_test/out"});
    EXPECT_EQ(read_file(path("file")), "a regular file\n");
}

TEST_F(Cli, UnwritableLogFile) {
    write_file(path("file"), "x");
    expect_clean_error(train(path("tiny.json"), "--log " + q(path("file/log.jsonl"))), {path("file/log.jsonl")});
}

// --- checkpoints ---

TEST_F(Cli, TruncatedCheckpoint) {
    train_ok("ck");
    const std::string f = ckpt_file("ck"), named = "'ck/checkpoint.bin'";
    std::string bytes = read_file(f);
    for (size_t keep : {bytes.size() / 2, bytes.size() - 1, (size_t)10, (size_t)0}) {
        SCOPED_TRACE("kept " + std::to_string(keep) + " of " + std::to_string(bytes.size()) + " bytes");
        write_file(f, bytes.substr(0, keep));
        expect_clean_error(moe("generate --checkpoint ck --prompt the --max-tokens 3"), {named});
        expect_clean_error(moe("train --config tiny.json --resume ck --out out2 --threads 1 --no-sample"), {named});
    }
    write_file(f, bytes.substr(0, bytes.size() / 2));
    expect_clean_error(moe("generate --checkpoint ck --prompt the --max-tokens 3"), {named, "truncated"});
}

TEST_F(Cli, CorruptedCheckpoint) {
    train_ok("ck");
    const std::string f = ckpt_file("ck"), named = "'ck/checkpoint.bin'";
    const std::string good = read_file(f);
    for (size_t pos : {good.size() / 2, (size_t)20, (size_t)0, good.size() - 8}) {
        SCOPED_TRACE("flipped byte " + std::to_string(pos));
        std::string bad = good;
        bad[pos] ^= 0x10;
        write_file(f, bad);
        expect_clean_error(moe("generate --checkpoint ck --prompt the --max-tokens 3"), {named});
        expect_clean_error(moe("train --resume ck --out out2 --threads 1 --no-sample"), {named});
    }
    std::string bad = good;
    bad[good.size() / 2] ^= 0x01;
    write_file(f, bad);
    expect_clean_error(moe("generate --checkpoint ck --prompt the --max-tokens 3"), {named, "corrupted"});
    // not a tensor file at all
    write_file(f, "{\"this is\": \"json\"}\n");
    expect_clean_error(moe("generate --checkpoint ck --prompt the --max-tokens 3"), {named, "not a moe tensor file"});
}

TEST_F(Cli, ResumeFromDirectoryWithoutCheckpoint) {
    fs::create_directories(path("empty"));
    expect_clean_error(moe("train --config tiny.json --resume empty --out out --threads 1 --no-sample"),
                       {"empty", "checkpoint.bin"});
    expect_clean_error(moe("train --resume " + q(path("nowhere")) + " --out out --threads 1 --no-sample"),
                       {path("nowhere"), "does not exist"});
    expect_clean_error(moe("generate --checkpoint " + q(path("nowhere")) + " --prompt the --max-tokens 3"),
                       {path("nowhere"), "does not exist"});
}

// Resuming without --out keeps writing into the resumed directory (not runs/default).
TEST_F(Cli, ResumeWithoutOutWritesToTheResumedDirectory) {
    train_ok("ck");
    const std::string before = read_file(ckpt_file("ck"));
    RunResult r = moe("train --resume ck --steps 12 --threads 1 --no-sample");
    ASSERT_EQ(r.code(), 0) << r.describe();
    EXPECT_NE(read_file(ckpt_file("ck")), before) << "the resumed run did not save into ck";
    EXPECT_FALSE(fs::exists(path("runs/default"))) << "the resumed run saved into runs/default";
}

TEST_F(Cli, ResumeWithADifferentArchitecture) {
    train_ok("ck");
    json j = tiny_config();
    j["model"]["n_ctx"] = 32;
    j["train"]["block_size"] = 32;
    std::string cfg = write_config("bigger.json", j);
    expect_clean_error(moe("train --config " + q(cfg) + " --resume ck --out out --threads 1 --no-sample"),
                       {cfg, "'model.n_ctx'", "32", "16", ckpt_file("ck").substr(dir.size() + 1)});
}

// A failed save (here: the file-size limit hits in the middle of writing the new checkpoint) is
// an error line and exit 1, and the previous checkpoint stays byte-for-byte as it was.
TEST_F(Cli, FailedSaveKeepsPreviousCheckpoint) {
    train_ok("ck");
    const std::string before = read_file(ckpt_file("ck"));
    ASSERT_GT(before.size(), 64u * 1024u);
    // 40 blocks are at most 40 KiB (bash counts 1024-byte blocks, dash 512)
    RunResult r = moe("train --config tiny.json --resume ck --out ck --steps 9 --threads 1 --no-sample",
                      "ulimit -f 40 && ");
    expect_clean_error(r, {ckpt_file("ck").substr(dir.size() + 1), "File too large"});
    EXPECT_EQ(read_file(ckpt_file("ck")), before);
    for (const auto& e : fs::directory_iterator(path("ck")))
        EXPECT_TRUE(e.path().filename() == "checkpoint.bin" || e.path().filename() == "config.json")
            << "left behind: " << e.path();
    RunResult g = moe("generate --checkpoint ck --prompt the --max-tokens 3 --temperature 0");
    EXPECT_EQ(g.code(), 0) << g.describe();
}

// --- generate ---

TEST_F(Cli, PromptOutsideVocabulary) {
    train_ok("ck");
    expect_clean_error(moe("generate --checkpoint ck --prompt " + q("the Zebra") + " --max-tokens 3"),
                       {"prompt", "'Z'", "U+005A", "position 4", "vocabulary"});
    expect_clean_error(moe("generate --checkpoint ck --prompt " + q("caf\xc3\xa9") + " --max-tokens 3"),
                       {"prompt", "U+00E9", "position 3"});
    expect_clean_error(moe("generate --checkpoint ck --prompt " + q("ab\xff") + " --max-tokens 3"),
                       {"prompt", "UTF-8", "0xff"});
    expect_clean_error(moe("generate --checkpoint ck --prompt " + q(std::string(17, 'a')) + " --max-tokens 3"),
                       {"17 tokens", "16"});
    expect_clean_error(moe("generate --checkpoint ck --prompt '' --max-tokens 3"), {"--prompt", "empty"});
}

TEST_F(Cli, GenerateBadOptions) {
    train_ok("ck");
    expect_clean_error(moe("generate --checkpoint ck --prompt the --max-tokens 0"), {"--max-tokens", "0"});
    expect_clean_error(moe("generate --checkpoint ck --prompt the --max-tokens -4"), {"--max-tokens", "-4"});
    expect_clean_error(moe("generate --checkpoint ck --prompt the --max-tokens abc"), {"--max-tokens", "abc"});
    expect_clean_error(moe("generate --checkpoint ck --prompt the --max-tokens 3 --temperature -0.5"),
                       {"--temperature", "-0.5"});
    expect_clean_error(moe("generate --checkpoint ck --prompt the --max-tokens 3 --temperature nan"),
                       {"--temperature", "nan"});
    expect_clean_error(moe("generate --checkpoint ck --prompt the --max-tokens 3 --temperature inf"),
                       {"--temperature", "inf"});
    expect_clean_error(moe("generate --checkpoint ck --prompt the --max-tokens 3 --seed -1"), {"--seed", "-1"});
    expect_clean_error(moe("generate --checkpoint ck --prompt the --top-k -2"), {"--top-k", "-2"});
    expect_clean_error(moe("generate --checkpoint ck --prompt the --top-p 0"), {"--top-p", "0"});
    expect_clean_error(moe("generate --checkpoint ck --prompt the --top-p 1.5"), {"--top-p", "1.5"});
    expect_clean_error(moe("generate --checkpoint ck --prompt the --repetition-penalty 0"), {"--repetition-penalty", "0"});
    expect_clean_error(moe("generate --checkpoint ck --prompt the --stop ''"), {"--stop", "empty"});
    expect_clean_error(moe("generate --checkpoint ck --max-tokens 3"), {"--prompt"});
    expect_clean_error(moe("generate --prompt the --max-tokens 3"), {"--model"});
}

// Greedy generation is deterministic; a stop string cuts the output before it; the KV-cache path
// runs past the context (16 tokens here) by refilling the cache.
TEST_F(Cli, GenerateStopStringsAndLongOutputs) {
    train_ok("ck");
    RunResult g = moe("generate --checkpoint ck --prompt the --max-tokens 40 --temperature 0");
    ASSERT_EQ(g.code(), 0) << g.describe();
    const std::string full = g.out.substr(0, g.out.size() - 1);  // without the final newline
    ASSERT_EQ(full.size(), 3u + 40u) << g.out;                     // char tokenizer: 1 char a token
    RunResult g2 = moe("generate --checkpoint ck --prompt the --max-tokens 40 --temperature 0");
    EXPECT_EQ(g2.out, g.out);
    // stop at the first occurrence of a 2-char piece of the greedy continuation
    const std::string piece = full.substr(10, 2);
    RunResult s = moe("generate --checkpoint ck --prompt the --max-tokens 40 --temperature 0 --stop " + q(piece));
    ASSERT_EQ(s.code(), 0) << s.describe();
    const size_t at = full.find(piece, 3);
    EXPECT_EQ(s.out, full.substr(0, at) + "\n") << "piece '" << piece << "'";
    // sampling options run
    RunResult t = moe("generate --checkpoint ck --prompt the --max-tokens 20 --temperature 0.9 --top-k 5 --top-p 0.9 "
                      "--repetition-penalty 1.3 --seed 4");
    EXPECT_EQ(t.code(), 0) << t.describe();
}

// moe quantize: a smaller inference checkpoint whose greedy output equals the fp32 checkpoint's
// run with the same weight type (quantizing is deterministic, and re-quantizing its dequantized
// weights is exact); bad requests are clean errors.
TEST_F(Cli, QuantizeBf16AndInt8) {
    train_ok("ck");
    for (const std::string t : {"bf16", "int8"}) {
        RunResult q = moe("quantize --checkpoint ck --dtype " + t + " --out q_" + t);
        ASSERT_EQ(q.code(), 0) << q.describe();
        EXPECT_LT(fs::file_size(path("q_" + t + "/checkpoint.bin")), fs::file_size(path("ck/checkpoint.bin")));
        RunResult a = moe("generate --checkpoint q_" + t + " --prompt the --max-tokens 12 --temperature 0");
        RunResult b = moe("generate --checkpoint ck --prompt the --max-tokens 12 --temperature 0 --dtype " + t);
        ASSERT_EQ(a.code(), 0) << a.describe();
        EXPECT_EQ(a.out, b.out) << t;
        expect_clean_error(moe("train --resume q_" + t + " --steps 8 --no-sample"), {"optimizer state"});
        expect_clean_error(moe("quantize --checkpoint q_" + t + " --dtype int8 --out again"), {"already", t});
    }
    expect_clean_error(moe("quantize --checkpoint ck --dtype fp16 --out x"), {"--dtype", "fp16"});
    expect_clean_error(moe("quantize --checkpoint ck --dtype int8 --out ck"), {"input checkpoint"});
    expect_clean_error(moe("generate --checkpoint ck --prompt the --dtype int4"), {"int4"});
}

// --cache-type f16 / bf16: generation runs on a half-size KV cache (greedy text from the tiny
// model, which the rounding rarely changes: only that it runs and prints), bench reports the type
// and half the cache's megabytes; another type is a clean error naming the option.
TEST_F(Cli, CacheType) {
    train_ok("ck");
    for (const std::string t : {"f16", "bf16"}) {
        RunResult g = moe("generate --checkpoint ck --prompt the --max-tokens 12 --temperature 0 --cache-type " + t);
        ASSERT_EQ(g.code(), 0) << g.describe();
        EXPECT_EQ(g.out.rfind("the", 0), 0u) << g.out;
    }
    json wide = tiny_config();  // a context long enough for a cache of some megabytes
    wide["model"]["n_ctx"] = 8192;
    write_config("wide.json", wide);
    RunResult b32 = moe("bench --config wide.json --batch 4 --tokens 2 --seconds 0 --json --cache-type f32");
    RunResult b16 = moe("bench --config wide.json --batch 4 --tokens 2 --seconds 0 --json --cache-type f16");
    ASSERT_EQ(b32.code(), 0) << b32.describe();
    ASSERT_EQ(b16.code(), 0) << b16.describe();
    const json j32 = json::parse(b32.out), j16 = json::parse(b16.out);
    EXPECT_EQ(j16["cache_type"], "f16");
    EXPECT_EQ(j32["cache_type"], "f32");
    ASSERT_GT(j32["kv_mb"].get<double>(), 0.5) << b32.out;
    EXPECT_NEAR(j16["kv_mb"].get<double>() * 2, j32["kv_mb"].get<double>(), 0.15) << b16.out;
    // --read-probe: a read bandwidth measured between the decode runs (0 without the flag)
    EXPECT_EQ(j32["read_probe_gbytes_per_sec"].get<double>(), 0.0) << b32.out;
    RunResult bp = moe("bench --config wide.json --tokens 2 --seconds 0 --json --read-probe");
    ASSERT_EQ(bp.code(), 0) << bp.describe();
    EXPECT_GT(json::parse(bp.out)["read_probe_gbytes_per_sec"].get<double>(), 0.0) << bp.out;
    expect_clean_error(moe("generate --checkpoint ck --prompt the --cache-type q8_0"), {"--cache-type", "q8_0"});
    expect_clean_error(moe("bench --config tiny.json --cache-type int8"), {"--cache-type", "int8"});
    // checked before the model is loaded: a missing model is not what the error is about
    expect_clean_error(moe("generate --checkpoint no_such_dir --prompt the --cache-type q8_0"), {"--cache-type", "q8_0"});
    expect_clean_error(moe("chat --model no_such_dir --cache-type q4_0"), {"chat --cache-type", "q4_0"});
}

TEST_F(Cli, TrainBadOptions) {
    expect_clean_error(train(path("tiny.json"), "--steps -5"), {"--steps", "-5"});
    expect_clean_error(train(path("tiny.json"), "--seed -2"), {"--seed", "-2"});
    expect_clean_error(moe("train --config tiny.json --threads -1"), {"--threads", "-1"});
    expect_clean_error(moe("train --config tiny.json --steps many"), {"--steps", "many"});
    expect_clean_error(moe("train --config tiny.json --bogus"), {"--bogus"});
    expect_clean_error(moe("frobnicate"), {"frobnicate"});
    expect_clean_error(moe("params"), {"--config"});
}

// --- the happy paths of the interface ---

TEST_F(Cli, TrainWritesCheckpointConfigAndJsonlLog) {
    RunResult r = train(path("tiny.json"), "--log " + q(path("logs/train.jsonl")));
    ASSERT_EQ(r.code(), 0) << r.describe();
    EXPECT_TRUE(r.err.empty()) << r.err;
    EXPECT_NE(r.out.find("done: 6 steps"), std::string::npos) << r.out;
    EXPECT_TRUE(fs::exists(path("out/checkpoint.bin")));
    json cj = json::parse(read_file(path("out/config.json")));
    EXPECT_EQ(cj["model"]["n_embd"], 16);
    Log log = parse_log(read_file(path("logs/train.jsonl")));
    EXPECT_TRUE(log.problems.empty()) << log.problems.front();
    ASSERT_EQ(log.loss.size(), 6u);  // log_interval 1
    for (int64_t s = 1; s <= 6; ++s) {
        ASSERT_TRUE(log.steps.count(s)) << "step " << s;
        EXPECT_GT(log.steps[s]["loss"].get<double>(), 0);
        EXPECT_GT(log.steps[s]["lr"].get<double>(), 0);
        EXPECT_GE(log.steps[s]["tokens_per_sec"].get<double>(), 0);
    }
    EXPECT_EQ(log.val_loss.size(), 2u);  // eval_interval 3
    EXPECT_TRUE(log.val_loss.count(3) && log.val_loss.count(6));
    for (const auto& dirent : fs::directory_iterator(path("out")))
        EXPECT_TRUE(dirent.path().filename() == "checkpoint.bin" || dirent.path().filename() == "config.json")
            << "left behind: " << dirent.path();
}

TEST_F(Cli, GenerateFromCheckpoint) {
    train_ok("ck");
    RunResult a = moe("generate --checkpoint ck --prompt " + q("the ") + " --max-tokens 12 --temperature 0.8 --seed 5");
    ASSERT_EQ(a.code(), 0) << a.describe();
    EXPECT_TRUE(a.err.empty()) << a.err;
    EXPECT_EQ(a.out.rfind("the ", 0), 0u) << a.out;
    EXPECT_EQ(a.out.size(), 4u + 12u + 1u) << a.out;  // prompt, 12 one-byte characters, newline
    RunResult b = moe("generate --checkpoint ck --prompt " + q("the ") + " --max-tokens 12 --temperature 0.8 --seed 5");
    EXPECT_EQ(a.out, b.out) << "same seed, same text";
    RunResult g = moe("generate --checkpoint ck --prompt the --max-tokens 40 --temperature 0");
    EXPECT_EQ(g.code(), 0) << g.describe();  // past n_ctx = 16: the window slides
}

TEST_F(Cli, ParamsJson) {
    RunResult r = moe("params --config tiny.json --json");
    ASSERT_EQ(r.code(), 0) << r.describe();
    json j = json::parse(r.out);
    ASSERT_TRUE(j.contains("total") && j.contains("active"));
    EXPECT_GT(j["total"].get<int64_t>(), j["active"].get<int64_t>());
    EXPECT_GT(j["active"].get<int64_t>(), 0);
    RunResult h = moe("params --config tiny.json");
    ASSERT_EQ(h.code(), 0) << h.describe();
    EXPECT_NE(h.out.find("total parameters"), std::string::npos);
}

}  // namespace

// ------------------------------------------------------------------ router section (issue #3)

TEST_F(Cli, RouterNegativeCapacityFactor) {
    json j = tiny_config();
    j["router"] = {{"capacity_factor", -0.5}};
    std::string cfg = write_config("router_cf.json", j);
    expect_clean_error(train(cfg), {cfg, "'router.capacity_factor'", "-0.5"});
    expect_clean_error(moe("params --config " + q(cfg)), {cfg, "'router.capacity_factor'"});
}

TEST_F(Cli, RouterZeroRoutedScale) {
    json j = tiny_config();
    j["router"] = {{"routed_scale", 0}};
    std::string cfg = write_config("router_scale.json", j);
    expect_clean_error(train(cfg), {cfg, "'router.routed_scale'", "> 0", "got 0"});
}

TEST_F(Cli, RouterUnknownOverflowPolicy) {
    json j = tiny_config();
    j["router"] = {{"capacity_factor", 1.25}, {"overflow", "spill"}};
    std::string cfg = write_config("router_policy.json", j);
    expect_clean_error(train(cfg), {cfg, "'router.overflow'", "spill"});
}

TEST_F(Cli, RouterNanCoefficient) {
    // JSON has no NaN literal: a NaN written by a tool arrives as a token the parser rejects or as
    // a string; both must name the problem. A huge exponent overflows to inf in a double.
    json j = tiny_config();
    j["router"] = {{"balance_loss", "nan"}};
    std::string cfg = write_config("router_nan.json", j);
    expect_clean_error(train(cfg), {cfg, "'router.balance_loss'", "nan"});
    std::string raw = dir + "/router_nan_literal.json";
    {
        std::string text = tiny_config().dump();
        text.insert(text.size() - 1, ", \"router\": {\"z_loss\": NaN}");
        std::ofstream(raw) << text;
    }
    expect_clean_error(train(raw), {raw, "not valid JSON"});
    std::string inf = dir + "/router_inf.json";
    {
        std::string text = tiny_config().dump();
        text.insert(text.size() - 1, ", \"router\": {\"z_loss\": 1e999}");
        std::ofstream(inf) << text;
    }
    expect_clean_error(train(inf), {inf, "not valid JSON", "1e999"});
}

TEST_F(Cli, RouterUnknownField) {
    json j = tiny_config();
    j["router"] = {{"capacity", 1.25}};
    std::string cfg = write_config("router_unknown.json", j);
    expect_clean_error(train(cfg), {cfg, "unknown field 'router.capacity'"});
}

TEST_F(Cli, ExpertsPerTokenOutOfRange) {
    json j = tiny_config();
    std::string cfg = write_config("k.json", j);
    std::string out = dir + "/ck";
    auto r = moe("train --config " + q(cfg) + " --steps 2 --threads 1 --no-sample --out " + q(out));
    ASSERT_EQ(r.code(), 0) << r.describe();
    expect_clean_error(moe("generate --checkpoint " + q(out) + " --prompt ab --max-tokens 2 --experts-per-token 5"),
                       {"--experts-per-token", "5", "n_expert = 4"});
    auto ok = moe("generate --checkpoint " + q(out) + " --prompt ab --max-tokens 3 --experts-per-token 1");
    EXPECT_EQ(ok.code(), 0) << ok.describe();
}

// ------------------------------------------------------------------ shared expert

TEST_F(Cli, SharedExpertOnDenseModel) {
    json j = tiny_config();
    j["model"]["ffn"] = "dense";
    j["model"]["n_ff"] = 32;
    j["model"]["n_ff_shexp"] = 16;
    std::string cfg = write_config("shexp_dense.json", j);
    expect_clean_error(train(cfg), {cfg, "'model.n_ff_shexp'", "16", "no MoE layer"});
}

TEST_F(Cli, SharedExpertGateWithoutSharedExpert) {
    json j = tiny_config();
    j["model"]["shexp_gate"] = true;
    std::string cfg = write_config("shexp_gate.json", j);
    expect_clean_error(moe("params --config " + q(cfg)), {cfg, "'model.shexp_gate'", "n_ff_shexp"});
    j["model"]["n_ff_shexp"] = -4;
    cfg = write_config("shexp_neg.json", j);
    expect_clean_error(moe("params --config " + q(cfg)), {cfg, "'model.n_ff_shexp'", "-4"});
}

// A gated shared expert trains, round-trips through its checkpoint (generate reads it back) and
// counts as active parameters for every token.
TEST_F(Cli, SharedExpertTrainsAndGenerates) {
    json j = tiny_config();
    j["model"]["n_ff_shexp"] = 24;
    j["model"]["shexp_gate"] = true;
    write_config("shexp.json", j);
    RunResult r = moe("train --config shexp.json --out ck --threads 1 --no-sample");
    ASSERT_EQ(r.code(), 0) << r.describe();
    EXPECT_NE(r.out.find("shared F=24 (gated)"), std::string::npos) << r.out;
    RunResult g = moe("generate --checkpoint ck --prompt the --max-tokens 3");
    ASSERT_EQ(g.code(), 0) << g.describe();
    RunResult p = moe("params --config shexp.json --json");
    ASSERT_EQ(p.code(), 0) << p.describe();
    RunResult p0 = moe("params --config tiny.json --json");
    ASSERT_EQ(p0.code(), 0) << p0.describe();
    const json a = json::parse(p.out), b = json::parse(p0.out);
    // 1 layer, C 16: gate (1, C) + gate/up (Fs, C) + down (C, Fs) = 16 + 3 * 24 * 16, all active
    const int64_t extra = 16 + 3 * 24 * 16;
    EXPECT_EQ(a["total"].get<int64_t>() - b["total"].get<int64_t>(), extra);
    EXPECT_EQ(a["active"].get<int64_t>() - b["active"].get<int64_t>(), extra);
}
