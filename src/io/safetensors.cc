#include "io/safetensors.h"

#include <fcntl.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <filesystem>
#include <set>

#include <nlohmann/json.hpp>

#include "core/error.h"
#include "io/atomic_file.h"
#include "io/tensor_file.h"

namespace moe {

namespace fs = std::filesystem;
using nlohmann::json;

// The reference reader's limit: a larger header is taken for a damaged or hostile file.
static constexpr uint64_t kMaxHeader = 100'000'000;
// Nesting deeper than this cannot be a valid header (tensor entries are 3 levels deep).
static constexpr int kMaxDepth = 16;

// rank: the position in the reference implementation's Dtype enum (BOOL, U8, I8, F8_E5M2, F8_E4M3,
// I16, U16, F16, BF16, I32, U32, F32, F64, I64, U64), by which its writer orders tensors (largest
// rank first, then by name); the writer here uses the same order so that it writes the same bytes.
static const struct {
    const char* name;
    DType type;
    int rank;
} kDTypes[] = {{"F64", DType::f64, 12}, {"F32", DType::f32, 11}, {"F16", DType::f16, 7}, {"BF16", DType::bf16, 8},
               {"I64", DType::i64, 13}, {"I32", DType::i32, 9},  {"I16", DType::i16, 5}, {"I8", DType::i8, 2},
               {"U8", DType::u8, 1},    {"BOOL", DType::boolean, 0}};

static int dtype_rank(DType t) {
    for (const auto& d : kDTypes)
        if (d.type == t) return d.rank;
    return -1;
}

// Names the format defines that moe does not read: an error that says so, not "unknown".
static const char* const kUnsupported[] = {"U16", "U32", "U64", "F8_E5M2", "F8_E4M3", "F8_E4M3FN", "F8_E8M0",
                                           "E8M0", "F4", "F6_E2M3", "F6_E3M2", "C64"};

const char* safetensors_dtype_name(DType t) {
    for (const auto& d : kDTypes)
        if (d.type == t) return d.name;
    return "?";
}

bool safetensors_dtype_from_name(std::string_view s, DType& out) {
    for (const auto& d : kDTypes)
        if (s == d.name) return out = d.type, true;
    return false;
}

static std::string supported_list() {
    std::string r;
    for (const auto& d : kDTypes) {
        if (!r.empty()) r += ", ";
        r += d.name;
    }
    return r;
}

// Parses JSON rejecting duplicate keys (nlohmann keeps the last silently; a header where a tensor
// appears twice is damaged) and absurd nesting. `what` names the text in errors.
static json parse_strict(std::string_view text, const std::string& where, const char* what) {
    std::vector<std::set<std::string>> keys;
    std::string dup;
    bool too_deep = false;
    auto cb = [&](int depth, json::parse_event_t ev, json& v) {
        if (depth > kMaxDepth) {
            too_deep = true;
            return false;
        }
        switch (ev) {
            case json::parse_event_t::object_start: keys.emplace_back(); break;
            case json::parse_event_t::object_end: if (!keys.empty()) keys.pop_back(); break;
            case json::parse_event_t::key:
                if (!keys.empty() && !keys.back().insert(v.get<std::string>()).second && dup.empty())
                    dup = v.get<std::string>();
                break;
            default: break;
        }
        return true;
    };
    json j;
    try {
        j = json::parse(text.begin(), text.end(), cb);
    } catch (const json::exception& e) {
        fail("'", where, "': the ", what, " is not valid JSON: ", e.what());
    }
    if (too_deep) fail("'", where, "': the ", what, " nests deeper than ", kMaxDepth, " levels");
    if (!dup.empty()) fail("'", where, "': the ", what, " has the key '", dup, "' twice");
    return j;
}

static uint64_t read_u64le(const unsigned char* p) {
    uint64_t v = 0;
    for (int i = 7; i >= 0; --i) v = v << 8 | p[i];
    return v;
}

static std::string shape_str(const std::vector<int64_t>& s) {
    std::string r = "[";
    for (size_t i = 0; i < s.size(); ++i) {
        if (i) r += ',';
        r += std::to_string(s[i]);
    }
    return r + "]";
}

// One header entry: dtype, shape and data_offsets, each checked on its own.
static SafetensorsHeader::Entry parse_entry(const std::string& name, const json& v, const std::string& where) {
    SafetensorsHeader::Entry t;
    t.name = name;
    if (!v.is_object()) fail("'", where, "': tensor '", name, "' is described by ", v.type_name(), ", not an object");
    auto field = [&](const char* key) -> const json& {
        auto it = v.find(key);
        if (it == v.end()) fail("'", where, "': tensor '", name, "' has no '", key, "'");
        return *it;
    };
    const json& dt = field("dtype");
    if (!dt.is_string()) fail("'", where, "': tensor '", name, "' has a dtype that is not a string: ", dt.dump());
    const std::string ds = dt.get<std::string>();
    if (!safetensors_dtype_from_name(ds, t.dtype)) {
        for (const char* u : kUnsupported)
            if (ds == u)
                fail("'", where, "': tensor '", name, "' has dtype ", ds, ", which moe does not read (it reads ",
                     supported_list(), ")");
        fail("'", where, "': tensor '", name, "' has an unknown dtype '", ds, "' (moe reads ", supported_list(), ")");
    }
    const json& sh = field("shape");
    if (!sh.is_array()) fail("'", where, "': tensor '", name, "' has a shape that is not a list: ", sh.dump());
    uint64_t numel = 1;
    for (const json& d : sh) {
        if (!d.is_number_unsigned()) {
            if (d.is_number_integer())
                fail("'", where, "': tensor '", name, "' has a negative dimension ", d.dump(), " in its shape ", sh.dump());
            fail("'", where, "': tensor '", name, "' has a dimension that is not an integer: ", d.dump());
        }
        const uint64_t n = d.get<uint64_t>();
        if (n > (uint64_t)INT64_MAX || __builtin_mul_overflow(numel, n, &numel) || numel > (uint64_t)INT64_MAX)
            fail("'", where, "': tensor '", name, "' has a shape ", sh.dump(), " whose element count overflows");
        t.shape.push_back((int64_t)n);
    }
    uint64_t nbytes = 0;
    if (__builtin_mul_overflow(numel, (uint64_t)dtype_size(t.dtype), &nbytes))
        fail("'", where, "': tensor '", name, "' has a shape ", sh.dump(), " whose byte size overflows");
    const json& off = field("data_offsets");
    if (!off.is_array() || off.size() != 2 || !off[0].is_number_unsigned() || !off[1].is_number_unsigned())
        fail("'", where, "': tensor '", name, "' has data_offsets ", off.dump(), ", not two non-negative integers");
    t.begin = off[0].get<uint64_t>();
    t.end = off[1].get<uint64_t>();
    if (t.end < t.begin)
        fail("'", where, "': tensor '", name, "' has data_offsets [", t.begin, ", ", t.end, "] that end before they begin");
    if (t.end - t.begin != nbytes)
        fail("'", where, "': tensor '", name, "' has ", t.end - t.begin, " bytes in data_offsets [", t.begin, ", ", t.end,
             "] but its dtype ", ds, " and shape ", shape_str(t.shape), " need ", nbytes);
    return t;
}

SafetensorsHeader parse_safetensors(const unsigned char* data, size_t size, const std::string& where) {
    if (size < 8) fail("'", where, "' is not a safetensors file: it has only ", size, " bytes (the header length alone is 8)");
    const uint64_t n = read_u64le(data);
    if (n > kMaxHeader)
        fail("'", where, "': header length ", n, " is larger than the format's limit of ", kMaxHeader,
             " bytes (a damaged file, or not safetensors)");
    if (n > size - 8) fail("'", where, "': header length ", n, " runs past the end of the file (", size, " bytes)");
    const std::string_view text(reinterpret_cast<const char*>(data + 8), n);
    const json h = parse_strict(text, where, "header");
    if (!h.is_object()) fail("'", where, "': the header is a JSON ", h.type_name(), ", not an object");
    SafetensorsHeader r;
    r.data_start = 8 + n;
    const uint64_t data_len = size - r.data_start;
    for (auto it = h.begin(); it != h.end(); ++it) {
        if (it.key() == "__metadata__") {
            if (it->is_null()) continue;
            if (!it->is_object()) fail("'", where, "': __metadata__ is a JSON ", it->type_name(), ", not an object");
            for (auto m = it->begin(); m != it->end(); ++m) {
                if (!m->is_string())
                    fail("'", where, "': __metadata__ '", m.key(), "' is ", m->dump(), ", not a string");
                r.metadata[m.key()] = m->get<std::string>();
            }
            continue;
        }
        r.tensors.push_back(parse_entry(it.key(), *it, where));
    }
    // Sorted by offset the tensors must tile [0, data_len): the reference reader's rule.
    std::stable_sort(r.tensors.begin(), r.tensors.end(), [](const auto& a, const auto& b) {
        return a.begin != b.begin ? a.begin < b.begin : a.end < b.end;
    });
    uint64_t pos = 0;
    const SafetensorsHeader::Entry* prev = nullptr;
    for (const auto& t : r.tensors) {
        if (t.end > data_len)
            fail("'", where, "': tensor '", t.name, "' has data_offsets [", t.begin, ", ", t.end,
                 "] outside the data area (", data_len, " bytes)");
        if (t.begin < pos)
            fail("'", where, "': tensor '", t.name, "' (bytes ", t.begin, "..", t.end, ") overlaps tensor '", prev->name,
                 "' (bytes ", prev->begin, "..", prev->end, ")");
        if (t.begin > pos)
            fail("'", where, "': ", t.begin - pos, " bytes of the data area before tensor '", t.name, "' (at ", pos, "..",
                 t.begin, ") belong to no tensor (the format allows no gaps)");
        pos = t.end;
        prev = &t;
    }
    if (pos != data_len)
        fail("'", where, "': the data area has ", data_len, " bytes but the tensors cover only ", pos,
             " (the format requires them to cover it exactly)");
    return r;
}

static bool plain_relative(const std::string& f) {
    if (f.empty() || f[0] == '/') return false;
    for (const auto& part : fs::path(f))
        if (part == "..") return false;
    return true;
}

std::map<std::string, std::string> parse_safetensors_index(std::string_view text, const std::string& where) {
    const json j = parse_strict(text, where, "index");
    if (!j.is_object()) fail("'", where, "': the index is a JSON ", j.type_name(), ", not an object");
    auto wm = j.find("weight_map");
    if (wm == j.end() || !wm->is_object()) fail("'", where, "': the index has no 'weight_map' object");
    std::map<std::string, std::string> r;
    for (auto it = wm->begin(); it != wm->end(); ++it) {
        if (!it->is_string()) fail("'", where, "': weight_map['", it.key(), "'] is ", it->dump(), ", not a file name");
        const std::string f = it->get<std::string>();
        if (!plain_relative(f))
            fail("'", where, "': weight_map['", it.key(), "'] = '", f, "' is not a file name inside the model directory");
        r[it.key()] = f;
    }
    return r;
}

void SafetensorsSource::add_file(const std::string& path, const std::map<std::string, std::string>* index_map) {
    auto file = MappedFile::open(path);
    SafetensorsHeader h = parse_safetensors(file->data(), file->size(), path);
    const std::string base = fs::path(path).filename().string();
    if (files_.empty()) metadata_ = h.metadata;
    const size_t fi = files_.size();
    for (auto& e : h.tensors) {
        auto seen = file_of_.find(e.name);
        if (seen != file_of_.end())
            fail("tensor '", e.name, "' is in two shards: '", files_[seen->second], "' and '", path, "'");
        if (index_map) {
            auto it = index_map->find(e.name);
            if (it == index_map->end())
                fail("'", path, "' holds tensor '", e.name, "', which the index '", where_, "' does not list");
            if (it->second != base)
                fail("'", path, "' holds tensor '", e.name, "', which the index '", where_, "' puts in '", it->second,
                     "'");
        }
        TensorView v;
        v.name = e.name;
        v.dtype = e.dtype;
        v.shape = std::move(e.shape);
        v.data = file->data() + h.data_start + e.begin;
        v.nbytes = e.end - e.begin;
        file_of_[v.name] = fi;
        add(std::move(v), *file);
    }
    files_.push_back(path);
    keep(std::move(file));
}

SafetensorsSource SafetensorsSource::open(const std::string& path) {
    std::error_code ec;
    std::string file = path, index;
    if (fs::is_directory(path, ec)) {
        const fs::path dir(path);
        if (fs::exists(dir / "model.safetensors", ec)) file = (dir / "model.safetensors").string();
        else if (fs::exists(dir / "model.safetensors.index.json", ec)) index = (dir / "model.safetensors.index.json").string();
        else fail("'", path, "' holds neither model.safetensors nor model.safetensors.index.json");
    } else if (path.size() >= 11 && path.compare(path.size() - 11, 11, ".index.json") == 0) {
        index = path;
    }
    SafetensorsSource s;
    if (index.empty()) {
        s.where_ = file;
        s.add_file(file, nullptr);
        return s;
    }
    s.where_ = index;
    auto text_file = MappedFile::open(index);
    const auto map = parse_safetensors_index(
        std::string_view(reinterpret_cast<const char*>(text_file->data()), text_file->size()), index);
    std::set<std::string> shards;
    for (const auto& [name, f] : map) shards.insert(f);
    const fs::path dir = fs::path(index).parent_path();
    for (const auto& f : shards)
        if (!fs::is_regular_file(dir / f, ec))
            fail("'", index, "' names shard '", f, "', which is not a file in '", dir.string(), "'");
    for (const auto& f : shards) s.add_file((dir / f).string(), &map);
    for (const auto& [name, f] : map)
        if (!s.find(name)) fail("'", index, "' puts tensor '", name, "' in shard '", f, "', which does not hold it");
    return s;
}

std::string SafetensorsSource::file_of(const std::string& name) const {
    auto it = file_of_.find(name);
    return it == file_of_.end() ? std::string() : files_[it->second];
}

namespace {

uint64_t checked_nbytes(const TensorView& t, const std::string& path) {
    uint64_t numel = 1;
    for (int64_t d : t.shape) {
        if (d < 0 || __builtin_mul_overflow(numel, (uint64_t)d, &numel))
            fail("cannot write '", path, "': tensor '", t.name, "' has a bad shape ", shape_str(t.shape));
    }
    uint64_t nb = 0;
    if (__builtin_mul_overflow(numel, (uint64_t)dtype_size(t.dtype), &nb) || nb != t.nbytes)
        fail("cannot write '", path, "': tensor '", t.name, "' has ", t.nbytes, " bytes but its dtype ",
             safetensors_dtype_name(t.dtype), " and shape ", shape_str(t.shape), " need ", nb);
    if (nb > 0 && !t.data) fail("cannot write '", path, "': tensor '", t.name, "' has no data");
    return nb;
}

}  // namespace

void write_safetensors(const std::string& path, const std::vector<TensorView>& tensors,
                       const std::map<std::string, std::string>& metadata) {
    std::vector<const TensorView*> order;
    std::set<std::string> names;
    for (const auto& t : tensors) {
        checked_nbytes(t, path);
        if (t.name == "__metadata__") fail("cannot write '", path, "': '__metadata__' is not a tensor name");
        if (!names.insert(t.name).second) fail("cannot write '", path, "': tensor '", t.name, "' is given twice");
        order.push_back(&t);
    }
    // The reference writer's order (dtype rank, then name) puts larger elements first: with the
    // header padded to 8 bytes every tensor starts aligned to its element size, so a reader can view
    // it in place.
    std::stable_sort(order.begin(), order.end(), [](const TensorView* a, const TensorView* b) {
        const int ra = dtype_rank(a->dtype), rb = dtype_rank(b->dtype);
        return ra != rb ? ra > rb : a->name < b->name;
    });
    nlohmann::ordered_json h = nlohmann::ordered_json::object();
    if (!metadata.empty()) h["__metadata__"] = metadata;
    uint64_t off = 0;
    for (const TensorView* t : order) {
        h[t->name] = {{"dtype", safetensors_dtype_name(t->dtype)}, {"shape", t->shape}, {"data_offsets", {off, off + t->nbytes}}};
        off += t->nbytes;
    }
    std::string text = h.dump();
    text.append((8 - text.size() % 8) % 8, ' ');
    unsigned char len[8];
    for (int i = 0; i < 8; ++i) len[i] = (unsigned char)((uint64_t)text.size() >> (8 * i));
    AtomicFile w(path);
    w.write(len, 8);
    w.write(text.data(), text.size());
    for (const TensorView* t : order)
        if (t->nbytes) w.write(t->data, t->nbytes);
    w.commit();
}

std::vector<std::string> write_safetensors_sharded(
    const std::string& dir, const std::vector<TensorView>& tensors, uint64_t max_shard_bytes,
    const std::map<std::string, std::string>& metadata,
    const std::function<void(const std::string& path, uint64_t bytes, uint64_t done, uint64_t total)>& on_file) {
    if (max_shard_bytes == 0) fail("cannot write '", dir, "': the maximum shard size is 0");
    std::vector<std::vector<TensorView>> shards(1);
    uint64_t cur = 0, total = 0;
    for (const auto& t : tensors) {
        const uint64_t nb = checked_nbytes(t, dir);
        if (!shards.back().empty() && cur + nb > max_shard_bytes) {
            shards.emplace_back();
            cur = 0;
        }
        shards.back().push_back(t);
        cur += nb;
        total += nb;
    }
    std::error_code ec;
    fs::create_directories(dir, ec);
    if (ec) fail("cannot create '", dir, "': ", ec.message());
    std::vector<std::string> written;
    uint64_t done = 0;
    auto report = [&](const std::string& p, const std::vector<TensorView>& shard) {
        uint64_t nb = 0;
        for (const auto& t : shard) nb += t.nbytes;
        done += nb;
        if (on_file) on_file(p, nb, done, total);
    };
    if (shards.size() == 1) {
        const std::string p = (fs::path(dir) / "model.safetensors").string();
        write_safetensors(p, shards[0], metadata);
        report(p, shards[0]);
        return {p};
    }
    char buf[64];
    nlohmann::json wm = nlohmann::json::object();
    for (size_t i = 0; i < shards.size(); ++i) {
        std::snprintf(buf, sizeof buf, "model-%05zu-of-%05zu.safetensors", i + 1, shards.size());
        for (const auto& t : shards[i]) {
            if (wm.contains(t.name)) fail("cannot write '", dir, "': tensor '", t.name, "' is given twice");
            wm[t.name] = buf;
        }
        const std::string p = (fs::path(dir) / buf).string();
        write_safetensors(p, shards[i], metadata);
        written.push_back(p);
        report(p, shards[i]);
    }
    const nlohmann::json index = {{"metadata", {{"total_size", total}}}, {"weight_map", wm}};
    const std::string ip = (fs::path(dir) / "model.safetensors.index.json").string();
    write_file_atomic(ip, index.dump(2) + "\n");
    written.push_back(ip);
    if (on_file) on_file(ip, 0, done, total);
    return written;
}

}  // namespace moe
