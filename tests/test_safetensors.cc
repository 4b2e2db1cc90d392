// safetensors, Hugging Face config.json and the HF -> moe name map (issue #20), over the committed
// tiny models of tests/data/hf (scripts/gen_hf_models.py: transformers 5.23 save_pretrained) and a
// file written by Python's safetensors. No Python at test time. Bad files are built here from good
// bytes; each must be one clear moe::error naming the problem.
#include <gtest/gtest.h>
#include <unistd.h>

#include <cmath>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <functional>
#include <initializer_list>
#include <sstream>

#include "core/error.h"
#include "io/hf_config.h"
#include "io/hf_names.h"
#include "io/safetensors.h"

using namespace moe;
namespace fs = std::filesystem;
using nlohmann::json;

namespace {

const std::string kHf = std::string(MOE_TEST_DIR) + "/data/hf/";
const std::vector<std::string> kModels = {"mixtral", "mixtral_sharded", "mixtral_fused", "mixtral_bf16",
                                          "qwen2_moe", "qwen2_moe_norm", "qwen3_moe", "olmoe", "llama",
                                          "llama_tied", "mistral", "qwen2", "qwen3"};
// the models with a reference.safetensors of their own
const std::vector<std::string> kReferenced = {"mixtral", "mixtral_bf16", "qwen2_moe", "qwen2_moe_norm", "qwen3_moe",
                                              "olmoe", "llama", "llama_tied", "mistral", "qwen2", "qwen3"};

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

json read_json(const std::string& p) { return json::parse(read_bytes(p)); }

// Runs f, which must throw moe::error whose message holds every one of `parts`.
void expect_error(const std::function<void()>& f, std::initializer_list<std::string> parts) {
    try {
        f();
    } catch (const moe::error& e) {
        const std::string m = e.what();
        for (const auto& p : parts) EXPECT_NE(m.find(p), std::string::npos) << "message: " << m << "\nmissing: " << p;
        return;
    }
    ADD_FAILURE() << "no moe::error";
}

bool same_bytes(const TensorView& a, const TensorView& b) {
    return a.dtype == b.dtype && a.shape == b.shape && a.nbytes == b.nbytes &&
           (a.nbytes == 0 || std::memcmp(a.data, b.data, a.nbytes) == 0);
}

class Tmp : public ::testing::Test {
protected:
    std::string dir;
    void SetUp() override {
        char tmpl[] = "/tmp/moe_st_test_XXXXXX";
        ASSERT_NE(::mkdtemp(tmpl), nullptr);
        dir = tmpl;
    }
    void TearDown() override {
        std::error_code ec;
        fs::remove_all(dir, ec);
    }
    std::string path(const std::string& name) const { return dir + "/" + name; }
};

// A file image: u64 header length (the header's own unless `n` says otherwise), header, data.
std::string image(const std::string& header, const std::string& data, int64_t n = -1) {
    const uint64_t len = n < 0 ? header.size() : (uint64_t)n;
    std::string r(8, '\0');
    for (int i = 0; i < 8; ++i) r[i] = (char)(len >> (8 * i));
    return r + header + data;
}

SafetensorsHeader parse(const std::string& img) {
    return parse_safetensors(reinterpret_cast<const unsigned char*>(img.data()), img.size(), "mem.safetensors");
}

}  // namespace

// ---------------------------------------------------------------- reading

TEST(Safetensors, ReadsEveryDtypeOfAFileWrittenByPython) {
    const std::string p = std::string(MOE_TEST_DIR) + "/data/safetensors/dtypes.safetensors";
    const SafetensorsSource s = SafetensorsSource::open(p);
    EXPECT_EQ(s.metadata().at("source"), "python safetensors");
    EXPECT_EQ(s.tensors().size(), 12u);
    const std::vector<int64_t> shape = {2, 3};
    auto check = [&](const char* name, DType dt, auto value_of) {
        const TensorView& t = s.get(name);
        EXPECT_EQ(t.dtype, dt) << name;
        EXPECT_EQ(t.shape, shape) << name;
        ASSERT_EQ(t.nbytes, 6 * dtype_size(dt)) << name;
        EXPECT_EQ((uintptr_t)t.data % dtype_size(dt), 0u) << name << " is not aligned";
        for (int i = 0; i < 6; ++i) EXPECT_EQ(value_of(t.data, i), (double)i) << name << "[" << i << "]";
    };
    check("t_F64", DType::f64, [](const void* d, int i) { return static_cast<const double*>(d)[i]; });
    check("t_F32", DType::f32, [](const void* d, int i) { return (double)static_cast<const float*>(d)[i]; });
    check("t_I64", DType::i64, [](const void* d, int i) { return (double)static_cast<const int64_t*>(d)[i]; });
    check("t_I32", DType::i32, [](const void* d, int i) { return (double)static_cast<const int32_t*>(d)[i]; });
    check("t_I16", DType::i16, [](const void* d, int i) { return (double)static_cast<const int16_t*>(d)[i]; });
    check("t_I8", DType::i8, [](const void* d, int i) { return (double)static_cast<const int8_t*>(d)[i]; });
    check("t_U8", DType::u8, [](const void* d, int i) { return (double)static_cast<const uint8_t*>(d)[i]; });
    check("t_BF16", DType::bf16, [](const void* d, int i) {
        const uint32_t bits = (uint32_t)static_cast<const uint16_t*>(d)[i] << 16;
        float f;
        std::memcpy(&f, &bits, 4);
        return (double)f;
    });
    // small integers in IEEE half: exponent 15 + e, 10-bit mantissa
    check("t_F16", DType::f16, [](const void* d, int i) {
        const uint16_t h = static_cast<const uint16_t*>(d)[i];
        if (h == 0) return 0.0;
        return std::ldexp(1.0 + (h & 0x3ff) / 1024.0, ((h >> 10) & 0x1f) - 15);
    });
    const TensorView& b = s.get("t_BOOL");
    EXPECT_EQ(b.dtype, DType::boolean);
    for (int i = 0; i < 6; ++i) EXPECT_EQ(static_cast<const uint8_t*>(b.data)[i], i % 2);
    EXPECT_EQ(s.get("empty").shape, (std::vector<int64_t>{0, 4}));
    EXPECT_EQ(s.get("empty").nbytes, 0u);
    EXPECT_EQ(s.get("scalar").shape, std::vector<int64_t>{});
    EXPECT_EQ(*s.get("scalar").f32(), 2.5f);
}

