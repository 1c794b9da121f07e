// bench_sda: a layer of the SdA tutorial's pretraining, compiled by theanine, against a
// hand-written C++ loop of the same step on the same product kernels (its limit).
//
// The layer is the second of SdA(784, [1000, 1000]): each step feeds the minibatch through
// the first sigmoid layer (x W1 + b1, 784 -> 1000, not trained here), corrupts that input
// (level 0.2, MRG streams), and takes one SGD step (lr 0.001) of the 1000 -> 1000 dA on it
// (tied weights, cross-entropy against the uncorrupted input): the function
// SdA::pretraining_functions builds for layer 1. The tutorial trains with minibatches of 1,
// so every product is a matrix-vector one and an epoch is 50000 steps; --batch changes it.
//
// The hand-written loop: buffers preallocated, elementwise passes fused into the pass that
// produces their input, the two W-gradient products as one product with k = 2 * batch
// accumulated straight into W (alpha = -lr), and the threads splitting the layers' units
// (each owns its slice of the first layer's outputs, of the dA's visible units and of its
// hidden units: W's columns, which it alone writes), 3 barriers per step. Its products are
// gemm_slice, the per-thread kernels theanine chose for each shape by measurement.
//
// Output: per dtype and thread count, seconds per epoch of each, GFLOP/s and the ratio
// theanine / hand; `row sda ...` lines for bench/run_all.
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
#include "examples/io/mnist.hpp"
#include "theanine.hpp"

using namespace theanine;
using theanine::bench::Clock;
using theanine::bench::median;
using theanine::bench::ModelFlags;
using theanine::bench::parse_model_flags;
using theanine::bench::print_row;
using theanine::bench::seconds_since;

namespace {

constexpr int kIn = 784, kVis = 1000, kHid = 1000;
constexpr double kLr = 0.001, kCorruption = 0.2;
constexpr std::int64_t kTrainRows = 50000;

template <class T>
struct HandLayer {
    using Mat = Eigen::Matrix<T, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;
    using Vec = Eigen::Matrix<T, 1, Eigen::Dynamic>;
    using RowArr = Eigen::Array<T, 1, Eigen::Dynamic>;
    const T* data;
    std::int64_t B;
    int threads;
    Mat W1, W;      // (784 x 1000) first layer, (1000 x 1000) the dA's
    Vec b1, b, bp;  // first layer's bias, the dA's hidden and visible biases
    Mat h;          // (B x 1000) the layer's clean input
    Mat xt_dz;      // (2B x 1000): rows 0..B-1 corrupted input, B..2B-1 dz
    Mat dy_y;       // (2B x 1000): rows 0..B-1 dy, B..2B-1 y
    Mat z;          // (B x 1000) y W^T
    Tensor streams;
    std::int64_t n_streams;
    std::vector<T> u;
    std::vector<double> cost_part = std::vector<double>(64, 0.0);

    HandLayer(const T* d, std::int64_t batch, int nt, const Tensor& W1v, const Tensor& b1v, const Tensor& Wv)
        : data(d), B(batch), threads(nt), W1(kIn, kVis), W(kVis, kHid), b1(kVis), b(Vec::Zero(kHid)),
          bp(Vec::Zero(kVis)), h(B, kVis), xt_dz(2 * B, kVis), dy_y(2 * B, kHid), z(B, kVis),
          u(static_cast<std::size_t>(B * kVis)) {
        auto copy = [](const Tensor& src, T* dst) {
            Tensor c = src.astype(dtype_of<T>());
            std::memcpy(dst, c.raw_data(), sizeof(T) * static_cast<std::size_t>(c.size()));
        };
        copy(W1v, W1.data());
        copy(b1v, b1.data());
        copy(Wv, W.data());
        mrg::State base;
        base.fill(843828734);
        n_streams = mrg::guess_n_streams(B * kVis);
        streams = mrg::substreams(base, n_streams);
    }

