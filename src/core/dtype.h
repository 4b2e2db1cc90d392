#pragma once
// Element types of stored tensors (moe tensor files, safetensors, GGUF). Block-quantized types
// (Q8_0, Q4_K, ...) are added with their block geometry when a reader produces them.
#include <cstddef>
#include <cstdint>
#include <ostream>
#include <string>

namespace moe {

enum class DType { f32, f64, f16, bf16, i8, i16, i32, i64, u8, boolean };

inline size_t dtype_size(DType t) {
    switch (t) {
        case DType::f64: case DType::i64: return 8;
        case DType::f32: case DType::i32: return 4;
        case DType::f16: case DType::bf16: case DType::i16: return 2;
        case DType::i8: case DType::u8: case DType::boolean: return 1;
    }
    return 0;
}

// moe's names ("f32", "bf16", "i8", ...), as in its tensor-file headers.
inline const char* dtype_name(DType t) {
    switch (t) {
        case DType::f32: return "f32";
        case DType::f64: return "f64";
        case DType::f16: return "f16";
        case DType::bf16: return "bf16";
        case DType::i8: return "i8";
        case DType::i16: return "i16";
        case DType::i32: return "i32";
        case DType::i64: return "i64";
        case DType::u8: return "u8";
        case DType::boolean: return "bool";
    }
    return "?";
}

inline std::ostream& operator<<(std::ostream& o, DType t) { return o << dtype_name(t); }

// Inverse of dtype_name; false for an unknown name.
inline bool dtype_from_name(const std::string& s, DType& out) {
    for (DType t : {DType::f32, DType::f64, DType::f16, DType::bf16, DType::i8, DType::i16, DType::i32, DType::i64,
                    DType::u8, DType::boolean})
        if (s == dtype_name(t)) return out = t, true;
    return false;
}

}  // namespace moe
