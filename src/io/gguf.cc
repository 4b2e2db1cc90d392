#include "io/gguf.h"

#include <algorithm>
#include <cstring>
#include <fstream>

#include "core/error.h"

namespace moe {

const char* gguf_type_name(GgufType t) {
    switch (t) {
        case GgufType::u8: return "u8";
        case GgufType::i8: return "i8";
        case GgufType::u16: return "u16";
        case GgufType::i16: return "i16";
        case GgufType::u32: return "u32";
        case GgufType::i32: return "i32";
        case GgufType::f32: return "f32";
        case GgufType::boolean: return "bool";
        case GgufType::string: return "string";
        case GgufType::array: return "array";
        case GgufType::u64: return "u64";
        case GgufType::i64: return "i64";
        case GgufType::f64: return "f64";
    }
    return "?";
}

bool GgufValue::is_int() const {
    switch (type) {
        case GgufType::u8: case GgufType::i8: case GgufType::u16: case GgufType::i16: case GgufType::u32:
        case GgufType::i32: case GgufType::u64: case GgufType::i64: return true;
        default: return false;
    }
}
bool GgufValue::is_float() const { return type == GgufType::f32 || type == GgufType::f64; }

GgufValue GgufValue::make_u32(uint32_t v) { GgufValue x; x.type = GgufType::u32; x.u = v; return x; }
GgufValue GgufValue::make_i32(int32_t v) { GgufValue x; x.type = GgufType::i32; x.i = v; return x; }
GgufValue GgufValue::make_u64(uint64_t v) { GgufValue x; x.type = GgufType::u64; x.u = v; return x; }
GgufValue GgufValue::make_f32(float v) { GgufValue x; x.type = GgufType::f32; x.f = v; return x; }
GgufValue GgufValue::make_bool(bool v) { GgufValue x; x.type = GgufType::boolean; x.i = v; return x; }
GgufValue GgufValue::make_str(std::string v) { GgufValue x; x.type = GgufType::string; x.s = std::move(v); return x; }
GgufValue GgufValue::make_array(GgufType elem, std::vector<GgufValue> items) {
    GgufValue x;
    x.type = GgufType::array, x.elem = elem, x.items = std::move(items);
    return x;
}
GgufValue GgufValue::make_str_array(const std::vector<std::string>& v) {
    std::vector<GgufValue> it;
    it.reserve(v.size());
    for (const auto& s : v) it.push_back(make_str(s));
    return make_array(GgufType::string, std::move(it));
}
GgufValue GgufValue::make_f32_array(const std::vector<float>& v) {
    std::vector<GgufValue> it;
    it.reserve(v.size());
    for (float f : v) it.push_back(make_f32(f));
    return make_array(GgufType::f32, std::move(it));
}
GgufValue GgufValue::make_i32_array(const std::vector<int32_t>& v) {
    std::vector<GgufValue> it;
    it.reserve(v.size());
    for (int32_t i : v) it.push_back(make_i32(i));
    return make_array(GgufType::i32, std::move(it));
}

int64_t GgufTensorInfo::numel() const {
    int64_t n = 1;
    for (int64_t d : ne) n *= d;
    return n;
}

bool ggml_type_to_dtype(GgmlType t, DType& out) {
    switch (t) {
        case GgmlType::F32: out = DType::f32; return true;
        case GgmlType::F16: out = DType::f16; return true;
        case GgmlType::BF16: out = DType::bf16; return true;
        case GgmlType::F64: out = DType::f64; return true;
        case GgmlType::I8: out = DType::i8; return true;
        case GgmlType::I16: out = DType::i16; return true;
        case GgmlType::I32: out = DType::i32; return true;
        case GgmlType::I64: out = DType::i64; return true;
        default: return false;
    }
}

// ---- parsing ----------------------------------------------------------------------------------

namespace {

constexpr uint32_t kMagic = 0x46554747;  // "GGUF" little-endian

struct Reader {
    const unsigned char* p;
    size_t size, pos = 0;
    const std::string& where;

