/// \file
/// The contractive autoencoder of the Deep Learning Tutorials (cA.py), written as the tutorial
/// writes it: the per-example Jacobian of the sigmoid hidden layer, its squared Frobenius
/// norm with the tutorial's floor division by the batch size, and the reconstruction
/// cross-entropy.
#pragma once

#include <optional>
#include <utility>
#include <vector>

#include "compile/function.hpp"
#include "graph/graph.hpp"
#include "ops/random.hpp"

namespace theanine::models {

class cA {
public:
    /// W starts uniform in +-4 sqrt(6 / (n_hidden + n_visible)) drawn from numpy_rng; the
    /// decoder uses W^T (tied weights).
    cA(RandomState& numpy_rng, const Variable& input, int n_visible, int n_hidden, int n_batchsize);

    Variable get_hidden_values(const Variable& input) const;       ///< sigmoid(x W + b)
    Variable get_reconstructed_input(const Variable& hidden) const; ///< sigmoid(h W^T + b')
    /// J[i, j, k] = h_ik (1 - h_ik) W_jk: (n_batchsize, n_visible, n_hidden)
    Variable get_jacobian(const Variable& hidden, const Variable& W) const;
    /// cost = mean(L_rec) + contraction_level * mean(L_jacob) with L_jacob = sum(J ** 2) //
    /// n_batchsize, and the SGD updates of W, b, b'. Sets L_rec and L_jacob. (As in Theano,
    /// the floor division has a zero gradient, so the contraction term does not move the
    /// parameters.)
    std::pair<Variable, Updates> get_cost_updates(double contraction_level, double learning_rate);
    std::vector<SharedVariable> params() const { return {W, b, b_prime}; }

    int n_visible, n_hidden, n_batchsize;
    Variable x;
    SharedVariable W, b, b_prime;
    Variable W_prime;
    Variable L_rec, L_jacob;
};

}  // namespace theanine::models
