#include "io/tensor_source.h"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>

#include "core/error.h"

namespace moe {

std::shared_ptr<const MappedFile> MappedFile::open(const std::string& path) {
    const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
    if (fd < 0) fail("cannot open '", path, "': ", std::strerror(errno));
    struct stat st {};
    if (::fstat(fd, &st) != 0) {
        const int e = errno;
        ::close(fd);
        fail("cannot stat '", path, "': ", std::strerror(e));
    }
    if (S_ISDIR(st.st_mode)) {
        ::close(fd);
        fail("cannot read '", path, "': it is a directory");
    }
    std::shared_ptr<MappedFile> m(new MappedFile());
    m->path_ = path;
    m->size_ = (size_t)st.st_size;
    if (m->size_ > 0) {
        void* p = ::mmap(nullptr, m->size_, PROT_READ, MAP_PRIVATE, fd, 0);
        if (p == MAP_FAILED) {
            const int e = errno;
            ::close(fd);
            fail("cannot map '", path, "' (", m->size_, " bytes): ", std::strerror(e));
        }
        m->data_ = static_cast<const unsigned char*>(p);
    }
    ::close(fd);  // the mapping keeps the file
    return m;
}

MappedFile::~MappedFile() {
    if (data_) ::munmap(const_cast<unsigned char*>(data_), size_);
}

void MappedFile::prefetch() const {
    if (data_) ::madvise(const_cast<unsigned char*>(data_), size_, MADV_WILLNEED);
}

std::string TensorView::shape_str() const {
    std::string r = "[";
    for (size_t i = 0; i < shape.size(); ++i) r += (i ? "," : "") + std::to_string(shape[i]);
    return r + "]";
}

const TensorView* TensorSource::find(const std::string& name) const {
    auto it = index_.find(name);
    return it == index_.end() ? nullptr : &tensors_[it->second];
}

const TensorView& TensorSource::get(const std::string& name) const {
    const TensorView* t = find(name);
    if (!t) fail("'", where_, "' has no tensor '", name, "'");
    return *t;
}

size_t TensorSource::mapped_bytes() const {
    size_t n = 0;
    for (const auto& f : files_) n += f->size();
    return n;
}

void TensorSource::add(TensorView t, const MappedFile& file) {
    const auto* b = static_cast<const unsigned char*>(t.data);
    if (t.nbytes > 0 && (b < file.data() || b > file.data() + file.size() || t.nbytes > (size_t)(file.data() + file.size() - b)))
        fail("'", file.path(), "': tensor '", t.name, "' (", t.nbytes, " bytes) lies outside the file (", file.size(),
             " bytes)");
    if (index_.count(t.name)) fail("'", file.path(), "': tensor '", t.name, "' appears twice");
    index_.emplace(t.name, tensors_.size());
    tensors_.push_back(std::move(t));
}

}  // namespace moe
