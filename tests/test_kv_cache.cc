// The paged KV cache (layers/kv_cache.h): page accounting (free list, reference counts, sharing,
// copy on write, running out), the paged cached attention against its contiguous reference twin
// (bit for bit, whatever the pages' placement and size, on both its per-row and GEMM paths), and
// forward_cached over a pool: results independent of where the pages are, a clear error when
// the pool is full.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <numeric>
#include <vector>

#include "core/error.h"
#include "core/parallel.h"
#include "core/rng.h"
#include "kernels/batch_invariant.h"
#include "layers/kv_cache.h"
#include "model/model.h"
#include "ops/attention.h"

using namespace moe;

namespace {

TEST(KvCache, PagesAreTakenSharedCopiedAndGivenBack) {
    // 2 layers, 3 tables, n_ctx 40 (3 pages of 16), 2 kv heads of 2 (KD 4), a pool of 5 pages
    layers::KvCache c(2, 3, 40, 2, 2, 70);
    // element j of K (V: -pos) at (l, s, p), written and read through store / load
    auto put = [&](int64_t l, int64_t s, int64_t p, int64_t j, float kv) {
        float k[4], v[4];
        c.load(l, s, p, k, v);
        k[j] = kv;
        c.store(l, s, p, k, v);
    };
    auto k_of = [&](int64_t l, int64_t s, int64_t p, int64_t j) {
        float k[4], v[4];
        c.load(l, s, p, k, v);
        return k[j];
    };
    EXPECT_EQ(c.page, 16);
    EXPECT_EQ(c.n_pages, 5);  // 70 positions rounded up to whole pages
    EXPECT_EQ(c.max_pages, 3);
    EXPECT_EQ(c.free_pages(), 5);
    EXPECT_EQ(c.bytes(), (size_t)2 * 2 * 5 * 16 * 4 * sizeof(float));
    // sequence 0 writes positions 0..19: two pages
    EXPECT_EQ(c.pages_to_write(0, 0, 20), 2);
    ASSERT_TRUE(c.prepare(0, 0, 20));
    EXPECT_EQ(c.free_pages(), 3);
    EXPECT_EQ(c.pages_held(0), 2);
    for (int64_t l = 0; l < 2; ++l)
        for (int64_t p = 0; p < 20; ++p) {
            float k[4], v[4];
            for (int64_t j = 0; j < 4; ++j) k[j] = (float)(l * 1000 + p * 10 + j), v[j] = -(float)p;
            c.store(l, 0, p, k, v);
        }
    c.len[0] = 20;
    EXPECT_EQ(c.pages_to_write(0, 0, 20), 0);  // its own pages: written in place
    // sequence 1 shares positions 0..17 (page 0 full, page 1 partial): no new page yet
    c.share(1, 0, 18);
    EXPECT_EQ(c.len[1], 18);
    EXPECT_EQ(c.free_pages(), 3);
    EXPECT_EQ(c.page_id(1, 0), c.page_id(0, 0));
    EXPECT_EQ(c.page_id(1, 1), c.page_id(0, 1));
    EXPECT_EQ(c.refs(c.page_id(0, 1)), 2);
    // writing position 18 of sequence 1 copies the shared partial page (copy on write)
    EXPECT_EQ(c.pages_to_write(1, 18, 19), 1);
    ASSERT_TRUE(c.prepare(1, 18, 19));
    EXPECT_EQ(c.free_pages(), 2);
    EXPECT_NE(c.page_id(1, 1), c.page_id(0, 1));
    EXPECT_EQ(c.page_id(1, 0), c.page_id(0, 0));  // the full page stays shared
    for (int64_t l = 0; l < 2; ++l)
        for (int64_t p = 16; p < 18; ++p)
            for (int64_t j = 0; j < 4; ++j) EXPECT_EQ(k_of(l, 1, p, j), (float)(l * 1000 + p * 10 + j)) << "copied";
    put(1, 1, 17, 0, 12345.f);  // the copy is its own
    EXPECT_EQ(k_of(1, 0, 17, 0), (float)(1000 + 170));
    EXPECT_EQ(k_of(1, 1, 17, 0), 12345.f);
    // sequence 0 writes into its page 1 again: no longer shared, in place
    EXPECT_EQ(c.pages_to_write(0, 19, 20), 0);
    // running out: sequence 2 wants 3 pages, 2 are free; what it got stays in its table
    EXPECT_EQ(c.pages_to_write(2, 0, 40), 3);
    EXPECT_FALSE(c.prepare(2, 0, 40));
    EXPECT_EQ(c.free_pages(), 0);
    EXPECT_EQ(c.pages_held(2), 2);
    c.reset(2);
    EXPECT_EQ(c.free_pages(), 2);
    // truncate keeps the pages covering [0, keep)
    c.truncate(0, 16);
    EXPECT_EQ(c.len[0], 16);
    EXPECT_EQ(c.pages_held(0), 1);
    EXPECT_EQ(c.free_pages(), 3);
    // sequence 0's page 0 is still shared with sequence 1: resetting 0 keeps it for 1
    c.reset(0);
    EXPECT_EQ(c.free_pages(), 3);
    EXPECT_EQ(k_of(0, 1, 5, 1), (float)(5 * 10 + 1));
    c.reset(1);
    EXPECT_EQ(c.free_pages(), 5);  // all back: no leak
    for (int64_t i = 0; i < c.n_pages; ++i) EXPECT_EQ(c.refs(i), 0);
    EXPECT_THROW(layers::KvCache(2, 0, 40, 2, 2), error);
    EXPECT_THROW(layers::KvCache(2, 1, 40, 2, 2, -1), error);
    EXPECT_THROW(layers::KvCache(2, 1, 40, 2, 2, 0, DType::i8), error);
    // f16 / bf16 pools: half the bytes, values rounded when stored
    for (DType t : {DType::f16, DType::bf16}) {
        layers::KvCache h(2, 3, 40, 2, 2, 70, t);
        EXPECT_EQ(h.bytes(), (size_t)2 * 2 * 5 * 16 * 4 * 2);
        ASSERT_TRUE(h.prepare(0, 0, 1));
        const float k[4] = {1.f, 1.0001f, -3.3f, 1e-3f}, v[4] = {0.5f, 2.f, 7.77f, -1e4f};
        h.store(1, 0, 0, k, v);
        float kb[4], vb[4];
        h.load(1, 0, 0, kb, vb);
        for (int j = 0; j < 4; ++j) {
            EXPECT_NEAR(kb[j], k[j], std::fabs(k[j]) * (t == DType::f16 ? 1e-3 : 4e-3)) << dtype_name(t);
            EXPECT_NEAR(vb[j], v[j], std::fabs(v[j]) * (t == DType::f16 ? 1e-3 : 4e-3)) << dtype_name(t);
        }
        EXPECT_NE(kb[1], k[1]) << dtype_name(t) << ": 1.0001 is not a half value";
    }
}

TEST(KvCache, DefaultPoolHoldsEveryTableFull) {
    layers::KvCache c(1, 3, 33, 1, 2);
    EXPECT_EQ(c.n_pages, 3 * 3);
    for (int64_t s = 0; s < 3; ++s) ASSERT_TRUE(c.prepare(s, 0, 33));
    EXPECT_EQ(c.free_pages(), 0);
}

// The paged kernel against the contiguous reference: K/V of S sequences of n_ctx positions laid
// out contiguously, and the same values scattered over the pages of a pool in a shuffled order, the
// pool's elements of type t (f16 / bf16: the contiguous reference gets the stored values widened).
void compare_paged(int64_t page, bool invariant, uint64_t seed, DType t = DType::f32) {
    const int64_t S = 3, n_ctx = 50, H = 4, Hkv = 2, D = 8, kvs = Hkv * D, es = (int64_t)dtype_size(t);
    Rng rng(seed, page);
    std::vector<float> kc(S * n_ctx * kvs), vc(kc.size());
    for (auto& x : kc) x = (float)rng.normal();
    for (auto& x : vc) x = (float)rng.normal();
    // what the pool holds, widened back: the reference's operands
    std::vector<uint8_t> tmp(kvs * es);
    for (auto* c : {&kc, &vc})
        for (int64_t r = 0; r < S * n_ctx; ++r) {
            kernels::kv_store(tmp.data(), t, c->data() + r * kvs, kvs);
            kernels::kv_load(c->data() + r * kvs, t, tmp.data(), kvs);
        }
    const int64_t max_pages = (n_ctx + page - 1) / page, n_pages = S * max_pages + 5;
    std::vector<int32_t> ids(n_pages);
    std::iota(ids.begin(), ids.end(), 0);
    for (int64_t i = n_pages - 1; i > 0; --i) std::swap(ids[i], ids[rng.next_u64() % (uint64_t)(i + 1)]);
    std::vector<int32_t> tables(S * max_pages);
    std::vector<uint8_t> kp(n_pages * page * kvs * es, 0xff), vp(kp.size(), 0xff);  // NaN in every type
    for (int64_t s = 0; s < S; ++s)
        for (int64_t i = 0; i < max_pages; ++i) {
            tables[s * max_pages + i] = ids[s * max_pages + i];
            for (int64_t u = i * page; u < std::min(n_ctx, (i + 1) * page); ++u)
                for (int64_t hk = 0; hk < Hkv; ++hk) {  // the pool's layout: (n_pages, Hkv, page, D)
                    const int64_t dst = ((ids[s * max_pages + i] * Hkv + hk) * page + u % page) * D * es;
                    kernels::kv_store(&kp[dst], t, &kc[(s * n_ctx + u) * kvs + hk * D], D);
                    kernels::kv_store(&vp[dst], t, &vc[(s * n_ctx + u) * kvs + hk * D], D);
                }
        }
    // rows: a prefill run of 20 positions of sequence 1 (the GEMM path when not invariant), decode
    // rows of sequences 0 and 2 at various positions, and a short run
    std::vector<int32_t> seq, pos;
    for (int p = 10; p < 30; ++p) seq.push_back(1), pos.push_back(p);
    for (int p : {0, 15, 16, 49}) seq.push_back(0), pos.push_back(p);
    for (int p : {31, 32, 33}) seq.push_back(2), pos.push_back(p);
    const int64_t N = (int64_t)seq.size();
    std::vector<float> q(N * H * D);
    for (auto& x : q) x = (float)rng.normal();
    std::vector<float> y_ref(N * H * D), y(N * H * D), sc(N * H * n_ctx);
    const kernels::BatchInvariantScope inv(invariant);
    ops::attention_cached_forward_contiguous(y_ref.data(), sc.data(), q.data(), kc.data(), vc.data(), seq.data(),
                                             pos.data(), N, n_ctx, H, Hkv, D);
    ops::attention_cached_forward(y.data(), sc.data(), q.data(), kp.data(), vp.data(), t, tables.data(), max_pages,
                                  page, seq.data(), pos.data(), N, n_ctx, H, Hkv, D);
    for (int64_t i = 0; i < N * H * D; ++i)
        ASSERT_EQ(std::memcmp(&y[i], &y_ref[i], 4), 0) << dtype_name(t) << " page " << page << " invariant " << invariant
                                                      << " element " << i << ": " << y[i] << " vs " << y_ref[i];
}

TEST(KvCache, PagedAttentionEqualsContiguousBitForBit) {
    for (int threads : {1, 2}) {
        set_num_threads(threads);
        for (DType t : {DType::f32, DType::f16, DType::bf16})
            for (int64_t page : {1, 7, 16, 50})
                for (bool inv : {true, false}) compare_paged(page, inv, 11 + threads, t);
    }
}

ModelConfig small_config() {
    ModelConfig m;
    m.vocab_size = 37, m.n_layer = 2, m.n_embd = 32, m.n_head = 4, m.n_head_kv = 2, m.n_ctx = 48;
    m.n_expert = 4, m.n_expert_used = 2, m.n_ff_exp = 24, m.n_ff = 48;
    m.layer_moe = {true, false};
    return m;
}

std::vector<int32_t> tokens(int64_t n, uint64_t seed, int64_t V) {
    Rng r(seed, 1);
    std::vector<int32_t> t(n);
    for (auto& x : t) x = (int32_t)(r.next_u64() % (uint64_t)V);
    return t;
}

// A sequence decoded alone in a one-slot cache, and the same sequence decoded interleaved with
// another in a pool where their pages alternate (and after the other was reset, reusing its
// pages in another order): the same logits, bit for bit, for every cache element type. And f16 /
// bf16 caches give logits near the f32 cache's (relative RMS under 2^-9 / 2^-6: a stored key or
// value is off by at most 2^-11 / 2^-8 of itself) with the same top token.
TEST(KvCache, ForwardCachedDoesNotDependOnPagePlacement) {
    Model m(small_config());
    m.init(3);
    const int64_t V = m.config().vocab_size, T = 45;
    const auto a = tokens(T, 1, V), b = tokens(T, 2, V);
    const kernels::BatchInvariantScope inv(true);
    std::vector<float> alone_f32;
    for (DType type : {DType::f32, DType::f16, DType::bf16}) {
        m.set_cache_type(type);
        std::vector<float> alone;
        {
            auto c = m.make_cache(1);
            EXPECT_EQ(c.type(), type);
            for (int64_t t = 0; t < T; ++t) {
                const int32_t s = 0, p = (int32_t)t;
                m.forward_cached(&a[t], &s, &p, 1, c, true);
                alone.insert(alone.end(), m.logits(), m.logits() + V);
            }
        }
        if (type == DType::f32) {
            alone_f32 = alone;
        } else {
            double d2 = 0, r2 = 0;
            for (size_t i = 0; i < alone.size(); ++i)
                d2 += std::pow((double)alone[i] - alone_f32[i], 2), r2 += std::pow((double)alone_f32[i], 2);
            const double rel = std::sqrt(d2 / r2);
            EXPECT_LT(rel, type == DType::f16 ? 1.0 / 512 : 1.0 / 64) << dtype_name(type);
            EXPECT_GT(rel, 0.0) << dtype_name(type) << ": the cache's rounding should show";
            for (int64_t t = 0; t < T; ++t) {
                const float* x = &alone[t * V];
                const float* y = &alone_f32[t * V];
                EXPECT_EQ(std::max_element(x, x + V) - x, std::max_element(y, y + V) - y) << dtype_name(type) << " position " << t;
            }
        }
        for (int variant = 0; variant < 2; ++variant) {
            auto c = m.make_cache(3, 2 * 48);
            if (variant == 1) {  // scramble the free list: fill and release sequence 2 page by page
                for (int64_t t = 0; t < 40; ++t) {
                    const int32_t s = 2, p = (int32_t)t;
                    m.forward_cached(&b[t], &s, &p, 1, c, true);
                }
                c.truncate(2, 20);
                c.reset(2);
            }
            for (int64_t t = 0; t < T; ++t) {
                const int32_t tk[2] = {b[t], a[t]}, sq[2] = {1, 0}, ps[2] = {(int32_t)t, (int32_t)t};
                m.forward_cached(tk, sq, ps, 2, c, true);
                ASSERT_EQ(std::memcmp(m.logits() + V, &alone[t * V], V * sizeof(float)), 0)
                    << dtype_name(type) << " variant " << variant << " position " << t;
            }
            EXPECT_NE(c.page_id(0, 1), c.page_id(0, 0) + 1) << "the pages are not contiguous: the test would not test";
        }
    }
    EXPECT_THROW(m.set_cache_type(DType::i8), error);
}

TEST(KvCache, ForwardCachedErrorWhenThePoolIsFull) {
    Model m(small_config());
    m.init(3);
    const auto a = tokens(40, 1, m.config().vocab_size);
    auto c = m.make_cache(2, 48);  // 3 pages
    std::vector<int32_t> sid(40, 0), pos(40);
    std::iota(pos.begin(), pos.end(), 0);
    m.forward_cached(a.data(), sid.data(), pos.data(), 40, c, true);  // 3 pages
    const int32_t s1 = 1, p0 = 0;
    try {
        m.forward_cached(a.data(), &s1, &p0, 1, c, true);
        ADD_FAILURE() << "no error";
    } catch (const error& e) {
        EXPECT_NE(std::string(e.what()).find("full"), std::string::npos) << e.what();
    }
    c.reset(0);
    m.forward_cached(a.data(), &s1, &p0, 1, c, true);  // pages again
    EXPECT_EQ(c.free_pages(), 2);
}

}  // namespace
