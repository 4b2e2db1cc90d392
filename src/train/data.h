#pragma once
// A tokenized text corpus split into train (first part) and validation (last val_fraction).
// Batches are drawn from a counter-based RNG keyed by (seed, step, micro-batch), so a resumed run
// sees exactly the batches of an uninterrupted one.
#include <cstdint>
#include <string>
#include <vector>

#include "io/tokenizer.h"

namespace moe {

// Reads a whole text file; throws naming the path when it is missing or empty.
std::string read_text_file(const std::string& path);
// Resolves a data/config path: as given if it exists, else relative to the source tree.
std::string resolve_path(const std::string& path);

class TextData {
public:
    TextData(std::vector<int32_t> tokens, double val_fraction, int64_t T, const std::string& where);
    // x, y (B, T): inputs and next-token targets
    void train_batch(int32_t* x, int32_t* y, int64_t B, uint64_t seed, int64_t step, int64_t micro) const;
    void val_batch(int32_t* x, int32_t* y, int64_t B, uint64_t seed, int64_t index) const;
    int64_t n_train() const { return split_; }
    int64_t n_val() const { return (int64_t)tokens_.size() - split_; }
    const std::vector<int32_t>& tokens() const { return tokens_; }
    // Entropy (nats) of the train split's unigram distribution: the loss of a model that ignores
    // context. A model that learns anything beats it.
    double unigram_entropy(int64_t V) const;

private:
    void fill(int32_t* x, int32_t* y, int64_t B, int64_t lo, int64_t hi, uint64_t key1, uint64_t key2) const;
    std::vector<int32_t> tokens_;
    int64_t split_ = 0, T_ = 0;
};

}  // namespace moe