// Every committed model: its config parses, every tensor its name map asks for is there with the
// shape the config implies, and nothing is left over.
TEST(Safetensors, EveryCommittedModelMatchesItsConfigAndNameMap) {
    for (const auto& m : kModels) {
        SCOPED_TRACE(m);
        const HfConfig c = read_hf_config(kHf + m);
        const SafetensorsSource s = SafetensorsSource::open(kHf + m);
        const HfExpertLayout layout = hf_detect_expert_layout(c, s);
        EXPECT_EQ(layout == HfExpertLayout::fused, m == "mixtral_fused");
        const auto map = hf_tensor_map(c, layout);
        const auto unused = hf_check_source(map, s);
        EXPECT_TRUE(unused.empty()) << unused.size() << " unused, first " << unused[0];
        const DType want = m == "mixtral_bf16" ? DType::bf16 : DType::f32;
        EXPECT_EQ(c.dtype, m == "mixtral_bf16" ? "bfloat16" : "float32");
        for (const auto& t : s.tensors()) EXPECT_EQ(t.dtype, want) << t.name;
        // The stacked / split moe tensors have the shapes params.cc gives them.
        for (const auto& e : map) {
            size_t numel = 1;
            for (int64_t d : e.shape) numel *= (size_t)d;
            std::vector<unsigned char> buf(numel * dtype_size(want));
            EXPECT_EQ(hf_assemble(e, s, buf.data(), buf.size()), want) << e.moe_name;
        }
        EXPECT_GT(s.mapped_bytes(), 0u);
    }
}

TEST(Safetensors, ReferenceFilesAreConsistent) {
    for (const auto& m : kReferenced) {
        SCOPED_TRACE(m);
        const HfConfig c = read_hf_config(kHf + m);
        const SafetensorsSource r = SafetensorsSource::open(kHf + m + "/reference.safetensors");
        const json j = read_json(kHf + m + "/reference.json");
        const TensorView& prompt = r.get("prompt");
        const TensorView& tokens = r.get("tokens");
        const TensorView& logits = r.get("logits");
        ASSERT_EQ(prompt.dtype, DType::i64);
        ASSERT_EQ(prompt.shape, std::vector<int64_t>{64});
        ASSERT_EQ(tokens.shape, std::vector<int64_t>{96});
        ASSERT_EQ(logits.dtype, DType::f32);
        ASSERT_EQ(logits.shape, (std::vector<int64_t>{96, c.vocab_size}));
        const auto* p = static_cast<const int64_t*>(prompt.data);
        const auto* t = static_cast<const int64_t*>(tokens.data);
        EXPECT_EQ(j.at("prompt").get<std::vector<int64_t>>(), std::vector<int64_t>(p, p + 64));
        EXPECT_EQ(j.at("greedy").get<std::vector<int64_t>>(), std::vector<int64_t>(t + 64, t + 96));
        EXPECT_EQ(std::memcmp(p, t, 64 * 8), 0);
        // the continuation is the argmax of the row before each generated token
        for (int i = 63; i < 95; ++i) {
            const float* row = logits.f32() + (size_t)i * c.vocab_size;
            const int64_t am = std::max_element(row, row + c.vocab_size) - row;
            EXPECT_EQ(am, t[i + 1]) << "row " << i;
        }
    }
}

TEST(Safetensors, ShardedModelEqualsUnsharded) {
    const SafetensorsSource a = SafetensorsSource::open(kHf + "mixtral");
    const SafetensorsSource b = SafetensorsSource::open(kHf + "mixtral_sharded");
    EXPECT_GE(b.files().size(), 2u);
    EXPECT_EQ(b.where(), kHf + "mixtral_sharded/model.safetensors.index.json");
    ASSERT_EQ(a.tensors().size(), b.tensors().size());
    for (const auto& t : a.tensors()) {
        const TensorView* u = b.find(t.name);
        ASSERT_NE(u, nullptr) << t.name;
        EXPECT_TRUE(same_bytes(t, *u)) << t.name;
        EXPECT_NE(b.file_of(t.name).find("-of-0000"), std::string::npos);
    }
}

// transformers 5's fused expert layout (gate_up_proj (E, 2F, C)) and the per-expert one give the
// same moe tensors.
TEST(Safetensors, FusedExpertLayoutEqualsPerExpert) {
    const HfConfig c = read_hf_config(kHf + "mixtral");
    const SafetensorsSource a = SafetensorsSource::open(kHf + "mixtral");
    const SafetensorsSource b = SafetensorsSource::open(kHf + "mixtral_fused");
    const auto ma = hf_tensor_map(c, HfExpertLayout::per_expert), mb = hf_tensor_map(c, HfExpertLayout::fused);
    ASSERT_EQ(ma.size(), mb.size());
    int split = 0;
    for (size_t i = 0; i < ma.size(); ++i) {
        ASSERT_EQ(ma[i].moe_name, mb[i].moe_name);
        ASSERT_EQ(ma[i].shape, mb[i].shape);
        size_t n = 4;
        for (int64_t d : ma[i].shape) n *= (size_t)d;
        std::vector<unsigned char> x(n), y(n);
        hf_assemble(ma[i], a, x.data(), n);
        hf_assemble(mb[i], b, y.data(), n);
        EXPECT_TRUE(x == y) << ma[i].moe_name;
        split += mb[i].kind == HfMapKind::split_gate_up;
    }
    EXPECT_EQ(split, 4);  // gate and up of 2 layers
    // expert 1's gate row 0 is w1 of expert 1
    const HfTensorMap* gate = nullptr;
    for (const auto& m : ma)
        if (m.moe_name == "blk.0.ffn_gate_exps") gate = &m;
    ASSERT_NE(gate, nullptr);
    EXPECT_EQ(gate->hf_names[1], "model.layers.0.block_sparse_moe.experts.1.w1.weight");
}

