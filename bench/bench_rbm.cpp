// bench_rbm: the compiled RBM training step (models::RBM::get_cost_updates, a scan of
// gibbs_hvh) against a hand-written C++ loop of the same step, on random data of MNIST's shape,
// float64, in one run:
//   rbm  the rbm tutorial's step: PCD-15, 784 visible, 500 hidden, batch 20, with its
//        pseudo-likelihood cost
//   dbn  DBN pre-training of the first layer: CD-1, 784 visible, 1000 hidden, batch 10, with
//        the reconstruction cost
// The hand-written loop keeps its buffers, runs its products on theanine's per-thread products
// (gemm_slice on each thread's columns: the kernels chosen for each shape by measurement, as the
// compiled step gets), adds both weight-gradient products straight into W, draws its uniforms
// with the same MRG31k3p generator and reuses every product it can. Output: milliseconds per
// step for both, their ratio, seconds per epoch
// (50000 images) for each, and the line `rbm ratio rbm=X dbn=Y` (compiled / hand).
#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <functional>

#include <Eigen/Dense>
#include <fmt/format.h>

#include "bench/timing.hpp"
#include "theanine.hpp"

using namespace theanine;
using theanine::bench::interleaved_median_seconds;

namespace {

using Mat = Eigen::Matrix<double, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;
using Vec = Eigen::RowVectorXd;

// C = beta C + alpha op(A) op(B), A stored (a_rows x a_cols), B (b_rows x b_cols), all row-major:
// each thread its columns of C, on theanine's chosen kernels.
void product(Mat& C, const double* A, std::int64_t a_rows, std::int64_t a_cols, bool ta, const double* B,
             std::int64_t b_rows, std::int64_t b_cols, bool tb, double alpha = 1, double beta = 0) {
    const std::int64_t m = C.rows(), n = C.cols();
    const int nt = num_threads();
#pragma omp parallel for num_threads(nt)
    for (int t = 0; t < nt; ++t) {
        auto [c0, c1] = column_slice(n, t, nt);
        if (c1 > c0) gemm_slice<double>(C.data(), m, n, c0, c1, alpha, A, a_rows, a_cols, ta, B, b_rows, b_cols, tb, beta);
    }
}

volatile double sink = 0;

struct BenchConfig {
    const char* name;
    int n_vis, n_hid, batch, k;
    bool persistent;
};

// One hand-written CD-k / PCD-k step with the tutorial's monitoring cost.
class HandRBM {
public:
    HandRBM(const BenchConfig& c, const Tensor& W0)
        : c_(c), W(Eigen::Map<const Mat>(W0.data<double>(), c.n_vis, c.n_hid)), hb(Vec::Zero(c.n_hid)),
          vb(Vec::Zero(c.n_vis)), chain(Mat::Zero(c.batch, c.n_hid)), a_h(c.batch, c.n_hid), h(c.batch, c.n_hid),
          a_v(c.batch, c.n_vis), v(c.batch, c.n_vis), pos(c.batch, c.n_hid),
          u(static_cast<std::size_t>(c.batch) * std::max(c.n_vis, c.n_hid)),
          streams(mrg::substreams(mrg::State{12345, 12345, 12345, 12345, 12345, 12345}, 256)) {}

    double step(const Eigen::Map<const Mat>& x, double lr) {
        auto sample = [&](Mat& mean_to_sample) {
            const std::int64_t n = mean_to_sample.size();
            mrg::uniform_fill<double>(streams.data<std::int32_t>(), 256, n, u.data());
            double* d = mean_to_sample.data();
            for (std::int64_t i = 0; i < n; ++i) d[i] = u[static_cast<std::size_t>(i)] < d[i] ? 1.0 : 0.0;
        };
        auto sigmoid = [](Mat& m) { m = (1.0 + (-m.array()).exp()).inverse().matrix(); };
        // positive phase: sigmoid(x W + hb), the chain's start
        const std::int64_t nb = c_.batch, nv = c_.n_vis, nh = c_.n_hid;
        product(a_h, x.data(), nb, nv, false, W.data(), nv, nh, false);
        a_h.rowwise() += hb;
        pos = a_h;
        sigmoid(pos);
        Mat xW_hb = a_h;  // kept for the free energy of x
        if (c_.persistent) {
            h = chain;
        } else {
            h = pos;
            sample(h);
        }
        for (int t = 0; t < c_.k; ++t) {
            product(a_v, h.data(), nb, nh, false, W.data(), nv, nh, true);
            a_v.rowwise() += vb;
            v = a_v;
            sigmoid(v);
            sample(v);
            product(a_h, v.data(), nb, nv, false, W.data(), nv, nh, false);
            a_h.rowwise() += hb;
            h = a_h;
            sigmoid(h);
            sample(h);
        }
        if (c_.persistent) chain = h;
        // gradient of mean F(x) - mean F(v): the chain end's sigmoid(v W + hb) is a_h's
        Mat neg = a_h;
        sigmoid(neg);
        const double inv_n = 1.0 / c_.batch;
        product(W, x.data(), nb, nv, true, pos.data(), nb, nh, false, lr * inv_n, 1);
        product(W, v.data(), nb, nv, true, neg.data(), nb, nh, false, -lr * inv_n, 1);
        hb += (lr * inv_n) * (pos.colwise().sum() - neg.colwise().sum());
        vb += (lr * inv_n) * (x.colwise().sum() - v.colwise().sum());
        double cost = 0;
        if (c_.persistent) {
            // pseudo-likelihood with bit 0: F(round(x)) and F(round(x) with bit 0 flipped)
            Mat xi = x.array().round().matrix();
            Mat a1(nb, nh), a2(nb, nh);
            product(a1, xi.data(), nb, nv, false, W.data(), nv, nh, false);
            a1.rowwise() += hb;
            xi.col(bit_) = (1.0 - xi.col(bit_).array()).matrix();
            product(a2, xi.data(), nb, nv, false, W.data(), nv, nh, false);
            a2.rowwise() += hb;
            for (int r = 0; r < c_.batch; ++r) {
                double f1 = 0, f2 = 0;
                for (int j = 0; j < c_.n_hid; ++j) {
                    f1 -= std::log1p(std::exp(a1(r, j)));
                    f2 -= std::log1p(std::exp(a2(r, j)));
                }
                cost += c_.n_vis * std::log(1 / (1 + std::exp(-(f2 - f1))));
            }
            bit_ = (bit_ + 1) % c_.n_vis;
        } else {
            for (int r = 0; r < c_.batch; ++r) {
                for (int i = 0; i < c_.n_vis; ++i) {
                    const double s = 1 / (1 + std::exp(-a_v(r, i)));
                    cost += x(r, i) * std::log(s) + (1 - x(r, i)) * std::log(1 - s);
                }
            }
        }
        sink = xW_hb(0, 0);
        return cost / c_.batch;
    }

private:
    BenchConfig c_;
    Mat W;
    Vec hb, vb;
    Mat chain, a_h, h, a_v, v, pos;
    std::vector<double> u;
    Tensor streams;
    int bit_ = 0;
};

}  // namespace

