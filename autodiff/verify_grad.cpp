#include "autodiff/verify_grad.hpp"

#include <cmath>
#include <random>

#include <fmt/format.h>

#include "autodiff/grad.hpp"
#include "compile/function.hpp"
#include "ops/elemwise.hpp"
#include "ops/reduce.hpp"

namespace theanine {

VerifyGradReport verify_grad(const std::function<Variable(const std::vector<Variable>&)>& fn,
                             const std::vector<Tensor>& points, const VerifyGradOptions& options) {
    std::vector<Variable> inputs;
    for (std::size_t i = 0; i < points.size(); ++i) {
        if (points[i].dtype() != DType::float64) {
            throw UsageError(fmt::format("verify_grad: point {} is {}; points must be float64", i, dtype_name(points[i].dtype())));
        }
        inputs.push_back(input(TensorType{DType::float64, std::vector<bool>(static_cast<std::size_t>(points[i].ndim()), false)},
                               fmt::format("x{}", i)));
    }
    Variable out = fn(inputs);
    // A fixed random projection makes the cost sensitive to every output element.
    Function probe = function(std::vector<In>(inputs.begin(), inputs.end()), {out});
    std::vector<Arg> args(points.begin(), points.end());
    Tensor value = probe(args)[0];
    std::mt19937_64 gen(options.seed);
    std::uniform_real_distribution<double> unif(0.5, 1.5);
    Tensor u = Tensor::empty(DType::float64, value.shape());
    for (std::int64_t i = 0; i < u.size(); ++i) u.data<double>()[i] = unif(gen);
    Variable cost = out.ndim() == 0 ? mul(cast(out, DType::float64), constant(u))
                                    : sum(mul(cast(out, DType::float64), constant(u)));
    std::vector<Variable> grads = grad(cost, inputs);
    std::vector<Variable> outs = {cost};
    outs.insert(outs.end(), grads.begin(), grads.end());
    Function f = function(std::vector<In>(inputs.begin(), inputs.end()), outs);
    auto analytic = f(args);

    VerifyGradReport rep;
    std::vector<Tensor> work;
    for (const auto& p : points) work.push_back(p.copy());
    for (std::size_t k = 0; k < work.size(); ++k) {
        double* x = work[k].data<double>();
        const Tensor g = analytic[k + 1].contiguous();
        const double* gd = g.data<double>();
        double worst = -1;
        std::int64_t worst_i = -1;
        double worst_num = 0;
        for (std::int64_t i = 0; i < work[k].size(); ++i) {
            const double orig = x[i];
            x[i] = orig + options.eps;
            std::vector<Arg> a1(work.begin(), work.end());
            double cp = f(a1)[0].item();
            x[i] = orig - options.eps;
            std::vector<Arg> a2(work.begin(), work.end());
            double cm = f(a2)[0].item();
            x[i] = orig;
            double num = (cp - cm) / (2 * options.eps);
            double err = std::abs(gd[i] - num);
            double excess = err - (options.abs_tol + options.rel_tol * std::abs(num));
            rep.max_abs_error = std::max(rep.max_abs_error, err);
            rep.max_rel_error = std::max(rep.max_rel_error, err / std::max(std::abs(num), 1e-300));
            ++rep.n_checked;
            if (excess > worst || !(err == err)) {
                worst = err == err ? excess : 1e300;
                worst_i = i;
                worst_num = num;
            }
        }
        if (worst > 0) {
            Shape idx(static_cast<std::size_t>(work[k].ndim()));
            std::int64_t r = worst_i;
            for (int d = work[k].ndim() - 1; d >= 0; --d) {
                idx[d] = r % work[k].dim(d);
                r /= work[k].dim(d);
            }
            throw UsageError(fmt::format(
                "verify_grad: gradient of input {} disagrees with finite differences at index {}: analytic {:.17g}, "
                "numeric {:.17g} (abs_tol {}, rel_tol {})",
                k, shape_string(idx), gd[worst_i], worst_num, options.abs_tol, options.rel_tol));
        }
    }
    return rep;
}

}  // namespace theanine
