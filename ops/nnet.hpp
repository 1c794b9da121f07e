/// \file
/// Neural-network ops. Softmax is a primitive (its kernel subtracts the row maximum, so it
/// never overflows); the rest are composites built from primitives and get their gradients
/// and rewrites for free.
#pragma once

#include <source_location>

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

/// The negative log-likelihood of integer labels under a row-wise softmax, and the softmax,
/// in one pass (the crossentropy_softmax_1hot of Theano): for a float matrix x and an integer
/// vector y, nll[i] = log(sum_j exp(x[i, j] - m_i)) - (x[i, y[i]] - m_i), m_i the row's maximum,
/// for the first len(y) rows, and sm = softmax(x) for every row. Finite for any finite logits
/// (-log(softmax(x)[i, y[i]]) is inf once the label's logit trails the maximum by about 745).
/// Labels count from the end of a row when negative, as in indexing. With rows_must_match,
/// y must have one label per row (the form x.shape[0] indexes); otherwise it may be shorter.
/// The stabilize rewrites local_crossentropy_softmax_1hot and local_crossentropy_softmax_1hot_grad
/// put it and CrossentropySoftmax1HotDx in place of the indexing form of the negative
/// log-likelihood and of its gradient.
///
/// With a bias (Theano's crossentropy_softmax_argmax_1hot_with_bias, without the argmax
/// output): a third input b, a vector of the columns, and the logits are x + b (b added to
/// every row, in x's dtype, as the add it replaces); the specialize rewrite
/// local_crossentropy_softmax_1hot_with_bias moves a row bias add into the op, so the biased
/// logits are made a block of rows at a time inside the pass instead of in a pass of their own.
class CrossentropySoftmax1Hot final : public Op {
public:
    explicit CrossentropySoftmax1Hot(bool rows_must_match, bool with_bias = false)
        : rows_must_match_(rows_must_match), with_bias_(with_bias) {}
    bool rows_must_match() const { return rows_must_match_; }
    bool with_bias() const { return with_bias_; }
    std::string name() const override;
    std::vector<TensorType> make_types(const std::vector<Variable>& inputs) const override;
    void perform(const Node& node, std::span<const Tensor* const> in, std::span<Tensor* const> out) const override;
    std::vector<Variable> pullback(const Node& node, const std::vector<Variable>& out_grads) const override;
    bool props_equal(const Op& o) const override {
        const auto& c = static_cast<const CrossentropySoftmax1Hot&>(o);
        return c.rows_must_match_ == rows_must_match_ && c.with_bias_ == with_bias_;
    }
    std::size_t props_hash() const override { return (rows_must_match_ ? 3 : 2) + (with_bias_ ? 8 : 0); }

private:
    bool rows_must_match_;
    bool with_bias_;
};

/// The gradient of CrossentropySoftmax1Hot's nll with respect to x: dx[i, :] = dnll[i] *
/// (sm[i, :] - onehot(y[i])) for the first len(y) rows, zero below them. dnll has len(y)
/// entries or is a broadcastable vector of one.
class CrossentropySoftmax1HotDx final : public Op {
public:
    std::string name() const override { return "CrossentropySoftmax1HotDx"; }
    std::vector<TensorType> make_types(const std::vector<Variable>& inputs) const override;
    void perform(const Node& node, std::span<const Tensor* const> in, std::span<Tensor* const> out) const override;
    std::vector<Variable> pullback(const Node& node, const std::vector<Variable>& out_grads) const override;
    bool props_equal(const Op&) const override { return true; }
    std::size_t props_hash() const override { return 4; }
};

struct NllAndSoftmax {
    Variable nll;      ///< vector: -log(softmax(x)[i, y[i]])
    Variable softmax;  ///< matrix: softmax(x)
};
NllAndSoftmax crossentropy_softmax_1hot(const Variable& x, const Variable& y, bool rows_must_match = true,
                                        std::source_location where = std::source_location::current());
/// The same for the logits x + b, b a vector of x's columns (x's dtype).
NllAndSoftmax crossentropy_softmax_1hot_with_bias(const Variable& x, const Variable& b, const Variable& y,
                                                  bool rows_must_match = true,
                                                  std::source_location where = std::source_location::current());
Variable crossentropy_softmax_1hot_dx(const Variable& dnll, const Variable& sm, const Variable& y,
                                      std::source_location where = std::source_location::current());
/// max(x, 0).
Variable relu(const Variable& x);
/// -(target * log(output) + (1 - target) * log(1 - output)), elementwise.
Variable binary_crossentropy(const Variable& output, const Variable& target);
/// -log(p[arange(n), y]) for a matrix of row probabilities p and integer labels y.
Variable categorical_crossentropy(const Variable& p, const Variable& y);

}  // namespace theanine