// ---------------------------------------------------------------- writing

TEST_F(Tmp, WriterProducesTheReferenceBytes) {
    // transformers saved these with the Python safetensors package: writing the same tensors and
    // metadata gives the same file, byte for byte
    for (const std::string m : {"mixtral", "qwen2_moe", "mixtral_bf16"}) {
        const std::string src = kHf + m + "/model.safetensors";
        const SafetensorsSource s = SafetensorsSource::open(src);
        write_safetensors(path(m), s.tensors(), s.metadata());
        EXPECT_TRUE(read_bytes(path(m)) == read_bytes(src)) << m;
    }
    const std::string d = std::string(MOE_TEST_DIR) + "/data/safetensors/dtypes.safetensors";
    const SafetensorsSource s = SafetensorsSource::open(d);
    write_safetensors(path("dtypes"), s.tensors(), s.metadata());
    EXPECT_TRUE(read_bytes(path("dtypes")) == read_bytes(d));
}

TEST_F(Tmp, WriterRoundTrip) {
    std::vector<float> a(6);
    for (int i = 0; i < 6; ++i) a[i] = 0.5f * (float)i - 1.0f;
    std::vector<uint16_t> b = {1, 2, 3};
    std::vector<int8_t> c = {-1, 2, -3, 4, -5};
    std::vector<TensorView> ts(3);
    ts[0].name = "w", ts[0].dtype = DType::f32, ts[0].shape = {2, 3}, ts[0].data = a.data(), ts[0].nbytes = 24;
    ts[1].name = "h", ts[1].dtype = DType::bf16, ts[1].shape = {3}, ts[1].data = b.data(), ts[1].nbytes = 6;
    ts[2].name = "q", ts[2].dtype = DType::i8, ts[2].shape = {5}, ts[2].data = c.data(), ts[2].nbytes = 5;
    write_safetensors(path("x.safetensors"), ts, {{"k", "v"}});
    const std::string bytes = read_bytes(path("x.safetensors"));
    uint64_t n = 0;
    std::memcpy(&n, bytes.data(), 8);
    EXPECT_EQ(n % 8, 0u);
    EXPECT_EQ(bytes[8 + n - 1] == ' ' || bytes[8 + n - 1] == '}', true);
    const SafetensorsSource s = SafetensorsSource::open(path("x.safetensors"));
    EXPECT_EQ(s.metadata().at("k"), "v");
    for (const auto& t : ts) EXPECT_TRUE(same_bytes(t, s.get(t.name))) << t.name;
    EXPECT_FALSE(fs::exists(path("x.safetensors.tmp." + std::to_string(::getpid()))));
    // bad input to the writer
    ts[0].nbytes = 20;
    expect_error([&] { write_safetensors(path("y.safetensors"), ts); }, {"'w'", "20 bytes", "need 24"});
    ts[0].nbytes = 24;
    ts[1].name = "w";
    expect_error([&] { write_safetensors(path("y.safetensors"), ts); }, {"'w'", "twice"});
    EXPECT_FALSE(fs::exists(path("y.safetensors")));
}

TEST_F(Tmp, ShardedWriterMatchesSavePretrainedShape) {
    const SafetensorsSource s = SafetensorsSource::open(kHf + "mixtral");
    const auto files = write_safetensors_sharded(path("m"), s.tensors(), 100000, {{"format", "pt"}});
    ASSERT_GE(files.size(), 4u);  // >= 3 shards + index
    EXPECT_EQ(fs::path(files.back()).filename(), "model.safetensors.index.json");
    EXPECT_EQ(fs::path(files[0]).filename().string().substr(0, 14), "model-00001-of");
    const json idx = read_json(files.back());
    uint64_t total = 0;
    for (const auto& t : s.tensors()) total += t.nbytes;
    EXPECT_EQ(idx.at("metadata").at("total_size").get<uint64_t>(), total);
    EXPECT_EQ(idx.at("weight_map").size(), s.tensors().size());
    for (size_t i = 0; i + 1 < files.size(); ++i) {
        // one tensor may exceed the limit on its own; others stay within it
        const SafetensorsSource shard = SafetensorsSource::open(files[i]);
        uint64_t bytes = 0;
        for (const auto& t : shard.tensors()) bytes += t.nbytes;
        EXPECT_TRUE(bytes <= 100000 || shard.tensors().size() == 1) << files[i];
    }
    const SafetensorsSource r = SafetensorsSource::open(path("m"));
    ASSERT_EQ(r.tensors().size(), s.tensors().size());
    for (const auto& t : s.tensors()) EXPECT_TRUE(same_bytes(t, r.get(t.name))) << t.name;
    // a model within one shard: model.safetensors, no index
    const auto one = write_safetensors_sharded(path("one"), s.tensors(), 1u << 30);
    ASSERT_EQ(one.size(), 1u);
    EXPECT_EQ(fs::path(one[0]).filename(), "model.safetensors");
}

// ---------------------------------------------------------------- bad files

