/// \file
/// Neural-network ops. Softmax is a primitive (its kernel subtracts the row maximum, so it
/// never overflows); the rest are composites built from primitives and get their gradients
/// and rewrites for free.
#pragma once

#include "graph/graph.hpp"

namespace theanine {

/// Row-wise softmax of a matrix (a vector is treated as one row).
class Softmax final : public Op {
public:
    std::string name() const override { return "Softmax"; }
    std::vector<TensorType> make_types(const std::vector<Variable>& inputs) const override;
    void perform(const Node& node, std::span<const Tensor* const> in, std::span<Tensor* const> out) const override;
    std::optional<std::vector<Shape>> infer_shape(const std::vector<Shape>& in) const override;
    std::vector<Variable> pullback(const Node& node, const std::vector<Variable>& out_grads) const override;
    bool props_equal(const Op&) const override { return true; }
    std::size_t props_hash() const override { return 0; }
};

Variable softmax(const Variable& x);

/// Row-wise log(softmax(x)) computed as x - max - log(sum(exp(x - max))): finite for any
/// finite input (log(softmax(x)) underflows to log(0) = -inf once a logit trails the row's
/// maximum by about 745). Its gradient, g - softmax(x) * sum(g), stays finite too. The
/// stabilize rewrite local_log_softmax puts it in place of log(softmax(x)).
class LogSoftmax final : public Op {
public:
    std::string name() const override { return "LogSoftmax"; }
    std::vector<TensorType> make_types(const std::vector<Variable>& inputs) const override;
    void perform(const Node& node, std::span<const Tensor* const> in, std::span<Tensor* const> out) const override;
    std::optional<std::vector<Shape>> infer_shape(const std::vector<Shape>& in) const override;
    std::vector<Variable> pullback(const Node& node, const std::vector<Variable>& out_grads) const override;
    bool props_equal(const Op&) const override { return true; }
    std::size_t props_hash() const override { return 1; }
};

Variable log_softmax(const Variable& x);
/// max(x, 0).
Variable relu(const Variable& x);
/// -(target * log(output) + (1 - target) * log(1 - output)), elementwise.
Variable binary_crossentropy(const Variable& output, const Variable& target);
/// -log(p[arange(n), y]) for a matrix of row probabilities p and integer labels y.
Variable categorical_crossentropy(const Variable& p, const Variable& y);

}  // namespace theanine
