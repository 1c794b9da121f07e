// bench_supervised: an epoch of the supervised tutorials' models, compiled by theanine, against
// a hand-written C++ loop of the same epoch on the best product kernels (its limit):
//
//   logreg  logistic_sgd: softmax regression 784-10, batch 600, lr 0.13, 83 minibatches
//   mlp     mlp: 784-500-10, tanh, softmax NLL + 0.0001 * L2, batch 20, lr 0.01, 2500 minibatches
//
// An epoch is what the tutorial programs do per epoch: every training minibatch, then the
// error rate over the validation and the test sets (minibatches of the same size).
//
// The hand-written loops are what a careful C++ programmer writes for these models: buffers
// preallocated, every elementwise pass fused into the pass that produces its input, the
// weight decay folded into the update's product (beta = 1 - 2 lr L2), and two threads
// splitting the work so that each owns its part of the parameters (the mlp: its hidden
// units' columns of W1, rows of W2 and entries of b1; logreg: its rows of W), with one
// barrier per minibatch. Products go through gemm_slice (the kernels theanine chose for each
// shape by measurement) or, for the small ones, Eigen.
//
// Output: per dtype and thread count, seconds per epoch of each, GFLOP/s of the training
// products, and the ratio theanine / hand; last line "ratio <model> float32=X float64=Y" at
// the largest thread count.
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

struct ModelSpec {
    std::string name;
    int hidden;  // 0: logistic regression
    long batch;
    double lr, l2;
};

struct Data {
    io::MnistSplits splits;
    std::int64_t n_train, n_valid, n_test;  // minibatches
};

template <class T>
using Mat = Eigen::Matrix<T, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;
template <class T>
using Map = Eigen::Map<Mat<T>>;
template <class T>
using CMap = Eigen::Map<const Mat<T>>;

constexpr int kIn = 784, kOut = 10;

// Softmax NLL rows [r0, r1) of logits (b x 10, modified into dL = (softmax - onehot) / b);
// returns the sum of -log p[y] over the rows.
template <class T>
double softmax_rows(T* logits, const std::int64_t* y, std::int64_t r0, std::int64_t r1, std::int64_t b) {
    double nll = 0;
    for (std::int64_t i = r0; i < r1; ++i) {
        T* l = logits + i * kOut;
        T mx = l[0];
        for (int j = 1; j < kOut; ++j) mx = std::max(mx, l[j]);
        T s = 0;
        for (int j = 0; j < kOut; ++j) s += (l[j] = std::exp(l[j] - mx));
        nll -= std::log(static_cast<double>(l[y[i]] / s));
        const T inv = T(1) / (s * static_cast<T>(b));
        for (int j = 0; j < kOut; ++j) l[j] = l[j] * inv - (j == y[i] ? T(1) / static_cast<T>(b) : T(0));
    }
    return nll;
}

template <class T>
std::int64_t argmax_errors(const T* logits, const std::int64_t* y, std::int64_t r0, std::int64_t r1) {
    std::int64_t wrong = 0;
    for (std::int64_t i = r0; i < r1; ++i) {
        const T* l = logits + i * kOut;
        wrong += (std::max_element(l, l + kOut) - l) != y[i];
    }
    return wrong;
}

// ---------------------------------------------------------------- logistic regression

template <class T>
struct HandLogReg {
    const ModelSpec& spec;
    int threads;
    Mat<T> W = Mat<T>::Zero(kIn, kOut), logits, partial;  // partial: per thread X^T dL (kIn x 10)
    std::vector<T> b = std::vector<T>(kOut, T(0));
    std::vector<T> db;  // per thread sums of dL over its rows
    std::vector<double> part_cost;

    HandLogReg(const ModelSpec& s, int nt) : spec(s), threads(nt) {
        logits.resize(s.batch, kOut);
        partial.resize(static_cast<Eigen::Index>(nt) * kIn, kOut);
        db.resize(static_cast<std::size_t>(nt) * kOut);
        part_cost.resize(static_cast<std::size_t>(nt));
    }

