#include "layers/kv_cache.h"

#include <algorithm>
#include <cstring>
#include <limits>

#include "core/parallel.h"
#include "kernels/attn_rows.h"

namespace moe::layers {

KvCache::KvCache(int64_t layers, int64_t slots, int64_t ctx, int64_t n_kv_heads, int64_t head_dim, int64_t positions,
                 DType type)
    : L(layers), S(slots), n_ctx(ctx), KD(n_kv_heads * head_dim), Hkv(n_kv_heads), D(head_dim), type_(type),
      esz_((int64_t)dtype_size(type)) {
    check_type(type);
    if (slots < 1) fail("KV cache: need at least one sequence slot, got ", slots);
    if (positions < 0) fail("KV cache: the pool size must be >= 0 positions, got ", positions);
    MOE_ASSERT(layers >= 1 && ctx >= 1 && n_kv_heads >= 1 && head_dim >= 1);
    max_pages = (ctx + page - 1) / page;
    n_pages = positions > 0 ? (positions + page - 1) / page : slots * max_pages;
    const double floats = (double)layers * (double)n_pages * (double)page * (double)KD;
    if (n_pages > std::numeric_limits<int32_t>::max() || floats * 2 * (double)esz_ > 1e15)
        fail("KV cache: a pool of ", n_pages * page, " positions (", layers, " layers of ", KD,
             " elements each for K and V) is too large");
    k_.reset(static_cast<uint8_t*>(alloc_large((size_t)floats * esz_)));
    v_.reset(static_cast<uint8_t*>(alloc_large((size_t)floats * esz_)));
    len.assign(slots, 0);
    table_.assign(slots * max_pages, -1);
    refs_.assign(n_pages, 0);
    free_.resize(n_pages);
    for (int64_t i = 0; i < n_pages; ++i) free_[i] = (int32_t)(n_pages - 1 - i);  // page 0 first
}

void KvCache::commit() {
    const size_t bytes = (size_t)L * (size_t)n_pages * (size_t)page * (size_t)KD * (size_t)esz_;
    if (k_) parallel_zero(k_.get(), bytes);
    if (v_) parallel_zero(v_.get(), bytes);
}

void KvCache::check_type(DType t) {
    if (t != DType::f32 && t != DType::f16 && t != DType::bf16)
        fail("KV cache: --cache-type must be f32, f16 or bf16, got ", dtype_name(t));
}

void KvCache::store(int64_t l, int64_t s, int64_t pos, const float* k, const float* v) {
    const int64_t e = at(l, s, pos);
    for (int64_t h = 0; h < Hkv; ++h) {
        const int64_t b = (e + h * page * D) * esz_;
        kernels::kv_store(k_.get() + b, type_, k + h * D, D);
        kernels::kv_store(v_.get() + b, type_, v + h * D, D);
    }
}

void KvCache::load(int64_t l, int64_t s, int64_t pos, float* k, float* v) const {
    const int64_t e = at(l, s, pos);
    for (int64_t h = 0; h < Hkv; ++h) {
        const int64_t b = (e + h * page * D) * esz_;
        kernels::kv_load(k + h * D, type_, k_.get() + b, D);
        kernels::kv_load(v + h * D, type_, v_.get() + b, D);
    }
}

int64_t KvCache::pages_held(int64_t s) const {
    int64_t n = 0;
    for (int64_t i = 0; i < max_pages; ++i) n += table_[s * max_pages + i] >= 0;
    return n;
}

int64_t KvCache::pages_to_write(int64_t s, int64_t from, int64_t to) const {
    MOE_ASSERT(s >= 0 && s < S && from >= 0 && to <= n_ctx);
    int64_t n = 0;
    for (int64_t i = from / page; from < to && i <= (to - 1) / page; ++i) {
        const int32_t p = table_[s * max_pages + i];
        n += p < 0 || refs_[p] > 1;
    }
    return n;
}

bool KvCache::prepare(int64_t s, int64_t from, int64_t to) {
    MOE_ASSERT(s >= 0 && s < S && from >= 0 && to <= n_ctx);
    for (int64_t i = from / page; from < to && i <= (to - 1) / page; ++i) {
        int32_t& p = table_[s * max_pages + i];
        if (p >= 0 && refs_[p] == 1) continue;
        if (free_.empty()) return false;
        const int32_t q = free_.back();
        free_.pop_back();
        refs_[q] = 1;
        if (p >= 0) {  // copy on write: the other holders keep the old page
            const int64_t n = page * KD * esz_;  // bytes of a page of one layer
            for (int64_t l = 0; l < L; ++l) {
                std::memcpy(k_.get() + (l * n_pages + q) * n, k_.get() + (l * n_pages + p) * n, (size_t)n);
                std::memcpy(v_.get() + (l * n_pages + q) * n, v_.get() + (l * n_pages + p) * n, (size_t)n);
            }
            refs_[p] -= 1;
        }
        p = q;
    }
    return true;
}

void KvCache::drop(int32_t p) {
    MOE_ASSERT(refs_[p] > 0);
    if (--refs_[p] == 0) free_.push_back(p);
}

void KvCache::truncate(int64_t s, int64_t keep) {
    MOE_ASSERT(s >= 0 && s < S && keep >= 0);
    for (int64_t i = (keep + page - 1) / page; i < max_pages; ++i) {
        int32_t& p = table_[s * max_pages + i];
        if (p >= 0) drop(p), p = -1;
    }
    len[s] = std::min(len[s], keep);
}

void KvCache::share(int64_t dst, int64_t src, int64_t n) {
    MOE_ASSERT(dst >= 0 && dst < S && src >= 0 && src < S && n >= 0 && n <= len[src]);
    if (dst == src) return truncate(dst, n);
    truncate(dst, 0);
    for (int64_t i = 0; i < (n + page - 1) / page; ++i) {
        const int32_t p = table_[src * max_pages + i];
        MOE_ASSERT(p >= 0);
        refs_[p] += 1;
        table_[dst * max_pages + i] = p;
    }
    len[dst] = n;
}

}  // namespace moe::layers
