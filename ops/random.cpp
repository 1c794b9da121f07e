#include "ops/random.hpp"

#include <algorithm>
#include <bit>
#include <cmath>
#include <cstring>

#include <fmt/format.h>

#include "ops/blas.hpp"
#include "ops/elemwise.hpp"
#include "ops/shape.hpp"
#include "ops/team.hpp"

namespace theanine {

// ---------------------------------------------------------------- RandomState (MT19937)

void RandomState::seed_with(std::uint32_t seed) {
    std::uint32_t s = seed;
    for (int i = 0; i < 624; ++i) {
        mt_[i] = s;
        s = 1812433253u * (s ^ (s >> 30)) + static_cast<std::uint32_t>(i + 1);
    }
    pos_ = 624;
    has_gauss_ = false;
    gauss_ = 0;
    bin_ = BinomialCache{};
}

std::uint32_t RandomState::next_uint32() {
    constexpr std::uint32_t upper = 0x80000000u, lower = 0x7fffffffu, matrix_a = 0x9908b0dfu;
    if (pos_ >= 624) {
        int k = 0;
        for (; k < 624 - 397; ++k) {
            std::uint32_t y = (mt_[k] & upper) | (mt_[k + 1] & lower);
            mt_[k] = mt_[k + 397] ^ (y >> 1) ^ ((y & 1u) ? matrix_a : 0u);
        }
        for (; k < 623; ++k) {
            std::uint32_t y = (mt_[k] & upper) | (mt_[k + 1] & lower);
            mt_[k] = mt_[k + 397 - 624] ^ (y >> 1) ^ ((y & 1u) ? matrix_a : 0u);
        }
        std::uint32_t y = (mt_[623] & upper) | (mt_[0] & lower);
        mt_[623] = mt_[396] ^ (y >> 1) ^ ((y & 1u) ? matrix_a : 0u);
        pos_ = 0;
    }
    std::uint32_t y = mt_[pos_++];
    y ^= y >> 11;
    y ^= (y << 7) & 0x9d2c5680u;
    y ^= (y << 15) & 0xefc60000u;
    y ^= y >> 18;
    return y;
}

double RandomState::next_double() {
    const std::int32_t a = static_cast<std::int32_t>(next_uint32() >> 5);
    const std::int32_t b = static_cast<std::int32_t>(next_uint32() >> 6);
    return (a * 67108864.0 + b) / 9007199254740992.0;
}

double RandomState::uniform(double low, double high) { return low + (high - low) * next_double(); }

std::int64_t RandomState::randint(std::int64_t high) {
    if (high <= 0) throw UsageError(fmt::format("RandomState::randint: high must be positive, got {}", high));
    const std::uint64_t rng = static_cast<std::uint64_t>(high - 1);
    if (rng == 0) return 0;
    std::uint64_t mask = rng;
    for (int sh : {1, 2, 4, 8, 16, 32}) mask |= mask >> sh;
    if (rng <= 0xffffffffull) {
        if (rng == 0xffffffffull) return next_uint32();
        std::uint32_t v;
        while ((v = next_uint32() & static_cast<std::uint32_t>(mask)) > rng) {
        }
        return v;
    }
    std::uint64_t v;
    do {
        std::uint64_t hi = next_uint32();
        v = ((hi << 32) | next_uint32()) & mask;
    } while (v > rng);
    return static_cast<std::int64_t>(v);
}

std::int64_t RandomState::binomial_inversion(std::int64_t n, double p) {
    if (!bin_.valid || bin_.nsave != n || bin_.psave != p) {
        bin_ = BinomialCache{};
        bin_.valid = true;
        bin_.nsave = n;
        bin_.psave = p;
        bin_.q = 1.0 - p;
        bin_.r = std::exp(static_cast<double>(n) * std::log(bin_.q));
        bin_.c = static_cast<double>(n) * p;
        bin_.m = static_cast<std::int64_t>(std::min(static_cast<double>(n), bin_.c + 10.0 * std::sqrt(bin_.c * bin_.q + 1)));
    }
    const double q = bin_.q, qn = bin_.r;
    const std::int64_t bound = bin_.m;
    std::int64_t x = 0;
    double px = qn;
    double u = next_double();
    while (u > px) {
        ++x;
        if (x > bound) {
            x = 0;
            px = qn;
            u = next_double();
        } else {
            u -= px;
            px = (static_cast<double>(n - x + 1) * p * px) / (static_cast<double>(x) * q);
        }
    }
    return x;
}

std::int64_t RandomState::binomial_btpe(std::int64_t n, double p) {
    auto& b = bin_;
    if (!b.valid || b.nsave != n || b.psave != p) {
        b = BinomialCache{};
        b.valid = true;
        b.nsave = n;
        b.psave = p;
        b.r = std::min(p, 1.0 - p);
        b.q = 1.0 - b.r;
        b.fm = static_cast<double>(n) * b.r + b.r;
        b.m = static_cast<std::int64_t>(std::floor(b.fm));
        b.p1 = std::floor(2.195 * std::sqrt(static_cast<double>(n) * b.r * b.q) - 4.6 * b.q) + 0.5;
        b.xm = static_cast<double>(b.m) + 0.5;
        b.xl = b.xm - b.p1;
        b.xr = b.xm + b.p1;
        b.c = 0.134 + 20.5 / (15.3 + static_cast<double>(b.m));
        double a = (b.fm - b.xl) / (b.fm - b.xl * b.r);
        b.laml = a * (1.0 + a / 2.0);
        a = (b.xr - b.fm) / (b.xr * b.q);
        b.lamr = a * (1.0 + a / 2.0);
        b.p2 = b.p1 * (1.0 + 2.0 * b.c);
        b.p3 = b.p2 + b.c / b.laml;
        b.p4 = b.p3 + b.c / b.lamr;
    }
    const double r = b.r, q = b.q, p1 = b.p1, xm = b.xm, xl = b.xl, xr = b.xr, c = b.c, laml = b.laml,
                 lamr = b.lamr, p2 = b.p2, p3 = b.p3, p4 = b.p4;
    const std::int64_t m = b.m;
    const double nd = static_cast<double>(n);
    std::int64_t y;
    while (true) {
        const double nrq = nd * r * q;
        const double u = next_double() * p4;
        double v = next_double();
        if (u <= p1) {  // triangular region: accept at once
            y = static_cast<std::int64_t>(std::floor(xm - p1 * v + u));
            break;
        }
        if (u <= p2) {  // parallelogram
            const double x = xl + (u - p1) / c;
            v = v * c + 1.0 - std::fabs(static_cast<double>(m) - x + 0.5) / p1;
            if (v > 1.0) continue;
            y = static_cast<std::int64_t>(std::floor(x));
        } else if (u <= p3) {  // left exponential tail
            y = static_cast<std::int64_t>(std::floor(xl + std::log(v) / laml));
            if (y < 0 || v == 0.0) continue;
            v = v * (u - p2) * laml;
        } else {  // right exponential tail
            y = static_cast<std::int64_t>(std::floor(xr - std::log(v) / lamr));
            if (y > n || v == 0.0) continue;
            v = v * (u - p3) * lamr;
        }
        const std::int64_t k = std::llabs(y - m);
        if (!(k > 20 && static_cast<double>(k) < nrq / 2.0 - 1)) {
            // Explicit evaluation of f(y) / f(m).
            const double s = r / q;
            const double a = s * (nd + 1);
            double f = 1.0;
            if (m < y) {
                for (std::int64_t i = m + 1; i <= y; ++i) f *= (a / static_cast<double>(i) - s);
            } else if (m > y) {
                for (std::int64_t i = y + 1; i <= m; ++i) f /= (a / static_cast<double>(i) - s);
            }
            if (v > f) continue;
            break;
        }
        // Squeeze with bounds on log f(y) / f(m), then Stirling's formula.
        const double kd = static_cast<double>(k);
        const double rho = (kd / nrq) * ((kd * (kd / 3.0 + 0.625) + 0.16666666666666666) / nrq + 0.5);
        const double t = -kd * kd / (2 * nrq);
        const double A = std::log(v);
        if (A < t - rho) break;
        if (A > t + rho) continue;
        const double x1 = static_cast<double>(y + 1), f1 = static_cast<double>(m + 1);
        const double z = nd + 1 - static_cast<double>(m), w = nd - static_cast<double>(y) + 1;
        const double x2 = x1 * x1, f2 = f1 * f1, z2 = z * z, w2 = w * w;
        auto corr = [](double v1, double v2) {
            return (13680. - (462. - (132. - (99. - 140. / v2) / v2) / v2) / v2) / v1 / 166320.;
        };
        const double bound = xm * std::log(f1 / x1) + (nd - static_cast<double>(m) + 0.5) * std::log(z / w) +
                             static_cast<double>(y - m) * std::log(w * r / (x1 * q)) + corr(f1, f2) + corr(z, z2) +
                             corr(x1, x2) + corr(w, w2);
        if (A > bound) continue;
        break;
    }
    if (p > 0.5) y = n - y;
    return y;
}

std::int64_t RandomState::binomial(std::int64_t n, double p) {
    if (n < 0) throw UsageError(fmt::format("binomial: n must be >= 0, got {}", n));
    if (!(p >= 0.0 && p <= 1.0)) throw UsageError(fmt::format("binomial: p must be in [0, 1], got {}", p));
    const double nd = static_cast<double>(n);
    if (p <= 0.5) {
        return p * nd <= 30.0 ? binomial_inversion(n, p) : binomial_btpe(n, p);
    }
    const double q = 1.0 - p;
    return q * nd <= 30.0 ? n - binomial_inversion(n, q) : n - binomial_btpe(n, q);
}

double RandomState::gauss() {
    if (has_gauss_) {
        has_gauss_ = false;
        const double t = gauss_;
        gauss_ = 0.0;
        return t;
    }
    double x1, x2, r2;
    do {
        x1 = 2.0 * next_double() - 1.0;
        x2 = 2.0 * next_double() - 1.0;
        r2 = x1 * x1 + x2 * x2;
    } while (r2 >= 1.0 || r2 == 0.0);
    const double f = std::sqrt(-2.0 * std::log(r2) / r2);
    gauss_ = f * x1;
    has_gauss_ = true;
    return f * x2;
}

namespace {
// A tensor of dtype T filled in C order by draw().
template <class T, class F>
Tensor fill_with(const Shape& size, F&& draw) {
    Tensor t = Tensor::empty(dtype_of<T>(), size);
    T* d = t.data<T>();
    for (std::int64_t i = 0; i < t.size(); ++i) d[i] = draw();
    return t;
}
}  // namespace

Tensor RandomState::random_sample(const Shape& size) {
    return fill_with<double>(size, [&] { return next_double(); });
}

Tensor RandomState::uniform(double low, double high, const Shape& size) {
    return fill_with<double>(size, [&] { return uniform(low, high); });
}

Tensor RandomState::binomial(std::int64_t n, double p, const Shape& size) {
    return fill_with<std::int64_t>(size, [&] { return binomial(n, p); });
}

Tensor RandomState::normal(double loc, double scale, const Shape& size) {
    return fill_with<double>(size, [&] { return normal(loc, scale); });
}

Tensor RandomState::to_blob() const {
    static_assert(std::is_trivially_copyable_v<RandomState>);
    Tensor t = Tensor::empty(DType::uint8, {static_cast<std::int64_t>(sizeof(RandomState))});
    std::memcpy(t.raw_data(), this, sizeof(RandomState));
    return t;
}

RandomState RandomState::from_blob(const Tensor& blob) {
    if (blob.dtype() != DType::uint8 || blob.size() != static_cast<std::int64_t>(sizeof(RandomState))) {
        throw UsageError(fmt::format("RandomState::from_blob: expected {} uint8 bytes, got {} {}", sizeof(RandomState),
                                     dtype_name(blob.dtype()), shape_string(blob.shape())));
    }
    RandomState r;
    std::memcpy(static_cast<void*>(&r), blob.contiguous().raw_data(), sizeof(RandomState));
    return r;
}

// ---------------------------------------------------------------- MRG31k3p

namespace mrg {

namespace {
using Mat = std::array<std::array<std::int64_t, 3>, 3>;

Mat matmul(const Mat& a, const Mat& b, std::int64_t m) {
    Mat c{};
    for (int i = 0; i < 3; ++i) {
        for (int j = 0; j < 3; ++j) {
            unsigned __int128 s = 0;
            for (int k = 0; k < 3; ++k) s += static_cast<unsigned __int128>(a[i][k]) * static_cast<unsigned __int128>(b[k][j]);
            c[i][j] = static_cast<std::int64_t>(s % static_cast<unsigned __int128>(m));
        }
    }
    return c;
}

// The recurrences as matrices on (x_{n-1}, x_{n-2}, x_{n-3}).
constexpr Mat kA1 = {{{0, 4194304, 129}, {1, 0, 0}, {0, 1, 0}}};
constexpr Mat kA2 = {{{32768, 0, 32769}, {1, 0, 0}, {0, 1, 0}}};

Mat power_of_two(const Mat& a, int e, std::int64_t m) {
    Mat r = a;
    for (int i = 0; i < e; ++i) r = matmul(r, r, m);
    return r;
}

void apply(const Mat& a, std::int64_t m, const std::int32_t* in, std::int32_t* out) {
    std::int64_t res[3];
    for (int i = 0; i < 3; ++i) {
        unsigned __int128 s = 0;
        for (int k = 0; k < 3; ++k) s += static_cast<unsigned __int128>(a[i][k]) * static_cast<unsigned __int128>(in[k]);
        res[i] = static_cast<std::int64_t>(s % static_cast<unsigned __int128>(m));
    }
    for (int i = 0; i < 3; ++i) out[i] = static_cast<std::int32_t>(res[i]);
}
}  // namespace

// One step of both components from the state words they read: y1 = (2^22 x12 + (2^7 + 1) x13)
// mod M1 and y2 = (2^15 x21 + (2^15 + 1) x23) mod M2, in exact arithmetic without division:
// 2^31 = 1 (mod M1) and 2^31 = 21069 (mod M2), so a product by 2^k splits into the low bits
// shifted up and the high bits folded back. Every partial sum stays below 2M, so one
// conditional subtraction (a select, vectorisable) reduces it.
inline void step_components(std::int64_t x12, std::int64_t x13, std::int64_t x21, std::int64_t x23, std::int64_t& y1,
                            std::int64_t& y2) {
    y1 = ((x12 & 511) << 22) + (x12 >> 9) + ((x13 & 16777215) << 7) + (x13 >> 24);
    y1 = (y1 & M1) + (y1 >> 31);
    y1 -= y1 >= M1 ? M1 : 0;
    y1 += x13;
    y1 -= y1 >= M1 ? M1 : 0;
    y2 = ((x21 & 65535) << 15) + 21069 * (x21 >> 16);
    y2 -= y2 >= M2 ? M2 : 0;
    std::int64_t y2b = ((x23 & 65535) << 15) + 21069 * (x23 >> 16);
    y2b -= y2b >= M2 ? M2 : 0;
    y2 += x23;
    y2 -= y2 >= M2 ? M2 : 0;
    y2 += y2b;
    y2 -= y2 >= M2 ? M2 : 0;
}

std::int32_t next(State& s) {
    std::int64_t y1, y2;
    step_components(s[1], s[2], s[3], s[5], y1, y2);
    s = {static_cast<std::int32_t>(y1), s[0], s[1], static_cast<std::int32_t>(y2), s[3], s[4]};
    return static_cast<std::int32_t>(y1 <= y2 ? y1 - y2 + M1 : y1 - y2);
}

State jump(const State& s, int e) {
    static const Mat a72_1 = power_of_two(kA1, 72, M1), a72_2 = power_of_two(kA2, 72, M2);
    static const Mat a134_1 = power_of_two(kA1, 134, M1), a134_2 = power_of_two(kA2, 134, M2);
    Mat m1, m2;
    if (e == 72) {
        m1 = a72_1;
        m2 = a72_2;
    } else if (e == 134) {
        m1 = a134_1;
        m2 = a134_2;
    } else {
        m1 = power_of_two(kA1, e, M1);
        m2 = power_of_two(kA2, e, M2);
    }
    State r;
    apply(m1, M1, s.data(), r.data());
    apply(m2, M2, s.data() + 3, r.data() + 3);
    return r;
}

std::int64_t guess_n_streams(std::optional<std::int64_t> n_elements) {
    constexpr std::int64_t kMax = 60 * 256;
    if (!n_elements) return kMax;
    std::int64_t n = *n_elements;
    if (n > 6) n = n / 6;
    return std::max<std::int64_t>(1, std::min(n, kMax));
}

Tensor substreams(const State& base, std::int64_t n_streams) {
    Tensor t = Tensor::empty(DType::int32, {n_streams, 6});
    auto* d = t.data<std::int32_t>();
    State cur = base;
    for (std::int64_t i = 0; i < n_streams; ++i) {
        if (i > 0) cur = jump(cur, 72);
        std::memcpy(d + i * 6, cur.data(), sizeof(State));
    }
    return t;
}

namespace {
constexpr double kNorm64 = 4.656612873077392578125e-10;  // 2^-31
constexpr float kNorm32 = 4.6566126e-10f;                 // largest float below 2^-31

// One step of up to kBlock streams held column-wise (x[k][j] = component k of stream j),
// writing their uniforms: next() in a loop the compiler vectorises.
constexpr int kBlock = 256;
// A block's states between the (n_streams, 6) rows and the column-wise block. Each row is
// read and written as three 64-bit words (two components each), which the compiler
// vectorises; component by component, these copies cost three times the draws themselves
// when there are many streams and few rounds (a symbolic size's 15360 streams).
using Word64 = std::uint64_t __attribute__((may_alias, aligned(4)));
static_assert(std::endian::native == std::endian::little, "load_block pairs components little-endian");

void load_block(const std::int32_t* rows, std::int32_t (&x)[6][kBlock], int nb) {
    const Word64* w = reinterpret_cast<const Word64*>(rows);
    for (int j = 0; j < nb; ++j) {
        for (int p = 0; p < 3; ++p) {
            const std::uint64_t v = w[3 * j + p];
            x[2 * p][j] = static_cast<std::int32_t>(static_cast<std::uint32_t>(v));
            x[2 * p + 1][j] = static_cast<std::int32_t>(static_cast<std::uint32_t>(v >> 32));
        }
    }
}

void store_block(const std::int32_t (&x)[6][kBlock], int nb, std::int32_t* rows) {
    Word64* w = reinterpret_cast<Word64*>(rows);
    for (int j = 0; j < nb; ++j) {
        for (int p = 0; p < 3; ++p) {
            w[3 * j + p] = static_cast<std::uint32_t>(x[2 * p][j]) |
                           static_cast<std::uint64_t>(static_cast<std::uint32_t>(x[2 * p + 1][j])) << 32;
        }
    }
}

template <class T, bool Unit>
void step_block(std::int32_t (&x)[6][kBlock], int count, T* __restrict out, T low, T high) {
    std::int32_t* __restrict x11 = x[0];
    std::int32_t* __restrict x12 = x[1];
    std::int32_t* __restrict x13 = x[2];
    std::int32_t* __restrict x21 = x[3];
    std::int32_t* __restrict x22 = x[4];
    std::int32_t* __restrict x23 = x[5];
    const T norm = std::is_same_v<T, float> ? static_cast<T>(kNorm32) : static_cast<T>(kNorm64);
#pragma omp simd
    for (int j = 0; j < count; ++j) {
        std::int64_t y1, y2;
        step_components(x12[j], x13[j], x21[j], x23[j], y1, y2);
        x13[j] = x12[j];
        x12[j] = x11[j];
        x11[j] = static_cast<std::int32_t>(y1);
        x23[j] = x22[j];
        x22[j] = x21[j];
        x21[j] = static_cast<std::int32_t>(y2);
        const std::int64_t z = y1 <= y2 ? y1 - y2 + M1 : y1 - y2;
        // float: z rounded to float, then a float product (two roundings, as Theano's C code).
        const T u = static_cast<T>(z) * norm;
        if constexpr (Unit) {
            out[j] = u;
        } else {
            out[j] = static_cast<T>(u * (high - low) + low);
        }
    }
}
}  // namespace

template <class T>
void uniform_fill(std::int32_t* rows, std::int64_t n_streams, std::int64_t n, T* out, T low, T high, int threads) {
    uniform_fill<T>(rows, rows, n_streams, n, out, low, high, threads);
}

template <class T>
void uniform_fill(const std::int32_t* src, std::int32_t* rows, std::int64_t n_streams, std::int64_t n, T* out, T low,
                  T high, int threads) {
    const bool unit = low == T(0) && high == T(1);
    const std::int64_t used = std::min(n, n_streams);
    const std::int64_t n_blocks = (used + kBlock - 1) / kBlock;
    // Blocks of streams are independent: the thread count never changes the draws.
    const int nt = static_cast<int>(std::min<std::int64_t>(std::min(threads, active_workers()), n_blocks));
    auto draw_block = [&](std::int64_t blk) {
        const std::int64_t b0 = blk * kBlock;
        const int nb = static_cast<int>(std::min<std::int64_t>(kBlock, used - b0));
        std::int32_t x[6][kBlock];
        load_block(src + b0 * 6, x, nb);
        // Round r draws element b0 + j + r * n_streams for each stream j of the block.
        for (std::int64_t first = b0; first < n; first += n_streams) {
            const int count = static_cast<int>(std::min<std::int64_t>(nb, n - first));
            // Streams past n do not draw in the last round.
            if (unit) {
                step_block<T, true>(x, count, out + first, low, high);
            } else {
                step_block<T, false>(x, count, out + first, low, high);
            }
        }
        store_block(x, nb, rows + b0 * 6);
    };
    // Each worker draws a run of whole blocks (the blocks do not depend on one another).
    team::run(std::min(nt, active_workers()), [&](int w, int n_workers) {
        const std::int64_t per = (n_blocks + n_workers - 1) / n_workers;
        for (std::int64_t blk = w * per; blk < std::min(n_blocks, (w + 1) * per); ++blk) draw_block(blk);
    });
    // Streams past n draw nothing and keep their state.
    if (src != rows && used < n_streams) {
        std::copy(src + used * 6, src + n_streams * 6, rows + used * 6);
    }
}

template void uniform_fill<float>(std::int32_t*, std::int64_t, std::int64_t, float*, float, float, int);
template void uniform_fill<double>(std::int32_t*, std::int64_t, std::int64_t, double*, double, double, int);
template void uniform_fill<float>(const std::int32_t*, std::int32_t*, std::int64_t, std::int64_t, float*, float, float,
                                  int);
template void uniform_fill<double>(const std::int32_t*, std::int32_t*, std::int64_t, std::int64_t, double*, double,
                                   double, int);

}  // namespace mrg

// ---------------------------------------------------------------- shared helpers

namespace {

Shape read_size(const std::string& op, const Tensor& size, int ndim) {
    if (size.size() != ndim) {
        throw UsageError(fmt::format("{}: size has {} entries, expected {}", op, size.size(), ndim));
    }
    Shape s(static_cast<std::size_t>(ndim));
    for (int i = 0; i < ndim; ++i) {
        s[i] = static_cast<std::int64_t>(size.at({i}));
        if (s[i] < 0) throw UsageError(fmt::format("{}: negative size {} at position {}", op, s[i], i));
    }
    return s;
}

// Static length of a size variable (x.shape(), a MakeVector, a constant).
int size_ndim(const Variable& v) {
    if (v.ndim() != 1 || !is_integer(v.dtype())) {
        throw UsageError(fmt::format("random size must be an integer vector, got {}", v.type().str()));
    }
    if (v.is_constant()) return static_cast<int>(v.node().value.size());
    if (v.is_apply()) {
        const Op* op = v.node().op.get();
        if (dynamic_cast<const ShapeOp*>(op)) return v.node().inputs[0].ndim();
        if (dynamic_cast<const MakeVector*>(op)) return static_cast<int>(v.node().inputs.size());
    }
    throw UsageError("random size: its length must be known when the graph is built (use x.shape(), a list of "
                     "scalars, or constants)");
}

// A size as an int64 vector variable. A literal size is checked here, when the graph is built,
// as Theano does: the numpy streams refuse a negative dimension, the MRG streams any below 1.
Variable size_variable(const Size& size, std::optional<std::int64_t>* n_elements, const char* who,
                       std::int64_t min_dim) {
    if (const auto* v = std::get_if<std::vector<std::int64_t>>(&size)) {
        for (std::size_t i = 0; i < v->size(); ++i) {
            if ((*v)[i] < min_dim) {
                throw UsageError(fmt::format("{}: size [{}] has dimension {} = {}; dimensions must be {}", who,
                                             fmt::join(*v, ", "), i, (*v)[i], min_dim > 0 ? "positive" : "non-negative"));
            }
        }
        std::int64_t n = 1;
        for (auto d : *v) n *= d;
        if (n_elements) *n_elements = n;
        return constant(Tensor::from_vector<std::int64_t>({static_cast<std::int64_t>(v->size())}, *v));
    }
    const Variable& s = std::get<Variable>(size);
    if (n_elements) n_elements->reset();
    return s.dtype() == DType::int64 ? s : cast(s, DType::int64);
}

// Theano hands float arguments to the generator as floatX constants.
double as_floatx(double v) { return config().floatX == DType::float32 ? static_cast<double>(static_cast<float>(v)) : v; }

template <class T>
void store(Tensor& out, std::int64_t i, double v) {
    out.data<T>()[i] = static_cast<T>(v);
}

}  // namespace

// ---------------------------------------------------------------- NumpyRandomOp

std::string NumpyRandomOp::name() const {
    const char* d = dist_ == Dist::binomial ? "binomial" : dist_ == Dist::uniform ? "uniform" : "normal";
    return fmt::format("RandomFunction{{{}, {}}}", d, dtype_name(dtype_));
}

bool NumpyRandomOp::props_equal(const Op& o) const {
    const auto& x = static_cast<const NumpyRandomOp&>(o);
    return x.dist_ == dist_ && x.dtype_ == dtype_ && x.ndim_ == ndim_;
}

std::size_t NumpyRandomOp::props_hash() const {
    return static_cast<std::size_t>(dist_) * 64 + static_cast<std::size_t>(dtype_) * 8 + static_cast<std::size_t>(ndim_);
}

std::vector<TensorType> NumpyRandomOp::make_types(const std::vector<Variable>& inputs) const {
    if (inputs.size() != 4) throw UsageError(name() + ": takes state, size and two parameters");
    if (inputs[0].dtype() != DType::uint8 || inputs[0].ndim() != 1) {
        throw UsageError(fmt::format("{}: input 0 (state) must be a uint8 vector, got {}", name(), inputs[0].type().str()));
    }
    return {inputs[0].type(), TensorType{dtype_, known_ones(inputs[1], ndim_)}};
}

void NumpyRandomOp::perform(const Node&, std::span<const Tensor* const> in, std::span<Tensor* const> out) const {
    RandomState rs = RandomState::from_blob(*in[0]);
    Shape shape = read_size(name(), *in[1], ndim_);
    const double a = in[2]->item();
    const double b = in[3]->item();
    out[1]->ensure(dtype_, shape);
    const std::int64_t n = out[1]->size();
    dispatch(dtype_, [&]<class T>() {
        T* o = out[1]->data<T>();
        for (std::int64_t i = 0; i < n; ++i) {
            double v;
            switch (dist_) {
            case Dist::binomial: v = static_cast<double>(rs.binomial(static_cast<std::int64_t>(a), b)); break;
            case Dist::uniform: v = rs.uniform(a, b); break;
            default: v = rs.normal(a, b); break;
            }
            o[i] = static_cast<T>(v);
        }
    });
    out[0]->ensure(DType::uint8, in[0]->shape());
    std::memcpy(out[0]->raw_data(), &rs, sizeof(RandomState));
}

std::vector<Variable> NumpyRandomOp::pullback(const Node& node, const std::vector<Variable>&) const {
    std::vector<Variable> g(node.inputs.size());
    for (std::size_t i = 2; i < g.size(); ++i) g[i] = not_differentiable(*this, static_cast<int>(i));
    return g;
}

// ---------------------------------------------------------------- NumpySampleOp

std::string NumpySampleOp::name() const {
    switch (kind_) {
    case Kind::random_integers: return "RandomFunction{random_integers}";
    case Kind::permutation: return "RandomFunction{permutation}";
    case Kind::choice: return replace_ ? "RandomFunction{choice}" : "RandomFunction{choice, no replace}";
    case Kind::multinomial: return "RandomFunction{multinomial}";
    }
    return "RandomFunction";
}

bool NumpySampleOp::props_equal(const Op& o) const {
    const auto& x = static_cast<const NumpySampleOp&>(o);
    return x.kind_ == kind_ && x.ndim_ == ndim_ && x.replace_ == replace_;
}

std::size_t NumpySampleOp::props_hash() const {
    return 2000 + static_cast<std::size_t>(kind_) * 64 + static_cast<std::size_t>(ndim_) * 2 + (replace_ ? 1 : 0);
}

std::vector<TensorType> NumpySampleOp::make_types(const std::vector<Variable>& inputs) const {
    const std::size_t want = kind_ == Kind::permutation ? 3 : 4;
    if (inputs.size() != want) throw UsageError(fmt::format("{}: takes {} inputs, got {}", name(), want, inputs.size()));
    if (inputs[0].dtype() != DType::uint8 || inputs[0].ndim() != 1) {
        throw UsageError(fmt::format("{}: input 0 (state) must be a uint8 vector, got {}", name(), inputs[0].type().str()));
    }
    auto int_scalar = [&](std::size_t i, const char* what) {
        if (inputs[i].ndim() != 0 || inputs[i].dtype() != DType::int64) {
            throw UsageError(fmt::format("{}: input {} ({}) must be an int64 scalar, got {}", name(), i, what,
                                         inputs[i].type().str()));
        }
    };
    auto float_vector = [&](std::size_t i, const char* what) {
        if (inputs[i].ndim() != 1 || inputs[i].dtype() != DType::float64) {
            throw UsageError(fmt::format("{}: input {} ({}) must be a float64 vector, got {}", name(), i, what,
                                         inputs[i].type().str()));
        }
    };
    int extra = 0;
    switch (kind_) {
    case Kind::random_integers: int_scalar(2, "low"); int_scalar(3, "high"); break;
    case Kind::permutation: int_scalar(2, "n"); extra = 1; break;
    case Kind::choice: int_scalar(2, "a"); float_vector(3, "p"); break;
    case Kind::multinomial: int_scalar(2, "n"); float_vector(3, "pvals"); extra = 1; break;
    }
    std::vector<bool> bc = known_ones(inputs[1], ndim_);
    for (int k = 0; k < extra; ++k) bc.push_back(false);
    return {inputs[0].type(), TensorType{DType::int64, bc}};
}

namespace {
// numpy's legacy shuffle of a[0..n): from the end, each element swapped with one of those up
// to it (an interval draw by masked rejection).
void shuffle(RandomState& rs, std::int64_t* a, std::int64_t n) {
    for (std::int64_t i = n - 1; i >= 1; --i) std::swap(a[i], a[rs.randint(i + 1)]);
}

// The first index whose cumulative probability is above u (numpy's searchsorted, side right).
std::int64_t search_right(const std::vector<double>& cdf, double u) {
    return static_cast<std::int64_t>(std::upper_bound(cdf.begin(), cdf.end(), u) - cdf.begin());
}

std::vector<double> normalised_cdf(const std::vector<double>& p) {
    std::vector<double> cdf(p.size());
    double run = 0;
    for (std::size_t i = 0; i < p.size(); ++i) cdf[i] = run += p[i];
    for (double& c : cdf) c /= cdf.back();
    return cdf;
}

std::vector<double> probabilities(const std::string& op, const Tensor& p, std::int64_t expect) {
    const std::vector<double> v = p.to_doubles();
    if (expect >= 0 && static_cast<std::int64_t>(v.size()) != expect) {
        throw UsageError(fmt::format("{}: p has {} entries for a population of {}", op, v.size(), expect));
    }
    double total = 0;
    for (double x : v) {
        if (!(x >= 0 && x <= 1)) throw UsageError(fmt::format("{}: probabilities must be in [0, 1], got {}", op, x));
        total += x;
    }
    if (std::abs(total - 1) > 1e-8) throw UsageError(fmt::format("{}: probabilities do not sum to 1 (sum {})", op, total));
    return v;
}
}  // namespace

void NumpySampleOp::perform(const Node&, std::span<const Tensor* const> in, std::span<Tensor* const> out) const {
    RandomState rs = RandomState::from_blob(*in[0]);
    const Shape size = read_size(name(), *in[1], ndim_);
    std::int64_t count = 1;
    for (auto d : size) count *= d;
    Shape shape = size;
    switch (kind_) {
    case Kind::random_integers: {
        const std::int64_t lo = in[2]->item_int(), hi = in[3]->item_int();
        if (hi < lo) throw UsageError(fmt::format("{}: high {} is below low {}", name(), hi, lo));
        out[1]->ensure(DType::int64, shape);
        auto* o = out[1]->data<std::int64_t>();
        for (std::int64_t i = 0; i < count; ++i) o[i] = lo + rs.randint(hi - lo + 1);
        break;
    }
    case Kind::permutation: {
        const std::int64_t n = in[2]->item_int();
        if (n < 0) throw UsageError(fmt::format("{}: n must not be negative, got {}", name(), n));
        shape.push_back(n);
        out[1]->ensure(DType::int64, shape);
        auto* o = out[1]->data<std::int64_t>();
        for (std::int64_t i = 0; i < count; ++i) {
            std::int64_t* row = o + i * n;
            for (std::int64_t j = 0; j < n; ++j) row[j] = j;
            shuffle(rs, row, n);
        }
        break;
    }
    case Kind::choice: {
        const std::int64_t a = in[2]->item_int();
        if (a <= 0) throw UsageError(fmt::format("{}: the population a must be positive, got {}", name(), a));
        const bool uniform = in[3]->size() == 0;
        out[1]->ensure(DType::int64, shape);
        auto* o = out[1]->data<std::int64_t>();
        if (replace_ && uniform) {
            for (std::int64_t i = 0; i < count; ++i) o[i] = rs.randint(a);
        } else if (replace_) {
            const std::vector<double> cdf = normalised_cdf(probabilities(name(), *in[3], a));
            for (std::int64_t i = 0; i < count; ++i) o[i] = search_right(cdf, rs.next_double());
        } else {
            if (!uniform) throw UsageError(fmt::format("{}: p is not supported without replacement", name()));
            if (count > a) {
                throw UsageError(fmt::format("{}: cannot take {} samples of {} without replacement", name(), count, a));
            }
            // numpy: the first count entries of a permutation of the population.
            std::vector<std::int64_t> perm(static_cast<std::size_t>(a));
            for (std::int64_t j = 0; j < a; ++j) perm[static_cast<std::size_t>(j)] = j;
            shuffle(rs, perm.data(), a);
            std::copy(perm.begin(), perm.begin() + count, o);
        }
        break;
    }
    case Kind::multinomial: {
        const std::int64_t n = in[2]->item_int();
        if (n < 0) throw UsageError(fmt::format("{}: n must not be negative, got {}", name(), n));
        const std::vector<double> p = probabilities(name(), *in[3], -1);
        const auto d = static_cast<std::int64_t>(p.size());
        shape.push_back(d);
        out[1]->ensure(DType::int64, shape);
        auto* o = out[1]->data<std::int64_t>();
        std::fill(o, o + count * d, std::int64_t{0});
        // numpy's legacy method: a binomial per outcome on what is left.
        for (std::int64_t i = 0; i < count; ++i) {
            std::int64_t* row = o + i * d;
            double rest = 1.0;
            std::int64_t left = n;
            for (std::int64_t j = 0; j + 1 < d; ++j) {
                // (rounding in rest can put the ratio a hair above 1 when later outcomes are 0)
                row[j] = rs.binomial(left, std::min(1.0, p[static_cast<std::size_t>(j)] / rest));
                left -= row[j];
                if (left <= 0) break;
                rest -= p[static_cast<std::size_t>(j)];
            }
            if (left > 0) row[d - 1] = left;
        }
        break;
    }
    }
    out[0]->ensure(DType::uint8, in[0]->shape());
    std::memcpy(out[0]->raw_data(), &rs, sizeof(RandomState));
}

std::vector<Variable> NumpySampleOp::pullback(const Node& node, const std::vector<Variable>&) const {
    std::vector<Variable> g(node.inputs.size());
    for (std::size_t i = 2; i < g.size(); ++i) g[i] = not_differentiable(*this, static_cast<int>(i));
    return g;
}

RandomStreams::RandomStreams(std::uint32_t seed) : seedgen_(seed) {}

SharedVariable RandomStreams::next_state() {
    RandomState rs(static_cast<std::uint32_t>(seedgen_.randint(1LL << 30)));
    SharedVariable state = shared(rs.to_blob(), fmt::format("random_state_{}", states_.size()));
    states_.push_back(state);
    return state;
}

Variable RandomStreams::sample(NumpySampleOp::Kind kind, const Size& size, std::vector<Variable> params, bool replace) {
    Variable sz = size_variable(size, nullptr, "RandomStreams", 0);
    SharedVariable state = next_state();
    std::vector<Variable> ins = {state, sz};
    ins.insert(ins.end(), params.begin(), params.end());
    auto outs = theanine::apply(std::make_shared<NumpySampleOp>(kind, size_ndim(sz), replace), ins);
    state.tie_default_update(outs[0]);
    return outs[1];
}

namespace {
Variable int_param(const char* who, const char* what, const Variable& v) {
    if (!v.defined() || v.ndim() != 0 || !is_integer(v.dtype())) {
        throw UsageError(fmt::format("{}: {} must be an integer scalar, got {}", who, what,
                                     v.defined() ? v.type().str() : std::string("an undefined Variable")));
    }
    return v.dtype() == DType::int64 ? v : cast(v, DType::int64);
}
Variable prob_param(const char* who, const char* what, const Variable& v) {
    if (!v.defined() || v.ndim() != 1 || !is_float(v.dtype())) {
        throw UsageError(fmt::format("{}: {} must be a float vector, got {}", who, what,
                                     v.defined() ? v.type().str() : std::string("an undefined Variable")));
    }
    return v.dtype() == DType::float64 ? v : cast(v, DType::float64);
}
}  // namespace

Variable RandomStreams::random_integers(const Size& size, const Variable& low, const Variable& high) {
    const char* who = "RandomStreams::random_integers";
    return sample(NumpySampleOp::Kind::random_integers, size, {int_param(who, "low", low), int_param(who, "high", high)});
}

Variable RandomStreams::permutation(const Size& size, const Variable& n) {
    return sample(NumpySampleOp::Kind::permutation, size, {int_param("RandomStreams::permutation", "n", n)});
}

Variable RandomStreams::choice(const Size& size, const Variable& a, bool replace, const std::optional<Variable>& p) {
    const char* who = "RandomStreams::choice";
    Variable pv = p ? prob_param(who, "p", *p) : constant(Tensor::zeros(DType::float64, {0}));
    return sample(NumpySampleOp::Kind::choice, size, {int_param(who, "a", a), pv}, replace);
}

Variable RandomStreams::multinomial(const Size& size, const Variable& n, const Variable& pvals) {
    const char* who = "RandomStreams::multinomial";
    return sample(NumpySampleOp::Kind::multinomial, size, {int_param(who, "n", n), prob_param(who, "pvals", pvals)});
}

Variable RandomStreams::make(NumpyRandomOp::Dist dist, const Size& size, Variable a, Variable b, DType dtype) {
    Variable sz = size_variable(size, nullptr, "RandomStreams", 0);
    int nd = size_ndim(sz);
    SharedVariable state = next_state();
    auto outs = apply(std::make_shared<NumpyRandomOp>(dist, dtype, nd),
                      {state, sz, cast(a, DType::float64), cast(b, DType::float64)});
    state.tie_default_update(outs[0]);
    return outs[1];
}

Variable RandomStreams::binomial(const Size& size, std::int64_t n, double p, std::optional<DType> dtype) {
    if (n < 0 || !(p >= 0 && p <= 1)) {
        throw UsageError(fmt::format("RandomStreams::binomial: needs n >= 0 and 0 <= p <= 1, got n={} p={}", n, p));
    }
    return make(NumpyRandomOp::Dist::binomial, size, constant(static_cast<double>(n), DType::float64),
                constant(as_floatx(p), DType::float64), dtype.value_or(DType::int64));
}

Variable RandomStreams::binomial(const Size& size, std::int64_t n, const Variable& p, std::optional<DType> dtype) {
    if (n < 0) throw UsageError(fmt::format("RandomStreams::binomial: needs n >= 0, got n={}", n));
    if (p.ndim() != 0 || !is_float(p.dtype())) {
        throw UsageError(fmt::format("RandomStreams::binomial: p must be a float scalar, got {}", p.type().str()));
    }
    return make(NumpyRandomOp::Dist::binomial, size, constant(static_cast<double>(n), DType::float64), p,
                dtype.value_or(DType::int64));
}

Variable RandomStreams::uniform(const Size& size, double low, double high, std::optional<DType> dtype) {
    return make(NumpyRandomOp::Dist::uniform, size, constant(as_floatx(low), DType::float64),
                constant(as_floatx(high), DType::float64), dtype.value_or(config().floatX));
}

Variable RandomStreams::normal(const Size& size, double avg, double std, std::optional<DType> dtype) {
    return make(NumpyRandomOp::Dist::normal, size, constant(as_floatx(avg), DType::float64),
                constant(as_floatx(std), DType::float64), dtype.value_or(config().floatX));
}

namespace {
// A distribution parameter given as a variable: a number (integer or float) tensor.
void check_param(const char* who, const char* what, const Variable& v) {
    if (!v.defined() || (!is_float(v.dtype()) && !is_integer(v.dtype()))) {
        throw UsageError(fmt::format("{}: {} must be a number tensor, got {}", who, what,
                                     v.defined() ? v.type().str() : std::string("an undefined Variable")));
    }
}
}  // namespace

Variable RandomStreams::uniform(const Size& size, const Variable& low, const Variable& high, std::optional<DType> dtype) {
    check_param("RandomStreams::uniform", "low", low);
    check_param("RandomStreams::uniform", "high", high);
    const DType dt = dtype.value_or(config().floatX);
    if (low.ndim() == 0 && high.ndim() == 0) return make(NumpyRandomOp::Dist::uniform, size, low, high, dt);
    // numpy's low + (high - low) * u elementwise, in float64, then cast.
    Variable u = make(NumpyRandomOp::Dist::uniform, size, constant(0.0, DType::float64), constant(1.0, DType::float64),
                      DType::float64);
    Variable lo = cast(low, DType::float64), hi = cast(high, DType::float64);
    return cast(add(lo, mul(sub(hi, lo), u)), dt);
}

Variable RandomStreams::normal(const Size& size, const Variable& avg, const Variable& std, std::optional<DType> dtype) {
    check_param("RandomStreams::normal", "avg", avg);
    check_param("RandomStreams::normal", "std", std);
    const DType dt = dtype.value_or(config().floatX);
    if (avg.ndim() == 0 && std.ndim() == 0) return make(NumpyRandomOp::Dist::normal, size, avg, std, dt);
    Variable z = make(NumpyRandomOp::Dist::normal, size, constant(0.0, DType::float64), constant(1.0, DType::float64),
                      DType::float64);
    return cast(add(cast(avg, DType::float64), mul(cast(std, DType::float64), z)), dt);
}

void RandomStreams::seed(std::uint32_t s) {
    seedgen_ = RandomState(s);
    for (auto& st : states_) {
        st.set_value(RandomState(static_cast<std::uint32_t>(seedgen_.randint(1LL << 30))).to_blob(), true);
    }
}

RandomState RandomStreams::state(std::size_t k) const {
    if (k >= states_.size()) {
        throw UsageError(fmt::format("RandomStreams::state: {} random variables made, asked for {}", states_.size(), k));
    }
    return RandomState::from_blob(states_[k].get_value(true));
}

// ---------------------------------------------------------------- MRGRandomOp

std::string MRGRandomOp::name() const {
    return fmt::format("mrg_{}{{{}}}", dist_ == Dist::uniform ? "uniform" : "normal", dtype_name(dtype_));
}

bool MRGRandomOp::props_equal(const Op& o) const {
    const auto& x = static_cast<const MRGRandomOp&>(o);
    return x.dist_ == dist_ && x.dtype_ == dtype_ && x.ndim_ == ndim_;
}

std::size_t MRGRandomOp::props_hash() const {
    return 1000 + static_cast<std::size_t>(dist_) * 64 + static_cast<std::size_t>(dtype_) * 8 + static_cast<std::size_t>(ndim_);
}

std::vector<TensorType> MRGRandomOp::make_types(const std::vector<Variable>& inputs) const {
    const std::size_t want = dist_ == Dist::uniform ? 4 : 4;
    if (inputs.size() != want) throw UsageError(name() + ": takes rstate, size and two parameters");
    if (inputs[0].dtype() != DType::int32 || inputs[0].ndim() != 2) {
        throw UsageError(fmt::format("{}: input 0 (rstate) must be an int32 matrix, got {}", name(), inputs[0].type().str()));
    }
    if (!is_float(dtype_)) throw UsageError(fmt::format("{}: the output dtype must be float32 or float64", name()));
    return {inputs[0].type(), TensorType{dtype_, known_ones(inputs[1], ndim_)}};
}

namespace {
// z in [1, M1] as a uniform in (0, 1], converted as Theano's compiled code converts it.
template <class T>
T to_uniform(std::int32_t z) {
    if constexpr (std::is_same_v<T, float>) {
        return static_cast<float>(z) * mrg::kNorm32;
    } else {
        return static_cast<double>(z) * mrg::kNorm64;
    }
}
}  // namespace

void MRGRandomOp::validate(const Node&, std::span<const Tensor* const> in) const {
    const Tensor& rs = *in[0];
    read_size(name(), *in[1], ndim_);
    if (rs.ndim() != 2 || rs.dim(0) < 1 || rs.dim(1) != 6) {
        throw UsageError(fmt::format("{}: rstate has shape {}, expected (n_streams, 6)", name(), shape_string(rs.shape())));
    }
}

void MRGRandomOp::perform(const Node& node, std::span<const Tensor* const> in, std::span<Tensor* const> out) const {
    validate(node, in);
    const Tensor& rs = *in[0];
    Shape shape = read_size(name(), *in[1], ndim_);
    const std::int64_t n = shape_size(shape);
    const std::int64_t n_streams = rs.dim(0);
    const bool in_place = out[0] == in[0];
    const Tensor src = in_place ? Tensor() : rs.contiguous();
    if (!in_place) {
        // Not granted in place: uniform draws read the old state and write the new one to
        // the output; normal draws advance a copy.
        out[0]->ensure(DType::int32, rs.shape());
        if (dist_ != Dist::uniform) out[0]->copy_from(rs);
    }
    auto* st = out[0]->data<std::int32_t>();
    out[1]->ensure(dtype_, shape);
    // Uniforms needed: normal draws an even count (Box-Muller pairs).
    const std::int64_t n_draw = dist_ == Dist::uniform ? n : n + (n % 2);
    dispatch(dtype_, [&]<class T>() {
        if constexpr (std::is_floating_point_v<T>) {
            T* o = out[1]->data<T>();
            std::int64_t stream = 0;  // element i uses stream i % n_streams, in order
            auto draw = [&](std::int64_t) {
                auto* row = reinterpret_cast<mrg::State*>(st + stream * 6);
                if (++stream == n_streams) stream = 0;
                return to_uniform<T>(mrg::next(*row));
            };
            if (dist_ == Dist::uniform) {
                const int nt = n >= 8192 ? num_threads() : 1;
                const std::int32_t* from = in_place ? st : src.data<std::int32_t>();
                mrg::uniform_fill<T>(from, st, n_streams, n, o, static_cast<T>(in[2]->item()),
                                     static_cast<T>(in[3]->item()), nt);
                return;
            }
            const T avg = static_cast<T>(in[2]->item()), sd = static_cast<T>(in[3]->item());
            const std::int64_t half = n_draw / 2;
            std::vector<T> u(static_cast<std::size_t>(n_draw));
            for (std::int64_t i = 0; i < n_draw; ++i) u[i] = draw(i);
            const T two_pi = static_cast<T>(2 * M_PI);
            for (std::int64_t i = 0; i < half; ++i) {
                const T r = std::sqrt(static_cast<T>(T(-2) * std::log(u[i])));
                const T theta = static_cast<T>(two_pi * u[half + i]);
                const T a = static_cast<T>(r * std::cos(theta));
                const T b = static_cast<T>(r * std::sin(theta));
                o[i] = static_cast<T>(a * sd + avg);
                if (half + i < n) o[half + i] = static_cast<T>(b * sd + avg);
            }
        }
    });
}

std::vector<Variable> MRGRandomOp::pullback(const Node& node, const std::vector<Variable>&) const {
    std::vector<Variable> g(node.inputs.size());
    for (std::size_t i = 2; i < g.size(); ++i) g[i] = not_differentiable(*this, static_cast<int>(i));
    return g;
}

namespace {
mrg::State mrg_base_state(const char* who, std::uint32_t seed) {
    if (seed == 0 || seed >= static_cast<std::uint32_t>(mrg::M2)) {
        throw UsageError(fmt::format("{}: the seed must be in [1, {}), got {}", who, mrg::M2, seed));
    }
    mrg::State s;
    s.fill(static_cast<std::int32_t>(seed));
    return s;
}
}  // namespace

MRG_RandomStreams::MRG_RandomStreams(std::uint32_t seed)
    : rstate_(mrg_base_state("MRG_RandomStreams", seed)), initial_seed_(seed) {}

void MRG_RandomStreams::seed(std::optional<std::uint32_t> s) {
    rstate_ = mrg_base_state("MRG_RandomStreams::seed", s.value_or(initial_seed_));
    // Each state variable, in the order made, gets the substreams a new object with this seed
    // would have given it: as many streams as it holds, from the base state, which then jumps.
    for (auto& st : states_) {
        const std::int64_t n_streams = st.get_value(true).dim(0);
        st.set_value(mrg::substreams(rstate_, n_streams), true);
        rstate_ = mrg::jump(rstate_, 134);
    }
}

SharedVariable MRG_RandomStreams::new_state(const Size&, std::optional<std::int64_t> n_elements) {
    std::int64_t n_streams = mrg::guess_n_streams(n_elements);
    SharedVariable st = shared(mrg::substreams(rstate_, n_streams), fmt::format("rstate_{}", states_.size()));
    rstate_ = mrg::jump(rstate_, 134);
    states_.push_back(st);
    return st;
}

Variable MRG_RandomStreams::uniform(const Size& size, double low, double high, std::optional<DType> dtype) {
    DType dt = dtype.value_or(config().floatX);
    std::optional<std::int64_t> n;
    Variable sz = size_variable(size, &n, "MRG_RandomStreams::uniform", 1);
    int nd = size_ndim(sz);
    SharedVariable st = new_state(size, n);
    auto outs = apply(std::make_shared<MRGRandomOp>(MRGRandomOp::Dist::uniform, dt, nd),
                      {st, sz, constant(as_floatx(low), dt), constant(as_floatx(high), dt)});
    st.tie_default_update(outs[0]);
    return outs[1];
}

Variable MRG_RandomStreams::uniform(const Size& size, const Variable& low, const Variable& high,
                                    std::optional<DType> dtype) {
    check_param("MRG_RandomStreams::uniform", "low", low);
    check_param("MRG_RandomStreams::uniform", "high", high);
    const DType dt = dtype.value_or(config().floatX);
    if (!is_float(dt)) throw UsageError(fmt::format("MRG_RandomStreams::uniform: dtype must be a float, got {}", dtype_name(dt)));
    Variable lo = cast(low, dt), hi = cast(high, dt);
    if (low.ndim() == 0 && high.ndim() == 0) {
        std::optional<std::int64_t> n;
        Variable sz = size_variable(size, &n, "MRG_RandomStreams::uniform", 1);
        SharedVariable st = new_state(size, n);
        auto outs = apply(std::make_shared<MRGRandomOp>(MRGRandomOp::Dist::uniform, dt, size_ndim(sz)), {st, sz, lo, hi});
        st.tie_default_update(outs[0]);
        return outs[1];
    }
    // The sampler's own u * (high - low) + low, elementwise.
    return add(mul(uniform(size, 0.0, 1.0, dt), sub(hi, lo)), lo);
}

Variable MRG_RandomStreams::normal(const Size& size, const Variable& avg, const Variable& std,
                                   std::optional<DType> dtype) {
    check_param("MRG_RandomStreams::normal", "avg", avg);
    check_param("MRG_RandomStreams::normal", "std", std);
    const DType dt = dtype.value_or(config().floatX);
    if (!is_float(dt)) throw UsageError(fmt::format("MRG_RandomStreams::normal: dtype must be a float, got {}", dtype_name(dt)));
    Variable a = cast(avg, dt), sd = cast(std, dt);
    if (avg.ndim() == 0 && std.ndim() == 0) {
        Variable sz = size_variable(size, nullptr, "MRG_RandomStreams::normal", 1);
        SharedVariable st = new_state(size, std::nullopt);
        auto outs = apply(std::make_shared<MRGRandomOp>(MRGRandomOp::Dist::normal, dt, size_ndim(sz)), {st, sz, a, sd});
        st.tie_default_update(outs[0]);
        return outs[1];
    }
    // The sampler's own z * std + avg, elementwise.
    return add(mul(normal(size, 0.0, 1.0, dt), sd), a);
}

std::vector<TensorType> MultinomialFromUniform::make_types(const std::vector<Variable>& inputs) const {
    if (inputs.size() != 3) throw UsageError("MultinomialFromUniform: takes pvals, unis and n");
    if (inputs[0].ndim() != 2 || !is_float(inputs[0].dtype())) {
        throw UsageError(fmt::format("MultinomialFromUniform: input 0 (pvals) must be a float matrix, got {}",
                                     inputs[0].type().str()));
    }
    if (inputs[1].ndim() != 1 || !is_float(inputs[1].dtype())) {
        throw UsageError(fmt::format("MultinomialFromUniform: input 1 (unis) must be a float vector, got {}",
                                     inputs[1].type().str()));
    }
    if (inputs[2].ndim() != 0 || !is_integer(inputs[2].dtype())) {
        throw UsageError(fmt::format("MultinomialFromUniform: input 2 (n) must be an integer scalar, got {}",
                                     inputs[2].type().str()));
    }
    return {TensorType{DType::int64, {false, false}}};
}

void MultinomialFromUniform::perform(const Node&, std::span<const Tensor* const> in, std::span<Tensor* const> out) const {
    const Tensor pv = in[0]->contiguous();
    const std::vector<double> unis = in[1]->to_doubles();
    const std::int64_t n = in[2]->item_int();
    const std::int64_t rows = pv.dim(0), k = pv.dim(1);
    if (n < 0 || static_cast<std::int64_t>(unis.size()) != rows * n) {
        throw UsageError(fmt::format("MultinomialFromUniform: {} uniforms for {} rows and n = {} (need rows * n)",
                                     unis.size(), rows, n));
    }
    out[0]->ensure(DType::int64, {rows, k});
    auto* o = out[0]->data<std::int64_t>();
    std::fill(o, o + rows * k, std::int64_t{0});
    dispatch(pv.dtype(), [&]<class T>() {
        if constexpr (std::is_floating_point_v<T>) {
            const T* p = pv.data<T>();
            for (std::int64_t c = 0; c < n; ++c) {
                for (std::int64_t r = 0; r < rows; ++r) {
                    const double u = unis[static_cast<std::size_t>(c * rows + r)];
                    double run = 0;  // summed in double whatever pvals' dtype, as Theano's
                    for (std::int64_t m = 0; m < k; ++m) {
                        run += static_cast<double>(p[r * k + m]);
                        if (run > u) {
                            ++o[r * k + m];
                            break;
                        }
                    }
                }
            }
        }
    });
}

std::vector<Variable> MultinomialFromUniform::pullback(const Node&, const std::vector<Variable>&) const {
    return {not_differentiable(*this, 0, "a draw has no gradient in its probabilities"),
            not_differentiable(*this, 1), Variable()};
}

std::vector<TensorType> ChoiceFromUniform::make_types(const std::vector<Variable>& inputs) const {
    MultinomialFromUniform().make_types(inputs);  // the same inputs: pvals matrix, unis vector, n
    return {TensorType{DType::int64, {false, false}}};
}

void ChoiceFromUniform::perform(const Node&, std::span<const Tensor* const> in, std::span<Tensor* const> out) const {
    const std::vector<double> p0 = in[0]->contiguous().to_doubles();
    const std::vector<double> unis = in[1]->to_doubles();
    const std::int64_t n = in[2]->item_int();
    const std::int64_t rows = in[0]->dim(0), k = in[0]->dim(1);
    if (n < 0 || n > k || static_cast<std::int64_t>(unis.size()) != rows * n) {
        throw UsageError(fmt::format("ChoiceFromUniform: {} uniforms for {} rows of {} outcomes and n = {} (need "
                                     "rows * n, n at most the outcomes)", unis.size(), rows, k, n));
    }
    out[0]->ensure(DType::int64, {rows, n});
    auto* o = out[0]->data<std::int64_t>();
    std::vector<double> p = p0;  // each row renormalised as outcomes are taken
    for (std::int64_t c = 0; c < n; ++c) {
        for (std::int64_t r = 0; r < rows; ++r) {
            double* row = p.data() + r * k;
            const double u = unis[static_cast<std::size_t>(c * rows + r)];
            double run = 0;
            std::int64_t pick = -1;  // Theano's mark where rounding leaves the whole sum at or below u
            for (std::int64_t m = 0; m < k; ++m) {
                run += row[m];
                if (run > u) {
                    pick = m;
                    break;
                }
            }
            o[r * n + c] = pick;
            if (pick < 0) continue;
            row[pick] = 0;
            double total = 0;
            for (std::int64_t m = 0; m < k; ++m) total += row[m];
            if (total > 0) {
                for (std::int64_t m = 0; m < k; ++m) row[m] /= total;
            }
        }
    }
}

std::vector<Variable> ChoiceFromUniform::pullback(const Node&, const std::vector<Variable>&) const {
    return {not_differentiable(*this, 0, "a draw has no gradient in its probabilities"),
            not_differentiable(*this, 1), Variable()};
}

Variable MRG_RandomStreams::choice(const Variable& pvals, std::int64_t n) {
    if (!pvals.defined() || pvals.ndim() != 2 || !is_float(pvals.dtype())) {
        throw UsageError(fmt::format("MRG_RandomStreams::choice: pvals must be a float matrix (a row of probabilities "
                                     "per sample), got {}",
                                     pvals.defined() ? pvals.type().str() : std::string("an undefined Variable")));
    }
    if (n < 1) throw UsageError(fmt::format("MRG_RandomStreams::choice: n must be at least 1, got {}", n));
    Variable count = mul(pvals.shape(0), constant(static_cast<double>(n), DType::int64));
    Variable unis = uniform(Size(make_vector({count})), 0.0, 1.0, config().floatX);
    return apply1(std::make_shared<ChoiceFromUniform>(), {pvals, unis, constant(Tensor::scalar<std::int64_t>(n))});
}

Variable MRG_RandomStreams::multinomial(const Variable& pvals, std::int64_t n) {
    if (!pvals.defined() || pvals.ndim() != 2 || !is_float(pvals.dtype())) {
        throw UsageError(fmt::format("MRG_RandomStreams::multinomial: pvals must be a float matrix (a row of "
                                     "probabilities per sample), got {}",
                                     pvals.defined() ? pvals.type().str() : std::string("an undefined Variable")));
    }
    if (n < 1) throw UsageError(fmt::format("MRG_RandomStreams::multinomial: n must be at least 1, got {}", n));
    // One uniform (floatX) per row and draw, as Theano's.
    Variable count = mul(pvals.shape(0), constant(static_cast<double>(n), DType::int64));
    Variable unis = uniform(Size(make_vector({count})), 0.0, 1.0, config().floatX);
    return apply1(std::make_shared<MultinomialFromUniform>(),
                  {pvals, unis, constant(Tensor::scalar<std::int64_t>(n))});
}

Variable MRG_RandomStreams::binomial(const Size& size, std::int64_t n, double p, std::optional<DType> dtype) {
    if (n != 1) throw UsageError(fmt::format("MRG_RandomStreams::binomial: only n=1 is supported, got n={}", n));
    if (!(p >= 0 && p <= 1)) throw UsageError(fmt::format("MRG_RandomStreams::binomial: p must be in [0, 1], got {}", p));
    Variable u = uniform(size, 0.0, 1.0, config().floatX);
    return cast(lt(u, constant(p, config().floatX)), dtype.value_or(DType::int64));
}

Variable MRG_RandomStreams::binomial(const Size& size, std::int64_t n, const Variable& p, std::optional<DType> dtype) {
    if (n != 1) throw UsageError(fmt::format("MRG_RandomStreams::binomial: only n=1 is supported, got n={}", n));
    if (!is_float(p.dtype())) {
        throw UsageError(fmt::format("MRG_RandomStreams::binomial: p must be a float scalar or tensor, got {}",
                                     p.type().str()));
    }
    // cast(uniform(size) < p): p may be a tensor of the sample's shape (an RBM's sigmoid
    // means), compared in the wider of the two dtypes as Theano compares them.
    Variable u = uniform(size, 0.0, 1.0, config().floatX);
    return cast(lt(u, p), dtype.value_or(DType::int64));
}

Variable MRG_RandomStreams::normal(const Size& size, double avg, double std, std::optional<DType> dtype) {
    DType dt = dtype.value_or(config().floatX);
    Variable sz = size_variable(size, nullptr, "MRG_RandomStreams::normal", 1);
    int nd = size_ndim(sz);
    // Theano's normal always passes a symbolic length to its uniform: the symbolic stream count.
    SharedVariable st = new_state(size, std::nullopt);
    auto outs = apply(std::make_shared<MRGRandomOp>(MRGRandomOp::Dist::normal, dt, nd),
                      {st, sz, constant(as_floatx(avg), dt), constant(as_floatx(std), dt)});
    st.tie_default_update(outs[0]);
    return outs[1];
}

}  // namespace theanine
