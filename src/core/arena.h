#pragma once
// One allocation per buffer class (parameters, gradients, optimizer state, activations).
// Views into it are plain pointers; the arena owns the memory, 64-byte aligned.
#include <cstddef>
#include <cstdlib>
#include <cstring>
#include <memory>

#include "core/error.h"
#include "core/memory.h"

#if defined(__SANITIZE_ADDRESS__)
#include <sanitizer/asan_interface.h>
#define MOE_ASAN_POISON(p, n) ASAN_POISON_MEMORY_REGION(p, n)
#define MOE_ASAN_UNPOISON(p, n) ASAN_UNPOISON_MEMORY_REGION(p, n)
#else
#define MOE_ASAN_POISON(p, n) ((void)(p), (void)(n))
#define MOE_ASAN_UNPOISON(p, n) ((void)(p), (void)(n))
#endif

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
    // Under AddressSanitizer each buffer is followed by a 64-byte red zone, and once take() is
    // used everything but the buffers taken is poisoned, so that running off the end of one
    // buffer into the next one is reported like a heap overflow (the arena itself is one
    // allocation). Without ASan the layout is the plain one.
#if defined(__SANITIZE_ADDRESS__)
    static constexpr size_t kRedZone = 64;
#else
    static constexpr size_t kRedZone = 0;
#endif
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
        size_t b = slot(count * sizeof(T));
        MOE_ASSERT(used_ + b <= size_);
        if (used_ == 0) MOE_ASAN_POISON(mem_.get(), size_);  // a flat arena (no take) stays usable
        T* p = reinterpret_cast<T*>(mem_.get() + used_);
        MOE_ASAN_UNPOISON(p, count * sizeof(T));
        used_ += b;
        return p;
    }
    void zero() {
        if (!mem_) return;
        MOE_ASAN_UNPOISON(mem_.get(), size_);  // the red zones of take() are gone from here on
        std::memset(mem_.get(), 0, size_);
    }
    size_t size() const { return size_; }
    char* data() { return mem_.get(); }
    static size_t round(size_t b) { return (b + 63) / 64 * 64; }
    // the arena bytes one take() of `b` bytes uses
    static size_t slot(size_t b) { return round(b) + kRedZone; }

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
    void add(size_t count) { bytes += Arena::slot(count * sizeof(T)); }
};

}  // namespace moe
