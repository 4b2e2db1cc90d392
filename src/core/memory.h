#pragma once
// Large buffers (parameters, activations, inference weights) on transparent huge pages where the
// kernel allows it (Linux, THP "madvise" or "always"): fewer TLB misses, and the hardware
// prefetchers run on over 4 KB page boundaries. Decode streams hundreds of MB of weights per
// second, and a plain read of them measured about 10% faster on 2 MB pages on these hosts.
#include <cstddef>
#include <limits>
#include <new>

namespace moe {

// Zeroed? No: like malloc. Buffers of 2 MB or more are 2 MB aligned and advised huge before any
// page is touched; smaller ones are 64-byte aligned. Throws moe::error when out of memory.
void* alloc_large(size_t bytes);
void free_large(void* p) noexcept;

// Tells the kernel that the whole pages inside [p, p + bytes) will not be read again soon (a
// mapped file's tensor after an owned copy of it was made): they are reclaimed now where the kernel
// can (MADV_PAGEOUT: clean file pages dropped, anonymous ones swapped out, contents kept either
// way), else marked cold. Advice only: the memory stays valid and readable.
void advise_not_needed(const void* p, size_t bytes) noexcept;

// std::vector allocator on alloc_large (the quantized inference weights).
template <class T>
struct LargeAllocator {
    using value_type = T;
    LargeAllocator() = default;
    template <class U>
    LargeAllocator(const LargeAllocator<U>&) {}
    T* allocate(size_t n) {
        if (n > std::numeric_limits<size_t>::max() / sizeof(T)) throw std::bad_alloc();
        return static_cast<T*>(alloc_large(n * sizeof(T)));
    }
    void deallocate(T* p, size_t) noexcept { free_large(p); }
    template <class U>
    bool operator==(const LargeAllocator<U>&) const { return true; }
};

}  // namespace moe
