#pragma once
// One allocation per buffer class (parameters, gradients, optimizer state, activations).
// Views into it are plain pointers; the arena owns the memory, 64-byte aligned.
#include <cstddef>
#include <cstdlib>
#include <cstring>
#include <memory>

#include "core/error.h"
#include "core/memory.h"

namespace moe {

class Arena {
public:
    Arena() = default;
    Arena(const Arena&) = delete;
    Arena& operator=(const Arena&) = delete;
    Arena(Arena&&) = default;
    Arena& operator=(Arena&&) = default;

    // Reserve `bytes` (rounded up per allocation to 64). Call plan() for every buffer first,
    // then commit(), then the pointers returned by take() in the same order are valid.
    void reset() { mem_.reset(); size_ = 0; used_ = 0; }
    void allocate(size_t bytes) {
        reset();
        size_ = round(bytes);
        void* p = alloc_large(size_);  // 2 MB pages for large arenas (core/memory.h)
        std::memset(p, 0, size_);
        mem_.reset(static_cast<char*>(p));
    }
    template <class T>
    T* take(size_t count) {
        size_t b = round(count * sizeof(T));
        MOE_ASSERT(used_ + b <= size_);
        T* p = reinterpret_cast<T*>(mem_.get() + used_);
        used_ += b;
        return p;
    }
    void zero() { if (mem_) std::memset(mem_.get(), 0, size_); }
    size_t size() const { return size_; }
    char* data() { return mem_.get(); }
    static size_t round(size_t b) { return (b + 63) / 64 * 64; }

private:
    struct Free { void operator()(char* p) const { free_large(p); } };
    std::unique_ptr<char, Free> mem_;
    size_t size_ = 0;
    size_t used_ = 0;
};

// Counts bytes for a later Arena::allocate, mirroring Arena::take.
struct ArenaPlan {
    size_t bytes = 0;
    template <class T>
    void add(size_t count) { bytes += Arena::round(count * sizeof(T)); }
};

}  // namespace moe
