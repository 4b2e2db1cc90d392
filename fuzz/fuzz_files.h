#pragma once
// Files for the fuzz targets whose parsers read a path (a mapped checkpoint or GGUF file, a model
// directory): a private directory made once per process, under /dev/shm when it is writable (no
// disk traffic per execution), removed with its contents at exit; and a whole-buffer write that
// aborts on failure (a harness problem, not a finding).
#include <unistd.h>

#include <cstddef>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <string>

namespace moe_fuzz {

inline std::string& private_dir_storage() {
    static std::string dir;
    return dir;
}

// The directory, made on the first call (tag names it: /dev/shm/moe_fuzz_TAG.XXXXXX).
inline const std::string& private_dir(const char* tag) {
    std::string& dir = private_dir_storage();
    if (!dir.empty()) return dir;
    const char* base = access("/dev/shm", W_OK) == 0 ? "/dev/shm" : "/tmp";
    std::string t = std::string(base) + "/moe_fuzz_" + tag + ".XXXXXX";
    if (!mkdtemp(t.data())) {
        std::perror("mkdtemp");
        std::abort();
    }
    dir = t;
    std::atexit([] {
        std::error_code ec;
        std::filesystem::remove_all(private_dir_storage(), ec);
    });
    return dir;
}

inline void write_file(const std::string& path, const void* data, size_t n) {
    FILE* f = std::fopen(path.c_str(), "wb");
    if (!f || std::fwrite(data, 1, n, f) != n || std::fclose(f) != 0) {
        std::perror(path.c_str());
        std::abort();
    }
}

}  // namespace moe_fuzz
