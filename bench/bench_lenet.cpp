// bench_lenet: the compiled LeNet5 training step (models::LeNet5, the convolutional_mlp
// tutorial's network: conv 5x5 + 2x2 max-pool + tanh twice, a tanh hidden layer of 500, softmax
// regression; SGD) against a hand-written C++ loop of the same step, on random data of MNIST's
// shape, batch 500, nkerns 20,50, float64 and float32, in one run.
//
// The hand-written loop is what a user would write with Eigen: per image, the receptive fields
// unrolled (im2col) and multiplied by the filters; max-pooling that remembers where each maximum
// was; the dense layers as Eigen products; images split over the threads with a filter-gradient
// accumulator per thread; buffers kept between steps. Both start from the same parameters and
// their costs after the timed steps are compared (the run fails if they differ).
//
// Output: per dtype, milliseconds per step for both, the ratio compiled / hand, seconds per
// training epoch (100 steps of 500 images) for both, and `lenet ratio float64=X float32=Y`.
#include <omp.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <vector>

#include <Eigen/Dense>
#include <fmt/format.h>

#include "bench/timing.hpp"
#include "theanine.hpp"

using namespace theanine;
using theanine::bench::interleaved_median_seconds;

namespace {

constexpr int kRounds = 5;  // timed rounds of each
constexpr int kBatch = 500, kF0 = 20, kF1 = 50, kHidden = 500, kClasses = 10;

template <class T>
using Mat = Eigen::Matrix<T, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;
template <class T>
using Row = Eigen::Matrix<T, 1, Eigen::Dynamic>;
template <class T>
using MapM = Eigen::Map<Mat<T>>;
template <class T>
using CMapM = Eigen::Map<const Mat<T>>;

template <class T>
Mat<T> to_mat(const Tensor& t, std::int64_t rows, std::int64_t cols) {
    return CMapM<T>(t.astype(dtype_of<T>()).contiguous().template data<T>(), rows, cols);
}

// im2col of one (C, H, W) image for a valid convolution with KxK flipped filters, stride 1:
// col (C*K*K, OH*OW).
template <class T>
void im2col(const T* x, int C, int H, int W, int K, T* col) {
    const int OH = H - K + 1, OW = W - K + 1;
    for (int c = 0; c < C; ++c)
        for (int i = 0; i < K; ++i)
            for (int j = 0; j < K; ++j) {
                T* row = col + ((c * K + i) * K + j) * OH * OW;
                const T* src = x + (c * H + (K - 1 - i)) * W + (K - 1 - j);
                for (int y = 0; y < OH; ++y) std::copy(src + y * W, src + y * W + OW, row + y * OW);
            }
}

template <class T>
void col2im(const T* col, int C, int H, int W, int K, T* gx) {
    const int OH = H - K + 1, OW = W - K + 1;
    std::fill(gx, gx + C * H * W, T(0));
    for (int c = 0; c < C; ++c)
        for (int i = 0; i < K; ++i)
            for (int j = 0; j < K; ++j) {
                const T* row = col + ((c * K + i) * K + j) * OH * OW;
                T* dst = gx + (c * H + (K - 1 - i)) * W + (K - 1 - j);
                for (int y = 0; y < OH; ++y)
                    for (int x = 0; x < OW; ++x) dst[y * W + x] += row[y * OW + x];
            }
}

// 2x2 max-pool of (F, S, S) -> (F, S/2, S/2), remembering the winning offset.
template <class T>
void pool2(const T* in, int F, int S, T* out, int* arg) {
    const int O = S / 2;
    for (int f = 0; f < F; ++f)
        for (int y = 0; y < O; ++y)
            for (int x = 0; x < O; ++x) {
                const T* p = in + (f * S + 2 * y) * S + 2 * x;
                int best = 0;
                T m = p[0];
                const int offs[3] = {1, S, S + 1};
                for (int k = 0; k < 3; ++k)
                    if (p[offs[k]] > m) m = p[offs[k]], best = offs[k];
                out[(f * O + y) * O + x] = m;
                arg[(f * O + y) * O + x] = (f * S + 2 * y) * S + 2 * x + best;
            }
}

template <class T>
class HandLeNet {
public:
    explicit HandLeNet(const models::LeNet5& net)
        : W0(to_mat<T>(net.layer0.W.get_value(), kF0, 25)), W1(to_mat<T>(net.layer1.W.get_value(), kF1, kF0 * 25)),
          W2(to_mat<T>(net.layer2.W.get_value(), kF1 * 16, kHidden)), W3(to_mat<T>(net.layer3.W.get_value(), kHidden, kClasses)),
          b0(Row<T>::Zero(kF0)), b1(Row<T>::Zero(kF1)), b2(Row<T>::Zero(kHidden)), b3(Row<T>::Zero(kClasses)),
          a0(kBatch, kF0 * 144), a1(kBatch, kF1 * 16), arg0(kBatch * kF0 * 144), arg1(kBatch * kF1 * 16), h(kBatch, kHidden),
          p(kBatch, kClasses), dz2(kBatch, kHidden), dA1(kBatch, kF1 * 16) {
        threads = omp_get_max_threads();
        gW0p.assign(threads, Mat<T>::Zero(kF0, 25));
        gW1p.assign(threads, Mat<T>::Zero(kF1, kF0 * 25));
        gb0p.assign(threads, Row<T>::Zero(kF0));
        gb1p.assign(threads, Row<T>::Zero(kF1));
        scratch.resize(static_cast<std::size_t>(threads));
    }

