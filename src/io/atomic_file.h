#pragma once
// A file written under a temporary name (PATH.tmp.PID) and renamed into place only once it is
// complete and synced (fsync of the file, rename, fsync of the directory), so that a reader never
// sees a half-written model: write_file_atomic's rule, streamed for files too large to build in
// memory (safetensors shards, GGUF). Destroyed without commit(), the temporary file is removed.
// Every failure is a moe::error naming the path and the system's reason.
#include <cstddef>
#include <cstdint>
#include <string>

namespace moe {

class AtomicFile {
public:
    explicit AtomicFile(std::string path);
    ~AtomicFile();
    AtomicFile(const AtomicFile&) = delete;
    AtomicFile& operator=(const AtomicFile&) = delete;

    void write(const void* p, size_t n);
    void pad_to(uint64_t align);  // zero bytes up to the next multiple of align
    uint64_t pos() const { return pos_; }
    void commit();

private:
    std::string path_, tmp_;
    int fd_ = -1;
    uint64_t pos_ = 0;
};

}  // namespace moe
