// The RBM, DBN and cA tutorials' models on small data: free energy and conditionals against
// hand computation, binomial samples against the stream's own uniforms, the CD-k / PCD-k
// update against the same chain unrolled by hand on the same generator states, the
// pseudo-likelihood cost, the cA's Jacobian against finite differences.
#include <doctest/doctest.h>

#include <cmath>

#include "support/helpers.hpp"

using namespace theanine;
using namespace theanine::testing;

namespace {

std::vector<double> vals(const Tensor& t) { return t.to_doubles(); }
double sigm(double a) { return 1 / (1 + std::exp(-a)); }

// An RBM with 4 visible and 3 hidden units and known parameters.
struct Small {
    RandomState numpy_rng{5};
    std::shared_ptr<MRG_RandomStreams> srng;
    Variable x = matrix("x");
    std::unique_ptr<models::RBM> rbm;
    explicit Small(std::uint32_t seed = 77) : srng(std::make_shared<MRG_RandomStreams>(seed)) {
        rbm = std::make_unique<models::RBM>(x, 4, 3, numpy_rng, srng);
        rbm->hbias.set_value(T64({3}, {0.1, -0.2, 0.3}));
        rbm->vbias.set_value(T64({4}, {-0.1, 0.2, 0.05, 0.0}));
    }
};

}  // namespace

TEST_CASE("RBM: W starts uniform in +-4 sqrt(6 / (n_hidden + n_visible)) from numpy_rng; biases at zero") {
    RandomState a(1234), b(1234);
    auto srng = std::make_shared<MRG_RandomStreams>(1);
    models::RBM rbm(matrix("x"), 6, 4, a, srng);
    const double bound = 4 * std::sqrt(6.0 / 10);
    CHECK(vals(rbm.W.get_value()) == vals(b.uniform(-bound, bound, {6, 4})));
    CHECK(vals(rbm.hbias.get_value()) == std::vector<double>(4, 0.0));
    CHECK(rbm.params().size() == 3);
}

TEST_CASE("RBM: free energy, propup and propdown against hand computation") {
    Small s;
    const auto W = vals(s.rbm->W.get_value());
    const std::vector<double> hb{0.1, -0.2, 0.3}, vb{-0.1, 0.2, 0.05, 0.0};
    Tensor v = T64({2, 4}, {1, 0, 1, 1, 0, 1, 0.5, 0});
    auto got = eval({s.x}, {s.rbm->free_energy(s.x), s.rbm->propup(s.x)[1], s.rbm->propdown(s.rbm->propup(s.x)[1])[0]},
                    {v});
    const auto vv = vals(v);
    for (int r = 0; r < 2; ++r) {
        double hidden = 0, vbias = 0;
        std::vector<double> h(3);
        for (int j = 0; j < 3; ++j) {
            double a = hb[j];
            for (int i = 0; i < 4; ++i) a += vv[r * 4 + i] * W[i * 3 + j];
            hidden += std::log(1 + std::exp(a));
            h[j] = sigm(a);
            CHECK(got[1].at({r, j}) == doctest::Approx(h[j]).epsilon(1e-14));
        }
        for (int i = 0; i < 4; ++i) vbias += vv[r * 4 + i] * vb[i];
        CHECK(got[0].at({r}) == doctest::Approx(-hidden - vbias).epsilon(1e-14));
        for (int i = 0; i < 4; ++i) {
            double a = vb[i];
            for (int j = 0; j < 3; ++j) a += h[j] * W[i * 3 + j];
            CHECK(got[2].at({r, i}) == doctest::Approx(a).epsilon(1e-14));
        }
    }
}

TEST_CASE("RBM: a binomial sample is the stream's uniforms compared with the means") {
    Small s(42);
    auto smp = s.rbm->sample_h_given_v(s.x);
    MRG_RandomStreams twin(42);
    Variable u = twin.uniform(std::vector<std::int64_t>{2, 3});
    Tensor v = T64({2, 4}, {1, 0, 1, 1, 0, 1, 0.5, 0});
    auto got = eval({s.x}, {smp[1], smp[2]}, {v});
    Function fu = function({}, {u});
    const auto uu = vals(fu()[0]), mean = vals(got[0]), sample = vals(got[1]);
    for (std::size_t i = 0; i < 6; ++i) CHECK(sample[i] == (uu[i] < mean[i] ? 1.0 : 0.0));
}