TEST(SafetensorsBad, HeaderProblems) {
    const std::string good_h = R"({"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]}})";
    const std::string data(8, '\0');
    EXPECT_EQ(parse(image(good_h, data)).tensors.size(), 1u);
    expect_error([] { parse(std::string(4, '\0')); }, {"mem.safetensors", "only 4 bytes"});
    expect_error([&] { parse(image(good_h, data, 1000)); }, {"header length 1000", "past the end"});
    expect_error([&] { parse(image(good_h, data, 200000000)); }, {"header length 200000000", "limit"});
    expect_error([&] { parse(image("{\"a\": [1,", "")); }, {"header", "not valid JSON"});
    expect_error([&] { parse(image("[1,2]", "")); }, {"header is a JSON array", "not an object"});
    expect_error([&] { parse(image(std::string("{\"a\xff\":1}"), "")); }, {"not valid JSON"});
    expect_error([&] { parse(image(R"({"a":{"dtype":"F32","shape":[0],"data_offsets":[0,0]},"a":{}})", "")); },
                 {"'a' twice"});
    expect_error([&] { parse(image(R"({"__metadata__":{"k":1}})", "")); }, {"__metadata__ 'k'", "not a string"});
    expect_error([&] { parse(image(R"({"__metadata__":[]})", "")); }, {"__metadata__", "not an object"});
    expect_error([&] { parse(image(std::string(40, '[') + std::string(40, ']'), "")); }, {"deeper"});
}

TEST(SafetensorsBad, TensorEntries) {
    auto one = [](const std::string& entry, size_t data = 8) {
        return image("{\"t\":" + entry + "}", std::string(data, '\0'));
    };
    expect_error([&] { parse(one(R"({"dtype":"Q4","shape":[2],"data_offsets":[0,8]})")); },
                 {"tensor 't'", "unknown dtype 'Q4'"});
    expect_error([&] { parse(one(R"({"dtype":"F8_E4M3","shape":[8],"data_offsets":[0,8]})")); },
                 {"tensor 't'", "F8_E4M3", "does not read"});
    expect_error([&] { parse(one(R"({"dtype":"F32","shape":[-2],"data_offsets":[0,8]})")); },
                 {"tensor 't'", "negative dimension -2"});
    expect_error([&] { parse(one(R"({"dtype":"F32","shape":[2.5],"data_offsets":[0,8]})")); },
                 {"tensor 't'", "not an integer"});
    expect_error([&] { parse(one(R"({"dtype":"F32","shape":[4294967296,4294967296],"data_offsets":[0,8]})")); },
                 {"tensor 't'", "overflows"});
    expect_error([&] { parse(one(R"({"dtype":"F32","shape":[2],"data_offsets":[0]})")); },
                 {"tensor 't'", "data_offsets [0]", "two non-negative integers"});
    expect_error([&] { parse(one(R"({"dtype":"F32","shape":[2],"data_offsets":[8,0]})")); },
                 {"tensor 't'", "end before they begin"});
    expect_error([&] { parse(one(R"({"dtype":"F32","shape":[2],"data_offsets":[0,12]})")); },
                 {"tensor 't'", "12 bytes", "need 8"});
    expect_error([&] { parse(one(R"({"dtype":"F32","shape":[2],"data_offsets":[8,16]})")); },
                 {"tensor 't'", "outside the data area (8 bytes)"});
    expect_error([&] { parse(one(R"({"shape":[2],"data_offsets":[0,8]})")); }, {"tensor 't'", "no 'dtype'"});
    expect_error([&] { parse(one(R"([1])")); }, {"tensor 't'", "not an object"});
}

TEST(SafetensorsBad, Coverage) {
    const std::string a = R"("a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]})";
    // overlap
    expect_error([&] { parse(image("{" + a + R"(,"b":{"dtype":"F32","shape":[2],"data_offsets":[4,12]}})", std::string(12, 0))); },
                 {"tensor 'b'", "overlaps tensor 'a'"});
    // gap (the reference reader rejects it too)
    expect_error([&] { parse(image("{" + a + R"(,"b":{"dtype":"F32","shape":[1],"data_offsets":[12,16]}})", std::string(16, 0))); },
                 {"4 bytes", "before tensor 'b'", "no gaps"});
    // bytes after the last tensor
    expect_error([&] { parse(image("{" + a + "}", std::string(10, 0))); }, {"10 bytes", "cover only 8"});
    // zero-sized tensors may sit anywhere on a boundary
    EXPECT_EQ(parse(image("{" + a + R"(,"z":{"dtype":"F32","shape":[0,3],"data_offsets":[8,8]}})", std::string(8, 0)))
                  .tensors.size(),
              2u);
}

TEST_F(Tmp, BadFilesNameTheFile) {
    const std::string good = read_bytes(kHf + "llama/model.safetensors");
    write_bytes(path("cut.safetensors"), good.substr(0, good.size() - 100));
    expect_error([&] { SafetensorsSource::open(path("cut.safetensors")); },
                 {path("cut.safetensors"), "outside the data area"});
    write_bytes(path("tiny.safetensors"), good.substr(0, 5));
    expect_error([&] { SafetensorsSource::open(path("tiny.safetensors")); }, {path("tiny.safetensors"), "only 5 bytes"});
    expect_error([&] { SafetensorsSource::open(path("none.safetensors")); }, {path("none.safetensors"), "cannot open"});
    expect_error([&] { SafetensorsSource::open(dir); }, {dir, "neither model.safetensors"});
    // A flipped length byte: the header runs into the data
    std::string bad = good;
    bad[1] = (char)(bad[1] + 1);
    write_bytes(path("len.safetensors"), bad);
    expect_error([&] { SafetensorsSource::open(path("len.safetensors")); }, {path("len.safetensors")});
}

// ---------------------------------------------------------------- sharded indexes

class Index : public Tmp {
protected:
    // a 2-shard model of tensors a (shard 1), b and c (shard 2), and its index
    void SetUp() override {
        Tmp::SetUp();
        static const float v[4] = {1, 2, 3, 4};
        auto t = [&](const char* n) {
            TensorView x;
            x.name = n, x.dtype = DType::f32, x.shape = {4}, x.data = v, x.nbytes = 16;
            return x;
        };
        write_safetensors(path("s1.safetensors"), {t("a")});
        write_safetensors(path("s2.safetensors"), {t("b"), t("c")});
    }
    void index(const json& wm) { write_bytes(path("model.safetensors.index.json"), json{{"weight_map", wm}}.dump()); }
};

