#pragma once
// Where weights come from: one interface, name -> (dtype, shape, bytes), over memory-mapped files.
// moe tensor files (io/tensor_file.h), safetensors (one file or shards) and GGUF are sources; a
// model is loaded by looking its parameters up by name and either viewing the bytes in place
// (same type, aligned) or converting them. The bytes stay valid while the source lives (it holds
// its mappings), so a model that views them keeps the source (shared_ptr) alive.
#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>
#include <unordered_map>
#include <vector>

#include "core/dtype.h"

namespace moe {

// A read-only private mapping of a whole file. Throws moe::error naming the path.
class MappedFile {
public:
    static std::shared_ptr<const MappedFile> open(const std::string& path);
    ~MappedFile();
    MappedFile(const MappedFile&) = delete;
    MappedFile& operator=(const MappedFile&) = delete;
    const unsigned char* data() const { return data_; }
    size_t size() const { return size_; }
    const std::string& path() const { return path_; }
    // Asks the kernel to read the whole file ahead (MADV_WILLNEED); returns at once.
    void prefetch() const;

private:
    MappedFile() = default;
    const unsigned char* data_ = nullptr;
    size_t size_ = 0;
    std::string path_;
};

struct TensorView {
    std::string name;
    DType dtype = DType::f32;
    std::vector<int64_t> shape;
    const void* data = nullptr;  // nbytes, inside a mapping the source holds
    size_t nbytes = 0;
    int64_t numel() const {
        int64_t n = 1;
        for (int64_t s : shape) n *= s;
        return n;
    }
    const float* f32() const { return static_cast<const float*>(data); }
    const double* f64() const { return static_cast<const double*>(data); }
    const int32_t* i32() const { return static_cast<const int32_t*>(data); }
    const uint16_t* u16() const { return static_cast<const uint16_t*>(data); }
    const int8_t* i8() const { return static_cast<const int8_t*>(data); }
    std::string shape_str() const;  // "[2,3]"
};

class TensorSource {
public:
    TensorSource() = default;
    TensorSource(TensorSource&&) = default;
    TensorSource& operator=(TensorSource&&) = default;
    virtual ~TensorSource() = default;
    const std::vector<TensorView>& tensors() const { return tensors_; }
    const TensorView* find(const std::string& name) const;
    const TensorView& get(const std::string& name) const;  // throws moe::error naming where() and name
    const std::string& where() const { return where_; }    // the path, for error messages
    size_t mapped_bytes() const;                            // sum of the mapped files' sizes

protected:
    // Checks that the name is new and the bytes lie inside `file`; throws naming both otherwise.
    void add(TensorView t, const MappedFile& file);
    void keep(std::shared_ptr<const MappedFile> f) { files_.push_back(std::move(f)); }
    std::string where_;

private:
    std::vector<TensorView> tensors_;
    std::unordered_map<std::string, size_t> index_;
    std::vector<std::shared_ptr<const MappedFile>> files_;
};

}  // namespace moe
