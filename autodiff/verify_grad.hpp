/// \file
/// verify_grad: checks a symbolic gradient against central finite differences.
///
/// For a function fn of some inputs (given as points), it projects the output on a fixed
/// random tensor u (cost = sum(fn(x) * u)), compiles the cost and its symbolic gradient,
/// and compares each gradient element with (cost(x + eps e_i) - cost(x - eps e_i)) / 2 eps,
/// all in float64. An element passes when |analytic - numeric| <= abs_tol + rel_tol * |numeric|.
/// On failure it throws UsageError naming the input, the worst element's index and both values.
///
/// This is the one file in autodiff/ that compiles graphs (it uses compile/function).
#pragma once

#include <cstdint>
#include <functional>
#include <vector>

#include "graph/graph.hpp"

namespace theanine {

struct VerifyGradOptions {
    double eps = 1e-6;
    double abs_tol = 1e-6;
    double rel_tol = 1e-5;
    std::uint64_t seed = 42;
};

struct VerifyGradReport {
    double max_abs_error = 0;
    double max_rel_error = 0;
    std::size_t n_checked = 0;
};

/// points: float64 tensors; fn builds the expression from symbolic inputs of the points' types.
VerifyGradReport verify_grad(const std::function<Variable(const std::vector<Variable>&)>& fn,
                             const std::vector<Tensor>& points, const VerifyGradOptions& options = {});

}  // namespace theanine