TEST_F(Index, Good) {
    index({{"a", "s1.safetensors"}, {"b", "s2.safetensors"}, {"c", "s2.safetensors"}});
    const SafetensorsSource s = SafetensorsSource::open(dir);
    EXPECT_EQ(s.tensors().size(), 3u);
    EXPECT_EQ(s.file_of("c"), path("s2.safetensors"));
    EXPECT_EQ(s.get("b").f32()[3], 4.0f);
}

TEST_F(Index, Errors) {
    index({{"a", "s1.safetensors"}, {"b", "s3.safetensors"}, {"c", "s2.safetensors"}});
    expect_error([&] { SafetensorsSource::open(dir); }, {"index.json", "shard 's3.safetensors'", "not a file"});
    index({{"a", "s1.safetensors"}, {"b", "s2.safetensors"}, {"c", "s2.safetensors"}, {"d", "s2.safetensors"}});
    expect_error([&] { SafetensorsSource::open(dir); }, {"tensor 'd'", "'s2.safetensors'", "does not hold it"});
    index({{"a", "s1.safetensors"}, {"b", "s2.safetensors"}});
    expect_error([&] { SafetensorsSource::open(dir); }, {"s2.safetensors", "tensor 'c'", "does not list"});
    index({{"a", "s1.safetensors"}, {"b", "s1.safetensors"}, {"c", "s2.safetensors"}});
    expect_error([&] { SafetensorsSource::open(dir); }, {"tensor 'b'", "puts in 's1.safetensors'"});
    index({{"a", "../s1.safetensors"}});
    expect_error([&] { SafetensorsSource::open(dir); }, {"'../s1.safetensors'", "not a file name inside"});
    write_bytes(path("model.safetensors.index.json"), "{\"metadata\": {}}");
    expect_error([&] { SafetensorsSource::open(dir); }, {"no 'weight_map'"});
    // the same tensor in two shards
    static const float v[4] = {};
    TensorView x;
    x.name = "a", x.dtype = DType::f32, x.shape = {4}, x.data = v, x.nbytes = 16;
    write_safetensors(path("s3.safetensors"), {x});
    index({{"a", "s1.safetensors"}, {"b", "s2.safetensors"}, {"c", "s2.safetensors"}, {"z", "s3.safetensors"}});
    expect_error([&] { SafetensorsSource::open(dir); }, {"tensor 'a'", "two shards", "s1.safetensors", "s3.safetensors"});
}

// ---------------------------------------------------------------- config.json

namespace {

void expect_same(const HfConfig& a, const HfConfig& b) {
    EXPECT_EQ(a.model_type, b.model_type);
    EXPECT_EQ(a.dtype, b.dtype);
    EXPECT_EQ(a.vocab_size, b.vocab_size);
    EXPECT_EQ(a.hidden_size, b.hidden_size);
    EXPECT_EQ(a.num_hidden_layers, b.num_hidden_layers);
    EXPECT_EQ(a.num_attention_heads, b.num_attention_heads);
    EXPECT_EQ(a.num_key_value_heads, b.num_key_value_heads);
    EXPECT_EQ(a.head_dim, b.head_dim);
    EXPECT_EQ(a.intermediate_size, b.intermediate_size);
    EXPECT_EQ(a.expert_intermediate_size, b.expert_intermediate_size);
    EXPECT_EQ(a.shared_expert_intermediate_size, b.shared_expert_intermediate_size);
    EXPECT_EQ(a.max_position_embeddings, b.max_position_embeddings);
    EXPECT_EQ(a.rms_norm_eps, b.rms_norm_eps);
    EXPECT_EQ(a.tie_word_embeddings, b.tie_word_embeddings);
    EXPECT_EQ(a.rope_type, b.rope_type);
    EXPECT_EQ(a.rope_theta, b.rope_theta);
    EXPECT_EQ(a.rope_factor, b.rope_factor);
    EXPECT_EQ(a.rope_low_freq_factor, b.rope_low_freq_factor);
    EXPECT_EQ(a.rope_high_freq_factor, b.rope_high_freq_factor);
    EXPECT_EQ(a.rope_original_max_position_embeddings, b.rope_original_max_position_embeddings);
    EXPECT_EQ(a.qkv_bias, b.qkv_bias);
    EXPECT_EQ(a.o_bias, b.o_bias);
    EXPECT_EQ(a.qk_norm, b.qk_norm);
    EXPECT_EQ(a.num_experts, b.num_experts);
    EXPECT_EQ(a.num_experts_per_tok, b.num_experts_per_tok);
    EXPECT_EQ(a.norm_topk_prob, b.norm_topk_prob);
    EXPECT_EQ(a.shared_expert_gate, b.shared_expert_gate);
    EXPECT_EQ(a.decoder_sparse_step, b.decoder_sparse_step);
    EXPECT_EQ(a.mlp_only_layers, b.mlp_only_layers);
    EXPECT_EQ(a.layer_moe, b.layer_moe);
    EXPECT_EQ(a.router_aux_loss_coef, b.router_aux_loss_coef);
    EXPECT_EQ(a.bos_token_id, b.bos_token_id);
    EXPECT_EQ(a.pad_token_id, b.pad_token_id);
    EXPECT_EQ(a.eos_token_ids, b.eos_token_ids);
}

// The transformers 4 spelling of a transformers 5 config: flat rope_theta / rope_scaling, torch_dtype.
json to_v4(json j) {
    const json rp = j.at("rope_parameters");
    j.erase("rope_parameters");
    j["rope_theta"] = rp.at("rope_theta");
    json rest = rp;
    rest.erase("rope_theta");
    if (rest.at("rope_type") == "default") j["rope_scaling"] = nullptr;
    else {
        rest["type"] = rest.at("rope_type");
        rest.erase("rope_type");
        j["rope_scaling"] = rest;
    }
    j["torch_dtype"] = j.at("dtype");
    j.erase("dtype");
    return j;
}

json cfg(const std::string& m) { return read_json(kHf + m + "/config.json"); }

}  // namespace

