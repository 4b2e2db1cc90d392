// Checkpoints and the tensor file under them: exact round trip of every parameter and AdamW
// moment, a checksum that catches any single flipped bit, clear errors for cut files, and atomic
// saves: a save that fails (before or in the middle of writing) leaves the previous checkpoint
// loadable and bit-identical.
#include <fcntl.h>
#include <gtest/gtest.h>
#include <signal.h>
#include <sys/resource.h>
#include <unistd.h>

#include <cstring>
#include <filesystem>
#include <functional>
#include <fstream>
#include <sstream>

#include "core/error.h"
#include "core/rng.h"
#include "io/checkpoint.h"
#include "core/crc32.h"
#include "io/tensor_file.h"
#include "model/config.h"
#include "model/model.h"

using namespace moe;
namespace fs = std::filesystem;

namespace {

std::string read_bytes(const std::string& p) {
    std::ifstream in(p, std::ios::binary);
    std::stringstream ss;
    ss << in.rdbuf();
    return ss.str();
}

void write_bytes(const std::string& p, const std::string& d) {
    std::ofstream out(p, std::ios::binary | std::ios::trunc);
    out << d;
}

class CheckpointTest : public ::testing::Test {
protected:
    std::string dir;
    Config cfg;
    Tokenizer tok;

    void SetUp() override {
        char tmpl[] = "/tmp/moe_ckpt_test_XXXXXX";
        ASSERT_NE(::mkdtemp(tmpl), nullptr);
        dir = tmpl;
        tok = Tokenizer::char_level("abcdefgh ijklmnop.\n", "test");
        nlohmann::json j = {
            {"model",
             {{"vocab_size", tok.vocab_size()}, {"n_layer", 2}, {"n_embd", 16}, {"n_head", 2}, {"n_ctx", 16},
              {"ffn", {"moe", "dense"}}, {"n_ff", 24}, {"n_expert", 4}, {"n_expert_used", 2}, {"n_ff_exp", 8}}},
            {"train", {{"data", "x.txt"}, {"steps", 10}, {"seed", 5}}}};
        cfg = config_from_json(j, "test config");
    }
    void TearDown() override {
        if (HasFailure()) return;
        std::error_code ec;
        fs::remove_all(dir, ec);
    }

    // a model with seeded weights and AdamW moments filled from another stream
    std::unique_ptr<Model> make_model(uint64_t seed, std::vector<float>& m, std::vector<float>& v) {
        auto model = std::make_unique<Model>(cfg.model);
        model->init(seed);
        m.resize(model->n_params());
        v.resize(model->n_params());
        Rng rng(seed, 77);
        for (auto& x : m) x = (float)rng.normal();
        for (auto& x : v) x = (float)rng.uniform();
        return model;
    }

    // A checkpoint written by hand into dir/ck: the config `c` in its metadata, every parameter of
    // `model` as f32 tensors, then `extra` (more tensors); returns the directory.
    std::string write_hand_checkpoint(const Config& c, Model& model,
                                      const std::function<void(TensorFileWriter&)>& extra = nullptr) {
        TensorFileWriter w;
        w.meta["format"] = "moe-checkpoint";
        w.meta["version"] = 1;
        w.meta["config"] = config_to_json(c);
        w.meta["tokenizer"] = tok.to_json();
        w.meta["state"] = {{"step", 1}, {"tokens_seen", 0}, {"val_loss", -1}};
        for (const auto& p : model.table().params()) w.add(p.name, "f32", p.shape, model.params() + p.offset);
        if (extra) extra(w);
        fs::create_directories(dir + "/ck");
        w.write(checkpoint_file(dir + "/ck"));
        return dir + "/ck";
    }

    // cfg with FFN sizes of 2^30 (about 2^37 parameters, 0.5 TB of fp32): what a corrupted header of
    // this model's checkpoint might claim
    Config huge_config() const {
        Config c = cfg;
        c.model.n_ff_exp = int64_t(1) << 30;
        c.model.n_ff = int64_t(1) << 30;
        return c;
    }

