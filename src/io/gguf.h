#pragma once
// GGUF files (llama.cpp / ggml; spec: ggml docs/gguf.md), versions 2 and 3, little-endian:
//   u32 magic "GGUF" | u32 version | u64 tensor_count | u64 kv_count
//   kv_count x (string key | u32 value type | value)
//   tensor_count x (string name | u32 n_dims | u64 ne[n_dims] | u32 ggml type | u64 offset)
//   zero padding to the alignment | data section (each tensor at data_start + offset)
// string = u64 length + bytes; value types 0 u8, 1 i8, 2 u16, 3 i16, 4 u32, 5 i32, 6 f32, 7 bool,
// 8 string, 9 array (u32 element type, u64 count, elements; arrays nest), 10 u64, 11 i64, 12 f64.
// ne[0] is the fastest-varying dimension (a row's length): the reverse of numpy / moe shapes.
// The alignment is general.alignment (a u32 power of two; default 32).
//
// Validation (each violation a moe::error naming the file and the offending key / tensor / value,
// docs/formats.md): magic, version (2 or 3; 1 and big-endian files are named as such), every
// length and count inside the file, nesting of arrays at most kGgufMaxDepth deep, bool bytes 0 / 1,
// keys distinct and at most 65535 bytes, tensor names distinct and shorter than 64 bytes
// (ggml's GGML_MAX_NAME), 0..4 dims each >= 0 with a product that fits int64, ne[0] a multiple of
// the type's block size, a type ggml defines, offsets multiples of the alignment, every tensor
// inside the data section and no two overlapping.
//
// The file is mapped (MAP_PRIVATE, read-only) and nothing is read beyond the header until a tensor
// is used: a model larger than the machine's memory opens fine and pages are brought in on use.
#include <cstddef>
#include <cstdint>
#include <map>
#include <memory>
#include <string>
#include <string_view>
#include <unordered_map>
#include <vector>

#include "core/ggml_type.h"
#include "io/tensor_source.h"

namespace moe {

enum class GgufType : uint32_t {
    u8 = 0, i8 = 1, u16 = 2, i16 = 3, u32 = 4, i32 = 5, f32 = 6, boolean = 7, string = 8, array = 9,
    u64 = 10, i64 = 11, f64 = 12,
};
const char* gguf_type_name(GgufType t);  // "u32", "string", "array", ...

inline constexpr int kGgufMaxDepth = 8;         // arrays of arrays of ...
inline constexpr size_t kGgufMaxNameLen = 63;   // tensor names (ggml: GGML_MAX_NAME = 64 with the NUL)
inline constexpr size_t kGgufMaxKeyLen = 65535;

// One metadata value. Scalars: integers in i (signed types, bool) or u (unsigned types), floats in
// f; strings in s; arrays: elem (their element type) and items.
struct GgufValue {
    GgufType type = GgufType::u8;
    GgufType elem = GgufType::u8;  // arrays
    int64_t i = 0;
    uint64_t u = 0;
    double f = 0;
    std::string s;
    std::vector<GgufValue> items;

    bool is_int() const;    // any integer type (not bool)
    bool is_float() const;  // f32 / f64

    static GgufValue make_u32(uint32_t v);
    static GgufValue make_i32(int32_t v);
    static GgufValue make_u64(uint64_t v);
    static GgufValue make_f32(float v);
    static GgufValue make_bool(bool v);
    static GgufValue make_str(std::string v);
    static GgufValue make_array(GgufType elem, std::vector<GgufValue> items);
    static GgufValue make_str_array(const std::vector<std::string>& v);
    static GgufValue make_f32_array(const std::vector<float>& v);
    static GgufValue make_i32_array(const std::vector<int32_t>& v);
};

struct GgufTensorInfo {
    std::string name;
    GgmlType type = GgmlType::F32;
    std::vector<int64_t> ne;     // as stored: ne[0] fastest
    std::vector<int64_t> shape;  // numpy / moe order (ne reversed)
    uint64_t offset = 0;         // from the start of the data section
    uint64_t nbytes = 0;
    int64_t rows = 0;            // numel / ne[0] (1 for a 0-dim tensor)
    int64_t row_bytes = 0;       // bytes of one row of ne[0] values
    int64_t numel() const;
};

// The validated header of a file image. Metadata keeps the file's order.
class GgufHeader {
public:
    uint32_t version = 0;
    uint64_t alignment = 32;
    uint64_t data_start = 0;  // file offset of the data section
    std::vector<std::pair<std::string, GgufValue>> kv;
    std::vector<GgufTensorInfo> tensors;  // file order
    std::string where;                    // the file, for messages

    const GgufValue* find(const std::string& key) const;
    const GgufTensorInfo* find_tensor(const std::string& name) const;
    bool has(const std::string& key) const { return find(key) != nullptr; }

    // Typed reads; a missing key or a value of another type is a moe::error naming where, key and
    // the type found. Integers accept every integer type whose value fits (counts may be u32 or
    // u64); floats accept f32 / f64 (and integers).
    const GgufValue& get(const std::string& key) const;
    int64_t get_int(const std::string& key) const;
    int64_t get_int(const std::string& key, int64_t dflt) const;
    double get_float(const std::string& key) const;
    double get_float(const std::string& key, double dflt) const;
    bool get_bool(const std::string& key, bool dflt) const;
    std::string get_str(const std::string& key) const;
    std::string get_str(const std::string& key, const std::string& dflt) const;
    std::vector<std::string> get_str_array(const std::string& key) const;
    std::vector<double> get_float_array(const std::string& key) const;
    std::vector<int64_t> get_int_array(const std::string& key) const;

    void index();  // builds the lookup maps (parse_gguf does it)

private:
    std::unordered_map<std::string, size_t> kv_index_, tensor_index_;
};

// Parses and validates a whole file image. `where` names it in errors. The file reader and the
// fuzzer both go through here.
GgufHeader parse_gguf(const unsigned char* data, size_t size, const std::string& where);

// A GGUF file as a TensorSource. F32 / F16 / BF16 / F64 / I8..I64 tensors are views with their
// DType and numpy shape; a block-quantized tensor (Q4_K, ...) is a view of DType u8 with shape
// (rows, row_bytes) over its raw blocks; info() gives its ggml type and geometry either way.
class GgufSource : public TensorSource {
public:
    static std::shared_ptr<GgufSource> open(const std::string& path);
    const GgufHeader& header() const { return header_; }
    const GgufTensorInfo* info(const std::string& name) const { return header_.find_tensor(name); }
    const GgufTensorInfo& get_info(const std::string& name) const;  // moe::error naming a missing one
    const void* data(const GgufTensorInfo& t) const { return file_->data() + header_.data_start + t.offset; }

private:
    GgufHeader header_;
    std::shared_ptr<const MappedFile> file_;
};

// true when the file starts with the GGUF magic (for format detection; false when unreadable)
bool is_gguf_file(const std::string& path);

// The DType of a plain ggml type; false for block-quantized ones.
bool ggml_type_to_dtype(GgmlType t, DType& out);

}  // namespace moe
