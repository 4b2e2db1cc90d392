#pragma once
// Integers read from outside JSON (tensor-file headers, checkpoint metadata, manifests). nlohmann's
// get<int64_t>() converts a floating-point value such as 3e59 with undefined behaviour and wraps an
// unsigned one above INT64_MAX; json_int requires an integer in [lo, hi] and throws moe::error
// naming `what` and the value otherwise.
#include <cstdint>
#include <string>

#include <nlohmann/json.hpp>

#include "core/error.h"

namespace moe {

inline int64_t json_int(const nlohmann::json& v, const std::string& what, int64_t lo = INT64_MIN,
                        int64_t hi = INT64_MAX) {
    if (!v.is_number_integer()) fail(what, " must be an integer, got ", v.dump());
    if (v.is_number_unsigned() && v.get<uint64_t>() > (uint64_t)INT64_MAX)
        fail(what, " = ", v.dump(), " is out of range [", lo, ", ", hi, "]");
    const int64_t x = v.get<int64_t>();
    if (x < lo || x > hi) fail(what, " = ", x, " is out of range [", lo, ", ", hi, "]");
    return x;
}

}  // namespace moe