    // logits[r0:r1] = x[r0:r1] W + b.
    Map<T> forward_rows(const T* x, std::int64_t r0, std::int64_t r1) {
        Map<T> L(logits.data() + r0 * kOut, r1 - r0, kOut);
        gemm_slice<T>(L.data(), r1 - r0, kOut, 0, kOut, T(1), x + r0 * kIn, r1 - r0, kIn, false, W.data(), kIn, kOut,
                      false, T(0));
        L.rowwise() += Eigen::Map<const Eigen::Matrix<T, 1, kOut>>(b.data());
        return L;
    }

    // One SGD step on rows x (batch x 784) with labels y; returns the mean NLL.
    double train(const T* x, const std::int64_t* y) {
        const std::int64_t B = spec.batch;
        const T lr = static_cast<T>(spec.lr);
#pragma omp parallel num_threads(threads)
        {
            const int t = omp_get_thread_num(), nt = omp_get_num_threads();
            const std::int64_t r0 = B * t / nt, r1 = B * (t + 1) / nt;
            Map<T> L = forward_rows(x, r0, r1);
            part_cost[t] = softmax_rows(logits.data(), y, r0, r1, B);
            // This thread's rows' share of the gradient.
            Map<T> P(partial.data() + static_cast<std::int64_t>(t) * kIn * kOut, kIn, kOut);
            gemm_slice<T>(P.data(), kIn, kOut, 0, kOut, T(1), x + r0 * kIn, r1 - r0, kIn, true, L.data(), r1 - r0,
                          kOut, false, T(0));
            for (int j = 0; j < kOut; ++j) {
                T s = 0;
                for (std::int64_t i = 0; i < r1 - r0; ++i) s += L(i, j);
                db[static_cast<std::size_t>(t) * kOut + j] = s;
            }
#pragma omp barrier
            // This thread's rows of W (and thread 0 b) take the summed gradient.
            const std::int64_t p0 = kIn * t / nt, p1 = kIn * (t + 1) / nt;
            for (std::int64_t p = p0; p < p1; ++p) {
                for (int j = 0; j < kOut; ++j) {
                    T g = 0;
                    for (int u = 0; u < nt; ++u) g += partial(static_cast<Eigen::Index>(u) * kIn + p, j);
                    W(p, j) -= lr * g;
                }
            }
            if (t == 0) {
                for (int j = 0; j < kOut; ++j) {
                    T g = 0;
                    for (int u = 0; u < nt; ++u) g += db[static_cast<std::size_t>(u) * kOut + j];
                    b[j] -= lr * g;
                }
            }
        }
        double c = 0;
        for (double v : part_cost) c += v;
        return c / static_cast<double>(B);
    }

    std::int64_t errors(const T* x, const std::int64_t* y) {
        const std::int64_t B = spec.batch;
        std::int64_t wrong = 0;
#pragma omp parallel num_threads(threads) reduction(+ : wrong)
        {
            const int t = omp_get_thread_num(), nt = omp_get_num_threads();
            const std::int64_t r0 = B * t / nt, r1 = B * (t + 1) / nt;
            forward_rows(x, r0, r1);
            wrong += argmax_errors(logits.data(), y, r0, r1);
        }
        return wrong;
    }
};

// ---------------------------------------------------------------- mlp

template <class T>
struct HandMLP {
    const ModelSpec& spec;
    int threads;
    std::int64_t H;
    Mat<T> W1, W2;  // (784 x H), (H x 10)
    std::vector<T> b1;
    std::vector<T> b2[2];  // double-buffered: thread 0 writes the next step's while the others read
    Mat<T> hid, dhid;      // (batch x H)
    std::vector<T> part_logits[2];  // per thread hid[:, own] W2[own, :] (indexed by parity too)
    std::vector<double> sumsq;      // per thread sum of squares of its W1 columns and W2 rows
    double cost = 0;
    int parity = 0;

