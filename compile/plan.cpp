// The executor: binds arguments, runs a Plan's steps, and hands the call's end to the
// memory contract (ownership.cpp).
#include "compile/plan.hpp"

#include <algorithm>
#include <chrono>
#include <cmath>
#include <limits>
#include <numeric>
#include <type_traits>

#include <fmt/format.h>

#include "compile/ownership.hpp"
#include "ops/blas.hpp"
#include "ops/team.hpp"

namespace theanine {

namespace {

std::string input_label(std::size_t i, const InputBinding& b) {
    return b.name.empty() ? fmt::format("input {}", i) : fmt::format("input {} ('{}')", i, b.name);
}

// After a Join along axis 0 has run, its inputs' slots become views of the matching rows of
// its output, so on the next call their producers write there and the Join copies nothing.
void place_join_inputs(Step& s) {
    Tensor& o = *s.out[0];
    if (!o.defined() || !o.is_contiguous()) return;
    std::int64_t at = 0;
    for (Tensor* slot : s.place) {
        if (!slot->defined() || slot->ndim() != o.ndim()) return;
        const std::int64_t n = slot->dim(0);
        *slot = o.slice(0, at, at + n, 1).placed();
        at += n;
    }
}

}  // namespace

Tensor Plan::bind_arg(InputBinding& b, std::size_t position, const Arg& a) {
    const TensorType& type = b.var.type();
    if (a.tensor) {
        const Tensor& t = *a.tensor;
        if (!t.defined()) throw UsageError(fmt::format("function call: {} got an empty tensor", input_label(position, b)));
        if (t.ndim() != type.ndim()) {
            throw UsageError(fmt::format("function call: {} expects {}, got {} of shape {}", input_label(position, b),
                                         type.str(), dtype_name(t.dtype()), shape_string(t.shape())));
        }
        if (!TensorType{t.dtype(), type.broadcastable}.accepts(t)) {
            throw UsageError(fmt::format("function call: {} expects {} (size 1 on broadcastable axes), got shape {}",
                                         input_label(position, b), type.str(), shape_string(t.shape())));
        }
        if (t.dtype() == type.dtype) return t;
        // Another dtype: converted when numpy's safe casting allows it (or the function was
        // compiled with allow_input_downcast), into a buffer of the function's own.
        if (!b.allow_downcast && !casts_safely(t.dtype(), type.dtype)) {
            throw UsageError(fmt::format("function call: {} expects {}; {} data may lose precision as {} (cast it "
                                         "first, or compile with CompileOptions::allow_input_downcast = true)",
                                         input_label(position, b), type.str(), dtype_name(t.dtype()),
                                         dtype_name(type.dtype)));
        }
        if (!b.converted.sole_owner() || b.converted.shape() != t.shape()) b.converted = Tensor::empty(type.dtype, t.shape());
        b.converted.copy_from(t);
        return b.converted;
    }
    if (type.ndim() != 0) {
        throw UsageError(fmt::format("function call: {} expects {}, got a number", input_label(position, b), type.str()));
    }
    if (!(b.scratch.sole_owner())) b.scratch = Tensor::empty(type.dtype, {});
    if (is_float(type.dtype)) {
        const double x = a.is_integer ? static_cast<double>(a.integer) : a.number;
        dispatch(type.dtype, [&]<class T>() {
            if constexpr (std::is_floating_point_v<T>) *b.scratch.data<T>() = static_cast<T>(x);
        });
        return b.scratch;
    }
    // An integer input: the exact value, within the dtype's range.
    std::int64_t v = a.integer;
    if (!a.is_integer) {
        if (!std::isfinite(a.number) || std::floor(a.number) != a.number) {
            throw UsageError(fmt::format("function call: {} expects {}, got the non-integer {}", input_label(position, b),
                                         type.str(), a.number));
        }
        if (std::abs(a.number) > 9007199254740992.0) {
            throw UsageError(fmt::format("function call: {} expects {}, got {}, a floating-point number beyond 2^53 "
                                         "that may not be the integer meant; pass an integer", input_label(position, b),
                                         type.str(), a.number));
        }
        v = static_cast<std::int64_t>(a.number);
    }
    dispatch(type.dtype, [&]<class T>() {
        if constexpr (std::is_integral_v<T>) {
            const auto lo = static_cast<std::int64_t>(std::numeric_limits<T>::lowest());
            const auto hi = static_cast<std::int64_t>(std::numeric_limits<T>::max());
            if (v < lo || v > hi) {
                throw UsageError(fmt::format("function call: {} expects {}, got {}, outside its range [{}, {}]",
                                             input_label(position, b), type.str(), v, lo, hi));
            }
            *b.scratch.data<T>() = static_cast<T>(v);
        }
    });
    return b.scratch;
}

namespace {

void record_outputs(Step& s) {
    s.shapes.resize(s.out.size());
    s.bytes.resize(s.out.size());
    for (std::size_t o = 0; o < s.out.size(); ++o) {
        const Tensor& t = *s.out[o];
        if (!t.defined()) continue;
        s.shapes[o].assign(t.shape().begin(), t.shape().end());
        bool shares = false;
        for (const Tensor* in : s.in) shares = shares || (in->defined() && in->storage_id() == t.storage_id());
        s.bytes[o] = shares ? 0 : t.storage_bytes();
    }
}

}  // namespace

void Plan::run_step(Step& s) {
    for (int o : s.acquire) {
        // The smallest pooled buffer the op's ensure() will keep (large enough, at most about
        // twice), the most recently released among equals, so buffers no step needs stay
        // untouched and a value never takes the buffer a larger one needs later in the call.
        const std::size_t need = last_bytes[o];
        std::size_t best = pool.size(), best_bytes = 0;
        for (std::size_t k = pool.size(); k-- > 0 && need > 0;) {
            const std::size_t have = pool[k].storage_bytes();
            if (have < need || have > 2 * need + 64) continue;
            if (best == pool.size() || have < best_bytes) {
                best = k;
                best_bytes = have;
                if (have == need) break;
            }
        }
        if (best < pool.size()) {
            std::size_t k = best;
            slots[o] = std::move(pool[k]);
            if (k < pool_idle) {
                // Keep the untouched ones first: the last untouched one fills the hole.
                --pool_idle;
                if (k != pool_idle) pool[k] = std::move(pool[pool_idle]);
                k = pool_idle;
            }
            if (k + 1 != pool.size()) pool[k] = std::move(pool.back());
            pool.pop_back();
        }
    }
    s.op->perform(*s.node, s.in, s.out);
    if (s.op->is_async()) {
        in_flight.push_back(static_cast<std::size_t>(&s - steps.data()));
    } else if (nan_guard) {
        check_finite(s);  // before the inputs' buffers go back to the pool
    }
    if (!s.place.empty()) place_join_inputs(s);
    record_outputs(s);
    for (int r : s.release) {
        for (int v : views_of[r]) slots[v] = Tensor();
        if (!slots[r].defined()) continue;
        last_bytes[r] = static_cast<std::size_t>(slots[r].size()) * dtype_size(slots[r].dtype());
        pool.push_back(std::move(slots[r]));
        slots[r] = Tensor();
    }
}

namespace {
constexpr double kLongCall = 100e-6;        // shorter calls have little parallel work to adapt
constexpr std::int64_t kFirstProbe = 32;    // once the first calls' costs are behind
constexpr std::int64_t kProbeEvery = 1024;  // long calls between probes without a reason
constexpr std::int64_t kProbeEveryOne = 256;  // the same on one thread
}  // namespace

// The window holds `calls` calls of `seconds` each: the probe's calls when it switched.
void WorkerChoice::restart_window(double seconds, int calls) {
    std::fill(recent_.begin(), recent_.begin() + calls, seconds);
    n_recent = next = calls;
    recent_sum = seconds * calls;
    best = seconds;
}

void WorkerChoice::record(double seconds) {
    if (!adapt || seconds < kLongCall) return;
    ++long_calls;
    if (phase_ != Phase::steady) {
        constexpr int timed = kProbeCalls - kProbeWarmup;
        auto& side = phase_ == Phase::other ? other_ : current_;
        if (probe_left <= timed) side[static_cast<std::size_t>(timed - probe_left)] = seconds;
        if (--probe_left > 0) return;
        if (phase_ == Phase::other) {
            phase_ = Phase::current;
            probe_left = kProbeCalls;
            return;
        }
        phase_ = Phase::steady;
        since_probe = 0;
        auto median = [](std::array<double, timed> v) {
            std::sort(v.begin(), v.end());
            return (v[(timed - 1) / 2] + v[timed / 2]) / 2;
        };
        const double other = median(other_), current = median(current_);
        if (other < 0.9 * current) {
            one_ = !one_;
            restart_window(other, timed);
        } else {
            best = current;
        }
        return;
    }
    recent_[static_cast<std::size_t>(next)] = seconds;
    next = (next + 1) % kWindow;
    n_recent = std::min(n_recent + 1, kWindow);
    recent_sum = std::accumulate(recent_.begin(), recent_.begin() + n_recent, 0.0);
    const double now = recent_sum / n_recent;
    if (n_recent == kWindow) best = best == 0 ? now : std::min(best, now);
    ++since_probe;
    // Probe early, then now and then, and at once when calls have become much slower than
    // they were (another process has started taking a core).
    const bool probe = long_calls == kFirstProbe || since_probe >= (one_ ? kProbeEveryOne : kProbeEvery) ||
                       (since_probe >= kWindow && best > 0 && now > 1.25 * best);
    if (probe && num_threads() > 1) {
        phase_ = Phase::other;
        probe_left = kProbeCalls;
    }
}

namespace {

struct Stats {
    std::int64_t nan = 0, inf = 0, big = 0, n = 0;
    double lo = 0, hi = 0, sum = 0;
};

Stats stats_of(const Tensor& t) {
    Stats st;
    if (!t.defined()) return st;
    const std::vector<double> v = t.to_doubles();
    bool first = true;
    for (double x : v) {
        ++st.n;
        if (std::isnan(x)) {
            ++st.nan;
            continue;
        }
        if (std::isinf(x)) ++st.inf;
        if (std::abs(x) > 1e10) ++st.big;
        if (!std::isinf(x)) st.sum += x;
        st.lo = first ? x : std::min(st.lo, x);
        st.hi = first ? x : std::max(st.hi, x);
        first = false;
    }
    return st;
}

std::string summary(const Tensor& t) {
    if (!t.defined()) return "(empty)";
    std::string s = fmt::format("{} {}", dtype_name(t.dtype()), shape_string(t.shape()));
    if (t.size() == 0) return s;
    const Stats st = stats_of(t);
    const std::int64_t finite = st.n - st.nan - st.inf;
    if (finite > 0) {
        s += fmt::format(" min {:.6g} max {:.6g} mean {:.6g}", st.lo, st.hi, st.sum / static_cast<double>(finite));
    }
    if (st.nan) s += fmt::format(" ({} NaN)", st.nan);
    if (st.inf) s += fmt::format(" ({} inf)", st.inf);
    return s;
}

}  // namespace

void Plan::check_finite(const Step& s) const {
    for (std::size_t o = 0; o < s.out.size(); ++o) {
        const Tensor& t = *s.out[o];
        if (!t.defined() || !is_float(t.dtype())) continue;
        // A quick pass first: the usual answer is that every value is fine.
        bool fine = true;
        dispatch(t.dtype(), [&]<class T>() {
            if constexpr (std::is_floating_point_v<T>) {
                if (!t.is_contiguous()) {
                    fine = false;
                    return;
                }
                const T* d = t.data<T>();
                for (std::int64_t i = 0; i < t.size() && fine; ++i) {
                    fine = std::isfinite(d[i]) && (!nan_guard_big || std::abs(d[i]) <= T(1e10));
                }
            }
        });
        if (fine) continue;
        const Stats st = stats_of(t);
        if (st.nan == 0 && st.inf == 0 && (!nan_guard_big || st.big == 0)) continue;
        std::string what = st.nan ? fmt::format("{} NaN", st.nan) : st.inf ? fmt::format("{} inf", st.inf)
                                                                       : fmt::format("{} values above 1e10", st.big);
        std::string msg = fmt::format("NaN guard: {} produced {} in output {} ({})", s.op->name(), what, o, summary(t));
        const std::string where = where_string(s.node->where);
        if (!where.empty()) msg += fmt::format(" (node built at {})", where);
        for (std::size_t i = 0; i < s.in.size(); ++i) msg += fmt::format("\n  input {}: {}", i, summary(*s.in[i]));
        throw UsageError(msg);
    }
}

namespace {
thread_local LoopOptions t_running;
}  // namespace

const LoopOptions& running_options() { return t_running; }

void Plan::finish_async(std::size_t step) {
    const auto it = std::find(in_flight.begin(), in_flight.end(), step);
    if (it == in_flight.end()) return;
    in_flight.erase(it);
    Step& s = steps[step];
    if (profile) {
        auto t0 = std::chrono::steady_clock::now();
        s.op->finish(*s.node, s.out);
        step_seconds[step] += std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    } else {
        s.op->finish(*s.node, s.out);
    }
    if (nan_guard) check_finite(s);
}

void Plan::run_steps() {
    if (profile) step_seconds.resize(steps.size(), 0.0);
    // Loops among the steps run their step with this call's options; restored on the way out.
    struct Scope {
        LoopOptions saved;
        explicit Scope(const LoopOptions& now) : saved(t_running) { t_running = now; }
        ~Scope() { t_running = saved; }
    } scope(LoopOptions{profile, nan_guard, nan_guard_big});
    WorkerLimit limit(workers.limit());
    // Calls are timed only for the worker choice (reading the clock costs as much as a tiny step).
    const bool timed = workers.adapt && num_threads() > 1;
    const auto t0 = timed ? std::chrono::steady_clock::now() : std::chrono::steady_clock::time_point();
    // Once a call has run kernels that split their work, later calls run in a session: one
    // OpenMP region for the call, its threads taking the kernels' parts (ops/team.hpp).
    const std::uint64_t teams_before = team::teams_run();
    auto steps_of_call = [&] {
        // Work an asynchronous step started is finished even when a later step throws: its
        // peers (the other processes of a collective) take part in it regardless.
        struct InFlight {
            Plan& p;
            ~InFlight() {
                while (!p.in_flight.empty()) {
                    try {
                        p.finish_async(p.in_flight.front());  // takes it off the list first
                    } catch (...) {
                    }
                }
            }
        } in_flight_guard{*this};
        for (std::size_t i = 0; i < steps.size(); ++i) {
            if (i == first_commit) {
                // Every step from here on writes into a shared variable's buffer: check them all
                // before the first one writes, so a failing call changes nothing. Work in flight
                // ends first, so the checks see finished values.
                while (!in_flight.empty()) finish_async(in_flight.front());
                for (std::size_t j = i; j < steps.size(); ++j) steps[j].op->validate(*steps[j].node, steps[j].in);
            }
            for (std::size_t a : steps[i].finish) finish_async(a);
            if (profile) {
                auto t0 = std::chrono::steady_clock::now();
                run_step(steps[i]);
                step_seconds[i] += std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
            } else {
                run_step(steps[i]);
            }
            for (std::size_t a : in_flight) steps[a].op->progress(*steps[a].node);
        }
        for (std::size_t a : finish_at_end) finish_async(a);
    };
    const int n_workers = active_workers();
    if (split_work && n_workers > 1) {
        team::session(n_workers, steps_of_call);
    } else {
        steps_of_call();
    }
    split_work = team::teams_run() != teams_before;
    if (profile) ++calls;
    if (timed) workers.record(std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count());
}

void Plan::end_loop() {
    for (int s : transient) slots[s] = Tensor();
    const auto idle = static_cast<std::ptrdiff_t>(std::min(pool_idle, pool.size()));
    pool.erase(pool.begin(), pool.begin() + idle);
    pool_idle = pool.size();
}

std::vector<Tensor> Plan::run() {
    // Whatever happens, the call lets go of the arguments and shared values it bound, and
    // frees the pooled buffers no step took.
    struct EndOfCall {
        Plan& p;
        ~EndOfCall() { p.end_loop(); }
    } end_of_call{*this};
    pool_idle = pool.size();
    bind_shared(*this);
    run_steps();
    return finish_call(*this);
}

}  // namespace theanine
