// bench_rnn: a recurrent network's training step, compiled by theanine (scan and its
// gradient, backpropagation through time), against a hand-written C++ loop of the same step.
//
// The model reads each MNIST image as a sequence of its 28 rows (28 pixels each):
// h_t = tanh(x_t W + h_{t-1} U + b) from h_0 = 0, 128 hidden units, then a softmax
// regression on h_28 (the tutorials' LogisticRegression), NLL cost, SGD with lr 0.1 on
// W, U, b and the regression's W and b; minibatches of 20 images, 2500 per epoch. The
// theanine graph is what a Theano user writes: scan over x.reshape(B, 28, 28).dimshuffle(1,
// 0, 2) with W, U, b as non-sequences, grad of the cost, the updates.
//
// The hand-written loop: buffers preallocated, the rows of each minibatch copied time-major
// once, the forward loop keeping every h_t, the backward loop computing only dA_t and
// dh_{t-1} = dA_t U^T per step, and the weight gradients after it as two products over all
// steps at once (k = 28 * 20: X^T dA and H^T dA). With two threads each owns half of the
// hidden units (its columns of W, U, b and rows of the regression's W), one barrier per step
// forward and backward. Products are Eigen's. With no randomness both compute the same
// numbers: the mean costs agree to rounding.
//
// Output: per dtype and thread count, seconds per epoch of each, GFLOP/s and the ratio
// theanine / hand; `row rnn ...` lines for bench/run_all.
#include <omp.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <string>
#include <vector>

#include <Eigen/Core>

#include "bench/flags.hpp"
#include "bench/timing.hpp"
#include "examples/io/training.hpp"
#include "theanine.hpp"

using namespace theanine;
using theanine::bench::Clock;
using theanine::bench::median;
using theanine::bench::ModelFlags;
using theanine::bench::parse_model_flags;
using theanine::bench::print_row;
using theanine::bench::seconds_since;

namespace {

constexpr int kSteps = 28, kRow = 28, kHid = 128, kOut = 10, kBatch = 20;
constexpr double kLr = 0.1;

template <class T>
struct HandRNN {
    using Mat = Eigen::Matrix<T, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;
    using Map = Eigen::Map<Mat>;
    using CMap = Eigen::Map<const Mat>;
    using Strided = Eigen::Map<Mat, 0, Eigen::OuterStride<>>;
    int threads;
    Mat W, U, V;            // (28 x 128), (128 x 128), (128 x 10)
    std::vector<T> b, c;
    Mat X;                  // (28 * 20 x 28): the minibatch's rows, time-major
    Mat H;                  // (29 * 20 x 128): h_0 .. h_28
    Mat dA;                 // (28 * 20 x 128): dA_t for every step
    Mat dH[2];              // (20 x 128) dh of the current step, double-buffered
    std::vector<T> part_logits;  // per thread h_28[:, own] V[own, :]
    double cost = 0;

    HandRNN(int nt, const Tensor& Wv, const Tensor& Uv)
        : threads(nt), W(kRow, kHid), U(kHid, kHid), V(Mat::Zero(kHid, kOut)), b(kHid, T(0)), c(kOut, T(0)),
          X(kSteps * kBatch, kRow), H(Mat::Zero((kSteps + 1) * kBatch, kHid)), dA(kSteps * kBatch, kHid),
          part_logits(static_cast<std::size_t>(nt) * kBatch * kOut) {
        Tensor w = Wv.astype(dtype_of<T>()), u = Uv.astype(dtype_of<T>());
        std::memcpy(W.data(), w.raw_data(), sizeof(T) * kRow * kHid);
        std::memcpy(U.data(), u.raw_data(), sizeof(T) * kHid * kHid);
        for (auto& d : dH) d.resize(kBatch, kHid);
    }

