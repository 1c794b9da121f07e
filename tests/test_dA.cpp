// The dA model: its cost against plain Eigen arithmetic, its gradients against the closed
// form and finite differences, and training lowering the cost.
#include <doctest/doctest.h>

#include <Eigen/Core>
#include <cmath>

#include "support/helpers.hpp"

using namespace theanine;
using namespace theanine::testing;

namespace {
using Mat = Eigen::Matrix<double, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;

Mat to_mat(const Tensor& t) {
    Tensor c = t.astype(DType::float64);
    return Eigen::Map<const Mat>(c.data<double>(), t.dim(0), t.dim(1));
}

// A deterministic "image" batch in [0, 1] made by the test: smooth strokes plus noise.
Tensor make_data(std::int64_t n, std::int64_t d, std::uint32_t seed) {
    RandomState rs(seed);
    Tensor t = Tensor::empty(DType::float64, {n, d});
    for (std::int64_t i = 0; i < n; ++i) {
        for (std::int64_t j = 0; j < d; ++j) {
            double v = 0.5 + 0.5 * std::sin(0.3 * static_cast<double>(j) + static_cast<double>(i % 5));
            t.data<double>()[i * d + j] = std::clamp(v + 0.1 * (rs.next_double() - 0.5), 0.0, 1.0);
        }
    }
    return t;
}
}  // namespace

TEST_CASE("the first minibatch cost of the 0% dA equals an Eigen computation from the same W") {
    // Real MNIST shapes (20 x 784, 500 hidden) with data the test makes.
    Tensor data = make_data(20, 784, 5);
    RandomState numpy_rng(123);
    auto theano_rng = std::make_shared<MRG_RandomStreams>(static_cast<std::uint32_t>(numpy_rng.randint(1LL << 30)));
    models::dA da(numpy_rng, theano_rng);
    auto [cost, updates] = da.get_cost_updates(0.0, 0.1);
    Mat W = to_mat(da.W.get_value());
    Function train = function({da.x}, {cost}, updates);
    const double got = train.scalar({data});

    Mat X = to_mat(data);
    Mat Y = (X * W).unaryExpr([](double v) { return 1 / (1 + std::exp(-v)); });
    Mat Z = (Y * W.transpose()).unaryExpr([](double v) { return 1 / (1 + std::exp(-v)); });
    double total = 0;
    for (int i = 0; i < 20; ++i) {
        double L = 0;
        for (int j = 0; j < 784; ++j) L -= X(i, j) * std::log(Z(i, j)) + (1 - X(i, j)) * std::log(1 - Z(i, j));
        total += L;
    }
    const double want = total / 20;
    CHECK(std::abs(got - want) <= 1e-12 * std::abs(want));
    // The update moved W.
    CHECK((to_mat(da.W.get_value()) - W).norm() > 0);
}

