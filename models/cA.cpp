#include "models/cA.hpp"

#include <cmath>

#include "autodiff/grad.hpp"
#include "ops/blas.hpp"
#include "ops/elemwise.hpp"
#include "ops/reduce.hpp"
#include "ops/shape.hpp"

namespace theanine::models {

cA::cA(RandomState& numpy_rng, const Variable& input, int n_vis, int n_hid, int batch)
    : n_visible(n_vis), n_hidden(n_hid), n_batchsize(batch), x(input) {
    const DType fx = config().floatX;
    const double bound = 4 * std::sqrt(6. / (n_hidden + n_visible));
    W = shared(numpy_rng.uniform(-bound, bound, {n_visible, n_hidden}).astype(fx), "W", true);
    b_prime = shared(Tensor::zeros(fx, {n_visible}), "b_prime", true);
    b = shared(Tensor::zeros(fx, {n_hidden}), "b", true);
    W_prime = W.T();
    if (!x.defined()) x = dmatrix("input");
}

Variable cA::get_hidden_values(const Variable& input) const { return sigmoid(dot(input, W) + b); }

Variable cA::get_reconstructed_input(const Variable& hidden) const { return sigmoid(dot(hidden, W_prime) + b_prime); }

Variable cA::get_jacobian(const Variable& hidden, const Variable& w) const {
    return reshape(hidden * (1 - hidden), std::vector<std::int64_t>{n_batchsize, 1, n_hidden}) *
           reshape(w, std::vector<std::int64_t>{1, n_visible, n_hidden});
}

std::pair<Variable, Updates> cA::get_cost_updates(double contraction_level, double learning_rate) {
    Variable y = get_hidden_values(x);
    Variable z = get_reconstructed_input(y);
    Variable J = get_jacobian(y, W);
    L_rec = -(x * log(z) + (1 - x) * log(1 - z)).sum(1);
    L_jacob = int_div(pow(J, 2).sum(), static_cast<long>(n_batchsize));
    Variable cost = L_rec.mean() + contraction_level * L_jacob.mean();
    std::vector<Variable> ps{W, b, b_prime};
    auto g = grad(cost, ps);
    Updates updates;
    for (std::size_t i = 0; i < ps.size(); ++i) updates.emplace_back(SharedVariable(ps[i]), ps[i] - learning_rate * g[i]);
    return {cost, updates};
}

}  // namespace theanine::models