    double step(std::int64_t index) {
        const T* x = data + index * B * kIn;
        const T keep = static_cast<T>(1 - kCorruption), lr = static_cast<T>(kLr);
        mrg::uniform_fill<T>(streams.data<std::int32_t>(), n_streams, B * kVis, u.data(), T(0), T(1), threads);
#pragma omp parallel num_threads(threads)
        {
            const int t = omp_get_thread_num(), nt = omp_get_num_threads();
            // The first layer's outputs in this thread's slice, and their corruption.
            auto [v0, v1] = column_slice(kVis, t, nt);
            const std::int64_t vn = v1 - v0;
            if (vn > 0) {
                gemm_slice<T>(h.data(), B, kVis, v0, v1, T(1), x, B, kIn, false, W1.data(), kIn, kVis, false, T(0));
                for (std::int64_t i = 0; i < B; ++i) {
                    auto hr = h.row(i).segment(v0, vn).array();
                    hr = (hr + b1.segment(v0, vn).array()).logistic();
                    const T* ur = u.data() + i * kVis + v0;
                    T* xr = xt_dz.data() + i * kVis + v0;
                    for (std::int64_t j = 0; j < vn; ++j) xr[j] = ur[j] < keep ? hr[j] : T(0);
                }
            }
#pragma omp barrier
            // y = sigmoid(x~ W + b) for this thread's hidden columns.
            auto [h0, h1] = column_slice(kHid, t, nt);
            const std::int64_t hn = h1 - h0;
            if (hn > 0) {
                gemm_slice<T>(dy_y.data() + B * kHid, B, kHid, h0, h1, T(1), xt_dz.data(), B, kVis, false, W.data(), kVis,
                              kHid, false, T(0));
                auto Y = dy_y.block(B, h0, B, hn).array();
                Y = (Y.rowwise() + b.segment(h0, hn).array()).logistic();
            }
#pragma omp barrier
            // z = sigmoid(y W^T + b'), the cost and dz = (z - h) / B for this thread's visible
            // units; the cost as sum(h softplus(-a) + (1 - h) softplus(a)).
            double c = 0;
            if (vn > 0) {
                gemm_slice<T>(z.data(), B, kVis, v0, v1, T(1), dy_y.data() + B * kHid, B, kHid, false, W.data(), kVis, kHid,
                              true, T(0));
                thread_local RowArr A, L, G;
                G.setZero(vn);
                for (std::int64_t i = 0; i < B; ++i) {
                    auto X = h.row(i).segment(v0, vn).array();
                    A = z.row(i).segment(v0, vn).array() + bp.segment(v0, vn).array();
                    L = (-A.abs()).exp().log1p();
                    c += static_cast<double>((X * ((-A).max(T(0)) + L) + (1 - X) * (A.max(T(0)) + L)).sum());
                    auto dz = xt_dz.row(B + i).segment(v0, vn).array();
                    dz = (A.logistic() - X) * (T(1) / static_cast<T>(B));
                    G += dz;
                }
                bp.segment(v0, vn).array() -= lr * G;
            }
            cost_part[static_cast<std::size_t>(t)] = c;
#pragma omp barrier
            // dy = (dz W) y (1 - y), then W[:, own] -= lr [x~; dz]^T [dy; y][:, own].
            if (hn > 0) {
                gemm_slice<T>(dy_y.data(), B, kHid, h0, h1, T(1), xt_dz.data() + B * kVis, B, kVis, false, W.data(), kVis,
                              kHid, false, T(0));
                auto DY = dy_y.block(0, h0, B, hn).array();
                auto Yv = dy_y.block(B, h0, B, hn).array();
                DY = DY * Yv * (1 - Yv);
                b.segment(h0, hn) -= lr * dy_y.block(0, h0, B, hn).colwise().sum();
                gemm_slice<T>(W.data(), kVis, kHid, h0, h1, -lr, xt_dz.data(), 2 * B, kVis, true, dy_y.data(), 2 * B, kHid,
                              false, T(1));
            }
        }
        double cost = 0;
        for (int t = 0; t < threads; ++t) cost += cost_part[static_cast<std::size_t>(t)];
        return cost / static_cast<double>(B);
    }
};

struct Result {
    double theanine_s, hand_s, theanine_cost, hand_cost;
};

Result run_config(DType dt, int threads, const Tensor& pixels64, long batch, double fraction, int epochs) {
    config().floatX = dt;
    set_num_threads(threads);
    Tensor pixels = pixels64.astype(dt);
    const std::int64_t n_batches = pixels.dim(0) / batch;
    const std::int64_t steps = std::max<std::int64_t>(1, static_cast<std::int64_t>(static_cast<double>(n_batches) * fraction));
    SharedVariable train_x = shared(pixels, "train_set_x", true);
    RandomState numpy_rng(89677);
    auto theano_rng = std::make_shared<MRG_RandomStreams>(843828734);
    models::SdA sda(numpy_rng, theano_rng, kIn, {kVis, kHid}, 10);
    std::vector<Function> fns = sda.pretraining_functions(train_x, batch);
    Function& layer = fns[1];
    std::vector<double> th, hw;
    Result r{};
    auto go = [&]<class T>() {
        HandLayer<T> hand(pixels.data<T>(), batch, threads, sda.sigmoid_layers[0].W.get_value(),
                          sda.sigmoid_layers[0].b.get_value(), sda.sigmoid_layers[1].W.get_value());
        auto run_theanine = [&] {
            double c = 0;
            auto t0 = Clock::now();
            for (std::int64_t i = 0; i < steps; ++i) {
                c += layer.scalar({static_cast<long>(i), kCorruption, kLr});
            }
            r.theanine_cost = c / static_cast<double>(steps);
            return seconds_since(t0) / static_cast<double>(steps) * static_cast<double>(n_batches);
        };
        auto run_hand = [&] {
            double c = 0;
            auto t0 = Clock::now();
            for (std::int64_t i = 0; i < steps; ++i) c += hand.step(i);
            r.hand_cost = c / static_cast<double>(steps);
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
    r.theanine_s = median(th);
    r.hand_s = median(hw);
    if (config().profile) std::printf("%s\n", layer.profile_summary().c_str());
    return r;
}

}  // namespace

int main(int argc, char** argv) {
    long batch = 1;
    const ModelFlags f = parse_model_flags(
        argc, argv, "bench_sda",
        "[--fraction F (of an epoch, default 0.05)] [--epochs N (default 3)] [--batch N (default 1)]\n"
        "                 [--data DIR] [--dtype float32|float64] [--threads N (default 1 and 2)]",
        0.05, [&](const std::string& flag, const std::function<std::string()>& value) {
            if (flag != "--batch") return false;
            batch = std::stol(value());
            return true;
        });
    if (batch < 1 || batch > kTrainRows) {
        std::fprintf(stderr, "bench_sda: --batch must be in [1, %lld]\n", static_cast<long long>(kTrainRows));
        return 2;
    }
    const std::string& data = f.data;
    const double fraction = f.fraction;
    const int epochs = f.epochs;
    Tensor pixels;
    if (std::filesystem::exists(data + "/train-images-idx3-ubyte") || std::filesystem::exists(data + "/train-images-idx3-ubyte.gz")) {
        io::Mnist m = io::load_mnist(data);
        pixels = io::mnist_pixels(m.train_images, 0, kTrainRows, DType::float64);
        std::printf("data: MNIST from %s (50000 x 784)\n", data.c_str());
    } else {
        pixels = RandomState(5).uniform(0, 1, {kTrainRows, kIn});
        std::printf("data: random 50000 x 784 (no MNIST in %s)\n", data.c_str());
    }
    const std::int64_t n_batches = kTrainRows / batch;
    std::printf("SdA layer 2 pretraining (784 -> 1000 sigmoid, then the 1000 -> 1000 dA), batch %ld, %lld of %lld steps "
                "per measured epoch, %d epochs, median reported\n",
                batch, static_cast<long long>(std::max<std::int64_t>(1, static_cast<std::int64_t>(n_batches * fraction))),
                static_cast<long long>(n_batches), epochs);
    // Products per step: x W1, x~ W, y W^T, dz W, and the k = 2B weight gradient.
    const double step_flops = 2.0 * batch * (1.0 * kIn * kVis + 5.0 * kVis * kHid);
    const double gflop = step_flops * static_cast<double>(n_batches) / 1e9;
    std::printf("%-8s %-7s %13s %10s %13s %9s %7s  %s\n", "dtype", "threads", "theanine s/ep", "hand s/ep",
                "theanine GF/s", "hand GF/s", "ratio", "mean cost theanine / hand");
    double ratio[2] = {0, 0};
    for (DType dt : f.dtypes) {
        for (int threads : f.threads) {
            Result r = run_config(dt, threads, pixels, batch, fraction, epochs);
            std::printf("%-8s %-7d %13.3f %10.3f %13.1f %9.1f %7.3f  %.6g / %.6g\n", std::string(dtype_name(dt)).c_str(),
                        threads, r.theanine_s, r.hand_s, gflop / r.theanine_s, gflop / r.hand_s, r.theanine_s / r.hand_s,
                        r.theanine_cost, r.hand_cost);
            print_row("sda", dt, threads, r.theanine_s, r.hand_s, gflop);
            ratio[dt == DType::float32 ? 0 : 1] = r.theanine_s / r.hand_s;
        }
    }
    std::printf("product kernels (each shape's columns per thread):\n");
    for (const ProductChoice& p : product_choices()) std::printf("  %s\n", p.str().c_str());
    std::printf("ratio sda float32=%.3f float64=%.3f\n", ratio[0], ratio[1]);
    return 0;
}