    // every parameter (by the table) of a and b has the same bits
    static void expect_same_params(Model& a, Model& b) {
        ASSERT_EQ(a.table().params().size(), b.table().params().size());
        for (const auto& p : a.table().params()) {
            EXPECT_EQ(std::memcmp(a.params() + p.offset, b.params() + p.offset, p.numel * sizeof(float)), 0)
                << "parameter " << p.name;
        }
    }
};

TEST_F(CheckpointTest, RoundTripRestoresEverythingExactly) {
    std::vector<float> m, v;
    auto model = make_model(42, m, v);
    TrainState st;
    st.step = 7;
    st.tokens_seen = 12345;
    st.val_loss = 2.718281828459045;
    save_checkpoint(dir, cfg, tok, *model, m.data(), v.data(), st);

    Checkpoint ck = load_checkpoint(dir);
    EXPECT_EQ(config_to_json(ck.config), config_to_json(cfg));
    EXPECT_EQ(ck.tokenizer.to_json(), tok.to_json());
    EXPECT_EQ(ck.state.step, 7);
    EXPECT_EQ(ck.state.tokens_seen, 12345);
    EXPECT_EQ(ck.state.val_loss, 2.718281828459045);
    expect_same_params(*model, *ck.model);
    ASSERT_EQ(ck.adam_m.size(), m.size());
    ASSERT_EQ(ck.adam_v.size(), v.size());
    EXPECT_EQ(std::memcmp(ck.adam_m.data(), m.data(), m.size() * sizeof(float)), 0);
    EXPECT_EQ(std::memcmp(ck.adam_v.data(), v.data(), v.size() * sizeof(float)), 0);
    // the readable copy of the config
    EXPECT_EQ(nlohmann::json::parse(read_bytes(dir + "/config.json")), config_to_json(cfg));

    // saving the loaded checkpoint again gives the same bytes
    const std::string first = read_bytes(checkpoint_file(dir));
    const std::string dir2 = dir + "/again";
    save_checkpoint(dir2, ck.config, ck.tokenizer, *ck.model, ck.adam_m.data(), ck.adam_v.data(), ck.state);
    EXPECT_EQ(read_bytes(checkpoint_file(dir2)), first);

    // without optimizer state
    const std::string dir3 = dir + "/weights_only";
    save_checkpoint(dir3, cfg, tok, *model, nullptr, nullptr, st);
    Checkpoint w = load_checkpoint(dir3);
    EXPECT_TRUE(w.adam_m.empty() && w.adam_v.empty());
    expect_same_params(*model, *w.model);
}

// The failing save is forced deterministically (we may run as root, so permission bits would not
// stop it): a directory sits where the save wants to create its temp file (path + ".tmp." + pid).
TEST_F(CheckpointTest, SaveThatCannotCreateItsTempFileKeepsPreviousCheckpoint) {
    std::vector<float> m1, v1, m2, v2;
    auto good = make_model(1, m1, v1);
    TrainState st;
    st.step = 3;
    save_checkpoint(dir, cfg, tok, *good, m1.data(), v1.data(), st);
    const std::string path = checkpoint_file(dir);
    const std::string before = read_bytes(path);

    auto next = make_model(2, m2, v2);
    st.step = 4;
    const std::string blocker = path + ".tmp." + std::to_string(::getpid());
    fs::create_directory(blocker);
    try {
        save_checkpoint(dir, cfg, tok, *next, m2.data(), v2.data(), st);
        FAIL() << "the save should have failed";
    } catch (const moe::error& e) {
        EXPECT_NE(std::string(e.what()).find(path), std::string::npos) << e.what();
    }
    EXPECT_EQ(read_bytes(path), before);
    Checkpoint ck = load_checkpoint(dir);
    EXPECT_EQ(ck.state.step, 3);
    expect_same_params(*good, *ck.model);
    EXPECT_EQ(std::memcmp(ck.adam_m.data(), m1.data(), m1.size() * sizeof(float)), 0);
    EXPECT_EQ(std::memcmp(ck.adam_v.data(), v1.data(), v1.size() * sizeof(float)), 0);

    // with the obstacle gone the same save goes through (so the obstacle was what failed it)
    fs::remove(blocker);
    save_checkpoint(dir, cfg, tok, *next, m2.data(), v2.data(), st);
    EXPECT_EQ(load_checkpoint(dir).state.step, 4);
}

// A save that fails in the middle of writing (the file-size limit, like a full disk) removes its
// partial temp file and leaves the previous checkpoint as it was.
TEST_F(CheckpointTest, SaveThatFailsMidWriteKeepsPreviousCheckpoint) {
    std::vector<float> m1, v1, m2, v2;
    auto good = make_model(1, m1, v1);
    TrainState st;
    save_checkpoint(dir, cfg, tok, *good, m1.data(), v1.data(), st);
    const std::string path = checkpoint_file(dir);
    const std::string before = read_bytes(path);
    ASSERT_GT(before.size(), 8192u);

    auto next = make_model(2, m2, v2);
    struct rlimit old {};
    ASSERT_EQ(::getrlimit(RLIMIT_FSIZE, &old), 0);
    auto old_handler = ::signal(SIGXFSZ, SIG_IGN);
    struct rlimit lim = old;
    lim.rlim_cur = 4096;
    ASSERT_EQ(::setrlimit(RLIMIT_FSIZE, &lim), 0);
    std::string msg;
    try {
        save_checkpoint(dir, cfg, tok, *next, m2.data(), v2.data(), st);
    } catch (const moe::error& e) {
        msg = e.what();
    }
    ::setrlimit(RLIMIT_FSIZE, &old);
    ::signal(SIGXFSZ, old_handler);

    EXPECT_NE(msg.find(path), std::string::npos) << "the save should fail naming the file, got: " << msg;
    EXPECT_EQ(read_bytes(path), before);
    for (const auto& e : fs::directory_iterator(dir))
        EXPECT_TRUE(e.path().filename() == "checkpoint.bin" || e.path().filename() == "config.json")
            << "left behind: " << e.path();
    expect_same_params(*good, *load_checkpoint(dir).model);
}

class TensorFileTest : public CheckpointTest {};

// Every single-bit flip anywhere in the file (header, data, padding, trailer) is reported as a
// moe::error naming the file, never accepted and never a crash.
TEST_F(TensorFileTest, ChecksumCatchesAnySingleFlippedBit) {
    std::vector<float> f(37);
    std::vector<int32_t> ids(11);
    std::vector<double> d(5);
    for (size_t i = 0; i < f.size(); ++i) f[i] = 0.25f * (float)i - 3.f;
    for (size_t i = 0; i < ids.size(); ++i) ids[i] = (int32_t)(i * 7919);
    for (size_t i = 0; i < d.size(); ++i) d[i] = 1.0 / (double)(i + 3);
    TensorFileWriter w;
    w.meta["what"] = "bit flips";
    w.add("f", "f32", {37}, f.data());
    w.add("ids", "i32", {11}, ids.data());
    w.add("d", "f64", {5}, d.data());
    const std::string path = dir + "/t.bin";
    w.write(path);
    {
        TensorFile tf = TensorFile::read(path);
        EXPECT_EQ(tf.meta["what"], "bit flips");
        EXPECT_EQ(std::memcmp(tf.get("f").f32(), f.data(), f.size() * 4), 0);
        EXPECT_EQ(std::memcmp(tf.get("ids").i32(), ids.data(), ids.size() * 4), 0);
        EXPECT_EQ(std::memcmp(tf.get("d").f64(), d.data(), d.size() * 8), 0);
    }
    const std::string good = read_bytes(path);
    uint64_t header_len = 0;
    std::memcpy(&header_len, good.data() + 8, 8);
    const size_t data_start = (16 + header_len + 63) / 64 * 64;
    ASSERT_LT(data_start, good.size() - 16);

    const std::string bad_path = dir + "/bad.bin";
    write_bytes(bad_path, good);
    const int fd = ::open(bad_path.c_str(), O_WRONLY);
    ASSERT_GE(fd, 0);
    int checked = 0;
    for (size_t byte = 0; byte < good.size(); ++byte) {
        // every bit of the data region, one bit (rotating) of every other byte
        const bool data = byte >= data_start && byte < good.size() - 16;
        for (int bit = data ? 0 : (int)(byte % 8); bit < (data ? 8 : (int)(byte % 8) + 1); ++bit) {
            const char flipped = (char)(good[byte] ^ (1 << bit));
            ASSERT_EQ(::pwrite(fd, &flipped, 1, (off_t)byte), 1);
            try {
                TensorFile::read(bad_path);
                ADD_FAILURE() << "flip of bit " << bit << " of byte " << byte << " was not detected";
            } catch (const moe::error& e) {
                EXPECT_NE(std::string(e.what()).find(bad_path), std::string::npos) << e.what();
            }
            ASSERT_EQ(::pwrite(fd, &good[byte], 1, (off_t)byte), 1);
            ++checked;
        }
    }
    ::close(fd);
    EXPECT_NO_THROW(TensorFile::read(bad_path));  // restored
    EXPECT_GT(checked, 8 * (int)(good.size() - 16 - data_start));
}

TEST_F(TensorFileTest, TruncatedOrMissingFileIsAClearError) {
    std::vector<float> f(100, 1.5f);
    TensorFileWriter w;
    w.add("f", "f32", {10, 10}, f.data());
    const std::string path = dir + "/t.bin";
    w.write(path);
    const std::string good = read_bytes(path);
    for (size_t keep : {(size_t)0, (size_t)7, (size_t)31, (size_t)64, good.size() / 2, good.size() - 1}) {
        write_bytes(path, good.substr(0, keep));
        try {
            TensorFile::read(path);
            ADD_FAILURE() << "a file cut to " << keep << " bytes was accepted";
        } catch (const moe::error& e) {
            EXPECT_NE(std::string(e.what()).find(path), std::string::npos) << e.what();
        }
    }
    // trailing garbage is damage too
    write_bytes(path, good + "x");
    EXPECT_THROW(TensorFile::read(path), moe::error);
    try {
        TensorFile::read(dir + "/missing.bin");
        ADD_FAILURE() << "a missing file was accepted";
    } catch (const moe::error& e) {
        EXPECT_NE(std::string(e.what()).find(dir + "/missing.bin"), std::string::npos) << e.what();
    }
}

// A header (with a valid checksum) that places a tensor off the 64-byte grid is refused: the
// kernels read tensors in place as their type (fuzz/fuzz_checkpoint.cc found a bf16 tensor at an odd
// offset reaching bf16_to_f32_n as a misaligned uint16_t*).
// A tensor file around `header` (JSON text) and 128 bytes of data, with a valid trailer and CRC.
std::string tensor_file_bytes(const std::string& header) {
    std::string b = "MOETNSR1";
    const uint64_t hl = header.size();
    b.append(reinterpret_cast<const char*>(&hl), 8);
    b += header;
    b.resize((b.size() + 63) / 64 * 64, '\0');
    b.append(128, '\x3f');  // data
    const uint64_t total = b.size() + 16;
    const uint32_t crc = crc32_update(0, b.data(), b.size()), magic = 0x21454F4D;
    b.append(reinterpret_cast<const char*>(&total), 8);
    b.append(reinterpret_cast<const char*>(&crc), 4);
    b.append(reinterpret_cast<const char*>(&magic), 4);
    return b;
}

TEST_F(TensorFileTest, MisalignedTensorOffsetIsAClearError) {
    auto file_with_offset = [](size_t off) {
        return tensor_file_bytes(R"({"meta":{},"tensors":[{"name":"w","dtype":"bf16","shape":[4],"offset":)" +
                                 std::to_string(off) + R"(,"nbytes":8}]})");
    };
    const std::string path = dir + "/t.bin";
    write_bytes(path, file_with_offset(64));
    EXPECT_EQ(TensorFile::read(path).find("w")->nbytes, 8u);  // the same file on the grid loads
    write_bytes(path, file_with_offset(1));
    try {
        TensorFile::read(path);
        ADD_FAILURE() << "a tensor at offset 1 was accepted";
    } catch (const moe::error& e) {
        EXPECT_NE(std::string(e.what()).find("not a multiple of 64"), std::string::npos) << e.what();
    }
}

// Numbers of a header that are not integers in range (a float shape entry reached nlohmann's
// float-to-int64 conversion, undefined behaviour, in fuzz_checkpoint) are errors naming the field.
TEST_F(TensorFileTest, NonIntegerHeaderNumbersAreClearErrors) {
    const std::string path = dir + "/t.bin";
    for (const auto& [fields, expect] : std::vector<std::pair<std::string, std::string>>{
             {R"("shape":[3.3e59],"offset":0,"nbytes":8)", "shape entry must be an integer"},
             {R"("shape":[-4],"offset":0,"nbytes":8)", "shape entry = -4 is out of range"},
             {R"("shape":"4","offset":0,"nbytes":8)", "shape must be a list"},
             {R"("shape":[4],"offset":0.5,"nbytes":8)", "offset must be an integer"},
             {R"("shape":[4],"offset":0,"nbytes":1e30)", "nbytes must be an integer"},
             {R"("shape":[4],"offset":18446744073709551615,"nbytes":8)", "offset = 18446744073709551615 is out of range"},
         }) {
        write_bytes(path, tensor_file_bytes(R"({"meta":{},"tensors":[{"name":"w","dtype":"bf16",)" + fields + "}]}"));
        try {
            TensorFile::read(path);
            ADD_FAILURE() << fields << " was accepted";
        } catch (const moe::error& e) {
            EXPECT_NE(std::string(e.what()).find(expect), std::string::npos) << fields << ": " << e.what();
        }
    }
}

// A checkpoint whose tensors disagree with its config (here: a config edited after saving) is a
// clear error naming the tensor, not an out-of-bounds copy.
TEST_F(CheckpointTest, TensorsThatDisagreeWithTheConfigAreAnError) {
    std::vector<float> m, v;
    auto model = make_model(3, m, v);
    Config other = cfg;
    other.model.n_ff_exp = 16;  // the saved tensors are for n_ff_exp = 8
    write_hand_checkpoint(other, *model);
    try {
        load_checkpoint(dir + "/ck");
        FAIL() << "accepted";
    } catch (const moe::error& e) {
        EXPECT_NE(std::string(e.what()).find(checkpoint_file(dir + "/ck")), std::string::npos) << e.what();
        EXPECT_NE(std::string(e.what()).find("tensor"), std::string::npos) << e.what();
    }
}

// A header whose config claims a model far larger than the file (a corrupted or hand-edited
// checkpoint: here about 2^37 parameters, 0.5 TB of fp32, against a file of a few KB) is refused
// by its tensors' shapes before any model is allocated: the error names the tensor, it is not an
// allocation failure (the model used to be allocated from the config first; fuzz/fuzz_checkpoint.cc
// mutates such headers).
TEST_F(CheckpointTest, ConfigClaimingAHugeModelIsRefusedBeforeAllocating) {
    std::vector<float> m, v;
    auto model = make_model(3, m, v);
    const Config other = huge_config();
    write_hand_checkpoint(other, *model);
    for (const char* type : {"", "int8"}) {
        try {
            load_checkpoint(dir + "/ck", type);
            FAIL() << "accepted";
        } catch (const moe::error& e) {
            EXPECT_NE(std::string(e.what()).find("but the config needs"), std::string::npos) << e.what();
        }
    }
}

// The same for a sharded set (expert-parallel training's format): its replicated file's config claims
// the huge model, its files hold the real one; every tensor is checked before the model is allocated.
TEST_F(CheckpointTest, ShardedSetClaimingAHugeModelIsRefusedBeforeAllocating) {
    std::vector<float> m, v;
    auto model = make_model(3, m, v);
    const Config other = huge_config();
    const TrainState st{1, 0, -1};
    const std::string d = dir + "/sharded";
    fs::create_directories(d);
    std::vector<ShardRecord> files;
    files.push_back(write_checkpoint_shard(d, "t1", true, other, tok, *model, m.data(), v.data(), st));
    files.push_back(write_checkpoint_shard(d, "t1", false, other, tok, *model, m.data(), v.data(), st));
    commit_sharded_checkpoint(d, other, files, 1, 1, st);
    try {
        load_checkpoint(d);
        FAIL() << "accepted";
    } catch (const moe::error& e) {
        EXPECT_NE(std::string(e.what()).find("but needs f32"), std::string::npos) << e.what();
    }
}

// A header naming a weight type moe checkpoints do not store (a ggml block type: its tensors would be
// read with the int8 layout; fuzz_checkpoint found "q8_0" reaching a kernel's assert on conversion)
// is an error naming it.
TEST_F(CheckpointTest, UnknownStoredWeightTypeIsAnError) {
    std::vector<float> m, v;
    auto model = make_model(3, m, v);
    for (const char* type : {"q8_0", "q4_k", "f16", "int4"}) {
        const std::string d = write_hand_checkpoint(cfg, *model, [&](TensorFileWriter& w) { w.meta["weight_type"] = type; });
        for (const char* want : {"", "int8"}) {
            try {
                load_checkpoint(d, want);
                ADD_FAILURE() << type << " accepted";
            } catch (const moe::error& e) {
                EXPECT_NE(std::string(e.what()).find(std::string("meta weight_type '") + type), std::string::npos) << e.what();
            }
        }
    }
}

// AdamW moments of the right count but not f32 (a bf16 tensor holds half the bytes) are an error,
// not a read past the tensor.
TEST_F(CheckpointTest, OptimizerStateOfAnotherTypeIsAnError) {
    std::vector<float> m, v;
    auto model = make_model(3, m, v);
    std::vector<uint16_t> half(model->n_params(), 0x3f80);  // 1.0 in bf16
    write_hand_checkpoint(cfg, *model, [&](TensorFileWriter& w) {
        w.add("optim.adam_m", "bf16", {model->n_params()}, half.data());
        w.add("optim.adam_v", "f32", {model->n_params()}, v.data());
    });
    try {
        load_checkpoint(dir + "/ck");
        FAIL() << "accepted";
    } catch (const moe::error& e) {
        EXPECT_NE(std::string(e.what()).find("optimizer state is bf16"), std::string::npos) << e.what();
    }
}

}  // namespace

