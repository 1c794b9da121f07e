// bench_dA: theanine's compiled dA training step against a hand-written C++ loop of the
// same model, on the tutorial's shapes (batch 20, 784 visible, 500 hidden, lr 0.1,
// corruption 0.3), in float32 and float64, with 1 and 2 threads.
//
// The hand-written loop is what a careful C++ programmer writes for this model: all buffers
// preallocated, every elementwise pass fused into the loop that produces its input, the two
// W-gradient products done as one GEMM with k = 2*batch ([x~; dz]^T [dy; y]) accumulated
// straight into W with alpha = -lr, and two threads splitting the work by hidden and visible
// columns, each running single-threaded GEMMs on its slice (3 barriers per step, after
// drawing the corruption with the same vectorised MRG generator theanine uses).
//
// The hand-written loop runs twice: with theanine's per-thread product kernels (gemm_slice,
// called by hand on the same slices: the comparison then measures what the compiled graph
// costs over the same kernels), and with Eigen's products.
//
// Output: per configuration the median seconds per epoch (2500 steps) of each, GFLOP/s, and
// the ratios theanine/hand-written; then the compile time of train_da and the per-call
// overhead of a compiled one-add function on scalars. Last line: ratio float32=X float64=Y
// (2 threads).
#include <malloc.h>
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
#include <fmt/format.h>

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

constexpr int kBatch = 20, kVisible = 784, kHidden = 500;
constexpr double kLr = 0.1, kCorruption = 0.3;
constexpr std::int64_t kStepsPerEpoch = 2500;
// 5 products of 2*20*784*500 flops each.
constexpr double kFlopsPerStep = 5.0 * 2 * kBatch * kVisible * kHidden;

// ---------------------------------------------------------------- hand-written loop

// Terms of the atanh series for log1p on [0, 1]: s^2 <= 1/9 per term.
template <class T>
constexpr int kLog1pTerms = std::is_same_v<T, float> ? 7 : 16;

// Products: Eigen's, or theanine's per-thread products (gemm_slice, what its Dot22 and Gemm
// run on each thread's columns, on the kernel chosen for the shape by measurement), called
// by hand on the same slices.
enum class Products { eigen, theanine_kernel };

template <class T, Products kProducts>
struct HandDA {
    using Mat = Eigen::Matrix<T, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;
    using Vec = Eigen::Matrix<T, 1, Eigen::Dynamic>;
    const T* data;       // (n_train, 784)
    std::int64_t n_train;
    Mat W;               // (784, 500)
    Vec b, bp;
    Mat xt_dz;           // (40, 784): rows 0..19 corrupted input, 20..39 dz
    Mat dy_y;            // (40, 500): rows 0..19 dy, 20..39 y
    Mat z;               // (20, 784)
    std::vector<std::array<std::int32_t, 6>> streams;
    std::vector<T> u = std::vector<T>(kBatch * kVisible);
    std::vector<double> cost_part;
    int threads;

    HandDA(const T* d, std::int64_t n, const Tensor& W0, int nthreads)
        : data(d), n_train(n), W(kVisible, kHidden), b(Vec::Zero(kHidden)), bp(Vec::Zero(kVisible)),
          xt_dz(2 * kBatch, kVisible), dy_y(2 * kBatch, kHidden), z(kBatch, kVisible), cost_part(8, 0.0),
          threads(nthreads) {
        Tensor w = W0.astype(dtype_of<T>());
        std::memcpy(W.data(), w.raw_data(), sizeof(T) * kVisible * kHidden);
        mrg::State base;
        base.fill(843828734);
        Tensor st = mrg::substreams(base, 15360);
        streams.resize(15360);
        std::memcpy(streams.data(), st.raw_data(), sizeof(std::int32_t) * 6 * 15360);
    }

    // Column ranges [lo, hi) of n for thread t.
    static std::pair<int, int> part(int n, int t, int nt) {
        int per = (n + nt - 1) / nt;
        return {std::min(n, t * per), std::min(n, (t + 1) * per)};
    }

