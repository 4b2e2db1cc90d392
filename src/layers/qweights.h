#pragma once
// A layer's matmul weights as inference views in their storage type (fp32 views of the
// parameters, or bf16 / int8 copies made by Model::set_weight_type). The router stays fp32.
#include "kernels/qmatmul.h"

namespace moe::layers {

// One FFN's matrices; gate is empty without SwiGLU.
struct QFfn {
    kernels::QMatrix gate, up, down;
};

struct QLayer {
    kernels::QMatrix attn_q, attn_k, attn_v, attn_output;  // (H*D, C), (Hkv*D, C) x2, (C, H*D)
    QFfn ffn;    // dense (F, C), (F, C), (C, F) or experts (E*F, C), (E*F, C), (E*C, F)
    QFfn shexp;  // shared expert (Fs, C), (Fs, C), (C, Fs); empty without one
};

}  // namespace moe::layers
