#pragma once
// A layer's matmul weights as inference views in their storage type (fp32 views of the
// parameters, or bf16 / int8 copies made by Model::set_weight_type). The router stays fp32.
#include "kernels/qmatmul.h"

namespace moe::layers {

struct QLayer {
    kernels::QMatrix attn_q, attn_k, attn_v, attn_output;  // (H*D, C), (Hkv*D, C) x2, (C, H*D)
    kernels::QMatrix ffn_gate, ffn_up, ffn_down;           // dense (F, C), (F, C), (C, F) or
                                                           // experts (E*F, C), (E*F, C), (E*C, F)
    kernels::QMatrix ffn_gate_shexp, ffn_up_shexp, ffn_down_shexp;  // shared expert (Fs, C), (Fs, C), (C, Fs)
};

}  // namespace moe::layers
