// The HMC tutorial's pieces (leap-frog dynamics against a hand-written integrator, the
// accept rule, the step-size and acceptance-rate updates, the sampler's own test) and the
// numpy computations its program prints (pairwise sums, inverse, covariance, array text).
#include <doctest/doctest.h>

#include <cmath>

#include "examples/io/numpy_like.hpp"
#include "models/hmc.hpp"
#include "support/helpers.hpp"

using namespace theanine;
using namespace theanine::testing;
namespace np = theanine::io::numpy;
namespace hmc = theanine::models::hmc;

TEST_CASE("numpy pairwise sums: blocks of 8 partial sums, halves above 128 (float32 makes the order visible)") {
    std::vector<float> a(16, 1.0f);
    a[0] = 16777216.0f;  // 2^24: adding 1 to it one at a time changes nothing
    // r = [2^24, 2, ..., 2]; ((2^24 + 2) + 4) + (4 + 4)
    CHECK(np::pairwise_sum(a.data(), 16) == 16777230.0f);
    float sequential = 0;
    for (float x : a) sequential += x;
    CHECK(sequential == 16777216.0f);
    std::vector<float> b(200, 1.0f);
    b[0] = 16777216.0f;
    // halves of 96 and 104: (2^24 + 12 + 24 + 48) + 104
    CHECK(np::pairwise_sum(b.data(), 200) == 16777216.0f + 188.0f);
    std::vector<double> c{1, 2, 3, 4, 5};
    CHECK(np::mean(c.data(), 5) == 3.0);
    // a strided column
    std::vector<double> m{1, 10, 2, 20, 3, 30};
    CHECK(np::pairwise_sum(m.data() + 1, 3, 2) == 60.0);
}

TEST_CASE("numpy.linalg.inv in LAPACK's order: pivoting, exact cases, A inv(A) = I") {
    CHECK(np::inv<double>({0, 1, 1, 0}, 2) == std::vector<double>{0, 1, 1, 0});
    CHECK(np::inv<double>({2, 0, 0, 0, 4, 0, 0, 0, 8}, 3) == std::vector<double>{0.5, 0, 0, 0, 0.25, 0, 0, 0, 0.125});
    RandomState rs(5);
    std::vector<double> a(36);
    for (auto& x : a) x = rs.next_double() - 0.5;
    const auto ai = np::inv(a, 6);
    for (int i = 0; i < 6; ++i) {
        for (int j = 0; j < 6; ++j) {
            double s = 0;
            for (int k = 0; k < 6; ++k) s += a[i * 6 + k] * ai[k * 6 + j];
            CHECK(std::abs(s - (i == j ? 1.0 : 0.0)) < 1e-13);
        }
    }
    CHECK_THROWS_WITH(np::inv<double>({1, 2, 2, 4}, 2), "numpy.linalg.inv: the matrix is singular");
    CHECK(np::inv<float>({4, 0, 0, 2}, 2) == std::vector<float>{0.25f, 0, 0, 0.5f});
}

TEST_CASE("numpy.cov with ddof 1, by hand") {
    const auto c = np::cov({1, 2, 3, 2, 4, 7}, 2, 3);
    CHECK(c[0] == doctest::Approx(1.0).epsilon(1e-15));
    CHECK(c[1] == doctest::Approx(2.5).epsilon(1e-15));
    CHECK(c[2] == c[1]);
    CHECK(c[3] == doctest::Approx(114.0 / 18.0).epsilon(1e-15));
}