TEST_CASE("the dA's gradients equal the closed form: (z - x)/n at the decoder pre-activation") {
    const int n = 4, nv = 6, nh = 3;
    Tensor data = make_data(n, nv, 7);
    RandomState numpy_rng(9);
    models::dA da(numpy_rng, nullptr, Variable(), nv, nh);
    da.b.set_value(random_tensor({nh}, 3, -0.2, 0.2));
    da.b_prime.set_value(random_tensor({nv}, 4, -0.2, 0.2));
    auto [cost, updates] = da.get_cost_updates(0.0, 0.1);
    auto g = grad(cost, std::vector<Variable>{da.W, da.b, da.b_prime});
    Function f = function({da.x}, g);
    auto got = f({data});

    Mat X = to_mat(data), W = to_mat(da.W.get_value());
    Eigen::RowVectorXd b = Eigen::Map<const Eigen::RowVectorXd>(da.b.get_value().data<double>(), nh);
    Eigen::RowVectorXd bp = Eigen::Map<const Eigen::RowVectorXd>(da.b_prime.get_value().data<double>(), nv);
    auto sig = [](double v) { return 1 / (1 + std::exp(-v)); };
    Mat Y = ((X * W).rowwise() + b).unaryExpr(sig);
    Mat Z = ((Y * W.transpose()).rowwise() + bp).unaryExpr(sig);
    Mat dZ = (Z - X) / n;                                            // at the decoder pre-activation
    Mat dY = (dZ * W).cwiseProduct(Y.cwiseProduct((1 - Y.array()).matrix()));  // at the encoder pre-activation
    Mat gW = X.transpose() * dY + dZ.transpose() * Y;                // W is used twice (tied)
    Eigen::RowVectorXd gb = dY.colwise().sum(), gbp = dZ.colwise().sum();
    CHECK((to_mat(got[0]) - gW).cwiseAbs().maxCoeff() < 1e-14);
    auto vec = [](const Tensor& t) { return Eigen::Map<const Eigen::RowVectorXd>(t.data<double>(), t.size()); };
    CHECK((vec(got[1]) - gb).cwiseAbs().maxCoeff() < 1e-14);
    CHECK((vec(got[2]) - gbp).cwiseAbs().maxCoeff() < 1e-14);
}

TEST_CASE("the dA's cost gradient passes verify_grad on a small instance") {
    const int n = 3, nv = 5, nh = 4;
    Tensor data = make_data(n, nv, 11);
    RandomState rs(2);
    Tensor W0 = rs.uniform(-0.5, 0.5, {nv, nh});
    Tensor b0 = rs.uniform(-0.1, 0.1, {nh}), bp0 = rs.uniform(-0.1, 0.1, {nv});
    // The same cost graph the model builds, as a function of (W, b, b').
    auto cost = [&](const std::vector<Variable>& p) {
        Variable x = constant(data);
        Variable y = sigmoid(dot(x, p[0]) + p[1]);
        Variable z = sigmoid(dot(y, p[0].T()) + p[2]);
        return mean(-sum(x * log(z) + (1 - x) * log(1 - z), 1));
    };
    VerifyGradReport r = verify_grad(cost, {W0, b0, bp0});
    CHECK(r.n_checked == static_cast<std::size_t>(nv * nh + nh + nv));
}

TEST_CASE("training with corruption lowers the cost (fixed seeds)") {
    Tensor data = make_data(200, 64, 13);
    SharedVariable train_set_x = shared(data, "train_set_x");
    Variable index = lscalar("index");
    RandomState numpy_rng(123);
    auto theano_rng = std::make_shared<MRG_RandomStreams>(static_cast<std::uint32_t>(numpy_rng.randint(1LL << 30)));
    models::dA da(numpy_rng, theano_rng, matrix("x"), 64, 32);
    auto [cost, updates] = da.get_cost_updates(0.3, 0.1);
    Function train = function({index}, {cost}, updates, {{da.x, subtensor(train_set_x, {slice(index * 10, (index + 1) * 10)})}});
    double first = 0, last = 0;
    for (int epoch = 0; epoch < 15; ++epoch) {
        double c = 0;
        for (int i = 0; i < 20; ++i) c += train.scalar({i});
        if (epoch == 0) first = c / 20;
        last = c / 20;
    }
    CHECK(last < 0.97 * first);
    CHECK(da.params().size() == 3);
}

TEST_CASE("a stacked layer can share W and b with the dA") {
    RandomState rng(1);
    SharedVariable W = shared(rng.uniform(-0.1, 0.1, {6, 4}), "W_shared");
    SharedVariable b = shared(Tensor::zeros(DType::float64, {4}), "b_shared");
    models::dA da(rng, nullptr, Variable(), 6, 4, W, b);
    CHECK(da.W.same(W));
    CHECK(da.b.same(b));
    CHECK_THROWS_WITH_AS(da.get_corrupted_input(da.x, 1.5), "dA: corruption_level must be in [0, 1], got 1.5", UsageError);
}
