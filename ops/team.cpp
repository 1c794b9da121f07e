#include "ops/team.hpp"

#include <pthread.h>

#include <array>
#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <exception>
#include <mutex>
#include <thread>
#include <vector>

#include <omp.h>

namespace theanine::team {

namespace {

class Pool;

// The pool whose part the calling thread runs (nullptr outside parts and in the OpenMP
// fallback), and the size of that team.
thread_local Pool* t_pool = nullptr;
thread_local int t_team_n = 0;
thread_local bool t_in_part = false;

inline void pause() {
#if defined(__x86_64__) || defined(__i386__)
    __builtin_ia32_pause();
#endif
}

// How long an idle worker spins before it sleeps: long enough to bridge the serial work
// between two kernels of a step and between two calls of a training loop.
constexpr double kSpinSeconds = 100e-6;

constexpr int kSizeBits = 8;
constexpr int kMaxWorkers = (1 << kSizeBits) - 1;

struct alignas(64) Counter {
    std::atomic<std::uint64_t> v{0};
};

// Spins on a condition, yielding the core once it has waited a while (a worker that lost
// its core to another process gets it back sooner).
template <class Done>
void spin_until(Done done) {
    for (std::uint32_t spins = 0; !done(); ++spins) {
        if (spins < 4096) {
            pause();
        } else {
            std::this_thread::yield();
        }
    }
}

// A calling thread's team: workers 1 .. n-1 are threads of the pool, worker 0 the caller.
// One caller at a time (busy_); each concurrent caller takes a pool of its own.
class Pool {
public:
    bool try_take() {
        bool expected = false;
        return busy_.compare_exchange_strong(expected, true, std::memory_order_acquire);
    }

    void release() { busy_.store(false, std::memory_order_release); }

    // Starts workers until the pool has n - 1; false when no more threads can be started.
    bool ensure_workers(int n) {
        try {
            while (static_cast<int>(threads_.size()) < n - 1) {
                const int index = static_cast<int>(threads_.size()) + 1;
                // It starts waiting from the epoch before the coming part's (it may first
                // run after that part has begun).
                const std::uint64_t before = go_.v.load(std::memory_order_relaxed);
                threads_.emplace_back([this, index, before] { work(index, before); });
                threads_.back().detach();  // a pool lives as long as the process
            }
        } catch (...) {
            return false;
        }
        return true;
    }

    // Runs the part on n threads (the pool was taken by try_take() and has the workers) and
    // releases the pool.
    void run(int n, detail::Part part, void* ctx) {
        struct Release {
            Pool& pool;
            ~Release() { pool.release(); }
        } release{*this};
        part_ = part;
        ctx_ = ctx;
        error_ = nullptr;
        done_.v.store(0, std::memory_order_relaxed);
        arrived_.v.store(0, std::memory_order_relaxed);
        // The next epoch with the team size in its low bits: a worker reads both at once.
        const std::uint64_t go = ((go_.v.load(std::memory_order_relaxed) >> kSizeBits) + 1) << kSizeBits;
        go_.v.store(go | static_cast<std::uint64_t>(n), std::memory_order_seq_cst);
        if (sleepers_.v.load(std::memory_order_seq_cst) > 0) {
            std::lock_guard<std::mutex> lock(sleep_mu_);
            wake_.notify_all();
        }
        run_part(0, n);
        spin_until([&] { return done_.v.load(std::memory_order_acquire) == static_cast<std::uint64_t>(n - 1); });
        if (error_) std::rethrow_exception(error_);
    }

    void barrier(int n) {
        const std::uint64_t gen = generation_.v.load(std::memory_order_acquire);
        if (arrived_.v.fetch_add(1, std::memory_order_acq_rel) + 1 == static_cast<std::uint64_t>(n)) {
            arrived_.v.store(0, std::memory_order_relaxed);
            generation_.v.fetch_add(1, std::memory_order_release);
            return;
        }
        spin_until([&] { return generation_.v.load(std::memory_order_acquire) != gen; });
    }

private:
    void run_part(int w, int n) {
        Pool* const saved_pool = t_pool;
        const int saved_n = t_team_n;
        const bool saved_in = t_in_part;
        t_pool = this;
        t_team_n = n;
        t_in_part = true;
        try {
            part_(ctx_, w, n);
        } catch (...) {
            std::lock_guard<std::mutex> lock(error_mu_);
            if (!error_) error_ = std::current_exception();
        }
        t_pool = saved_pool;
        t_team_n = saved_n;
        t_in_part = saved_in;
    }