    double step(const T* x, const std::int64_t* y) {
        for (int t = 0; t < kSteps; ++t) {
            for (int i = 0; i < kBatch; ++i) {
                std::memcpy(X.data() + (t * kBatch + i) * kRow, x + i * kSteps * kRow + t * kRow, sizeof(T) * kRow);
            }
        }
        const T lr = static_cast<T>(kLr);
#pragma omp parallel num_threads(threads)
        {
            const int th = omp_get_thread_num(), nt = omp_get_num_threads();
            const int h0 = kHid * th / nt, h1 = kHid * (th + 1) / nt, hn = h1 - h0;
            auto bo = Eigen::Map<Eigen::Array<T, 1, Eigen::Dynamic>>(b.data() + h0, hn);
            // Forward: h_{t+1}[:, own] = tanh(x_t W[:, own] + h_t U[:, own] + b[own]).
            for (int t = 0; t < kSteps; ++t) {
                auto out = H.block((t + 1) * kBatch, h0, kBatch, hn);
                out.noalias() = X.middleRows(t * kBatch, kBatch) * W.middleCols(h0, hn);
                out.noalias() += H.middleRows(t * kBatch, kBatch) * U.middleCols(h0, hn);
                out = (out.array().rowwise() + bo).tanh().matrix();
#pragma omp barrier
            }
            // The regression: every thread sums the partial logits and takes the softmax.
            auto hl = H.block(kSteps * kBatch, h0, kBatch, hn);
            Map P(part_logits.data() + th * kBatch * kOut, kBatch, kOut);
            P.noalias() = hl * V.middleRows(h0, hn);
#pragma omp barrier
            Mat dl = Mat::Zero(kBatch, kOut);
            for (int u = 0; u < nt; ++u) dl += CMap(part_logits.data() + u * kBatch * kOut, kBatch, kOut);
            double nll = 0;
            for (int i = 0; i < kBatch; ++i) {
                auto r = dl.row(i).array();
                r += Eigen::Map<const Eigen::Array<T, 1, kOut>>(c.data());
                const T m = r.maxCoeff();
                r = (r - m).exp();
                const T s = r.sum();
                nll -= std::log(static_cast<double>(r(y[i]) / s));
                r /= s * kBatch;
                r(y[i]) -= T(1) / kBatch;
            }
            if (th == 0) cost = nll / kBatch;
            // dh_28[:, own] = dl V[own, :]^T, then V's own rows (and c on thread 0) step.
            dH[0].middleCols(h0, hn).noalias() = dl * V.middleRows(h0, hn).transpose();
            V.middleRows(h0, hn).noalias() -= lr * (hl.transpose() * dl);
            // Backward: dA_t[:, own] = dh[:, own] (1 - h_{t+1}^2); after the barrier every
            // thread has all of dA_t, and dh_t[:, own] = dA_t U[own, :]^T.
            for (int t = kSteps - 1; t >= 0; --t) {
                const int p = (kSteps - 1 - t) & 1;
                auto a = dA.block(t * kBatch, h0, kBatch, hn);
                auto hv = H.block((t + 1) * kBatch, h0, kBatch, hn).array();
                a = (dH[p].middleCols(h0, hn).array() * (T(1) - hv * hv)).matrix();
#pragma omp barrier
                if (t > 0) dH[1 - p].middleCols(h0, hn).noalias() = dA.middleRows(t * kBatch, kBatch) * U.middleRows(h0, hn).transpose();
            }
            // The weight gradients over all steps at once, each thread on its own columns.
            auto dAo = dA.middleCols(h0, hn);
            W.middleCols(h0, hn).noalias() -= lr * (X.transpose() * dAo);
            U.middleCols(h0, hn).noalias() -= lr * (H.topRows(kSteps * kBatch).transpose() * dAo);
            bo -= lr * dAo.colwise().sum().array();
            // c last: every thread has read it for its softmax before the backward barriers.
            if (th == 0) {
                for (int j = 0; j < kOut; ++j) c[j] -= lr * dl.col(j).sum();
            }
        }
        return cost;
    }
};

struct Result {
    double theanine_s, hand_s, theanine_cost, hand_cost;
};

Result run_config(DType dt, int threads, const io::MnistSplits& d, double fraction, int epochs) {
    config().floatX = dt;
    set_num_threads(threads);
    const std::int64_t n_batches = d.train_x.dim(0) / kBatch;
    const std::int64_t steps = std::max<std::int64_t>(1, static_cast<std::int64_t>(static_cast<double>(n_batches) * fraction));
    RandomState rng(1234);
    const double a = 1 / std::sqrt(static_cast<double>(kHid));
    Tensor Wv = rng.uniform(-a, a, {kRow, kHid}), Uv = rng.uniform(-a, a, {kHid, kHid});
    // The theanine model.
    Variable index = lscalar("index"), x = matrix("x"), y = lvector("y");
    SharedVariable W = shared(Wv.astype(dt), "W"), U = shared(Uv.astype(dt), "U"),
                   b = shared(Tensor::zeros(dt, {kHid}), "b");
    Variable seq = reshape(x, std::vector<std::int64_t>{kBatch, kSteps, kRow}).dimshuffle({1, 0, 2});
    Variable h0 = constant(Tensor::zeros(dt, {kBatch, kHid}), "h0");
    ScanResult r = scan([](const std::vector<Variable>& v) { return ScanStep(tanh(dot(v[0], v[2]) + dot(v[1], v[3]) + v[4])); },
                        {.sequences = {seq}, .outputs_info = {h0}, .non_sequences = {W, U, b}, .name = "rnn"});
    models::LogisticRegression top(r[0][{-1}], kHid, kOut);
    Variable cost = top.negative_log_likelihood(y);
    std::vector<Variable> params{W, U, b, top.W, top.b};
    auto g = grad(cost, params);
    Updates updates;
    for (std::size_t i = 0; i < params.size(); ++i) updates.emplace_back(params[i], params[i] - kLr * g[i]);
    io::SharedSplits sets(d);
    Function train = io::minibatch_function(index, {cost}, updates, x, y, sets.train_x, sets.train_y, kBatch);

    std::vector<double> th, hw;
    Result res{};
    auto go = [&]<class T>() {
        HandRNN<T> hand(threads, Wv, Uv);
        const T* tx = d.train_x.data<T>();
        const auto* ty = d.train_y.data<std::int64_t>();
        auto run_theanine = [&] {
            double c = 0;
            auto t0 = Clock::now();
            for (std::int64_t i = 0; i < steps; ++i) c += train.scalar({static_cast<long>(i)});
            res.theanine_cost = c / static_cast<double>(steps);
            return seconds_since(t0) / static_cast<double>(steps) * static_cast<double>(n_batches);
        };
        auto run_hand = [&] {
            double c = 0;
            auto t0 = Clock::now();
            for (std::int64_t i = 0; i < steps; ++i) c += hand.step(tx + i * kBatch * kSteps * kRow, ty + i * kBatch);
            res.hand_cost = c / static_cast<double>(steps);
            return seconds_since(t0) / static_cast<double>(steps) * static_cast<double>(n_batches);
        };
        run_theanine();  // warm-up (and the kernels' measurement)
        run_hand();
        for (int e = 0; e < epochs; ++e) {
            th.push_back(run_theanine());
            hw.push_back(run_hand());
        }
    };
    if (dt == DType::float32) {
        go.template operator()<float>();
    } else {
        go.template operator()<double>();
    }
    if (config().profile) std::printf("%s\n", train.profile_summary().c_str());
    res.theanine_s = median(th);
    res.hand_s = median(hw);
    return res;
}

}  // namespace

