#include "ops/nnet.hpp"

#include <algorithm>
#include <cmath>
#include <vector>

#include <fmt/format.h>

#include "ops/blas.hpp"
#include "ops/elemwise.hpp"
#include "ops/reduce.hpp"
#include "ops/shape.hpp"
#include "ops/vecmath.hpp"

namespace theanine {

namespace {
// Softmax and LogSoftmax: one float vector or matrix in, the same type and shape out.
std::vector<TensorType> row_op_types(const char* op, const std::vector<Variable>& inputs) {
    if (inputs.size() != 1) throw UsageError(fmt::format("{}: takes 1 input", op));
    const Variable& x = inputs[0];
    if ((x.ndim() != 1 && x.ndim() != 2) || !is_float(x.dtype())) {
        throw UsageError(fmt::format("{}: input 0 must be a float vector or matrix, got {}", op, x.type().str()));
    }
    return {x.type()};
}
}  // namespace

namespace {
// Runs fn(r0, r1) over blocks of the rows, a block per part of the worker threads when there
// are at least min_values entries. Below that one thread is faster: the rows a part reads and
// writes cross between the cores' caches, which costs more than the part saves. Measured on
// AMD EPYC family 26, float32, 1 and 2 threads: the cross-entropy (an exp and a log per
// entry) 600 x 10: 9.6 / 13.2 us, 1200 x 10: 17.9 / 17.9 us, 2500 x 10: 37 / 29 us; its
// gradient (a subtraction per entry) 600 x 10: 2.6 / 8.6 us, 5000 x 10: 16.6 / 18.4 us,
// 10000 x 10: 33 / 29 us. Each row is computed alone; the split (num_threads() parts) only
// moves where a block's last few elements go through the scalar exp instead of the
// vectorised one (float64: within 1 ulp of each other).
constexpr std::int64_t kSplitExp = 16384;   // softmax, log_softmax, the cross-entropy
constexpr std::int64_t kSplitCheap = 65536;  // the cross-entropy's gradient
template <class F>
void for_row_blocks(std::int64_t rows, std::int64_t cols, std::int64_t min_values, F fn) {
    const int parts = num_threads();
    if (parts <= 1 || rows * cols < min_values || rows < 2 * parts) {
        fn(std::int64_t{0}, rows);
        return;
    }
    run_parts(parts, [&](int part) { fn(rows * part / parts, rows * (part + 1) / parts); });
}

// out[r] = fold of row r's entries in order (a plain loop's value, accumulated in A), over 8
// rows at a time so that their dependency chains overlap: a short row (a 10-class softmax) is
// otherwise one chain of dependent adds or compares.
template <class A, class T, class F>
void fold_rows(const T* p, std::int64_t rows, std::int64_t cols, A* out, F combine) {
    constexpr int G = 8;
    if (cols == 0) {  // no entries to fold (and none that use the result)
        std::fill_n(out, rows, A(0));
        return;
    }
    std::int64_t r = 0;
    for (; r + G <= rows; r += G) {
        A a[G];
        for (int k = 0; k < G; ++k) a[k] = static_cast<A>(p[(r + k) * cols]);
        for (std::int64_t j = 1; j < cols; ++j) {
            for (int k = 0; k < G; ++k) a[k] = combine(a[k], p[(r + k) * cols + j]);
        }
        std::copy(a, a + G, out + r);
    }
    for (; r < rows; ++r) {
        A a = static_cast<A>(p[r * cols]);
        for (std::int64_t j = 1; j < cols; ++j) a = combine(a, p[r * cols + j]);
        out[r] = a;
    }
}

// Per-thread scratch of n values (Slot tells apart buffers used at the same time).
template <class A, int Slot>
A* row_scratch(std::int64_t n) {
    thread_local std::vector<A> v;
    v.resize(static_cast<std::size_t>(n));
    return v.data();
}

// o[r, :] = p[r, :] - max(p[r, :]) for each row (the shift that keeps exp finite; a NaN first
// entry makes the row NaN).
template <class T>
void shift_by_row_max(const T* p, T* o, std::int64_t rows, std::int64_t cols) {
    T* m = row_scratch<T, 0>(rows);
    fold_rows(p, rows, cols, m, [](T a, T v) { return v > a ? v : a; });
    for (std::int64_t r = 0; r < rows; ++r) {
        for (std::int64_t j = 0; j < cols; ++j) o[r * cols + j] = p[r * cols + j] - m[r];
    }
}

// The rows of exp(x - max) made to sum to 1 as Theano's softmax does: each row's sum taken in
// double, then its entries multiplied by the double reciprocal. Returns the sums (rows values,
// valid until the next call on this thread).
template <class T>
const double* normalise_rows(T* o, std::int64_t rows, std::int64_t cols) {
    double* s = row_scratch<double, 1>(rows);
    fold_rows(o, rows, cols, s, [](double a, T v) { return a + static_cast<double>(v); });
    for (std::int64_t r = 0; r < rows; ++r) {
        const double inv = 1.0 / s[r];
        for (std::int64_t j = 0; j < cols; ++j) o[r * cols + j] = static_cast<T>(o[r * cols + j] * inv);
    }
    return s;
}
}  // namespace

std::vector<TensorType> Softmax::make_types(const std::vector<Variable>& inputs) const {
    return row_op_types("Softmax", inputs);
}

std::optional<std::vector<Shape>> Softmax::infer_shape(const std::vector<Shape>& in) const {
    return std::vector<Shape>{in[0]};
}

void Softmax::perform(const Node&, std::span<const Tensor* const> in, std::span<Tensor* const> out) const {
    const Tensor x = in[0]->contiguous();
    out[0]->ensure(x.dtype(), x.shape());
    const std::int64_t cols = x.ndim() == 0 ? 1 : x.dim(x.ndim() - 1);
    const std::int64_t rows = cols ? x.size() / cols : 0;
    dispatch(x.dtype(), [&]<class T>() {
        if constexpr (std::is_floating_point_v<T>) {
            for_row_blocks(rows, cols, kSplitExp, [&, p = x.data<T>(), o = out[0]->data<T>()](std::int64_t r0, std::int64_t r1) {
                shift_by_row_max(p + r0 * cols, o + r0 * cols, r1 - r0, cols);
                vecmath::exp_into(o + r0 * cols, o + r0 * cols, (r1 - r0) * cols);  // one vectorised pass
                normalise_rows(o + r0 * cols, r1 - r0, cols);
            });
        }
    });
}

std::vector<Variable> Softmax::pullback(const Node& node, const std::vector<Variable>& g) const {
    // d softmax: sm * (g - sum(g * sm, last axis, keepdims)).
    Variable sm = node.output(0);
    int last = sm.ndim() - 1;
    return {mul(sm, sub(g[0], sum(mul(g[0], sm), last, true)))};
}

Variable softmax(const Variable& x) { return apply1(std::make_shared<Softmax>(), {x}); }

std::vector<TensorType> LogSoftmax::make_types(const std::vector<Variable>& inputs) const {
    return row_op_types("LogSoftmax", inputs);
}

std::optional<std::vector<Shape>> LogSoftmax::infer_shape(const std::vector<Shape>& in) const {
    return std::vector<Shape>{in[0]};
}

void LogSoftmax::perform(const Node&, std::span<const Tensor* const> in, std::span<Tensor* const> out) const {
    const Tensor x = in[0]->contiguous();
    out[0]->ensure(x.dtype(), x.shape());
    const std::int64_t cols = x.dim(x.ndim() - 1);
    const std::int64_t rows = cols ? x.size() / cols : 0;
    dispatch(x.dtype(), [&]<class T>() {
        if constexpr (std::is_floating_point_v<T>) {
            for_row_blocks(rows, cols, kSplitExp, [&, p = x.data<T>(), o = out[0]->data<T>()](std::int64_t r0, std::int64_t r1) {
                const std::int64_t n = (r1 - r0) * cols;
                shift_by_row_max(p + r0 * cols, o + r0 * cols, r1 - r0, cols);
                T* e = row_scratch<T, 2>(n);
                vecmath::exp_into(e, o + r0 * cols, n);
                T* m = row_scratch<T, 0>(r1 - r0);
                fold_rows(e, r1 - r0, cols, m, [](T a, T v) { return a + v; });
                for (std::int64_t r = r0; r < r1; ++r) {
                    T* orow = o + r * cols;
                    const T log_s = std::log(m[r - r0]);
                    for (std::int64_t j = 0; j < cols; ++j) orow[j] -= log_s;
                }
            });
        }
    });
}

std::vector<Variable> LogSoftmax::pullback(const Node& node, const std::vector<Variable>& g) const {
    // d log_softmax: g - softmax(x) * sum(g, last axis, keepdims), softmax(x) = exp(output).
    Variable ls = node.output(0);
    int last = ls.ndim() - 1;
    return {sub(g[0], mul(exp(ls), sum(g[0], last, true)))};
}

Variable log_softmax(const Variable& x) { return apply1(std::make_shared<LogSoftmax>(), {x}); }

namespace {
// The labels of y as row offsets in [0, cols): negative ones count from the end of the row.
std::vector<std::int64_t> read_labels(const char* op, const Tensor& y, std::int64_t cols) {
    const std::int64_t n = y.size();
    std::vector<std::int64_t> lab(static_cast<std::size_t>(n));
    dispatch(y.dtype(), [&]<class I>() {
        if constexpr (std::is_integral_v<I> && !std::is_same_v<I, bool>) {
            const I* p = y.data<I>();
            const std::int64_t st = y.ndim() ? y.strides()[0] : 0;
            for (std::int64_t i = 0; i < n; ++i) {
                const auto v = static_cast<std::int64_t>(p[i * st]);
                const std::int64_t j = v < 0 ? v + cols : v;
                if (j < 0 || j >= cols) {
                    throw UsageError(fmt::format("{}: label {} (at position {} of input 1) is out of bounds for rows "
                                                 "of {} classes", op, v, i, cols));
                }
                lab[static_cast<std::size_t>(i)] = j;
            }
        }
    });
    return lab;
}

void check_label_type(const char* op, const Variable& y, int input) {
    if (y.ndim() != 1 || !is_integer(y.dtype())) {
        throw UsageError(fmt::format("{}: input {} (the labels) must be an integer vector, got {}", op, input,
                                     y.type().str()));
    }
}
}  // namespace

std::string CrossentropySoftmax1Hot::name() const {
    const std::string base = with_bias_ ? "CrossentropySoftmax1HotWithBias" : "CrossentropySoftmax1Hot";
    return rows_must_match_ ? base : base + "{leading_rows}";
}

std::vector<TensorType> CrossentropySoftmax1Hot::make_types(const std::vector<Variable>& inputs) const {
    const std::string op = with_bias_ ? "CrossentropySoftmax1HotWithBias" : "CrossentropySoftmax1Hot";
    const std::size_t want = with_bias_ ? 3 : 2;
    if (inputs.size() != want) {
        throw UsageError(fmt::format("{}: takes {} inputs ({}), got {}", op, want, with_bias_ ? "x, y, b" : "x, y",
                                     inputs.size()));
    }
    const Variable& x = inputs[0];
    if (x.ndim() != 2 || !is_float(x.dtype())) {
        throw UsageError(fmt::format("{}: input 0 (the logits) must be a float matrix, got {}", op, x.type().str()));
    }
    check_label_type(op.c_str(), inputs[1], 1);
    if (with_bias_ && (inputs[2].ndim() != 1 || inputs[2].dtype() != x.dtype())) {
        throw UsageError(fmt::format("{}: input 2 (the bias) must be a vector of the logits' dtype {}, got {}", op,
                                     dtype_name(x.dtype()), inputs[2].type().str()));
    }
    return {TensorType{x.dtype(), {inputs[1].broadcastable()[0]}}, x.type()};
}

void CrossentropySoftmax1Hot::perform(const Node&, std::span<const Tensor* const> in,
                                      std::span<Tensor* const> out) const {
    const std::string op = with_bias_ ? "CrossentropySoftmax1HotWithBias" : "CrossentropySoftmax1Hot";
    const Tensor x = in[0]->contiguous();
    const std::int64_t rows = x.dim(0), cols = x.dim(1);
    const std::int64_t n = in[1]->size();
    if (n > rows || (rows_must_match_ && n != rows)) {
        throw UsageError(fmt::format("{}: {} labels for a matrix of {} rows (input 0 has shape ({}, {}), input 1 ({}))",
                                     op, n, rows, rows, cols, n));
    }
    Tensor b;
    if (with_bias_) {
        b = in[2]->contiguous();
        if (b.size() != cols) {
            throw UsageError(fmt::format("{}: the bias (input 2) has {} entries for logits of shape ({}, {})", op,
                                         b.size(), rows, cols));
        }
    }
    const std::vector<std::int64_t> lab = read_labels(op.c_str(), *in[1], cols);
    out[0]->ensure(x.dtype(), {n});
    out[1]->ensure(x.dtype(), x.shape());
    dispatch(x.dtype(), [&]<class T>() {
        if constexpr (std::is_floating_point_v<T>) {
            T* nll = out[0]->data<T>();
            T* o = out[1]->data<T>();
            const T* bias = with_bias_ ? b.data<T>() : nullptr;
            // The bias repeated over k rows (k cols >= 64 values): the biased logits of k rows
            // at a time are one vectorisable add, where a row of a softmax layer is short (10).
            const std::int64_t k = cols ? std::max<std::int64_t>(1, (64 + cols - 1) / cols) : 1;
            // The calling thread's buffer; the parts (on any thread) read it through rep.
            thread_local std::vector<T> tile;
            if (bias) {
                tile.resize(static_cast<std::size_t>(k * cols));
                for (std::int64_t i = 0; i < k * cols; ++i) tile[static_cast<std::size_t>(i)] = bias[i % cols];
            }
            const T* const rep = tile.data();
            for_row_blocks(rows, cols, kSplitExp, [&, p = x.data<T>()](std::int64_t r0, std::int64_t r1) {
                if (bias) {
                    // The biased logits, into the softmax's rows (then shifted there in place).
                    for (std::int64_t r = r0; r < r1; r += k) {
                        const std::int64_t len = (std::min(r1, r + k) - r) * cols;
                        const T* src = p + r * cols;
                        T* dst = o + r * cols;
                        for (std::int64_t i = 0; i < len; ++i) dst[i] = src[i] + rep[i];
                    }
                }
                shift_by_row_max(bias ? o + r0 * cols : p + r0 * cols, o + r0 * cols, r1 - r0, cols);
                for (std::int64_t r = r0; r < std::min(r1, n); ++r) nll[r] = -o[r * cols + lab[static_cast<std::size_t>(r)]];
                vecmath::exp_into(o + r0 * cols, o + r0 * cols, (r1 - r0) * cols);
                const double* sums = normalise_rows(o + r0 * cols, r1 - r0, cols);
                for (std::int64_t r = r0; r < std::min(r1, n); ++r) {
                    nll[r] = static_cast<T>(static_cast<double>(nll[r]) + std::log(sums[r - r0]));
                }
            });
        }
    });
}

std::vector<Variable> CrossentropySoftmax1Hot::pullback(const Node& node, const std::vector<Variable>& g) const {
    const Variable& y = node.inputs[1];
    const Variable sm = node.output(1);
    Variable dx;
    if (g[0].defined()) dx = crossentropy_softmax_1hot_dx(g[0], sm, y);
    if (g[1].defined()) {
        // Softmax's pullback: sm * (g - sum(g * sm, last axis, keepdims)).
        Variable dsm = mul(sm, sub(g[1], sum(mul(g[1], sm), 1, true)));
        dx = dx.defined() ? add(dx, dsm) : dsm;
    }
    if (!with_bias_) return {dx, Variable()};
    // The bias is added to every row: its gradient is the column sums of the logits'.
    return {dx, Variable(), dx.defined() ? sum(dx, 0) : Variable()};
}

NllAndSoftmax crossentropy_softmax_1hot(const Variable& x, const Variable& y, bool rows_must_match,
                                        std::source_location where) {
    auto outs = apply(std::make_shared<CrossentropySoftmax1Hot>(rows_must_match), {x, y}, where);
    return {outs[0], outs[1]};
}

NllAndSoftmax crossentropy_softmax_1hot_with_bias(const Variable& x, const Variable& b, const Variable& y,
                                                  bool rows_must_match, std::source_location where) {
    auto outs = apply(std::make_shared<CrossentropySoftmax1Hot>(rows_must_match, true), {x, y, b}, where);
    return {outs[0], outs[1]};
}

std::vector<TensorType> CrossentropySoftmax1HotDx::make_types(const std::vector<Variable>& inputs) const {
    const char* op = "CrossentropySoftmax1HotDx";
    if (inputs.size() != 3) {
        throw UsageError(fmt::format("{}: takes 3 inputs (dnll, sm, y), got {}", op, inputs.size()));
    }
    const Variable& sm = inputs[1];
    if (sm.ndim() != 2 || !is_float(sm.dtype())) {
        throw UsageError(fmt::format("{}: input 1 (the softmax) must be a float matrix, got {}", op, sm.type().str()));
    }
    if (inputs[0].ndim() != 1 || inputs[0].dtype() != sm.dtype()) {
        throw UsageError(fmt::format("{}: input 0 (the nll's gradient) must be a vector of the softmax's dtype {}, got {}",
                                     op, dtype_name(sm.dtype()), inputs[0].type().str()));
    }
    check_label_type(op, inputs[2], 2);
    return {TensorType{sm.dtype(), {false, false}}};
}

void CrossentropySoftmax1HotDx::perform(const Node&, std::span<const Tensor* const> in,
                                        std::span<Tensor* const> out) const {
    const char* op = "CrossentropySoftmax1HotDx";
    const Tensor sm = in[1]->contiguous();
    const std::int64_t rows = sm.dim(0), cols = sm.dim(1);
    const std::int64_t n = in[2]->size();
    const Tensor& dnll = *in[0];
    if (n > rows || (dnll.size() != n && dnll.size() != 1)) {
        throw UsageError(fmt::format("{}: shapes do not fit: nll gradient ({}), softmax ({}, {}), labels ({})", op,
                                     dnll.size(), rows, cols, n));
    }
    const std::vector<std::int64_t> lab = read_labels(op, *in[2], cols);
    out[0]->ensure(sm.dtype(), sm.shape());
    dispatch(sm.dtype(), [&]<class T>() {
        if constexpr (std::is_floating_point_v<T>) {
            const T* s = sm.data<T>();
            const T* d = dnll.data<T>();
            const std::int64_t dst = dnll.size() == 1 ? 0 : dnll.strides()[0];
            T* o = out[0]->data<T>();
            for_row_blocks(rows, cols, kSplitCheap, [&](std::int64_t r0, std::int64_t r1) {
                for (std::int64_t r = r0; r < std::min(r1, n); ++r) {
                    const T dr = d[r * dst];
                    for (std::int64_t j = 0; j < cols; ++j) o[r * cols + j] = s[r * cols + j] * dr;
                    o[r * cols + lab[static_cast<std::size_t>(r)]] -= dr;
                }
                if (r1 > n) std::fill(o + std::max(r0, n) * cols, o + r1 * cols, T(0));
            });
        }
    });
}

std::vector<Variable> CrossentropySoftmax1HotDx::pullback(const Node& node, const std::vector<Variable>& g) const {
    // dx = dnll[i] * (sm - onehot(y)) on the first len(y) rows: linear in dnll and in sm.
    const Variable& dnll = node.inputs[0];
    const Variable& sm = node.inputs[1];
    const Variable& y = node.inputs[2];
    const Variable rows = arange(y.shape(0));
    const Variable h = advanced_subtensor(g[0], {rows});  // the gradient's first len(y) rows
    Variable d_dnll = sub(sum(mul(h, advanced_subtensor(sm, {rows})), 1), advanced_subtensor(g[0], {rows, y}));
    Variable d_sm = advanced_inc_subtensor(zeros_like(sm), mul(h, dimshuffle(dnll, {0, -1})), {rows});
    return {d_dnll, d_sm, Variable()};
}

Variable crossentropy_softmax_1hot_dx(const Variable& dnll, const Variable& sm, const Variable& y,
                                      std::source_location where) {
    return apply1(std::make_shared<CrossentropySoftmax1HotDx>(), {dnll, sm, y}, where);
}

Variable relu(const Variable& x) { return maximum(x, 0.0); }

Variable binary_crossentropy(const Variable& output, const Variable& target) {
    return neg(add(mul(target, log(output)), mul(sub(1.0, target), log(sub(1.0, output)))));
}

Variable categorical_crossentropy(const Variable& p, const Variable& y) {
    if (p.ndim() != 2 || y.ndim() != 1) {
        throw UsageError(fmt::format("categorical_crossentropy: expected a matrix of probabilities and a vector of "
                                     "labels, got {} and {}", p.type().str(), y.type().str()));
    }
    return neg(log(advanced_subtensor(p, {arange(p.shape(0)), y})));
}

}  // namespace theanine
