#include "ops/scan.hpp"

#include <algorithm>
#include <cstring>
#include <unordered_set>

#include <fmt/format.h>

#include "autodiff/grad.hpp"
#include "compile/plan.hpp"
#include "ops/elemwise.hpp"

namespace theanine {

// ------------------------------------------------------------------ layout helpers

std::size_t ScanInfo::n_seq_inputs() const {
    std::size_t n = 0;
    for (const auto& t : seq_taps) n += t.size();
    return n;
}

std::size_t ScanInfo::n_tap_inputs() const {
    std::size_t n = 0;
    for (const auto& t : out_taps) n += t.size();
    return n;
}

namespace {

TensorType row_type(const TensorType& t) {
    return TensorType{t.dtype, std::vector<bool>(t.broadcastable.begin() + 1, t.broadcastable.end())};
}

std::string scan_label(const std::string& name) { return name.empty() ? "scan" : fmt::format("scan '{}'", name); }

std::string built_at(const std::source_location& where) {
    const std::string w = where_string(where);
    return w.empty() ? "" : fmt::format(" (scan built at {})", w);
}

std::string taps_string(const std::vector<int>& taps) {
    std::string s;
    for (int t : taps) s += fmt::format("{}{}", s.empty() ? "" : ", ", t);
    return "{" + s + "}";
}

std::string tap_suffix(int k) { return k == 0 ? "[t]" : k > 0 ? fmt::format("[t+{}]", k) : fmt::format("[t{}]", k); }

// Positions of the outer inputs: n_steps, sequences, initial rows, shared states, non-seqs.
struct OuterLayout {
    std::size_t seq0, init0, shared0, nonseq0, end;
    std::vector<std::size_t> init_of;  // per output: its initial rows' input, or npos
    explicit OuterLayout(const ScanInfo& info) {
        seq0 = 1;
        init0 = seq0 + info.seq_taps.size();
        std::size_t k = init0;
        for (const auto& taps : info.out_taps) init_of.push_back(taps.empty() ? std::string::npos : k++);
        shared0 = k;
        nonseq0 = shared0 + info.n_shared;
        end = nonseq0 + info.n_non_seqs;
    }
};

// Positions of the inner inputs.
struct InnerLayout {
    std::vector<std::vector<std::size_t>> seq, tap;  // [sequence][tap], [output][tap]
    std::size_t shared0, nonseq0, end;
    explicit InnerLayout(const ScanInfo& info) {
        std::size_t k = 0;
        for (const auto& taps : info.seq_taps) {
            seq.emplace_back();
            for (std::size_t i = 0; i < taps.size(); ++i) seq.back().push_back(k++);
        }
        for (const auto& taps : info.out_taps) {
            tap.emplace_back();
            for (std::size_t i = 0; i < taps.size(); ++i) tap.back().push_back(k++);
        }
        shared0 = k;
        nonseq0 = shared0 + info.n_shared;
        end = nonseq0 + info.n_non_seqs;
    }
};

}  // namespace

// ------------------------------------------------------------------ the node

std::vector<Variable> make_scan_node(ScanInfo info, std::vector<Variable> inner_inputs,
                                     std::vector<Variable> inner_outputs, std::vector<Variable> outer_inputs,
                                     std::source_location where) {
    if (info.keep_last.empty()) info.keep_last.assign(info.out_taps.size(), 0);
    auto inner = std::make_shared<ScanInner>();
    inner->info = std::move(info);
    inner->inputs = std::move(inner_inputs);
    inner->outputs = std::move(inner_outputs);
    inner->where = where;
    return apply(std::make_shared<ScanOp>(std::move(inner)), std::move(outer_inputs), where);
}

std::string ScanOp::name() const {
    const ScanInfo& info = inner_->info;
    std::string s = "Scan{" + (info.name.empty() ? std::string("scan_fn") : info.name);
    if (info.truncate_gradient >= 0) s += fmt::format(", truncate_gradient={}", info.truncate_gradient);
    for (std::size_t j = 0; j < info.keep_last.size(); ++j) {
        if (info.keep_last[j] > 0) s += fmt::format(", out{}: last {}", j, info.keep_last[j]);
    }
    return s + "}";
}

bool ScanOp::props_equal(const Op& other) const { return static_cast<const ScanOp&>(other).inner_ == inner_; }

std::size_t ScanOp::props_hash() const { return std::hash<const void*>()(inner_.get()); }

std::vector<TensorType> ScanOp::make_types(const std::vector<Variable>& inputs) const {
    const ScanInfo& info = inner_->info;
    const OuterLayout ol(info);
    const InnerLayout il(info);
    const std::string who = scan_label(info.name);
    if (inputs.size() != ol.end) {
        throw UsageError(fmt::format("{}: takes {} inputs, got {}", who, ol.end, inputs.size()));
    }
    if (inputs[0].ndim() != 0 || !is_integer(inputs[0].dtype())) {
        throw UsageError(fmt::format("{}: n_steps must be an integer scalar, got {}", who, inputs[0].type().str()));
    }
    for (std::size_t s = 0; s < info.seq_taps.size(); ++s) {
        const Variable& seq = inputs[ol.seq0 + s];
        const TensorType& inner_t = inner_->inputs[il.seq[s][0]].type();
        if (seq.ndim() < 1 || seq.dtype() != inner_t.dtype || seq.ndim() != inner_t.ndim() + 1) {
            throw UsageError(fmt::format("{}: sequence {} ('{}') has type {}; its step placeholder is {}", who, s,
                                         seq.label(), seq.type().str(), inner_t.str()));
        }
    }
    std::vector<TensorType> types;
    for (std::size_t j = 0; j < info.out_taps.size(); ++j) {
        const TensorType& t = inner_->outputs[j].type();
        if (ol.init_of[j] != std::string::npos) {
            const Variable& init = inputs[ol.init_of[j]];
            if (init.dtype() != t.dtype || init.ndim() != t.ndim() + 1) {
                throw UsageError(fmt::format("{}: the initial rows of output {} have type {}; the step returns {}",
                                             who, j, init.type().str(), t.str()));
            }
        }
        std::vector<bool> b{false};
        b.insert(b.end(), t.broadcastable.begin(), t.broadcastable.end());
        types.push_back(TensorType{t.dtype, b});
    }
    for (std::size_t m = 0; m < info.n_shared; ++m) {
        const Variable& sv = inputs[ol.shared0 + m];
        if (sv.type().dtype != inner_->inputs[il.shared0 + m].dtype() ||
            sv.ndim() != inner_->inputs[il.shared0 + m].ndim()) {
            throw UsageError(fmt::format("{}: shared state {} ('{}') has type {}, the step expects {}", who, m,
                                         sv.label(), sv.type().str(), inner_->inputs[il.shared0 + m].type().str()));
        }
        types.push_back(TensorType{sv.dtype(), std::vector<bool>(static_cast<std::size_t>(sv.ndim()), false)});
    }
    for (std::size_t i = 0; i < info.n_non_seqs; ++i) {
        const Variable& v = inputs[ol.nonseq0 + i];
        const TensorType& it = inner_->inputs[il.nonseq0 + i].type();
        if (v.dtype() != it.dtype || v.ndim() != it.ndim()) {
            throw UsageError(fmt::format("{}: non-sequence {} ('{}') has type {}, the step expects {}", who, i,
                                         v.label(), v.type().str(), it.str()));
        }
    }
    return types;
}

// ------------------------------------------------------------------ the kernel

struct ScanAccess {
    static Plan& plan(Function& f) { return f.plan(); }
    static Function compile(const ScanInner& inner, const LoopOptions& loop) {
        std::vector<In> ins(inner.inputs.begin(), inner.inputs.end());
        // The loop gives each step a private buffer of every shared state (ScanOp::perform),
        // so the step may advance a state in place (a random stream's rows).
        const InnerLayout il(inner.info);
        for (std::size_t m = 0; m < inner.info.n_shared; ++m) ins[il.shared0 + m].is_mutable = true;
        std::vector<Out> outs(inner.outputs.begin(), inner.outputs.end());
        CompileOptions opt;
        opt.profile = loop.profile;
        opt.nan_guard = loop.nan_guard;
        opt.nan_guard_big = loop.nan_guard_big;
        opt.on_unused_input = CompileOptions::UnusedInput::ignore;
        opt.no_default_updates = true;
        // The outer call chooses the workers for the whole loop (WorkerLimit nests).
        opt.adapt_workers = false;
        return function(ins, outs, {}, {}, opt);
    }
};

namespace {

class WorkerLease {
public:
    explicit WorkerLease(const ScanInner& inner) : inner_(inner), options_(running_options()) {
        {
            std::lock_guard<std::mutex> lock(inner.mutex);
            for (std::size_t i = inner.pool.size(); i-- > 0;) {
                if (!(inner.pool[i].first == options_)) continue;
                fn_ = std::move(inner.pool[i].second);
                inner.pool.erase(inner.pool.begin() + static_cast<std::ptrdiff_t>(i));
                break;
            }
        }
        if (!fn_) fn_ = std::make_unique<Function>(ScanAccess::compile(inner, options_));
    }
    ~WorkerLease() {
        std::lock_guard<std::mutex> lock(inner_.mutex);
        inner_.pool.emplace_back(options_, std::move(fn_));
    }
    WorkerLease(const WorkerLease&) = delete;
    WorkerLease& operator=(const WorkerLease&) = delete;
    Plan& plan() { return ScanAccess::plan(*fn_); }

private:
    const ScanInner& inner_;
    LoopOptions options_;
    std::unique_ptr<Function> fn_;
};

}  // namespace

void ScanOp::perform(const Node&, std::span<const Tensor* const> in, std::span<Tensor* const> out) const {
    const ScanInfo& info = inner_->info;
    const OuterLayout ol(info);
    const InnerLayout il(info);
    const std::string who = scan_label(info.name);
    const std::string at = built_at(inner_->where);
    const std::int64_t n = in[0]->item_int();
    if (n < 0) throw UsageError(fmt::format("{}: n_steps is {}; the number of steps cannot be negative{}", who, n, at));
    for (std::size_t s = 0; s < info.seq_taps.size(); ++s) {
        const Tensor& seq = *in[ol.seq0 + s];
        const auto& taps = info.seq_taps[s];
        const std::int64_t span = taps.back() - taps.front();
        if (seq.dim(0) < n + span) {
            throw UsageError(fmt::format("{}: sequence {} has {} rows; {} steps with taps {} need {}{}", who, s,
                                         seq.dim(0), n, taps_string(taps), n + span, at));
        }
    }
    for (std::size_t j = 0; j < info.out_taps.size(); ++j) {
        if (ol.init_of[j] == std::string::npos) continue;
        const Tensor& init = *in[ol.init_of[j]];
        if (init.dim(0) < info.init_rows(j)) {
            throw UsageError(fmt::format("{}: the initial value of output {} has {} rows; taps {} need {}{}", who, j,
                                         init.dim(0), taps_string(info.out_taps[j]), info.init_rows(j), at));
        }
    }

    WorkerLease lease(*inner_);
    Plan& p = lease.plan();
    // The step's plan runs with its input slots bound here and its results read from their
    // slots; end_loop() lets go of the bound values whatever happens.
    struct EndOfLoop {
        Plan& p;
        ~EndOfLoop() { p.end_loop(); }
    } end_of_loop{p};
    const std::size_t n_out = info.out_taps.size();
    // The states the steps advance start as private copies of the outer values: a step may
    // write its state's buffer in place (the inner inputs are mutable, ScanAccess::compile).
    std::vector<Tensor> state(info.n_shared), next_state(info.n_shared);
    for (std::size_t m = 0; m < info.n_shared; ++m) state[m] = in[ol.shared0 + m]->copy();
    // Whether a step computes the new value of shared state m into a slot of its own (not
    // an input's or a constant's slot, which must keep their values from step to step).
    std::vector<bool> state_computed(info.n_shared, false);
    for (std::size_t m = 0; m < info.n_shared; ++m) {
        const Tensor* r = &p.slots[p.results[n_out + m].slot];
        for (const Step& st : p.steps) {
            if (std::find(st.out.begin(), st.out.end(), r) != st.out.end()) state_computed[m] = true;
        }
    }
    std::vector<Shape> row_shape(n_out);
    std::vector<std::int64_t> kept(n_out);  // rows each output keeps
    for (std::size_t j = 0; j < n_out; ++j) {
        kept[j] = info.keep_last[j] > 0 ? std::min<std::int64_t>(n, info.keep_last[j]) : n;
    }
    // The row of output j that holds step t (a ring of keep_last rows, or every step).
    auto row_of = [&](std::size_t j, std::int64_t t) {
        return info.keep_last[j] > 0 ? t % info.keep_last[j] : t;
    };
    auto slot = [&](std::size_t inner_index) -> Tensor& { return p.slots[p.inputs[inner_index].slot]; };
    for (std::size_t i = 0; i < info.n_non_seqs; ++i) slot(il.nonseq0 + i) = *in[ol.nonseq0 + i];

    for (std::int64_t t = 0; t < n; ++t) {
        for (std::size_t s = 0; s < info.seq_taps.size(); ++s) {
            const auto& taps = info.seq_taps[s];
            for (std::size_t k = 0; k < taps.size(); ++k) {
                slot(il.seq[s][k]).assign_row(*in[ol.seq0 + s], t + taps[k] - taps.front());
            }
        }
        for (std::size_t j = 0; j < n_out; ++j) {
            const auto& taps = info.out_taps[j];
            const std::int64_t L = info.init_rows(j);
            for (std::size_t k = 0; k < taps.size(); ++k) {
                const std::int64_t pos = t + taps[k];
                if (pos < 0) {
                    slot(il.tap[j][k]).assign_row(*in[ol.init_of[j]], L + pos);
                } else {
                    slot(il.tap[j][k]).assign_row(*out[j], row_of(j, pos));
                }
            }
        }
        for (std::size_t m = 0; m < info.n_shared; ++m) slot(il.shared0 + m) = state[m];
        try {
            p.run_steps();
        } catch (const UsageError& e) {
            throw UsageError(fmt::format("{} step {}: {}", who, t, e.what()));
        }
        for (std::size_t j = 0; j < n_out; ++j) {
            const Tensor& r = p.slots[p.results[j].slot];
            if (t == 0) {
                row_shape[j] = r.shape();
                if (ol.init_of[j] != std::string::npos) {
                    const Tensor& init = *in[ol.init_of[j]];
                    const Shape want(init.shape().begin() + 1, init.shape().end());
                    if (r.shape() != want) {
                        throw UsageError(fmt::format(
                            "{}: output {} has shape {} at step 0, but its initial value (taps {}) has rows of shape "
                            "{}; a fed-back output must keep its shape{}", who, j, shape_string(r.shape()),
                            taps_string(info.out_taps[j]), shape_string(want), at));
                    }
                }
                Shape full{kept[j]};
                full.insert(full.end(), r.shape().begin(), r.shape().end());
                // The stacked buffer must not be one the step still reads from (a fed-back
                // row of the previous call's output): ensure() reuses it only when it is ours.
                out[j]->ensure(r.dtype(), full);
            } else if (r.shape() != row_shape[j]) {
                throw UsageError(fmt::format("{}: output {} has shape {} at step {} but {} at step 0; every step must "
                                             "return the same shape{}", who, j, shape_string(r.shape()), t,
                                             shape_string(row_shape[j]), at));
            }
            Tensor& o = *out[j];
            const std::int64_t row = row_of(j, t);
            if (r.is_contiguous() && r.dtype() == o.dtype()) {
                const std::size_t bytes = static_cast<std::size_t>(r.size()) * dtype_size(r.dtype());
                std::memcpy(static_cast<char*>(o.raw_data()) + static_cast<std::size_t>(row) * bytes, r.raw_data(), bytes);
            } else {
                o.index(0, row).copy_from(r);
            }
        }
        for (std::size_t m = 0; m < info.n_shared; ++m) {
            Tensor& r = p.slots[p.results[n_out + m].slot];
            if (r.shares_storage(state[m]) && r.raw_data() == state[m].raw_data() && r.shape() == state[m].shape() &&
                r.strides() == state[m].strides()) {
                continue;  // advanced in place, or passed through unchanged
            }
            if (state_computed[m] && r.sole_owner()) {
                // A new state a step wrote into its own buffer is taken as it is; the slot
                // keeps the buffer of the state it replaces for the next step to fill (the
                // states of a random stream, 15360 rows, are not copied every step).
                std::swap(state[m], r);
                continue;
            }
            if (!(next_state[m].sole_owner())) next_state[m] = Tensor();
            next_state[m].ensure(r.dtype(), r.shape());
            next_state[m].copy_from(r);
            std::swap(state[m], next_state[m]);
        }
    }
    for (std::size_t j = 0; j < n_out; ++j) {
        if (n == 0) {
            Shape full{0};
            if (ol.init_of[j] != std::string::npos) {
                const Tensor& init = *in[ol.init_of[j]];
                full.insert(full.end(), init.shape().begin() + 1, init.shape().end());
            } else {
                full.resize(static_cast<std::size_t>(inner_->outputs[j].ndim()) + 1, 0);
            }
            out[j]->ensure(inner_->outputs[j].dtype(), full);
            continue;
        }
        // A ring of the last steps: rotate its rows into step order.
        const std::int64_t k = info.keep_last[j];
        if (k > 0 && n > k && n % k != 0) {
            Tensor& o = *out[j];
            const std::size_t row_bytes =
                static_cast<std::size_t>(o.size() / o.dim(0)) * dtype_size(o.dtype());
            auto* base = static_cast<char*>(o.raw_data());
            std::rotate(base, base + static_cast<std::size_t>(n % k) * row_bytes,
                        base + static_cast<std::size_t>(k) * row_bytes);
        }
    }
    for (std::size_t m = 0; m < info.n_shared; ++m) {
        Tensor& o = *out[n_out + m];
        o.ensure(state[m].dtype(), state[m].shape());
        o.copy_from(state[m]);
    }
}

// ------------------------------------------------------------------ profile

std::string ScanOp::inner_profile() const {
    std::lock_guard<std::mutex> lock(inner_->mutex);
    std::string s;
    for (const auto& [options, f] : inner_->pool) {
        if (f && options.profile) s += f->profile_summary();
    }
    return s;
}

// ------------------------------------------------------------------ the builder

namespace {

bool is_placeholder_of(const std::unordered_set<const Node*>& set, const Variable& v) {
    return set.count(v.node_ptr().get()) > 0;
}

}  // namespace

ScanResult scan(const ScanFn& fn, const ScanArgs& a, std::source_location where) {
    const std::string who = scan_label(a.name);
    const std::string at = built_at(where);
    if (!fn) throw UsageError(fmt::format("{}: the step function is empty{}", who, at));
    if (a.truncate_gradient < -1 || a.truncate_gradient == 0) {
        throw UsageError(fmt::format("{}: truncate_gradient is {}; use -1 (no truncation) or a positive number of "
                                     "steps{}", who, a.truncate_gradient, at));
    }
    ScanInfo info;
    info.name = a.name;
    info.truncate_gradient = a.truncate_gradient;
    std::vector<Variable> outer_seqs, args, placeholders;
    std::unordered_set<const Node*> ph_nodes;
    auto make_ph = [&](const TensorType& t, const std::string& name) {
        Variable v = input(t, name, where);
        ph_nodes.insert(v.node_ptr().get());
        return v;
    };
    // Sequences: one placeholder per tap.
    for (std::size_t s = 0; s < a.sequences.size(); ++s) {
        const ScanSequence& seq = a.sequences[s];
        if (!seq.input.defined()) throw UsageError(fmt::format("{}: sequence {} is an undefined Variable{}", who, s, at));
        if (seq.input.ndim() < 1) {
            throw UsageError(fmt::format("{}: sequence {} ('{}') is a {}; a sequence needs a leading axis to iterate "
                                         "over{}", who, s, seq.input.label(), seq.input.type().str(), at));
        }
        if (seq.taps.empty()) throw UsageError(fmt::format("{}: sequence {} has no taps{}", who, s, at));
        std::vector<int> taps = seq.taps;
        std::sort(taps.begin(), taps.end());
        if (std::adjacent_find(taps.begin(), taps.end()) != taps.end()) {
            throw UsageError(fmt::format("{}: sequence {} lists a tap twice {}{}", who, s, taps_string(seq.taps), at));
        }
        if (taps != seq.taps) {
            throw UsageError(fmt::format("{}: the taps of sequence {} must be in ascending order, got {}{}", who, s,
                                         taps_string(seq.taps), at));
        }
        info.seq_taps.push_back(taps);
        Variable outer = a.go_backwards ? subtensor(seq.input, {slice(std::nullopt, std::nullopt, -1)}, where)
                                        : seq.input;
        outer_seqs.push_back(outer);
        const std::string base = seq.input.name().empty() ? fmt::format("seq{}", s) : seq.input.name();
        for (int k : taps) {
            Variable ph = make_ph(row_type(seq.input.type()), base + tap_suffix(k));
            args.push_back(ph);
            placeholders.push_back(ph);
        }
    }
    // Fed-back outputs: their initial rows and one placeholder per tap.
    std::vector<Variable> outer_inits;
    for (std::size_t j = 0; j < a.outputs_info.size(); ++j) {
        const ScanOutput& o = a.outputs_info[j];
        if (!o.initial.defined()) {
            info.out_taps.emplace_back();
            continue;
        }
        if (o.taps.empty()) throw UsageError(fmt::format("{}: output {} has an initial value but no taps{}", who, j, at));
        std::vector<int> taps = o.taps;
        std::sort(taps.begin(), taps.end());
        if (taps != o.taps || std::adjacent_find(taps.begin(), taps.end()) != taps.end() || taps.back() >= 0) {
            throw UsageError(fmt::format("{}: the taps of output {} must be distinct negative numbers in ascending "
                                         "order, got {}{}", who, j, taps_string(o.taps), at));
        }
        const int L = -taps.front();
        Variable rows;
        TensorType rt;
        if (o.with_rows) {
            if (o.initial.ndim() < 1) {
                throw UsageError(fmt::format("{}: output {} has taps {}, so its initial value needs a leading axis of "
                                             "{} rows; got a {}{}", who, j, taps_string(taps), L,
                                             o.initial.type().str(), at));
            }
            rows = subtensor(o.initial, {slice(0, L)}, where);
            rt = row_type(o.initial.type());
        } else {
            std::vector<int> order{-1};
            for (int d = 0; d < o.initial.ndim(); ++d) order.push_back(d);
            rows = dimshuffle(o.initial, order);
            rt = o.initial.type();
        }
        info.out_taps.push_back(taps);
        outer_inits.push_back(rows);
        const std::string base = o.initial.name().empty() ? fmt::format("out{}", j) : o.initial.name();
        for (int k : taps) {
            Variable ph = make_ph(rt, base + tap_suffix(k));
            args.push_back(ph);
            placeholders.push_back(ph);
        }
    }
    for (const Variable& v : a.non_sequences) {
        if (!v.defined()) throw UsageError(fmt::format("{}: a non-sequence is an undefined Variable{}", who, at));
        args.push_back(v);
    }

    ScanStep step = fn(args);
    if (info.out_taps.empty()) info.out_taps.assign(step.outputs.size(), {});
    if (step.outputs.size() != info.out_taps.size()) {
        throw UsageError(fmt::format("{}: the step returns {} outputs but outputs_info has {} entries{}", who,
                                     step.outputs.size(), info.out_taps.size(), at));
    }
    {
        std::size_t k = info.n_seq_inputs();
        for (std::size_t j = 0; j < step.outputs.size(); ++j) {
            const Variable& v = step.outputs[j];
            if (!v.defined()) throw UsageError(fmt::format("{}: step output {} is an undefined Variable{}", who, j, at));
            if (info.out_taps[j].empty()) continue;
            const Variable& ph = placeholders[k];
            k += info.out_taps[j].size();
            if (v.dtype() != ph.dtype() || v.ndim() != ph.ndim()) {
                throw UsageError(fmt::format("{}: step output {} has type {} but its initial value has type {}; a "
                                             "fed-back output must keep its dtype and rank{}", who, j,
                                             v.type().str(), ph.type().str(), at));
            }
        }
    }
    // Updates: the step's own, then the default updates (random streams) of the shared
    // variables the step reads.
    Updates updates = step.updates;
    std::unordered_set<const SharedCell*> updated;
    for (std::size_t i = 0; i < updates.size(); ++i) {
        const auto& [sv, expr] = updates[i];
        if (!sv.defined() || !sv.is_shared()) throw UsageError(fmt::format("{}: update {} does not name a shared variable{}", who, i, at));
        if (!expr.defined() || expr.dtype() != sv.dtype() || expr.ndim() != sv.ndim()) {
            throw UsageError(fmt::format("{}: update {} of '{}' ({}) has type {}; an update keeps the variable's "
                                         "type{}", who, i, sv.label(), sv.type().str(),
                                         expr.defined() ? expr.type().str() : std::string("undefined"), at));
        }
        if (!updated.insert(sv.node().cell.get()).second) {
            throw UsageError(fmt::format("{}: shared variable '{}' is updated twice{}", who, sv.label(), at));
        }
    }
    while (true) {
        std::vector<Variable> all = step.outputs;
        for (const auto& u : updates) all.push_back(u.second);
        bool grew = false;
        for (const auto& node : toposort(all)) {
            if (node->kind != NodeKind::shared || updated.count(node->cell.get())) continue;
            Variable upd = default_update_of(node);
            if (!upd.defined()) continue;
            updated.insert(node->cell.get());
            updates.emplace_back(SharedVariable(node->output(0)), upd);
            grew = true;
        }
        if (!grew) break;
    }
    info.n_shared = updates.size();
    // Close the inner graph: shared states, explicit non-sequences, then every other outer
    // variable the step reads become placeholders.
    VarMap<Variable> replace;
    std::vector<Variable> state_ph, outer_shared;
    for (const auto& [sv, expr] : updates) {
        Variable ph = make_ph(sv.type(), sv.name().empty() ? "<shared>" : sv.name());
        replace[key(sv)] = ph;
        state_ph.push_back(ph);
        outer_shared.push_back(sv);
    }
    std::vector<Variable> nonseq_ph, outer_nonseq;
    auto add_nonseq = [&](const Variable& v) {
        if (replace.count(key(v)) || is_placeholder_of(ph_nodes, v) || v.is_constant()) return;
        Variable ph = make_ph(v.type(), v.name().empty() ? v.label() : v.name());
        replace[key(v)] = ph;
        nonseq_ph.push_back(ph);
        outer_nonseq.push_back(v);
    };
    for (const Variable& v : a.non_sequences) add_nonseq(v);
    std::vector<Variable> inner_all = step.outputs;
    for (const auto& u : updates) inner_all.push_back(u.second);
    for (const auto& node : toposort(clone_with_replace(inner_all, replace))) {
        if (node->kind == NodeKind::input || node->kind == NodeKind::shared) add_nonseq(node->output(0));
    }
    inner_all = clone_with_replace(inner_all, replace);
    info.n_non_seqs = nonseq_ph.size();

    std::vector<Variable> inner_inputs = placeholders;
    inner_inputs.insert(inner_inputs.end(), state_ph.begin(), state_ph.end());
    inner_inputs.insert(inner_inputs.end(), nonseq_ph.begin(), nonseq_ph.end());

    // n_steps: given, or the shortest sequence's number of steps.
    Variable n_steps;
    if (a.n_steps.value) {
        n_steps = constant(Tensor::scalar<std::int64_t>(*a.n_steps.value));
    } else if (a.n_steps.var.defined()) {
        if (a.n_steps.var.ndim() != 0 || !is_integer(a.n_steps.var.dtype())) {
            throw UsageError(fmt::format("{}: n_steps must be an integer scalar, got {}{}", who,
                                         a.n_steps.var.type().str(), at));
        }
        n_steps = a.n_steps.var.dtype() == DType::int64 ? a.n_steps.var : cast(a.n_steps.var, DType::int64);
    } else {
        if (a.sequences.empty()) {
            throw UsageError(fmt::format("{}: without sequences, n_steps must be given{}", who, at));
        }
        for (std::size_t s = 0; s < outer_seqs.size(); ++s) {
            const auto& taps = info.seq_taps[s];
            Variable len = outer_seqs[s].shape(0);
            if (taps.back() != taps.front()) len = sub(len, constant(static_cast<double>(taps.back() - taps.front()), DType::int64));
            n_steps = n_steps.defined() ? minimum(n_steps, len) : len;
        }
    }
    std::vector<Variable> outer{n_steps};
    outer.insert(outer.end(), outer_seqs.begin(), outer_seqs.end());
    outer.insert(outer.end(), outer_inits.begin(), outer_inits.end());
    outer.insert(outer.end(), outer_shared.begin(), outer_shared.end());
    outer.insert(outer.end(), outer_nonseq.begin(), outer_nonseq.end());
    const std::size_t n_out = info.out_taps.size();
    std::vector<Variable> outs = make_scan_node(std::move(info), inner_inputs, inner_all, outer, where);
    ScanResult r;
    r.outputs.assign(outs.begin(), outs.begin() + static_cast<std::ptrdiff_t>(n_out));
    for (std::size_t m = 0; m < outer_shared.size(); ++m) {
        r.updates.emplace_back(SharedVariable(outer_shared[m]), outs[n_out + m]);
    }
    return r;
}

ScanResult scan(const ScanFn& fn, const std::vector<ScanSequence>& sequences,
                const std::vector<ScanOutput>& outputs_info, const std::vector<Variable>& non_sequences,
                Bound n_steps, int truncate_gradient, bool go_backwards, const std::string& name,
                std::source_location where) {
    ScanArgs a;
    a.sequences = sequences;
    a.outputs_info = outputs_info;
    a.non_sequences = non_sequences;
    a.n_steps = n_steps;
    a.truncate_gradient = truncate_gradient;
    a.go_backwards = go_backwards;
    a.name = name;
    return scan(fn, a, where);
}

ScanResult map(const ScanFn& fn, const std::vector<ScanSequence>& sequences,
               const std::vector<Variable>& non_sequences, bool go_backwards, const std::string& name,
               std::source_location where) {
    return scan(fn, sequences, {}, non_sequences, std::nullopt, -1, go_backwards, name, where);
}

ScanResult reduce(const ScanFn& fn, const std::vector<ScanSequence>& sequences,
                  const std::vector<ScanOutput>& outputs_info, const std::vector<Variable>& non_sequences,
                  bool go_backwards, const std::string& name, std::source_location where) {
    ScanResult r = scan(fn, sequences, outputs_info, non_sequences, std::nullopt, -1, go_backwards, name, where);
    for (Variable& v : r.outputs) v = subtensor(v, {Idx(-1)}, where);
    return r;
}

ScanResult foldl(const ScanFn& fn, const std::vector<ScanSequence>& sequences,
                 const std::vector<ScanOutput>& outputs_info, const std::vector<Variable>& non_sequences,
                 const std::string& name, std::source_location where) {
    return reduce(fn, sequences, outputs_info, non_sequences, false, name, where);
}

ScanResult foldr(const ScanFn& fn, const std::vector<ScanSequence>& sequences,
                 const std::vector<ScanOutput>& outputs_info, const std::vector<Variable>& non_sequences,
                 const std::string& name, std::source_location where) {
    return reduce(fn, sequences, outputs_info, non_sequences, true, name, where);
}

// ------------------------------------------------------------------ the gradient

// Backpropagation through time as a scan that runs the steps in reverse. Output j with
// taps K_j reads the positions of H_j = [initial rows (L_j of them), y_j[0], y_j[1], ...]:
// step t reads H_j[L_j + t + k] for k in K_j and writes H_j[L_j + t]. The reversed step t
// carries L_j accumulators, acc_i = the gradient gathered so far (from later steps) for
// position L_j + t - i; the gradient of y_j[t] is then its outside gradient plus acc_0, the
// step's vector-Jacobian product gives the gradients of the positions it read, and the
// accumulators shift by one position. The gradients of the non-sequences are summed over the
// steps in accumulators too; those of the sequences are stacked per step and tap.
std::vector<Variable> ScanOp::pullback(const Node& node, const std::vector<Variable>& out_grads) const {
    const ScanInfo& info = inner_->info;
    const OuterLayout ol(info);
    const InnerLayout il(info);
    const std::size_t n_out = info.out_taps.size();
    const std::string who = scan_label(info.name);
    std::vector<Variable> result(node.inputs.size());

    // Final values of shared variables the loop updates carry no gradient (Theano's rule).
    for (std::size_t m = 0; m < info.n_shared; ++m) {
        if (out_grads[n_out + m].defined()) {
            result[ol.shared0 + m] = not_differentiable(
                *this, static_cast<int>(ol.shared0 + m),
                fmt::format("shared variable '{}' is updated inside the loop (Shared Variable with update)",
                            node.inputs[ol.shared0 + m].label()));
        }
    }
    bool any = false;
    for (std::size_t j = 0; j < n_out; ++j) any = any || out_grads[j].defined();
    if (!any) return result;
    for (std::size_t j = 0; j < n_out; ++j) {
        if (info.keep_last[j] > 0) {
            throw InternalError(fmt::format("{}: grad of a scan whose output {} keeps only its last steps", who, j));
        }
    }
    // Shared states the step's outputs read (random generator states, variables the loop
    // updates): the reversed loop needs their value at every step, so a second forward loop,
    // the same step with those values stacked as extra outputs, records them (it draws the
    // very same numbers: it starts from the same states). The states themselves get no
    // gradient (Theano's "Shared Variable with update").
    std::vector<std::size_t> read_states;
    {
        std::vector<Variable> outs(inner_->outputs.begin(), inner_->outputs.begin() + static_cast<std::ptrdiff_t>(n_out));
        std::unordered_set<const Node*> reached;
        for (const auto& nd : toposort(outs)) reached.insert(nd.get());
        for (std::size_t m = 0; m < info.n_shared; ++m) {
            if (!reached.count(inner_->inputs[il.shared0 + m].node_ptr().get())) continue;
            read_states.push_back(m);
            if (is_float(node.inputs[ol.shared0 + m].dtype())) {
                result[ol.shared0 + m] = not_differentiable(
                    *this, static_cast<int>(ol.shared0 + m),
                    fmt::format("shared variable '{}' is updated inside the loop (Shared Variable with update)",
                                node.inputs[ol.shared0 + m].label()));
            }
        }
    }
    std::vector<Variable> state_stacks;
    if (!read_states.empty()) {
        ScanInfo rec = info;
        std::vector<Variable> rec_outs(inner_->outputs.begin(), inner_->outputs.begin() + static_cast<std::ptrdiff_t>(n_out));
        for (std::size_t m : read_states) {
            rec.out_taps.emplace_back();
            rec.keep_last.push_back(0);
            rec_outs.push_back(inner_->inputs[il.shared0 + m]);
        }
        rec_outs.insert(rec_outs.end(), inner_->outputs.begin() + static_cast<std::ptrdiff_t>(n_out), inner_->outputs.end());
        rec.name = "states_of_" + (info.name.empty() ? std::string("scan_fn") : info.name);
        auto outs = make_scan_node(rec, inner_->inputs, rec_outs, node.inputs, inner_->where);
        for (std::size_t i = 0; i < read_states.size(); ++i) state_stacks.push_back(outs[n_out + i]);
    }

    const Variable n = node.inputs[0];
    Variable nb = n;  // the steps the reversed loop runs
    if (info.truncate_gradient > 0) nb = minimum(n, constant(static_cast<double>(info.truncate_gradient), DType::int64));

    // Reversed sequences: forward sequence windows, H windows, outside gradients.
    std::vector<ScanSequence> bseqs;
    for (std::size_t s = 0; s < info.seq_taps.size(); ++s) {
        const auto& taps = info.seq_taps[s];
        const Variable& seq = node.inputs[ol.seq0 + s];
        for (int k : taps) {
            const int off = k - taps.front();
            bseqs.emplace_back(subtensor(seq, {slice(off, add(n, constant(static_cast<double>(off), DType::int64)))}));
        }
    }
    std::vector<Variable> H(n_out);
    for (std::size_t j = 0; j < n_out; ++j) {
        if (info.out_taps[j].empty()) continue;
        const int L = info.init_rows(j);
        H[j] = concatenate({node.inputs[ol.init_of[j]], node.output(static_cast<int>(j))}, 0);
        for (int k : info.out_taps[j]) {
            bseqs.emplace_back(subtensor(H[j], {slice(L + k, add(n, constant(static_cast<double>(L + k), DType::int64)))}));
        }
    }
    for (const Variable& st : state_stacks) bseqs.emplace_back(st);
    std::vector<std::size_t> gy_pos(n_out, std::string::npos);
    for (std::size_t j = 0; j < n_out; ++j) {
        if (!out_grads[j].defined()) continue;
        gy_pos[j] = bseqs.size();
        bseqs.emplace_back(out_grads[j]);
    }
    // The forward loop's outputs, step by step: gradients that read a step's output (tanh,
    // sigmoid, exp, softmax read their result) take the stored value instead of computing
    // the step again inside the reversed loop. Outputs that are one of the step's inputs or
    // a constant have nothing to recompute.
    std::vector<std::size_t> stored_pos(n_out, std::string::npos);
    {
        std::unordered_set<const Node*> step_inputs;
        for (const Variable& v : inner_->inputs) step_inputs.insert(v.node_ptr().get());
        for (std::size_t j = 0; j < n_out; ++j) {
            const Variable& y = inner_->outputs[j];
            if (!is_float(y.dtype()) || y.is_constant() || step_inputs.count(y.node_ptr().get())) continue;
            stored_pos[j] = bseqs.size();
            bseqs.emplace_back(node.output(static_cast<int>(j)));
        }
    }
    // Accumulators: L_j per fed-back output, one per float non-sequence.
    std::vector<ScanOutput> binfo;
    std::vector<std::size_t> acc0(n_out, 0);
    for (std::size_t j = 0; j < n_out; ++j) {
        acc0[j] = binfo.size();
        if (info.init_rows(j) == 0) continue;
        const Variable row0 = subtensor(node.inputs[ol.init_of[j]], {Idx(0)});
        for (int i = 0; i < info.init_rows(j); ++i) binfo.emplace_back(zeros_like(row0));
    }
    std::vector<std::size_t> float_nonseq;
    for (std::size_t i = 0; i < info.n_non_seqs; ++i) {
        if (is_float(node.inputs[ol.nonseq0 + i].dtype())) float_nonseq.push_back(i);
    }
    const std::size_t nacc_out = binfo.size();
    for (std::size_t i : float_nonseq) binfo.emplace_back(zeros_like(node.inputs[ol.nonseq0 + i]));
    const std::size_t n_seq_grads = info.n_seq_inputs();
    for (std::size_t q = 0; q < n_seq_grads; ++q) binfo.push_back(ScanOutput::none());
    std::vector<Variable> nonseqs(node.inputs.begin() + static_cast<std::ptrdiff_t>(ol.nonseq0),
                                  node.inputs.begin() + static_cast<std::ptrdiff_t>(ol.end));

    auto inner = inner_;
    auto bwd = [inner, info, il, n_out, gy_pos, stored_pos, nacc_out, float_nonseq, n_seq_grads,
                read_states](const std::vector<Variable>& args) {
        // args: sequence windows, H windows, outside gradients; accumulators; non-sequences.
        std::size_t k = 0;
        VarMap<Variable> rep;
        std::vector<Variable> seq_args, tap_args;
        for (std::size_t q = 0; q < info.n_seq_inputs(); ++q) {
            seq_args.push_back(args[k]);
            rep[key(inner->inputs[q])] = args[k++];
        }
        for (std::size_t q = 0; q < info.n_tap_inputs(); ++q) {
            tap_args.push_back(args[k]);
            rep[key(inner->inputs[info.n_seq_inputs() + q])] = args[k++];
        }
        for (std::size_t m : read_states) rep[key(inner->inputs[il.shared0 + m])] = args[k++];
        std::vector<Variable> gy(n_out);
        for (std::size_t j = 0; j < n_out; ++j) {
            if (gy_pos[j] != std::string::npos) gy[j] = args[k++];
        }
        std::vector<Variable> stored(n_out);
        for (std::size_t j = 0; j < n_out; ++j) {
            if (stored_pos[j] != std::string::npos) stored[j] = args[k++];
        }
        std::vector<Variable> acc(args.begin() + static_cast<std::ptrdiff_t>(k),
                                  args.begin() + static_cast<std::ptrdiff_t>(k + nacc_out + float_nonseq.size()));
        k += acc.size();
        std::vector<Variable> nonseqs(args.begin() + static_cast<std::ptrdiff_t>(k), args.end());
        for (std::size_t i = 0; i < info.n_non_seqs; ++i) rep[key(inner->inputs[il.nonseq0 + i])] = nonseqs[i];
        std::vector<Variable> fwd(inner->outputs.begin(), inner->outputs.begin() + static_cast<std::ptrdiff_t>(n_out));
        fwd = clone_with_replace(fwd, rep);
        // The gradient of each output at this step.
        std::vector<Variable> ys, dys;
        std::size_t a = 0;
        for (std::size_t j = 0; j < n_out; ++j) {
            Variable dy = gy[j];
            if (!info.out_taps[j].empty()) dy = dy.defined() ? add(dy, acc[a]) : acc[a];
            a += static_cast<std::size_t>(info.init_rows(j));
            if (!dy.defined() || !is_float(fwd[j].dtype())) continue;
            ys.push_back(fwd[j]);
            dys.push_back(dy);
        }
        std::vector<Variable> wrt;
        std::vector<int> wrt_of_seq(seq_args.size(), -1), wrt_of_tap(tap_args.size(), -1), wrt_of_ns;
        for (std::size_t q = 0; q < seq_args.size(); ++q) {
            if (is_float(seq_args[q].dtype())) {
                wrt_of_seq[q] = static_cast<int>(wrt.size());
                wrt.push_back(seq_args[q]);
            }
        }
        for (std::size_t q = 0; q < tap_args.size(); ++q) {
            if (is_float(tap_args[q].dtype())) {
                wrt_of_tap[q] = static_cast<int>(wrt.size());
                wrt.push_back(tap_args[q]);
            }
        }
        for (std::size_t i : float_nonseq) {
            wrt_of_ns.push_back(static_cast<int>(wrt.size()));
            wrt.push_back(nonseqs[i]);
        }
        GradOptions go;
        go.disconnected_inputs = Disconnected::ignore;
        std::vector<Variable> g = ys.empty() ? std::vector<Variable>() : vjp(ys, dys, wrt, go);
        VarMap<Variable> use_stored;
        for (std::size_t j = 0; j < n_out; ++j) {
            if (stored[j].defined() && stored[j].type() == fwd[j].type()) use_stored[key(fwd[j])] = stored[j];
        }
        if (!use_stored.empty()) {
            std::vector<std::size_t> at;
            std::vector<Variable> defined;
            for (std::size_t i = 0; i < g.size(); ++i) {
                if (!g[i].defined()) continue;
                at.push_back(i);
                defined.push_back(g[i]);
            }
            defined = clone_with_replace(defined, use_stored);
            for (std::size_t i = 0; i < at.size(); ++i) g[at[i]] = defined[i];
        }
        auto grad_of = [&](int w, const Variable& like) { return w >= 0 && !ys.empty() ? g[w] : zeros_like(like); };
        std::vector<Variable> outs;
        // Accumulators of fed-back outputs shift by one position.
        std::size_t tap_base = 0;
        a = 0;
        for (std::size_t j = 0; j < n_out; ++j) {
            const auto& taps = info.out_taps[j];
            const int L = info.init_rows(j);
            for (int i = 0; i < L; ++i) {
                Variable v = i + 1 < L ? acc[a + static_cast<std::size_t>(i) + 1] : Variable();
                const auto it = std::find(taps.begin(), taps.end(), -(i + 1));
                if (it != taps.end()) {
                    const std::size_t q = tap_base + static_cast<std::size_t>(it - taps.begin());
                    const Variable gi = grad_of(wrt_of_tap[q], tap_args[q]);
                    v = v.defined() ? add(v, gi) : gi;
                }
                if (!v.defined()) v = zeros_like(acc[a + static_cast<std::size_t>(i)]);
                outs.push_back(v);
            }
            a += static_cast<std::size_t>(L);
            tap_base += taps.size();
        }
        for (std::size_t i = 0; i < float_nonseq.size(); ++i) {
            outs.push_back(add(acc[nacc_out + i], grad_of(wrt_of_ns[i], nonseqs[float_nonseq[i]])));
        }
        for (std::size_t q = 0; q < n_seq_grads; ++q) outs.push_back(grad_of(wrt_of_seq[q], seq_args[q]));
        return ScanStep(outs);
    };
    ScanArgs ba;
    ba.sequences = bseqs;
    ba.outputs_info = binfo;
    ba.non_sequences = nonseqs;
    ba.n_steps = Bound(nb);
    ba.go_backwards = true;
    ba.name = "grad_of_" + (info.name.empty() ? std::string("scan_fn") : info.name);
    ScanResult b = scan(bwd, ba, inner_->where);

    // Initial rows: row r of output j's rows gets accumulator L_j - 1 - r after the last step.
    for (std::size_t j = 0; j < n_out; ++j) {
        const int L = info.init_rows(j);
        if (L == 0) continue;
        std::vector<Variable> rows;
        for (int r = 0; r < L; ++r) {
            Variable last = subtensor(b.outputs[acc0[j] + static_cast<std::size_t>(L - 1 - r)], {Idx(-1)});
            std::vector<int> order{-1};
            for (int d = 0; d < last.ndim(); ++d) order.push_back(d);
            rows.push_back(dimshuffle(last, order));
        }
        result[ol.init_of[j]] = rows.size() == 1 ? rows[0] : concatenate(rows, 0);
    }
    for (std::size_t i = 0; i < float_nonseq.size(); ++i) {
        result[ol.nonseq0 + float_nonseq[i]] = subtensor(b.outputs[nacc_out + i], {Idx(-1)});
    }
    // Sequences: per tap, the stacked per-step gradients (reversed back) added at their rows.
    std::size_t q = 0;
    for (std::size_t s = 0; s < info.seq_taps.size(); ++s) {
        const auto& taps = info.seq_taps[s];
        const Variable& seq = node.inputs[ol.seq0 + s];
        if (!is_float(seq.dtype())) {
            q += taps.size();
            continue;
        }
        Variable g = zeros_like(seq);
        for (int k : taps) {
            Variable gs = subtensor(b.outputs[nacc_out + float_nonseq.size() + q++],
                                    {slice(std::nullopt, std::nullopt, -1)});
            Variable start = add(sub(n, nb), constant(static_cast<double>(k - taps.front()), DType::int64));
            g = inc_subtensor(g, gs, {slice(start, add(start, nb))});
        }
        result[ol.seq0 + s] = g;
    }
    return result;
}

}  // namespace theanine
