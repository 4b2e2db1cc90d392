#pragma once
// Hugging Face safetensors: one file, or a model directory with model.safetensors or shards listed by
// model.safetensors.index.json. Every file is memory-mapped and tensors() are views into the
// mappings (no copy). Validation follows the reference (Rust) reader, which Python's `safetensors`
// and transformers use, and adds what it leaves implicit (docs/formats.md):
//   u64 little-endian N (<= 100,000,000) | N bytes of UTF-8 JSON object | data area
//   {"__metadata__": {str: str} (optional), NAME: {"dtype": "F32", "shape": [..], "data_offsets": [b, e]}, ...}
// offsets are relative to the data area; sorted by offset the tensors must tile it exactly (no gap,
// no overlap, nothing after the last one), and e - b = numel * dtype size. Every violation is a
// moe::error naming the file and the offending tensor / value.
#include <cstddef>
#include <cstdint>
#include <functional>
#include <map>
#include <string>
#include <string_view>
#include <vector>

#include "io/tensor_source.h"

namespace moe {

// safetensors' dtype names ("F32", "BF16", "BOOL", ...) for the types moe reads.
const char* safetensors_dtype_name(DType t);
// false for names moe does not read (F8_*, U16, ...) as well as for unknown ones.
bool safetensors_dtype_from_name(std::string_view s, DType& out);

// The validated header of one file image.
struct SafetensorsHeader {
    struct Entry {
        std::string name;
        DType dtype = DType::f32;
        std::vector<int64_t> shape;
        uint64_t begin = 0, end = 0;  // byte range inside the data area
    };
    std::vector<Entry> tensors;  // sorted by offset
    std::map<std::string, std::string> metadata;  // "__metadata__"
    uint64_t data_start = 0;     // 8 + N: where offset 0 of the data area lies in the file
};

// Parses and validates a whole file image (the header and that the data area is exactly covered).
// `where` names it in errors. The file reader and the fuzzer both go through here.
SafetensorsHeader parse_safetensors(const unsigned char* data, size_t size, const std::string& where);

// The weight_map of a model.safetensors.index.json: tensor name -> shard file name (relative to the
// index's directory). Errors: not JSON, no "weight_map" object, a value that is not a plain file name.
std::map<std::string, std::string> parse_safetensors_index(std::string_view text, const std::string& where);

class SafetensorsSource : public TensorSource {
public:
    // `path`: a .safetensors file, a model.safetensors.index.json, or a directory holding
    // model.safetensors (preferred, as transformers does) or model.safetensors.index.json.
    static SafetensorsSource open(const std::string& path);
    // "__metadata__" of the file (of the first shard for a sharded model).
    const std::map<std::string, std::string>& metadata() const { return metadata_; }
    // the files mapped, in order (one, or the shards sorted by name)
    const std::vector<std::string>& files() const { return files_; }
    // the file a tensor lives in (for messages); "" for an unknown name
    std::string file_of(const std::string& name) const;

private:
    void add_file(const std::string& path, const std::map<std::string, std::string>* index_map);
    std::map<std::string, std::string> metadata_;
    std::vector<std::string> files_;
    std::map<std::string, size_t> file_of_;
};

// Writes tensors as one safetensors file that Python's safetensors loads, byte for byte what the
// reference writer produces: compact header JSON ("__metadata__" first) padded with spaces to a
// multiple of 8, tensors ordered by dtype (wider first, the reference's order) then name, so every
// tensor is aligned to its element size. Streams the bytes (no whole-file buffer) to a temporary
// file in the same directory, fsyncs and renames it over `path`. Each TensorView needs name, dtype,
// shape, data and nbytes (= numel * dtype size); names must be distinct.
void write_safetensors(const std::string& path, const std::vector<TensorView>& tensors,
                       const std::map<std::string, std::string>& metadata = {});

// Like transformers' save_pretrained: tensors (in the given order) are split into shards of at most
// max_shard_bytes of data (a larger tensor gets a shard of its own), written as
// model-0000i-of-0000n.safetensors with model.safetensors.index.json ({"metadata": {"total_size"},
// "weight_map"}); a model that fits one shard is written as model.safetensors with no index.
// Returns the files written (the index last). on_file, when given, is called after each file with
// its path, its tensor bytes (0 for the index) and the running total of tensor bytes written.
std::vector<std::string> write_safetensors_sharded(
    const std::string& dir, const std::vector<TensorView>& tensors, uint64_t max_shard_bytes,
    const std::map<std::string, std::string>& metadata = {},
    const std::function<void(const std::string& path, uint64_t bytes, uint64_t done, uint64_t total)>& on_file = nullptr);

}  // namespace moe
