#pragma once
// Paged key/value cache for inference: one pool of pages shared by all sequences. A page holds
// kPage consecutive positions of one sequence: for every layer, the RoPE-rotated key and the value
// of every kv head. Each sequence (a page table, `S` of them) maps its positions to pages:
// position p of sequence s lives in page table(s)[p / kPage], row p % kPage. Pages are handed out
// from a free list as sequences grow, so the pool need not hold S × n_ctx positions; they are
// reference counted, so sequences with a common prefix share its pages (share()), and a shared
// page is copied before either writes into it (prepare(): copy-on-write).
//
// Where a page lives does not change any result: attention reads positions in order through the
// table (ops::attention_cached_forward), the same additions in the same order as a contiguous cache.
#include <cstdint>
#include <memory>
#include <vector>

#include "core/error.h"

namespace moe::layers {

struct KvCache {
    static constexpr int64_t kPage = 16;      // positions per page
    int64_t L = 0, S = 0, n_ctx = 0, KD = 0;  // layers, page tables (sequences), positions per sequence, Hkv*D
    int64_t page = kPage, n_pages = 0;        // positions per page, pages in the pool
    int64_t max_pages = 0;                    // pages of a full sequence: ceil(n_ctx / page)
    std::vector<int64_t> len;                 // (S) positions filled

    KvCache() = default;
    // `slots` page tables over a pool of `positions` (rounded up to whole pages; 0: room for every
    // table to reach n_ctx, i.e. slots × ceil(n_ctx / page) pages, so writes never run out).
    KvCache(int64_t layers, int64_t slots, int64_t ctx, int64_t kd, int64_t positions = 0);

    float* k_at(int64_t l, int64_t s, int64_t pos) { return k_.get() + row_of(l, s, pos) * KD; }
    float* v_at(int64_t l, int64_t s, int64_t pos) { return v_.get() + row_of(l, s, pos) * KD; }
    const float* k_layer(int64_t l) const { return k_.get() + l * n_pages * page * KD; }  // (n_pages, page, KD)
    const float* v_layer(int64_t l) const { return v_.get() + l * n_pages * page * KD; }
    const int32_t* tables() const { return table_.data(); }  // (S, max_pages) page ids, -1: none
    int32_t page_id(int64_t s, int64_t i) const { return table_[s * max_pages + i]; }

    int64_t free_pages() const { return (int64_t)free_.size(); }
    int64_t pages_held(int64_t s) const;           // pages in s's table
    int32_t refs(int64_t page_index) const { return refs_[page_index]; }
    // Pages s needs from the free list to write positions [from, to): absent ones, and shared ones
    // (copied on write).
    int64_t pages_to_write(int64_t s, int64_t from, int64_t to) const;
    // Makes positions [from, to) of s writable: takes absent pages from the free list and copies
    // shared ones into pages of their own. False when the free list runs out (pages taken so far
    // stay in s's table).
    bool prepare(int64_t s, int64_t from, int64_t to);
    // Keeps the pages of s that cover positions [0, keep) and gives the others back (a page goes to
    // the free list when no table holds it); len[s] = min(len[s], keep).
    void truncate(int64_t s, int64_t keep);
    void reset(int64_t s) { truncate(s, 0); }
    // dst (emptied first) shares the pages of src that cover positions [0, n): len[dst] = n. A
    // partial last page is shared too; whichever sequence writes into it first copies it.
    void share(int64_t dst, int64_t src, int64_t n);
    size_t bytes() const { return (size_t)2 * L * n_pages * page * KD * sizeof(float); }

private:
    int64_t row_of(int64_t l, int64_t s, int64_t pos) const {
        const int32_t p = table_[s * max_pages + pos / page];
        MOE_ASSERT(p >= 0);
        return (l * n_pages + p) * page + pos % page;
    }
    void drop(int32_t p);
    // K and V, (L, n_pages, page, KD) each; left uninitialised, so pages never used cost no memory
    std::unique_ptr<float[]> k_, v_;
    std::vector<int32_t> table_;  // (S, max_pages)
    std::vector<int32_t> refs_;   // (n_pages) tables holding each page
    std::vector<int32_t> free_;   // free page ids, the next one at the back
};

}  // namespace moe::layers
