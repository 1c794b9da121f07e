/// \file
/// Shape ops: dimshuffle/transpose, shape, reshape/flatten, basic and advanced indexing, arange.
///
/// Basic indexing (Subtensor) takes, per leading axis, an integer index or a slice whose
/// bounds are constants or symbolic integer scalars, with Python's semantics (negative
/// indices count from the end, bounds clamp). Its output is a view of the input. Advanced
/// indexing takes one integer vector per leading axis (m[arange(n), y]) and gathers.
#pragma once

#include <array>
#include <initializer_list>
#include <optional>

#include "graph/graph.hpp"

namespace theanine {

class DimShuffle final : public Op {
public:
    /// order[i] is the input axis that becomes output axis i, or -1 for a new size-1 axis.
    /// Input axes left out must be broadcastable.
    DimShuffle(std::vector<bool> input_broadcastable, std::vector<int> order);
    const std::vector<int>& order() const { return order_; }
    const std::vector<bool>& input_broadcastable() const { return input_bc_; }
    bool is_transpose() const;  ///< a pure reversal of a matrix's two axes

    std::string name() const override;
    std::vector<TensorType> make_types(const std::vector<Variable>& inputs) const override;
    void perform(const Node& node, std::span<const Tensor* const> in, std::span<Tensor* const> out) const override;
    std::optional<std::vector<Shape>> infer_shape(const std::vector<Shape>& in) const override;
    std::vector<Variable> pullback(const Node& node, const std::vector<Variable>& out_grads) const override;
    std::vector<int> view_map() const override { return {0}; }
    bool props_equal(const Op& other) const override;
    std::size_t props_hash() const override;

private:
    std::vector<bool> input_bc_;
    std::vector<int> order_;
};

/// The shape of a tensor as an int64 vector.
class ShapeOp final : public Op {
public:
    std::string name() const override { return "Shape"; }
    std::vector<TensorType> make_types(const std::vector<Variable>& inputs) const override;
    void perform(const Node& node, std::span<const Tensor* const> in, std::span<Tensor* const> out) const override;
    std::vector<Variable> pullback(const Node& node, const std::vector<Variable>& out_grads) const override;
    bool props_equal(const Op&) const override { return true; }
    std::size_t props_hash() const override { return 0; }
};

/// One dimension of the shape, as an int64 scalar (Theano's Shape_i).
class ShapeI final : public Op {
public:
    explicit ShapeI(int axis) : axis_(axis) {}
    int axis() const { return axis_; }
    std::string name() const override;
    std::vector<TensorType> make_types(const std::vector<Variable>& inputs) const override;
    void perform(const Node& node, std::span<const Tensor* const> in, std::span<Tensor* const> out) const override;
    std::vector<Variable> pullback(const Node& node, const std::vector<Variable>& out_grads) const override;
    bool props_equal(const Op& o) const override { return static_cast<const ShapeI&>(o).axis_ == axis_; }
    std::size_t props_hash() const override { return static_cast<std::size_t>(axis_); }

private:
    int axis_;
};

/// Integer scalars -> int64 vector.
class MakeVector final : public Op {
public:
    std::string name() const override { return "MakeVector"; }
    std::vector<TensorType> make_types(const std::vector<Variable>& inputs) const override;
    void perform(const Node& node, std::span<const Tensor* const> in, std::span<Tensor* const> out) const override;
    std::vector<Variable> pullback(const Node& node, const std::vector<Variable>& out_grads) const override;
    bool props_equal(const Op&) const override { return true; }
    std::size_t props_hash() const override { return 1; }
};

/// Join{axis}(x0, x1, ...): numpy's concatenate along a static axis. The inputs share dtype
/// and rank, and every size but the axis's; a gradient is the matching slice of the output's.
class Join final : public Op {
public:
    explicit Join(int axis) : axis_(axis) {}
    int axis() const { return axis_; }
    std::string name() const override;
    std::vector<TensorType> make_types(const std::vector<Variable>& inputs) const override;
    void perform(const Node& node, std::span<const Tensor* const> in, std::span<Tensor* const> out) const override;
    std::optional<std::vector<Shape>> infer_shape(const std::vector<Shape>& in) const override;
    std::vector<Variable> pullback(const Node& node, const std::vector<Variable>& out_grads) const override;
    bool props_equal(const Op& o) const override { return static_cast<const Join&>(o).axis_ == axis_; }
    std::size_t props_hash() const override { return static_cast<std::size_t>(axis_) + 101; }

private:
    int axis_;
};

/// reshape(x, shape): shape is an int64 vector of length ndim; one entry may be -1.
class Reshape final : public Op {
public:
    explicit Reshape(int ndim) : ndim_(ndim) {}
    std::string name() const override;
    std::vector<TensorType> make_types(const std::vector<Variable>& inputs) const override;
    void perform(const Node& node, std::span<const Tensor* const> in, std::span<Tensor* const> out) const override;
    std::vector<Variable> pullback(const Node& node, const std::vector<Variable>& out_grads) const override;
    std::vector<int> view_map() const override { return {0}; }
    bool props_equal(const Op& o) const override { return static_cast<const Reshape&>(o).ndim_ == ndim_; }
    std::size_t props_hash() const override { return static_cast<std::size_t>(ndim_); }

private:
    int ndim_;
};

/// A slice bound or index: absent, a constant, or a symbolic integer scalar.
struct Bound {
    std::optional<std::int64_t> value;
    Variable var;
    Bound() = default;
    Bound(std::nullopt_t) {}
    Bound(int v) : value(v) {}
    Bound(long v) : value(v) {}
    Bound(long long v) : value(static_cast<std::int64_t>(v)) {}
    Bound(const Variable& v) : var(v) {}
    bool none() const { return !value && !var.defined(); }
};

/// One component of an index expression: an integer (or symbolic scalar), a slice, or an
/// integer array of any rank (advanced indexing, numpy's rules: arrays and the integers next
/// to them broadcast together, mixed with slices in any order; subtensor, set_subtensor and
/// inc_subtensor take any mix, and a written value broadcasts to the indexed region).
struct Idx {
    enum class Kind { index, slice, vector };
    Kind kind = Kind::slice;
    std::array<Bound, 3> b;  ///< index: b[0]; slice: start, stop, step
    Variable vec;