    HandMLP(const ModelSpec& s, int nt, const Tensor& W1v, const Tensor& W2v) : spec(s), threads(nt), H(s.hidden) {
        W1.resize(kIn, H);
        W2 = Mat<T>::Zero(H, kOut);
        const DType dt = std::is_same_v<T, float> ? DType::float32 : DType::float64;
        Tensor w = W1v.astype(dt);
        std::memcpy(W1.data(), w.raw_data(), sizeof(T) * kIn * H);
        Tensor w2 = W2v.astype(dt);
        std::memcpy(W2.data(), w2.raw_data(), sizeof(T) * H * kOut);
        b1.assign(static_cast<std::size_t>(H), T(0));
        b2[0].assign(kOut, T(0));
        b2[1].assign(kOut, T(0));
        hid.resize(s.batch, H);
        dhid.resize(s.batch, H);
        for (auto& p : part_logits) p.assign(static_cast<std::size_t>(nt) * s.batch * kOut, T(0));
        sumsq.assign(static_cast<std::size_t>(nt), 0.0);
        double s0 = 0;
        for (std::int64_t i = 0; i < W1.size(); ++i) s0 += static_cast<double>(W1.data()[i]) * W1.data()[i];
        for (std::int64_t i = 0; i < W2.size(); ++i) s0 += static_cast<double>(W2.data()[i]) * W2.data()[i];
        sumsq[0] = s0;
    }

    // Forward over this thread's hidden columns, then (after the one barrier) every thread
    // sums the partial logits itself: returns them in `logits` (batch x 10).
    void forward(const T* x, int t, int nt, std::int64_t h0, std::int64_t h1, std::vector<T>& logits) {
        const std::int64_t B = spec.batch;
        if (h1 > h0) {
            gemm_slice<T>(hid.data(), B, H, h0, h1, T(1), x, B, kIn, false, W1.data(), kIn, H, false, T(0));
            // tanh(x W1 + b1) with Eigen's vectorised tanh.
            auto h = hid.middleCols(h0, h1 - h0).array();
            h = (h.rowwise() + Eigen::Map<const Eigen::Array<T, 1, Eigen::Dynamic>>(b1.data() + h0, h1 - h0)).tanh();
        }
        Map<T> P(part_logits[parity].data() + static_cast<std::int64_t>(t) * B * kOut, B, kOut);
        if (h1 > h0) {
            P.noalias() = Eigen::Map<const Mat<T>, 0, Eigen::OuterStride<>>(hid.data() + h0, B, h1 - h0,
                                                                             Eigen::OuterStride<>(H)) *
                          W2.middleRows(h0, h1 - h0);
        } else {
            P.setZero();
        }
#pragma omp barrier
        logits.assign(static_cast<std::size_t>(B * kOut), T(0));
        for (int u = 0; u < nt; ++u) {
            const T* p = part_logits[parity].data() + static_cast<std::int64_t>(u) * B * kOut;
            for (std::int64_t e = 0; e < B * kOut; ++e) logits[e] += p[e];
        }
        for (std::int64_t i = 0; i < B; ++i) {
            for (int j = 0; j < kOut; ++j) logits[i * kOut + j] += b2[parity][j];
        }
    }

