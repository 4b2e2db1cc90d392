#pragma once
// Run-time CPU dispatch. moe is built for a portable x86-64 baseline; kernels that have SIMD
// variants pick one at start-up from what the CPU reports. MOE_ISA=ref|avx2|avx512 caps the choice
// (tests use it to run the reference twins; users can use it to rule out a SIMD path).
namespace moe::kernels {

enum class Isa { ref = 0, avx2 = 1, avx512 = 2 };

struct CpuFeatures {
    bool avx2 = false, fma = false, f16c = false, avx512f = false, avx512bw = false,
         avx512vl = false, avx512dq = false, avx512_bf16 = false;
};

const CpuFeatures& cpu_features();
// Best ISA the CPU supports, capped by MOE_ISA and by set_isa_cap().
Isa active_isa();
// Caps the ISA for the rest of the process (tests compare paths); returns the previous cap.
Isa set_isa_cap(Isa cap);
const char* isa_name(Isa isa);

}  // namespace moe::kernels