TEST(HfConfig, CommittedConfigs) {
    struct Want {
        std::string m;
        HfFamily fam;
        int64_t E, D;
        std::vector<bool> moe;
        bool qkv_bias, tie, norm_topk;
        HfQkNorm qk;
        int64_t Fexp, Fs;
    };
    const std::vector<Want> wants = {
        {"mixtral", HfFamily::mixtral, 4, 16, {true, true}, false, false, true, HfQkNorm::none, 32, 0},
        {"mixtral_bf16", HfFamily::mixtral, 4, 16, {true, true}, false, false, true, HfQkNorm::none, 32, 0},
        {"qwen2_moe", HfFamily::qwen2_moe, 4, 16, {false, true}, true, false, false, HfQkNorm::none, 32, 48},
        {"qwen2_moe_norm", HfFamily::qwen2_moe, 4, 16, {false, true}, true, false, true, HfQkNorm::none, 32, 48},
        {"qwen3_moe", HfFamily::qwen3_moe, 4, 24, {true, true}, false, false, true, HfQkNorm::per_head, 32, 0},
        {"olmoe", HfFamily::olmoe, 4, 16, {true, true}, false, false, false, HfQkNorm::full, 32, 0},
        {"llama", HfFamily::llama, 0, 16, {false, false}, false, false, false, HfQkNorm::none, 0, 0},
        {"llama_tied", HfFamily::llama, 0, 16, {false, false}, false, true, false, HfQkNorm::none, 0, 0},
        {"mistral", HfFamily::mistral, 0, 16, {false, false}, false, false, false, HfQkNorm::none, 0, 0},
        {"qwen2", HfFamily::qwen2, 0, 16, {false, false}, true, false, false, HfQkNorm::none, 0, 0},
        {"qwen3", HfFamily::qwen3, 0, 16, {false, false}, false, true, false, HfQkNorm::per_head, 0, 0},
    };
    for (const auto& w : wants) {
        SCOPED_TRACE(w.m);
        const HfConfig c = read_hf_config(kHf + w.m);
        EXPECT_EQ(c.family, w.fam);
        EXPECT_EQ(c.model_type, hf_family_name(w.fam));
        EXPECT_EQ(c.vocab_size, 256);
        EXPECT_EQ(c.hidden_size, 64);
        EXPECT_EQ(c.num_hidden_layers, 2);
        EXPECT_EQ(c.num_attention_heads, 4);
        EXPECT_EQ(c.num_key_value_heads, 2);
        EXPECT_EQ(c.head_dim, w.D);
        EXPECT_EQ(c.num_experts, w.E);
        EXPECT_EQ(c.num_experts_per_tok, w.E ? 2 : 0);
        EXPECT_EQ(c.layer_moe, w.moe);
        EXPECT_EQ(c.qkv_bias, w.qkv_bias);
        EXPECT_FALSE(c.o_bias);
        EXPECT_EQ(c.tie_word_embeddings, w.tie);
        EXPECT_EQ(c.norm_topk_prob, w.norm_topk);
        EXPECT_EQ(c.qk_norm, w.qk);
        EXPECT_EQ(c.expert_intermediate_size, w.Fexp);
        EXPECT_EQ(c.shared_expert_intermediate_size, w.Fs);
        EXPECT_EQ(c.shared_expert_gate, w.Fs > 0);
        EXPECT_EQ(c.rope_type, "default");
        EXPECT_EQ(c.rope_theta, w.fam == HfFamily::mixtral ? 1e6 : 1e4);
        EXPECT_EQ(c.max_position_embeddings, 256);
        EXPECT_EQ(c.bos_token_id, std::optional<int64_t>(1));
        EXPECT_EQ(c.eos_token_ids, std::vector<int64_t>{2});
        EXPECT_TRUE(c.generation.present);
    }
    const HfConfig m = read_hf_config(kHf + "mixtral");
    EXPECT_EQ(m.rms_norm_eps, 1e-5);
    EXPECT_EQ(m.generation.eos_token_ids, (std::vector<int64_t>{2, 5}));
    EXPECT_EQ(m.generation.temperature, std::optional<double>(0.7));
    EXPECT_EQ(m.generation.top_p, std::optional<double>(0.9));
    EXPECT_EQ(m.generation.top_k, std::optional<int64_t>(40));
    EXPECT_EQ(m.generation.repetition_penalty, std::optional<double>(1.1));
    EXPECT_EQ(m.generation.do_sample, std::optional<bool>(true));
    EXPECT_EQ(m.generation.pad_token_id, std::optional<int64_t>(0));
    EXPECT_EQ(read_hf_config(kHf + "qwen2_moe_norm").mlp_only_layers, std::vector<int64_t>{0});
    EXPECT_EQ(read_hf_config(kHf + "qwen2").rms_norm_eps, 1e-6);
}

TEST(HfConfig, V4AndV5FormsAgree) {
    for (const auto& m : kModels) {
        SCOPED_TRACE(m);
        const json v5 = cfg(m);
        expect_same(parse_hf_config(v5, "v5"), parse_hf_config(to_v4(v5), "v4"));
    }
    // scaled RoPE in both spellings
    json v5 = cfg("llama");
    v5["rope_parameters"] = {{"rope_type", "llama3"}, {"rope_theta", 500000.0}, {"factor", 8.0},
                             {"low_freq_factor", 1.0}, {"high_freq_factor", 4.0},
                             {"original_max_position_embeddings", 8192}};
    const HfConfig a = parse_hf_config(v5, "v5"), b = parse_hf_config(to_v4(v5), "v4");
    expect_same(a, b);
    EXPECT_EQ(a.rope_type, "llama3");
    EXPECT_EQ(a.rope_theta, 500000.0);
    EXPECT_EQ(a.rope_factor, 8.0);
    EXPECT_EQ(a.rope_high_freq_factor, 4.0);
    EXPECT_EQ(a.rope_original_max_position_embeddings, 8192);
    v5["rope_parameters"] = {{"rope_type", "linear"}, {"rope_theta", 10000.0}, {"factor", 2.0}};
    expect_same(parse_hf_config(v5, "v5"), parse_hf_config(to_v4(v5), "v4"));
    EXPECT_EQ(parse_hf_config(v5, "v5").rope_factor, 2.0);
}

