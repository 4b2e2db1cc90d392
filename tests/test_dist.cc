// Communicators (src/dist/comm.h): every collective on the thread fake for W = 1..4 (zero-length
// messages, ranks that send nothing, one rank receiving everything, splits), the fixed-order sums
// checked bit for bit against the left fold in rank order. The MpiWorld tests run the same bodies
// on dist::world(): one process in the plain suite, and under `mpirun -np 2|3` (tests/dist.cmake).
#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <stdexcept>
#include <vector>

#include "core/error.h"
#include "dist/comm.h"
#include "dist/fake_comm.h"

using moe::dist::Comm;

namespace {

uint64_t mix(uint64_t x) {
    x += 0x9e3779b97f4a7c15ull;
    x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ull;
    x = (x ^ (x >> 27)) * 0x94d049bb133111ebull;
    return x ^ (x >> 31);
}
// rank r's element i: magnitudes 2^-12 .. 2^12 with both signs, so the order of a sum shows in its bits
template <class F>
F value(int r, int64_t i) {
    const uint64_t h = mix((uint64_t)r * 1000003u + (uint64_t)i);
    const double m = 1.0 + (double)(h & 0xffffff) / 16777216.0;
    const int e = (int)((h >> 24) % 25) - 12;
    return (F)(((h >> 40) & 1 ? -1.0 : 1.0) * std::ldexp(m, e));
}
uint8_t byte_of(int from, int to, int64_t i) { return (uint8_t)(from * 61 + to * 17 + i * 3 + 1); }

void check_broadcast(Comm& c) {
    const int W = c.size(), r = c.rank();
    for (int root = 0; root < W; ++root)
        for (int64_t n : {0, 1, 13, 4096}) {
            std::vector<uint8_t> buf(n);
            for (int64_t i = 0; i < n; ++i) buf[i] = r == root ? byte_of(root, 0, i) : 0xee;
            c.broadcast(buf.data(), n, root);
            for (int64_t i = 0; i < n; ++i) ASSERT_EQ(buf[i], byte_of(root, 0, i)) << "root " << root << " n " << n;
        }
}

void check_allgather(Comm& c) {
    const int W = c.size(), r = c.rank();
    // rank q sends 3q bytes: rank 0 nothing
    std::vector<int64_t> counts(W);
    int64_t total = 0;
    for (int q = 0; q < W; ++q) total += counts[q] = 3 * q;
    std::vector<uint8_t> mine(counts[r]), all(total + 1, 0xee);
    for (int64_t i = 0; i < counts[r]; ++i) mine[i] = byte_of(r, 0, i);
    c.allgatherv(mine.data(), counts[r], all.data(), counts.data());
    int64_t off = 0;
    for (int q = 0; q < W; ++q)
        for (int64_t i = 0; i < counts[q]; ++i) ASSERT_EQ(all[off++], byte_of(q, 0, i));
    EXPECT_EQ(all[total], 0xee) << "wrote past the end";
    // equal sizes, and zero bytes from everyone
    double x = 0.5 + r;
    std::vector<double> xs(W);
    c.allgather(&x, sizeof x, xs.data());
    for (int q = 0; q < W; ++q) EXPECT_EQ(xs[q], 0.5 + q);
    c.allgather(nullptr, 0, nullptr);
    EXPECT_EQ(c.allgather_count(7 * r + 1), [&] {
        std::vector<int64_t> v;
        for (int q = 0; q < W; ++q) v.push_back(7 * q + 1);
        return v;
    }());
}

// bytes sent from rank `from` to rank `to` in pattern p
int64_t a2a_count(int p, int from, int to, int W) {
    switch (p) {
        case 0: return (from + 2 * to) % 3;                 // some zero
        case 1: return to == 0 ? 5 + from : 0;              // everything to rank 0
        case 2: return from == W - 1 ? 0 : 4 * (to + 1);    // the last rank sends nothing
        default: return 0;                                  // nobody sends anything
    }
}

void check_alltoallv(Comm& c) {
    const int W = c.size(), r = c.rank();
    for (int p = 0; p < 4; ++p) {
        std::vector<int64_t> sc(W), sd(W), rc(W), rd(W);
        int64_t st = 0, rt = 0;
        for (int q = 0; q < W; ++q) {
            sc[q] = a2a_count(p, r, q, W), sd[q] = st, st += sc[q] + 1;  // a gap byte between blocks
            rc[q] = a2a_count(p, q, r, W), rd[q] = rt, rt += rc[q] + 1;
        }
        std::vector<uint8_t> send(st, 0xaa), recv(rt, 0xee);
        for (int q = 0; q < W; ++q)
            for (int64_t i = 0; i < sc[q]; ++i) send[sd[q] + i] = byte_of(r, q, i);
        c.alltoallv(send.data(), sc.data(), sd.data(), recv.data(), rc.data(), rd.data());
        for (int q = 0; q < W; ++q) {
            for (int64_t i = 0; i < rc[q]; ++i)
                ASSERT_EQ(recv[rd[q] + i], byte_of(q, r, i)) << "pattern " << p << " from " << q;
            EXPECT_EQ(recv[rd[q] + rc[q]], 0xee) << "gap overwritten, pattern " << p;
        }
        // floats: counts and displacements in elements
        std::vector<float> fs(st), fr(rt, -1.f);
        for (int q = 0; q < W; ++q)
            for (int64_t i = 0; i < sc[q]; ++i) fs[sd[q] + i] = value<float>(r * 16 + q, i);
        c.alltoallv(fs.data(), sc.data(), sd.data(), fr.data(), rc.data(), rd.data());
        for (int q = 0; q < W; ++q)
            for (int64_t i = 0; i < rc[q]; ++i) ASSERT_EQ(fr[rd[q] + i], value<float>(q * 16 + r, i));
    }
}

template <class F>
void check_allreduce(Comm& c) {
    const int W = c.size(), r = c.rank();
    for (int64_t n : {0, 1, 15, 17, 100, 5000}) {
        std::vector<F> x(n), want(n);
        for (int64_t i = 0; i < n; ++i) {
            x[i] = value<F>(r, i);
            F s = value<F>(0, i);
            for (int q = 1; q < W; ++q) s += value<F>(q, i);  // the left fold in rank order
            want[i] = s;
        }
        c.allreduce_sum(x.data(), n);
        ASSERT_TRUE(n == 0 || std::memcmp(x.data(), want.data(), n * sizeof(F)) == 0) << "n " << n << " W " << W;
    }
}

// three rounds of the running fold: ((x0 + x1 + ...) of round 0) + round 1's x0 + x1 + ..., and so on
void check_fold(Comm& c) {
    const int W = c.size(), r = c.rank();
    const int64_t n = 333;
    const int64_t lo = moe::dist::shard_begin(n, W, r), hi = moe::dist::shard_begin(n, W, r + 1);
    std::vector<float> shard(hi - lo), full(n), scratch;
    for (int round = 0; round < 3; ++round) {  // round 2 with the scratch buffer of round 1
        std::vector<float> x(n);
        for (int64_t i = 0; i < n; ++i) x[i] = value<float>(round * W + r, i);
        moe::dist::reduce_scatter_fold(c, x.data(), n, shard.data(), round == 0, round ? &scratch : nullptr);
    }
    moe::dist::allgather_shards(c, shard.data(), n, sizeof(float), full.data());
    for (int64_t i = 0; i < n; ++i) {
        float s = value<float>(0, i);
        for (int m = 1; m < 3 * W; ++m) s += value<float>(m, i);  // micro-batch order
        ASSERT_EQ(full[i], s) << i;
    }
}

// the same with 1..3 pieces per rank: terms in (rank, piece) order, piece p of rank q in round j
// being micro-batch j·W·pieces + q·pieces + p (expert parallelism's expert gradients)
void check_fold_pieces(Comm& c) {
    const int W = c.size(), r = c.rank();
    const int64_t n = 91;
    for (int64_t pieces = 1; pieces <= 3; ++pieces) {
        const int64_t lo = moe::dist::shard_begin(n, W, r), hi = moe::dist::shard_begin(n, W, r + 1);
        std::vector<float> shard(hi - lo), full(n), scratch, send;
        for (int round = 0; round < 2; ++round) {
            std::vector<float> x(pieces * n);
            for (int64_t p = 0; p < pieces; ++p)
                for (int64_t i = 0; i < n; ++i) x[p * n + i] = value<float>((int)((round * W + r) * pieces + p), i);
            moe::dist::reduce_scatter_fold_pieces(c, x.data(), pieces, n, shard.data(), round == 0, &scratch, &send);
        }
        moe::dist::allgather_shards(c, shard.data(), n, sizeof(float), full.data());
        for (int64_t i = 0; i < n; ++i) {
            float s = value<float>(0, i);
            for (int m = 1; m < 2 * W * pieces; ++m) s += value<float>(m, i);
            ASSERT_EQ(full[i], s) << "pieces " << pieces << " element " << i;
        }
    }
}

void check_split(Comm& c) {
    const int W = c.size(), r = c.rank();
    // two colors, keys reversing the order; the last rank of 3+ joins none
    const int color = (W >= 3 && r == W - 1) ? -1 : r % 2;
    auto sub = c.split(color, -r);
    if (color < 0) {
        EXPECT_EQ(sub, nullptr);
        return;
    }
    ASSERT_NE(sub, nullptr);
    std::vector<int> members;
    for (int q = W - 1; q >= 0; --q)
        if (q % 2 == color && !(W >= 3 && q == W - 1)) members.push_back(q);
    ASSERT_EQ(sub->size(), (int)members.size());
    EXPECT_EQ(members[sub->rank()], r);
    std::vector<int> got(sub->size());
    sub->allgather(&r, sizeof r, got.data());
    EXPECT_EQ(got, members);
    double x = r + 0.25;
    sub->allreduce_sum(&x, 1);
    double want = 0;
    for (int q : members) want += q + 0.25;
    EXPECT_EQ(x, want);
    sub->barrier();
}

void check_all(Comm& c) {
    c.barrier();
    check_broadcast(c);
    check_allgather(c);
    check_alltoallv(c);
    check_allreduce<float>(c);
    check_allreduce<double>(c);
    check_fold(c);
    check_fold_pieces(c);
    check_split(c);
    c.barrier();
}

TEST(FakeComm, EveryCollectiveForOneToFourRanks) {
    for (int W = 1; W <= 4; ++W) {
        SCOPED_TRACE("W = " + std::to_string(W));
        std::vector<int> seen(W, -1);
        moe::dist::run_fake_world(W, [&](Comm& c) {
            seen[c.rank()] = c.size();
            check_all(c);
        });
        for (int s : seen) EXPECT_EQ(s, W);
    }
}

TEST(FakeComm, ShardsCoverEverythingOnce) {
    for (int W = 1; W <= 5; ++W)
        for (int64_t n : {0, 1, 16, 17, 100, 1000}) {
            EXPECT_EQ(moe::dist::shard_begin(n, W, 0), 0);
            EXPECT_EQ(moe::dist::shard_begin(n, W, W), n);
            for (int r = 0; r < W; ++r) EXPECT_LE(moe::dist::shard_begin(n, W, r), moe::dist::shard_begin(n, W, r + 1));
        }
}

// The values make the order visible: summing in reverse rank order gives other bits, so the
// bit-exact checks above would catch a reduction that is not the rank-order fold.
TEST(FakeComm, OrderOfTheSumShowsInTheBits) {
    int differ = 0;
    for (int64_t i = 0; i < 1000; ++i) {
        float a = value<float>(0, i) + value<float>(1, i) + value<float>(2, i);
        float b = value<float>(2, i) + value<float>(1, i) + value<float>(0, i);
        differ += a != b;
    }
    EXPECT_GT(differ, 10);
}

TEST(FakeComm, AFailingRankEndsTheOthersCollectives) {
    EXPECT_THROW(moe::dist::run_fake_world(3, [](Comm& c) {
        if (c.rank() == 1) throw moe::error("rank 1 gives up");
        for (int i = 0; i < 3; ++i) c.barrier();
    }), moe::error);
    try {
        moe::dist::run_fake_world(2, [](Comm& c) {
            if (c.rank() == 0) throw moe::error("rank 0 gives up");
            double x = 1;
            c.allreduce_sum(&x, 1);
        });
        FAIL() << "no exception";
    } catch (const moe::error& e) {
        EXPECT_STREQ(e.what(), "rank 0 gives up");  // the cause, not the consequence
    }
}

// The same bodies on the process's world: SelfComm in the plain suite, MPI under mpirun.
TEST(MpiWorld, EveryCollective) {
    Comm& c = moe::dist::world();
    EXPECT_EQ(c.size(), moe::dist::launcher_size());
    EXPECT_EQ(c.rank(), moe::dist::launcher_rank());
    check_all(c);
}

}  // namespace