// The tensor files' CRC-32 (core/crc32, written instead of linking zlib): the standard check value,
// any split of the input gives the same value, and one flipped bit changes it.
TEST(Crc32, CheckValueSplitsAndBitFlips) {
    const std::string s = "123456789";
    EXPECT_EQ(moe::crc32_update(0, s.data(), s.size()), 0xCBF43926u);
    std::string big(1000, '\0');
    for (size_t i = 0; i < big.size(); ++i) big[i] = (char)(i * 131 + 7);
    const uint32_t whole = moe::crc32_update(0, big.data(), big.size());
    for (size_t cut : {0, 1, 7, 8, 9, 500, 999, 1000})
        EXPECT_EQ(moe::crc32_update(moe::crc32_update(0, big.data(), cut), big.data() + cut, big.size() - cut), whole);
    big[123] ^= 4;
    EXPECT_NE(moe::crc32_update(0, big.data(), big.size()), whole);
}

namespace {

// logits of a cached prefill over a fixed sequence
std::vector<float> prefill_logits(Model& m) {
    auto cache = m.make_cache(1);
    const int64_t T = 12, V = m.config().vocab_size;
    std::vector<int32_t> tk(T), sid(T, 0), pos(T);
    for (int64_t i = 0; i < T; ++i) tk[i] = (int32_t)((i * 7 + 3) % V), pos[i] = (int32_t)i;
    m.forward_cached(tk.data(), sid.data(), pos.data(), T, cache);
    return std::vector<float>(m.logits(), m.logits() + T * V);
}

}  // namespace

