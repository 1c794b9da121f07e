// bench_conv: the convolution kernel strategy, measured on the LeNet tutorial's shapes. The
// compiled conv2d (per image: receptive fields unrolled, then the project's matrix product)
// against a direct loop (each output row accumulated in registers over the filter taps, several
// filters at once, vectorised over the output columns), both over the same threads (images
// split between them), batch 500, valid 5x5 filters:
//   layer0  (500, 1, 28, 28) * (20, 1, 5, 5)
//   layer1  (500, 20, 12, 12) * (50, 20, 5, 5)
// Prints GFLOP/s of both and `conv direct/unrolled layer0=X layer1=Y` (how many times longer the
// direct loop takes), float64 and float32. The results are compared (the run fails if they
// differ beyond rounding).
#include <omp.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <vector>

#include <fmt/format.h>

#include "bench/timing.hpp"
#include "theanine.hpp"

using namespace theanine;
using theanine::bench::interleaved_median_seconds;

namespace {

// out (F, OH, OW) of one image x (C, H, W) with K x K filters w (F, C, K, K), flipped (a
// convolution), valid, stride 1: FB filters and one output row at a time in registers.
template <class T, int OW, int FB>
void direct_image(const T* x, const T* w, T* out, int C, int H, int W, int F, int K) {
    const int OH = H - K + 1;
    for (int f0 = 0; f0 < F; f0 += FB) {
        for (int y = 0; y < OH; ++y) {
            T acc[FB][OW] = {};
            for (int c = 0; c < C; ++c) {
                for (int i = 0; i < K; ++i) {
                    const T* xr = x + (c * H + y + i) * W;
                    for (int j = 0; j < K; ++j) {
#pragma GCC unroll 8
                        for (int b = 0; b < FB; ++b) {
                            const T wv = w[(((f0 + b) * C + c) * K + (K - 1 - i)) * K + (K - 1 - j)];
#pragma GCC unroll 32
                            for (int o = 0; o < OW; ++o) acc[b][o] += wv * xr[o + j];
                        }
                    }
                }
            }
            for (int b = 0; b < FB; ++b) {
                for (int o = 0; o < OW; ++o) out[((f0 + b) * OH + y) * OW + o] = acc[b][o];
            }
        }
    }
}

template <class T>
double run_layer(const char* name, int C, int H, int F, DType dt) {
    constexpr int N = 500, K = 5;
    const int OH = H - K + 1;
    RandomState rng(1);
    const Tensor xt = rng.uniform(-1, 1, {N, C, H, H}).astype(dt);
    const Tensor wt = rng.uniform(-1, 1, {F, C, K, K}).astype(dt);
    Variable x = tensor4("x", dt), w = tensor4("w", dt);
    // Borrowed output: the timed calls reuse one output buffer, as a step inside a compiled
    // graph does (a fresh 46 MB result per call would time the page faults).
    Function f = function({x, w}, {Out(conv2d(x, w), true)});
    Tensor unrolled;
    std::vector<T> direct(static_cast<std::size_t>(N) * F * OH * OH);
    const T* xp = xt.data<T>();
    const T* wp = wt.data<T>();
    auto run_direct = [&] {
#pragma omp parallel for schedule(static) num_threads(num_threads())
        for (int n = 0; n < N; ++n) {
            T* o = direct.data() + static_cast<std::size_t>(n) * F * OH * OH;
            if (OH == 24) {
                direct_image<T, 24, 2>(xp + static_cast<std::size_t>(n) * C * H * H, wp, o, C, H, H, F, K);
            } else {
                direct_image<T, 8, 5>(xp + static_cast<std::size_t>(n) * C * H * H, wp, o, C, H, H, F, K);
            }
        }
    };
    unrolled = f({xt, wt})[0];
    run_direct();
    const auto [t_unrolled, t_direct] = interleaved_median_seconds(
        5,
        [&] {
            unrolled = Tensor();
            unrolled = f({xt, wt})[0];
        },
        run_direct);
    const Tensor u = unrolled.astype(DType::float64);
    double worst = 0, scale = 0;
    for (std::size_t i = 0; i < direct.size(); ++i) {
        worst = std::max(worst, std::abs(u.data<double>()[i] - static_cast<double>(direct[i])));
        scale = std::max(scale, std::abs(static_cast<double>(direct[i])));
    }
    const double tol = dt == DType::float64 ? 1e-12 : 1e-4;
    if (!(worst <= tol * std::max(1.0, scale))) {
        fmt::print(stderr, "bench_conv: {} {}: the two kernels differ by {}\n", name, dtype_name(dt), worst);
        std::exit(1);
    }
    const double flops = 2.0 * N * F * OH * OH * C * K * K;
    fmt::print("{} {}: unrolled + products {:.1f} GFLOP/s ({:.1f} ms), direct loop {:.1f} GFLOP/s ({:.1f} ms)\n",
               name, dtype_name(dt), flops / t_unrolled / 1e9, t_unrolled * 1e3, flops / t_direct / 1e9,
               t_direct * 1e3);
    return t_direct / t_unrolled;
}

}  // namespace

int main() {
    fmt::print("{} threads\n", num_threads());
    for (DType dt : {DType::float64, DType::float32}) {
        double r0, r1;
        if (dt == DType::float64) {
            r0 = run_layer<double>("layer0", 1, 28, 20, dt);
            r1 = run_layer<double>("layer1", 20, 12, 50, dt);
        } else {
            r0 = run_layer<float>("layer0", 1, 28, 20, dt);
            r1 = run_layer<float>("layer1", 20, 12, 50, dt);
        }
        fmt::print("conv direct/unrolled {} layer0={:.2f} layer1={:.2f}\n", dtype_name(dt), r0, r1);
    }
    return 0;
}
