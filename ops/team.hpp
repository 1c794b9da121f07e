// The threads that run the parallel parts of kernels (products, fused loops, random draws,
// convolutions): the calling thread and a pool of workers that stay awake between parts.
//
// Handing a part to a waiting worker and collecting it costs well under a microsecond here,
// where an OpenMP parallel region costs about 3 us (measured on a 2-core AMD EPYC VM); a
// training step runs ten or more parallel kernels per call. Idle workers spin for a short
// while, then sleep until the next part arrives.
//
// Each calling thread takes a pool of its own (two Functions called from two threads run
// side by side), and a part's own kernels run on that part's thread (active_workers() is 1
// there). Pools live as long as the process; a child of fork() starts new ones.
#pragma once

#include <type_traits>
#include <utility>

namespace theanine::team {

/// Runs fn(w, n) for w = 0 .. n-1, n = workers, each on its own thread (the calling thread
/// is worker 0), and returns when all have returned. The first exception a worker throws is
/// rethrown here once all have finished. workers <= 1 calls fn(0, 1) directly.
template <class F>
void run(int workers, F&& fn);

/// Inside run(): waits until every worker of the running team has arrived.
void barrier();

/// Whether the calling thread is running a part of a team (kernels called from a part run
/// on that thread alone).
bool in_part();

// ---------------------------------------------------------------- implementation

namespace detail {
using Part = void (*)(void* ctx, int w, int n);
void run(int workers, Part part, void* ctx);
}  // namespace detail

template <class F>
void run(int workers, F&& fn) {
    if (workers <= 1) {
        fn(0, 1);
        return;
    }
    using Fn = std::remove_reference_t<F>;
    detail::run(
        workers, [](void* ctx, int w, int n) { (*static_cast<Fn*>(ctx))(w, n); },
        const_cast<void*>(static_cast<const void*>(&fn)));
}

}  // namespace theanine::team
