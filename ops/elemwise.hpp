/// \file
/// Elementwise ops with numpy broadcasting, and the arithmetic operators on Variables.
///
/// One op class, Elemwise, is parameterised by a scalar op (add, exp, sigmoid, ...). Every
/// scalar op has in one table entry: its name, arity, kernel and gradient. Builders upcast
/// dtypes as numpy does (a weak constant auto-wrapped from a C++ number adopts the tensor's
/// dtype of the same kind), align ranks with leading broadcastable axes, and build the node.
/// Broadcasting follows Theano: only axes that are broadcastable in the static type stretch.
///
/// sigmoid and softplus are primitives (not composites) so that the stabilising rewrites can
/// recognise them and their kernels can be computed without overflow.
#pragma once

#include <source_location>

#include "graph/graph.hpp"

namespace theanine {

enum class ScalarOp {
    add, sub, mul, true_div, neg, exp, log, log1p, sigmoid, softplus, tanh, abs, sgn, sqrt, sqr,
    pow, maximum, minimum, switch_, eq, neq, lt, le, gt, ge, second,
    int_div,             ///< Python's //: floor division (zero gradient, as Theano's int_div)
    mod,                 ///< Python's %: the remainder takes the divisor's sign
    round_half_to_even,  ///< numpy.round / Theano's round (zero gradient)
};

const char* scalar_op_name(ScalarOp op);
int scalar_op_arity(ScalarOp op);
/// exp, log, log1p, sigmoid, softplus, tanh, sqrt, pow: library functions, many times the cost
/// of an add (what fusion and the fused loops' threading weigh).
bool scalar_op_is_transcendental(ScalarOp op);

class Elemwise final : public Op {
public:
    explicit Elemwise(ScalarOp op) : op_(op) {}
    ScalarOp scalar_op() const { return op_; }

    std::string name() const override;
    std::vector<TensorType> make_types(const std::vector<Variable>& inputs) const override;
    void perform(const Node& node, std::span<const Tensor* const> in,
                 std::span<Tensor* const> out) const override;
    std::optional<std::vector<Shape>> infer_shape(const std::vector<Shape>& in) const override;
    std::vector<Variable> pullback(const Node& node, const std::vector<Variable>& out_grads) const override;
    bool props_equal(const Op& other) const override;
    std::size_t props_hash() const override { return static_cast<std::size_t>(op_); }

private:
    ScalarOp op_;
};

class Cast final : public Op {
public:
    explicit Cast(DType to) : to_(to) {}
    DType to() const { return to_; }
    std::string name() const override;
    std::vector<TensorType> make_types(const std::vector<Variable>& inputs) const override;
    void perform(const Node& node, std::span<const Tensor* const> in,
                 std::span<Tensor* const> out) const override;
    std::optional<std::vector<Shape>> infer_shape(const std::vector<Shape>& in) const override;
    std::vector<Variable> pullback(const Node& node, const std::vector<Variable>& out_grads) const override;
    bool props_equal(const Op& other) const override { return static_cast<const Cast&>(other).to_ == to_; }
    std::size_t props_hash() const override { return static_cast<std::size_t>(to_); }

private:
    DType to_;
};

/// The broadcast output shape of elementwise inputs; throws UsageError naming the op and the
/// inputs when a non-broadcastable axis differs. The first form takes the broadcastable flags
/// of node's inputs (it allocates nothing but the result; kernels call it on every call).
Shape broadcast_shapes(const Op& op, std::span<const Tensor* const> inputs, const Node& node);
Shape broadcast_shapes(const Op& op, std::span<const Tensor* const> inputs,
                       const std::vector<std::vector<bool>>& broadcastable);

/// An operand of a builder: a Variable or a C++ number (wrapped as a weak constant), with the
/// user's source line captured where the conversion happens.
struct Operand {
    Variable var;
    std::source_location where;
    Operand(const Variable& v, std::source_location w = std::source_location::current())
        : var(v), where(w) {}
    Operand(double x, std::source_location w = std::source_location::current());
    Operand(float x, std::source_location w = std::source_location::current())
        : Operand(static_cast<double>(x), w) {}
    Operand(int x, std::source_location w = std::source_location::current());
    Operand(long x, std::source_location w = std::source_location::current());
    Operand(long long x, std::source_location w = std::source_location::current())
        : Operand(static_cast<long>(x), w) {}
};

/// Builds an elementwise node (with upcasting and rank alignment).
Variable elemwise(ScalarOp op, const std::vector<Variable>& inputs,
                  std::source_location where = std::source_location::current());

Variable add(const Operand& a, const Operand& b);
Variable sub(const Operand& a, const Operand& b);
Variable mul(const Operand& a, const Operand& b);
Variable true_div(const Operand& a, const Operand& b);
Variable neg(const Operand& a);
Variable exp(const Operand& a);
Variable log(const Operand& a);
Variable log1p(const Operand& a);
Variable sigmoid(const Operand& a);
Variable softplus(const Operand& a);
Variable tanh(const Operand& a);
Variable abs(const Operand& a);
Variable sgn(const Operand& a);
Variable sqrt(const Operand& a);
Variable sqr(const Operand& a);
Variable pow(const Operand& a, const Operand& b);
Variable maximum(const Operand& a, const Operand& b);
Variable minimum(const Operand& a, const Operand& b);
Variable switch_(const Operand& cond, const Operand& a, const Operand& b);
/// Theano's clip: lo where x < lo, hi where x > hi, x otherwise.
Variable clip(const Operand& x, const Operand& lo, const Operand& hi);
Variable eq(const Operand& a, const Operand& b);
Variable neq(const Operand& a, const Operand& b);
Variable lt(const Operand& a, const Operand& b);
Variable le(const Operand& a, const Operand& b);
Variable gt(const Operand& a, const Operand& b);
Variable ge(const Operand& a, const Operand& b);
/// second(a, b): b broadcast to the shape of a (Theano's fill).
Variable second(const Operand& a, const Operand& b);
Variable int_div(const Operand& a, const Operand& b);  ///< a // b
Variable mod(const Operand& a, const Operand& b);      ///< a % b
Variable round_half_to_even(const Operand& a);
Variable cast(const Operand& a, DType to);
Variable zeros_like(const Variable& a);
Variable ones_like(const Variable& a);

Variable operator+(const Operand& a, const Operand& b);
Variable operator-(const Operand& a, const Operand& b);
Variable operator*(const Operand& a, const Operand& b);
Variable operator/(const Operand& a, const Operand& b);
Variable operator-(const Operand& a);

/// Promotion of two dtypes as numpy does for arrays (int64 with float32 gives float64).
DType promote(DType a, DType b);

}  // namespace theanine
