#pragma once
// The target of the AMX-INT8 kernels (amx_q8.cc, ggml_rows_amx.cc), for functions (KA) and for
// lambdas inside them (KA_LAMBDA: clang does not give a lambda its enclosing function's target,
// GCC does; scripts/fuzz.sh builds with clang). Include in .cc files only, after the other headers.
#define MOE_AMX_TARGET "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512dq,avx512vnni,amx-tile,amx-int8"
#define KA __attribute__((target(MOE_AMX_TARGET)))
#define KA_LAMBDA __attribute__((always_inline, target(MOE_AMX_TARGET)))
