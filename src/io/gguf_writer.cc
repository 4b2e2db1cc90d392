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
#include "kernels/bf16.h"

namespace moe {

namespace fs = std::filesystem;

uint16_t f32_to_f16(float f) {
    uint32_t x;
    std::memcpy(&x, &f, 4);
    const uint32_t sign = (x >> 16) & 0x8000u;
    const uint32_t absx = x & 0x7FFFFFFFu;
    if (absx >= 0x7F800000u) return (uint16_t)(sign | 0x7C00u | (absx > 0x7F800000u ? 0x200u | ((absx >> 13) & 0x3FFu) : 0));
    if (absx >= 0x477FF000u) return (uint16_t)(sign | 0x7C00u);  // rounds to >= 65520: inf
    if (absx < 0x38800000u) {  // below the smallest normal half (2^-14): subnormal or zero
        if (absx < 0x33000000u) return (uint16_t)sign;  // < 2^-25: rounds to 0
        const uint32_t e = absx >> 23, m = (absx & 0x7FFFFFu) | 0x800000u;
        const uint32_t shift = 126 - e;  // value = m * 2^(e-150); half subnormal unit 2^-24
        uint32_t q = m >> shift;
        const uint32_t rem = m & ((1u << shift) - 1), halfway = 1u << (shift - 1);
        if (rem > halfway || (rem == halfway && (q & 1))) ++q;
        return (uint16_t)(sign | q);
    }
    uint32_t h = ((absx >> 13) - (112u << 10));
    const uint32_t rem = absx & 0x1FFFu;
    if (rem > 0x1000u || (rem == 0x1000u && (h & 1))) ++h;
    return (uint16_t)(sign | h);
}

float f16_to_f32(uint16_t h) {
    const uint32_t sign = (uint32_t)(h & 0x8000u) << 16, exp = (h >> 10) & 0x1Fu, man = h & 0x3FFu;
    uint32_t bits;
    if (exp == 0x1F) {
        bits = sign | 0x7F800000u | (man << 13);
    } else if (exp != 0) {
        bits = sign | ((exp + 112) << 23) | (man << 13);
    } else if (man == 0) {
        bits = sign;
    } else {
        float f = (float)man * 5.9604644775390625e-8f;
        std::memcpy(&bits, &f, 4);
        bits |= sign;
    }
    float out;
    std::memcpy(&out, &bits, 4);
    return out;
}

namespace {

void row_f32(const float* s, void* d, int64_t n) { std::memcpy(d, s, (size_t)n * 4); }
void row_f16(const float* s, void* d, int64_t n) {
    auto* o = static_cast<uint16_t*>(d);
    for (int64_t i = 0; i < n; ++i) o[i] = f32_to_f16(s[i]);
}
void row_bf16(const float* s, void* d, int64_t n) { kernels::f32_to_bf16_n(static_cast<uint16_t*>(d), s, n); }

std::mutex g_mu;
GgufQuantizeRow g_quant[64] = {};

class AtomicFile {
public:
    explicit AtomicFile(std::string path) : path_(std::move(path)) {
        tmp_ = path_ + ".tmp." + std::to_string(::getpid());
        fd_ = ::open(tmp_.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
        if (fd_ < 0) fail("cannot write '", path_, "': ", std::strerror(errno));
    }
    ~AtomicFile() {
        if (fd_ >= 0) {
            ::close(fd_);
            ::unlink(tmp_.c_str());
        }
    }
    void write(const void* p, size_t n) {
        const char* b = static_cast<const char*>(p);
        while (n > 0) {
            const ssize_t w = ::write(fd_, b, n);
            if (w < 0) {
                if (errno == EINTR) continue;
                fail("cannot write '", path_, "': ", std::strerror(errno));
            }
            b += w, n -= (size_t)w;
            pos_ += (uint64_t)w;
        }
    }
    void pad_to(uint64_t align) {
        static const char zeros[256] = {};
        uint64_t n = (align - pos_ % align) % align;
        while (n > 0) {
            const size_t k = (size_t)std::min<uint64_t>(n, sizeof zeros);
            write(zeros, k);
            n -= k;
        }
    }
    uint64_t pos() const { return pos_; }
    void commit() {
        if (::fsync(fd_) != 0) fail("cannot write '", path_, "': ", std::strerror(errno));
        const int fd = fd_;
        fd_ = -1;
        if (::close(fd) != 0) {
            const int e = errno;
            ::unlink(tmp_.c_str());
            fail("cannot write '", path_, "': ", std::strerror(e));
        }
        if (::rename(tmp_.c_str(), path_.c_str()) != 0) {
            const int e = errno;
            ::unlink(tmp_.c_str());
            fail("cannot move '", tmp_, "' to '", path_, "': ", std::strerror(e));
        }
        const fs::path p(path_);
        const std::string dir = p.has_parent_path() ? p.parent_path().string() : ".";
        const int dfd = ::open(dir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
        if (dfd >= 0) {
            ::fsync(dfd);
            ::close(dfd);
        }
    }

private:
    std::string path_, tmp_;
    int fd_ = -1;
    uint64_t pos_ = 0;
};

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
