#pragma once
// The one place moe runs work on several threads. OpenMP is used only in parallel.cc; oneDNN
// shares the same libgomp pool, so there is no oversubscription. Never call parallel_for from
// inside a parallel_for body (the inner call runs serially).
#include <cstddef>
#include <cstdint>
#include <type_traits>
#include <utility>

namespace moe {

// A non-owning reference to a callable (std::function would heap-allocate the captures of every
// lambda bigger than two pointers; a step must not allocate). Valid while the callable lives: the
// callers below pass temporaries that outlive the call.
template <class Sig>
class function_ref;

template <class R, class... Args>
class function_ref<R(Args...)> {
public:
    template <class F, class = std::enable_if_t<!std::is_same_v<std::decay_t<F>, function_ref>>>
    function_ref(F&& f) noexcept  // NOLINT: implicit, like std::function
        : obj_((void*)std::addressof(f)),
          call_([](void* o, Args... a) -> R { return (*(std::remove_reference_t<F>*)o)(std::forward<Args>(a)...); }) {}
    R operator()(Args... a) const { return call_(obj_, std::forward<Args>(a)...); }

private:
    void* obj_;
    R (*call_)(void*, Args...);
};

void set_num_threads(int n);  // n <= 0: all hardware threads
int num_threads();

// Runs fn(begin_i, end_i) over contiguous chunks covering [begin, end). Chunks are a fixed
// function of (begin, end, grain, num_threads()), so any per-chunk reduction is deterministic
// for a given thread count.
void parallel_for(int64_t begin, int64_t end, int64_t grain,
                  function_ref<void(int64_t, int64_t)> fn);

// Below this many bytes read and written in all, a loop forks no threads (see the overload below).
// Streaming 1 MiB takes one core 50-100 us; a fork and join of 2 threads costs 0.7 us with both
// cores free and libgomp spinning, but 20-100 us of wall clock where the waiting thread has gone
// to sleep (OMP_WAIT_POLICY=PASSIVE, a gap longer than the spin) or another process holds a core:
// makemoe's per-row ops (512 rows of C 128, 13 of every 20 regions a step forks) took twice their
// serial time at 2 threads on the shared s19 Xeon. docs/performance.md (#24, s19).
inline constexpr int64_t kForkMinBytes = int64_t(1) << 20;

// The same chunks for a loop whose items each read and write about item_bytes bytes: when
// (end - begin) * item_bytes is under kForkMinBytes, the chunks it would hand to threads run one
// after another on the calling thread, in chunk order, so results are those of the forked run.
void parallel_for(int64_t begin, int64_t end, int64_t grain, int64_t item_bytes,
                  function_ref<void(int64_t, int64_t)> fn);

// Zeroes `bytes` bytes at p, split over threads in 256 KB chunks when there are several and the
// whole is at least kForkMinBytes (a serial memset of a step's large buffers leaves the other cores
// waiting).
void parallel_zero(void* p, size_t bytes);

// Runs fn(i) for every i in [0, n), handing tasks to threads as they free up (dynamic schedule),
// for uneven work such as one task per (expert, row block). Which thread runs a task must not
// change its result: a task writes only its own outputs, so the results do not depend on the
// thread count. Work inside a task (gemm, parallel_for) runs on the calling thread alone.
void parallel_tasks(int64_t n, function_ref<void(int64_t)> fn);

// Ends the calling thread's pool of worker threads (OpenMP's omp_pause_resource_all); its next
// parallel_for starts a new one. For a thread that has finished its parallel work while another
// thread goes on with its own (the server loads a model on the main thread, then decodes on the
// engine's): libgomp spins only very briefly, then sleeps, while it manages more threads than there
// are CPUs, and an idle pool still counts. On the s20 Xeon (2 cores) one stream of `serve_load
// --model HF_DIR --dtype int8` decoded at 186.5 tokens/s against 314 from a GGUF file that needed
// no parallel work at load, every fork of the engine waking a sleeping worker.
void release_thread_pool();

// Parallel regions entered so far by parallel_for / parallel_tasks (those that forked threads;
// oneDNN's own regions are not counted). Decode of a small model must enter none per token: every
// fork/join stalls when another process holds a core.
int64_t parallel_regions();

// While alive, parallel_for / parallel_tasks on this thread run inline and oneDNN's GEMMs use one
// thread: for calls whose whole work is a fraction of a millisecond (prefill and decode of small
// models), where a fork/join costs more than it saves and its waiting threads spin afterwards.
class SerialScope {
public:
    explicit SerialScope(bool active = true);
    ~SerialScope();
    SerialScope(const SerialScope&) = delete;
    SerialScope& operator=(const SerialScope&) = delete;

private:
    bool active_;
};

}  // namespace moe