    double step(std::int64_t index) {
        const T* x = data + index * kBatch * kVisible;
        const T p = static_cast<T>(1 - kCorruption);
        double cost = 0;
        // The corruption draws: the same MRG31k3p substreams and vectorised generator theanine
        // uses (stream e % 15360 for element e), split across the threads by stream.
        mrg::uniform_fill<T>(reinterpret_cast<std::int32_t*>(streams.data()), 15360, kBatch * kVisible, u.data(), T(0),
                             T(1), threads);
#pragma omp parallel num_threads(threads)
        {
            const int t = omp_get_thread_num(), nt = omp_get_num_threads();
            // Corruption: x~ = (u < 1 - level) * x for this thread's visible columns.
            auto [v0, v1] = part(kVisible, t, nt);
            for (int i = 0; i < kBatch; ++i) {
                for (int j = v0; j < v1; ++j) {
                    const int e = i * kVisible + j;
                    xt_dz.data()[e] = u[e] < p ? x[e] : T(0);
                }
            }
#pragma omp barrier
            // y = sigmoid(x~ W + b) for this thread's hidden columns (vectorised logistic).
            auto [h0, h1] = part(kHidden, t, nt);
            const int hn = h1 - h0, vn = v1 - v0;
            auto Y = dy_y.block(kBatch, h0, kBatch, hn);
            if constexpr (kProducts == Products::eigen) {
                Y.noalias() = xt_dz.topRows(kBatch) * W.middleCols(h0, hn);
            } else {
                gemm_slice<T>(dy_y.data() + kBatch * kHidden, kBatch, kHidden, h0, h1, T(1), xt_dz.data(), kBatch,
                              kVisible, false, W.data(), kVisible, kHidden, false, T(0));
            }
            Y = (Y.rowwise() + b.segment(h0, hn)).array().logistic().matrix();
#pragma omp barrier
            // y W^T for this thread's visible columns.
            auto Z = z.middleCols(v0, vn);
            if constexpr (kProducts == Products::eigen) {
                Z.noalias() = dy_y.bottomRows(kBatch) * W.middleRows(v0, vn).transpose();
            } else {
                gemm_slice<T>(z.data(), kBatch, kVisible, v0, v1, T(1), dy_y.data() + kBatch * kHidden, kBatch, kHidden,
                              false, W.data(), kVisible, kHidden, true, T(0));
            }
            // One pass per row over this thread's visible columns: the pre-activation a, the
            // cost and dz = (sigmoid(a) - x)/n. log z = -softplus(-a) and log(1 - z) =
            // -softplus(a) share log1p(exp(-|a|)), so the cost is sum(x max(-a, 0) +
            // (1 - x) max(a, 0) + log1p(exp(-|a|))): finite where z saturates. log1p(e) for
            // e in (0, 1] is 2 atanh(s), s = e / (2 + e) <= 1/3, an odd series in s (the same
            // numerics theanine's fused softplus uses, cheaper than a general log). Row
            // arrays in T keep every expression vectorisable; each row's cost is added in
            // double.
            using RowArr = Eigen::Array<T, 1, Eigen::Dynamic>;
            thread_local RowArr A, E, S, Q, L, G;
            A.resize(vn), E.resize(vn), S.resize(vn), Q.resize(vn), L.resize(vn), G.resize(vn);
            G.setZero();
            double c = 0;
            for (int i = 0; i < kBatch; ++i) {
                Eigen::Map<const RowArr> X(x + i * kVisible + v0, vn);
                A = Z.row(i).array() + bp.segment(v0, vn).array();
                E = (-A.abs()).exp();
                S = E / (E + T(2));
                Q = S * S;
                L.setConstant(T(1) / T(2 * kLog1pTerms<T> - 1));
                for (int k = kLog1pTerms<T> - 2; k >= 0; --k) L = L * Q + T(1) / T(2 * k + 1);
                L = X * (-A).max(T(0)) + (1 - X) * A.max(T(0)) + T(2) * S * L;
                c += static_cast<double>(L.sum());
                auto dz = xt_dz.row(kBatch + i).segment(v0, vn).array();
                dz = (A.logistic() - X) * T(1.0 / kBatch);
                G += dz;
            }
            bp.segment(v0, vn).array() -= static_cast<T>(kLr) * G;
            cost_part[t] = c;
#pragma omp barrier
            // dy = (dz W) * y * (1 - y), then W -= lr [x~; dz]^T [dy; y] for this thread's
            // hidden columns (each thread reads and writes only its own columns of W).
            auto DY = dy_y.block(0, h0, kBatch, hn);
            if constexpr (kProducts == Products::eigen) {
                DY.noalias() = xt_dz.bottomRows(kBatch) * W.middleCols(h0, hn);
            } else {
                gemm_slice<T>(dy_y.data(), kBatch, kHidden, h0, h1, T(1), xt_dz.data() + kBatch * kVisible, kBatch,
                              kVisible, false, W.data(), kVisible, kHidden, false, T(0));
            }
            auto Yv = dy_y.block(kBatch, h0, kBatch, hn).array();
            DY = (DY.array() * Yv * (1 - Yv)).matrix();
            b.segment(h0, hn) -= static_cast<T>(kLr) * DY.colwise().sum();
            if constexpr (kProducts == Products::eigen) {
                W.middleCols(h0, hn).noalias() -= static_cast<T>(kLr) * (xt_dz.transpose() * dy_y.middleCols(h0, hn));
            } else {
                gemm_slice<T>(W.data(), kVisible, kHidden, h0, h1, static_cast<T>(-kLr), xt_dz.data(), 2 * kBatch, kVisible,
                              true, dy_y.data(), 2 * kBatch, kHidden, false, T(1));
            }
        }
        for (int t = 0; t < threads; ++t) cost += cost_part[t];
        return cost / kBatch;
    }
};

