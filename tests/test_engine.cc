// The continuous-batching engine (src/infer/engine.h) on the tiny qwen3_moe model of tests/data/hf
// with a byte tokenizer: batch invariance (a request alone and the same request among 15 others of
// other lengths, arrivals, sampling options and prompt-chunk budgets give bit-identical ids and
// logprobs, in fp32, bf16 and int8), prefix reuse, stop strings, n, cancellation, length limits,
// and return_routing (each token's route equals `moe routing`'s trace of the same tokens, and is the
// same alone and in a crowd).
#include <gtest/gtest.h>

#include <unistd.h>

#include <cstring>
#include <filesystem>
#include <string>
#include <thread>
#include <vector>

#include "infer/engine.h"
#include "io/checkpoint.h"
#include "io/hf_model.h"
#include "kernels/batch_invariant.h"
#include "kernels/cpu.h"
#include "viz/routing_map.h"

namespace {

namespace fs = std::filesystem;
const std::string kData = std::string(MOE_TEST_DIR) + "/data/";

// tests/data/hf/qwen3_moe with the byte tokenizer, in a temp directory
std::string model_dir() {
    static std::string d;
    if (d.empty()) {
        d = (fs::temp_directory_path() / ("moe_engine_test_" + std::to_string(getpid()))).string();
        fs::create_directories(d);
        for (const char* f : {"config.json", "model.safetensors", "generation_config.json"})
            fs::copy_file(kData + "hf/qwen3_moe/" + f, d + "/" + f, fs::copy_options::overwrite_existing);
        fs::copy_file(kData + "tokenizers/moe_export/byte.tokenizer.json", d + "/tokenizer.json",
                      fs::copy_options::overwrite_existing);
    }
    return d;
}

struct Choice {
    std::vector<int32_t> ids;
    std::vector<float> logprobs;
    std::vector<std::vector<moe::TokenLogprob>> top;
    std::string text, finish;
    // return_routing: (tokens) each generated token's route, the end-of-sequence token's included
    std::vector<int32_t> route_ids;
    std::vector<std::vector<std::vector<moe::ExpertChoice>>> routes;
};
struct Result {
    std::vector<Choice> choices;
    int64_t prompt_tokens = 0, completion_tokens = 0, cached = 0;
};

Result collect(moe::EngineHandle h) {
    Result r;
    moe::EngineEvent ev;
    for (;;) {
        EXPECT_TRUE(h.next(ev, 60000)) << "no event in 60 s";
        if ((int64_t)r.choices.size() <= ev.choice) r.choices.resize(ev.choice + 1);
        Choice& c = r.choices[ev.choice];
        if (ev.kind == moe::EngineEvent::Kind::token) {
            c.ids.push_back(ev.token);
            c.logprobs.push_back(ev.logprob);
            c.top.push_back(ev.top);
            c.text += ev.text;
            if (!ev.route.empty()) c.route_ids.push_back(ev.token), c.routes.push_back(ev.route);
        } else if (ev.kind == moe::EngineEvent::Kind::finish) {
            c.text += ev.text;
            c.finish = ev.finish_reason;
            if (!ev.route.empty()) c.route_ids.push_back(ev.token), c.routes.push_back(ev.route);
        } else {
            r.prompt_tokens = ev.prompt_tokens;
            r.completion_tokens = ev.total_completion_tokens;
            r.cached = ev.cached_prompt_tokens;
            return r;
        }
    }
}

std::vector<int32_t> prompt_of(int64_t len, int32_t salt) {
    std::vector<int32_t> p(len);
    for (int64_t i = 0; i < len; ++i) p[i] = (int32_t)(32 + (i * 7 + salt * 13) % 90);
    return p;
}

moe::EngineRequest request(std::vector<int32_t> prompt, double temperature, uint64_t seed, int64_t max_tokens) {
    moe::EngineRequest q;
    q.prompt = std::move(prompt);
    q.opt.temperature = temperature;
    q.opt.seed = seed;
    q.opt.max_tokens = max_tokens;
    q.top_logprobs = 3;
    return q;
}

void expect_same(const Choice& a, const Choice& b, const std::string& what) {
    ASSERT_EQ(a.ids, b.ids) << what;
    ASSERT_EQ(a.logprobs.size(), b.logprobs.size()) << what;
    for (size_t i = 0; i < a.logprobs.size(); ++i) {
        EXPECT_EQ(std::memcmp(&a.logprobs[i], &b.logprobs[i], sizeof(float)), 0)
            << what << ": logprob of token " << i << ": " << a.logprobs[i] << " vs " << b.logprobs[i];
        ASSERT_EQ(a.top[i].size(), b.top[i].size()) << what;
        for (size_t k = 0; k < a.top[i].size(); ++k) {
            EXPECT_EQ(a.top[i][k].id, b.top[i][k].id) << what;
            EXPECT_EQ(std::memcmp(&a.top[i][k].logprob, &b.top[i][k].logprob, sizeof(float)), 0) << what;
        }
    }
    EXPECT_EQ(a.text, b.text) << what;
}

// The same greedy and seeded requests alone (each in a fresh engine, one slot) and among 15 others
// arriving at different steps with other prompt lengths, sampling options and a prompt-chunk
// budget that cuts prompts differently: identical ids, logprobs and top logprobs, bit for bit.
void check_invariance(const std::string& dtype, moe::DType cache = moe::DType::f32) {
    moe::Checkpoint ck = moe::load_model(model_dir(), dtype, 256);
    moe::Model& model = *ck.model;
    model.set_cache_type(cache);
    const std::vector<moe::EngineRequest> probes = {request(prompt_of(23, 1), 0, 0, 24),
                                                    request(prompt_of(5, 2), 0.9, 1234, 24),
                                                    request(prompt_of(41, 3), 0.7, 99, 20)};
    std::vector<Result> alone;
    for (const auto& p : probes) {
        moe::EngineOptions o;
        o.slots = 1;
        o.batch_tokens = 512;
        moe::Engine e(model, ck.tokenizer, o);
        alone.push_back(collect(e.submit(p)));
        ASSERT_EQ(alone.back().choices.size(), 1u);
        EXPECT_EQ(alone.back().choices[0].ids.size(), (size_t)p.opt.max_tokens) << dtype;
    }
    for (int order = 0; order < 2; ++order) {
        moe::EngineOptions o;
        o.slots = 16;
        o.batch_tokens = order == 0 ? 13 : 64;
        moe::Engine e(model, ck.tokenizer, o);
        std::vector<moe::EngineHandle> others, mine;
        // 13 others of different lengths first (order 0) or the probes first (order 1)
        auto submit_others = [&] {
            for (int i = 0; i < 13; ++i) {
                moe::EngineRequest q = request(prompt_of(3 + i * 5, 10 + i), i % 3 == 0 ? 0.0 : 1.1, 7 + i, 8 + i * 3);
                q.opt.top_k = i % 4 == 1 ? 5 : 0;
                others.push_back(e.submit(q));
                if (i % 4 == 3) std::this_thread::sleep_for(std::chrono::milliseconds(3));  // arrive at later steps
            }
        };
        if (order == 0) submit_others();
        for (const auto& p : probes) mine.push_back(e.submit(p));
        if (order == 1) submit_others();
        for (size_t i = 0; i < probes.size(); ++i) {
            const Result r = collect(mine[i]);
            ASSERT_EQ(r.choices.size(), 1u);
            expect_same(alone[i].choices[0], r.choices[0], dtype + " probe " + std::to_string(i) + " order " + std::to_string(order));
        }
        for (auto& h : others) collect(h);
    }
}

TEST(Engine, BatchInvariantFp32) { check_invariance(""); }
TEST(Engine, BatchInvariantBf16) { check_invariance("bf16"); }
TEST(Engine, BatchInvariantInt8) { check_invariance("int8"); }
// f16 / bf16 KV caches (--cache-type): a row's stored keys and values are its own, rounded
TEST(Engine, BatchInvariantF16Cache) { check_invariance("", moe::DType::f16); }
TEST(Engine, BatchInvariantBf16CacheQ8_0) { check_invariance("q8_0", moe::DType::bf16); }
// Q8_0: on AMX-INT8 hosts the AMX decode rows (one block order for every row count), and with the
// ISA capped at avx512 the VNNI rows (the single-row dots' lane order)
TEST(Engine, BatchInvariantQ8_0) { check_invariance("q8_0"); }
TEST(Engine, BatchInvariantQ8_0Vnni) {
    const moe::kernels::Isa prev = moe::kernels::set_isa_cap(moe::kernels::Isa::avx512);
    check_invariance("q8_0");
    moe::kernels::set_isa_cap(prev);
}

// Without invariance the packed GEMM takes batches of more than 8 rows: results of a crowded batch
// then differ from a request alone in the last bits (15 of 16 logprobs on this model): the
// invariance tests above would see a kernel that broke the rule.
TEST(Engine, InvarianceSwitchIsWhatMakesTheDifference) {
    moe::Checkpoint ck = moe::load_model(model_dir(), "", 256);
    const moe::EngineRequest p = request(prompt_of(30, 4), 0, 0, 16);
    Result alone, crowded;
    {
        moe::EngineOptions o;
        o.slots = 1;
        o.batch_invariant = false;
        moe::Engine e(*ck.model, ck.tokenizer, o);
        alone = collect(e.submit(p));
    }
    {
        moe::EngineOptions o;
        o.slots = 16;
        o.batch_invariant = false;
        moe::Engine e(*ck.model, ck.tokenizer, o);
        std::vector<moe::EngineHandle> hs;
        for (int i = 0; i < 15; ++i) hs.push_back(e.submit(request(prompt_of(30, 20 + i), 0, 0, 16)));
        crowded = collect(e.submit(p));
        for (auto& h : hs) collect(h);
    }
    int differ = 0;
    for (size_t i = 0; i < std::min(alone.choices[0].logprobs.size(), crowded.choices[0].logprobs.size()); ++i)
        differ += alone.choices[0].logprobs[i] != crowded.choices[0].logprobs[i];
    std::printf("without batch invariance: %d of %zu logprobs differ between alone and crowded\n", differ,
                alone.choices[0].logprobs.size());
    // (should the kernels become batch invariant on their own one day, this expectation goes)
    EXPECT_GT(differ, 0);
    EXPECT_FALSE(moe::kernels::batch_invariant());  // the engine's scope restored the switch
}

// A chat that resends its history: the second request's prompt starts with the first's prompt and
// reply; the engine computes only the new tokens, and the result equals a fresh engine's.
TEST(Engine, PrefixReuse) {
    moe::Checkpoint ck = moe::load_model(model_dir(), "", 256);
    moe::EngineOptions o;
    o.slots = 2;
    moe::Engine e(*ck.model, ck.tokenizer, o);
    const std::vector<int32_t> p1 = prompt_of(40, 5);
    const Result r1 = collect(e.submit(request(p1, 0, 0, 10)));
    EXPECT_EQ(r1.cached, 0);
    std::vector<int32_t> p2 = p1;
    p2.insert(p2.end(), r1.choices[0].ids.begin(), r1.choices[0].ids.end());
    for (int32_t t : prompt_of(12, 6)) p2.push_back(t);
    const Result r2 = collect(e.submit(request(p2, 0, 0, 10)));
    // the slot holds the prompt and the reply but the last sampled token (never fed back)
    EXPECT_EQ(r2.cached, 40 + 10 - 1);
    EXPECT_EQ(e.stats().reused_prompt_tokens, 49);
    moe::EngineOptions o1;
    o1.slots = 1;
    o1.prefix_reuse = false;
    moe::Engine fresh(*ck.model, ck.tokenizer, o1);
    const Result r3 = collect(fresh.submit(request(p2, 0, 0, 10)));
    EXPECT_EQ(r3.cached, 0);
    expect_same(r2.choices[0], r3.choices[0], "reused prefix vs fresh");
}

TEST(Engine, ChoicesStopsLengthsAndCancel) {
    moe::Checkpoint ck = moe::load_model(model_dir(), "", 64);
    moe::EngineOptions o;
    o.slots = 3;
    moe::Engine e(*ck.model, ck.tokenizer, o);
    // n = 3 seeded choices: each its own stream, the same as asking for choice i alone is not
    // promised, but the same request twice gives the same three
    moe::EngineRequest q = request(prompt_of(8, 7), 1.0, 42, 12);
    q.n = 3;
    const Result a = collect(e.submit(q)), b = collect(e.submit(q));
    ASSERT_EQ(a.choices.size(), 3u);
    for (int i = 0; i < 3; ++i) expect_same(a.choices[i], b.choices[i], "choice " + std::to_string(i));
    EXPECT_NE(a.choices[0].ids, a.choices[1].ids);
    EXPECT_EQ(a.prompt_tokens, 8);
    EXPECT_EQ(a.completion_tokens, 36);
    EXPECT_EQ(a.choices[0].finish, "length");
    // a stop string taken from the greedy text: the reply ends before it, finish "stop"
    const Result g = collect(e.submit(request(prompt_of(8, 7), 0, 0, 12)));
    const std::string& t = g.choices[0].text;
    ASSERT_GE(t.size(), 6u);
    moe::EngineRequest qs = request(prompt_of(8, 7), 0, 0, 12);
    qs.stop = {t.substr(3, 2)};
    const Result s = collect(e.submit(qs));
    EXPECT_EQ(s.choices[0].finish, "stop");
    EXPECT_EQ(s.choices[0].text, t.substr(0, t.find(qs.stop[0])));
    // the context (64) ends a long reply with "length"
    const Result l = collect(e.submit(request(prompt_of(60, 8), 0, 0, 100)));
    EXPECT_EQ(l.choices[0].finish, "length");
    EXPECT_EQ(l.completion_tokens, 4);
    // errors name both lengths; bad options name the field
    try {
        e.submit(request(prompt_of(64, 9), 0, 0, 4));
        ADD_FAILURE() << "no error";
    } catch (const moe::error& err) {
        EXPECT_NE(std::string(err.what()).find("64 tokens"), std::string::npos) << err.what();
        EXPECT_NE(std::string(err.what()).find("holds 64"), std::string::npos) << err.what();
    }
    moe::EngineRequest bad = request(prompt_of(4, 1), 0, 0, 4);
    bad.opt.top_p = 2;
    EXPECT_THROW(e.submit(bad), moe::error);
    bad = request(prompt_of(4, 1), 0, 0, 4);
    bad.n = 0;
    EXPECT_THROW(e.submit(bad), moe::error);
    // cancel: the request ends with "cancelled" and its slot serves the next one. The engine thread
    // may finish a 50-token reply of this tiny model (a few ms) before cancel() runs when the test
    // thread loses its core, so the cancel is tried until one lands; an attempt it missed must
    // have ended whole ("length", 50 tokens).
    int cancelled = 0;
    for (int attempt = 0; attempt < 20 && cancelled == 0; ++attempt) {
        moe::EngineHandle h = e.submit(request(prompt_of(10, 3), 1.0, 1, 50));
        h.cancel();
        const Result c = collect(h);
        if (c.choices[0].finish == "cancelled") {
            ++cancelled;
        } else {
            EXPECT_EQ(c.choices[0].finish, "length");
            EXPECT_EQ(c.completion_tokens, 50);
        }
    }
    EXPECT_EQ(cancelled, 1);
    EXPECT_EQ(collect(e.submit(request(prompt_of(10, 3), 0, 0, 3))).choices[0].ids.size(), 3u);
    // stop: what runs is cancelled after the grace period, submit then refuses
    moe::EngineHandle last = e.submit(request(prompt_of(10, 3), 1.0, 1, 50));
    e.stop(0);
    EXPECT_TRUE(last.finished());
    EXPECT_THROW(e.submit(request(prompt_of(4, 1), 0, 0, 4)), moe::EngineBusy);
}

// Polls the engine's statistics (published at the end of each step) until ok() or 10 s.
template <class F>
moe::EngineStats wait_stats(const moe::Engine& e, F ok) {
    moe::EngineStats st = e.stats();
    for (int i = 0; i < 1000 && !ok(st); ++i) {
        std::this_thread::sleep_for(std::chrono::milliseconds(10));
        st = e.stats();
    }
    return st;
}

// A pool of one context (64 positions, 4 pages) for 4 sequences that each grow to 50 positions:
// the third waits for pages, running ones are preempted when the pool is out; every reply is the
// same as alone, and every page comes back. Then the same with the 4 as choices of one request
// (queued at once, so the preemptions do not depend on timing): the choices of a roomy pool.
TEST(Engine, PoolExhaustionWaitsPreemptsAndGivesPagesBack) {
    moe::Checkpoint ck = moe::load_model(model_dir(), "", 64);
    std::vector<moe::EngineRequest> qs;
    for (int i = 0; i < 4; ++i) qs.push_back(request(prompt_of(20, 30 + i), i % 2 ? 0.8 : 0.0, 5 + i, 30));
    std::vector<Result> alone;
    for (const auto& q : qs) {
        moe::EngineOptions o;
        o.slots = 1;
        moe::Engine e(*ck.model, ck.tokenizer, o);
        alone.push_back(collect(e.submit(q)));
    }
    for (bool reuse : {true, false}) {
        moe::EngineOptions o;
        o.slots = 4;
        o.kv_positions = 64;
        o.prefix_reuse = reuse;
        moe::Engine e(*ck.model, ck.tokenizer, o);
        EXPECT_EQ(e.stats().kv_total, 64);
        std::vector<moe::EngineHandle> hs;
        for (const auto& q : qs) hs.push_back(e.submit(q));
        for (size_t i = 0; i < qs.size(); ++i) {
            const Result r = collect(hs[i]);
            expect_same(alone[i].choices[0], r.choices[0], "request " + std::to_string(i) + " in a full pool");
        }
        const moe::EngineStats st = wait_stats(e, [](const moe::EngineStats& s) { return s.running == 0; });
        EXPECT_EQ(st.kv_used, 0);
        // without prefix reuse nothing is kept: every page is free again
        if (!reuse) EXPECT_EQ(st.kv_cached, 0);
        else EXPECT_GT(st.kv_cached, 0);
        std::printf("pool of 64 positions, prefix reuse %d: %lld preemptions\n", (int)reuse, (long long)st.preemptions);
    }
    moe::EngineRequest q4 = request(prompt_of(20, 35), 0.8, 21, 30);
    q4.n = 4;
    Result roomy;
    {
        moe::EngineOptions o;
        o.slots = 4;
        moe::Engine e(*ck.model, ck.tokenizer, o);
        roomy = collect(e.submit(q4));
        EXPECT_EQ(e.stats().preemptions, 0);
    }
    for (bool reuse : {true, false}) {
        moe::EngineOptions o;
        o.slots = 4;
        o.kv_positions = 64;
        o.prefix_reuse = reuse;
        moe::Engine e(*ck.model, ck.tokenizer, o);
        const Result r = collect(e.submit(q4));
        ASSERT_EQ(r.choices.size(), 4u);
        for (int i = 0; i < 4; ++i) expect_same(roomy.choices[i], r.choices[i], "choice " + std::to_string(i) + " in a full pool");
        const moe::EngineStats st = wait_stats(e, [](const moe::EngineStats& s) { return s.running == 0; });
        EXPECT_GT(st.preemptions, 0);
        EXPECT_EQ(st.kv_used, 0);
        if (!reuse) EXPECT_EQ(st.kv_cached, 0);
    }
    moe::EngineOptions bad;
    bad.kv_positions = 63;
    EXPECT_THROW(moe::Engine(*ck.model, ck.tokenizer, bad), moe::error);
}

// Finished and cancelled requests (waiting, prefilling and decoding when cancelled) give their
// pages back: with prefix reuse off the pool is all free afterwards.
TEST(Engine, PagesComeBackAfterFinishAndCancel) {
    moe::Checkpoint ck = moe::load_model(model_dir(), "", 128);
    moe::EngineOptions o;
    o.slots = 2;
    o.prefix_reuse = false;
    o.batch_tokens = 8;  // prompts take several steps
    moe::Engine e(*ck.model, ck.tokenizer, o);
    std::vector<moe::EngineHandle> hs;
    for (int i = 0; i < 6; ++i) {
        moe::EngineRequest q = request(prompt_of(30 + i, 40 + i), 1.0, i, i % 2 ? 100 : 5);
        q.n = 1 + i % 2;
        hs.push_back(e.submit(q));
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
    for (int i = 1; i < 6; i += 2) hs[i].cancel();
    for (auto& h : hs) collect(h);
    const moe::EngineStats st =
        wait_stats(e, [](const moe::EngineStats& s) { return s.running == 0 && s.waiting == 0 && s.kv_used == 0; });
    EXPECT_EQ(st.kv_used, 0);
    EXPECT_EQ(st.kv_cached, 0);
    EXPECT_EQ(st.kv_total, 2 * 128);
}

// n = 4: the first choice computes the prompt, the others share its pages (each recomputes only
// the last prompt token, whose logits start its reply); the choices are those of an engine that
// computes the prompt four times.
TEST(Engine, ChoicesSharePromptPages) {
    moe::Checkpoint ck = moe::load_model(model_dir(), "", 128);
    const int64_t P = 37;
    moe::EngineRequest q = request(prompt_of(P, 11), 1.0, 77, 10);
    q.n = 4;
    Result shared, separate;
    {
        moe::EngineOptions o;
        o.slots = 4;
        moe::Engine e(*ck.model, ck.tokenizer, o);
        shared = collect(e.submit(q));
        const moe::EngineStats st = e.stats();
        EXPECT_EQ(st.prompt_tokens, P + 3);
        EXPECT_EQ(st.reused_prompt_tokens, 3 * (P - 1));
        EXPECT_EQ(shared.cached, 0);  // usage reports the request's prompt: computed once
    }
    {
        moe::EngineOptions o;
        o.slots = 4;
        o.prefix_reuse = false;
        moe::Engine e(*ck.model, ck.tokenizer, o);
        separate = collect(e.submit(q));
        EXPECT_EQ(e.stats().prompt_tokens, 4 * P);
        EXPECT_EQ(e.stats().reused_prompt_tokens, 0);
    }
    ASSERT_EQ(shared.choices.size(), 4u);
    for (int i = 0; i < 4; ++i) expect_same(separate.choices[i], shared.choices[i], "choice " + std::to_string(i));
    EXPECT_NE(shared.choices[0].ids, shared.choices[1].ids);
    // greedy: four times the reply of one choice alone, with one slot (the choices take turns)
    moe::EngineRequest g = request(prompt_of(P, 12), 0, 0, 8);
    moe::EngineOptions o1;
    o1.slots = 1;
    moe::Engine e1(*ck.model, ck.tokenizer, o1);
    const Result one = collect(e1.submit(g));
    g.n = 4;
    const Result four = collect(e1.submit(g));
    for (int i = 0; i < 4; ++i) expect_same(one.choices[0], four.choices[i], "greedy choice " + std::to_string(i));
}

// A request whose prompt starts with the prompt of one still running shares those pages (the
// partial last page is copied when either writes into it); both replies are the same as alone.
TEST(Engine, PrefixSharedWithARunningSequence) {
    moe::Checkpoint ck = moe::load_model(model_dir(), "", 128);
    const std::vector<int32_t> base = prompt_of(40, 13);
    std::vector<int32_t> longer = base;
    for (int32_t t : prompt_of(5, 14)) longer.push_back(t);
    const moe::EngineRequest qa = request(base, 0, 0, 40), qb = request(longer, 0.9, 3, 12);
    Result a_alone, b_alone;
    {
        moe::EngineOptions o;
        o.slots = 1;
        moe::Engine e(*ck.model, ck.tokenizer, o);
        a_alone = collect(e.submit(qa));
        moe::Engine f(*ck.model, ck.tokenizer, o);
        b_alone = collect(f.submit(qb));
    }
    moe::EngineOptions o;
    o.slots = 2;
    moe::Engine e(*ck.model, ck.tokenizer, o);
    moe::EngineHandle ha = e.submit(qa);
    moe::EngineEvent first;
    ASSERT_TRUE(ha.next(first, 60000));  // a's prompt is computed
    const Result b = collect(e.submit(qb));
    EXPECT_EQ(b.cached, 40);
    Result a = collect(ha);
    a.choices[0].ids.insert(a.choices[0].ids.begin(), first.token);
    a.choices[0].logprobs.insert(a.choices[0].logprobs.begin(), first.logprob);
    a.choices[0].top.insert(a.choices[0].top.begin(), first.top);
    a.choices[0].text = first.text + a.choices[0].text;
    expect_same(a_alone.choices[0], a.choices[0], "the running sequence");
    expect_same(b_alone.choices[0], b.choices[0], "the one sharing its prefix");
}

// return_routing: each generated token carries the route (every layer's K experts and combine
// weights) of the row it was sampled from: the last prompt token for the first, then each token
// fed back. It equals the route `moe routing` traces (viz::trace_routing: a plain forward over the
// same tokens) and is bit-identical alone and among others; requests that did not ask get none.
TEST(Engine, ReturnRouting) {
    moe::Checkpoint ck = moe::load_model(model_dir(), "", 256);
    moe::Model& model = *ck.model;
    const int64_t L = model.config().n_layer, K = model.config().n_expert_used, E = model.config().n_expert;
    std::vector<moe::EngineRequest> probes = {request(prompt_of(23, 1), 0, 0, 16), request(prompt_of(6, 2), 0.9, 77, 12)};
    for (auto& p : probes) p.return_routing = true;
    std::vector<Choice> alone;
    for (const auto& p : probes) {
        moe::EngineOptions o;
        o.slots = 1;
        moe::Engine e(model, ck.tokenizer, o);
        alone.push_back(collect(e.submit(p)).choices[0]);
    }
    for (size_t i = 0; i < probes.size(); ++i) {
        const Choice& c = alone[i];
        const bool eos = c.finish == "stop";  // the end-of-sequence token has a route, no token event
        ASSERT_EQ(c.routes.size(), c.ids.size() + (eos ? 1 : 0)) << "probe " << i;
        ASSERT_FALSE(c.routes.empty());
        std::vector<int32_t> ids = c.ids;
        if (eos) ids.push_back(c.route_ids.back());
        std::vector<int32_t> route_ids(c.route_ids.begin(), c.route_ids.begin() + (std::ptrdiff_t)c.ids.size());
        EXPECT_EQ(route_ids, c.ids);
        // the reference: the prompt and every generated token but the last, one plain forward
        std::vector<int32_t> seq = probes[i].prompt;
        seq.insert(seq.end(), ids.begin(), ids.end() - 1);
        const moe::viz::RoutingTrace tr = moe::viz::trace_routing(model, ck.tokenizer, seq);
        const int64_t P = (int64_t)probes[i].prompt.size(), T = tr.T;
        for (size_t t = 0; t < c.routes.size(); ++t) {
            ASSERT_EQ((int64_t)c.routes[t].size(), L);
            const int64_t row = P - 1 + (int64_t)t;  // the row token t was sampled from
            for (int64_t l = 0; l < L; ++l) {
                ASSERT_EQ((int64_t)c.routes[t][l].size(), K);
                float sum = 0;
                for (int64_t k = 0; k < K; ++k) {
                    const moe::ExpertChoice& x = c.routes[t][l][k];
                    const int64_t at = (l * T + row) * K + k;
                    EXPECT_EQ(x.expert, tr.expert[at]) << "probe " << i << " token " << t << " layer " << l << " slot " << k;
                    EXPECT_NEAR(x.weight, tr.weight[at], 1e-5) << "probe " << i << " token " << t << " layer " << l;
                    EXPECT_TRUE(x.expert >= 0 && x.expert < E);
                    if (k > 0) EXPECT_GE(c.routes[t][l][k - 1].weight, x.weight);  // best first
                    sum += x.weight;
                }
                EXPECT_NEAR(sum, 1.f, 1e-5);  // norm_topk_prob
            }
        }
    }
    // in a crowd (some others asking for routes, some not, prompts cut in chunks of 13): the same
    // routes bit for bit; the others that did not ask get none
    moe::EngineOptions o;
    o.slots = 16;
    o.batch_tokens = 13;
    moe::Engine e(model, ck.tokenizer, o);
    std::vector<moe::EngineHandle> others, mine;
    for (int i = 0; i < 12; ++i) {
        moe::EngineRequest q = request(prompt_of(3 + i * 4, 30 + i), i % 2 ? 0.0 : 1.0, 5 + i, 6 + i);
        q.return_routing = i % 3 == 0;
        others.push_back(e.submit(q));
        if (i == 5) mine.push_back(e.submit(probes[0]));
    }
    mine.push_back(e.submit(probes[1]));
    for (size_t i = 0; i < probes.size(); ++i) {
        const Choice c = collect(mine[i]).choices[0];
        expect_same(alone[i], c, "routing probe " + std::to_string(i));
        EXPECT_EQ(c.route_ids, alone[i].route_ids);
        ASSERT_EQ(c.routes.size(), alone[i].routes.size());
        for (size_t t = 0; t < c.routes.size(); ++t)
            for (int64_t l = 0; l < L; ++l)
                for (int64_t k = 0; k < K; ++k) {
                    EXPECT_EQ(c.routes[t][l][k].expert, alone[i].routes[t][l][k].expert) << i << " " << t << " " << l;
                    EXPECT_EQ(std::memcmp(&c.routes[t][l][k].weight, &alone[i].routes[t][l][k].weight, sizeof(float)), 0)
                        << "probe " << i << " token " << t << " layer " << l << " slot " << k;
                }
    }
    for (size_t i = 0; i < others.size(); ++i) {
        const Choice c = collect(others[i]).choices[0];
        if (i % 3 == 0) EXPECT_EQ(c.routes.size(), c.ids.size() + (c.finish == "stop" ? 1 : 0)) << "other " << i;
        else EXPECT_TRUE(c.routes.empty()) << "other " << i;
    }
}

// A dense model has no route to return: submit refuses the request (HTTP 400).
TEST(Engine, ReturnRoutingOnADenseModelIsAnError) {
    const std::string d = model_dir() + "-dense";
    fs::create_directories(d);
    for (const char* f : {"config.json", "model.safetensors", "generation_config.json"})
        fs::copy_file(kData + "hf/llama/" + f, d + "/" + f, fs::copy_options::overwrite_existing);
    fs::copy_file(kData + "tokenizers/moe_export/byte.tokenizer.json", d + "/tokenizer.json",
                  fs::copy_options::overwrite_existing);
    moe::Checkpoint ck = moe::load_model(d, "", 64);
    moe::Engine e(*ck.model, ck.tokenizer, moe::EngineOptions{});
    moe::EngineRequest q = request(prompt_of(5, 1), 0, 0, 4);
    q.return_routing = true;
    try {
        e.submit(q);
        ADD_FAILURE() << "no error";
    } catch (const moe::error& err) {
        EXPECT_NE(std::string(err.what()).find("dense"), std::string::npos) << err.what();
    }
    q.return_routing = false;
    EXPECT_EQ(collect(e.submit(q)).choices[0].ids.size(), 4u);
}

}  // namespace
