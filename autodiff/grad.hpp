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
#include <vector>

#include "graph/graph.hpp"

namespace theanine {

/// What grad does for a wrt that the cost does not depend on (Theano's disconnected_inputs).
enum class Disconnected { raise, warn, ignore };

struct GradOptions {
    /// Variables treated as constants: no gradient flows through them.
    std::vector<Variable> consider_constant;
    Disconnected disconnected_inputs = Disconnected::raise;
};

/// d(cost)/d(wrt) for a scalar float cost. Throws UsageError for a non-scalar cost, an
/// integer wrt, a wrt the cost does not depend on (per options), or a path through an op
/// that has no gradient (naming the op and input).
std::vector<Variable> grad(const Variable& cost, const std::vector<Variable>& wrt,
                           const GradOptions& options = {});
Variable grad(const Variable& cost, const Variable& wrt, const GradOptions& options = {});

/// Vector-Jacobian product: sum over outputs of output_grads[i]^T d outputs[i] / d wrt.
std::vector<Variable> vjp(const std::vector<Variable>& outputs, const std::vector<Variable>& output_grads,
                          const std::vector<Variable>& wrt, const GradOptions& options = {});

/// Identity in the forward pass; stops gradients (Theano's disconnected_grad).
Variable disconnected_grad(const Variable& x);

/// Jacobian of a vector expression of static length n with respect to wrt (any rank):
/// a matrix (n, wrt.size) whose row i is d expr[i] / d wrt, flattened.
Variable jacobian(const Variable& expr, const Variable& wrt, std::int64_t n);
/// Hessian of a scalar cost with respect to a vector of static length n: (n, n).
Variable hessian(const Variable& cost, const Variable& wrt, std::int64_t n);

}  // namespace theanine
