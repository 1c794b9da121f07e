#include "models/mlp.hpp"

#include <cmath>

#include <fmt/format.h>

#include "ops/blas.hpp"
#include "ops/elemwise.hpp"
#include "ops/nnet.hpp"
#include "ops/reduce.hpp"
#include "ops/shape.hpp"

namespace theanine::models {

LogisticRegression::LogisticRegression(const Variable& in, int n_in, int n_out) : input(in) {
    if (n_in < 1 || n_out < 2) {
        throw UsageError(fmt::format("LogisticRegression: needs n_in >= 1 and n_out >= 2, got {} and {}", n_in, n_out));
    }
    const DType fx = config().floatX;
    W = shared(Tensor::zeros(fx, {n_in, n_out}), "W", true);
    b = shared(Tensor::zeros(fx, {n_out}), "b", true);
    p_y_given_x = softmax(dot(input, W) + b);
    y_pred = argmax(p_y_given_x, 1);
}

Variable LogisticRegression::negative_log_likelihood(const Variable& y) const {
    return -mean(log(p_y_given_x)[{arange(y.shape(0)), y}]);
}

Variable LogisticRegression::errors(const Variable& y) const {
    if (y.ndim() != y_pred.ndim()) {
        throw UsageError(fmt::format("LogisticRegression::errors: y should have the same shape as y_pred ({}), got {}",
                                     y_pred.type().str(), y.type().str()));
    }
    if (!is_integer(y.dtype())) {
        throw UsageError(fmt::format("LogisticRegression::errors: y must be an integer vector, got {}", y.type().str()));
    }
    return mean(neq(y_pred, y));
}

HiddenLayer::HiddenLayer(RandomState& rng, const Variable& in, int n_in, int n_out, Activation activation,
                         std::optional<SharedVariable> W_, std::optional<SharedVariable> b_)
    : input(in) {
    const DType fx = config().floatX;
    if (W_) {
        W = *W_;
    } else {
        double bound = std::sqrt(6.0 / (n_in + n_out));
        if (activation == Activation::sigmoid) bound *= 4;
        W = shared(rng.uniform(-bound, bound, {n_in, n_out}).astype(fx), "W", true);
    }
    b = b_ ? *b_ : shared(Tensor::zeros(fx, {n_out}), "b", true);
    Variable lin = dot(input, W) + b;
    output = activation == Activation::tanh ? tanh(lin) : activation == Activation::sigmoid ? sigmoid(lin) : lin;
}

MLP::MLP(RandomState& rng, const Variable& input, int n_in, int n_hidden, int n_out)
    : hidden(rng, input, n_in, n_hidden, Activation::tanh), log_regression(hidden.output, n_hidden, n_out) {
    L1 = abs(hidden.W).sum() + abs(log_regression.W).sum();
    L2_sqr = sqr(hidden.W).sum() + sqr(log_regression.W).sum();
}

std::vector<SharedVariable> MLP::params() const {
    return {hidden.W, hidden.b, log_regression.W, log_regression.b};
}

SdA::SdA(RandomState& numpy_rng, std::shared_ptr<RandomStreamsBase> theano_rng, int n_ins,
         const std::vector<int>& sizes, int n_outs) {
    if (sizes.empty()) throw UsageError("SdA: needs at least one hidden layer");
    if (!theano_rng) {
        theano_rng = std::make_shared<RandomStreams>(static_cast<std::uint32_t>(numpy_rng.randint(1LL << 30)));
    }
    x = matrix("x");
    y = lvector("y");
    sigmoid_layers.reserve(sizes.size());
    dA_layers.reserve(sizes.size());
    for (std::size_t i = 0; i < sizes.size(); ++i) {
        const int input_size = i == 0 ? n_ins : sizes[i - 1];
        Variable layer_input = i == 0 ? x : sigmoid_layers.back().output;
        sigmoid_layers.emplace_back(numpy_rng, layer_input, input_size, sizes[i], Activation::sigmoid);
        HiddenLayer& h = sigmoid_layers.back();
        dA_layers.emplace_back(numpy_rng, theano_rng, layer_input, input_size, sizes[i], h.W, h.b);
    }
    log_layer = std::make_unique<LogisticRegression>(sigmoid_layers.back().output, sizes.back(), n_outs);
    finetune_cost = log_layer->negative_log_likelihood(y);
    errors = log_layer->errors(y);
}

std::vector<SharedVariable> stacked_params(const std::vector<HiddenLayer>& layers, const LogisticRegression& top) {
    std::vector<SharedVariable> ps;
    for (const auto& h : layers) {
        ps.push_back(h.W);
        ps.push_back(h.b);
    }
    ps.push_back(top.W);
    ps.push_back(top.b);
    return ps;
}

std::vector<SharedVariable> SdA::params() const { return stacked_params(sigmoid_layers, *log_layer); }

std::vector<Function> SdA::pretraining_functions(const SharedVariable& train_set_x, long batch_size,
                                                const CompileOptions& options) {
    Variable index = lscalar("index");
    Variable corruption_level = scalar("corruption");
    Variable learning_rate = scalar("lr");
    std::vector<Function> fns;
    for (auto& da : dA_layers) {
        auto [cost, updates] = da.get_cost_updates(corruption_level, learning_rate);
        fns.push_back(function({In(index), In(corruption_level, 0.2), In(learning_rate, 0.1)}, {cost}, updates,
                               {{x, train_set_x[{slice(index * batch_size, (index + 1) * batch_size)}]}}, options));
    }
    return fns;
}

}  // namespace theanine::models
