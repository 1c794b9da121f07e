// What the programs' --data-parallel shares (built only with MPI): starting MPI, the rows of
// each global minibatch a rank trains on, and which rank speaks.
#pragma once

#include <cstdio>
#include <optional>
#include <string>

#include <fmt/format.h>

#include "compile/function.hpp"
#include "distributed/data_parallel.hpp"
#include "distributed/mpi.hpp"
#include "examples/io/training.hpp"
#include "graph/tensor.hpp"

namespace theanine::io {

// MPI for a program run with --data-parallel: rank 0 prints and writes files; the other
// ranks' standard output goes to /dev/null (their errors still reach standard error).
struct ParallelRun {
    std::optional<distributed::Environment> env;
    std::optional<distributed::Communicator> comm;
    bool root = true;

    ParallelRun(bool on, int* argc, char*** argv) {
        if (!on) return;
        env.emplace(argc, argv);
        comm = distributed::Communicator::world();
        root = comm->rank() == 0;
        if (!root && !std::freopen("/dev/null", "w", stdout)) {
            throw UsageError(fmt::format("rank {}: cannot send standard output to /dev/null", comm->rank()));
        }
    }
    // "rank 1 of 4: " (or nothing without --data-parallel), for messages.
    std::string who() const { return comm ? fmt::format("rank {} of {}: ", comm->rank(), comm->size()) : ""; }
    // Ends the job on an error: with MPI every rank stops (no rank is left waiting in a
    // collective), the message naming this rank; without, the caller returns 1.
    void fail(const std::string& program, const std::string& message) const {
        if (comm) distributed::Environment::abort(program, message);
    }
};

// This rank's rows of every global minibatch of `batch` rows: for minibatch i, rows
// [i * batch + shard.offset, i * batch + shard.offset + shard.size) of set, one after the
// other, so that local minibatch i is rows [i * shard.size, (i + 1) * shard.size). Rows after
// the last whole minibatch are left out.
inline Tensor shard_rows(const Tensor& set, std::int64_t batch, const distributed::Shard& shard) {
    const std::int64_t n_batches = set.dim(0) / batch;
    Shape shape = set.shape();
    shape[0] = n_batches * shard.size;
    Tensor out = Tensor::empty(set.dtype(), shape);
    for (std::int64_t i = 0; i < n_batches; ++i) {
        Tensor dst = out.slice(0, i * shard.size, (i + 1) * shard.size, 1);
        dst.copy_from(set.slice(0, i * batch + shard.offset, i * batch + shard.offset + shard.size, 1));
    }
    return out;
}

// mean_over_batches with the batches shared out: rank r computes batches r, r + N, ...; the
// values meet in one vector (each from exactly one rank) and are averaged as one process
// averages them, so every rank gets the single-process number, bit for bit.
inline double mean_over_batches(Function& f, std::int64_t n, const distributed::Communicator& comm) {
    Tensor values = Tensor::zeros(DType::float64, {n});
    double* v = values.data<double>();
    for (std::int64_t i = comm.rank(); i < n; i += comm.size()) v[i] = f.scalar({static_cast<long>(i)});
    comm.allreduce(values, distributed::Reduce::sum);
    EpochCosts all;
    for (std::int64_t i = 0; i < n; ++i) all.add(v[i]);
    return all.mean();
}

}  // namespace theanine::io
