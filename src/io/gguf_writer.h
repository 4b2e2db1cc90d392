#pragma once
// Writes GGUF files (version 3, little-endian; the layout of io/gguf.h): metadata in the order set,
// tensor infos in the order added, each tensor's data at a multiple of the alignment, zero padding.
// The file is streamed to a temporary in the same directory, fsynced and renamed over the target,
// so a failed write leaves no partial file.
//
// Tensor data comes from a fill callback that writes the tensor's bytes (one tensor is held in
// memory at a time). add_tensor_f32 converts fp32 values row by row with the quantizer registered
// for the type: F32, F16 (round to nearest even) and BF16 (round to nearest even) are built in; a
// block format (Q8_0, Q4_K, ...) becomes writable when its quantize_row function is registered with
// gguf_register_quantizer (io/gguf_model.h's gguf_register_ggml_kernels registers the kernels' Q8_0,
// Q4_0, Q4_K, Q5_K and Q6_K). Rows are quantized in parallel.
#include <cstdint>
#include <functional>
#include <string>
#include <vector>

#include "core/ggml_type.h"
#include "io/gguf.h"

namespace moe {

// Converts one row of n fp32 values (n a multiple of the type's block size) into
// ggml_row_bytes(type, n) bytes of the type.
using GgufQuantizeRow = void (*)(const float* src, void* dst, int64_t n);
void gguf_register_quantizer(GgmlType t, GgufQuantizeRow fn);
GgufQuantizeRow gguf_quantizer(GgmlType t);  // null when none is registered

// IEEE half from float, round to nearest even (overflow to inf, NaN kept quiet)
uint16_t f32_to_f16(float f);
float f16_to_f32(uint16_t h);

class GgufWriter {
public:
    explicit GgufWriter(uint32_t alignment = 32);
    // Sets (or replaces) a metadata key; general.alignment is written from the constructor's value.
    void set(const std::string& key, GgufValue v);
    void set_str(const std::string& key, std::string v) { set(key, GgufValue::make_str(std::move(v))); }
    void set_u32(const std::string& key, uint32_t v) { set(key, GgufValue::make_u32(v)); }
    void set_f32(const std::string& key, float v) { set(key, GgufValue::make_f32(v)); }
    void set_bool(const std::string& key, bool v) { set(key, GgufValue::make_bool(v)); }
    bool has(const std::string& key) const;

    // shape in numpy / moe order (written reversed as ne); `fill` writes exactly the tensor's bytes.
    void add_tensor(const std::string& name, GgmlType type, std::vector<int64_t> shape,
                    std::function<void(unsigned char* out)> fill);
    // fp32 values (numel of shape), converted with gguf_quantizer(type); the pointer must stay valid
    // until write(). moe::error for a type without a quantizer or a row length not a multiple of
    // its block size.
    void add_tensor_f32(const std::string& name, GgmlType type, std::vector<int64_t> shape, const float* data);

    void write(const std::string& path) const;

private:
    struct Tensor {
        std::string name;
        GgmlType type;
        std::vector<int64_t> shape;
        uint64_t nbytes;
        std::function<void(unsigned char*)> fill;
    };
    uint32_t alignment_;
    std::vector<std::pair<std::string, GgufValue>> kv_;
    std::vector<Tensor> tensors_;
};

}  // namespace moe
