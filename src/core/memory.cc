#include "core/memory.h"

#include <cstdint>
#include <cstdlib>

#include "core/error.h"

#if defined(__linux__)
#include <sys/mman.h>
#endif
#if defined(__SANITIZE_ADDRESS__)
#include <sanitizer/asan_interface.h>
#endif

namespace moe {

void* alloc_large(size_t bytes) {
    constexpr size_t kHuge = size_t(2) << 20;
    const bool huge = bytes >= kHuge;
    const size_t align = huge ? kHuge : 64;
    const size_t size = (bytes + align - 1) / align * align;  // aligned_alloc wants a multiple
    void* p = std::aligned_alloc(align, size ? size : align);
    if (!p) fail("out of memory allocating ", bytes, " bytes");
#if defined(__linux__) && defined(MADV_HUGEPAGE)
    if (huge) madvise(p, size, MADV_HUGEPAGE);  // advice only: failure leaves 4 KB pages
#endif
#if defined(__SANITIZE_ADDRESS__)
    // the rounding slack is not the caller's: a read or write there is an overflow
    ASAN_POISON_MEMORY_REGION(static_cast<char*>(p) + bytes, (size ? size : align) - bytes);
#endif
    return p;
}

void free_large(void* p) noexcept { std::free(p); }

void advise_not_needed(const void* p, size_t bytes) noexcept {
#if defined(__linux__)
    const uintptr_t page = 4096, a = reinterpret_cast<uintptr_t>(p);
    const uintptr_t lo = (a + page - 1) / page * page, hi = (a + bytes) / page * page;
    if (hi <= lo) return;
    void* q = reinterpret_cast<void*>(lo);
#if defined(MADV_PAGEOUT)
    if (madvise(q, hi - lo, MADV_PAGEOUT) == 0) return;
#endif
#if defined(MADV_COLD)
    madvise(q, hi - lo, MADV_COLD);
#endif
#else
    (void)p, (void)bytes;
#endif
}

}  // namespace moe
