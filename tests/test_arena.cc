// Arena (core/arena.h) and alloc_large (core/memory.h): buffers planned with ArenaPlan fit the
// arena exactly, are 64-byte aligned and disjoint. Under AddressSanitizer (scripts/test.sh
// --sanitize) running off the end of one arena buffer into the next one, or into the rounding
// slack of alloc_large, is reported, although both lie inside one heap allocation.
#include <gtest/gtest.h>

#include <sys/wait.h>

#include <cstdint>
#include <cstdlib>

#include "core/arena.h"
#include "core/memory.h"

using namespace moe;

TEST(Arena, PlannedBuffersFitAlignedAndDisjoint) {
    const size_t counts[] = {1, 7, 16, 100, 0, 33};
    ArenaPlan plan;
    for (size_t n : counts) plan.add<float>(n);
    plan.add<int64_t>(5);
    Arena a;
    a.allocate(plan.bytes);
    ASSERT_EQ(a.size(), plan.bytes);
    char* prev_end = a.data();
    for (size_t n : counts) {
        float* p = a.take<float>(n);
        EXPECT_EQ(reinterpret_cast<uintptr_t>(p) % 64, 0u);
        EXPECT_GE(reinterpret_cast<char*>(p), prev_end);
        for (size_t i = 0; i < n; ++i) p[i] = (float)i;  // every element is writable
        prev_end = reinterpret_cast<char*>(p + n);
    }
    int64_t* q = a.take<int64_t>(5);
    EXPECT_GE(reinterpret_cast<char*>(q), prev_end);
    EXPECT_LE(reinterpret_cast<char*>(q + 5), a.data() + a.size());
    for (int i = 0; i < 5; ++i) EXPECT_EQ(q[i], 0);  // allocate() zeroes
}

#if defined(__SANITIZE_ADDRESS__)
static bool failed(int status) { return !(WIFEXITED(status) && WEXITSTATUS(status) == 0); }

TEST(ArenaDeathTest, OverrunIntoTheNextBufferIsReported) {
    GTEST_FLAG_SET(death_test_style, "threadsafe");
    EXPECT_EXIT(
        {
            ArenaPlan plan;
            plan.add<float>(16);
            plan.add<float>(16);
            Arena a;
            a.allocate(plan.bytes);
            volatile float* x = a.take<float>(16);
            a.take<float>(16);
            x[16] = 1.f;  // one past the end: the first float of x's red zone
            std::exit(0);
        },
        failed, "use-after-poison");
}

TEST(ArenaDeathTest, AllocLargeSlackIsReported) {
    GTEST_FLAG_SET(death_test_style, "threadsafe");
    EXPECT_EXIT(
        {
            volatile char* p = static_cast<char*>(alloc_large(100));  // 128 bytes underneath
            p[100] = 1;
            std::exit(0);
        },
        failed, "use-after-poison");
}
#endif