namespace {

// The chain of get_cost_updates unrolled by hand: gibbs_hvh's graph is built once (making
// its two generator states), then cloned k times, each step reading the states the previous
// one produced, exactly as the loop threads them.
std::pair<Variable, Updates> unrolled_cd(models::RBM& rbm, const Variable& lr, std::optional<SharedVariable> persistent,
                                         int k) {
    auto ph = rbm.sample_h_given_v(rbm.input);
    Variable h_ph = matrix("h_step");
    auto g = rbm.gibbs_hvh(h_ph);
    // The states the step's two binomials draw from, and their advanced values.
    std::vector<SharedVariable> states;
    std::vector<Variable> next;
    for (const auto& node : toposort({g[2], g[5]})) {
        Variable upd = default_update_of(node);
        if (!upd.defined()) continue;
        states.emplace_back(node->output(0));
        next.push_back(upd);
    }
    REQUIRE(states.size() == 2);
    Variable h = persistent ? Variable(*persistent) : ph[2];
    std::vector<Variable> cur_states(states.begin(), states.end());
    Variable pre_v, v_sample;
    for (int t = 0; t < k; ++t) {
        VarMap<Variable> rep;
        rep[key(h_ph)] = h;
        for (std::size_t m = 0; m < states.size(); ++m) rep[key(states[m])] = cur_states[m];
        std::vector<Variable> outs{g[0], g[2], g[5]};
        outs.insert(outs.end(), next.begin(), next.end());
        outs = clone_with_replace(outs, rep);
        pre_v = outs[0];
        v_sample = outs[1];
        h = outs[2];
        cur_states = {outs[3], outs[4]};
    }
    Variable cost = rbm.free_energy(rbm.input).mean() - rbm.free_energy(v_sample).mean();
    GradOptions go;
    go.consider_constant = {v_sample};
    auto gp = grad(cost, {rbm.W, rbm.hbias, rbm.vbias}, go);
    Updates up;
    const std::vector<SharedVariable> ps{rbm.W, rbm.hbias, rbm.vbias};
    for (std::size_t i = 0; i < 3; ++i) up.emplace_back(ps[i], ps[i] - gp[i] * lr);
    for (std::size_t m = 0; m < states.size(); ++m) up.emplace_back(states[m], cur_states[m]);
    if (persistent) up.emplace_back(*persistent, h);
    return {persistent ? Variable() : rbm.get_reconstruction_cost(pre_v), up};
}

}  // namespace

TEST_CASE("CD-k and PCD-k as a scan equal the chain unrolled by hand on the same generator states") {
    for (bool pcd : {false, true}) {
        for (int k : {1, 3}) {
            CAPTURE(pcd);
            CAPTURE(k);
            Tensor data = random_tensor({5, 4}, 3, 0, 1);
            Small a(11), b(11);
            std::optional<SharedVariable> pa, pb;
            if (pcd) {
                pa = shared(Tensor::zeros(DType::float64, {5, 3}), "chain");
                pb = shared(Tensor::zeros(DType::float64, {5, 3}), "chain");
            }
            auto [cost_a, up_a] = a.rbm->get_cost_updates(0.1, pa, k);
            auto [cost_b, up_b] = unrolled_cd(*b.rbm, constant(0.1), pb, k);
            // The scan version also as a loop when k is 1 (the single-step rewrite off).
            CompileOptions keep_loop;
            keep_loop.rewrites.excluding = {"scan_single_step"};
            Function fa = function({a.x}, {cost_a}, up_a, {}, keep_loop);
            std::vector<Variable> outs_b;
            if (cost_b.defined()) outs_b.push_back(cost_b);
            CompileOptions quiet;
            quiet.on_unused_input = CompileOptions::UnusedInput::ignore;
            Function fb = function({b.x}, outs_b, up_b, {}, quiet);
            for (int call = 0; call < 3; ++call) {
                auto ra = fa({data});
                auto rb = fb({data});
                if (!pcd) CHECK(ra[0].item() == doctest::Approx(rb[0].item()).epsilon(1e-13));
                CHECK(close(vals(a.rbm->W.get_value()), vals(b.rbm->W.get_value()), 1e-13));
                CHECK(close(vals(a.rbm->hbias.get_value()), vals(b.rbm->hbias.get_value()), 1e-13));
                CHECK(close(vals(a.rbm->vbias.get_value()), vals(b.rbm->vbias.get_value()), 1e-13));
                if (pcd) CHECK(vals(pa->get_value()) == vals(pb->get_value()));
            }
            // Training moved the parameters.
            CHECK(vals(a.rbm->hbias.get_value()) != std::vector<double>{0.1, -0.2, 0.3});
        }
    }
}