// ---------------------------------------------------------------- theanine

struct Compiled {
    Function train;
    SharedVariable W;
    double compile_seconds;
};

Compiled compile_theanine(const SharedVariable& train_set_x, const Tensor& W0) {
    Variable index = lscalar("index");
    Variable x = matrix("x");
    auto rng = std::make_shared<MRG_RandomStreams>(843828734);
    RandomState numpy_rng(123);
    models::dA da(numpy_rng, rng, x, kVisible, kHidden, shared(W0.astype(config().floatX), "W"));
    auto [cost, updates] = da.get_cost_updates(kCorruption, kLr);
    auto t0 = Clock::now();
    Function train = function({index}, {cost}, updates,
                              {{x, subtensor(train_set_x, {slice(index * kBatch, (index + 1) * kBatch)})}});
    return {std::move(train), da.W, seconds_since(t0)};
}

struct Result {
    double theanine_s, hand_s, hand_eigen_s;  // hand_s: the hand loop with theanine's product kernel
};

Result run_config(DType dt, int threads, const Tensor& pixels64, double fraction, int epochs) {
    config().floatX = dt;
    set_num_threads(threads);
    const std::int64_t steps = std::max<std::int64_t>(1, static_cast<std::int64_t>(kStepsPerEpoch * fraction));
    const std::int64_t n_batches = pixels64.dim(0) / kBatch;
    Tensor pixels = pixels64.astype(dt);
    RandomState rng(123);
    rng.randint(1LL << 30);
    const double bound = 4 * std::sqrt(6.0 / (kHidden + kVisible));
    Tensor W0 = rng.uniform(-bound, bound, {kVisible, kHidden});

    SharedVariable train_set_x = shared(pixels, "train_set_x", true);
    Compiled c = compile_theanine(train_set_x, W0);
    std::vector<double> th, hw, he;
    double sink = 0;
    auto run_theanine = [&] {
        auto t0 = Clock::now();
        for (std::int64_t i = 0; i < steps; ++i) sink += c.train.scalar({static_cast<long>(i % n_batches)});
        return seconds_since(t0) / static_cast<double>(steps) * kStepsPerEpoch;
    };
    auto run_hand = [&](auto& h) {
        auto t0 = Clock::now();
        for (std::int64_t i = 0; i < steps; ++i) sink += h.step(i % n_batches);
        return seconds_since(t0) / static_cast<double>(steps) * kStepsPerEpoch;
    };
    auto go = [&]<class T>() {
        HandDA<T, Products::theanine_kernel> h(pixels.data<T>(), pixels.dim(0), W0, threads);
        HandDA<T, Products::eigen> e(pixels.data<T>(), pixels.dim(0), W0, threads);
        run_theanine();  // warm-up
        run_hand(h);
        run_hand(e);
        // Interleaved, so a drift of the machine's speed touches all three alike.
        for (int k = 0; k < epochs; ++k) {
            th.push_back(run_theanine());
            hw.push_back(run_hand(h));
            he.push_back(run_hand(e));
        }
    };
    if (dt == DType::float32) {
        go.template operator()<float>();
    } else {
        go.template operator()<double>();
    }
    if (!std::isfinite(sink)) std::printf("warning: non-finite cost\n");
    if (config().profile) std::printf("%s\n", c.train.profile_summary().c_str());
    return {median(th), median(hw), median(he)};
}

