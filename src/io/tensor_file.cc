#include "io/tensor_file.h"
#include "io/json_int.h"

#include <fcntl.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <filesystem>
#include <string_view>

#include "core/crc32.h"
#include "core/error.h"

namespace moe {

static const char kMagic[8] = {'M', 'O', 'E', 'T', 'N', 'S', 'R', '1'};
static const uint32_t kTrailerMagic = 0x21454F4D;  // "MOE!"

static size_t dtype_size(const std::string& dt, const std::string& where) {
    DType t;
    if (!dtype_from_name(dt, t)) fail(where, ": unknown dtype '", dt, "'");
    return moe::dtype_size(t);
}

int64_t TensorRecord::numel() const {
    int64_t n = 1;
    for (int64_t s : shape) n *= s;
    return n;
}

void TensorFileWriter::add(const std::string& name, const std::string& dtype,
                           std::vector<int64_t> shape, const void* data) {
    TensorRecord r;
    r.name = name;
    r.dtype = dtype;
    r.shape = std::move(shape);
    r.ptr = data;
    r.nbytes = (size_t)r.numel() * dtype_size(dtype, name);
    tensors_.push_back(std::move(r));
}

static size_t align64(size_t x) { return (x + 63) / 64 * 64; }

void write_file_atomic(const std::string& path, const std::string& data) {
    namespace fs = std::filesystem;
    fs::path p(path);
    std::string tmp = path + ".tmp." + std::to_string(::getpid());
    int fd = ::open(tmp.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
    if (fd < 0) fail("cannot write '", path, "': ", std::strerror(errno));
    size_t off = 0;
    while (off < data.size()) {
        ssize_t w = ::write(fd, data.data() + off, data.size() - off);
        if (w < 0) {
            int e = errno;
            ::close(fd);
            ::unlink(tmp.c_str());
            fail("cannot write '", path, "': ", std::strerror(e));
        }
        off += (size_t)w;
    }
    if (::fsync(fd) != 0 || ::close(fd) != 0) {
        int e = errno;
        ::unlink(tmp.c_str());
        fail("cannot write '", path, "': ", std::strerror(e));
    }
    if (::rename(tmp.c_str(), path.c_str()) != 0) {
        int e = errno;
        ::unlink(tmp.c_str());
        fail("cannot move '", tmp, "' to '", path, "': ", std::strerror(e));
    }
    std::string dir = p.has_parent_path() ? p.parent_path().string() : ".";
    int dfd = ::open(dir.c_str(), O_RDONLY | O_DIRECTORY);
    if (dfd >= 0) {
        ::fsync(dfd);
        ::close(dfd);
    }
}

void TensorFileWriter::write(const std::string& path) const {
    nlohmann::json header;
    header["meta"] = meta;
    header["tensors"] = nlohmann::json::array();
    size_t off = 0;
    for (const auto& t : tensors_) {
        header["tensors"].push_back({{"name", t.name}, {"dtype", t.dtype}, {"shape", t.shape},
                                     {"offset", off}, {"nbytes", t.nbytes}});
        off = align64(off + t.nbytes);
    }
    const std::string hj = header.dump();
    const size_t data_start = align64(8 + 8 + hj.size());
    std::string buf(data_start + off + 16, '\0');
    std::memcpy(&buf[0], kMagic, 8);
    uint64_t hl = hj.size();
    std::memcpy(&buf[8], &hl, 8);
    std::memcpy(&buf[16], hj.data(), hj.size());
    off = 0;
    for (const auto& t : tensors_) {
        if (t.nbytes) std::memcpy(&buf[data_start + off], t.ptr, t.nbytes);
        off = align64(off + t.nbytes);
    }
    const size_t body = data_start + off;
    uint64_t total = buf.size();
    const uint32_t crc = crc32_update(0, buf.data(), body);
    std::memcpy(&buf[body], &total, 8);
    std::memcpy(&buf[body + 8], &crc, 4);
    std::memcpy(&buf[body + 12], &kTrailerMagic, 4);
    write_file_atomic(path, buf);
}

TensorFile TensorFile::read(const std::string& path, bool verify) {
    std::error_code ec;
    if (std::filesystem::is_directory(path, ec)) fail("cannot read '", path, "': it is a directory");
    auto file = MappedFile::open(path);
    const char* buf = reinterpret_cast<const char*>(file->data());
    const size_t size = file->size();
    if (size < 32 || std::memcmp(buf, kMagic, 8) != 0)
        fail("'", path, "' is not a moe tensor file (bad magic or only ", size, " bytes)");
    uint64_t total = 0;
    uint32_t crc_stored = 0, tmagic = 0;
    std::memcpy(&total, &buf[size - 16], 8);
    std::memcpy(&crc_stored, &buf[size - 8], 4);
    std::memcpy(&tmagic, &buf[size - 4], 4);
    if (tmagic != kTrailerMagic || total != size)
        fail("'", path, "' is truncated or damaged: it has ", size,
             " bytes and no valid trailer (an interrupted write or a cut copy)");
    if (verify) {
        const uint32_t crc = crc32_update(0, buf, size - 16);
        if (crc != crc_stored)
            fail("'", path, "' is corrupted: checksum mismatch (stored ", crc_stored, ", computed ", crc, ")");
    }
    uint64_t hl = 0;
    std::memcpy(&hl, &buf[8], 8);
    if (hl > size - 32) fail("'", path, "' is damaged: header length ", hl, " exceeds the file");
    TensorFile tf;
    tf.path = path;
    tf.where_ = path;
    try {
        const nlohmann::json header = nlohmann::json::parse(std::string_view(buf + 16, hl));
        tf.meta = header.at("meta");
        const size_t data_start = align64(16 + hl);
        for (const auto& t : header.at("tensors")) {
            TensorView r;
            r.name = t.at("name").get<std::string>();
            const std::string dt = t.at("dtype").get<std::string>();
            if (!dtype_from_name(dt, r.dtype)) fail("'", path, "': tensor '", r.name, "' has an unknown dtype '", dt, "'");
            const std::string what = "'" + path + "': tensor '" + r.name + "'";
            const nlohmann::json& js = t.at("shape");
            if (!js.is_array()) fail(what, ": shape must be a list, got ", js.dump());
            for (const auto& d : js) r.shape.push_back(json_int(d, what + " shape entry", 0));
            int64_t numel = 1;
            for (int64_t d : r.shape) {
                if (d < 0 || (d > 0 && numel > (int64_t(1) << 48) / d))
                    fail("'", path, "': tensor '", r.name, "' has a bad shape ", r.shape_str());
                numel *= d;
            }
            const size_t off = (size_t)json_int(t.at("offset"), what + " offset", 0);
            r.nbytes = (size_t)json_int(t.at("nbytes"), what + " nbytes", 0);
            if (r.nbytes != (size_t)numel * dtype_size(r.dtype))
                fail("'", path, "': tensor '", r.name, "' size does not match its shape");
            if (data_start > size - 16 || off > size - 16 - data_start || r.nbytes > size - 16 - data_start - off)
                fail("'", path, "': tensor '", r.name, "' extends past the end of the data");
            // the writers align every tensor to 64 bytes, and the kernels read a tensor as its type:
            // an offset off that grid (a damaged header) would hand them a misaligned pointer
            if (off % 64 != 0)
                fail("'", path, "': tensor '", r.name, "' starts at data offset ", off,
                     ", not a multiple of 64 (every tensor of a moe tensor file is 64-byte aligned)");
            r.data = buf + data_start + off;
            tf.add(std::move(r), *file);
        }
    } catch (const nlohmann::json::exception& e) {
        fail("'", path, "' has a damaged header: ", e.what());
    }
    tf.keep(std::move(file));
    return tf;
}

}  // namespace moe
