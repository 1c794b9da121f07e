/// \file
/// Data-parallel training: the same model on every process of a communicator, each process
/// reading its own shard of every minibatch.
///
/// Two modes. Gradient averaging (the default): every step, each gradient the updates read is
/// replaced by its mean over the ranks (AllReduce ops, bucketed), so N ranks with minibatch b/N
/// take the step one process with minibatch b takes (summation order aside). Periodic parameter
/// averaging (average_every = K): steps stay local and every K-th step the parameters are
/// replaced by their mean over the ranks, for models whose per-step exchange would cost as
/// much as the step itself.
#pragma once

#include <cstdint>
#include <functional>
#include <optional>
#include <vector>

#include "compile/function.hpp"
#include "distributed/allreduce.hpp"
#include "distributed/mpi.hpp"

namespace theanine::distributed {

struct DataParallelOptions {
    /// 0: average the gradients every step. K > 0: local steps, parameters averaged every K.
    int average_every = 0;
    /// Gradients of up to this many bytes in all share one message (taken in reverse order of
    /// the parameters, the order a backward pass computes them); a larger one travels alone,
    /// reduced in place.
    std::size_t bucket_bytes = 1 << 18;
    /// The function's float outputs become their mean over the ranks (the global minibatch's
    /// cost when every rank's is a mean over an equal shard).
    bool average_outputs = true;
    /// How the messages travel (distributed/allreduce.hpp): by default each AllReduce
    /// measures overlapped against blocking exchange on its first calls and keeps the faster.
    Exchange exchange = Exchange::measure;
};

/// The rows [offset, offset + size) of a global minibatch that one rank reads.
struct Shard {
    std::int64_t offset = 0, size = 0;
};

class DataParallel {
public:
    /// Checks that every rank has the same parameters (names, dtypes, shapes; a rank that
    /// differs is named in the error every rank throws) and makes every replica start equal:
    /// the values of rank 0 are broadcast.
    DataParallel(Communicator comm, std::vector<SharedVariable> params, DataParallelOptions options = {});

    const Communicator& comm() const { return comm_; }
    const DataParallelOptions& options() const { return options_; }

    /// This rank's shard of a global minibatch of `global_batch` rows; throws UsageError when
    /// the batch does not split evenly over the ranks.
    Shard shard(std::int64_t global_batch) const;

    /// The training step: `function(inputs, outputs, updates, givens)` with, in gradient mode,
    /// every grads[i] the updates read replaced by its mean over the ranks (grads[i] is the
    /// gradient of the local cost wrt params[i]; a gradient no update reads is refused).
    Function function(const std::vector<In>& inputs, const std::vector<Out>& outputs,
                      const std::vector<Variable>& grads, const Updates& updates, const Givens& givens = {},
                      const CompileOptions& options = CompileOptions());
    /// The same from the cost and an update rule: the gradients of cost wrt the parameters,
    /// averaged, are given to rule(params, grads), whose updates the step applies.
    Function function(const std::vector<In>& inputs, const std::vector<Out>& outputs, const Variable& cost,
                      const std::function<Updates(const std::vector<Variable>&, const std::vector<Variable>&)>& rule,
                      const Givens& givens = {}, const CompileOptions& options = CompileOptions());

    /// Call after each call of the training step: in averaging mode every average_every-th
    /// call averages the parameters (returns true then).
    bool step_done();
    /// Replaces every parameter by its mean over the ranks now.
    void average_parameters();

    /// How many parameter averagings ran.
    std::int64_t averagings() const { return averagings_; }

private:
    std::vector<std::vector<std::size_t>> buckets(const std::vector<Variable>& grads) const;
    std::vector<Variable> reduce_grads(const std::vector<Variable>& grads) const;
    // function() with the outputs averaged when options ask for it.
    Function compile(const std::vector<In>& inputs, const std::vector<Out>& outputs, const Updates& updates,
                     const Givens& givens, const CompileOptions& options) const;

    Communicator comm_;
    std::vector<SharedVariable> params_;
    DataParallelOptions options_;
    std::optional<Function> average_;
    std::int64_t steps_ = 0, averagings_ = 0;
};

}  // namespace theanine::distributed