// Microseconds per call of the tutorial's corruption (MRG mask times x) on a 20x784
// batch, and of the step's five matrix products as compiled functions, in floatX.
std::pair<double, double> mask_and_products_us(DType dt, int threads) {
    config().floatX = dt;
    set_num_threads(threads);
    RandomState rs(7);
    Tensor xv = rs.uniform(0, 1, {kBatch, kVisible}).astype(dt);
    Tensor yv = rs.uniform(0, 1, {kBatch, kHidden}).astype(dt);
    Variable x = matrix("x"), y = matrix("y");
    auto rng = std::make_shared<MRG_RandomStreams>(843828734);
    Function mask = function({x}, {rng->binomial(x.shape(), 1, 0.7, dt) * x});
    SharedVariable W = shared(rs.uniform(-0.1, 0.1, {kVisible, kHidden}).astype(dt), "W");
    Variable both_x = matrix("bx"), both_y = matrix("by");
    Function products = function({x, y, both_x, both_y}, {dot(x, W), dot(y, W.T()), dot(x, W)},
                                 {{W, W - 0.1 * dot(both_x.T(), both_y)}});
    Tensor bx = rs.uniform(0, 1, {2 * kBatch, kVisible}).astype(dt), by = rs.uniform(0, 1, {2 * kBatch, kHidden}).astype(dt);
    const int n = 400;
    auto time = [&](auto&& call) {
        for (int i = 0; i < 20; ++i) call();
        auto t0 = Clock::now();
        for (int i = 0; i < n; ++i) call();
        return seconds_since(t0) / n * 1e6;
    };
    double m = time([&] { mask({xv}); });
    double p = time([&] { products({xv, yv, bx, by}); });
    return {m, p};
}

double per_call_overhead() {
    config().floatX = DType::float64;
    Variable a = scalar("a"), b = scalar("b");
    Function f = function({a, b}, {a + b});
    const int n = 200000;
    double s = 0;
    for (int i = 0; i < 1000; ++i) s += f.scalar({1.0, 2.0});
    auto t0 = Clock::now();
    for (int i = 0; i < n; ++i) s += f.scalar({static_cast<double>(i), 2.0});
    double per = seconds_since(t0) / n;
    if (s == 0) std::printf(" ");
    return per;
}

}  // namespace

