#include "io/gguf_writer.h"

#include <fcntl.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <filesystem>
#include <mutex>
#include <set>

#include "core/error.h"
#include "core/parallel.h"
#include "io/atomic_file.h"
#include "kernels/bf16.h"
#include "kernels/ggml_quants.h"

namespace moe {

namespace fs = std::filesystem;

// IEEE half conversions: the kernels' (round to nearest even; exact the other way)
uint16_t f32_to_f16(float f) { return kernels::fp32_to_fp16(f); }
float f16_to_f32(uint16_t h) { return kernels::fp16_to_fp32(h); }

namespace {

void row_f32(const float* s, void* d, int64_t n) { std::memcpy(d, s, (size_t)n * 4); }
void row_f16(const float* s, void* d, int64_t n) {
    auto* o = static_cast<uint16_t*>(d);
    for (int64_t i = 0; i < n; ++i) o[i] = f32_to_f16(s[i]);
}
void row_bf16(const float* s, void* d, int64_t n) { kernels::f32_to_bf16_n(static_cast<uint16_t*>(d), s, n); }

std::mutex g_mu;
GgufQuantizeRow g_quant[64] = {};

void put_bytes(std::string& out, const void* p, size_t n) { out.append(static_cast<const char*>(p), n); }
template <class T>
void put(std::string& out, T v) {
    put_bytes(out, &v, sizeof v);
}
void put_str(std::string& out, const std::string& s) {
    put<uint64_t>(out, s.size());
    out += s;
}

void put_value(std::string& out, const GgufValue& v, const std::string& key) {
    switch (v.type) {
        case GgufType::u8: put<uint8_t>(out, (uint8_t)v.u); break;
        case GgufType::i8: put<int8_t>(out, (int8_t)v.i); break;
        case GgufType::u16: put<uint16_t>(out, (uint16_t)v.u); break;
        case GgufType::i16: put<int16_t>(out, (int16_t)v.i); break;
        case GgufType::u32: put<uint32_t>(out, (uint32_t)v.u); break;
        case GgufType::i32: put<int32_t>(out, (int32_t)v.i); break;
        case GgufType::u64: put<uint64_t>(out, v.u); break;
        case GgufType::i64: put<int64_t>(out, v.i); break;
        case GgufType::f32: put<float>(out, (float)v.f); break;
        case GgufType::f64: put<double>(out, v.f); break;
        case GgufType::boolean: put<uint8_t>(out, v.i ? 1 : 0); break;
        case GgufType::string: put_str(out, v.s); break;
        case GgufType::array:
            put<uint32_t>(out, (uint32_t)v.elem);
            put<uint64_t>(out, v.items.size());
            for (const auto& x : v.items) {
                if (x.type != v.elem)
                    fail("GGUF key '", key, "': an array of ", gguf_type_name(v.elem), " holds a ", gguf_type_name(x.type));
                put_value(out, x, key);
            }
            break;
    }
}

}  // namespace

void gguf_register_quantizer(GgmlType t, GgufQuantizeRow fn) {
    std::lock_guard<std::mutex> l(g_mu);
    MOE_ASSERT((uint32_t)t < 64);
    g_quant[(uint32_t)t] = fn;
}

GgufQuantizeRow gguf_quantizer(GgmlType t) {
    switch (t) {
        case GgmlType::F32: return row_f32;
        case GgmlType::F16: return row_f16;
        case GgmlType::BF16: return row_bf16;
        default: break;
    }
    std::lock_guard<std::mutex> l(g_mu);
    return (uint32_t)t < 64 ? g_quant[(uint32_t)t] : nullptr;
}

GgufWriter::GgufWriter(uint32_t alignment) : alignment_(alignment) {
    if (alignment == 0 || (alignment & (alignment - 1)) != 0) fail("GGUF alignment ", alignment, " is not a power of two");
    if (alignment != 32) set_u32("general.alignment", alignment);
}

void GgufWriter::set(const std::string& key, GgufValue v) {
    if (key.empty() || key.size() > kGgufMaxKeyLen) fail("GGUF key of ", key.size(), " bytes (1 to ", kGgufMaxKeyLen, ")");
    for (auto& kv : kv_)
        if (kv.first == key) {
            kv.second = std::move(v);
            return;
        }
    kv_.emplace_back(key, std::move(v));
}

bool GgufWriter::has(const std::string& key) const {
    for (const auto& kv : kv_)
        if (kv.first == key) return true;
    return false;
}

void GgufWriter::add_tensor(const std::string& name, GgmlType type, std::vector<int64_t> shape,
                            std::function<void(unsigned char*)> fill) {
    if (name.empty() || name.size() > kGgufMaxNameLen)
        fail("GGUF tensor name '", name, "' must have 1 to ", kGgufMaxNameLen, " bytes");
    if (shape.size() > 4) fail("GGUF tensor '", name, "' has ", shape.size(), " dimensions (at most 4)");
    for (const auto& t : tensors_)
        if (t.name == name) fail("GGUF tensor '", name, "' is added twice");
    const GgmlTypeInfo& ti = ggml_type_info(type);
    const int64_t ne0 = shape.empty() ? 1 : shape.back();
    int64_t rows = 1;
    for (size_t i = 0; i + 1 < shape.size(); ++i) rows *= shape[i];
    if (ne0 % ti.block_size != 0)
        fail("GGUF tensor '", name, "': rows of ", ne0, " values are not a multiple of ", ti.name, "'s block of ",
             ti.block_size);
    tensors_.push_back({name, type, std::move(shape), (uint64_t)(rows * ggml_row_bytes(type, ne0)), std::move(fill)});
}

void GgufWriter::add_tensor_f32(const std::string& name, GgmlType type, std::vector<int64_t> shape, const float* data) {
    const GgufQuantizeRow q = gguf_quantizer(type);
    if (!q) fail("GGUF tensor '", name, "': writing type ", ggml_type_name(type), " is not supported yet (no quantizer)");
    const int64_t ne0 = shape.empty() ? 1 : shape.back();
    int64_t rows = 1;
    for (size_t i = 0; i + 1 < shape.size(); ++i) rows *= shape[i];
    const int64_t rb = ggml_row_bytes(type, ne0);
    add_tensor(name, type, shape, [=](unsigned char* out) {
        // rows are independent (the K-quants' search makes this the export's slow part)
        parallel_for(0, rows, std::max<int64_t>(1, 8192 / std::max<int64_t>(ne0, 1)), [&](int64_t a, int64_t b) {
            for (int64_t r = a; r < b; ++r) q(data + r * ne0, out + r * rb, ne0);
        });
    });
}

void GgufWriter::write(const std::string& path) const {
    std::string head;
    put<uint32_t>(head, 0x46554747);
    put<uint32_t>(head, 3);
    put<uint64_t>(head, tensors_.size());
    put<uint64_t>(head, kv_.size());
    for (const auto& [k, v] : kv_) {
        put_str(head, k);
        put<uint32_t>(head, (uint32_t)v.type);
        put_value(head, v, k);
    }
    uint64_t off = 0;
    for (const auto& t : tensors_) {
        put_str(head, t.name);
        put<uint32_t>(head, (uint32_t)t.shape.size());
        for (auto it = t.shape.rbegin(); it != t.shape.rend(); ++it) put<uint64_t>(head, (uint64_t)*it);
        put<uint32_t>(head, (uint32_t)t.type);
        put<uint64_t>(head, off);
        off += (t.nbytes + alignment_ - 1) / alignment_ * alignment_;
    }
    AtomicFile f(path);
    f.write(head.data(), head.size());
    f.pad_to(alignment_);
    std::vector<unsigned char> buf;
    for (const auto& t : tensors_) {
        buf.assign((size_t)t.nbytes, 0);
        t.fill(buf.data());
        f.write(buf.data(), buf.size());
        f.pad_to(alignment_);
    }
    f.commit();
}

}  // namespace moe
