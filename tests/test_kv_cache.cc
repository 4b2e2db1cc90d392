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
    // 2 layers, 3 tables, n_ctx 40 (3 pages of 16), KD 4, a pool of 5 pages
    layers::KvCache c(2, 3, 40, 4, 70);
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
        for (int64_t p = 0; p < 20; ++p)
            for (int64_t j = 0; j < 4; ++j) c.k_at(l, 0, p)[j] = (float)(l * 1000 + p * 10 + j), c.v_at(l, 0, p)[j] = -(float)p;
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
        for (int64_t p = 16; p < 18; ++p) EXPECT_EQ(c.k_at(l, 1, p)[2], (float)(l * 1000 + p * 10 + 2)) << "copied";
    c.k_at(1, 1, 17)[0] = 12345.f;  // the copy is its own
    EXPECT_EQ(c.k_at(1, 0, 17)[0], (float)(1000 + 170));
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
    EXPECT_EQ(c.k_at(0, 1, 5)[1], (float)(5 * 10 + 1));
    c.reset(1);
    EXPECT_EQ(c.free_pages(), 5);  // all back: no leak
    for (int64_t i = 0; i < c.n_pages; ++i) EXPECT_EQ(c.refs(i), 0);
    EXPECT_THROW(layers::KvCache(2, 0, 40, 4), error);
    EXPECT_THROW(layers::KvCache(2, 1, 40, 4, -1), error);
}

TEST(KvCache, DefaultPoolHoldsEveryTableFull) {
    layers::KvCache c(1, 3, 33, 2);
    EXPECT_EQ(c.n_pages, 3 * 3);
    for (int64_t s = 0; s < 3; ++s) ASSERT_TRUE(c.prepare(s, 0, 33));
    EXPECT_EQ(c.free_pages(), 0);
}

// The paged kernel against the contiguous reference: K/V of S sequences of n_ctx positions laid
// out contiguously, and the same values scattered over the pages of a pool in a shuffled order.
void compare_paged(int64_t page, bool invariant, uint64_t seed) {
    const int64_t S = 3, n_ctx = 50, H = 4, Hkv = 2, D = 8, kvs = Hkv * D;
    Rng rng(seed, page);
    std::vector<float> kc(S * n_ctx * kvs), vc(kc.size());
    for (auto& x : kc) x = (float)rng.normal();
    for (auto& x : vc) x = (float)rng.normal();
    const int64_t max_pages = (n_ctx + page - 1) / page, n_pages = S * max_pages + 5;
    std::vector<int32_t> ids(n_pages);
    std::iota(ids.begin(), ids.end(), 0);
    for (int64_t i = n_pages - 1; i > 0; --i) std::swap(ids[i], ids[rng.next_u64() % (uint64_t)(i + 1)]);
    std::vector<int32_t> tables(S * max_pages);
    std::vector<float> kp(n_pages * page * kvs, std::nanf("")), vp(kp.size(), std::nanf(""));
    for (int64_t s = 0; s < S; ++s)
        for (int64_t i = 0; i < max_pages; ++i) {
            tables[s * max_pages + i] = ids[s * max_pages + i];
            for (int64_t u = i * page; u < std::min(n_ctx, (i + 1) * page); ++u) {
                std::memcpy(&kp[(ids[s * max_pages + i] * page + u % page) * kvs], &kc[(s * n_ctx + u) * kvs], kvs * 4);
                std::memcpy(&vp[(ids[s * max_pages + i] * page + u % page) * kvs], &vc[(s * n_ctx + u) * kvs], kvs * 4);
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
    ops::attention_cached_forward(y.data(), sc.data(), q.data(), kp.data(), vp.data(), tables.data(), max_pages, page,
                                  seq.data(), pos.data(), N, n_ctx, H, Hkv, D);
    for (int64_t i = 0; i < N * H * D; ++i)
        ASSERT_EQ(std::memcmp(&y[i], &y_ref[i], 4), 0)
            << "page " << page << " invariant " << invariant << " element " << i << ": " << y[i] << " vs " << y_ref[i];
}

TEST(KvCache, PagedAttentionEqualsContiguousBitForBit) {
    for (int threads : {1, 2}) {
        set_num_threads(threads);
        for (int64_t page : {1, 7, 16, 50})
            for (bool inv : {true, false}) compare_paged(page, inv, 11 + threads);
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
// pages in another order): the same logits, bit for bit.
TEST(KvCache, ForwardCachedDoesNotDependOnPagePlacement) {
    Model m(small_config());
    m.init(3);
    const int64_t V = m.config().vocab_size, T = 45;
    const auto a = tokens(T, 1, V), b = tokens(T, 2, V);
    const kernels::BatchInvariantScope inv(true);
    std::vector<float> alone;
    {
        auto c = m.make_cache(1);
        for (int64_t t = 0; t < T; ++t) {
            const int32_t s = 0, p = (int32_t)t;
            m.forward_cached(&a[t], &s, &p, 1, c, true);
            alone.insert(alone.end(), m.logits(), m.logits() + V);
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
            ASSERT_EQ(std::memcmp(m.logits() + V, &alone[t * V], V * sizeof(float)), 0) << "variant " << variant << " position " << t;
        }
        EXPECT_NE(c.page_id(0, 1), c.page_id(0, 0) + 1) << "the pages are not contiguous: the test would not test";
    }
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
