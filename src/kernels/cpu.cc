#include "kernels/cpu.h"

#include <cpuid.h>

#include <cstdlib>
#include <cstring>
#include <fstream>
#include <thread>

#include <sys/syscall.h>
#include <unistd.h>

#include "core/error.h"

namespace moe::kernels {

const CpuFeatures& cpu_features() {
    static const CpuFeatures f = [] {
        CpuFeatures c;
        __builtin_cpu_init();
        c.avx2 = __builtin_cpu_supports("avx2");
        c.fma = __builtin_cpu_supports("fma");
        // f16c by CPUID leaf 1, ECX bit 29 (clang 14 has no __builtin_cpu_supports("f16c"))
        unsigned a = 0, b = 0, cx = 0, d = 0;
        if (__get_cpuid(1, &a, &b, &cx, &d)) c.f16c = (cx >> 29) & 1u;
        c.avx512f = __builtin_cpu_supports("avx512f");
        c.avx512bw = __builtin_cpu_supports("avx512bw");
        c.avx512vl = __builtin_cpu_supports("avx512vl");
        c.avx512dq = __builtin_cpu_supports("avx512dq");
        c.avx512_bf16 = __builtin_cpu_supports("avx512bf16");
        c.avx512_vnni = __builtin_cpu_supports("avx512vnni");
        unsigned a7 = 0, b7 = 0, c7 = 0, d7 = 0;
        if (__get_cpuid_count(7, 0, &a7, &b7, &c7, &d7)) {
            c.amx_bf16 = (d7 >> 22) & 1u;
            c.amx_tile = (d7 >> 24) & 1u;
            c.amx_int8 = (d7 >> 25) & 1u;
        }
        if (c.amx_tile) {
            // Linux >= 5.16 keeps the 8 KiB tile-data state off until a process asks for it; a
            // tile instruction without the permission is SIGILL. The grant covers every thread.
            constexpr long kArchReqXcompPerm = 0x1023, kXfeatureXtiledata = 18;
            c.amx_permitted = syscall(SYS_arch_prctl, kArchReqXcompPerm, kXfeatureXtiledata) == 0;
        }
        return c;
    }();
    return f;
}

Isa parse_isa(const std::string& s, const char* where) {
    if (s == "ref") return Isa::ref;
    if (s == "avx2") return Isa::avx2;
    if (s == "avx512") return Isa::avx512;
    if (s == "amx") return Isa::amx;
    fail(where, "='", s, "' is not one of ref, avx2, avx512, amx");
}

static Isa g_cap = Isa::amx;  // no cap

Isa set_isa_cap(Isa cap) {
    const Isa prev = g_cap;
    g_cap = cap;
    return prev;
}

Isa active_isa() {
    static const Isa hw = [] {
        const CpuFeatures& f = cpu_features();
        const bool avx512 = f.avx512f && f.avx512bw && f.avx512vl && f.fma;
        if (avx512 && f.amx_tile && f.amx_bf16 && f.amx_int8 && f.amx_permitted) return Isa::amx;
        if (avx512) return Isa::avx512;
        if (f.avx2 && f.fma) return Isa::avx2;
        return Isa::ref;
    }();
    return (int)hw < (int)g_cap ? hw : g_cap;
}

const char* isa_name(Isa isa) {
    switch (isa) {
        case Isa::ref: return "ref";
        case Isa::avx2: return "avx2";
        case Isa::avx512: return "avx512";
        case Isa::amx: return "amx";
    }
    return "?";
}

std::string host_description() {
    std::string model = "unknown CPU", flags;
    std::ifstream in("/proc/cpuinfo");
    for (std::string line; std::getline(in, line);) {
        if (model == "unknown CPU" && line.rfind("model name", 0) == 0) model = line.substr(line.find(':') + 2);
        if (flags.empty() && line.rfind("flags", 0) == 0) flags = " " + line.substr(line.find(':') + 1) + " ";
    }
    std::string out = model + ", " + std::to_string(std::thread::hardware_concurrency()) + " cores,";
    for (const char* f : {"avx2", "fma", "avx512f", "avx512_bf16", "avx512_vnni", "avx512_fp16", "amx_bf16", "amx_int8"})
        if (flags.find(std::string(" ") + f + " ") != std::string::npos) out += std::string(" ") + f;
    if (cpu_features().amx_tile && !cpu_features().amx_permitted) out += " (AMX tile state refused by the kernel)";
    return out + " (active isa: " + isa_name(active_isa()) + ")";
}

}  // namespace moe::kernels