TEST_CASE("RBM pseudo-likelihood: n_visible log sigmoid(F(x with bit i flipped) - F(x)); the bit advances") {
    Small s;
    Updates up;
    Variable cost = s.rbm->get_pseudo_likelihood_cost(up);
    REQUIRE(s.rbm->bit_i_idx.has_value());
    Function f = function({s.x}, {cost}, up);
    Tensor v = T64({2, 4}, {0.9, 0.2, 0.5, 0.7, 0.1, 0.6, 0.4, 0.51});  // round: 1 0 0 1 / 0 1 0 1 (0.5 to even)
    Function fe = function({s.x}, {s.rbm->free_energy(s.x)});
    auto pl = [&](int bit) {
        std::vector<double> xi{1, 0, 0, 1, 0, 1, 0, 1};
        std::vector<double> flip = xi;
        flip[bit] = 1 - flip[bit];
        flip[4 + bit] = 1 - flip[4 + bit];
        auto a = vals(fe({T64({2, 4}, xi)})[0]), b = vals(fe({T64({2, 4}, flip)})[0]);
        return (4 * std::log(sigm(b[0] - a[0])) + 4 * std::log(sigm(b[1] - a[1]))) / 2;
    };
    for (int call = 0; call < 6; ++call) {
        CAPTURE(call);
        CHECK(f({v})[0].item() == doctest::Approx(pl(call % 4)).epsilon(1e-13));
    }
    CHECK(s.rbm->bit_i_idx->get_value().item_int() == 2);
}

TEST_CASE("DBN: RBM layers share the sigmoid layers' parameters; pretraining functions take index and lr") {
    RandomState rng(123);
    auto srng = std::make_shared<MRG_RandomStreams>(static_cast<std::uint32_t>(rng.randint(1LL << 30)));
    models::DBN dbn(rng, srng, 6, {5, 4}, 3);
    REQUIRE(dbn.rbm_layers.size() == 2);
    CHECK(dbn.rbm_layers[1].W.same(dbn.sigmoid_layers[1].W));
    CHECK(dbn.rbm_layers[1].hbias.same(dbn.sigmoid_layers[1].b));
    SharedVariable data = shared(random_tensor({8, 6}, 4, 0, 1), "data");
    auto fns = dbn.pretraining_functions(data, 4, 2);
    const auto before = vals(dbn.sigmoid_layers[0].W.get_value());
    const double c1 = fns[0].call_named({arg("index", 1)})[0].item();  // lr defaults to 0.1
    CHECK(std::isfinite(c1));
    CHECK(vals(dbn.sigmoid_layers[0].W.get_value()) != before);
    CHECK(std::isfinite(fns[1].call_named({arg("index", 0), arg("lr", 0.01)})[0].item()));
    CHECK(dbn.params().size() == 6);
}

TEST_CASE("cA: the Jacobian equals finite differences of the hidden layer; its floor-divided norm has no gradient") {
    RandomState rng(123);
    Variable x = matrix("x");
    models::cA ca(rng, x, 5, 3, 2);
    Tensor xv = random_tensor({2, 5}, 8, 0, 1);
    Variable h = ca.get_hidden_values(x);
    Tensor J = eval1({x}, ca.get_jacobian(h, ca.W), {xv});
    CHECK(J.shape() == Shape{2, 5, 3});
    Function fh = function({x}, {h});
    const double eps = 1e-6;
    for (int i = 0; i < 2; ++i) {
        for (int j = 0; j < 5; ++j) {
            Tensor p = xv.copy(), m = xv.copy();
            p.data<double>()[i * 5 + j] += eps;
            m.data<double>()[i * 5 + j] -= eps;
            auto hp = vals(fh({p})[0]), hm = vals(fh({m})[0]);
            for (int k = 0; k < 3; ++k) {
                CHECK(J.at({i, j, k}) == doctest::Approx((hp[i * 3 + k] - hm[i * 3 + k]) / (2 * eps)).epsilon(1e-7));
            }
        }
    }
    auto [cost, updates] = ca.get_cost_updates(0.1, 0.01);
    double sum_sq = 0;
    for (double v : vals(J)) sum_sq += v * v;
    auto got = eval({x}, {ca.L_jacob, grad(ca.L_jacob, ca.W)}, {xv});
    CHECK(got[0].item() == std::floor(sum_sq / 2));
    CHECK(vals(got[1]) == std::vector<double>(15, 0.0));
    CHECK(updates.size() == 3);
}
