#include "distributed/data_parallel.hpp"

#include <algorithm>
#include <unordered_set>

#include <fmt/format.h>

#include "autodiff/grad.hpp"

namespace theanine::distributed {

namespace {

std::string describe(const std::vector<SharedVariable>& params) {
    std::string s;
    for (const auto& p : params) {
        const Tensor v = p.get_value(true);
        s += fmt::format("{}{} {} {}", s.empty() ? "" : ", ", p.name().empty() ? "?" : p.name(), dtype_name(v.dtype()),
                         shape_string(v.shape()));
    }
    return s;
}

// The ranks of comm whose flag is false, as "1, 3".
std::string failing_ranks(const Communicator& comm, bool ok) {
    std::vector<int> flags(static_cast<std::size_t>(comm.size()));
    int mine = ok ? 1 : 0;
    check_mpi(MPI_Allgather(&mine, 1, MPI_INT, flags.data(), 1, MPI_INT, comm.handle()), "MPI_Allgather",
              comm.handle());
    std::string s;
    for (std::size_t r = 0; r < flags.size(); ++r) {
        if (!flags[r]) s += fmt::format("{}{}", s.empty() ? "" : ", ", r);
    }
    return s;
}

}  // namespace

DataParallel::DataParallel(Communicator comm, std::vector<SharedVariable> params, DataParallelOptions options)
    : comm_(std::move(comm)), params_(std::move(params)), options_(options) {
    if (options_.average_every < 0) {
        throw UsageError(fmt::format("DataParallel: average_every must be 0 (gradients every step) or a number of "
                                     "steps, got {}", options_.average_every));
    }
    const std::string mine = describe(params_);
    const std::string roots = comm_.broadcast(mine, 0);
    const bool same = mine == roots;
    if (comm_.allreduce(same ? 1.0 : 0.0, Reduce::min) == 0.0) {
        const std::string ranks = failing_ranks(comm_, same);
        throw DistributedError(fmt::format("DataParallel: the parameters of rank(s) {} differ from rank 0's (rank 0: "
                                           "[{}]; rank {}: [{}])", ranks, roots, comm_.rank(), mine));
    }
    for (auto& p : params_) {
        Tensor v = p.get_value(true);
        comm_.broadcast(v, 0);
    }
}

Shard DataParallel::shard(std::int64_t global_batch) const {
    const std::int64_t n = comm_.size();
    if (global_batch < n || global_batch % n != 0) {
        throw UsageError(fmt::format("DataParallel: a minibatch of {} rows does not split evenly over {} ranks "
                                     "(use a multiple of {})", global_batch, n, n));
    }
    return Shard{comm_.rank() * (global_batch / n), global_batch / n};
}

std::vector<std::vector<std::size_t>> DataParallel::buckets(const std::vector<Variable>& vars) const {
    // vars[i] has params_[i]'s dtype and shape. A backward pass reaches the last layers first,
    // so the buckets are filled from the last parameter back.
    std::vector<std::vector<std::size_t>> out;
    std::size_t bytes = 0;
    for (std::size_t k = vars.size(); k-- > 0;) {
        const Tensor v = params_[k].get_value(true);
        const std::size_t b = static_cast<std::size_t>(v.size()) * dtype_size(v.dtype());
        const bool fits = !out.empty() && bytes + b <= options_.bucket_bytes &&
                          vars[out.back().front()].dtype() == vars[k].dtype();
        if (fits) {
            out.back().push_back(k);
            bytes += b;
        } else {
            out.push_back({k});
            bytes = b;
        }
    }
    return out;
}

std::vector<Variable> DataParallel::reduce_grads(const std::vector<Variable>& grads) const {
    std::vector<Variable> reduced(grads.size());
    for (const auto& bucket : buckets(grads)) {
        std::vector<Variable> xs;
        for (std::size_t k : bucket) xs.push_back(grads[k]);
        auto r = allreduce(xs, comm_, Over::mean, options_.exchange);
        for (std::size_t j = 0; j < bucket.size(); ++j) reduced[bucket[j]] = r[j];
    }
    return reduced;
}

Function DataParallel::function(const std::vector<In>& inputs, const std::vector<Out>& outputs,
                                const std::vector<Variable>& grads, const Updates& updates, const Givens& givens,
                                const CompileOptions& options) {
    if (grads.size() != params_.size()) {
        throw UsageError(fmt::format("DataParallel::function: {} gradients for {} parameters", grads.size(),
                                     params_.size()));
    }
    for (std::size_t i = 0; i < grads.size(); ++i) {
        const Tensor v = params_[i].get_value(true);
        if (!grads[i].defined() || grads[i].dtype() != v.dtype() || grads[i].ndim() != v.ndim()) {
            throw UsageError(fmt::format("DataParallel::function: gradient {} ({}) does not fit parameter '{}' ({} {})",
                                         i, grads[i].defined() ? grads[i].type().str() : "undefined", params_[i].name(),
                                         dtype_name(v.dtype()), shape_string(v.shape())));
        }
    }
    Updates ups = updates;
    if (options_.average_every == 0) {
        std::vector<Variable> values;
        for (const auto& [p, v] : updates) values.push_back(v);
        // Every gradient must be read by some update: an unread one would not be averaged.
        std::unordered_set<const Node*> reached;
        for (const auto& n : toposort(values)) reached.insert(n.get());
        for (std::size_t i = 0; i < grads.size(); ++i) {
            if (!reached.count(&grads[i].node())) {
                throw UsageError(fmt::format("DataParallel::function: no update reads gradient {} (of '{}'); give the "
                                             "gradients the updates were built from", i, params_[i].name()));
            }
        }
        const std::vector<Variable> reduced = reduce_grads(grads);
        VarMap<Variable> replace;
        for (std::size_t i = 0; i < grads.size(); ++i) replace[key(grads[i])] = reduced[i];
        values = clone_with_replace(values, replace);
        for (std::size_t i = 0; i < ups.size(); ++i) ups[i].second = values[i];
    }
    return compile(inputs, outputs, ups, givens, options);
}

Function DataParallel::compile(const std::vector<In>& inputs, const std::vector<Out>& outputs, const Updates& ups,
                               const Givens& givens, const CompileOptions& options) const {
    std::vector<Out> outs = outputs;
    if (options_.average_outputs && !outs.empty()) {
        std::vector<Variable> xs;
        for (std::size_t i = 0; i < outs.size(); ++i) {
            if (!is_float(outs[i].var.dtype())) {
                throw UsageError(fmt::format("DataParallel::function: output {} ({}) is {}; the mean over ranks takes "
                                             "float outputs (or set average_outputs = false)", i, outs[i].var.label(),
                                             outs[i].var.type().str()));
            }
        }
        // One message per dtype.
        for (DType dt : {DType::float32, DType::float64}) {
            std::vector<std::size_t> which;
            for (std::size_t i = 0; i < outs.size(); ++i) {
                if (outs[i].var.dtype() == dt) which.push_back(i);
            }
            if (which.empty()) continue;
            for (std::size_t i : which) xs.push_back(outs[i].var);
            auto r = allreduce(xs, comm_, Over::mean, options_.exchange);
            for (std::size_t j = 0; j < which.size(); ++j) outs[which[j]].var = r[j];
            xs.clear();
        }
    }
    return theanine::function(inputs, outs, ups, givens, options);
}

Function DataParallel::function(
    const std::vector<In>& inputs, const std::vector<Out>& outputs, const Variable& cost,
    const std::function<Updates(const std::vector<Variable>&, const std::vector<Variable>&)>& rule,
    const Givens& givens, const CompileOptions& options) {
    std::vector<Variable> pv(params_.begin(), params_.end());
    const std::vector<Variable> g = grad(cost, pv);
    // The rule sees the averaged gradients (in averaging mode, the local ones).
    return compile(inputs, outputs, rule(pv, options_.average_every == 0 ? reduce_grads(g) : g), givens, options);
}

bool DataParallel::step_done() {
    if (options_.average_every == 0) return false;
    if (++steps_ % options_.average_every != 0) return false;
    average_parameters();
    return true;
}

void DataParallel::average_parameters() {
    if (!average_) {
        std::vector<Variable> pv(params_.begin(), params_.end());
        Updates ups;
        for (const auto& bucket : buckets(pv)) {
            std::vector<Variable> xs;
            for (std::size_t k : bucket) xs.push_back(pv[k]);
            auto r = allreduce(xs, comm_, Over::mean, options_.exchange);
            for (std::size_t j = 0; j < bucket.size(); ++j) ups.emplace_back(params_[bucket[j]], r[j]);
        }
        average_.emplace(theanine::function({}, {}, ups));
    }
    (*average_)({});
    ++averagings_;
}

}  // namespace theanine::distributed