int main(int argc, char** argv) {
    const int steps = argc > 1 ? std::max(5, std::atoi(argv[1])) : 40;
    Eigen::setNbThreads(num_threads());
    std::vector<double> ratios;
    for (const BenchConfig c : {BenchConfig{"rbm", 784, 500, 20, 15, true}, BenchConfig{"dbn", 784, 1000, 10, 1, false}}) {
        const std::int64_t n_data = static_cast<std::int64_t>(c.batch) * steps;
        Tensor data = RandomState(7).uniform(0.0, 1.0, {n_data, static_cast<std::int64_t>(c.n_vis)});
        RandomState numpy_rng(123);
        auto srng = std::make_shared<MRG_RandomStreams>(static_cast<std::uint32_t>(numpy_rng.randint(1LL << 30)));
        Variable x = matrix("x"), index = lscalar("index");
        models::RBM rbm(x, c.n_vis, c.n_hid, numpy_rng, srng);
        std::optional<SharedVariable> chain;
        if (c.persistent) chain = shared(Tensor::zeros(DType::float64, {c.batch, c.n_hid}), "chain");
        auto [cost, updates] = rbm.get_cost_updates(0.1, chain, c.k);
        SharedVariable set_x = shared(data, "set_x", true);
        const long bs = c.batch;
        Function train = function({index}, {cost}, updates, {{x, set_x[{slice(index * bs, (index + 1) * bs)}]}});
        HandRBM hand(c, rbm.W.get_value());
        train({0});
        auto [t_compiled, t_hand] = interleaved_median_seconds(
            5,
            [&] {
                for (int s = 0; s < steps; ++s) sink = train.scalar({static_cast<long>(s)});
            },
            [&] {
                for (int s = 0; s < steps; ++s) {
                    Eigen::Map<const Mat> xs(data.data<double>() + static_cast<std::ptrdiff_t>(s) * c.batch * c.n_vis,
                                             c.batch, c.n_vis);
                    sink = hand.step(xs, 0.1);
                }
            });
        t_compiled /= steps;
        t_hand /= steps;
        if (config().profile) std::printf("%s\n", train.profile_summary().c_str());
        const double per_epoch = 50000.0 / c.batch;
        fmt::print("{}: {} visible, {} hidden, batch {}, k {} ({}): compiled {:.2f} ms/step ({:.0f} s/epoch), "
                   "hand-written {:.2f} ms/step ({:.0f} s/epoch), ratio {:.2f}\n",
                   c.name, c.n_vis, c.n_hid, c.batch, c.k, c.persistent ? "PCD" : "CD", t_compiled * 1e3,
                   t_compiled * per_epoch, t_hand * 1e3, t_hand * per_epoch, t_compiled / t_hand);
        ratios.push_back(t_compiled / t_hand);
        // For bench/run_all, with the step's products counted: the positive phase, 2 per Gibbs
        // step, the two gradient products and, for the rbm, the pseudo-likelihood's two free
        // energies (2 m n k flops each).
        const double products = 1 + 2.0 * c.k + 2 + (c.persistent ? 2 : 0);
        const double gflop = products * 2.0 * c.batch * c.n_vis * c.n_hid * per_epoch / 1e9;
        fmt::print("row {} float64 {} {:.4f} {:.4f} {:.2f} {:.2f}\n", c.name, num_threads(), t_compiled * per_epoch,
                   t_hand * per_epoch, gflop / (t_compiled * per_epoch), gflop / (t_hand * per_epoch));
    }
    fmt::print("rbm ratio rbm={:.2f} dbn={:.2f}\n", ratios[0], ratios[1]);
    return 0;
}