int main(int argc, char** argv) {
    const ModelFlags f = parse_model_flags(argc, argv, "bench_rnn",
                                           "[--fraction F (of an epoch, default 0.2)] [--epochs N (default 3)] [--data DIR]\n"
                                           "                 [--dtype float32|float64] [--threads N (default 1 and 2)]",
                                           0.2);
    const std::string& data = f.data;
    const bool have_mnist = std::filesystem::exists(data + "/train-images-idx3-ubyte") ||
                            std::filesystem::exists(data + "/train-images-idx3-ubyte.gz");
    std::printf("RNN over MNIST rows (28 steps of 28 pixels, 128 tanh units, softmax on the last state), batch %d, %s\n",
                kBatch, have_mnist ? ("MNIST from " + data).c_str() : "random data shaped as MNIST");
    // Products per minibatch: forward x_t W and h U per step, the regression and its two
    // gradient products, dh = dA U^T for 27 steps, X^T dA and H^T dA over all steps.
    const double step_flops = 2.0 * kBatch *
                              (kSteps * (1.0 * kRow * kHid + kHid * kHid) + 3.0 * kHid * kOut +
                               (kSteps - 1.0) * kHid * kHid + kSteps * (1.0 * kRow * kHid + kHid * kHid));
    std::printf("%-8s %-7s %13s %10s %13s %9s %7s  %s\n", "dtype", "threads", "theanine s/ep", "hand s/ep",
                "theanine GF/s", "hand GF/s", "ratio", "mean cost theanine / hand");
    double ratio[2] = {0, 0};
    for (DType dt : f.dtypes) {
        io::MnistSplits d;
        if (have_mnist) {
            d = io::load_mnist_splits(data, dt);
        } else {
            RandomState rs(5);
            d.train_x = rs.uniform(0, 1, {50000, kSteps * kRow}).astype(dt);
            d.train_y = rs.uniform(0, 10, {50000}).astype(DType::int64);
            d.valid_x = d.test_x = d.train_x;
            d.valid_y = d.test_y = d.train_y;
        }
        const double gflop = step_flops * static_cast<double>(d.train_x.dim(0) / kBatch) / 1e9;
        for (int threads : f.threads) {
            Result r = run_config(dt, threads, d, f.fraction, f.epochs);
            std::printf("%-8s %-7d %13.3f %10.3f %13.1f %9.1f %7.3f  %.10g / %.10g\n", std::string(dtype_name(dt)).c_str(),
                        threads, r.theanine_s, r.hand_s, gflop / r.theanine_s, gflop / r.hand_s, r.theanine_s / r.hand_s,
                        r.theanine_cost, r.hand_cost);
            print_row("rnn", dt, threads, r.theanine_s, r.hand_s, gflop);
            ratio[dt == DType::float32 ? 0 : 1] = r.theanine_s / r.hand_s;
        }
    }
    std::printf("ratio rnn float32=%.3f float64=%.3f\n", ratio[0], ratio[1]);
    return 0;
}
