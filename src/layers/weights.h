#pragma once
// One layer's tensors as typed pointers: views into a flat buffer of parameters or gradients
// (model/params.h lays it out). Null where a layer has no such tensor.
namespace moe {

struct LayerWeights {
    float* attn_norm = nullptr;      // (C)
    float* attn_q = nullptr;         // (H*D, C)
    float* attn_k = nullptr;         // (Hkv*D, C)
    float* attn_v = nullptr;         // (Hkv*D, C)
    float* attn_output = nullptr;    // (C, H*D)
    float* attn_q_norm = nullptr;    // (H*D)    qk_norm only; (D) per head (qk_norm_head)
    float* attn_k_norm = nullptr;    // (Hkv*D)  qk_norm only; (D) per head
    float* attn_q_b = nullptr;       // (H*D)    attn_bias_qkv only
    float* attn_k_b = nullptr;       // (Hkv*D)
    float* attn_v_b = nullptr;       // (Hkv*D)
    float* attn_output_b = nullptr;  // (C)      attn_bias_o only
    float* ffn_norm = nullptr;       // (C)
    float* ffn_gate = nullptr;       // (F, C)   dense, swiglu only
    float* ffn_up = nullptr;         // (F, C)   dense
    float* ffn_down = nullptr;       // (C, F)   dense
    float* ffn_gate_inp = nullptr;   // (E, C)   router
    float* ffn_gate_inp_noise = nullptr;  // (E, C) noisy gating: W_noise
    float* ffn_gate_bias = nullptr;  // (E)      aux-loss-free balancing bias (selection only, no gradient)
    float* ffn_gate_exps = nullptr;  // (E, F, C) swiglu only
    float* ffn_up_exps = nullptr;    // (E, F, C)
    float* ffn_down_exps = nullptr;  // (E, C, F)
    float* ffn_gate_inp_shexp = nullptr;  // (1, C) shared expert's sigmoid gate (shexp_gate only)
    float* ffn_gate_shexp = nullptr;      // (Fs, C) shared expert, swiglu only
    float* ffn_up_shexp = nullptr;        // (Fs, C)
    float* ffn_down_shexp = nullptr;      // (C, Fs)
};

}  // namespace moe