    double train(const T* x, const std::int64_t* y) {
        const std::int64_t B = spec.batch;
        const T lr = static_cast<T>(spec.lr), decay = static_cast<T>(1 - 2 * spec.lr * spec.l2);
        const double l2 = spec.l2;
        double w_sumsq = 0;
        for (double s : sumsq) w_sumsq += s;  // of the weights this step starts from
        double nll = 0;
#pragma omp parallel num_threads(threads)
        {
            const int t = omp_get_thread_num(), nt = omp_get_num_threads();
            auto [h0, h1] = column_slice(H, t, nt);
            thread_local std::vector<T> dl;
            forward(x, t, nt, h0, h1, dl);
            const double c = softmax_rows(dl.data(), y, 0, B, B);
            if (t == 0) nll = c;
            const std::int64_t hn = h1 - h0;
            if (hn > 0) {
                CMap<T> dL(dl.data(), B, kOut);
                // dhid = dL W2[own]^T * (1 - hid^2), with this step's W2 (before its update).
                Eigen::Map<Mat<T>, 0, Eigen::OuterStride<>> dh(dhid.data() + h0, B, hn, Eigen::OuterStride<>(H));
                dh.noalias() = dL * W2.middleRows(h0, hn).transpose();
                dh.array() *= T(1) - hid.middleCols(h0, hn).array().square();
                // W2[own] = decay W2 - lr hid[:, own]^T dL; then W1[:, own] the same with x^T dhid.
                auto W2o = W2.middleRows(h0, hn);
                W2o = decay * W2o;
                W2o.noalias() -= lr * (Eigen::Map<const Mat<T>, 0, Eigen::OuterStride<>>(hid.data() + h0, B, hn,
                                                                                         Eigen::OuterStride<>(H))
                                           .transpose() *
                                       dL);
                gemm_slice<T>(W1.data(), kIn, H, h0, h1, -lr, x, B, kIn, true, dhid.data(), B, H, false, decay);
                Eigen::Map<Eigen::Matrix<T, 1, Eigen::Dynamic>>(b1.data() + h0, hn) -= lr * dh.colwise().sum();
                // The next step's L2 term: sum of squares of the weights just written.
                sumsq[t] = static_cast<double>(W1.middleCols(h0, hn).squaredNorm()) + static_cast<double>(W2o.squaredNorm());
            } else {
                sumsq[t] = 0;
            }
            if (t == 0) {
                for (int j = 0; j < kOut; ++j) {
                    T s = 0;
                    for (std::int64_t i = 0; i < B; ++i) s += dl[i * kOut + j];
                    b2[1 - parity][j] = b2[parity][j] - lr * s;
                }
            }
        }
        parity = 1 - parity;
        return nll / static_cast<double>(B) + l2 * w_sumsq;
    }

    std::int64_t errors(const T* x, const std::int64_t* y) {
        std::int64_t wrong = 0;
#pragma omp parallel num_threads(threads)
        {
            const int t = omp_get_thread_num(), nt = omp_get_num_threads();
            auto [h0, h1] = column_slice(H, t, nt);
            thread_local std::vector<T> logits;
            forward(x, t, nt, h0, h1, logits);
            if (t == 0) wrong = argmax_errors(logits.data(), y, 0, spec.batch);
        }
        // The next forward writes the other buffer of partial logits: nobody reads this one now.
        parity = 1 - parity;
        b2[parity] = b2[1 - parity];
        return wrong;
    }
};

// ---------------------------------------------------------------- theanine

struct Compiled {
    Function train, validate, test;
};

Compiled compile_model(const ModelSpec& spec, const io::MnistSplits& d, RandomState& rng, Tensor* W1_out,
                       Tensor* W2_out) {
    Variable index = lscalar("index");
    Variable x = matrix("x");
    Variable y = lvector("y");
    auto sets = std::make_shared<io::SharedSplits>(d);  // borrows d's tensors
    const double lr = spec.lr;
    if (spec.hidden == 0) {
        models::LogisticRegression m(x, kIn, kOut);
        Variable cost = m.negative_log_likelihood(y);
        auto g = grad(cost, std::vector<Variable>{m.W, m.b});
        Compiled c{io::minibatch_function(index, {cost}, {{m.W, m.W - lr * g[0]}, {m.b, m.b - lr * g[1]}}, x, y,
                                          sets->train_x, sets->train_y, spec.batch),
                   io::minibatch_function(index, {m.errors(y)}, {}, x, y, sets->valid_x, sets->valid_y, spec.batch),
                   io::minibatch_function(index, {m.errors(y)}, {}, x, y, sets->test_x, sets->test_y, spec.batch)};
        return c;
    }
    models::MLP m(rng, x, kIn, spec.hidden, kOut);
    Variable cost = m.negative_log_likelihood(y) + 0.0 * m.L1 + spec.l2 * m.L2_sqr;
    auto params = m.params();
    std::vector<Variable> pv(params.begin(), params.end());
    auto g = grad(cost, pv);
    Updates updates;
    for (std::size_t i = 0; i < params.size(); ++i) updates.emplace_back(params[i], params[i] - lr * g[i]);
    *W1_out = m.hidden.W.get_value();
    *W2_out = m.log_regression.W.get_value();
    return Compiled{io::minibatch_function(index, {cost}, updates, x, y, sets->train_x, sets->train_y, spec.batch),
                    io::minibatch_function(index, {m.errors(y)}, {}, x, y, sets->valid_x, sets->valid_y, spec.batch),
                    io::minibatch_function(index, {m.errors(y)}, {}, x, y, sets->test_x, sets->test_y, spec.batch)};
}

