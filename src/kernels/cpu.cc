#include "kernels/cpu.h"

#include <cpuid.h>

#include <cstdlib>
#include <cstring>

#include "core/error.h"

namespace moe::kernels {

const CpuFeatures& cpu_features() {
    static const CpuFeatures f = [] {
        CpuFeatures c;
        __builtin_cpu_init();
        c.avx2 = __builtin_cpu_supports("avx2");
        c.fma = __builtin_cpu_supports("fma");
#if defined(__clang__) && __clang_major__ < 15
        // clang 14 (scripts/fuzz.sh's compiler) does not know "f16c" here: CPUID leaf 1, ECX bit 29,
        // usable only where AVX is (the OS saves the YMM registers)
        unsigned eax = 0, ebx = 0, ecx = 0, edx = 0;
        c.f16c = __get_cpuid(1, &eax, &ebx, &ecx, &edx) && ((ecx >> 29) & 1) && __builtin_cpu_supports("avx");
#else
        c.f16c = __builtin_cpu_supports("f16c");
#endif
        c.avx512f = __builtin_cpu_supports("avx512f");
        c.avx512bw = __builtin_cpu_supports("avx512bw");
        c.avx512vl = __builtin_cpu_supports("avx512vl");
        c.avx512dq = __builtin_cpu_supports("avx512dq");
        c.avx512_bf16 = __builtin_cpu_supports("avx512bf16");
        return c;
    }();
    return f;
}

static Isa env_cap() {
    const char* s = std::getenv("MOE_ISA");
    if (!s || !*s) return Isa::avx512;
    if (!std::strcmp(s, "ref")) return Isa::ref;
    if (!std::strcmp(s, "avx2")) return Isa::avx2;
    if (!std::strcmp(s, "avx512")) return Isa::avx512;
    fail("MOE_ISA='", s, "' is not one of ref, avx2, avx512");
}

static Isa g_cap = Isa::avx512;
static bool g_cap_set = false;

Isa set_isa_cap(Isa cap) {
    Isa prev = g_cap_set ? g_cap : env_cap();
    g_cap = cap;
    g_cap_set = true;
    return prev;
}

Isa active_isa() {
    static const Isa hw = [] {
        const CpuFeatures& f = cpu_features();
        if (f.avx512f && f.avx512bw && f.avx512vl && f.fma) return Isa::avx512;
        if (f.avx2 && f.fma) return Isa::avx2;
        return Isa::ref;
    }();
    static const Isa env = env_cap();
    const Isa cap = g_cap_set ? g_cap : env;
    return (int)hw < (int)cap ? hw : cap;
}

const char* isa_name(Isa isa) {
    switch (isa) {
        case Isa::ref: return "ref";
        case Isa::avx2: return "avx2";
        case Isa::avx512: return "avx512";
    }
    return "?";
}

}  // namespace moe::kernels
