// bench_scan: the per-step cost of a compiled scan against the same loop written by hand in
// C++, measured in one run:
//   accumulate  s_t = s_{t-1} + x_t over a float64 vector (the loop machinery alone)
//   rnn         h_t = tanh(x_t W + h_{t-1} U + b), batch 20, 100 inputs, 100 hidden, float64;
//               the hand-written loop uses Eigen's products and the same tanh
// Output: nanoseconds per step for both and their ratio, then the line
// `scan accumulate=X rnn=Y` (scan time / hand-written time).
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
using theanine::bench::median_seconds;

namespace {


volatile double sink = 0;

}  // namespace

int main(int argc, char** argv) {
    const int reps = argc > 1 ? std::max(3, std::atoi(argv[1])) : 9;
    set_num_threads(1);

    // accumulate
    const std::int64_t n_acc = 100000;
    Tensor xv = RandomState(1).uniform(-1, 1, {n_acc});
    Variable x = vector("x"), s0 = scalar("s0");
    ScanResult acc = scan([](const std::vector<Variable>& a) { return ScanStep(a[0] + a[1]); }, {x}, {s0});
    Function f_acc = function({x, s0}, {acc[0]});
    f_acc({xv, 0.0});
    const double t_scan_acc = median_seconds(reps, [&] { sink = f_acc({xv, 0.0})[0].data<double>()[n_acc - 1]; });
    std::vector<double> out(static_cast<std::size_t>(n_acc));
    const double* xd = xv.data<double>();
    const double t_hand_acc = median_seconds(reps, [&] {
        double s = 0;
        for (std::int64_t t = 0; t < n_acc; ++t) {
            s = xd[t] + s;
            out[static_cast<std::size_t>(t)] = s;
        }
        sink = out.back();
    });

    // rnn
    const int steps = 200, batch = 20, nin = 100, nh = 100;
    Tensor Xv = RandomState(2).uniform(-1, 1, {steps, batch, nin}), Wv = RandomState(3).uniform(-0.1, 0.1, {nin, nh}),
           Uv = RandomState(4).uniform(-0.1, 0.1, {nh, nh}), bv = RandomState(5).uniform(-0.1, 0.1, {nh}),
           hv = Tensor::zeros(DType::float64, {batch, nh});
    Variable X = tensor3("X"), h0 = matrix("h0"), W = matrix("W"), U = matrix("U"), b = vector("b");
    ScanResult rnn = scan(
        [](const std::vector<Variable>& a) { return ScanStep(tanh(dot(a[0], a[2]) + dot(a[1], a[3]) + a[4])); }, {X},
        {h0}, {W, U, b});
    Function f_rnn = function({X, h0, W, U, b}, {rnn[0]});
    f_rnn({Xv, hv, Wv, Uv, bv});
    const double t_scan_rnn = median_seconds(reps, [&] { sink = f_rnn({Xv, hv, Wv, Uv, bv})[0].data<double>()[0]; });
    using RowMat = Eigen::Matrix<double, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;
    Eigen::Map<const RowMat> We(Wv.data<double>(), nin, nh), Ue(Uv.data<double>(), nh, nh);
    Eigen::Map<const Eigen::RowVectorXd> be(bv.data<double>(), nh);
    std::vector<double> hs(static_cast<std::size_t>(steps) * batch * nh);
    RowMat h = RowMat::Zero(batch, nh), a(batch, nh);
    const double t_hand_rnn = median_seconds(reps, [&] {
        h.setZero();
        for (int t = 0; t < steps; ++t) {
            Eigen::Map<const RowMat> xt(Xv.data<double>() + static_cast<std::ptrdiff_t>(t) * batch * nin, batch, nin);
            a.noalias() = xt * We;
            a.noalias() += h * Ue;
            for (int r = 0; r < batch; ++r) {
                for (int c = 0; c < nh; ++c) h(r, c) = std::tanh(a(r, c) + be(c));
            }
            std::copy(h.data(), h.data() + batch * nh, hs.data() + static_cast<std::ptrdiff_t>(t) * batch * nh);
        }
        sink = hs[0];
    });

    const double acc_scan_ns = t_scan_acc / n_acc * 1e9, acc_hand_ns = t_hand_acc / n_acc * 1e9;
    const double rnn_scan_ns = t_scan_rnn / steps * 1e9, rnn_hand_ns = t_hand_rnn / steps * 1e9;
    fmt::print("accumulate ({} steps): scan {:.1f} ns/step, hand-written {:.2f} ns/step, ratio {:.1f}\n", n_acc,
               acc_scan_ns, acc_hand_ns, acc_scan_ns / acc_hand_ns);
    fmt::print("rnn (batch {}, {} in, {} hidden, {} steps): scan {:.0f} ns/step, hand-written {:.0f} ns/step, ratio {:.2f}\n",
               batch, nin, nh, steps, rnn_scan_ns, rnn_hand_ns, rnn_scan_ns / rnn_hand_ns);
    fmt::print("scan accumulate={:.1f} rnn={:.2f}\n", acc_scan_ns / acc_hand_ns, rnn_scan_ns / rnn_hand_ns);
    return 0;
}