TEST(HfConfig, DefaultsOfTheConfigClasses) {
    // a bare config gets transformers 5.23's class defaults
    const HfConfig mx = parse_hf_config({{"model_type", "mixtral"}}, "c");
    EXPECT_EQ(mx.vocab_size, 32000);
    EXPECT_EQ(mx.num_key_value_heads, 8);
    EXPECT_EQ(mx.num_experts, 8);
    EXPECT_EQ(mx.rope_theta, 1e6);
    EXPECT_FALSE(mx.tie_word_embeddings);
    const HfConfig q3 = parse_hf_config({{"model_type", "qwen3"}}, "c");
    EXPECT_EQ(q3.head_dim, 128);
    EXPECT_EQ(q3.num_key_value_heads, 32);
    const HfConfig ll = parse_hf_config({{"model_type", "llama"}, {"num_attention_heads", 8}}, "c");
    EXPECT_EQ(ll.num_key_value_heads, 8);
    EXPECT_EQ(ll.head_dim, 512);
    EXPECT_EQ(ll.eos_token_ids, std::vector<int64_t>{2});
    const HfConfig ol = parse_hf_config({{"model_type", "olmoe"}}, "c");
    EXPECT_EQ(ol.pad_token_id, std::optional<int64_t>(1));
    EXPECT_EQ(ol.router_aux_loss_coef, 0.01);
    const HfConfig q2 = parse_hf_config({{"model_type", "qwen2_moe"}, {"num_hidden_layers", 4}, {"decoder_sparse_step", 2},
                                         {"mlp_only_layers", {3}}},
                                        "c");
    EXPECT_EQ(q2.layer_moe, (std::vector<bool>{false, true, false, false}));
    EXPECT_TRUE(q2.qkv_bias);
    EXPECT_EQ(q2.shared_expert_intermediate_size, 5632);
    // both expert-count spellings
    EXPECT_EQ(parse_hf_config({{"model_type", "qwen3_moe"}, {"num_local_experts", 16}, {"num_experts_per_tok", 2}}, "c")
                  .num_experts,
              16);
    EXPECT_EQ(parse_hf_config({{"model_type", "qwen3_moe"}, {"num_experts", 16}, {"num_experts_per_tok", 2}}, "c")
                  .num_experts,
              16);
    // eos: a list, or null
    EXPECT_EQ(parse_hf_config({{"model_type", "qwen2"}, {"eos_token_id", {7, 9}}}, "c").eos_token_ids,
              (std::vector<int64_t>{7, 9}));
    EXPECT_TRUE(parse_hf_config({{"model_type", "llama"}, {"eos_token_id", nullptr}}, "c").eos_token_ids.empty());
    // attention_bias: biases on q, k, v and o
    const HfConfig lb = parse_hf_config({{"model_type", "llama"}, {"attention_bias", true}}, "c");
    EXPECT_TRUE(lb.qkv_bias && lb.o_bias);
    const auto map = hf_layer_map(lb, 0, HfExpertLayout::per_expert);
    EXPECT_TRUE(std::any_of(map.begin(), map.end(), [](const HfTensorMap& m) {
        return m.moe_name == "blk.0.attn_output.bias" && m.hf_names[0] == "model.layers.0.self_attn.o_proj.bias";
    }));
    // a window no shorter than the context is no window
    EXPECT_NO_THROW(parse_hf_config({{"model_type", "mistral"}, {"sliding_window", 131072}}, "c"));
    EXPECT_NO_THROW(parse_hf_config({{"model_type", "mistral"}, {"sliding_window", nullptr}}, "c"));
    EXPECT_NO_THROW(parse_hf_config({{"model_type", "qwen2"}, {"sliding_window", 16}, {"use_sliding_window", false}}, "c"));
    // use_sliding_window with every layer below max_window_layers: no layer slides in qwen2
    EXPECT_NO_THROW(parse_hf_config({{"model_type", "qwen2"}, {"num_hidden_layers", 2}, {"sliding_window", 16},
                                     {"use_sliding_window", true}, {"max_window_layers", 2}},
                                    "c"));
}

