#include "models/rbm.hpp"

#include <cmath>

#include "autodiff/grad.hpp"
#include "ops/blas.hpp"
#include "ops/elemwise.hpp"
#include "ops/reduce.hpp"
#include "ops/scan.hpp"
#include "ops/shape.hpp"

namespace theanine::models {

RBM::RBM(const Variable& in, int n_vis, int n_hid, RandomState& numpy_rng, std::shared_ptr<RandomStreamsBase> rng,
         std::optional<SharedVariable> W_, std::optional<SharedVariable> hbias_, std::optional<SharedVariable> vbias_)
    : n_visible(n_vis), n_hidden(n_hid), input(in), theano_rng(std::move(rng)) {
    const DType fx = config().floatX;
    if (!theano_rng) {
        theano_rng = std::make_shared<MRG_RandomStreams>(static_cast<std::uint32_t>(numpy_rng.randint(1LL << 30)));
    }
    if (W_) {
        W = *W_;
    } else {
        const double bound = 4 * std::sqrt(6. / (n_hidden + n_visible));
        W = shared(numpy_rng.uniform(-bound, bound, {n_visible, n_hidden}).astype(fx), "W", true);
    }
    hbias = hbias_ ? *hbias_ : shared(Tensor::zeros(fx, {n_hidden}), "hbias", true);
    vbias = vbias_ ? *vbias_ : shared(Tensor::zeros(fx, {n_visible}), "vbias", true);
    if (!input.defined()) input = matrix("input");
}

Variable RBM::free_energy(const Variable& v_sample) const {
    Variable wx_b = dot(v_sample, W) + hbias;
    Variable vbias_term = dot(v_sample, vbias);
    Variable hidden_term = log(1 + exp(wx_b)).sum(1);
    return -hidden_term - vbias_term;
}

std::array<Variable, 2> RBM::propup(const Variable& vis) const {
    Variable pre = dot(vis, W) + hbias;
    return {pre, sigmoid(pre)};
}

std::array<Variable, 2> RBM::propdown(const Variable& hid) const {
    Variable pre = dot(hid, W.T()) + vbias;
    return {pre, sigmoid(pre)};
}

std::array<Variable, 3> RBM::sample_h_given_v(const Variable& v0_sample) const {
    auto [pre, mean] = propup(v0_sample);
    Variable sample = theano_rng->binomial(mean.shape(), 1, mean, config().floatX);
    return {pre, mean, sample};
}

std::array<Variable, 3> RBM::sample_v_given_h(const Variable& h0_sample) const {
    auto [pre, mean] = propdown(h0_sample);
    Variable sample = theano_rng->binomial(mean.shape(), 1, mean, config().floatX);
    return {pre, mean, sample};
}

std::array<Variable, 6> RBM::gibbs_hvh(const Variable& h0_sample) const {
    auto v = sample_v_given_h(h0_sample);
    auto h = sample_h_given_v(v[2]);
    return {v[0], v[1], v[2], h[0], h[1], h[2]};
}

std::array<Variable, 6> RBM::gibbs_vhv(const Variable& v0_sample) const {
    auto h = sample_h_given_v(v0_sample);
    auto v = sample_v_given_h(h[2]);
    return {h[0], h[1], h[2], v[0], v[1], v[2]};
}

std::pair<Variable, Updates> RBM::get_cost_updates(double lr, std::optional<SharedVariable> persistent, int k) {
    // T.cast(lr, floatX): the learning rate as a floatX constant.
    return get_cost_updates(constant(lr, config().floatX), persistent, k);
}

std::pair<Variable, Updates> RBM::get_cost_updates(const Variable& lr, std::optional<SharedVariable> persistent,
                                                   int k) {
    auto ph = sample_h_given_v(input);
    Variable chain_start = persistent ? Variable(*persistent) : ph[2];
    ScanResult r = scan(
        [this](const std::vector<Variable>& a) {
            auto g = gibbs_hvh(a[0]);
            return ScanStep(std::vector<Variable>(g.begin(), g.end()));
        },
        {},
        {ScanOutput::none(), ScanOutput::none(), ScanOutput::none(), ScanOutput::none(), ScanOutput::none(),
         ScanOutput(chain_start)},
        {}, k, -1, false, "gibbs_hvh");
    const Variable &pre_sigmoid_nvs = r[0], &nv_samples = r[2], &nh_samples = r[5];
    Updates updates = r.updates;
    Variable chain_end = nv_samples[{-1}];
    Variable cost = free_energy(input).mean() - free_energy(chain_end).mean();
    GradOptions go;
    go.consider_constant = {chain_end};
    std::vector<Variable> ps{W, hbias, vbias};
    auto gparams = grad(cost, ps, go);
    Variable lr_x = lr.dtype() == config().floatX ? lr : cast(lr, config().floatX);
    for (std::size_t i = 0; i < ps.size(); ++i) updates.emplace_back(SharedVariable(ps[i]), ps[i] - gparams[i] * lr_x);
    Variable monitoring_cost;
    if (persistent) {
        updates.emplace_back(*persistent, nh_samples[{-1}]);
        monitoring_cost = get_pseudo_likelihood_cost(updates);
    } else {
        monitoring_cost = get_reconstruction_cost(pre_sigmoid_nvs[{-1}]);
    }
    return {monitoring_cost, updates};
}

Variable RBM::get_pseudo_likelihood_cost(Updates& updates) {
    SharedVariable idx = shared(Tensor::scalar<std::int64_t>(0), "bit_i_idx");
    bit_i_idx = idx;
    Variable xi = round_half_to_even(input);
    Variable fe_xi = free_energy(xi);
    Variable flipped = 1 - xi[{Idx::all(), Idx(idx)}];
    Variable xi_flip = set_subtensor(xi, flipped, {Idx::all(), Idx(idx)});
    Variable fe_xi_flip = free_energy(xi_flip);
    Variable cost = (static_cast<double>(n_visible) * log(sigmoid(fe_xi_flip - fe_xi))).mean();
    updates.emplace_back(idx, mod(idx + 1, static_cast<long>(n_visible)));
    return cost;
}

Variable RBM::get_reconstruction_cost(const Variable& pre_sigmoid_nv) const {
    return (input * log(sigmoid(pre_sigmoid_nv)) + (1 - input) * log(1 - sigmoid(pre_sigmoid_nv))).sum(1).mean();
}

DBN::DBN(RandomState& numpy_rng, std::shared_ptr<RandomStreamsBase> theano_rng, int n_ins,
         const std::vector<int>& sizes, int n_outs) {
    if (sizes.empty()) throw UsageError("DBN: needs at least one hidden layer");
    if (!theano_rng) {
        theano_rng = std::make_shared<MRG_RandomStreams>(static_cast<std::uint32_t>(numpy_rng.randint(1LL << 30)));
    }
    x = matrix("x");
    y = lvector("y");
    sigmoid_layers.reserve(sizes.size());
    rbm_layers.reserve(sizes.size());
    for (std::size_t i = 0; i < sizes.size(); ++i) {
        const int input_size = i == 0 ? n_ins : sizes[i - 1];
        Variable layer_input = i == 0 ? x : sigmoid_layers.back().output;
        sigmoid_layers.emplace_back(numpy_rng, layer_input, input_size, sizes[i], Activation::sigmoid);
        HiddenLayer& h = sigmoid_layers.back();
        rbm_layers.emplace_back(layer_input, input_size, sizes[i], numpy_rng, theano_rng, h.W, h.b);
    }
    log_layer = std::make_unique<LogisticRegression>(sigmoid_layers.back().output, sizes.back(), n_outs);
    finetune_cost = log_layer->negative_log_likelihood(y);
    errors = log_layer->errors(y);
}

std::vector<SharedVariable> DBN::params() const { return stacked_params(sigmoid_layers, *log_layer); }

std::vector<Function> DBN::pretraining_functions(const SharedVariable& train_set_x, long batch_size, int k,
                                                const CompileOptions& options) {
    Variable index = lscalar("index");
    Variable learning_rate = scalar("lr");
    std::vector<Function> fns;
    for (auto& rbm : rbm_layers) {
        auto [cost, updates] = rbm.get_cost_updates(learning_rate, std::nullopt, k);
        Variable begin = index * batch_size;
        fns.push_back(function({In(index), In(learning_rate, 0.1)}, {cost}, updates,
                               {{x, train_set_x[{slice(begin, begin + batch_size)}]}}, options));
    }
    return fns;
}

}  // namespace theanine::models