TEST_CASE("numpy's array text: maxprec digits, aligned columns, scientific when magnitudes spread") {
    // RandomState(123).rand(5) * 10, as test_hmc's target mean (its documented digits).
    RandomState rng(123);
    std::vector<double> mu;
    for (int i = 0; i < 5; ++i) mu.push_back(rng.next_double() * 10);
    CHECK(np::array_str(mu, {5}) == "[6.96469186 2.86139335 2.26851454 5.51314769 7.1946897 ]");
    CHECK(np::array_str({1.0, 0.5}, {2}) == "[1.  0.5]");
    CHECK(np::array_str({0.1, 0.25, 3.0}, {3}) == "[0.1  0.25 3.  ]");
    CHECK(np::array_str({-1.5, 2.0}, {2}) == "[-1.5  2. ]");
    CHECK(np::array_str({1e-5, 1.0}, {2}) == "[1.e-05 1.e+00]");
    CHECK(np::array_str({123456.789, 1.0}, {2}) == "[1.23456789e+05 1.00000000e+00]");
    CHECK(np::array_str({0.0001, 0.001}, {2}) == "[0.0001 0.001 ]");
    CHECK(np::array_str({1, 0.5, 0.25, 1}, {2, 2}) == "[[1.   0.5 ]\n [0.25 1.  ]]");
    // 12 values of width 10 wrap at 75 columns, continuation lines indented by one space
    std::vector<double> many(12, 0.12345678);
    const std::string s = np::array_str(many, {12});
    CHECK(s.find('\n') == 66);  // '[' and 6 words of 10 with their separators
    CHECK(s.substr(67, 2) == " 0");
    CHECK(np::scalar_str(0.1) == "0.1");
    CHECK(np::scalar_str(1.0) == "1.0");
    CHECK(np::scalar_str(1e-05) == "1e-05");
    CHECK(np::scalar_str(1e16) == "1e+16");
    CHECK(np::scalar_str(123456789012345.0) == "123456789012345.0");
    CHECK(np::scalar_str(0.1, true) == "0.1");
    CHECK(np::scalar_str(0.43232963747751657) == "0.43232963747751657");
}

namespace {

// Leap-frog by hand for E(x) = 0.5 * sum((x - mu) C (x - mu)) with C symmetric.
std::vector<double> leapfrog_by_hand(std::vector<double> x, std::vector<double> v, const std::vector<double>& mu,
                                     const std::vector<double>& C, double s, int n_steps, int rows, int dim,
                                     std::vector<double>* vel_out) {
    auto gradient = [&](const std::vector<double>& p) {
        std::vector<double> g(p.size());
        for (int r = 0; r < rows; ++r) {
            for (int j = 0; j < dim; ++j) {
                double a = 0;
                for (int k = 0; k < dim; ++k) a += (p[r * dim + k] - mu[k]) * C[k * dim + j];
                g[r * dim + j] = a;
            }
        }
        return g;
    };
    auto g = gradient(x);
    for (std::size_t i = 0; i < x.size(); ++i) v[i] -= 0.5 * s * g[i];
    for (std::size_t i = 0; i < x.size(); ++i) x[i] += s * v[i];
    for (int t = 0; t < n_steps - 1; ++t) {
        g = gradient(x);
        for (std::size_t i = 0; i < x.size(); ++i) v[i] -= s * g[i];
        for (std::size_t i = 0; i < x.size(); ++i) x[i] += s * v[i];
    }
    g = gradient(x);
    for (std::size_t i = 0; i < x.size(); ++i) v[i] -= 0.5 * s * g[i];
    *vel_out = v;
    return x;
}

}  // namespace

TEST_CASE("simulate_dynamics: the leap-frog scan (with grad inside the step) equals the integrator by hand") {
    const int rows = 3, dim = 4, n_steps = 20;
    std::vector<double> mu = {1, -2, 0.5, 3}, C(dim * dim);
    RandomState rs(9);
    for (int i = 0; i < dim; ++i) {
        for (int j = 0; j <= i; ++j) C[i * dim + j] = C[j * dim + i] = (i == j ? 1.5 : 0.3 * (rs.next_double() - 0.5));
    }
    Variable mu_c = constant(Tensor::from_vector<double>({dim}, mu)), C_c = constant(Tensor::from_vector<double>({dim, dim}, C));
    auto energy = [&](const Variable& x) { return 0.5 * (dot(x - mu_c, C_c) * (x - mu_c)).sum(1); };
    Variable pos = matrix("pos"), vel = matrix("vel"), step = scalar("step");
    auto [fp, fv] = hmc::simulate_dynamics(pos, vel, step, n_steps, energy);
    Tensor p0 = random_tensor({rows, dim}, 1), v0 = random_tensor({rows, dim}, 2);
    auto got = eval({pos, vel, step}, {fp, fv}, {p0, v0, 0.1});
    std::vector<double> want_v;
    auto want_p = leapfrog_by_hand(p0.to_doubles(), v0.to_doubles(), mu, C, 0.1, n_steps, rows, dim, &want_v);
    CHECK(close(got[0].to_doubles(), want_p, 1e-12));
    CHECK(close(got[1].to_doubles(), want_v, 1e-12));
    // The Hamiltonian is nearly conserved by the integrator.
    auto H = [&](const std::vector<double>& p, const std::vector<double>& v) {
        double h = 0;
        for (int r = 0; r < rows; ++r) {
            for (int j = 0; j < dim; ++j) {
                double a = 0;
                for (int k = 0; k < dim; ++k) a += (p[r * dim + k] - mu[k]) * C[k * dim + j];
                h += 0.5 * a * (p[r * dim + j] - mu[j]) + 0.5 * v[r * dim + j] * v[r * dim + j];
            }
        }
        return h;
    };
    CHECK(std::abs(H(want_p, want_v) - H(p0.to_doubles(), v0.to_doubles())) < 0.05 * H(p0.to_doubles(), v0.to_doubles()));
}

