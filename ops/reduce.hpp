/// \file
/// Reductions: sum and max over a set of axes, argmax over one axis or all; mean is a
/// composite (sum divided by the number of reduced elements).
#pragma once

#include "graph/graph.hpp"

namespace theanine {

enum class ReduceKind { sum, max };

/// Reduces the listed axes (sorted, unique). Sum of integers gives int64; floats keep their
/// dtype and accumulate in double.
class Reduce final : public Op {
public:
    Reduce(ReduceKind kind, std::vector<int> axes);
    ReduceKind kind() const { return kind_; }
    const std::vector<int>& axes() const { return axes_; }

    std::string name() const override;
    std::vector<TensorType> make_types(const std::vector<Variable>& inputs) const override;
    void perform(const Node& node, std::span<const Tensor* const> in, std::span<Tensor* const> out) const override;
    std::optional<std::vector<Shape>> infer_shape(const std::vector<Shape>& in) const override;
    std::vector<Variable> pullback(const Node& node, const std::vector<Variable>& out_grads) const override;
    bool props_equal(const Op& other) const override;
    std::size_t props_hash() const override;

private:
    ReduceKind kind_;
    std::vector<int> axes_;
};

/// Index of the maximum along one axis (all axes when flattened), as int64.
class Argmax final : public Op {
public:
    explicit Argmax(std::optional<int> axis) : axis_(axis) {}
    std::optional<int> axis() const { return axis_; }
    std::string name() const override;
    std::vector<TensorType> make_types(const std::vector<Variable>& inputs) const override;
    void perform(const Node& node, std::span<const Tensor* const> in, std::span<Tensor* const> out) const override;
    std::vector<Variable> pullback(const Node& node, const std::vector<Variable>& out_grads) const override;
    bool props_equal(const Op& o) const override { return static_cast<const Argmax&>(o).axis_ == axis_; }
    std::size_t props_hash() const override { return static_cast<std::size_t>(axis_.value_or(-1) + 2); }

private:
    std::optional<int> axis_;
};

/// Builders. axis counts from the end when negative; no axis reduces everything.
Variable sum(const Variable& x, std::optional<int> axis = std::nullopt, bool keepdims = false);
Variable sum_axes(const Variable& x, std::vector<int> axes, bool keepdims = false);
Variable mean(const Variable& x, std::optional<int> axis = std::nullopt, bool keepdims = false);
Variable max(const Variable& x, std::optional<int> axis = std::nullopt, bool keepdims = false);
Variable max_axes(const Variable& x, std::vector<int> axes, bool keepdims = false);
Variable argmax(const Variable& x, std::optional<int> axis = std::nullopt);

}  // namespace theanine
