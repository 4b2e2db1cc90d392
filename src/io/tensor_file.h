#pragma once
// moe's tensor container (checkpoints, reference dumps). Layout:
//   "MOETNSR1" | u64 header_len | header JSON | pad to 64 | tensor data (each 64-aligned)
//   | trailer: u64 file_size, u32 crc32 of every byte before the trailer, u32 "MOE!"
// Header JSON: {"meta": {...}, "tensors": [{"name", "dtype": "f32"|"f64"|"i32"|"bf16"|"i8", "shape", "offset",
// "nbytes"}]} with offsets relative to the data start. Little-endian. Written atomically.
#include <cstdint>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

namespace moe {

struct TensorRecord {
    std::string name;
    std::string dtype;            // "f32", "f64", "i32", "bf16", "i8"
    std::vector<int64_t> shape;
    std::vector<char> bytes;      // owned data (reader); writer uses ptr
    const void* ptr = nullptr;
    size_t nbytes = 0;
    int64_t numel() const;
    const float* f32() const { return reinterpret_cast<const float*>(bytes.data()); }
    const int32_t* i32() const { return reinterpret_cast<const int32_t*>(bytes.data()); }
    const double* f64() const { return reinterpret_cast<const double*>(bytes.data()); }
};

class TensorFileWriter {
public:
    nlohmann::json meta = nlohmann::json::object();
    // The data must stay alive until write().
    void add(const std::string& name, const std::string& dtype, std::vector<int64_t> shape,
             const void* data);
    // temp file in the same directory, fsync, rename, fsync the directory
    void write(const std::string& path) const;

private:
    std::vector<TensorRecord> tensors_;
};

class TensorFile {
public:
    // Verifies magic, size and checksum; throws moe::error naming the file on any problem.
    static TensorFile read(const std::string& path);
    nlohmann::json meta;
    const TensorRecord* find(const std::string& name) const;
    const TensorRecord& get(const std::string& name) const;  // throws if missing
    const std::vector<TensorRecord>& tensors() const { return tensors_; }
    std::string path;

private:
    std::vector<TensorRecord> tensors_;
};

// Writes `data` to `path` atomically (temp file, fsync, rename, directory fsync).
void write_file_atomic(const std::string& path, const std::string& data);

}  // namespace moe
