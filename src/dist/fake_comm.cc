#include "dist/fake_comm.h"

#include <algorithm>
#include <condition_variable>
#include <cstring>
#include <exception>
#include <mutex>
#include <thread>
#include <vector>

#include "core/error.h"

namespace moe::dist {

namespace {

// One mutex and condition variable for the whole fake world (all its groups): a failing rank
// wakes every waiter at once.
struct World {
    std::mutex mu;
    std::condition_variable cv;
    bool aborted = false;
};

// What a rank posts for a collective.
struct Post {
    const void* ptr = nullptr;
    int64_t bytes = 0;
    const int64_t* counts = nullptr;
    const int64_t* displs = nullptr;
    int color = 0, key = 0;
    std::shared_ptr<struct Group> made;  // split: the group its leader made
};

struct Group {
    std::shared_ptr<World> world;
    int W;
    std::vector<Post> posts;
    int arrived = 0;
    uint64_t generation = 0;
    Group(std::shared_ptr<World> w, int n) : world(std::move(w)), W(n), posts(n) {}

    void wait_all() {
        std::unique_lock<std::mutex> lk(world->mu);
        if (world->aborted) throw error("fake communicator: another rank failed");
        const uint64_t gen = generation;
        if (++arrived == W) {
            arrived = 0;
            ++generation;
            world->cv.notify_all();
            return;
        }
        world->cv.wait(lk, [&] { return generation != gen || world->aborted; });
        if (generation == gen) throw error("fake communicator: another rank failed");
    }
};

class FakeComm final : public Comm {
public:
    FakeComm(std::shared_ptr<Group> g, int r) : g_(std::move(g)), r_(r) {}
    int rank() const override { return r_; }
    int size() const override { return g_->W; }

    void barrier() override { g_->wait_all(); }

    void broadcast(void* data, int64_t bytes, int root) override {
        MOE_ASSERT(root >= 0 && root < g_->W);
        g_->posts[r_] = Post{data, bytes};
        g_->wait_all();
        const Post& p = g_->posts[root];
        MOE_ASSERT(p.bytes == bytes);
        if (r_ != root && bytes) std::memcpy(data, p.ptr, bytes);
        g_->wait_all();
    }

    void allgatherv(const void* in, int64_t bytes, void* out, const int64_t* counts) override {
        MOE_ASSERT(counts[r_] == bytes);
        g_->posts[r_] = Post{in, bytes};
        g_->wait_all();
        int64_t off = 0;
        for (int q = 0; q < g_->W; ++q) {
            const Post& p = g_->posts[q];
            MOE_ASSERT(p.bytes == counts[q]);
            if (p.bytes) std::memcpy((char*)out + off, p.ptr, p.bytes);
            off += counts[q];
        }
        g_->wait_all();
    }

    void alltoallv(const void* send, const int64_t* send_counts, const int64_t* send_displs, void* recv,
                   const int64_t* recv_counts, const int64_t* recv_displs) override {
        g_->posts[r_] = Post{send, 0, send_counts, send_displs};
        g_->wait_all();
        for (int q = 0; q < g_->W; ++q) {
            const Post& p = g_->posts[q];
            MOE_ASSERT(p.counts[r_] == recv_counts[q]);
            if (recv_counts[q])
                std::memcpy((char*)recv + recv_displs[q], (const char*)p.ptr + p.displs[r_], recv_counts[q]);
        }
        g_->wait_all();
    }
    using Comm::alltoallv;

    std::unique_ptr<Comm> split(int color, int key) override {
        g_->posts[r_] = Post{};
        g_->posts[r_].color = color;
        g_->posts[r_].key = key;
        g_->wait_all();
        // members of my color, by (key, rank)
        std::vector<int> members;
        if (color >= 0)
            for (int q = 0; q < g_->W; ++q)
                if (g_->posts[q].color == color) members.push_back(q);
        std::stable_sort(members.begin(), members.end(),
                         [&](int a, int b) { return g_->posts[a].key < g_->posts[b].key; });
        const bool leader = !members.empty() && members[0] == r_;
        if (leader) g_->posts[r_].made = std::make_shared<Group>(g_->world, (int)members.size());
        g_->wait_all();
        std::unique_ptr<Comm> out;
        if (!members.empty()) {
            const int new_rank = (int)(std::find(members.begin(), members.end(), r_) - members.begin());
            out = std::make_unique<FakeComm>(g_->posts[members[0]].made, new_rank);
        }
        g_->wait_all();
        if (leader) g_->posts[r_].made.reset();
        return out;
    }

private:
    std::shared_ptr<Group> g_;
    int r_;
};

}  // namespace

void run_fake_world(int W, const std::function<void(Comm&)>& fn) {
    MOE_ASSERT(W >= 1);
    auto world = std::make_shared<World>();
    auto group = std::make_shared<Group>(world, W);
    std::vector<std::exception_ptr> errors(W);
    std::vector<std::thread> threads;
    for (int r = 0; r < W; ++r)
        threads.emplace_back([&, r] {
            try {
                FakeComm c(group, r);
                fn(c);
            } catch (...) {
                errors[r] = std::current_exception();
                std::lock_guard<std::mutex> lk(world->mu);
                world->aborted = true;
                world->cv.notify_all();
            }
        });
    for (auto& t : threads) t.join();
    // the first failure that was not a consequence of another's
    for (auto& e : errors)
        if (e) {
            try {
                std::rethrow_exception(e);
            } catch (const error& x) {
                if (std::string(x.what()).find("fake communicator: another rank failed") != std::string::npos) continue;
                throw;
            }
        }
    for (auto& e : errors)
        if (e) std::rethrow_exception(e);
}

}  // namespace moe::dist
