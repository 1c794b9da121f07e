#include "ops/team.hpp"

#include <algorithm>
#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <exception>
#include <mutex>
#include <thread>

#include <omp.h>

namespace theanine::team {

namespace {

class Crew;

thread_local Crew* t_session = nullptr;  // the session this thread opened and runs the steps of
thread_local Crew* t_crew = nullptr;     // the crew whose part this thread runs (barrier())
thread_local int t_team_n = 0;           // the size of that team
thread_local bool t_in_part = false;
thread_local std::uint64_t t_teams = 0;

inline void pause() {
#if defined(__x86_64__) || defined(__i386__)
    __builtin_ia32_pause();
#endif
}

// How long a waiting thread spins before it sleeps: long enough to bridge the serial steps
// between two parallel kernels.
constexpr double kSpinSeconds = 100e-6;

constexpr int kSizeBits = 8;  // the team size in the low bits of Crew::go_
constexpr std::uint64_t kSizeMask = (1u << kSizeBits) - 1;

struct alignas(64) Counter {
    std::atomic<std::uint64_t> v{0};
};

// Spins on a condition, yielding the core once it has waited a while (a thread that lost
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

// The threads of a session: worker 0 is the thread running the steps, workers 1 .. size-1
// wait in serve() for the parts it hands out.
class Crew {
public:
    int size = 1;

    void run(int n, detail::Fn part, void* ctx) {
        part_ = part;
        ctx_ = ctx;
        error_ = nullptr;
        done_.v.store(0, std::memory_order_relaxed);
        arrived_.v.store(0, std::memory_order_relaxed);
        post(static_cast<std::uint64_t>(n));
        run_part(0, n);
        spin_until([&] { return done_.v.load(std::memory_order_acquire) == static_cast<std::uint64_t>(n - 1); });
        if (error_) std::rethrow_exception(error_);
    }

    // The session is over: the waiting threads leave serve().
    void stop() { post(0); }

    void serve(int index) {
        std::uint64_t seen = 0;
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
            const int n = static_cast<int>(seen & kSizeMask);
            if (n == 0) return;
            if (index < n) {
                run_part(index, n);
                done_.v.fetch_add(1, std::memory_order_release);
            }
        }
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
    // The next epoch, with the team size (0: stop) in its low bits: a waiting thread reads
    // both at once.
    void post(std::uint64_t n) {
        const std::uint64_t epoch = (go_.v.load(std::memory_order_relaxed) >> kSizeBits) + 1;
        go_.v.store(epoch << kSizeBits | n, std::memory_order_seq_cst);
        if (sleepers_.v.load(std::memory_order_seq_cst) > 0) {
            std::lock_guard<std::mutex> lock(sleep_mu_);
            wake_.notify_all();
        }
    }

    void run_part(int w, int n) {
        Crew* const saved_crew = t_crew;
        const int saved_n = t_team_n;
        const bool saved_in = t_in_part;
        t_crew = this;
        t_team_n = n;
        t_in_part = true;
        try {
            part_(ctx_, w, n);
        } catch (...) {
            std::lock_guard<std::mutex> lock(error_mu_);
            if (!error_) error_ = std::current_exception();
        }
        t_crew = saved_crew;
        t_team_n = saved_n;
        t_in_part = saved_in;
    }

    Counter go_;        // epoch << kSizeBits | team size: a new value starts a part
    Counter done_;      // workers that finished this part
    Counter sleepers_;  // threads asleep on wake_ (or about to be)
    std::mutex sleep_mu_;
    std::condition_variable wake_;
    Counter arrived_, generation_;  // barrier()
    detail::Fn part_ = nullptr;
    void* ctx_ = nullptr;
    std::mutex error_mu_;
    std::exception_ptr error_;
};

}  // namespace

namespace detail {

void run(int workers, Fn part, void* ctx) {
    ++t_teams;
    if (t_session && !t_in_part && t_session->size > 1) {
        t_session->run(std::min(workers, std::min(t_session->size, static_cast<int>(kSizeMask))), part, ctx);
        return;
    }
    // No session: an OpenMP region of its own (on one thread when nested in another region).
    std::exception_ptr error;
#pragma omp parallel num_threads(workers)
    {
        Crew* const saved_crew = t_crew;
        const bool saved_in = t_in_part;
        t_crew = nullptr;
        t_in_part = true;
        try {
            part(ctx, omp_get_thread_num(), omp_get_num_threads());
        } catch (...) {
#pragma omp critical(theanine_team_error)
            if (!error) error = std::current_exception();
        }
        t_crew = saved_crew;
        t_in_part = saved_in;
    }
    if (error) std::rethrow_exception(error);
}

void session(int workers, void (*body)(void*), void* ctx) {
    if (workers <= 1 || t_session || t_in_part) {
        body(ctx);
        return;
    }
    Crew crew;
    std::exception_ptr error;
#pragma omp parallel num_threads(workers)
    {
        if (omp_get_thread_num() == 0) {
            crew.size = omp_get_num_threads();
            t_session = &crew;
            try {
                body(ctx);
            } catch (...) {
                error = std::current_exception();
            }
            t_session = nullptr;
            crew.stop();
        } else {
            crew.serve(omp_get_thread_num());
        }
    }
    if (error) std::rethrow_exception(error);
}

}  // namespace detail

void barrier() {
    if (t_crew) {
        if (t_team_n > 1) t_crew->barrier(t_team_n);
    } else if (t_in_part) {
#pragma omp barrier
    }
}

bool in_part() { return t_in_part; }

std::uint64_t teams_run() { return t_teams; }

}  // namespace theanine::team
