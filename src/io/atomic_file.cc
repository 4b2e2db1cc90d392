#include "io/atomic_file.h"

#include <fcntl.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <filesystem>

#include "core/error.h"

namespace moe {

AtomicFile::AtomicFile(std::string path) : path_(std::move(path)) {
    tmp_ = path_ + ".tmp." + std::to_string(::getpid());
    fd_ = ::open(tmp_.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
    if (fd_ < 0) fail("cannot write '", path_, "': ", std::strerror(errno));
}

AtomicFile::~AtomicFile() {
    if (fd_ >= 0) {
        ::close(fd_);
        ::unlink(tmp_.c_str());
    }
}

void AtomicFile::write(const void* p, size_t n) {
    const char* b = static_cast<const char*>(p);
    while (n > 0) {
        const ssize_t w = ::write(fd_, b, n);
        if (w < 0) {
            if (errno == EINTR) continue;
            fail("cannot write '", path_, "': ", std::strerror(errno));
        }
        b += w, n -= (size_t)w;
        pos_ += (uint64_t)w;
    }
}

void AtomicFile::pad_to(uint64_t align) {
    static const char zeros[256] = {};
    uint64_t n = (align - pos_ % align) % align;
    while (n > 0) {
        const size_t k = (size_t)std::min<uint64_t>(n, sizeof zeros);
        write(zeros, k);
        n -= k;
    }
}

void AtomicFile::commit() {
    if (::fsync(fd_) != 0) fail("cannot write '", path_, "': ", std::strerror(errno));
    const int fd = fd_;
    fd_ = -1;
    if (::close(fd) != 0) {
        const int e = errno;
        ::unlink(tmp_.c_str());
        fail("cannot write '", path_, "': ", std::strerror(e));
    }
    if (::rename(tmp_.c_str(), path_.c_str()) != 0) {
        const int e = errno;
        ::unlink(tmp_.c_str());
        fail("cannot move '", tmp_, "' to '", path_, "': ", std::strerror(e));
    }
    const std::filesystem::path p(path_);
    const std::string dir = p.has_parent_path() ? p.parent_path().string() : ".";
    const int dfd = ::open(dir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (dfd >= 0) {
        ::fsync(dfd);
        ::close(dfd);
    }
}

}  // namespace moe
