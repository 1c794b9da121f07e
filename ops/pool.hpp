/// \file
/// 2-d pooling over the last two axes, with Theano's semantics (theano.tensor.signal.pool.pool_2d).
///
/// Windows of ws[0] x ws[1] taps start every stride[0] rows / stride[1] columns of the input
/// padded with pad zeros on each side. Output size of an axis of v padded positions:
///   ignore_border: (v - ws) / stride + 1 (never below 0), the partial windows dropped;
///   otherwise: partial windows at the end are kept (pad must then be 0).
/// Modes: "max" and "sum" over the window's input positions (padding excluded),
/// "average_exc_pad" their mean, "average_inc_pad" the sum divided by the window's size
/// counting padding (a partial window at the border counts only the positions it covers).
///
/// Gradients: MaxPoolGrad gives each input that equals its window's maximum the window's
/// gradient (all of them when tied, as Theano does); AveragePoolGrad spreads it over the
/// window. Their gradients are MaxPoolGradGrad and Pool itself.
#pragma once

#include <array>
#include <optional>
#include <source_location>

#include "graph/graph.hpp"

namespace theanine {

enum class PoolMode { max, sum, average_inc_pad, average_exc_pad };

struct PoolArgs {
    bool ignore_border = false;
    std::optional<std::array<std::int64_t, 2>> stride{};  ///< default: ws
    std::array<std::int64_t, 2> pad{0, 0};
    std::string mode = "max";  // "max", "sum", "average_inc_pad", "average_exc_pad"
};

struct PoolParams {
    std::array<std::int64_t, 2> ws{2, 2};
    std::array<std::int64_t, 2> stride{2, 2};
    std::array<std::int64_t, 2> pad{0, 0};
    bool ignore_border = false;
    PoolMode mode = PoolMode::max;
    bool operator==(const PoolParams&) const = default;
    std::string str() const;
    std::size_t hash() const;
    /// Output size of one pooled axis of `in` input positions.
    std::int64_t out_size(int axis, std::int64_t in) const;
};

std::string pool_mode_name(PoolMode m);

class Pool final : public Op {
public:
    explicit Pool(PoolParams p) : p_(p) {}
    const PoolParams& params() const { return p_; }
    std::string name() const override;
    std::vector<TensorType> make_types(const std::vector<Variable>& inputs) const override;
    void perform(const Node& node, std::span<const Tensor* const> in, std::span<Tensor* const> out) const override;
    std::optional<std::vector<Shape>> infer_shape(const std::vector<Shape>& in) const override;
    std::vector<Variable> pullback(const Node& node, const std::vector<Variable>& out_grads) const override;
    bool props_equal(const Op& o) const override { return p_ == static_cast<const Pool&>(o).p_; }
    std::size_t props_hash() const override { return p_.hash(); }

private:
    PoolParams p_;
};

/// (x, pooled, gz) -> gx for mode max.
class MaxPoolGrad final : public Op {
public:
    explicit MaxPoolGrad(PoolParams p) : p_(p) {}
    std::string name() const override;
    std::vector<TensorType> make_types(const std::vector<Variable>& inputs) const override;
    void perform(const Node& node, std::span<const Tensor* const> in, std::span<Tensor* const> out) const override;
    std::optional<std::vector<Shape>> infer_shape(const std::vector<Shape>& in) const override {
        return std::vector<Shape>{in[0]};
    }
    std::vector<Variable> pullback(const Node& node, const std::vector<Variable>& out_grads) const override;
    bool props_equal(const Op& o) const override { return p_ == static_cast<const MaxPoolGrad&>(o).p_; }
    std::size_t props_hash() const override { return p_.hash() * 5u + 1u; }

private:
    PoolParams p_;
};

/// (x, gz) -> gx for modes sum and average (x gives the shape only).
class AveragePoolGrad final : public Op {
public:
    explicit AveragePoolGrad(PoolParams p) : p_(p) {}
    std::string name() const override;
    std::vector<TensorType> make_types(const std::vector<Variable>& inputs) const override;
    void perform(const Node& node, std::span<const Tensor* const> in, std::span<Tensor* const> out) const override;
    std::optional<std::vector<Shape>> infer_shape(const std::vector<Shape>& in) const override {
        return std::vector<Shape>{in[0]};
    }
    std::vector<Variable> pullback(const Node& node, const std::vector<Variable>& out_grads) const override;
    bool props_equal(const Op& o) const override { return p_ == static_cast<const AveragePoolGrad&>(o).p_; }
    std::size_t props_hash() const override { return p_.hash() * 5u + 2u; }

private:
    PoolParams p_;
};

/// (x, pooled, ggx) -> ggz: the gradient of MaxPoolGrad with respect to gz (each window
/// receives the sum of ggx over its inputs tied for the maximum).
class MaxPoolGradGrad final : public Op {
public:
    explicit MaxPoolGradGrad(PoolParams p) : p_(p) {}
    std::string name() const override;
    std::vector<TensorType> make_types(const std::vector<Variable>& inputs) const override;
    void perform(const Node& node, std::span<const Tensor* const> in, std::span<Tensor* const> out) const override;
    std::optional<std::vector<Shape>> infer_shape(const std::vector<Shape>& in) const override {
        return std::vector<Shape>{in[1]};
    }
    std::vector<Variable> pullback(const Node& node, const std::vector<Variable>& out_grads) const override;
    bool props_equal(const Op& o) const override { return p_ == static_cast<const MaxPoolGradGrad&>(o).p_; }
    std::size_t props_hash() const override { return p_.hash() * 5u + 3u; }

private:
    PoolParams p_;
};

/// theano.tensor.signal.pool.pool_2d on the last two axes of a tensor of 2 or more dims.
Variable pool_2d(const Variable& input, std::array<std::int64_t, 2> ws, const PoolArgs& args = {},
                 std::source_location where = std::source_location::current());

}  // namespace theanine
