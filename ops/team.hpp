// The threads that run the parallel parts of kernels (products, fused loops, random draws,
// convolutions).
//
// A compiled call whose kernels split their work runs inside a session (Plan::run_steps):
// one OpenMP parallel region for the whole call, in which the calling thread runs the steps
// and the region's other threads wait for parts. Handing a part to a waiting thread and
// collecting it costs well under a microsecond here, where an OpenMP region per kernel cost
// about 3 us (measured on a 2-core AMD EPYC VM), and a training step runs ten or more
// parallel kernels. The threads are OpenMP's own, so a program's own OpenMP code and
// theanine's kernels share one set of threads instead of two sets fighting over the cores.
//
// Outside a session (a call's first time, a kernel called directly) each run() opens an
// OpenMP region of its own. A part's own kernels run on that part's thread. An op that opens
// an OpenMP region itself inside a session gets one thread (a nested region): ops split their
// work with run().

#pragma once

#include <cstdint>
#include <type_traits>

namespace theanine::team {

/// Runs fn(w, n) for w = 0 .. n-1, n <= workers, each on its own thread (the calling thread
/// is worker 0), and returns when all have returned. The first exception a worker throws is
/// rethrown here once all have finished. workers <= 1 calls fn(0, 1) directly.
template <class F>
void run(int workers, F&& fn);

/// Inside run(): waits until every worker of the running team has arrived.
void barrier();

/// Whether the calling thread is running a part of a team (kernels called from a part run
/// on that thread alone).
bool in_part();

/// Runs body() on the calling thread with up to `workers` threads waiting for the parts
/// that run() hands out meanwhile; returns body's result or rethrows its exception. Within
/// a session already open on this thread, or for workers <= 1, just calls body().
template <class F>
void session(int workers, F&& body);

/// How many times run() has handed parts to more than one worker on this thread (a plan
/// opens a session for its calls once it knows its kernels split their work).
std::uint64_t teams_run();

// ---------------------------------------------------------------- implementation

namespace detail {
using Fn = void (*)(void* ctx, int w, int n);
void run(int workers, Fn part, void* ctx);
void session(int workers, void (*body)(void*), void* ctx);

template <class F>
void* address(F& f) {
    return const_cast<void*>(static_cast<const void*>(&f));
}
}  // namespace detail

template <class F>
void run(int workers, F&& fn) {
    if (workers <= 1) {
        fn(0, 1);
        return;
    }
    using T = std::remove_reference_t<F>;
    detail::run(
        workers, [](void* ctx, int w, int n) { (*static_cast<T*>(ctx))(w, n); }, detail::address(fn));
}

template <class F>
void session(int workers, F&& body) {
    using T = std::remove_reference_t<F>;
    detail::session(
        workers, [](void* ctx) { (*static_cast<T*>(ctx))(); }, detail::address(body));
}

}  // namespace theanine::team