    size_t left() const { return size - pos; }
    void need(size_t n, const char* what) {
        if (n > left())
            fail("'", where, "': truncated GGUF file: ", what, " needs ", n, " bytes at offset ", pos, " but only ",
                 left(), " remain (file size ", size, ")");
    }
    template <class T>
    T read(const char* what) {
        need(sizeof(T), what);
        T v;
        std::memcpy(&v, p + pos, sizeof(T));
        pos += sizeof(T);
        return v;
    }
    std::string str(const char* what, size_t max_len) {
        const uint64_t n = read<uint64_t>(what);
        if (n > left())
            fail("'", where, "': ", what, " at offset ", pos - 8, " has length ", n, ", past the end of the file (",
                 left(), " bytes remain)");
        if (n > max_len) fail("'", where, "': ", what, " at offset ", pos - 8, " has length ", n, " (at most ", max_len, ")");
        std::string s(reinterpret_cast<const char*>(p + pos), (size_t)n);
        pos += n;
        return s;
    }
};

// the smallest encoding of one value of type t (for bounding array counts by the bytes left)
size_t min_size(GgufType t) {
    switch (t) {
        case GgufType::u8: case GgufType::i8: case GgufType::boolean: return 1;
        case GgufType::u16: case GgufType::i16: return 2;
        case GgufType::u32: case GgufType::i32: case GgufType::f32: return 4;
        case GgufType::u64: case GgufType::i64: case GgufType::f64: case GgufType::string: return 8;
        case GgufType::array: return 12;
    }
    return 1;
}

bool valid_type(uint32_t t) { return t <= 12; }

GgufValue read_value(Reader& r, GgufType t, const std::string& key, int depth) {
    GgufValue v;
    v.type = t;
    switch (t) {
        case GgufType::u8: v.u = r.read<uint8_t>("a u8 value"); break;
        case GgufType::i8: v.i = r.read<int8_t>("an i8 value"); break;
        case GgufType::u16: v.u = r.read<uint16_t>("a u16 value"); break;
        case GgufType::i16: v.i = r.read<int16_t>("an i16 value"); break;
        case GgufType::u32: v.u = r.read<uint32_t>("a u32 value"); break;
        case GgufType::i32: v.i = r.read<int32_t>("an i32 value"); break;
        case GgufType::u64: v.u = r.read<uint64_t>("a u64 value"); break;
        case GgufType::i64: v.i = r.read<int64_t>("an i64 value"); break;
        case GgufType::f32: v.f = r.read<float>("an f32 value"); break;
        case GgufType::f64: v.f = r.read<double>("an f64 value"); break;
        case GgufType::boolean: {
            const uint8_t b = r.read<uint8_t>("a bool value");
            if (b > 1) fail("'", r.where, "': key '", key, "': bool value ", (int)b, " at offset ", r.pos - 1, " (must be 0 or 1)");
            v.i = b;
            break;
        }
        case GgufType::string: v.s = r.str("a string value", SIZE_MAX); break;
        case GgufType::array: {
            if (depth >= kGgufMaxDepth)
                fail("'", r.where, "': key '", key, "': arrays nested more than ", kGgufMaxDepth, " deep");
            const uint32_t et = r.read<uint32_t>("an array's element type");
            if (!valid_type(et)) fail("'", r.where, "': key '", key, "': unknown array element type ", et, " at offset ", r.pos - 4);
            v.elem = (GgufType)et;
            const uint64_t n = r.read<uint64_t>("an array's length");
            if (n > r.left() / min_size(v.elem))
                fail("'", r.where, "': key '", key, "': array of ", n, " ", gguf_type_name(v.elem), " at offset ", r.pos - 8,
                     " runs past the end of the file (", r.left(), " bytes remain)");
            v.items.reserve((size_t)n);
            for (uint64_t i = 0; i < n; ++i) v.items.push_back(read_value(r, v.elem, key, depth + 1));
            break;
        }
    }
    return v;
}

std::string type_str(const GgufValue& v) {
    return v.type == GgufType::array ? std::string("array of ") + gguf_type_name(v.elem) : gguf_type_name(v.type);
}

}  // namespace

GgufHeader parse_gguf(const unsigned char* data, size_t size, const std::string& where) {
    Reader r{data, size, 0, where};
    GgufHeader h;
    h.where = where;
    if (size < 4) fail("'", where, "': not a GGUF file: ", size, " bytes, shorter than the magic");
    const uint32_t magic = r.read<uint32_t>("the magic");
    if (magic != kMagic) {
        char m[4];
        std::memcpy(m, &magic, 4);
        std::string shown;
        for (char c : m) shown += (c >= 32 && c < 127) ? std::string(1, c) : "\\x" + std::to_string((unsigned char)c);
        fail("'", where, "': not a GGUF file: magic '", shown, "' (expected 'GGUF')");
    }
    h.version = r.read<uint32_t>("the version");
    if (h.version == 1) fail("'", where, "': GGUF version 1 is not supported (only versions 2 and 3)");
    if (h.version != 2 && h.version != 3) {
        if ((h.version & 0xFFFF) == 0 && (h.version >> 24) >= 1 && (h.version >> 24) <= 3)
            fail("'", where, "': GGUF version ", h.version, " looks like a big-endian file; moe reads little-endian GGUF only");
        fail("'", where, "': unsupported GGUF version ", h.version, " (moe reads versions 2 and 3)");
    }
    const uint64_t n_tensors = r.read<uint64_t>("the tensor count");
    const uint64_t n_kv = r.read<uint64_t>("the metadata count");
    // every key-value takes at least 8 + 4 + 1 bytes, every tensor info 8 + 4 + 4 + 8
    if (n_kv > r.left() / 13)
        fail("'", where, "': metadata count ", n_kv, " cannot fit in the ", r.left(), " bytes after the header");
    if (n_tensors > r.left() / 24)
        fail("'", where, "': tensor count ", n_tensors, " cannot fit in the ", r.left(), " bytes after the header");
    h.kv.reserve((size_t)n_kv);
    std::unordered_map<std::string, size_t> seen;
    for (uint64_t k = 0; k < n_kv; ++k) {
        const size_t at = r.pos;
        std::string key = r.str("a metadata key", kGgufMaxKeyLen);
        if (key.empty()) fail("'", where, "': metadata key ", k, " at offset ", at, " is empty");
        if (seen.count(key)) fail("'", where, "': metadata key '", key, "' appears twice");
        const uint32_t t = r.read<uint32_t>("a value type");
        if (!valid_type(t)) fail("'", where, "': key '", key, "': unknown value type ", t, " at offset ", r.pos - 4);
        GgufValue v = read_value(r, (GgufType)t, key, 0);
        seen.emplace(key, h.kv.size());
        h.kv.emplace_back(std::move(key), std::move(v));
    }
    if (const auto it = seen.find("general.alignment"); it != seen.end()) {
        const GgufValue& a = h.kv[it->second].second;
        if (a.type != GgufType::u32)
            fail("'", where, "': general.alignment is ", type_str(a), " (must be u32)");
        if (a.u == 0 || (a.u & (a.u - 1)) != 0)
            fail("'", where, "': general.alignment ", a.u, " is not a power of two");
        h.alignment = a.u;
    }
    h.tensors.reserve((size_t)n_tensors);
    std::unordered_map<std::string, size_t> names;
    for (uint64_t k = 0; k < n_tensors; ++k) {
        GgufTensorInfo t;
        t.name = r.str("a tensor name", SIZE_MAX);
        if (t.name.size() > kGgufMaxNameLen)
            fail("'", where, "': tensor name '", t.name.substr(0, 80), t.name.size() > 80 ? "..." : "", "' is ",
                 t.name.size(), " bytes (ggml allows at most ", kGgufMaxNameLen, ")");
        if (names.count(t.name)) fail("'", where, "': tensor '", t.name, "' appears twice");
        const uint32_t nd = r.read<uint32_t>("a tensor's dimension count");
        if (nd > 4) fail("'", where, "': tensor '", t.name, "' has ", nd, " dimensions (at most 4)");
        int64_t numel = 1;
        for (uint32_t d = 0; d < nd; ++d) {
            const uint64_t e = r.read<uint64_t>("a tensor dimension");
            if (e > (uint64_t)INT64_MAX)
                fail("'", where, "': tensor '", t.name, "': dimension ", d, " is ", e, " (negative as int64)");
            if (e != 0 && numel > INT64_MAX / (int64_t)e)
                fail("'", where, "': tensor '", t.name, "': the product of its dimensions overflows int64 (dimension ", d,
                     " = ", e, ")");
            numel *= (int64_t)e;
            t.ne.push_back((int64_t)e);
        }
        const uint32_t ty = r.read<uint32_t>("a tensor type");
        const GgmlTypeInfo* ti = ggml_type_info(ty);
        if (!ti) fail("'", where, "': tensor '", t.name, "' has unknown ggml type ", ty);
        t.type = ti->type;
        t.offset = r.read<uint64_t>("a tensor offset");
        if (t.offset % h.alignment != 0)
            fail("'", where, "': tensor '", t.name, "' offset ", t.offset, " is not a multiple of the alignment ", h.alignment);
        const int64_t ne0 = nd ? t.ne[0] : 1;
        if (ne0 % ti->block_size != 0)
            fail("'", where, "': tensor '", t.name, "' of type ", ti->name, " has rows of ", ne0,
                 " values, not a multiple of its block size ", ti->block_size);
        t.rows = ne0 == 0 ? 0 : numel / ne0;
        if (ne0 / ti->block_size > INT64_MAX / ti->type_size)
            fail("'", where, "': tensor '", t.name, "': a row of ", ne0, " ", ti->name, " values overflows int64 bytes");
        t.row_bytes = ne0 / ti->block_size * ti->type_size;
        if (t.rows != 0 && t.row_bytes > INT64_MAX / t.rows)
            fail("'", where, "': tensor '", t.name, "': its size in bytes overflows int64");
        t.nbytes = (uint64_t)(t.rows * t.row_bytes);
        t.shape.assign(t.ne.rbegin(), t.ne.rend());
        names.emplace(t.name, h.tensors.size());
        h.tensors.push_back(std::move(t));
    }
    // the data section starts at the next multiple of the alignment
    const uint64_t end_info = r.pos;
    h.data_start = (end_info + h.alignment - 1) / h.alignment * h.alignment;
    if (h.data_start < end_info) fail("'", where, "': alignment ", h.alignment, " overflows the data offset");
    const uint64_t data_size = h.data_start <= size ? size - h.data_start : 0;
    if (!h.tensors.empty() && h.data_start > size)
        fail("'", where, "': truncated GGUF file: the data section would start at ", h.data_start, " but the file has ",
             size, " bytes");
    std::vector<const GgufTensorInfo*> by_off;
    for (const auto& t : h.tensors) {
        if (t.offset > data_size || t.nbytes > data_size - t.offset)
            fail("'", where, "': tensor '", t.name, "' (offset ", t.offset, ", ", t.nbytes,
                 " bytes) runs past the end of the data section (", data_size, " bytes)");
        by_off.push_back(&t);
    }
    std::sort(by_off.begin(), by_off.end(), [](auto* a, auto* b) { return a->offset < b->offset; });
    for (size_t i = 1; i < by_off.size(); ++i)
        if (by_off[i - 1]->offset + by_off[i - 1]->nbytes > by_off[i]->offset && by_off[i - 1]->nbytes > 0 &&
            by_off[i]->nbytes > 0)
            fail("'", where, "': tensors '", by_off[i - 1]->name, "' (offset ", by_off[i - 1]->offset, ", ",
                 by_off[i - 1]->nbytes, " bytes) and '", by_off[i]->name, "' (offset ", by_off[i]->offset, ") overlap");
    h.index();
    return h;
}

void GgufHeader::index() {
    kv_index_.clear();
    tensor_index_.clear();
    for (size_t i = 0; i < kv.size(); ++i) kv_index_.emplace(kv[i].first, i);
    for (size_t i = 0; i < tensors.size(); ++i) tensor_index_.emplace(tensors[i].name, i);
}

const GgufValue* GgufHeader::find(const std::string& key) const {
    auto it = kv_index_.find(key);
    return it == kv_index_.end() ? nullptr : &kv[it->second].second;
}

const GgufTensorInfo* GgufHeader::find_tensor(const std::string& name) const {
    auto it = tensor_index_.find(name);
    return it == tensor_index_.end() ? nullptr : &tensors[it->second];
}

const GgufValue& GgufHeader::get(const std::string& key) const {
    const GgufValue* v = find(key);
    if (!v) fail("'", where, "': required GGUF key '", key, "' is missing");
    return *v;
}

namespace {

int64_t as_int(const GgufValue& v, const std::string& where, const std::string& key) {
    if (v.type == GgufType::u8 || v.type == GgufType::u16 || v.type == GgufType::u32 || v.type == GgufType::u64) {
        if (v.u > (uint64_t)INT64_MAX) fail("'", where, "': key '", key, "' = ", v.u, " is too large");
        return (int64_t)v.u;
    }
    if (v.is_int()) return v.i;
    fail("'", where, "': key '", key, "' is ", type_str(v), " (expected an integer)");
}

double as_float(const GgufValue& v, const std::string& where, const std::string& key) {
    if (v.is_float()) return v.f;
    if (v.is_int()) return (double)as_int(v, where, key);
    fail("'", where, "': key '", key, "' is ", type_str(v), " (expected a number)");
}

const GgufValue& as_array(const GgufValue& v, GgufType want, const std::string& where, const std::string& key) {
    if (v.type != GgufType::array || (want == GgufType::string && v.elem != GgufType::string))
        fail("'", where, "': key '", key, "' is ", type_str(v), " (expected an array of ", gguf_type_name(want), ")");
    return v;
}

}  // namespace

int64_t GgufHeader::get_int(const std::string& key) const { return as_int(get(key), where, key); }
int64_t GgufHeader::get_int(const std::string& key, int64_t dflt) const {
    const GgufValue* v = find(key);
    return v ? as_int(*v, where, key) : dflt;
}
double GgufHeader::get_float(const std::string& key) const { return as_float(get(key), where, key); }
double GgufHeader::get_float(const std::string& key, double dflt) const {
    const GgufValue* v = find(key);
    return v ? as_float(*v, where, key) : dflt;
}
bool GgufHeader::get_bool(const std::string& key, bool dflt) const {
    const GgufValue* v = find(key);
    if (!v) return dflt;
    if (v->type != GgufType::boolean) fail("'", where, "': key '", key, "' is ", type_str(*v), " (expected bool)");
    return v->i != 0;
}
std::string GgufHeader::get_str(const std::string& key) const {
    const GgufValue& v = get(key);
    if (v.type != GgufType::string) fail("'", where, "': key '", key, "' is ", type_str(v), " (expected a string)");
    return v.s;
}
std::string GgufHeader::get_str(const std::string& key, const std::string& dflt) const {
    return find(key) ? get_str(key) : dflt;
}
std::vector<std::string> GgufHeader::get_str_array(const std::string& key) const {
    const GgufValue& v = as_array(get(key), GgufType::string, where, key);
    std::vector<std::string> out;
    out.reserve(v.items.size());
    for (const auto& x : v.items) out.push_back(x.s);
    return out;
}
std::vector<double> GgufHeader::get_float_array(const std::string& key) const {
    const GgufValue& v = as_array(get(key), GgufType::f32, where, key);
    std::vector<double> out;
    out.reserve(v.items.size());
    for (const auto& x : v.items) out.push_back(as_float(x, where, key));
    return out;
}
std::vector<int64_t> GgufHeader::get_int_array(const std::string& key) const {
    const GgufValue& v = as_array(get(key), GgufType::i32, where, key);
    std::vector<int64_t> out;
    out.reserve(v.items.size());
    for (const auto& x : v.items) out.push_back(as_int(x, where, key));
    return out;
}

// ---- the file ---------------------------------------------------------------------------------

std::shared_ptr<GgufSource> GgufSource::open(const std::string& path) {
    auto src = std::make_shared<GgufSource>();
    src->file_ = MappedFile::open(path);
    src->where_ = path;
    src->header_ = parse_gguf(src->file_->data(), src->file_->size(), path);
    for (const auto& t : src->header_.tensors) {
        TensorView v;
        v.name = t.name;
        v.data = src->data(t);
        v.nbytes = (size_t)t.nbytes;
        if (ggml_type_to_dtype(t.type, v.dtype)) {
            v.shape = t.shape;
        } else {
            v.dtype = DType::u8;
            v.shape = {t.rows, t.row_bytes};
        }
        src->add(std::move(v), *src->file_);
    }
    src->keep(src->file_);
    return src;
}

const GgufTensorInfo& GgufSource::get_info(const std::string& name) const {
    const GgufTensorInfo* t = info(name);
    if (!t) fail("'", where_, "': required tensor '", name, "' is missing");
    return *t;
}

bool is_gguf_file(const std::string& path) {
    std::ifstream f(path, std::ios::binary);
    char m[4] = {};
    if (!f.read(m, 4)) return false;
    return std::memcmp(m, "GGUF", 4) == 0;
}

}  // namespace moe