TEST(HfConfig, Errors) {
    json base = cfg("llama");
    auto with = [&](const char* k, const json& v) {
        json j = base;
        j[k] = v;
        return j;
    };
    expect_error([&] { parse_hf_config(with("model_type", "gpt2"), "cfg.json"); },
                 {"cfg.json", "model_type 'gpt2'", "not supported", "mixtral", "qwen3_moe", "olmoe"});
    expect_error([&] { parse_hf_config(json{{"vocab_size", 3}}, "cfg.json"); }, {"no model_type"});
    for (const char* kind : {"dynamic", "yarn", "longrope"}) {
        json j = with("rope_parameters", {{"rope_type", kind}, {"rope_theta", 10000.0}, {"factor", 2.0}});
        expect_error([&] { parse_hf_config(j, "cfg.json"); }, {"RoPE scaling '" + std::string(kind) + "'", "rope_parameters"});
        expect_error([&] { parse_hf_config(to_v4(j), "cfg.json"); }, {"'" + std::string(kind) + "'", "rope_scaling"});
    }
    expect_error([&] { parse_hf_config(with("rope_parameters", {{"rope_type", "linear"}}), "cfg.json"); },
                 {"rope_parameters.factor", "missing"});
    expect_error([&] { parse_hf_config(with("partial_rotary_factor", 0.5), "cfg.json"); }, {"partial_rotary_factor"});
    expect_error([&] { parse_hf_config(with("mlp_bias", true), "cfg.json"); }, {"mlp_bias"});
    expect_error([&] { parse_hf_config(with("hidden_act", "gelu"), "cfg.json"); }, {"hidden_act 'gelu'"});
    expect_error([&] { parse_hf_config(with("hidden_size", "64"), "cfg.json"); }, {"'hidden_size'", "not an integer"});
    expect_error([&] { parse_hf_config(with("num_attention_heads", 0), "cfg.json"); }, {"num_attention_heads", "positive"});
    expect_error([&] { parse_hf_config(with("num_key_value_heads", 3), "cfg.json"); }, {"num_key_value_heads = 3"});
    expect_error([&] { parse_hf_config(with("num_hidden_layers", int64_t(1) << 40), "cfg.json"); },
                 {"num_hidden_layers", "absurdly large"});
    expect_error([&] { parse_hf_config(with("hidden_size", int64_t(1) << 40), "cfg.json"); },
                 {"hidden_size", "absurdly large"});
    expect_error([&] { parse_hf_config(with("final_logit_softcapping", 30.0), "cfg.json"); }, {"final_logit_softcapping"});
    // sliding windows
    json q2 = cfg("qwen2");
    q2["use_sliding_window"] = true;
    q2["sliding_window"] = 16;
    q2["max_window_layers"] = 1;
    // the saved layer_types (all full_attention here) win over the rule, as in transformers
    EXPECT_NO_THROW(parse_hf_config(q2, "cfg.json"));
    q2["layer_types"] = {"sliding_attention", "full_attention"};
    expect_error([&] { parse_hf_config(q2, "cfg.json"); }, {"sliding_window = 16", "use_sliding_window", "layers [0]"});
    q2.erase("layer_types");
    expect_error([&] { parse_hf_config(q2, "cfg.json"); }, {"sliding_window = 16", "layers [1]"});
    json ms = cfg("mistral");
    ms["sliding_window"] = 128;
    expect_error([&] { parse_hf_config(ms, "cfg.json"); }, {"sliding_window = 128", "not supported"});
    ms.erase("sliding_window");  // the class default, 4096, is still shorter than 131072
    ms["max_position_embeddings"] = 131072;
    expect_error([&] { parse_hf_config(ms, "cfg.json"); }, {"sliding_window = 4096"});
    json lt = base;
    lt["layer_types"] = {"full_attention", "chunked_attention"};
    expect_error([&] { parse_hf_config(lt, "cfg.json"); }, {"layer_types", "chunked_attention"});
    // MoE specifics
    json ol = cfg("olmoe");
    ol["clip_qkv"] = 8.0;
    expect_error([&] { parse_hf_config(ol, "cfg.json"); }, {"clip_qkv"});
    json mx = cfg("mixtral");
    mx["num_experts_per_tok"] = 5;
    expect_error([&] { parse_hf_config(mx, "cfg.json"); }, {"num_experts_per_tok = 5"});
    mx = cfg("mixtral");
    mx["num_experts"] = 6;
    expect_error([&] { parse_hf_config(mx, "cfg.json"); }, {"num_experts = 6", "num_local_experts = 4", "disagree"});
    expect_error([&] { parse_hf_config_text("{not json", "cfg.json"); }, {"cfg.json", "not valid JSON"});
    expect_error([&] { read_hf_config("/nonexistent/dir/config.json"); }, {"/nonexistent/dir/config.json"});
}

// The per-family layouts the name map produces, as docs/formats.md prints them.
TEST(HfNames, LayoutsPerFamily) {
    auto names = [](const std::string& m, HfExpertLayout layout) {
        const HfConfig c = read_hf_config(kHf + m);
        std::map<std::string, std::string> r;
        for (const auto& e : hf_tensor_map(c, layout)) r[e.moe_name] = e.hf_names.back();
        return r;
    };
    const auto mx = names("mixtral", HfExpertLayout::per_expert);
    EXPECT_EQ(mx.at("blk.1.ffn_gate_inp"), "model.layers.1.block_sparse_moe.gate.weight");
    EXPECT_EQ(mx.at("blk.1.ffn_down_exps"), "model.layers.1.block_sparse_moe.experts.3.w2.weight");
    EXPECT_EQ(mx.at("output"), "lm_head.weight");
    const auto mf = names("mixtral", HfExpertLayout::fused);
    EXPECT_EQ(mf.at("blk.1.ffn_gate_inp"), "model.layers.1.mlp.gate.weight");
    EXPECT_EQ(mf.at("blk.1.ffn_up_exps"), "model.layers.1.mlp.experts.gate_up_proj");
    EXPECT_EQ(mf.at("blk.1.ffn_down_exps"), "model.layers.1.mlp.experts.down_proj");
    const auto q2 = names("qwen2_moe", HfExpertLayout::per_expert);
    EXPECT_EQ(q2.at("blk.0.ffn_gate"), "model.layers.0.mlp.gate_proj.weight");
    EXPECT_EQ(q2.at("blk.1.ffn_up_exps"), "model.layers.1.mlp.experts.3.up_proj.weight");
    EXPECT_EQ(q2.at("blk.1.ffn_gate_inp_shexp"), "model.layers.1.mlp.shared_expert_gate.weight");
    EXPECT_EQ(q2.at("blk.1.ffn_down_shexp"), "model.layers.1.mlp.shared_expert.down_proj.weight");
    EXPECT_EQ(q2.at("blk.0.attn_q.bias"), "model.layers.0.self_attn.q_proj.bias");
    EXPECT_EQ(q2.count("blk.0.attn_output.bias"), 0u);
    const auto q3 = names("qwen3_moe", HfExpertLayout::per_expert);
    EXPECT_EQ(q3.at("blk.0.attn_q_norm"), "model.layers.0.self_attn.q_norm.weight");
    const auto tied = names("llama_tied", HfExpertLayout::per_expert);
    EXPECT_EQ(tied.count("output"), 0u);
}