// Typed inference models (#19): a bf16 / int8 model made by init, or loaded from a checkpoint in
// another type, has the bits of the fp32 model converted by set_weight_type; one loaded from a
// checkpoint stored in its own type views the mapped file (no copy); no typed model holds
// gradients or a training state, and training calls on it are clear errors.
TEST_F(CheckpointTest, TypedModelsMatchConvertedFp32AndViewTheirFile) {
    std::vector<float> m, v;
    auto fp32 = make_model(42, m, v);
    save_checkpoint(dir + "/f32", cfg, tok, *fp32, m.data(), v.data(), TrainState{});
    for (kernels::WType t : {kernels::WType::bf16, kernels::WType::q8}) {
        const std::string name = kernels::wtype_name(t);
        fp32->set_weight_type(t);
        const std::vector<float> want = prefill_logits(*fp32);
        // init straight into the type
        Model direct(cfg.model, t);
        direct.init(42);
        EXPECT_TRUE(direct.typed());
        EXPECT_EQ(prefill_logits(direct), want) << name << ": typed init";
        // an fp32 checkpoint converted at load
        Checkpoint conv = load_checkpoint(dir + "/f32", name);
        EXPECT_EQ(conv.model->weight_type(), t);
        EXPECT_EQ(prefill_logits(*conv.model), want) << name << ": converted at load";
        EXPECT_TRUE(conv.adam_m.empty()) << "a typed model carries no optimizer state";
        // a checkpoint stored in the type: used in place
        save_checkpoint_quantized(dir + "/" + name, cfg, tok, *fp32, name, TrainState{});
        Checkpoint in_place = load_checkpoint(dir + "/" + name);
        EXPECT_EQ(in_place.model->weight_type(), t);
        EXPECT_EQ(prefill_logits(*in_place.model), want) << name << ": in place";
        int views = 0;
        for (size_t i = 0; i < in_place.model->table().params().size(); ++i) {
            const ParamInfo& p = in_place.model->table().params()[i];
            EXPECT_EQ(in_place.model->param_is_view(p), typed_at_inference(p)) << p.name;
            views += in_place.model->param_is_view(p);
            EXPECT_FALSE(conv.model->param_is_view(conv.model->table().params()[i])) << p.name << " was converted";
        }
        EXPECT_GT(views, 0);
        EXPECT_FALSE(in_place.model->has_training_state());
        EXPECT_THROW(in_place.model->grads(), moe::error);
        const int32_t tk[2] = {1, 2};
        try {
            in_place.model->forward(tk, tk, 1, 2);
            ADD_FAILURE() << "training forward on a " << name << " model";
        } catch (const moe::error& e) {
            EXPECT_NE(std::string(e.what()).find(name), std::string::npos) << e.what();
        }
        EXPECT_THROW(in_place.model->set_weight_type(kernels::WType::f32), moe::error);
        // the other stored type converted into this one: the same as dequantize, then convert
        const std::string other = t == kernels::WType::bf16 ? "int8" : "bf16";
        save_checkpoint_quantized(dir + "/o" + other, cfg, tok, *fp32, other, TrainState{});
        Checkpoint cross = load_checkpoint(dir + "/o" + other, name);
        Checkpoint deq = load_checkpoint(dir + "/o" + other, "fp32");
        deq.model->set_weight_type(t);
        EXPECT_EQ(prefill_logits(*cross.model), prefill_logits(*deq.model)) << other << " -> " << name;
    }
    // the inference plan holds no (H, N, N) scores and no (N, V) probabilities: forward_cached on
    // a fresh fp32 model makes no training state
    Checkpoint f = load_checkpoint(dir + "/f32");
    prefill_logits(*f.model);
    EXPECT_FALSE(f.model->has_training_state());
}