int main(int argc, char** argv) {
    // Eigen allocates its product workspace on every product; keep freed blocks in the heap
    // instead of returning them to the system (both loops benefit alike).
    mallopt(M_MMAP_THRESHOLD, 256 << 20);
    mallopt(M_TRIM_THRESHOLD, 512 << 20);
    const ModelFlags f = parse_model_flags(argc, argv, "bench_dA",
                                           "[--fraction F (of an epoch, default 1)] [--epochs N (default 3)] [--data DIR]\n"
                                           "                [--dtype float32|float64 (default both)] [--threads N (default 1 and 2)]",
                                           1.0);
    const std::string& data = f.data;
    const double fraction = f.fraction;
    const int epochs = f.epochs;
    const std::vector<DType>& dtypes = f.dtypes;
    const std::vector<int>& thread_counts = f.threads;
    Tensor pixels;
    if (std::filesystem::exists(data + "/train-images-idx3-ubyte") || std::filesystem::exists(data + "/train-images-idx3-ubyte.gz")) {
        io::Mnist m = io::load_mnist(data);
        pixels = io::mnist_pixels(m.train_images, 0, 50000, DType::float64);
        std::printf("data: MNIST from %s (50000 x 784)\n", data.c_str());
    } else {
        RandomState rs(5);
        pixels = rs.uniform(0, 1, {50000, kVisible});
        std::printf("data: random 50000 x 784 (no MNIST in %s)\n", data.c_str());
    }
    std::printf("steps per measured epoch: %lld of 2500, %d epochs, median reported\n",
                static_cast<long long>(std::max<std::int64_t>(1, static_cast<std::int64_t>(kStepsPerEpoch * fraction))), epochs);
    std::printf("hand: the hand-written loop with theanine's product kernels (gemm_slice, chosen per shape by "
                "measurement); hand-Eigen: the same loop with Eigen's products\n");
    std::printf("%-8s %-7s %13s %10s %12s %13s %9s %12s %7s %11s\n", "dtype", "threads", "theanine s/ep", "hand s/ep",
                "hand-Eigen s/ep", "theanine GF/s", "hand GF/s", "h-Eigen GF/s", "ratio", "vs h-Eigen");
    double r32 = 0, r64 = 0;
    for (DType dt : dtypes) {
        for (int threads : thread_counts) {
            Result r = run_config(dt, threads, pixels, fraction, epochs);
            const double gflop = kFlopsPerStep * kStepsPerEpoch / 1e9;
            std::printf("%-8s %-7d %13.3f %10.3f %15.3f %13.1f %9.1f %12.1f %7.3f %11.3f\n",
                        std::string(dtype_name(dt)).c_str(), threads, r.theanine_s, r.hand_s, r.hand_eigen_s,
                        gflop / r.theanine_s, gflop / r.hand_s, gflop / r.hand_eigen_s, r.theanine_s / r.hand_s,
                        r.theanine_s / r.hand_eigen_s);
            print_row("dA", dt, threads, r.theanine_s, r.hand_s, gflop);
            if (threads == 2) (dt == DType::float32 ? r32 : r64) = r.theanine_s / r.hand_s;
        }
    }
    std::printf("product kernels (theanine and hand; each shape's columns per thread):\n");
    for (const ProductChoice& p : product_choices()) std::printf("  %s\n", p.str().c_str());
    {
        config().floatX = DType::float64;
        RandomState rs(1);
        SharedVariable tx = shared(rs.uniform(0, 1, {200, kVisible}), "x", true);
        std::vector<double> ts;
        for (int i = 0; i < 5; ++i) ts.push_back(compile_theanine(tx, rs.uniform(-0.1, 0.1, {kVisible, kHidden})).compile_seconds);
        std::printf("compile time of train_da: %.2f ms (median of 5)\n", median(ts) * 1e3);
    }
    for (DType dt : dtypes) {
        for (int threads : thread_counts) {
            auto [m, p] = mask_and_products_us(dt, threads);
            std::printf("%s, %d threads: corruption mask %.1f us per batch, the 5 products %.1f us: %.1f%%\n",
                        std::string(dtype_name(dt)).c_str(), threads, m, p, 100 * m / p);
        }
    }
    std::printf("per-call overhead of a compiled scalar add: %.0f ns\n", per_call_overhead() * 1e9);
    std::printf("ratio float32=%.3f float64=%.3f\n", r32, r64);
    return 0;
}
