#include "distributed/allreduce.hpp"

#include <chrono>
#include <climits>
#include <cstring>
#include <functional>

#include <fmt/format.h>

#include "ops/elemwise.hpp"

namespace theanine::distributed {

namespace {
const char* reduce_name(Reduce op) { return op == Reduce::sum ? "sum" : op == Reduce::max ? "max" : "min"; }
MPI_Op mpi_op(Reduce op) { return op == Reduce::sum ? MPI_SUM : op == Reduce::max ? MPI_MAX : MPI_MIN; }
}  // namespace

AllReduce::AllReduce(Communicator comm, Reduce op, int arity, Exchange exchange)
    : comm_(std::move(comm)), op_(op), sequence_(comm_.next_sequence()), arity_(arity), exchange_(exchange) {
    if (arity < 1) throw UsageError("AllReduce: reduces at least one tensor");
}

std::string AllReduce::name() const {
    return arity_ == 1 ? fmt::format("AllReduce{{{}}}", reduce_name(op_))
                       : fmt::format("AllReduce{{{}, bucket of {}}}", reduce_name(op_), arity_);
}

std::vector<TensorType> AllReduce::make_types(const std::vector<Variable>& inputs) const {
    if (static_cast<int>(inputs.size()) != arity_) {
        throw UsageError(fmt::format("{}: takes {} inputs, got {}", name(), arity_, inputs.size()));
    }
    std::vector<TensorType> types;
    for (std::size_t i = 0; i < inputs.size(); ++i) {
        const TensorType& t = inputs[i].type();
        mpi_type(t.dtype, fmt::format("{}: input {} ({})", name(), i, inputs[i].label()));
        if (t.dtype != inputs[0].dtype()) {
            throw UsageError(fmt::format("{}: one message holds one dtype: input 0 is {}, input {} ({}) is {}", name(),
                                         inputs[0].type().str(), i, inputs[i].label(), t.str()));
        }
        types.push_back(t);
    }
    return types;
}

std::vector<int> AllReduce::destroy_map() const {
    std::vector<int> m(static_cast<std::size_t>(arity_));
    for (int i = 0; i < arity_; ++i) m[static_cast<std::size_t>(i)] = i;
    return m;
}

namespace {
// How many calls each way of exchanging is timed for, after a few calls of warm-up.
constexpr int kWarmup = 2, kTimed = 10;
double seconds_since(std::chrono::steady_clock::time_point t0) {
    return std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
}
}  // namespace

bool AllReduce::blocking_now() const {
    switch (exchange_) {
        case Exchange::overlap: return false;
        case Exchange::blocking: return true;
        case Exchange::measure: break;
    }
    if (decided_) return chose_blocking_;
    return calls_ >= kWarmup + kTimed;  // the second half of the trial
}

void AllReduce::perform(const Node&, std::span<const Tensor* const> in, std::span<Tensor* const> out) const {
    const auto t0 = std::chrono::steady_clock::now();
    if (request_ != MPI_REQUEST_NULL) {
        // A call that failed between start and finish (the executor finishes its work in
        // flight, so this is a safety net): end the old message first.
        MPI_Wait(&request_, MPI_STATUS_IGNORE);
    }
    const MPI_Comm comm = comm_.handle();
    const DType dt = in[0]->dtype();
    const MPI_Datatype type = mpi_type(dt, name());
    const std::size_t esize = dtype_size(dt);
    std::int64_t total = 0;
    for (const Tensor* t : in) total += t->size();
    if (total > INT_MAX) {
        throw UsageError(fmt::format("{}: {} elements are more than one MPI message holds ({})", name(), total, INT_MAX));
    }
    for (std::size_t i = 0; i < in.size(); ++i) {
        if (out[i] != in[i]) out[i]->ensure(dt, in[i]->shape());
    }
    blocking_call_ = blocking_now();
    // One contiguous tensor goes straight from the input into the output (or in place);
    // several are packed into one buffer.
    unpack_ = !(in.size() == 1 && in[0]->is_contiguous());
    const void* send = MPI_IN_PLACE;
    void* recv = nullptr;
    if (!unpack_) {
        if (out[0] != in[0]) send = in[0]->raw_data();
        recv = out[0]->raw_data();
    } else {
        packed_.ensure(dt, {total});
        char* p = static_cast<char*>(packed_.raw_data());
        for (const Tensor* t : in) {
            const Tensor c = t->contiguous();
            std::memcpy(p, c.raw_data(), static_cast<std::size_t>(c.size()) * esize);
            p += static_cast<std::size_t>(c.size()) * esize;
        }
        recv = packed_.raw_data();
    }
    if (blocking_call_) {
        check_mpi(MPI_Allreduce(send, recv, static_cast<int>(total), type, mpi_op(op_), comm), "MPI_Allreduce", comm);
    } else {
        check_mpi(MPI_Iallreduce(send, recv, static_cast<int>(total), type, mpi_op(op_), comm, &request_),
                  "MPI_Iallreduce", comm);
    }
    call_seconds_ = seconds_since(t0);
}

void AllReduce::progress(const Node&) const {
    if (request_ == MPI_REQUEST_NULL) return;
    int done = 0;
    check_mpi(MPI_Test(&request_, &done, MPI_STATUS_IGNORE), "MPI_Test", comm_.handle());
}

void AllReduce::finish(const Node&, std::span<Tensor* const> out) const {
    const auto t0 = std::chrono::steady_clock::now();
    if (request_ != MPI_REQUEST_NULL) check_mpi(MPI_Wait(&request_, MPI_STATUS_IGNORE), "MPI_Wait", comm_.handle());
    if (unpack_) {
        std::int64_t at = 0;  // elements of the buffer unpacked so far
        for (Tensor* t : out) {
            const Tensor piece = packed_.slice(0, at, at + t->size(), 1).reshape_view(t->shape());
            t->copy_from(piece);
            at += t->size();
        }
    }
    call_seconds_ += seconds_since(t0);
    comm_.add_allreduce_seconds(call_seconds_);
    if (exchange_ != Exchange::measure || decided_) return;
    // The trial: kTimed calls overlapped, then kTimed blocking; the time a call spends in
    // the exchange (what the steps in between did not hide) decides. Every rank takes the
    // slowest rank's times, so all make the same choice (blocking and non-blocking
    // collectives do not match each other).
    if (calls_ >= kWarmup) trial_[blocking_call_ ? 1 : 0] += call_seconds_;
    if (++calls_ < kWarmup + 2 * kTimed) return;
    check_mpi(MPI_Allreduce(MPI_IN_PLACE, trial_, 2, MPI_DOUBLE, MPI_MAX, comm_.handle()), "MPI_Allreduce",
              comm_.handle());
    chose_blocking_ = trial_[1] < trial_[0];
    decided_ = true;
}

std::vector<Variable> AllReduce::pullback(const Node& node, const std::vector<Variable>& g) const {
    std::vector<Variable> grads(node.inputs.size());
    if (op_ != Reduce::sum) {
        for (std::size_t i = 0; i < grads.size(); ++i) {
            grads[i] = not_differentiable(*this, static_cast<int>(i), "the max or min over ranks has no gradient here");
        }
        return grads;
    }
    // The connected output gradients travel as one message too; a disconnected one (no
    // dependence) stays disconnected.
    std::vector<Variable> connected;
    std::vector<std::size_t> where;
    for (std::size_t i = 0; i < g.size(); ++i) {
        if (!g[i].defined()) continue;
        connected.push_back(g[i].dtype() == node.inputs[i].dtype() ? g[i] : g[i].astype(node.inputs[i].dtype()));
        where.push_back(i);
    }
    if (connected.empty()) return grads;
    auto reduced = allreduce(connected, comm_, Over::sum, exchange_);
    for (std::size_t k = 0; k < where.size(); ++k) grads[where[k]] = reduced[k];
    return grads;
}

bool AllReduce::props_equal(const Op& other) const {
    const auto* o = dynamic_cast<const AllReduce*>(&other);
    return o && o->comm_.same(comm_) && o->op_ == op_ && o->sequence_ == sequence_ && o->arity_ == arity_;
}

std::size_t AllReduce::props_hash() const {
    return std::hash<const void*>()(comm_.id()) ^ (static_cast<std::size_t>(sequence_) * 31u);
}

std::vector<Variable> allreduce(const std::vector<Variable>& xs, const Communicator& comm, Over op, Exchange exchange) {
    if (xs.empty()) return {};
    const Reduce r = op == Over::max ? Reduce::max : op == Over::min ? Reduce::min : Reduce::sum;
    if (op == Over::mean) {
        for (std::size_t i = 0; i < xs.size(); ++i) {
            if (!is_float(xs[i].dtype())) {
                throw UsageError(fmt::format("allreduce: the mean over ranks takes float tensors; input {} ({}) is {}", i,
                                             xs[i].label(), xs[i].type().str()));
            }
        }
    }
    auto out = theanine::apply(std::make_shared<AllReduce>(comm, r, static_cast<int>(xs.size()), exchange), xs);
    if (op == Over::mean) {
        for (auto& v : out) v = mul(v, constant(1.0 / comm.size(), v.dtype()));
    }
    return out;
}

Variable allreduce(const Variable& x, const Communicator& comm, Over op, Exchange exchange) {
    return allreduce(std::vector<Variable>{x}, comm, op, exchange)[0];
}

}  // namespace theanine::distributed
