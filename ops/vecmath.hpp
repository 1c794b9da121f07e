/// \file
/// Vectorised elementwise math over contiguous blocks, shared by the fused loops
/// (ops/composite.cpp) and the row ops (ops/nnet.cpp): exp, log, sigmoid and tanh on Eigen's
/// packet math, with the ranges Eigen gets wrong recomputed or done another way. Every
/// function writes dst[0..n) from src[0..n) and allows dst == src. Accuracy against the C
/// library over the whole range is tested in tests/test_elemwise.cpp (README: bounds in ulp).
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <utility>
#include <vector>

#include <Eigen/Core>

namespace theanine::vecmath {

template <class T>
using Arr = Eigen::Map<Eigen::Array<T, Eigen::Dynamic, 1>>;
template <class T>
using CArr = Eigen::Map<const Eigen::Array<T, Eigen::Dynamic, 1>>;

// Whether pred (a packet -> lane mask, as Eigen's pcmp_* return) holds in any lane of
// src[0..n): one vectorised pass (Eigen's .any() on a comparison is a scalar loop that cost as
// much as the exp it guards). The tail is a packet padded with copies of the last element.
template <class T, class Pred>
bool any_lane(const T* src, std::int64_t n, Pred pred) {
    namespace ei = Eigen::internal;
    using P = typename ei::packet_traits<T>::type;
    constexpr std::int64_t L = ei::packet_traits<T>::size;
    if (n <= 0) return false;
    P acc = ei::pzero(P{}), acc1 = acc, acc2 = acc, acc3 = acc;
    std::int64_t j = 0;
    for (; j + 4 * L <= n; j += 4 * L) {
        acc = ei::por(acc, pred(ei::ploadu<P>(src + j)));
        acc1 = ei::por(acc1, pred(ei::ploadu<P>(src + j + L)));
        acc2 = ei::por(acc2, pred(ei::ploadu<P>(src + j + 2 * L)));
        acc3 = ei::por(acc3, pred(ei::ploadu<P>(src + j + 3 * L)));
    }
    acc = ei::por(ei::por(acc, acc1), ei::por(acc2, acc3));
    for (; j + L <= n; j += L) acc = ei::por(acc, pred(ei::ploadu<P>(src + j)));
    if (j < n) {
        alignas(64) T buf[L];
        std::fill(buf, buf + L, src[n - 1]);
        std::copy(src + j, src + n, buf);
        acc = ei::por(acc, pred(ei::ploadu<P>(buf)));
    }
    alignas(64) T lanes[L];
    ei::pstoreu(lanes, acc);
    unsigned char bytes[sizeof(lanes)];
    std::memcpy(bytes, lanes, sizeof(lanes));
    return std::any_of(bytes, bytes + sizeof(bytes), [](unsigned char b) { return b != 0; });
}

// Eigen's vectorised exp clamps its argument from below at about log(smallest normal number)
// (so exp(-1000) came out as 2.2e-308, not 0), and its vectorised log misreads subnormal
// inputs. The few lanes of a block in those ranges (in_range: a packet's lane mask; in_lane:
// the same test on one value) are recomputed with the C library: their inputs are kept first
// (the output may be written over the input), and a block with none costs one vectorised pass.
template <class T, class InRange, class InLane, class Vec, class Scalar>
void with_scalar_lanes(T* dst, const T* src, std::int64_t n, InRange in_range, InLane in_lane, Vec vec,
                       Scalar scalar) {
    thread_local std::vector<std::pair<std::int64_t, T>> lanes;
    lanes.clear();
    if (any_lane(src, n, in_range)) {
        for (std::int64_t j = 0; j < n; ++j) {
            if (in_lane(src[j])) lanes.emplace_back(j, src[j]);
        }
    }
    vec();
    for (auto [j, v] : lanes) dst[j] = scalar(v);
}

// log of the smallest normal number: below it exp's result is subnormal or zero.
template <class T>
constexpr T kExpLow = std::is_same_v<T, float> ? T(-87.33654475f) : T(-708.3964185322641);

// Eigen's float exp on 16-lane packets (AVX-512) reduces its argument with a one-part ln 2 and
// clamps it at 88.376: 4 ulp at x = 85, and exp(88.5) came out as exp(88.376). Its generic packet
// exp (a two-part ln 2, inf past 88.72) is within 1 ulp at every packet width, so float goes
// through that one, a packet at a time; the tail is one packet padded with zeros.
template <class T, class F>
void map_packets(T* dst, const T* src, std::int64_t n, F f) {
    using P = typename Eigen::internal::packet_traits<T>::type;
    constexpr std::int64_t L = Eigen::internal::packet_traits<T>::size;
    std::int64_t j = 0;
    for (; j + L <= n; j += L) Eigen::internal::pstoreu(dst + j, f(Eigen::internal::ploadu<P>(src + j)));
    if (j < n) {
        alignas(64) T buf[L] = {};
        std::copy(src + j, src + n, buf);
        Eigen::internal::pstoreu(buf, f(Eigen::internal::ploadu<P>(buf)));
        std::copy(buf, buf + (n - j), dst + j);
    }
}

// exp of every element of src, or of -|x| (softplus's tail), into dst.
template <class T>
void exp_into(T* dst, const T* src, std::int64_t n, bool of_minus_abs = false) {
    namespace ei = Eigen::internal;
    auto vec = [&] {
        if constexpr (std::is_same_v<T, float>) {
            if (of_minus_abs) {
                map_packets(dst, src, n, [](auto x) { return ei::pexp_float(ei::pnegate(ei::pabs(x))); });
            } else {
                map_packets(dst, src, n, [](auto x) { return ei::pexp_float(x); });
            }
        } else if (of_minus_abs) {
            Arr<T>(dst, n) = (-CArr<T>(src, n).abs()).exp();
        } else {
            Arr<T>(dst, n) = CArr<T>(src, n).exp();
        }
    };
    using P = typename ei::packet_traits<T>::type;
    const P low = ei::pset1<P>(kExpLow<T>);
    if (of_minus_abs) {
        with_scalar_lanes(
            dst, src, n, [&](const P& x) { return ei::pcmp_lt(ei::pnegate(ei::pabs(x)), low); },
            [](T x) { return -std::abs(x) < kExpLow<T>; }, vec, [](T x) { return std::exp(-std::abs(x)); });
    } else {
        with_scalar_lanes(
            dst, src, n, [&](const P& x) { return ei::pcmp_lt(x, low); }, [](T x) { return x < kExpLow<T>; }, vec,
            [](T x) { return std::exp(x); });
    }
}

template <class T>
void log_into(T* dst, const T* src, std::int64_t n) {
    namespace ei = Eigen::internal;
    using P = typename ei::packet_traits<T>::type;
    const P zero = ei::pzero(P{}), tiny = ei::pset1<P>(std::numeric_limits<T>::min());
    with_scalar_lanes(
        dst, src, n, [&](const P& x) { return ei::pand(ei::pcmp_lt(zero, x), ei::pcmp_lt(x, tiny)); },
        [](T x) { return x > T(0) && x < std::numeric_limits<T>::min(); },
        [&] { Arr<T>(dst, n) = CArr<T>(src, n).log(); }, [](T x) { return std::log(x); });
}

// sigmoid(x) = 1 / (1 + exp(-x)) in one pass, to about 2 ulp (Eigen's float logistic is
// accurate in absolute terms only: 6000 ulp at x = -8.4). Where exp(-x) overflows the result
// is 0 (the true one is subnormal); where Eigen's exp clamps (x above 708) it is 1 either way.
template <class T>
void sigmoid_into(T* dst, const T* src, std::int64_t n) {
    if constexpr (std::is_same_v<T, float>) {
        namespace ei = Eigen::internal;
        map_packets(dst, src, n, [](auto x) {
            using P = decltype(x);
            const P one = ei::pset1<P>(1.0f);
            return ei::pdiv(one, ei::padd(one, ei::pexp_float(ei::pnegate(x))));
        });
    } else {
        Arr<T>(dst, n) = T(1) / (T(1) + (-CArr<T>(src, n)).exp());
    }
}

// tanh. float: Eigen's vectorised rational approximation (4 ulp). double, where Eigen calls the
// C library lane by lane: below |x| = 0.55 the odd Taylor series x + x z P(z), z = x^2, whose
// terms shrink by (2 |x| / pi)^2 <= 0.123 (20 terms reach double precision); above it
// 1 - 2 / (exp(2 |x|) + 1), with no cancellation since the result is then at least 0.5. Both
// within 2 ulp; NaN and the sign of zero pass through, +-inf give +-1.
struct TanhSeries {
    static constexpr int kTerms = 20;
    double c[kTerms];  // c[m] = a_{2m+3}, the coefficient of x^(2m+3)
    TanhSeries() {
        // tanh' = 1 - tanh^2 gives n a_n = -sum_{i+j=n-1} a_i a_j over odd i, j (a_1 = 1);
        // summed in long double so every coefficient is right to the last bit of a double.
        long double a[2 * kTerms + 4] = {};
        a[1] = 1;
        for (int n = 3; n < 2 * kTerms + 4; n += 2) {
            long double s = 0;
            for (int i = 1; i < n - 1; i += 2) s += a[i] * a[n - 1 - i];
            a[n] = -s / n;
        }
        for (int m = 0; m < kTerms; ++m) c[m] = static_cast<double>(a[2 * m + 3]);
    }
};

template <class T>
void tanh_into(T* dst, const T* src, std::int64_t n) {
    if constexpr (std::is_same_v<T, float>) {
        Arr<T>(dst, n) = CArr<T>(src, n).tanh();
    } else {
        static const TanhSeries series;
        for (std::int64_t j0 = 0; j0 < n; j0 += 256) {
            const std::int64_t w = std::min<std::int64_t>(256, n - j0);
            CArr<T> x(src + j0, w);
            Eigen::Array<T, Eigen::Dynamic, 1> ax = x.abs(), z = x * x, p(w), e(w);
            p.setConstant(series.c[TanhSeries::kTerms - 1]);
            for (int m = TanhSeries::kTerms - 2; m >= 0; --m) p = p * z + series.c[m];
            p = x + x * (z * p);
            e = (T(2) * ax).exp();
            e = T(1) - T(2) / (e + T(1));
            Arr<T>(dst + j0, w) = (ax < T(0.55)).select(p, (x < T(0)).select(-e, e));
        }
    }
}

}  // namespace theanine::vecmath
