#include "models/dA.hpp"

#include <cmath>

#include <fmt/format.h>

#include "autodiff/grad.hpp"
#include "ops/blas.hpp"
#include "ops/elemwise.hpp"
#include "ops/reduce.hpp"

namespace theanine::models {

dA::dA(RandomState& numpy_rng, std::shared_ptr<RandomStreamsBase> theano_rng, Variable input, int n_visible_,
       int n_hidden_, std::optional<SharedVariable> W_, std::optional<SharedVariable> bhid,
       std::optional<SharedVariable> bvis)
    : n_visible(n_visible_), n_hidden(n_hidden_), theano_rng_(std::move(theano_rng)) {
    if (n_visible < 1 || n_hidden < 1) {
        throw UsageError(fmt::format("dA: n_visible and n_hidden must be positive, got {} and {}", n_visible, n_hidden));
    }
    if (!theano_rng_) {
        theano_rng_ = std::make_shared<RandomStreams>(static_cast<std::uint32_t>(numpy_rng.randint(1LL << 30)));
    }
    const DType fx = config().floatX;
    if (W_) {
        W = *W_;
    } else {
        const double bound = 4 * std::sqrt(6.0 / (n_hidden + n_visible));
        Tensor w = numpy_rng.uniform(-bound, bound, {n_visible, n_hidden}).astype(fx);
        W = shared(w, "W", true);
    }
    b = bhid ? *bhid : shared(Tensor::zeros(fx, {n_hidden}), "b", true);
    b_prime = bvis ? *bvis : shared(Tensor::zeros(fx, {n_visible}), "b_prime", true);
    x = input.defined() ? input : matrix("x");
}

Variable dA::get_corrupted_input(const Variable& input, double corruption_level) {
    if (!(corruption_level >= 0 && corruption_level <= 1)) {
        throw UsageError(fmt::format("dA: corruption_level must be in [0, 1], got {}", corruption_level));
    }
    return theano_rng_->binomial(input.shape(), 1, 1 - corruption_level, config().floatX) * input;
}

Variable dA::get_corrupted_input(const Variable& input, const Variable& corruption_level) {
    return theano_rng_->binomial(input.shape(), 1, 1 - corruption_level, config().floatX) * input;
}

Variable dA::get_hidden_values(const Variable& input) const { return sigmoid(dot(input, W) + b); }

Variable dA::get_reconstructed_input(const Variable& hidden) const { return sigmoid(dot(hidden, W.T()) + b_prime); }

namespace {
// The cost and updates from a corrupted input; lr is a number or a symbolic scalar.
std::pair<Variable, Updates> cost_updates(dA& m, const Variable& tilde_x, const Operand& learning_rate) {
    Variable y = m.get_hidden_values(tilde_x);
    Variable z = m.get_reconstructed_input(y);
    Variable L = -sum(m.x * log(z) + (1 - m.x) * log(1 - z), 1);
    Variable cost = mean(L);
    std::vector<Variable> ps = {m.W, m.b, m.b_prime};
    std::vector<Variable> gparams = grad(cost, ps);
    Updates updates;
    for (std::size_t i = 0; i < ps.size(); ++i) {
        SharedVariable p(ps[i]);
        updates.emplace_back(p, p - mul(learning_rate, gparams[i]));
    }
    return {cost, updates};
}
}  // namespace

std::pair<Variable, Updates> dA::get_cost_updates(double corruption_level, double learning_rate) {
    return cost_updates(*this, get_corrupted_input(x, corruption_level), learning_rate);
}

std::pair<Variable, Updates> dA::get_cost_updates(const Variable& corruption_level, const Variable& learning_rate) {
    return cost_updates(*this, get_corrupted_input(x, corruption_level), learning_rate);
}

}  // namespace theanine::models
