/// \file
/// Reverse-mode differentiation on symbolic graphs.
///
/// grad(cost, wrt) orders the nodes between wrt and cost, seeds d(cost)/d(cost) = 1, visits
/// the nodes in reverse, asks each op's pullback for its input gradients, sums the
/// contributions of a variable used several times, and reduces a broadcast gradient back to
/// its variable's shape. The result is an ordinary graph: it can be printed, compiled and
/// differentiated again.
#pragma once

#include <optional>
#include <utility>
#include <vector>

#include "graph/graph.hpp"

namespace theanine {

/// What grad does for a wrt that the cost does not depend on (Theano's disconnected_inputs).
enum class Disconnected { raise, warn, ignore };

struct GradOptions {
    /// Variables treated as constants: no gradient flows through them.
    std::vector<Variable> consider_constant;
    Disconnected disconnected_inputs = Disconnected::raise;
    /// Gradients known for some variables (Theano's known_grads): each replaces whatever the
    /// cost would send into its variable and is passed on from there. With known gradients
    /// the cost may be left undefined.
    std::vector<std::pair<Variable, Variable>> known_grads;
    /// Name each result (dcost/dwrt) when both the cost and wrt have names (Theano's add_names).
    bool add_names = true;
};

/// d(cost)/d(wrt) for a scalar cost, as Theano's grad: the cost's gradient is 1 (in floatX
/// for an integer cost); an op whose outputs reached by the gradient are all integers passes
/// zeros to its inputs; an integer wrt gets a float gradient (zeros when only integer outputs
/// lead to the cost; grad(i, i) is 1). Throws UsageError for a non-scalar cost, a wrt the cost
/// does not depend on (per options), a known gradient that is not float or does not fit its
/// variable, or a path through an op that has no gradient (naming the op and input).
std::vector<Variable> grad(const Variable& cost, const std::vector<Variable>& wrt,
                           const GradOptions& options = {});
Variable grad(const Variable& cost, const Variable& wrt, const GradOptions& options = {});

/// Vector-Jacobian product: sum over outputs of output_grads[i]^T d outputs[i] / d wrt.
std::vector<Variable> vjp(const std::vector<Variable>& outputs, const std::vector<Variable>& output_grads,
                          const std::vector<Variable>& wrt, const GradOptions& options = {});

/// The R-operator (Theano's Rop): the Jacobian-vector products sum_j d f[i] / d wrt[j] *
/// eval_points[j], one per f[i], with eval_points[j] of wrt[j]'s type. Built from the
/// pullbacks (the transpose of the vector-Jacobian product, which is linear in its cotangent),
/// so every op with a pullback has one. An f[i] that does not depend on wrt gets zeros.
std::vector<Variable> Rop(const std::vector<Variable>& f, const std::vector<Variable>& wrt,
                          const std::vector<Variable>& eval_points);
Variable Rop(const Variable& f, const Variable& wrt, const Variable& eval_point);

/// Identities in the forward pass that change only the gradient (Theano's gradient ops). The
/// compiler removes them (the canonicalize rewrite local_remove_gradient_ops); without
/// rewrites they return a view of their input.
enum class GradOverrideKind { disconnected, zero, consider_constant, clip, scale };
class GradOverride final : public Op {
public:
    GradOverride(GradOverrideKind kind, double a = 0, double b = 0) : kind_(kind), a_(a), b_(b) {}
    GradOverrideKind kind() const { return kind_; }
    std::string name() const override;
    std::vector<TensorType> make_types(const std::vector<Variable>& inputs) const override;
    void perform(const Node&, std::span<const Tensor* const> in, std::span<Tensor* const> out) const override;
    std::optional<std::vector<Shape>> infer_shape(const std::vector<Shape>& in) const override;
    std::vector<Variable> pullback(const Node& node, const std::vector<Variable>& out_grads) const override;
    std::vector<int> view_map() const override { return {0}; }
    bool props_equal(const Op& o) const override;
    std::size_t props_hash() const override;

private:
    GradOverrideKind kind_;
    double a_, b_;  // clip: the bounds; scale: the factor
};

/// No gradient flows through x: a wrt reached only through it is disconnected.
Variable disconnected_grad(const Variable& x);
/// The gradient through x is zero (wrt stays connected: grad returns zeros, no error).
Variable zero_grad(const Variable& x);
/// As zero_grad, under Theano's other name.
Variable consider_constant(const Variable& x);
/// The gradient through x clipped elementwise to [lo, hi].
Variable grad_clip(const Variable& x, double lo, double hi);
/// The gradient through x multiplied by factor.
Variable grad_scale(const Variable& x, double factor);

/// Jacobian of a vector expression of static length n with respect to wrt (any rank):
/// a matrix (n, wrt.size) whose row i is d expr[i] / d wrt, flattened.
Variable jacobian(const Variable& expr, const Variable& wrt, std::int64_t n);
/// Hessian of a scalar cost with respect to a vector of static length n: (n, n).
Variable hessian(const Variable& cost, const Variable& wrt, std::int64_t n);

}  // namespace theanine
