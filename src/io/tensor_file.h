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

#include "io/tensor_source.h"

namespace moe {

// One tensor to write (the writer's side; reading gives TensorViews into the mapped file).
struct TensorRecord {
    std::string name;
    std::string dtype;            // "f32", "f64", "i32", "bf16", "i8"
    std::vector<int64_t> shape;
    const void* ptr = nullptr;
    size_t nbytes = 0;
    int64_t numel() const;
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

// A moe tensor file read through a memory mapping: tensors() are views into it (no copy).
class TensorFile : public TensorSource {
public:
    // Maps the file and checks magic, size, trailer, header and that every tensor lies inside the
    // data; with verify (the default) also the CRC-32 of every byte, which reads the whole file
    // once through the mapping (and leaves it in the page cache). Throws moe::error naming the
    // file on any problem.
    static TensorFile read(const std::string& path, bool verify = true);
    nlohmann::json meta;
    std::string path;
};

// Writes `data` to `path` atomically (temp file, fsync, rename, directory fsync).
void write_file_atomic(const std::string& path, const std::string& data);

}  // namespace moe