    void work(int index, std::uint64_t seen) {
        while (true) {
            // Spin a while for the next part, then sleep until it comes.
            const auto start = std::chrono::steady_clock::now();
            for (std::uint32_t spins = 1; go_.v.load(std::memory_order_acquire) == seen; ++spins) {
                pause();
                if (spins % 256 == 0 &&
                    std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count() > kSpinSeconds) {
                    std::unique_lock<std::mutex> lock(sleep_mu_);
                    sleepers_.v.fetch_add(1, std::memory_order_seq_cst);
                    wake_.wait(lock, [&] { return go_.v.load(std::memory_order_seq_cst) != seen; });
                    sleepers_.v.fetch_sub(1, std::memory_order_relaxed);
                    break;
                }
            }
            seen = go_.v.load(std::memory_order_acquire);
            const int n = static_cast<int>(seen & ((1u << kSizeBits) - 1));
            if (index < n) {
                run_part(index, n);
                done_.v.fetch_add(1, std::memory_order_release);
            }
        }
    }

    std::vector<std::thread> threads_;  // worker i + 1 is threads_[i] (detached)
    std::atomic<bool> busy_{false};
    Counter go_;        // epoch << kSizeBits | team size: a new value starts a part
    Counter done_;      // workers that finished this part
    Counter sleepers_;  // workers asleep on wake_ (or about to be)
    std::mutex sleep_mu_;
    std::condition_variable wake_;
    Counter arrived_, generation_;  // barrier()
    detail::Part part_ = nullptr;
    void* ctx_ = nullptr;
    std::mutex error_mu_;
    std::exception_ptr error_;
};

// The pools, made as callers need them and never destroyed (their workers wait until the
// process ends). A child of fork() has none of their threads: it starts a new set.
constexpr int kPools = 64;
std::array<std::atomic<Pool*>, kPools> g_pools{};

void forget_pools_in_child() {
    for (auto& p : g_pools) p.store(nullptr, std::memory_order_relaxed);
}

// A pool no other caller is using, taken for the calling thread; nullptr when all kPools
// are in use or no thread can be started.
Pool* take_pool() {
    static const bool registered = (pthread_atfork(nullptr, nullptr, forget_pools_in_child), true);
    (void)registered;
    for (auto& slot : g_pools) {
        Pool* p = slot.load(std::memory_order_acquire);
        if (!p) {
            auto* fresh = new Pool;
            fresh->try_take();
            if (slot.compare_exchange_strong(p, fresh, std::memory_order_acq_rel)) return fresh;
            delete fresh;  // another caller filled the slot first: p is its pool
        }
        if (p->try_take()) return p;
    }
    return nullptr;
}

}  // namespace

namespace detail {

void run(int workers, Part part, void* ctx) {
    if (workers <= kMaxWorkers) {
        if (Pool* pool = take_pool()) {
            if (pool->ensure_workers(workers)) {
                pool->run(workers, part, ctx);
                return;
            }
            pool->release();
        }
    }
    // Every pool is in use, no thread could be started or too many workers were asked for:
    // an OpenMP region runs the parts.
    std::exception_ptr error;
#pragma omp parallel num_threads(workers)
    {
        Pool* const saved_pool = t_pool;
        const int saved_n = t_team_n;
        const bool saved_in = t_in_part;
        t_pool = nullptr;
        t_team_n = 0;
        t_in_part = true;
        try {
            part(ctx, omp_get_thread_num(), omp_get_num_threads());
        } catch (...) {
#pragma omp critical(theanine_team_error)
            if (!error) error = std::current_exception();
        }
        t_pool = saved_pool;
        t_team_n = saved_n;
        t_in_part = saved_in;
    }
    if (error) std::rethrow_exception(error);
}

}  // namespace detail

void barrier() {
    if (t_pool) {
        if (t_team_n > 1) t_pool->barrier(t_team_n);
    } else if (t_in_part) {
#pragma omp barrier
    }
}

bool in_part() { return t_in_part; }

}  // namespace theanine::team
