#include "train/data.h"

#include <cerrno>
#include <cmath>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <sstream>

#include "core/error.h"
#include "core/rng.h"

namespace moe {

std::string resolve_path(const std::string& path) {
    namespace fs = std::filesystem;
    std::error_code ec;  // errors (a name too long, ...) are reported when the path is opened
    if (path.empty() || fs::exists(path, ec) || fs::path(path).is_absolute()) return path;
    fs::path alt = fs::path(MOE_SOURCE_DIR) / path;
    if (fs::exists(alt, ec)) return alt.string();
    return path;
}

std::string read_text_file(const std::string& path) {
    std::ifstream in(path, std::ios::binary);
    if (!in) fail("data file '", path, "' cannot be opened: ", std::strerror(errno));
    std::error_code ec;
    if (std::filesystem::is_directory(path, ec)) fail("data file '", path, "' is a directory");
    std::stringstream ss;
    ss << in.rdbuf();
    std::string s = ss.str();
    if (s.empty()) fail("data file '", path, "' is empty");
    return s;
}

TextData::TextData(std::vector<int32_t> tokens, double val_fraction, int64_t T, const std::string& where)
    : tokens_(std::move(tokens)), T_(T) {
    const int64_t n = (int64_t)tokens_.size();
    split_ = (int64_t)((double)n * (1.0 - val_fraction));
    if (split_ < T + 2 || n - split_ < T + 2)
        fail(where, ": ", n, " tokens are too few for block size ", T, " with val_fraction ",
             val_fraction, " (each split needs at least ", T + 2, ")");
}

void TextData::fill(int32_t* x, int32_t* y, int64_t B, int64_t lo, int64_t hi, uint64_t key1,
                    uint64_t key2) const {
    Rng rng(key1, key2);
    const int64_t range = hi - lo - T_;  // start in [lo, hi - T - 1]
    for (int64_t b = 0; b < B; ++b) {
        const int64_t o = lo + (int64_t)rng.below((uint64_t)range);
        for (int64_t t = 0; t < T_; ++t) {
            x[b * T_ + t] = tokens_[o + t];
            y[b * T_ + t] = tokens_[o + t + 1];
        }
    }
}

void TextData::train_batch(int32_t* x, int32_t* y, int64_t B, uint64_t seed, int64_t step, int64_t micro) const {
    fill(x, y, B, 0, split_, seed, ((uint64_t)step << 16) ^ (uint64_t)micro);
}

void TextData::val_batch(int32_t* x, int32_t* y, int64_t B, uint64_t seed, int64_t index) const {
    fill(x, y, B, split_, (int64_t)tokens_.size(), seed ^ 0x5EED5EEDull, 0xE7A1000000ull + (uint64_t)index);
}

double TextData::unigram_entropy(int64_t V) const {
    std::vector<double> cnt(V, 0.0);
    for (int64_t i = 0; i < split_; ++i) cnt[tokens_[i]] += 1;
    double h = 0;
    for (double c : cnt)
        if (c > 0) h -= c / split_ * std::log(c / split_);
    return h;
}

}  // namespace moe