struct Result {
    double theanine_s, hand_s;
    double theanine_cost, hand_cost;  // mean training cost of the last measured epoch
};

template <class T, class Hand>
double hand_epoch(Hand& h, const Data& d, double fraction, double* mean_cost) {
    const std::int64_t B = h.spec.batch;
    const auto& s = d.splits;
    const T* tx = s.train_x.data<T>();
    const T* vx = s.valid_x.data<T>();
    const T* sx = s.test_x.data<T>();
    const auto* ty = s.train_y.data<std::int64_t>();
    const auto* vy = s.valid_y.data<std::int64_t>();
    const auto* sy = s.test_y.data<std::int64_t>();
    const std::int64_t nt = std::max<std::int64_t>(1, static_cast<std::int64_t>(d.n_train * fraction)),
                       nv = std::max<std::int64_t>(1, static_cast<std::int64_t>(d.n_valid * fraction)),
                       ns = std::max<std::int64_t>(1, static_cast<std::int64_t>(d.n_test * fraction));
    auto t0 = Clock::now();
    double c = 0;
    for (std::int64_t i = 0; i < nt; ++i) c += h.train(tx + i * B * kIn, ty + i * B);
    std::int64_t wrong = 0;
    for (std::int64_t i = 0; i < nv; ++i) wrong += h.errors(vx + i * B * kIn, vy + i * B);
    for (std::int64_t i = 0; i < ns; ++i) wrong += h.errors(sx + i * B * kIn, sy + i * B);
    const double sec = seconds_since(t0);
    *mean_cost = c / static_cast<double>(nt) + 0 * static_cast<double>(wrong);
    return sec / fraction;
}

double theanine_epoch(Compiled& c, const Data& d, double fraction, double* mean_cost) {
    const std::int64_t nt = std::max<std::int64_t>(1, static_cast<std::int64_t>(d.n_train * fraction)),
                       nv = std::max<std::int64_t>(1, static_cast<std::int64_t>(d.n_valid * fraction)),
                       ns = std::max<std::int64_t>(1, static_cast<std::int64_t>(d.n_test * fraction));
    auto t0 = Clock::now();
    double cost = 0, err = 0;
    for (std::int64_t i = 0; i < nt; ++i) cost += c.train.scalar({static_cast<long>(i)});
    for (std::int64_t i = 0; i < nv; ++i) err += c.validate.scalar({static_cast<long>(i)});
    for (std::int64_t i = 0; i < ns; ++i) err += c.test.scalar({static_cast<long>(i)});
    const double sec = seconds_since(t0);
    *mean_cost = cost / static_cast<double>(nt) + 0 * err;
    return sec / fraction;
}

template <class T>
Result run(const ModelSpec& spec, const Data& d, int threads, double fraction, int epochs) {
    set_num_threads(threads);
    RandomState rng(1234);
    Tensor W1, W2;
    Compiled c = compile_model(spec, d.splits, rng, &W1, &W2);
    std::vector<double> th, hw;
    Result r{};
    auto go = [&](auto& hand) {
        double ct = 0, ch = 0;
        theanine_epoch(c, d, fraction, &ct);  // warm-up (and the kernels' measurement)
        hand_epoch<T>(hand, d, fraction, &ch);
        for (int e = 0; e < epochs; ++e) {
            th.push_back(theanine_epoch(c, d, fraction, &r.theanine_cost));
            hw.push_back(hand_epoch<T>(hand, d, fraction, &r.hand_cost));
        }
    };
    if (spec.hidden == 0) {
        HandLogReg<T> h(spec, threads);
        go(h);
    } else {
        HandMLP<T> h(spec, threads, W1, W2);
        go(h);
    }
    if (config().profile) std::printf("%s\n", c.train.profile_summary().c_str());
    r.theanine_s = median(th);
    r.hand_s = median(hw);
    return r;
}

}  // namespace

