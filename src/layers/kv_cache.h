#pragma once
// Paged key/value cache for inference: one pool of pages shared by all sequences. A page holds
// kPage consecutive positions of one sequence: for every layer, the RoPE-rotated key and the value
// of every kv head, head by head (a page of one layer is (Hkv, kPage, D): the kPage keys of one
// head are one contiguous block, 4 KB at D = 64 in f32, which is what attention reads for a row and
// head; position-major rows put each position's head D * Hkv elements apart, a stride the hardware
// prefetchers do not follow). Each sequence (a page table, `S` of them) maps its positions to pages:
// position p of sequence s lives in page table(s)[p / kPage], row p % kPage. Pages are handed out
// from a free list as sequences grow, so the pool need not hold S × n_ctx positions; they are
// reference counted, so sequences with a common prefix share its pages (share()), and a shared
// page is copied before either writes into it (prepare(): copy-on-write).
//
// Where a page lives does not change any result: attention reads positions in order through the
// table (ops::attention_cached_forward), the same additions in the same order as a contiguous cache.
//
// Elements are f32 (the default), f16 or bf16 (`--cache-type`, llama.cpp's --cache-type-k/-v with
// one type for both): keys and values are rounded to nearest even when stored and widened exactly
// when read, so f16 / bf16 halve the pool's bytes (and what a decode step reads from it) at a
// stored value's rounding (relative 2^-11 for f16, 2^-8 for bf16). A row's stored values depend on
// its own computation only, so batch invariance holds for every type.
#include <cstdint>
#include <memory>
#include <vector>

#include "core/dtype.h"
#include "core/error.h"
#include "core/memory.h"

namespace moe::layers {

struct KvCache {
    static constexpr int64_t kPage = 16;      // positions per page
    int64_t L = 0, S = 0, n_ctx = 0, KD = 0;  // layers, page tables (sequences), positions per sequence, Hkv*D
    int64_t Hkv = 0, D = 0;                   // kv heads, head dim
    int64_t page = kPage, n_pages = 0;        // positions per page, pages in the pool
    int64_t max_pages = 0;                    // pages of a full sequence: ceil(n_ctx / page)
    std::vector<int64_t> len;                 // (S) positions filled

    KvCache() = default;
    // `slots` page tables over a pool of `positions` (rounded up to whole pages; 0: room for every
    // table to reach n_ctx, i.e. slots × ceil(n_ctx / page) pages, so writes never run out).
    // type: f32, f16 or bf16 (anything else: moe::error)
    KvCache(int64_t layers, int64_t slots, int64_t ctx, int64_t n_kv_heads, int64_t head_dim, int64_t positions = 0,
            DType type = DType::f32);

    // Writes zeros over the whole pool now, so that its pages are backed by memory before the
    // first forward (a page first written by a step otherwise costs that step the kernel's zeroing
    // of it, a 2 MB huge page at a time): what a server does at start, as llama.cpp clears its KV
    // buffer. Commits the pool's full size.
    void commit();
    DType type() const { return type_; }
    // moe::error unless t is an element type a cache can hold: f32, f16 or bf16
    static void check_type(DType t);
    // Stores the KD = Hkv * D floats of k and of v (heads one after another) at (layer l, sequence
    // s, position pos), rounded to type(); load reads them back widened to fp32.
    void store(int64_t l, int64_t s, int64_t pos, const float* k, const float* v);
    void load(int64_t l, int64_t s, int64_t pos, float* k, float* v) const;
    // (n_pages, Hkv, page, D) elements of type() for layer l
    const void* k_layer(int64_t l) const { return k_.get() + l * n_pages * page * KD * esz_; }
    const void* v_layer(int64_t l) const { return v_.get() + l * n_pages * page * KD * esz_; }
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
    size_t bytes() const { return (size_t)2 * L * n_pages * page * KD * esz_; }

private:
    // element index of head 0 of (l, s, pos); head h is h * page * D further
    int64_t at(int64_t l, int64_t s, int64_t pos) const {
        const int32_t p = table_[s * max_pages + pos / page];
        MOE_ASSERT(p >= 0);
        return (l * n_pages + p) * page * KD + pos % page * D;
    }
    void drop(int32_t p);
    DType type_ = DType::f32;
    int64_t esz_ = 4;  // bytes per element
    // K and V, (L, n_pages, Hkv, page, D) elements each; left uninitialised, so memory pages never
    // used cost nothing; on transparent huge pages where the kernel allows them (alloc_large): a
    // sequence's KV pages lie anywhere in the pool, and on 4 KB pages each row-head block read
    // would be a TLB miss of its own
    struct Free {
        void operator()(uint8_t* p) const noexcept { free_large(p); }
    };
    std::unique_ptr<uint8_t[], Free> k_, v_;
    std::vector<int32_t> table_;  // (S, max_pages)
    std::vector<int32_t> refs_;   // (n_pages) tables holding each page
    std::vector<int32_t> free_;   // free page ids, the next one at the back
};

}  // namespace moe::layers
