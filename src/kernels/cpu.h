#pragma once
// Run-time CPU dispatch. moe is built for a portable x86-64 baseline; kernels that have SIMD
// variants pick one at start-up from what the CPU reports. MOE_ISA=ref|avx2|avx512 caps the choice
// (tests use it to run the reference twins; users can use it to rule out a SIMD path).
// Isa::amx is AVX-512 plus Intel AMX (AMX-TILE, AMX-BF16, AMX-INT8) with the tile-data permission
// granted by the kernel (arch_prctl(ARCH_REQ_XCOMP_PERM)); MOE_ISA=avx512 rules the tiles out.
#include <string>

namespace moe::kernels {

enum class Isa { ref = 0, avx2 = 1, avx512 = 2, amx = 3 };

struct CpuFeatures {
    bool avx2 = false, fma = false, f16c = false, avx512f = false, avx512bw = false,
         avx512vl = false, avx512dq = false, avx512_bf16 = false,
         avx512_vnni = false;
    // AMX as CPUID reports it (leaf 7 EDX bits 24, 22, 25) and whether Linux granted this process
    // the tile-data state (arch_prctl(ARCH_REQ_XCOMP_PERM, XFEATURE_XTILEDATA), asked once here).
    bool amx_tile = false, amx_bf16 = false, amx_int8 = false, amx_permitted = false;
};

const CpuFeatures& cpu_features();
// Best ISA the CPU supports, capped by MOE_ISA and by set_isa_cap().
Isa active_isa();
// Caps the ISA for the rest of the process (tests compare paths; the CLI from MOE_ISA, read once
// by moe::apply_environment); returns the previous cap.
Isa set_isa_cap(Isa cap);
Isa parse_isa(const std::string& s, const char* where);  // "ref" | "avx2" | "avx512" | "amx", else moe::error
const char* isa_name(Isa isa);
// One line naming the host for benchmark output: the CPU model (/proc/cpuinfo), core count, the
// SIMD features moe uses, and AMX flags where the kernel reports them, e.g.
// "Intel(R) Xeon(R) Processor, 2 cores, avx2 fma avx512f avx512_bf16 (active isa: avx512)".
std::string host_description();

}  // namespace moe::kernels
