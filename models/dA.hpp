/// \file
/// The denoising autoencoder of the Deep Learning Tutorials, written as the tutorial writes
/// it: a class whose cost is a graph of dot, sigmoid, binomial and log ops, with tied
/// weights (the decoder uses W^T).
#pragma once

#include <memory>
#include <optional>
#include <utility>
#include <vector>

#include "compile/function.hpp"
#include "graph/graph.hpp"
#include "ops/random.hpp"

namespace theanine::models {

class dA {
public:
    /// numpy_rng draws the initial W uniformly in +-4*sqrt(6/(n_hidden+n_visible)) (as
    /// float64, stored as floatX). theano_rng draws the corruption masks; when null, the
    /// model makes RandomStreams(numpy_rng.randint(2**30)) as the tutorial does. input
    /// defaults to a new matrix("x"). W, bhid, bvis may be given to share parameters with
    /// another layer (a stacked dA); otherwise W is drawn and both biases start at zero.
    dA(RandomState& numpy_rng, std::shared_ptr<RandomStreamsBase> theano_rng, Variable input = Variable(),
       int n_visible = 784, int n_hidden = 500, std::optional<SharedVariable> W = std::nullopt,
       std::optional<SharedVariable> bhid = std::nullopt, std::optional<SharedVariable> bvis = std::nullopt);

    /// binomial(size=input.shape, n=1, p=1-corruption_level, dtype=floatX) * input
    Variable get_corrupted_input(const Variable& input, double corruption_level);
    /// The same with a symbolic corruption level (a float scalar input).
    Variable get_corrupted_input(const Variable& input, const Variable& corruption_level);
    /// sigmoid(dot(input, W) + b)
    Variable get_hidden_values(const Variable& input) const;
    /// sigmoid(dot(hidden, W^T) + b')
    Variable get_reconstructed_input(const Variable& hidden) const;
    /// cost = mean over the batch of the cross-entropy summed over each row; updates are
    /// param - learning_rate * d cost / d param for W, b, b'.
    std::pair<Variable, Updates> get_cost_updates(double corruption_level, double learning_rate);
    /// The same with symbolic corruption level and learning rate (the stacked dA's
    /// pretraining functions take them as inputs with defaults).
    std::pair<Variable, Updates> get_cost_updates(const Variable& corruption_level, const Variable& learning_rate);

    std::vector<SharedVariable> params() const { return {W, b, b_prime}; }

    int n_visible, n_hidden;
    SharedVariable W, b, b_prime;
    Variable x;

private:
    std::shared_ptr<RandomStreamsBase> theano_rng_;
};

}  // namespace theanine::models