int main(int argc, char** argv) {
    std::string model = "mlp";
    const ModelFlags f = parse_model_flags(
        argc, argv, "bench_supervised",
        "[--model logreg|mlp (default mlp)] [--fraction F (of an epoch)] [--epochs N (default 3)]\n"
        "                        [--data DIR] [--dtype float32|float64] [--threads N (default 1 and 2)]",
        1.0, [&](const std::string& flag, const std::function<std::string()>& value) {
            if (flag != "--model") return false;
            model = value();
            return true;
        });
    const std::string& data = f.data;
    ModelSpec spec;
    if (model == "logreg") spec = {"logreg", 0, 600, 0.13, 0.0};
    else if (model == "mlp") spec = {"mlp", 500, 20, 0.01, 0.0001};
    else {
        std::fprintf(stderr, "bench_supervised: --model must be logreg or mlp, got '%s'\n", model.c_str());
        return 2;
    }
    const bool have_mnist = std::filesystem::exists(data + "/train-images-idx3-ubyte") ||
                            std::filesystem::exists(data + "/train-images-idx3-ubyte.gz");
    // Training products per step: logreg x W and x^T dL; mlp x W1, hid W2, dL W2^T, hid^T dL, x^T dhid.
    const double step_flops = spec.hidden == 0
                                  ? 2.0 * 2 * spec.batch * kIn * kOut
                                  : 2.0 * spec.batch * (2.0 * kIn * spec.hidden + 3.0 * spec.hidden * kOut);
    std::printf("model: %s, batch %ld, %s\n", spec.name.c_str(), spec.batch,
                have_mnist ? ("MNIST from " + data).c_str() : "random data shaped as MNIST");
    std::printf("%-8s %-7s %13s %10s %13s %9s %7s  %s\n", "dtype", "threads", "theanine s/ep", "hand s/ep",
                "theanine GF/s", "hand GF/s", "ratio", "mean cost theanine / hand");
    double ratio[2] = {0, 0};
    for (DType dt : f.dtypes) {
        config().floatX = dt;
        Data d;
        if (have_mnist) {
            d.splits = io::load_mnist_splits(data, dt);
        } else {
            RandomState rs(5);
            auto labels = [&](std::int64_t n) { return rs.uniform(0, 10, {n}).astype(DType::int64); };
            d.splits = {rs.uniform(0, 1, {50000, kIn}).astype(dt), labels(50000), rs.uniform(0, 1, {10000, kIn}).astype(dt),
                        labels(10000), rs.uniform(0, 1, {10000, kIn}).astype(dt), labels(10000)};
        }
        d.n_train = d.splits.train_x.dim(0) / spec.batch;
        d.n_valid = d.splits.valid_x.dim(0) / spec.batch;
        d.n_test = d.splits.test_x.dim(0) / spec.batch;
        for (int threads : f.threads) {
            Result r = dt == DType::float32 ? run<float>(spec, d, threads, f.fraction, f.epochs)
                                            : run<double>(spec, d, threads, f.fraction, f.epochs);
            const double gflop = step_flops * static_cast<double>(d.n_train) / 1e9;
            std::printf("%-8s %-7d %13.3f %10.3f %13.1f %9.1f %7.3f  %.6g / %.6g\n", std::string(dtype_name(dt)).c_str(),
                        threads, r.theanine_s, r.hand_s, gflop / r.theanine_s, gflop / r.hand_s, r.theanine_s / r.hand_s,
                        r.theanine_cost, r.hand_cost);
            print_row(spec.name.c_str(), dt, threads, r.theanine_s, r.hand_s, gflop);
            ratio[dt == DType::float32 ? 0 : 1] = r.theanine_s / r.hand_s;
        }
    }
    std::printf("product kernels (each shape's columns per thread):\n");
    for (const ProductChoice& p : product_choices()) std::printf("  %s\n", p.str().c_str());
    std::printf("ratio %s float32=%.3f float64=%.3f\n", spec.name.c_str(), ratio[0], ratio[1]);
    return 0;
}