    T step(const Mat<T>& X, const std::vector<int>& y, T lr) {
        // Eigen's own threads for the dense products (theanine keeps Eigen single-threaded).
        Eigen::setNbThreads(threads);
        // ---- forward, images split over the threads
#pragma omp parallel num_threads(threads)
        {
            Scratch& sc = scratch[static_cast<std::size_t>(omp_get_thread_num())];
            auto& [col0, c0, pooled0, col1, c1, pooled1, dc0, dc1, dcol1, da0] = sc;
#pragma omp for schedule(static)
            for (int n = 0; n < kBatch; ++n) {
                im2col<T>(X.data() + n * 784, 1, 28, 28, 5, col0.data());
                MapM<T>(c0.data(), kF0, 576).noalias() = W0 * CMapM<T>(col0.data(), 25, 576);
                pool2<T>(c0.data(), kF0, 24, pooled0.data(), arg0.data() + n * kF0 * 144);
                T* an = a0.data() + n * kF0 * 144;
                for (int f = 0; f < kF0; ++f)
                    for (int k = 0; k < 144; ++k) an[f * 144 + k] = std::tanh(pooled0[f * 144 + k] + b0(f));
                im2col<T>(an, kF0, 12, 12, 5, col1.data());
                MapM<T>(c1.data(), kF1, 64).noalias() = W1 * CMapM<T>(col1.data(), kF0 * 25, 64);
                pool2<T>(c1.data(), kF1, 8, pooled1.data(), arg1.data() + n * kF1 * 16);
                T* a1n = a1.data() + n * kF1 * 16;
                for (int f = 0; f < kF1; ++f)
                    for (int k = 0; k < 16; ++k) a1n[f * 16 + k] = std::tanh(pooled1[f * 16 + k] + b1(f));
            }
        }
        h.noalias() = a1 * W2;
        h.rowwise() += b2;
        h = h.array().tanh().matrix();
        p.noalias() = h * W3;
        p.rowwise() += b3;
        T cost = 0;
        for (int n = 0; n < kBatch; ++n) {
            const T m = p.row(n).maxCoeff();
            p.row(n) = (p.row(n).array() - m).exp().matrix();
            p.row(n) /= p.row(n).sum();
            cost -= std::log(p(n, y[static_cast<std::size_t>(n)]));
        }
        cost /= kBatch;
        // ---- backward of the dense layers
        for (int n = 0; n < kBatch; ++n) p(n, y[static_cast<std::size_t>(n)]) -= 1;
        p /= T(kBatch);
        const Mat<T> gW3 = h.transpose() * p;
        const Row<T> gb3 = p.colwise().sum();
        dz2.noalias() = p * W3.transpose();
        dz2.array() *= (1 - h.array().square());
        const Mat<T> gW2 = a1.transpose() * dz2;
        const Row<T> gb2 = dz2.colwise().sum();
        dA1.noalias() = dz2 * W2.transpose();
        // ---- backward of the convolution layers, images split over the threads
#pragma omp parallel num_threads(threads)
        {
            const int t = omp_get_thread_num();
            gW0p[t].setZero();
            gW1p[t].setZero();
            gb0p[t].setZero();
            gb1p[t].setZero();
            Scratch& sc = scratch[static_cast<std::size_t>(t)];
            auto& [col0, c0, pooled0, col1, c1, pooled1, dc0, dc1, dcol1, da0] = sc;
#pragma omp for schedule(static)
            for (int n = 0; n < kBatch; ++n) {
                // layer 1: through tanh, the pooling, the product
                const T* a1n = a1.data() + n * kF1 * 16;
                const T* g1 = dA1.data() + n * kF1 * 16;
                std::fill(dc1.begin(), dc1.end(), T(0));
                for (int k = 0; k < kF1 * 16; ++k) {
                    const T d = g1[k] * (1 - a1n[k] * a1n[k]);
                    gb1p[t](k / 16) += d;
                    dc1[static_cast<std::size_t>(arg1[static_cast<std::size_t>(n * kF1 * 16 + k)])] += d;
                }
                const T* an = a0.data() + n * kF0 * 144;
                im2col<T>(an, kF0, 12, 12, 5, col1.data());
                gW1p[t].noalias() += CMapM<T>(dc1.data(), kF1, 64) * CMapM<T>(col1.data(), kF0 * 25, 64).transpose();
                MapM<T>(dcol1.data(), kF0 * 25, 64).noalias() = W1.transpose() * CMapM<T>(dc1.data(), kF1, 64);
                col2im<T>(dcol1.data(), kF0, 12, 12, 5, da0.data());
                // layer 0
                std::fill(dc0.begin(), dc0.end(), T(0));
                for (int k = 0; k < kF0 * 144; ++k) {
                    const T d = da0[static_cast<std::size_t>(k)] * (1 - an[k] * an[k]);
                    gb0p[t](k / 144) += d;
                    dc0[static_cast<std::size_t>(arg0[static_cast<std::size_t>(n * kF0 * 144 + k)])] += d;
                }
                im2col<T>(X.data() + n * 784, 1, 28, 28, 5, col0.data());
                gW0p[t].noalias() += CMapM<T>(dc0.data(), kF0, 576) * CMapM<T>(col0.data(), 25, 576).transpose();
            }
        }
        for (int t = 0; t < threads; ++t) {
            W0 -= lr * gW0p[t];
            W1 -= lr * gW1p[t];
            b0 -= lr * gb0p[t];
            b1 -= lr * gb1p[t];
        }
        W2 -= lr * gW2;
        b2 -= lr * gb2;
        W3 -= lr * gW3;
        b3 -= lr * gb3;
        Eigen::setNbThreads(1);
        return cost;
    }

private:
    Mat<T> W0, W1, W2, W3;
    Row<T> b0, b1, b2, b3;
    Mat<T> a0, a1;
    std::vector<int> arg0, arg1;
    Mat<T> h, p, dz2, dA1;
    int threads = 1;
    // Per-thread buffers, kept between steps.
    struct Scratch {
        std::vector<T> col0 = std::vector<T>(25 * 576), c0 = std::vector<T>(kF0 * 576),
                       pooled0 = std::vector<T>(kF0 * 144), col1 = std::vector<T>(kF0 * 25 * 64),
                       c1 = std::vector<T>(kF1 * 64), pooled1 = std::vector<T>(kF1 * 16),
                       dc0 = std::vector<T>(kF0 * 576), dc1 = std::vector<T>(kF1 * 64),
                       dcol1 = std::vector<T>(kF0 * 25 * 64), da0 = std::vector<T>(kF0 * 144);
    };
    std::vector<Scratch> scratch;
    std::vector<Mat<T>> gW0p, gW1p;
    std::vector<Row<T>> gb0p, gb1p;
};

volatile double sink = 0;

template <class T>
double run(DType dt, int steps) {
    config().floatX = dt;
    RandomState data(99);
    const Tensor Xt = data.uniform(0, 1, {kBatch, 784}).astype(dt);
    std::vector<std::int64_t> labels(kBatch);
    std::vector<int> labels_int(kBatch);
    for (int i = 0; i < kBatch; ++i) {
        labels[static_cast<std::size_t>(i)] = static_cast<std::int64_t>(data.uniform(0, 10)) % 10;
        labels_int[static_cast<std::size_t>(i)] = static_cast<int>(labels[static_cast<std::size_t>(i)]);
    }
    const Tensor Yt = Tensor::from_vector<std::int64_t>({kBatch}, labels);
    Variable x = matrix("x"), y = lvector("y");
    RandomState rng(23455);
    models::LeNet5 net(rng, x, kBatch, {kF0, kF1});
    HandLeNet<T> hand(net);
    const auto params = net.params();
    const std::vector<Variable> pv(params.begin(), params.end());
    const auto g = grad(net.negative_log_likelihood(y), pv);
    Updates updates;
    for (std::size_t i = 0; i < params.size(); ++i) updates.emplace_back(params[i], params[i] - 0.1 * g[i]);
    Function train = function({x, y}, {net.negative_log_likelihood(y)}, updates);
    const Mat<T> X = to_mat<T>(Xt, kBatch, 784);
    double c_compiled = 0, c_hand = 0;
    // Warm-up step each, then `steps` timed steps of each in each of kRounds rounds, the two
    // taking turns.
    c_compiled = train.scalar({Xt, Yt});
    c_hand = static_cast<double>(hand.step(X, labels_int, T(0.1)));
    const auto [t_compiled_all, t_hand_all] = interleaved_median_seconds(
        kRounds,
        [&] {
            for (int s = 0; s < steps; ++s) c_compiled = train.scalar({Xt, Yt});
        },
        [&] {
            for (int s = 0; s < steps; ++s) c_hand = static_cast<double>(hand.step(X, labels_int, T(0.1)));
        });
    const double t_compiled = t_compiled_all / steps, t_hand = t_hand_all / steps;
    sink = sink + c_compiled + c_hand;
    if (config().profile) std::printf("%s\n", train.profile_summary().c_str());
    const double tol = dt == DType::float64 ? 1e-9 : 1e-3;
    if (!(std::abs(c_compiled - c_hand) <= tol * std::abs(c_hand))) {
        fmt::print(stderr, "bench_lenet: the compiled and hand-written steps disagree: cost {} vs {}\n", c_compiled,
                   c_hand);
        std::exit(1);
    }
    const double ratio = t_compiled / t_hand;
    fmt::print("{}: batch {}, nkerns {},{}, {} threads: compiled {:.1f} ms/step ({:.1f} s/epoch), hand {:.1f} ms/step "
               "({:.1f} s/epoch), ratio {:.2f}; cost after {} steps {:.12g} (both)\n",
               dtype_name(dt), kBatch, kF0, kF1, num_threads(), t_compiled * 1e3, t_compiled * 100, t_hand * 1e3,
               t_hand * 100, ratio, 1 + kRounds * steps, c_compiled);
    // For bench/run_all (an epoch: 100 steps of 500 images). Flops of the step's products:
    // forward convolutions (20 and 50 filters), hidden and output layers; the backward pass
    // the same again for the weight gradients and for the input gradients but the first layer's.
    const double conv0 = 2.0 * kBatch * kF0 * 24 * 24 * 25, conv1 = 2.0 * kBatch * kF1 * 8 * 8 * kF0 * 25;
    const double dense = 2.0 * kBatch * (kF1 * 4 * 4 * 500 + 500 * 10);
    const double gflop = 100 * (3 * (conv0 + conv1 + dense) - conv0) / 1e9;
    fmt::print("row lenet {} {} {:.4f} {:.4f} {:.2f} {:.2f}\n", dtype_name(dt), num_threads(), t_compiled * 100, t_hand * 100,
               gflop / (t_compiled * 100), gflop / (t_hand * 100));
    return ratio;
}

}  // namespace

int main(int argc, char** argv) {
    int steps = 5;
    if (argc > 1) steps = std::max(1, std::atoi(argv[1]));
    const double r64 = run<double>(DType::float64, steps);
    const double r32 = run<float>(DType::float32, steps);
    fmt::print("lenet ratio float64={:.2f} float32={:.2f}\n", r64, r32);
    return 0;
}