    Idx(int i) : kind(Kind::index) { b[0] = Bound(i); }
    Idx(long i) : kind(Kind::index) { b[0] = Bound(i); }
    Idx(const Variable& v);  ///< scalar -> index; array (rank >= 1) -> advanced index
    static Idx all() { return slice(std::nullopt, std::nullopt, std::nullopt); }
    static Idx slice(Bound start, Bound stop, Bound step = std::nullopt);

private:
    Idx() = default;
};
Idx slice(Bound start, Bound stop, Bound step = std::nullopt);

/// Static description of a basic index: per axis, index or slice, each bound none,
/// constant or taken from the op's next symbolic input.
struct IndexSpec {
    struct BoundSpec {
        enum class Kind { none, constant, input } kind = Kind::none;
        std::int64_t value = 0;
        bool operator==(const BoundSpec&) const = default;
    };
    struct Entry {
        bool is_index = false;
        std::array<BoundSpec, 3> b;
        bool operator==(const Entry&) const = default;
    };
    std::vector<Entry> entries;
    bool operator==(const IndexSpec&) const = default;
    std::string str() const;
    int n_inputs() const;  ///< symbolic bounds
};

class Subtensor final : public Op {
public:
    explicit Subtensor(IndexSpec spec) : spec_(std::move(spec)) {}
    const IndexSpec& spec() const { return spec_; }
    std::string name() const override;
    std::vector<TensorType> make_types(const std::vector<Variable>& inputs) const override;
    void perform(const Node& node, std::span<const Tensor* const> in, std::span<Tensor* const> out) const override;
    std::vector<Variable> pullback(const Node& node, const std::vector<Variable>& out_grads) const override;
    std::vector<int> view_map() const override { return {0}; }
    bool props_equal(const Op& o) const override { return static_cast<const Subtensor&>(o).spec_ == spec_; }
    std::size_t props_hash() const override;

private:
    IndexSpec spec_;
};

/// x with x[spec] incremented by (or set to) y. Inputs: x, y, symbolic bounds.
class IncSubtensor final : public Op {
public:
    IncSubtensor(IndexSpec spec, bool set) : spec_(std::move(spec)), set_(set) {}
    std::string name() const override;
    std::vector<TensorType> make_types(const std::vector<Variable>& inputs) const override;
    void perform(const Node& node, std::span<const Tensor* const> in, std::span<Tensor* const> out) const override;
    std::vector<Variable> pullback(const Node& node, const std::vector<Variable>& out_grads) const override;
    bool props_equal(const Op& o) const override;
    std::size_t props_hash() const override;

private:
    IndexSpec spec_;
    bool set_;
};

/// x[i0, i1, ...] with integer vectors of equal length: output (n, x.shape[k:]...).
class AdvancedSubtensor final : public Op {
public:
    std::string name() const override { return "AdvancedSubtensor"; }
    std::vector<TensorType> make_types(const std::vector<Variable>& inputs) const override;
    void perform(const Node& node, std::span<const Tensor* const> in, std::span<Tensor* const> out) const override;
    std::vector<Variable> pullback(const Node& node, const std::vector<Variable>& out_grads) const override;
    bool props_equal(const Op&) const override { return true; }
    std::size_t props_hash() const override { return 7; }
};

/// x with x[i0, i1, ...] incremented by (duplicates accumulate) or set to y.
class AdvancedIncSubtensor final : public Op {
public:
    explicit AdvancedIncSubtensor(bool set) : set_(set) {}
    bool set() const { return set_; }
    std::string name() const override;
    std::vector<TensorType> make_types(const std::vector<Variable>& inputs) const override;
    void perform(const Node& node, std::span<const Tensor* const> in, std::span<Tensor* const> out) const override;
    std::vector<Variable> pullback(const Node& node, const std::vector<Variable>& out_grads) const override;
    bool props_equal(const Op& o) const override { return static_cast<const AdvancedIncSubtensor&>(o).set_ == set_; }
    std::size_t props_hash() const override { return set_ ? 11 : 13; }

private:
    bool set_;
};

/// arange(start, stop, step) of int64 scalars.
class ARange final : public Op {
public:
    std::string name() const override { return "ARange"; }
    std::vector<TensorType> make_types(const std::vector<Variable>& inputs) const override;
    void perform(const Node& node, std::span<const Tensor* const> in, std::span<Tensor* const> out) const override;
    std::vector<Variable> pullback(const Node& node, const std::vector<Variable>& out_grads) const override;
    bool props_equal(const Op&) const override { return true; }
    std::size_t props_hash() const override { return 17; }
};

/// For a shape vector of n entries (a constant, or a MakeVector of scalars): which entries are
/// known to be 1 when the graph is built (a constant 1, or the size of an axis that is
/// broadcastable). Reshape and the random ops make those axes broadcastable, as Theano does.
std::vector<bool> known_ones(const Variable& shape, int n);

/// Builders.
Variable dimshuffle(const Variable& x, const std::vector<int>& order);
Variable transpose(const Variable& x);
Variable make_vector(const std::vector<Variable>& scalars);
/// numpy.concatenate(xs, axis); axis counts from the end when negative. Dtypes are upcast.
Variable concatenate(const std::vector<Variable>& xs, int axis = 0,
                     std::source_location where = std::source_location::current());
Variable reshape(const Variable& x, const std::vector<Variable>& shape);
Variable reshape(const Variable& x, const std::vector<std::int64_t>& shape);
Variable subtensor(const Variable& x, const std::vector<Idx>& index,
                   std::source_location where = std::source_location::current());
Variable set_subtensor(const Variable& x, const Variable& y, const std::vector<Idx>& index,
                       std::source_location where = std::source_location::current());
Variable inc_subtensor(const Variable& x, const Variable& y, const std::vector<Idx>& index,
                       std::source_location where = std::source_location::current());
Variable advanced_subtensor(const Variable& x, const std::vector<Variable>& indices,
                            std::source_location where = std::source_location::current());
Variable advanced_inc_subtensor(const Variable& x, const Variable& y, const std::vector<Variable>& indices,
                                bool set = false,
                                std::source_location where = std::source_location::current());
Variable arange(const Bound& start_or_stop, const Bound& stop = std::nullopt, const Bound& step = std::nullopt);

/// x[i] / x[{i, j}] with Python semantics; integer arrays give advanced indexing (numpy's rules).
Variable index(const Variable& x, std::initializer_list<Idx> idx,
               std::source_location where = std::source_location::current());

}  // namespace theanine
