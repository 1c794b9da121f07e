/// \file
/// The allreduce op: a reduction of tensors over all the processes of a communicator, living
/// in the graph like any op, so a compiled function reduces its gradients inside its step.
///
/// The kernel is asynchronous (Op::is_async): the executor starts the message as soon as the
/// op's inputs are computed and waits for it only before the first step that reads a result,
/// polling MPI between the steps in between, so the transfer overlaps the rest of the
/// backward pass. Several tensors of one dtype given to one op travel as one message (a
/// bucket): packed into one buffer, reduced, unpacked. A lone contiguous tensor is reduced in
/// place when the planner grants its buffer (destroy_map), with no copy at all.
///
/// Whether overlapping pays depends on the MPI library and the machine: a non-blocking
/// collective may move data more slowly than the blocking one, and only progresses while MPI
/// is polled. So by default (Exchange::measure) each op times its first calls both ways (the
/// seconds each call spends in the exchange, not hidden by other steps), all ranks agree on
/// the slowest rank's figures, and the op keeps the faster way.
#pragma once

#include <vector>

#include "distributed/mpi.hpp"
#include "graph/graph.hpp"

namespace theanine::distributed {

/// How an AllReduce exchanges its message: started at once and waited for before the first
/// reader (overlap), in one blocking call when its inputs are ready (blocking), or whichever
/// of the two its first calls measure to be faster (measure).
enum class Exchange { measure, overlap, blocking };

class AllReduce final : public Op {
public:
    /// arity: how many tensors the op reduces (one message).
    AllReduce(Communicator comm, Reduce op, int arity = 1, Exchange exchange = Exchange::measure);

    std::string name() const override;
    std::vector<TensorType> make_types(const std::vector<Variable>& inputs) const override;
    void perform(const Node& node, std::span<const Tensor* const> in, std::span<Tensor* const> out) const override;
    void finish(const Node& node, std::span<Tensor* const> out) const override;
    void progress(const Node& node) const override;
    bool is_async() const override { return true; }
    std::optional<std::int64_t> collective_sequence() const override { return sequence_; }
    std::optional<std::vector<Shape>> infer_shape(const std::vector<Shape>& in) const override { return in; }
    /// The gradient of a sum over ranks is the sum over ranks of the gradients (every rank's
    /// result depends on every rank's input); max and min have none.
    std::vector<Variable> pullback(const Node& node, const std::vector<Variable>& out_grads) const override;
    std::vector<int> destroy_map() const override;
    bool is_stateful() const override { return true; }  // a collective: never folded or merged
    bool props_equal(const Op& other) const override;
    std::size_t props_hash() const override;

    const Communicator& comm() const { return comm_; }
    Reduce reduce() const { return op_; }
    /// With Exchange::measure: whether the trial has ended, and what it chose.
    bool decided() const { return decided_; }
    bool blocking() const { return blocking_now(); }

private:
    Communicator comm_;
    Reduce op_;
    std::int64_t sequence_;
    int arity_;
    Exchange exchange_;
    bool blocking_now() const;
    // The message in flight (one call at a time: a Function is not reentrant).
    mutable MPI_Request request_ = MPI_REQUEST_NULL;
    mutable Tensor packed_;  // the bucket's buffer
    mutable bool unpack_ = false, blocking_call_ = false;
    mutable double call_seconds_ = 0;
    // Exchange::measure: calls so far, seconds of the timed calls (overlapped, blocking).
    mutable int calls_ = 0;
    mutable double trial_[2] = {0, 0};
    mutable bool decided_ = false, chose_blocking_ = false;
};

/// The reduction of x over the ranks of comm: sum, max, min, or the mean (the sum times
/// 1/size, a product the fusion pass merges into the step that reads it).
enum class Over { sum, mean, max, min };
Variable allreduce(const Variable& x, const Communicator& comm, Over op = Over::sum,
                   Exchange exchange = Exchange::measure);
/// One message for several tensors of one dtype (a bucket); one result per tensor.
std::vector<Variable> allreduce(const std::vector<Variable>& xs, const Communicator& comm, Over op = Over::sum,
                                Exchange exchange = Exchange::measure);

}  // namespace theanine::distributed
