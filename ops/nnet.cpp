#include "ops/nnet.hpp"

#include <cmath>
#include <vector>

#include <fmt/format.h>

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
// o[r, :] = p[r, :] - max(p[r, :]) for each row (the shift that keeps exp finite; a NaN first
// entry makes the row NaN).
template <class T>
void shift_by_row_max(const T* p, T* o, std::int64_t rows, std::int64_t cols) {
    for (std::int64_t r = 0; r < rows; ++r) {
        const T* row = p + r * cols;
        T m = row[0];
        for (std::int64_t j = 1; j < cols; ++j) m = row[j] > m ? row[j] : m;
        for (std::int64_t j = 0; j < cols; ++j) o[r * cols + j] = row[j] - m;
    }
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
            const T* p = x.data<T>();
            T* o = out[0]->data<T>();
            shift_by_row_max(p, o, rows, cols);
            vecmath::exp_into(o, o, rows * cols);  // one vectorised pass over every row
            for (std::int64_t r = 0; r < rows; ++r) {
                T* orow = o + r * cols;
                T s = 0;
                for (std::int64_t j = 0; j < cols; ++j) s += orow[j];
                for (std::int64_t j = 0; j < cols; ++j) orow[j] /= s;
            }
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
            const T* p = x.data<T>();
            T* o = out[0]->data<T>();
            shift_by_row_max(p, o, rows, cols);
            thread_local std::vector<T> e;
            e.resize(static_cast<std::size_t>(rows * cols));
            vecmath::exp_into(e.data(), o, rows * cols);
            for (std::int64_t r = 0; r < rows; ++r) {
                T* orow = o + r * cols;
                const T* erow = e.data() + r * cols;
                T s = 0;
                for (std::int64_t j = 0; j < cols; ++j) s += erow[j];
                const T log_s = std::log(s);
                for (std::int64_t j = 0; j < cols; ++j) orow[j] -= log_s;
            }
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
