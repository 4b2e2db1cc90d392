#pragma once
// ggml's tensor element types (the type ids GGUF files store) and their block geometry: a row of
// ne0 values (ne0 a multiple of block_size) takes ne0 / block_size * type_size bytes. Plain types
// (F32, F16, BF16, I8, ...) are blocks of one value. The table is ggml's (ggml.c type_traits,
// gguf-py GGML_QUANT_SIZES); a reader that meets an id outside it refuses the file.
//
// The GGUF reader (io/gguf.h) exposes a quantized tensor as raw bytes with its GgmlType and
// row_bytes, so that block-format kernels can use them in place: rows of a (rows, ne0) matrix
// start every row_bytes bytes.
#include <cstddef>
#include <cstdint>

namespace moe {

enum class GgmlType : uint32_t {
    F32 = 0, F16 = 1, Q4_0 = 2, Q4_1 = 3, Q5_0 = 6, Q5_1 = 7, Q8_0 = 8, Q8_1 = 9,
    Q2_K = 10, Q3_K = 11, Q4_K = 12, Q5_K = 13, Q6_K = 14, Q8_K = 15,
    IQ2_XXS = 16, IQ2_XS = 17, IQ3_XXS = 18, IQ1_S = 19, IQ4_NL = 20, IQ3_S = 21, IQ2_S = 22, IQ4_XS = 23,
    I8 = 24, I16 = 25, I32 = 26, I64 = 27, F64 = 28, IQ1_M = 29, BF16 = 30,
    TQ1_0 = 34, TQ2_0 = 35, MXFP4 = 39,
};

struct GgmlTypeInfo {
    GgmlType type;
    const char* name;    // "Q4_K", as ggml and gguf-py spell it
    int64_t block_size;  // values per block
    int64_t type_size;   // bytes per block
    bool quantized;      // a block format (not a plain number type)
};

// null for an id ggml does not define (or moe does not know)
inline const GgmlTypeInfo* ggml_type_info(uint32_t id) {
    static constexpr GgmlTypeInfo kTable[] = {
        {GgmlType::F32, "F32", 1, 4, false},        {GgmlType::F16, "F16", 1, 2, false},
        {GgmlType::Q4_0, "Q4_0", 32, 18, true},     {GgmlType::Q4_1, "Q4_1", 32, 20, true},
        {GgmlType::Q5_0, "Q5_0", 32, 22, true},     {GgmlType::Q5_1, "Q5_1", 32, 24, true},
        {GgmlType::Q8_0, "Q8_0", 32, 34, true},     {GgmlType::Q8_1, "Q8_1", 32, 40, true},
        {GgmlType::Q2_K, "Q2_K", 256, 84, true},    {GgmlType::Q3_K, "Q3_K", 256, 110, true},
        {GgmlType::Q4_K, "Q4_K", 256, 144, true},   {GgmlType::Q5_K, "Q5_K", 256, 176, true},
        {GgmlType::Q6_K, "Q6_K", 256, 210, true},   {GgmlType::Q8_K, "Q8_K", 256, 292, true},
        {GgmlType::IQ2_XXS, "IQ2_XXS", 256, 66, true}, {GgmlType::IQ2_XS, "IQ2_XS", 256, 74, true},
        {GgmlType::IQ3_XXS, "IQ3_XXS", 256, 98, true}, {GgmlType::IQ1_S, "IQ1_S", 256, 50, true},
        {GgmlType::IQ4_NL, "IQ4_NL", 32, 18, true},  {GgmlType::IQ3_S, "IQ3_S", 256, 110, true},
        {GgmlType::IQ2_S, "IQ2_S", 256, 82, true},   {GgmlType::IQ4_XS, "IQ4_XS", 256, 136, true},
        {GgmlType::I8, "I8", 1, 1, false},          {GgmlType::I16, "I16", 1, 2, false},
        {GgmlType::I32, "I32", 1, 4, false},        {GgmlType::I64, "I64", 1, 8, false},
        {GgmlType::F64, "F64", 1, 8, false},        {GgmlType::IQ1_M, "IQ1_M", 256, 56, true},
        {GgmlType::BF16, "BF16", 1, 2, false},      {GgmlType::TQ1_0, "TQ1_0", 256, 54, true},
        {GgmlType::TQ2_0, "TQ2_0", 256, 66, true},  {GgmlType::MXFP4, "MXFP4", 32, 17, true},
    };
    for (const auto& t : kTable)
        if ((uint32_t)t.type == id) return &t;
    return nullptr;
}

inline const GgmlTypeInfo& ggml_type_info(GgmlType t) { return *ggml_type_info((uint32_t)t); }

// "Q4_K"; "type 77" style names are the caller's business for unknown ids
inline const char* ggml_type_name(GgmlType t) { return ggml_type_info(t).name; }

// Bytes of one row of ne0 values; ne0 must be a multiple of the block size.
inline int64_t ggml_row_bytes(GgmlType t, int64_t ne0) {
    const GgmlTypeInfo& i = ggml_type_info(t);
    return ne0 / i.block_size * i.type_size;
}

}  // namespace moe