TEST_CASE("hmc_updates: accepted rows move, the step size follows the acceptance rate within its bounds") {
    SharedVariable positions = shared(T64({2, 2}, {0, 0, 0, 0}), "pos");
    SharedVariable stepsize = shared(Tensor::scalar<double>(0.2), "stepsize");
    SharedVariable avg = shared(Tensor::scalar<double>(0.95), "avg");
    Variable final_pos = matrix("final_pos"), accept = vector("accept", DType::boolean);
    hmc::HMCSettings s;
    s.stepsize_max = 0.25;
    Function f = function({final_pos, accept}, std::vector<Out>{},
                          hmc::hmc_updates(positions, stepsize, avg, final_pos, accept, s));
    Tensor acc = Tensor::from_vector<bool>({2}, {true, false});
    f({T64({2, 2}, {1, 2, 3, 4}), acc});
    CHECK(positions.get_value().to_doubles() == std::vector<double>{1, 2, 0, 0});
    CHECK(stepsize.get_value().item() == 0.2 * 1.02);  // 0.95 > 0.9: increase
    CHECK(avg.get_value().item() == 0.9 * 0.95 + (1.0 - 0.9) * 0.5);
    for (int i = 0; i < 20; ++i) f({T64({2, 2}, {1, 2, 3, 4}), acc});
    CHECK(avg.get_value().item() < 0.9);
    stepsize.set_value(Tensor::scalar<double>(0.001));
    f({T64({2, 2}, {1, 2, 3, 4}), acc});
    CHECK(stepsize.get_value().item() == 0.001);  // 0.001 * 0.98 clipped to the minimum
}

TEST_CASE("the sampler passes test_hmc's own checks on the 5-d Gaussian (1000 burn-in, 1000 draws)") {
    RandomState rng(123);
    const int dim = 5;
    std::vector<double> mu(dim), cov(dim * dim);
    for (auto& m : mu) m = rng.next_double() * 10;
    for (auto& c : cov) c = rng.next_double();
    std::vector<double> sym(cov.size());
    for (int i = 0; i < dim; ++i) {
        for (int j = 0; j < dim; ++j) sym[i * dim + j] = i == j ? 1.0 : (cov[i * dim + j] + cov[j * dim + i]) / 2;
    }
    Variable mu_c = constant(Tensor::from_vector<double>({dim}, mu));
    Variable ci = constant(Tensor::from_vector<double>({dim, dim}, np::inv(sym, dim)));
    std::vector<double> pos(3 * dim);
    for (auto& p : pos) p = rng.gauss();
    SharedVariable position = shared(Tensor::from_vector<double>({3, dim}, pos));
    hmc::HMCSettings s;
    s.initial_stepsize = 1e-3;
    s.stepsize_max = 0.5;
    auto sampler = hmc::HMC_sampler::new_from_shared_positions(
        position, [&](const Variable& x) { return 0.5 * (dot(x - mu_c, ci) * (x - mu_c)).sum(1); }, s);
    for (int r = 0; r < 1000; ++r) sampler.draw();
    std::vector<double> sum(dim, 0.0);
    for (int r = 0; r < 1000; ++r) {
        const auto v = sampler.draw().to_doubles();
        for (std::size_t i = 0; i < v.size(); ++i) sum[i % dim] += v[i];
    }
    CHECK(std::abs(sampler.avg_acceptance_rate.get_value().item() - 0.9) < 0.1);
    CHECK(sampler.stepsize.get_value().item() >= s.stepsize_min);
    CHECK(sampler.stepsize.get_value().item() <= s.stepsize_max);
    for (int d = 0; d < dim; ++d) CHECK(std::abs(sum[d] / 3000 - mu[d]) < 0.25);
}
