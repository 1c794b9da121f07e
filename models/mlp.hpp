/// \file
/// The supervised models of the Deep Learning Tutorials: LogisticRegression, HiddenLayer,
/// MLP and the stacked denoising autoencoder SdA, written as the tutorials write them.
#pragma once

#include <functional>
#include <memory>
#include <optional>
#include <vector>

#include "compile/function.hpp"
#include "graph/graph.hpp"
#include "models/dA.hpp"
#include "ops/random.hpp"

namespace theanine::models {

/// softmax(dot(input, W) + b) with W and b starting at zero.
class LogisticRegression {
public:
    LogisticRegression(const Variable& input, int n_in, int n_out);
    /// -mean(log(p_y_given_x)[arange(n), y])
    Variable negative_log_likelihood(const Variable& y) const;
    /// mean(neq(y_pred, y)); y must be an integer vector.
    Variable errors(const Variable& y) const;
    std::vector<SharedVariable> params() const { return {W, b}; }

    SharedVariable W, b;
    Variable input, p_y_given_x, y_pred;
};

enum class Activation { tanh, sigmoid, none };

/// activation(dot(input, W) + b). W starts uniform in +-sqrt(6/(n_in+n_out)) (4 times that
/// for a sigmoid), drawn from rng, unless W/b are given.
class HiddenLayer {
public:
    HiddenLayer(RandomState& rng, const Variable& input, int n_in, int n_out, Activation activation = Activation::tanh,
                std::optional<SharedVariable> W = std::nullopt, std::optional<SharedVariable> b = std::nullopt);
    std::vector<SharedVariable> params() const { return {W, b}; }

    SharedVariable W, b;
    Variable input, output;
};

/// The parameters of a stack of hidden layers and its logistic regression, bottom up (SdA, DBN).
std::vector<SharedVariable> stacked_params(const std::vector<HiddenLayer>& layers, const LogisticRegression& top);

/// One tanh hidden layer and a logistic regression on top, with L1 and L2 terms.
class MLP {
public:
    MLP(RandomState& rng, const Variable& input, int n_in, int n_hidden, int n_out);
    Variable negative_log_likelihood(const Variable& y) const { return log_regression.negative_log_likelihood(y); }
    Variable errors(const Variable& y) const { return log_regression.errors(y); }
    std::vector<SharedVariable> params() const;

    HiddenLayer hidden;
    LogisticRegression log_regression;
    Variable L1, L2_sqr;
};

/// Stacked denoising autoencoders: sigmoid hidden layers whose weights are shared with dA
/// layers for greedy layer-wise pretraining, and a logistic regression on top for
/// supervised fine-tuning.
class SdA {
public:
    SdA(RandomState& numpy_rng, std::shared_ptr<RandomStreamsBase> theano_rng, int n_ins,
        const std::vector<int>& hidden_layers_sizes, int n_outs);

    /// One function per layer: f(index, corruption = 0.2, lr = 0.1) -> cost, training that
    /// layer's dA on train_set_x[index * batch_size : (index + 1) * batch_size].
    std::vector<Function> pretraining_functions(const SharedVariable& train_set_x, long batch_size,
                                                const CompileOptions& options = CompileOptions());
    std::vector<SharedVariable> params() const;

    Variable x, y;
    std::vector<HiddenLayer> sigmoid_layers;
    std::vector<dA> dA_layers;
    std::unique_ptr<LogisticRegression> log_layer;
    Variable finetune_cost, errors;
};

}  // namespace theanine::models
