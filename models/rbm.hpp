/// \file
/// The restricted Boltzmann machine of the Deep Learning Tutorials (rbm.py), and the deep
/// belief network built of them (DBN.py), written as the tutorials write them: Gibbs steps
/// with MRG binomial draws, CD-k and PCD-k as a scan of gibbs_hvh, the gradient of the free
/// energy difference with the chain's end held constant.
#pragma once

#include <array>
#include <memory>
#include <optional>
#include <vector>

#include "compile/function.hpp"
#include "graph/graph.hpp"
#include "models/mlp.hpp"
#include "ops/random.hpp"

namespace theanine::models {

class RBM {
public:
    /// W starts uniform in +-4 sqrt(6 / (n_hidden + n_visible)) drawn from numpy_rng, the
    /// biases at zero, unless W, hbias or vbias are given (a DBN shares them with its layers).
    RBM(const Variable& input, int n_visible, int n_hidden, RandomState& numpy_rng,
        std::shared_ptr<RandomStreamsBase> theano_rng, std::optional<SharedVariable> W = std::nullopt,
        std::optional<SharedVariable> hbias = std::nullopt, std::optional<SharedVariable> vbias = std::nullopt);

    /// -sum(log(1 + exp(v W + hbias)), axis=1) - v vbias
    Variable free_energy(const Variable& v_sample) const;
    /// {pre-sigmoid activation, sigmoid}
    std::array<Variable, 2> propup(const Variable& vis) const;
    std::array<Variable, 2> propdown(const Variable& hid) const;
    /// {pre-sigmoid, mean, binomial sample}
    std::array<Variable, 3> sample_h_given_v(const Variable& v0_sample) const;
    std::array<Variable, 3> sample_v_given_h(const Variable& h0_sample) const;
    /// {pre_sigmoid_v1, v1_mean, v1_sample, pre_sigmoid_h1, h1_mean, h1_sample}
    std::array<Variable, 6> gibbs_hvh(const Variable& h0_sample) const;
    /// {pre_sigmoid_h1, h1_mean, h1_sample, pre_sigmoid_v1, v1_mean, v1_sample}
    std::array<Variable, 6> gibbs_vhv(const Variable& v0_sample) const;

    /// One step of CD-k (persistent absent) or PCD-k: the monitoring cost (reconstruction
    /// cross-entropy for CD, pseudo-likelihood for PCD) and the updates (generator states,
    /// parameters, the persistent chain, the pseudo-likelihood's bit index). lr is a number or
    /// a floatX scalar.
    std::pair<Variable, Updates> get_cost_updates(const Variable& lr, std::optional<SharedVariable> persistent,
                                                  int k);
    std::pair<Variable, Updates> get_cost_updates(double lr, std::optional<SharedVariable> persistent, int k);
    /// n_visible * log(sigmoid(F(x with bit i flipped) - F(x))) on round(input); adds the update
    /// of the bit index (i + 1) % n_visible.
    Variable get_pseudo_likelihood_cost(Updates& updates);
    /// mean over rows of sum(x log sigmoid(a) + (1 - x) log(1 - sigmoid(a)))
    Variable get_reconstruction_cost(const Variable& pre_sigmoid_nv) const;
    std::vector<SharedVariable> params() const { return {W, hbias, vbias}; }

    int n_visible, n_hidden;
    Variable input;
    SharedVariable W, hbias, vbias;
    std::shared_ptr<RandomStreamsBase> theano_rng;
    std::optional<SharedVariable> bit_i_idx;  ///< made by get_pseudo_likelihood_cost
};

/// Sigmoid layers whose weights are shared with RBMs (greedy layer-wise CD-k pre-training),
/// and a logistic regression on top for supervised fine-tuning.
class DBN {
public:
    DBN(RandomState& numpy_rng, std::shared_ptr<RandomStreamsBase> theano_rng, int n_ins,
        const std::vector<int>& hidden_layers_sizes, int n_outs);

    /// One function per layer: f(index, lr = 0.1) -> reconstruction cost, running CD-k on
    /// train_set_x[index * batch_size : (index + 1) * batch_size].
    std::vector<Function> pretraining_functions(const SharedVariable& train_set_x, long batch_size, int k,
                                                const CompileOptions& options = CompileOptions());
    std::vector<SharedVariable> params() const;

    Variable x, y;
    std::vector<HiddenLayer> sigmoid_layers;
    std::vector<RBM> rbm_layers;
    std::unique_ptr<LogisticRegression> log_layer;
    Variable finetune_cost, errors;
};

}  // namespace theanine::models
