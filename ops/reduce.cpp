#include "ops/reduce.hpp"

#include <algorithm>
#include <cstring>
#include <limits>

#include <fmt/format.h>

#include "ops/blas.hpp"
#include "ops/elemwise.hpp"
#include "ops/shape.hpp"

namespace theanine {

namespace {
int normalise_axis(const std::string& op, int axis, int ndim) {
    int a = axis < 0 ? axis + ndim : axis;
    if (a < 0 || a >= ndim) {
        throw UsageError(fmt::format("{}: axis {} is out of range for a {}-d input", op, axis, ndim));
    }
    return a;
}

DType sum_dtype(DType dt) { return is_float(dt) ? dt : DType::int64; }

// Inserts size-1 axes where the reduced axes were.
Variable expand_reduced(const Variable& g, const std::vector<int>& axes, int ndim) {
    std::vector<int> order;
    int k = 0;
    for (int d = 0; d < ndim; ++d) {
        if (std::find(axes.begin(), axes.end(), d) != axes.end()) {
            order.push_back(-1);
        } else {
            order.push_back(k++);
        }
    }
    return dimshuffle(g, order);
}

// combine over p[0], ..., p[n - 1], in kLanes independent accumulators (4 vectors
// of doubles: one accumulator's chain of dependent adds would wait on each add), folded in
// lane order at the end.
template <class T, class A, class F>
A lanes_fold(const T* p, std::int64_t n, A init, F combine) {
    constexpr int kLanes = 32;
    if (n < 2 * kLanes) {  // short runs: one chain costs less than setting up the lanes
        A a = init;
        for (std::int64_t i = 0; i < n; ++i) a = combine(a, static_cast<A>(p[i]));
        return a;
    }
    A part[kLanes];
    std::fill_n(part, kLanes, init);
    std::int64_t i = 0;
    for (; i + kLanes <= n; i += kLanes) {
        for (int k = 0; k < kLanes; ++k) part[k] = combine(part[k], static_cast<A>(p[i + k]));
    }
    A a = init;
    for (int k = 0; k < kLanes; ++k) a = combine(a, part[k]);
    for (; i < n; ++i) a = combine(a, static_cast<A>(p[i]));
    return a;
}

// Column folds of a row-major (rows x cols) float64 matrix onto acc, for the columns
// [c0, c0 + 32 n) of [c0, c1): 32 columns at a time in four vectors held in registers over
// kRows rows, then stored. (A sweep of each row into an array of accumulators, stored and
// reloaded every row, makes the loads of a float64 input wait: 1.4 ms for 5000 x 784 on one
// thread against 0.64 ms this way, on AMD EPYC family 26; float32 input, converted to double
// as it is added, ran slower this way there, 470 against 370 us, and keeps the sweep.) Each
// column is folded over the rows in order, as the sweep does. Returns where the columns left
// over start.
template <class F>
std::int64_t fold_columns(const double* p, std::int64_t rows, std::int64_t cols, std::int64_t c0, std::int64_t c1,
                          double* acc, F combine) {
    using D [[gnu::vector_size(64)]] = double;
    constexpr std::int64_t kW = 32, kRows = 64;
    const std::int64_t whole = c0 + (c1 - c0) / kW * kW;
    for (std::int64_t r0 = 0; r0 < rows; r0 += kRows) {
        const std::int64_t r1 = std::min(rows, r0 + kRows);
        for (std::int64_t c = c0; c < whole; c += kW) {
            D a[4];
            std::memcpy(a, acc + c, sizeof a);
            for (std::int64_t i = r0; i < r1; ++i) {
                const double* row = p + i * cols + c;
#pragma GCC unroll 4
                for (int v = 0; v < 4; ++v) {
                    D t;
                    std::memcpy(&t, row + 8 * v, sizeof t);
                    a[v] = combine(a[v], t);
                }
            }
            std::memcpy(acc + c, a, sizeof a);
        }
    }
    return whole;
}

template <class T, class A, class F>
void reduce_kernel(const Tensor& x, Tensor& out, const std::vector<int>& axes, A init, F combine) {
    const int nd = x.ndim();
    std::vector<bool> red(static_cast<std::size_t>(nd), false);
    for (int a : axes) red[a] = true;
    const std::int64_t on = out.size();
    std::vector<A> acc(static_cast<std::size_t>(on), init);
    // Output stride for each input axis (0 for reduced axes).
    Shape ost(static_cast<std::size_t>(nd), 0);
    std::int64_t s = 1;
    for (int d = nd - 1; d >= 0; --d) {
        if (!red[d]) {
            ost[d] = s;
            s *= x.dim(d);
        }
    }
    const T* p = x.data<T>();
    const std::int64_t total = x.size();
    if (total > 0) {
        // Large inputs are split over the threads (run_parts) so that the bits do not depend
        // on the thread count: one flat run in fixed blocks of kBlock values, whose results are
        // combined in block order; whole rows or whole column ranges otherwise. Below kSplit
        // values one thread is faster (the other core's half of the input crosses between the
        // caches): float32 sums inside a compiled step, 1 / 2 threads, AMD EPYC family 26:
        // 65536 values 4.7 / 5.6 us (all axes), 6.1 / 7.0 us (columns); 131072: 8.5 / 6.7 us,
        // 10.9 / 10.6 us; 262144: 16.4 / 6.8 us, 22.8 / 16.3 us.
        constexpr std::int64_t kSplit = 1 << 17;
        constexpr std::int64_t kBlock = 1 << 15;
        const int threads = num_threads();
        if (x.is_contiguous() && on == 1) {
            // Every axis: one flat run.
            if (total < 2 * kBlock) {
                acc[0] = lanes_fold(p, total, init, combine);
            } else {
                const std::int64_t blocks = (total + kBlock - 1) / kBlock;
                std::vector<A> block(static_cast<std::size_t>(blocks));
                const int parts = total < kSplit ? 1 : static_cast<int>(std::min<std::int64_t>(threads, blocks));
                run_parts(parts, [&](int part) {
                    for (std::int64_t b = blocks * part / parts; b < blocks * (part + 1) / parts; ++b) {
                        block[static_cast<std::size_t>(b)] =
                            lanes_fold(p + b * kBlock, std::min(kBlock, total - b * kBlock), init, combine);
                    }
                });
                A a = init;
                for (A v : block) a = combine(a, v);
                acc[0] = a;
            }
        } else if (x.is_contiguous() && nd >= 1 && red[nd - 1] && std::count(red.begin(), red.end(), true) == 1) {
            // The last axis: one contiguous run per output element, rows split over the threads.
            const std::int64_t len = x.dim(nd - 1);
            const int parts = total < kSplit ? 1 : static_cast<int>(std::min<std::int64_t>(threads, on));
            run_parts(parts, [&](int part) {
                for (std::int64_t o = on * part / parts; o < on * (part + 1) / parts; ++o) {
                    acc[o] = lanes_fold(p + o * len, len, init, combine);
                }
            });
        } else if (x.is_contiguous() && nd == 2 && red[0] && !red[1]) {
            // Column sums of a row-major matrix: rows added into a block of columns' accumulators
            // held apart from the input (vectorised across the columns); column ranges split
            // over the threads.
            const std::int64_t rows = x.dim(0), cols = x.dim(1);
            const int parts = total < kSplit || cols < 32 ? 1 : threads;
            run_parts(parts, [&](int part) {
                auto [first, last] = column_slice(cols, part, parts);
                if constexpr (std::is_same_v<T, double>) first = fold_columns(p, rows, cols, first, last, acc.data(), combine);
                constexpr std::int64_t kCols = 1024;
                A a[kCols];
                for (std::int64_t c0 = first; c0 < last; c0 += kCols) {
                    const std::int64_t w = std::min(kCols, last - c0);
                    std::fill_n(a, w, init);
                    for (std::int64_t i = 0; i < rows; ++i) {
                        const T* row = p + i * cols + c0;
                        for (std::int64_t j = 0; j < w; ++j) a[j] = combine(a[j], static_cast<A>(row[j]));
                    }
                    std::copy(a, a + w, acc.begin() + c0);
                }
            });
        } else {
            std::vector<std::int64_t> idx(static_cast<std::size_t>(nd), 0);
            std::int64_t in_off = 0, out_off = 0;
            for (std::int64_t i = 0; i < total; ++i) {
                acc[out_off] = combine(acc[out_off], static_cast<A>(p[in_off]));
                for (int d = nd - 1; d >= 0; --d) {
                    idx[d]++;
                    in_off += x.strides()[d];
                    out_off += ost[d];
                    if (idx[d] < x.dim(d)) break;
                    in_off -= x.strides()[d] * x.dim(d);
                    out_off -= ost[d] * x.dim(d);
                    idx[d] = 0;
                }
            }
        }
    }
    dispatch(out.dtype(), [&]<class O>() {
        O* o = out.data<O>();
        for (std::int64_t i = 0; i < on; ++i) o[i] = static_cast<O>(acc[i]);
    });
}
}  // namespace

Reduce::Reduce(ReduceKind kind, std::vector<int> axes) : kind_(kind), axes_(std::move(axes)) {
    std::sort(axes_.begin(), axes_.end());
    axes_.erase(std::unique(axes_.begin(), axes_.end()), axes_.end());
}

std::string Reduce::name() const {
    std::string s = kind_ == ReduceKind::sum ? "Sum{axes=[" : "Max{axes=[";
    for (std::size_t i = 0; i < axes_.size(); ++i) s += (i ? "," : "") + std::to_string(axes_[i]);
    return s + "]}";
}

bool Reduce::props_equal(const Op& other) const {
    const auto& o = static_cast<const Reduce&>(other);
    return o.kind_ == kind_ && o.axes_ == axes_;
}

std::size_t Reduce::props_hash() const {
    std::size_t h = static_cast<std::size_t>(kind_);
    for (int a : axes_) h = h * 31 + static_cast<std::size_t>(a);
    return h;
}

std::vector<TensorType> Reduce::make_types(const std::vector<Variable>& inputs) const {
    if (inputs.size() != 1) throw UsageError(name() + ": takes 1 input");
    const Variable& x = inputs[0];
    for (int a : axes_) {
        if (a < 0 || a >= x.ndim()) {
            throw UsageError(fmt::format("{}: axis {} out of range for input 0 of type {}", name(), a, x.type().str()));
        }
    }
    std::vector<bool> bc;
    for (int d = 0; d < x.ndim(); ++d) {
        if (std::find(axes_.begin(), axes_.end(), d) == axes_.end()) bc.push_back(x.broadcastable()[d]);
    }
    DType dt = kind_ == ReduceKind::sum ? sum_dtype(x.dtype()) : x.dtype();
    return {TensorType{dt, bc}};
}

std::optional<std::vector<Shape>> Reduce::infer_shape(const std::vector<Shape>& in) const {
    Shape s;
    for (int d = 0; d < static_cast<int>(in[0].size()); ++d) {
        if (std::find(axes_.begin(), axes_.end(), d) == axes_.end()) s.push_back(in[0][d]);
    }
    return std::vector<Shape>{s};
}

void Reduce::perform(const Node& node, std::span<const Tensor* const> in, std::span<Tensor* const> out) const {
    const Tensor& x = *in[0];
    Shape os = (*infer_shape({x.shape()}))[0];
    out[0]->ensure(node.types[0].dtype, os);
    if (kind_ == ReduceKind::max) {
        for (int a : axes_) {
            if (x.dim(a) == 0) {
                throw UsageError(fmt::format("{}: cannot take the max over axis {} of size 0", name(), a));
            }
        }
    }
    dispatch(x.dtype(), [&]<class T>() {
        using A = std::conditional_t<std::is_floating_point_v<T>, double, std::int64_t>;
        if (kind_ == ReduceKind::sum) {
            reduce_kernel<T, A>(x, *out[0], axes_, A(0), [](auto a, auto b) { return a + b; });
        } else {
            reduce_kernel<T, A>(x, *out[0], axes_, std::numeric_limits<A>::lowest(),
                                [](auto a, auto b) { return (b > a) | (b != b) ? b : a; });
        }
    });
}

std::vector<Variable> Reduce::pullback(const Node& node, const std::vector<Variable>& g) const {
    const Variable& x = node.inputs[0];
    if (!is_float(x.dtype())) return {Variable()};
    Variable ge_ = expand_reduced(g[0], axes_, x.ndim());
    if (kind_ == ReduceKind::sum) return {second(x, ge_)};
    Variable mx = expand_reduced(node.output(0), axes_, x.ndim());
    return {mul(ge_, cast(eq(x, mx), x.dtype()))};
}

std::string Argmax::name() const {
    return axis_ ? fmt::format("Argmax{{axis={}}}", *axis_) : std::string("Argmax{axis=None}");
}

std::vector<TensorType> Argmax::make_types(const std::vector<Variable>& inputs) const {
    if (inputs.size() != 1) throw UsageError(name() + ": takes 1 input");
    const Variable& x = inputs[0];
    if (!axis_) return {TensorType{DType::int64, {}}};
    if (*axis_ < 0 || *axis_ >= x.ndim()) {
        throw UsageError(fmt::format("{}: axis out of range for input 0 of type {}", name(), x.type().str()));
    }
    std::vector<bool> bc = x.broadcastable();
    bc.erase(bc.begin() + *axis_);
    return {TensorType{DType::int64, bc}};
}

void Argmax::perform(const Node&, std::span<const Tensor* const> in, std::span<Tensor* const> out) const {
    const Tensor x = in[0]->contiguous();
    std::int64_t outer = 1, n = x.size(), inner = 1;
    Shape os;
    if (axis_) {
        for (int d = 0; d < x.ndim(); ++d) {
            if (d < *axis_) outer *= x.dim(d);
            if (d > *axis_) inner *= x.dim(d);
            if (d != *axis_) os.push_back(x.dim(d));
        }
        n = x.dim(*axis_);
    }
    if (n == 0) throw UsageError(name() + ": argmax of an empty axis");
    out[0]->ensure(DType::int64, os);
    auto* o = out[0]->data<std::int64_t>();
    dispatch(x.dtype(), [&]<class T>() {
        const T* p = x.data<T>();
        for (std::int64_t a = 0; a < outer; ++a) {
            for (std::int64_t c = 0; c < inner; ++c) {
                std::int64_t best = 0;
                T bv = p[a * n * inner + c];
                for (std::int64_t i = 1; i < n; ++i) {
                    T v = p[(a * n + i) * inner + c];
                    if (v > bv) {
                        bv = v;
                        best = i;
                    }
                }
                o[a * inner + c] = best;
            }
        }
    });
}

std::vector<Variable> Argmax::pullback(const Node&, const std::vector<Variable>&) const { return {Variable()}; }

Variable sum_axes(const Variable& x, std::vector<int> axes, bool keepdims) {
    for (int& a : axes) a = normalise_axis("sum", a, x.ndim());
    Variable s = apply1(std::make_shared<Reduce>(ReduceKind::sum, axes), {x});
    if (keepdims) s = expand_reduced(s, axes, x.ndim());
    return s;
}

namespace {
std::vector<int> axes_of(const std::string& op, const Variable& x, std::optional<int> axis) {
    std::vector<int> axes;
    if (axis) {
        axes.push_back(normalise_axis(op, *axis, x.ndim()));
    } else {
        for (int d = 0; d < x.ndim(); ++d) axes.push_back(d);
    }
    return axes;
}
}  // namespace

Variable sum(const Variable& x, std::optional<int> axis, bool keepdims) {
    return sum_axes(x, axes_of("sum", x, axis), keepdims);
}

Variable mean(const Variable& x, std::optional<int> axis, bool keepdims) {
    auto axes = axes_of("mean", x, axis);
    Variable s = sum_axes(x, axes, keepdims);
    Variable n;
    for (int a : axes) n = n.defined() ? mul(n, x.shape(a)) : x.shape(a);
    DType dt = is_float(x.dtype()) ? x.dtype() : DType::float64;
    if (!n.defined()) return cast(s, dt);
    return true_div(cast(s, dt), cast(n, dt));
}

Variable max_axes(const Variable& x, std::vector<int> axes, bool keepdims) {
    for (int& a : axes) a = normalise_axis("max", a, x.ndim());
    Variable m = apply1(std::make_shared<Reduce>(ReduceKind::max, axes), {x});
    if (keepdims) m = expand_reduced(m, axes, x.ndim());
    return m;
}

Variable max(const Variable& x, std::optional<int> axis, bool keepdims) {
    return max_axes(x, axes_of("max", x, axis), keepdims);
}

Variable argmax(const Variable& x, std::optional<int> axis) {
    std::optional<int> a;
    if (axis) a = normalise_axis("argmax", *axis, x.ndim());
    if (!a && x.ndim() == 1) a = 0;
    return apply1(std::make_shared<Argmax>(a), {x});
}

Variable Variable::sum(std::optional<int> axis, bool keepdims) const { return theanine::sum(*this, axis, keepdims); }
Variable Variable::mean(std::optional<int> axis, bool keepdims) const { return theanine::mean(*this, axis, keepdims); }
Variable Variable::max(std::optional<int> axis, bool keepdims) const { return theanine::max(*this, axis, keepdims); }
Variable Variable::argmax(std::optional<int> axis) const { return theanine::argmax(*this, axis); }
Variable Variable::astype(DType dt) const { return cast(*this, dt); }

}  // namespace theanine
