#include "ops/products.hpp"

#include <fcntl.h>
#include <sys/file.h>
#include <unistd.h>

#if defined(__AVX512F__)
#include <immintrin.h>
#endif

#include <algorithm>
#include <chrono>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <mutex>
#include <optional>
#include <shared_mutex>
#include <sstream>
#include <unordered_map>

#include <Eigen/Core>
#include <fmt/format.h>

#if defined(THEANINE_HAVE_OPENBLAS)
#include <cblas.h>
#include <dlfcn.h>
#endif

#include "graph/config.hpp"

namespace theanine {

namespace {

template <class T>
using RowMat = Eigen::Matrix<T, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;
template <class T>
using Strided = Eigen::Map<RowMat<T>, 0, Eigen::OuterStride<>>;
template <class T>
using ConstStrided = Eigen::Map<const RowMat<T>, 0, Eigen::OuterStride<>>;
using detail::GemmCall;

// ---------------------------------------------------------------- eigen

template <class T>
void eigen_product(const GemmCall<T>& g) {
    static const bool single = (Eigen::setNbThreads(1), true);  // theanine splits products itself
    (void)single;
    Strided<T> c(g.c, g.m, g.n, Eigen::OuterStride<>(g.ldc));
    ConstStrided<T> a(g.a, g.ta ? g.k : g.m, g.ta ? g.m : g.k, Eigen::OuterStride<>(g.lda));
    ConstStrided<T> b(g.b, g.tb ? g.n : g.k, g.tb ? g.k : g.n, Eigen::OuterStride<>(g.ldb));
    auto run = [&](const auto& A, const auto& B) {
        if (g.beta == T(0)) {
            c.noalias() = g.alpha * (A * B);
        } else {
            if (g.beta != T(1)) c *= g.beta;
            c.noalias() += g.alpha * (A * B);
        }
    };
    auto with_b = [&](const auto& A) {
        if (g.tb) run(A, b.transpose()); else run(A, b);
    };
    if (g.ta) with_b(a.transpose()); else with_b(a);
}

// ---------------------------------------------------------------- openblas

#if defined(THEANINE_HAVE_OPENBLAS)
// OpenBLAS is opened the first time a product needs it, from the file the build found
// (THEANINE_OPENBLAS_PATH, Debian's pthreads build where installed; CMakeLists.txt says why),
// with its symbols kept local: a process that never takes the kernel does not load it.
// theanine calls it from several threads at once, each on its own part of a product, so only
// a build that allows concurrent callers is taken: a pthreads build, told to run every call
// on its caller's thread. A sequential build shares its work buffers between callers without
// a lock (two parts computed at once overwrite each other's panels: wrong products, seen in
// 3 % of the 2-thread calls of a 30 x 40 x 200 product), and an OpenMP build would start its
// own threads inside theanine's; neither is taken.
struct OpenBlas {
    decltype(&cblas_sgemm) sgemm = nullptr;
    decltype(&cblas_dgemm) dgemm = nullptr;
    std::string error;  // why it could not be used
};

OpenBlas open_openblas(const char* path) {
    OpenBlas o;
    auto refuse = [&](std::string why) {
        o = OpenBlas{};
        o.error = fmt::format("{}: {}", path, why);
        return o;
    };
    // The program's own OpenBLAS (the same file, already loaded) keeps its thread count:
    // setting it to one here would slow the program's own products.
    if (void* loaded = dlopen(path, RTLD_NOW | RTLD_NOLOAD)) {
        dlclose(loaded);
        return refuse("already loaded by the program, which sets its thread count itself");
    }
    // A pthreads build starts its thread pool while it is loaded, sized by this variable
    // (otherwise one thread per core, which then spins for about 0.1 s and slows the
    // products timed meanwhile): one, so that it starts none. The caller's value is put
    // back at once.
    const char* env = std::getenv("OPENBLAS_NUM_THREADS");
    const std::optional<std::string> saved = env ? std::optional<std::string>(env) : std::nullopt;
    ::setenv("OPENBLAS_NUM_THREADS", "1", 1);
    void* h = dlopen(path, RTLD_NOW | RTLD_LOCAL);
    const char* why = h == nullptr ? dlerror() : nullptr;
    if (saved) ::setenv("OPENBLAS_NUM_THREADS", saved->c_str(), 1);
    else ::unsetenv("OPENBLAS_NUM_THREADS");
    if (h == nullptr) return refuse(fmt::format("could not be opened: {}", why ? why : "unknown error"));
    auto set_threads = reinterpret_cast<decltype(&openblas_set_num_threads)>(dlsym(h, "openblas_set_num_threads"));
    auto parallel = reinterpret_cast<int (*)()>(dlsym(h, "openblas_get_parallel"));
    o.sgemm = reinterpret_cast<decltype(&cblas_sgemm)>(dlsym(h, "cblas_sgemm"));
    o.dgemm = reinterpret_cast<decltype(&cblas_dgemm)>(dlsym(h, "cblas_dgemm"));
    if (set_threads == nullptr || parallel == nullptr || o.sgemm == nullptr || o.dgemm == nullptr) {
        dlclose(h);
        return refuse("lacks cblas_sgemm, cblas_dgemm, openblas_set_num_threads or openblas_get_parallel");
    }
    if (const int p = parallel(); p != 1) {
        dlclose(h);
        return refuse(p == 0 ? "a sequential build, which cannot be called from several threads at once "
                               "(install the pthreads build: libopenblas0-pthread)"
                             : "an OpenMP build, which runs its own threads inside theanine's (install the "
                               "pthreads build: libopenblas0-pthread)");
    }
    set_threads(1);
    return o;
}

const OpenBlas& openblas() {
    static const OpenBlas lib = open_openblas(THEANINE_OPENBLAS_PATH);
    return lib;
}

template <class T>
void openblas_product(const GemmCall<T>& g) {
    const OpenBlas& lib = openblas();
    if (lib.sgemm == nullptr) throw UsageError("product kernel openblas: " + lib.error);
    const auto ta = g.ta ? CblasTrans : CblasNoTrans, tb = g.tb ? CblasTrans : CblasNoTrans;
    const auto m = static_cast<blasint>(g.m), n = static_cast<blasint>(g.n), k = static_cast<blasint>(g.k);
    // Leading dimensions as BLAS requires them (at least the row length, at least 1); a
    // one-row operand may come with any stride.
    const auto lda = static_cast<blasint>(std::max<std::int64_t>({g.lda, g.ta ? g.m : g.k, 1}));
    const auto ldb = static_cast<blasint>(std::max<std::int64_t>({g.ldb, g.tb ? g.k : g.n, 1}));
    const auto ldc = static_cast<blasint>(std::max<std::int64_t>({g.ldc, g.n, 1}));
    if constexpr (std::is_same_v<T, float>) {
        lib.sgemm(CblasRowMajor, ta, tb, m, n, k, g.alpha, g.a, lda, g.b, ldb, g.beta, g.c, ldc);
    } else {
        lib.dgemm(CblasRowMajor, ta, tb, m, n, k, g.alpha, g.a, lda, g.b, ldb, g.beta, g.c, ldc);
    }
}
#endif

// Why kernel k is missing from available_kernels(): not built in, or (OpenBLAS) found by the
// build but not loadable on this machine.
std::string why_unavailable(ProductKernel k) {
#if defined(THEANINE_HAVE_OPENBLAS)
    if (k == ProductKernel::openblas) return "here (" + openblas().error + ")";
#endif
    (void)k;
    return "in this build";
}

// ---------------------------------------------------------------- blocked (AVX-512)

#if defined(__AVX512F__)
// Register-blocked kernels for the products of minibatch training, where one side is short
// (20 rows of a minibatch, or k = 40 in a weight update): a general kernel packs the large
// operand (W) into a panel on every call, which these shapes cannot amortise. Here the large
// operand is read in place and only the short one is repacked. Every loop over the
// accumulator block is unrolled: the accumulators then live in registers only (without it
// GCC also stores them to the stack on every step, which halves the speed).

template <class T>
struct Simd;
template <>
struct Simd<float> {
    using reg = __m512;
    using mask = __mmask16;
    static constexpr int lanes = 16;
    static reg zero() { return _mm512_setzero_ps(); }
    static reg load(mask m, const float* p) { return _mm512_maskz_loadu_ps(m, p); }
    static void store(float* p, mask m, reg v) { _mm512_mask_storeu_ps(p, m, v); }
    static reg set1(float x) { return _mm512_set1_ps(x); }
    static reg fma(reg a, reg b, reg c) { return _mm512_fmadd_ps(a, b, c); }
    static reg mul(reg a, reg b) { return _mm512_mul_ps(a, b); }
    static float sum(reg a) { return _mm512_reduce_add_ps(a); }
};
template <>
struct Simd<double> {
    using reg = __m512d;
    using mask = __mmask8;
    static constexpr int lanes = 8;
    static reg zero() { return _mm512_setzero_pd(); }
    static reg load(mask m, const double* p) { return _mm512_maskz_loadu_pd(m, p); }
    static void store(double* p, mask m, reg v) { _mm512_mask_storeu_pd(p, m, v); }
    static reg set1(double x) { return _mm512_set1_pd(x); }
    static reg fma(reg a, reg b, reg c) { return _mm512_fmadd_pd(a, b, c); }
    static reg mul(reg a, reg b) { return _mm512_mul_pd(a, b); }
    static double sum(reg a) { return _mm512_reduce_add_pd(a); }
};

template <class T>
typename Simd<T>::mask lanes_mask(std::int64_t w) {
    using S = Simd<T>;
    if (w >= S::lanes) return static_cast<typename S::mask>(~0u);
    return w <= 0 ? typename S::mask(0) : static_cast<typename S::mask>((1u << w) - 1);
}

// C[0:rows, 0:w] = beta C + alpha sum_p ap[p][r] B[p, 0:w] for w <= 2 vectors; ap holds R
// rows of op(A) k-major (zero past `rows`), B is row-major with leading dimension ldb.
template <class T, int R>
void nn_tile(T* C, std::int64_t ldc, int rows, std::int64_t w, std::int64_t k, T alpha, const T* ap, const T* B,
             std::int64_t ldb, T beta) {
    using S = Simd<T>;
    const auto m0 = lanes_mask<T>(w), m1 = lanes_mask<T>(w - S::lanes);
    typename S::reg acc[R][2];
#pragma GCC unroll 16
    for (int r = 0; r < R; ++r) acc[r][0] = acc[r][1] = S::zero();
    for (std::int64_t p = 0; p < k; ++p) {
        const auto b0 = S::load(m0, B + p * ldb), b1 = S::load(m1, B + p * ldb + S::lanes);
        const T* a = ap + p * R;
#pragma GCC unroll 16
        for (int r = 0; r < R; ++r) {
            const auto av = S::set1(a[r]);
            acc[r][0] = S::fma(av, b0, acc[r][0]);
            acc[r][1] = S::fma(av, b1, acc[r][1]);
        }
    }
    const auto al = S::set1(alpha), be = S::set1(beta);
#pragma GCC unroll 16
    for (int r = 0; r < rows; ++r) {
        T* c = C + r * ldc;
        auto v0 = S::mul(al, acc[r][0]), v1 = S::mul(al, acc[r][1]);
        if (beta != T(0)) {
            v0 = S::fma(be, S::load(m0, c), v0);
            v1 = S::fma(be, S::load(m1, c + S::lanes), v1);
        }
        S::store(c, m0, v0);
        S::store(c + S::lanes, m1, v1);
    }
}

// C = beta C + alpha op(A) B, B row-major (k x n). op(A) is repacked R rows at a time,
// k-major, so each step of the inner loop broadcasts from one cache line.
template <class T, int R>
void small_nn(const GemmCall<T>& g) {
    thread_local std::vector<T> pack;
    const std::int64_t m = g.m, k = g.k, blocks = (m + R - 1) / R;
    pack.resize(static_cast<std::size_t>(blocks * R * k));
    for (std::int64_t blk = 0; blk < blocks; ++blk) {
        T* ap = pack.data() + blk * R * k;
        for (std::int64_t p = 0; p < k; ++p) {
#pragma GCC unroll 16
            for (int r = 0; r < R; ++r) {
                const std::int64_t i = blk * R + r;
                ap[p * R + r] = i < m ? (g.ta ? g.a[p * g.lda + i] : g.a[i * g.lda + p]) : T(0);
            }
        }
    }
    constexpr std::int64_t width = 2 * Simd<T>::lanes;
    for (std::int64_t j = 0; j < g.n; j += width) {
        const std::int64_t w = std::min(width, g.n - j);
        for (std::int64_t blk = 0; blk < blocks; ++blk) {
            const int rows = static_cast<int>(std::min<std::int64_t>(R, m - blk * R));
            nn_tile<T, R>(g.c + blk * R * g.ldc + j, g.ldc, rows, w, k, g.alpha, pack.data() + blk * R * k, g.b + j,
                          g.ldb, g.beta);
        }
    }
}

// C[r][s] = beta C + alpha <A row r, B row s> over k, for R rows of A and S rows of B, both
// contiguous along k.
template <class T, int R, int Sn>
void nt_tile(T* C, std::int64_t ldc, std::int64_t k, T alpha, const T* A, std::int64_t lda, const T* B, std::int64_t ldb,
             T beta) {
    using S = Simd<T>;
    typename S::reg acc[R][Sn];
#pragma GCC unroll 16
    for (int r = 0; r < R; ++r) {
#pragma GCC unroll 16
        for (int s = 0; s < Sn; ++s) acc[r][s] = S::zero();
    }
    for (std::int64_t p = 0; p < k; p += S::lanes) {
        const auto mk = lanes_mask<T>(k - p);
        typename S::reg b[Sn];
#pragma GCC unroll 16
        for (int s = 0; s < Sn; ++s) b[s] = S::load(mk, B + s * ldb + p);
#pragma GCC unroll 16
        for (int r = 0; r < R; ++r) {
            const auto a = S::load(mk, A + r * lda + p);
#pragma GCC unroll 16
            for (int s = 0; s < Sn; ++s) acc[r][s] = S::fma(a, b[s], acc[r][s]);
        }
    }
#pragma GCC unroll 16
    for (int r = 0; r < R; ++r) {
#pragma GCC unroll 16
        for (int s = 0; s < Sn; ++s) {
            const T v = alpha * S::sum(acc[r][s]);
            T& c = C[r * ldc + s];
            c = beta == T(0) ? v : beta * c + v;
        }
    }
}

// C = beta C + alpha A B^T, A row-major (m x k), B row-major (n x k).
template <class T>
void small_nt(const GemmCall<T>& g) {
    const std::int64_t m = g.m, n = g.n, k = g.k;
    std::int64_t i = 0;
    for (; i + 4 <= m; i += 4) {
        std::int64_t j = 0;
        for (; j + 4 <= n; j += 4)
            nt_tile<T, 4, 4>(g.c + i * g.ldc + j, g.ldc, k, g.alpha, g.a + i * g.lda, g.lda, g.b + j * g.ldb, g.ldb, g.beta);
        for (; j + 2 <= n; j += 2)
            nt_tile<T, 4, 2>(g.c + i * g.ldc + j, g.ldc, k, g.alpha, g.a + i * g.lda, g.lda, g.b + j * g.ldb, g.ldb, g.beta);
        for (; j < n; ++j)
            nt_tile<T, 4, 1>(g.c + i * g.ldc + j, g.ldc, k, g.alpha, g.a + i * g.lda, g.lda, g.b + j * g.ldb, g.ldb, g.beta);
    }
    for (; i < m; ++i) {
        std::int64_t j = 0;
        for (; j + 4 <= n; j += 4)
            nt_tile<T, 1, 4>(g.c + i * g.ldc + j, g.ldc, k, g.alpha, g.a + i * g.lda, g.lda, g.b + j * g.ldb, g.ldb, g.beta);
        for (; j < n; ++j)
            nt_tile<T, 1, 1>(g.c + i * g.ldc + j, g.ldc, k, g.alpha, g.a + i * g.lda, g.lda, g.b + j * g.ldb, g.ldb, g.beta);
    }
}

// Products with few output columns (a softmax layer's classes) and both m and k long: x W for
// a minibatch x (600 x 784) and W (784 x 10), and the weight gradient x^T dL. A general kernel
// packs the long operand on every call; these read it once, in place.
constexpr std::int64_t kFewColumns = 16;

// C = beta C + alpha A op(B), A row-major with rows along k (op(A) = A): every entry is a dot
// product of a row of A with a column of op(B). The columns are copied into rows (n x k) once
// per call, unless B already holds them that way (op(B) = B^T), and small_nt runs on them.
template <class T>
void few_columns_by_rows(const GemmCall<T>& g) {
    GemmCall<T> t = g;
    if (!g.tb) {
        thread_local std::vector<T> columns;
        columns.resize(static_cast<std::size_t>(g.n * g.k));
        for (std::int64_t p = 0; p < g.k; ++p) {
            for (std::int64_t s = 0; s < g.n; ++s) columns[static_cast<std::size_t>(s * g.k + p)] = g.b[p * g.ldb + s];
        }
        t.b = columns.data();
        t.ldb = g.k;
    }
    small_nt<T>(t);
}

// C[0:w, 0:Sn] = beta C + alpha A^T B over k rows, for w <= 2 vectors of A's columns (A and B
// row-major, offset to the first column): each step of k reads a row segment of A and
// broadcasts Sn entries of B's row.
template <class T, int Sn>
void tn_tile(T* C, std::int64_t ldc, std::int64_t w, std::int64_t k, T alpha, const T* A, std::int64_t lda, const T* B,
             std::int64_t ldb, T beta) {
    using S = Simd<T>;
    const auto m0 = lanes_mask<T>(w), m1 = lanes_mask<T>(w - S::lanes);
    typename S::reg acc[2][Sn];
#pragma GCC unroll 16
    for (int q = 0; q < Sn; ++q) acc[0][q] = acc[1][q] = S::zero();
    for (std::int64_t p = 0; p < k; ++p) {
        const auto a0 = S::load(m0, A + p * lda), a1 = S::load(m1, A + p * lda + S::lanes);
        const T* b = B + p * ldb;
#pragma GCC unroll 16
        for (int q = 0; q < Sn; ++q) {
            const auto bq = S::set1(b[q]);
            acc[0][q] = S::fma(a0, bq, acc[0][q]);
            acc[1][q] = S::fma(a1, bq, acc[1][q]);
        }
    }
    // The accumulators hold C's columns: stored through a buffer and written row by row.
    alignas(64) T buf[Sn][2 * S::lanes];
#pragma GCC unroll 16
    for (int q = 0; q < Sn; ++q) {
        S::store(buf[q], static_cast<typename S::mask>(~0u), acc[0][q]);
        S::store(buf[q] + S::lanes, static_cast<typename S::mask>(~0u), acc[1][q]);
    }
    for (std::int64_t r = 0; r < w; ++r) {
        T* c = C + r * ldc;
        for (int q = 0; q < Sn; ++q) c[q] = beta == T(0) ? alpha * buf[q][r] : beta * c[q] + alpha * buf[q][r];
    }
}

// C = beta C + alpha A^T B, A row-major (k x m), B row-major (k x n), n <= kFewColumns.
template <class T>
void few_columns_tn(const GemmCall<T>& g) {
    constexpr std::int64_t width = 2 * Simd<T>::lanes;
    for (std::int64_t i = 0; i < g.m; i += width) {
        const std::int64_t w = std::min(width, g.m - i);
        T* c = g.c + i * g.ldc;
        const T* a = g.a + i;
        std::int64_t s = 0;
        for (; s + 8 <= g.n; s += 8) tn_tile<T, 8>(c + s, g.ldc, w, g.k, g.alpha, a, g.lda, g.b + s, g.ldb, g.beta);
        for (; s + 4 <= g.n; s += 4) tn_tile<T, 4>(c + s, g.ldc, w, g.k, g.alpha, a, g.lda, g.b + s, g.ldb, g.beta);
        for (; s + 2 <= g.n; s += 2) tn_tile<T, 2>(c + s, g.ldc, w, g.k, g.alpha, a, g.lda, g.b + s, g.ldb, g.beta);
        for (; s < g.n; ++s) tn_tile<T, 1>(c + s, g.ldc, w, g.k, g.alpha, a, g.lda, g.b + s, g.ldb, g.beta);
    }
}
#endif

// Whether one of the blocked kernels takes this shape: one short side (m or k at most 64), and
// for op(B) = B^T only op(A) = A; or few columns (n <= kFewColumns) with op(A) = A, or
// op(A) = A^T and op(B) = B.
#if defined(__AVX512F__)
bool few_columns_apply(std::int64_t m, std::int64_t n, std::int64_t k, bool ta, bool tb) {
    return m > 64 && k > 64 && n > 0 && n <= kFewColumns && (!ta || !tb);
}
#endif

bool blocked_applies(std::int64_t m, std::int64_t n, std::int64_t k, bool ta, bool tb) {
#if defined(__AVX512F__)
    if (few_columns_apply(m, n, k, ta, tb)) return true;
    if (m == 0 || k == 0 || (m > 64 && k > 64)) return false;
    return !tb || (!ta && m <= 64);
#else
    (void)m, (void)n, (void)k, (void)ta, (void)tb;
    return false;
#endif
}
template <class T>
bool blocked_applies(const GemmCall<T>& g) {
    return blocked_applies(g.m, g.n, g.k, g.ta, g.tb);
}

template <class T>
void blocked_product(const GemmCall<T>& g) {
#if defined(__AVX512F__)
    if (few_columns_apply(g.m, g.n, g.k, g.ta, g.tb)) {
        if (g.ta) few_columns_tn(g);
        else few_columns_by_rows(g);
    } else if (!g.tb) {
        if (g.m >= 10) small_nn<T, 10>(g);
        else if (g.m >= 4) small_nn<T, 4>(g);
        else small_nn<T, 1>(g);
    } else {
        small_nt<T>(g);
    }
#else
    (void)g;
#endif
}

template <class T>
void run_kernel(ProductKernel kernel, const GemmCall<T>& g) {
    switch (kernel) {
    case ProductKernel::eigen:
        eigen_product(g);
        return;
    case ProductKernel::openblas:
#if defined(THEANINE_HAVE_OPENBLAS)
        openblas_product(g);
        return;
#else
        break;
#endif
    case ProductKernel::blocked:
        if (blocked_applies(g)) {
            blocked_product(g);
            return;
        }
        // A shape the blocked kernels do not take runs on Eigen.
        eigen_product(g);
        return;
    }
    internal_check(false, "run_kernel: kernel not built");
}

// ---------------------------------------------------------------- choices

struct Key {
    DType dtype;
    std::int64_t m, n, k;
    bool ta, tb, accumulate;
    bool operator==(const Key&) const = default;
};
struct KeyHash {
    std::size_t operator()(const Key& k) const {
        std::size_t h = static_cast<std::size_t>(k.dtype);
        for (std::int64_t v : {k.m, k.n, k.k}) h = h * 1000003u ^ static_cast<std::size_t>(v);
        return h * 8 + (k.ta ? 4 : 0) + (k.tb ? 2 : 0) + (k.accumulate ? 1 : 0);
    }
};

// The CPU a cache line was measured on: vendor, family, model, stepping and feature flags
// from /proc/cpuinfo, hashed (FNV-1a). Cloud machines often report a bare "AMD EPYC", so the
// model name alone would not tell two generations apart.
struct CpuId {
    std::string key;   // 16 hex digits
    std::string text;  // model name, family and model, for the file's comment line
};
const CpuId& cpu_id() {
    static const CpuId id = [] {
        std::ifstream in("/proc/cpuinfo");
        std::string line, name = "unknown CPU", family = "?", model = "?", described;
        std::uint64_t h = 1469598103934665603ull;
        auto mix = [&](const std::string& s) {
            for (unsigned char ch : s) h = (h ^ ch) * 1099511628211ull;
        };
        bool first_cpu_done = false;
        while (!first_cpu_done && std::getline(in, line)) {
            if (line.empty()) {
                first_cpu_done = !described.empty();
                continue;
            }
            auto colon = line.find(':');
            if (colon == std::string::npos) continue;
            std::string field = line.substr(0, line.find_last_not_of(" \t", colon - 1) + 1);
            std::string value = colon + 2 <= line.size() ? line.substr(colon + 2) : "";
            if (field == "vendor_id" || field == "cpu family" || field == "model" || field == "stepping" ||
                field == "flags" || field == "model name") {
                mix(field + "=" + value + ";");
                described += field;
            }
            if (field == "model name") name = value;
            if (field == "cpu family") family = value;
            if (field == "model") model = value;
        }
        return CpuId{fmt::format("{:016x}", h), fmt::format("{} (family {} model {})", name, family, model)};
    }();
    return id;
}

struct Choices {
    std::shared_mutex mutex;
    bool initialised = false;
    std::optional<ProductKernel> forced;
    std::filesystem::path cache;
    std::unordered_map<Key, ProductKernel, KeyHash> file;  // the cache file's lines for this CPU
    std::unordered_map<Key, std::size_t, KeyHash> index;   // into list
    std::vector<ProductChoice> list;                       // the choices this process used
};

Choices& choices() {
    static Choices c;
    return c;
}

// Reads THEANINE_FLAGS' blas_kernel and kernel_cache once (caller holds the lock).
void initialise(Choices& c) {
    if (c.initialised) return;
    const Config& cfg = config();
    if (cfg.blas_kernel != "measure") {
        ProductKernel k = kernel_from_name(cfg.blas_kernel);
        auto av = available_kernels();
        if (std::find(av.begin(), av.end(), k) == av.end()) {
            throw UsageError(fmt::format("THEANINE_FLAGS: blas_kernel={} is not available {} (available: {})",
                                         cfg.blas_kernel, why_unavailable(k), [&] {
                                             std::string s;
                                             for (auto a : av) s += (s.empty() ? "" : ", ") + std::string(kernel_name(a));
                                             return s;
                                         }()));
        }
        c.forced = k;
    }
    c.cache = cfg.kernel_cache;
    c.initialised = true;
}

Key key_of(const ProductChoice& p) { return {p.dtype, p.m, p.n, p.k, p.trans_a, p.trans_b, p.accumulate}; }

ProductKernel remember(Choices& c, ProductChoice p) {
    Key k = key_of(p);
    c.index.emplace(k, c.list.size());
    c.list.push_back(std::move(p));
    return c.list.back().kernel;
}

// The kernels a product of this shape chooses among.
std::vector<ProductKernel> candidates_for(std::int64_t m, std::int64_t n, std::int64_t k, bool ta, bool tb) {
    std::vector<ProductKernel> out;
    for (ProductKernel kernel : available_kernels()) {
        if (kernel != ProductKernel::blocked || blocked_applies(m, n, k, ta, tb)) out.push_back(kernel);
    }
    return out;
}

// A cache line: "<cpu> <dtype> <m> <n> <k> <NN|NT|TN|TT> <0|1> <kernel> [<kernel>=<time>...]".
// Lines of other CPUs, of kernels this build lacks, lines that do not parse, and lines
// measured without a kernel that now takes the shape (written before that kernel did) are
// skipped.
std::optional<ProductChoice> parse_line(const std::string& line) {
    std::istringstream in(line);
    std::string cpu, dtype, trans, kernel;
    std::int64_t m, n, k;
    int acc;
    if (!(in >> cpu >> dtype >> m >> n >> k >> trans >> acc >> kernel)) return std::nullopt;
    std::vector<std::string> measured{kernel};
    for (std::string timed; in >> timed;) measured.push_back(timed.substr(0, timed.find('=')));
    if (cpu != cpu_id().key || m < 0 || n < 0 || k < 0 || trans.size() != 2 || (acc != 0 && acc != 1)) return std::nullopt;
    if (dtype != "float32" && dtype != "float64") return std::nullopt;
    if ((trans[0] != 'N' && trans[0] != 'T') || (trans[1] != 'N' && trans[1] != 'T')) return std::nullopt;
    ProductKernel kk;
    try {
        kk = kernel_from_name(kernel);
    } catch (const UsageError&) {
        return std::nullopt;
    }
    auto av = available_kernels();
    if (std::find(av.begin(), av.end(), kk) == av.end()) return std::nullopt;
    for (ProductKernel c : candidates_for(m, n, k, trans[0] == 'T', trans[1] == 'T')) {
        if (std::find(measured.begin(), measured.end(), kernel_name(c)) == measured.end()) return std::nullopt;
    }
    return ProductChoice{dtype_from_name(dtype), m, n, k, trans[0] == 'T', trans[1] == 'T', acc == 1, kk,
                         ProductChoice::Source::cache_file, {}};
}

std::string cache_line(const ProductChoice& p) {
    std::string line = fmt::format("{} {} {} {} {} {}{} {} {}", cpu_id().key, dtype_name(p.dtype), p.m, p.n, p.k,
                                   p.trans_a ? 'T' : 'N', p.trans_b ? 'T' : 'N', p.accumulate ? 1 : 0,
                                   kernel_name(p.kernel));
    for (auto& [kernel, s] : p.seconds) line += fmt::format(" {}={:.1f}us", kernel_name(kernel), s * 1e6);
    return line + "\n";
}

// The cache file, open and locked (flock, exclusive) for as long as it lives: processes that
// measure the same shape at the same time then agree on the first one written.
class LockedCache {
public:
    explicit LockedCache(const std::filesystem::path& path) {
        if (path.empty()) return;
        std::error_code ec;
        std::filesystem::create_directories(path.parent_path(), ec);
        fd_ = ::open(path.c_str(), O_RDWR | O_CREAT | O_APPEND | O_CLOEXEC, 0644);
        if (fd_ < 0) return;
        if (::flock(fd_, LOCK_EX) != 0) {
            ::close(fd_);
            fd_ = -1;
        }
    }
    ~LockedCache() {
        if (fd_ >= 0) ::close(fd_);  // releases the lock
    }
    LockedCache(const LockedCache&) = delete;
    LockedCache& operator=(const LockedCache&) = delete;
    bool ok() const { return fd_ >= 0; }
    // Every line this machine's CPU wrote (at most the first 4 MiB of the file).
    void read_into(Choices& c) {
        if (fd_ < 0) return;
        std::string text;
        char buf[65536];
        off_t offset = 0;
        while (text.size() < (4u << 20)) {
            ssize_t got = ::pread(fd_, buf, sizeof buf, offset);
            if (got <= 0) break;
            text.append(buf, static_cast<std::size_t>(got));
            offset += got;
        }
        std::size_t start = 0;
        while (start < text.size()) {
            std::size_t end = text.find('\n', start);
            if (end == std::string::npos) break;  // a line still being written, or cut off
            std::string line = text.substr(start, end - start);
            start = end + 1;
            if (line.empty() || line[0] == '#') continue;
            if (auto p = parse_line(line)) c.file.emplace(key_of(*p), p->kernel);  // the first line wins
        }
    }
    void append(const std::string& text) {
        if (fd_ < 0) return;
        if (::lseek(fd_, 0, SEEK_END) == 0) {
            std::string head = fmt::format(
                "# theanine product kernels chosen by measurement: cpu dtype m n k trans accumulate kernel [times]\n");
            (void)!::write(fd_, head.data(), head.size());
        }
        if (!cpu_named_) {
            // Once per process: which machine the key stands for, for a reader of the file.
            std::string cpu = fmt::format("# cpu {}: {}\n", cpu_id().key, cpu_id().text);
            (void)!::write(fd_, cpu.data(), cpu.size());
            cpu_named_ = true;
        }
        (void)!::write(fd_, text.data(), text.size());
    }

private:
    int fd_ = -1;
    static inline bool cpu_named_ = false;  // guarded by the Choices mutex
};

using Clock = std::chrono::steady_clock;

// Seconds per call of `kernel` on g's operands, writing into `scratch` (m x n, ldc n).
template <class T>
double time_kernel(ProductKernel kernel, GemmCall<T> g, int reps) {
    auto t0 = Clock::now();
    for (int r = 0; r < reps; ++r) run_kernel(kernel, g);
    return std::chrono::duration<double>(Clock::now() - t0).count() / reps;
}

template <class T>
ProductChoice measure(const Key& key, const GemmCall<T>& call) {
    ProductChoice p{key.dtype, key.m, key.n, key.k, key.ta, key.tb, key.accumulate, ProductKernel::eigen,
                    ProductChoice::Source::measured, {}};
    const std::vector<ProductKernel> candidates = candidates_for(call.m, call.n, call.k, call.ta, call.tb);
    if (candidates.size() == 1) {
        p.kernel = candidates[0];
        return p;
    }
    // The call's own operands, into a scratch output (the caller's C is left alone).
    std::vector<T> scratch(static_cast<std::size_t>(call.m * call.n));
    for (std::int64_t i = 0; i < call.m; ++i) std::copy_n(call.c + i * call.ldc, call.n, scratch.data() + i * call.n);
    GemmCall<T> g = call;
    g.c = scratch.data();
    g.ldc = std::max<std::int64_t>(call.n, 1);
    // Warm up each candidate once (first-touch costs, packing buffers), then size the runs at
    // about 0.3 ms each and keep each kernel's best of three rounds, interleaved.
    double first = 0;
    for (ProductKernel k : candidates) first = std::max(first, time_kernel(k, g, 1));
    const int reps = static_cast<int>(std::clamp(3e-4 / std::max(first, 1e-9), 1.0, 50.0));
    std::vector<double> best(candidates.size(), 1e300);
    for (int round = 0; round < 3; ++round) {
        for (std::size_t i = 0; i < candidates.size(); ++i) best[i] = std::min(best[i], time_kernel(candidates[i], g, reps));
    }
    std::size_t win = 0;
    for (std::size_t i = 0; i < candidates.size(); ++i) {
        p.seconds.emplace_back(candidates[i], best[i]);
        if (best[i] < best[win]) win = i;
    }
    p.kernel = candidates[win];
    return p;
}

template <class T>
constexpr DType dtype_of() {
    return std::is_same_v<T, float> ? DType::float32 : DType::float64;
}

template <class T>
ProductKernel kernel_for(const GemmCall<T>& g) {
    Choices& c = choices();
    {
        std::shared_lock lock(c.mutex);
        if (c.initialised) {
            if (c.forced) return *c.forced;
            if (2.0 * g.m * g.n * g.k < kSmallProductFlops) return ProductKernel::eigen;
            auto it = c.index.find(Key{dtype_of<T>(), g.m, g.n, g.k, g.ta, g.tb, g.beta != T(0)});
            if (it != c.index.end()) return c.list[it->second].kernel;
        }
    }
    std::unique_lock lock(c.mutex);
    initialise(c);
    if (c.forced) return *c.forced;
    if (2.0 * g.m * g.n * g.k < kSmallProductFlops) return ProductKernel::eigen;
    const Key key{dtype_of<T>(), g.m, g.n, g.k, g.ta, g.tb, g.beta != T(0)};
    // Another process may have measured this shape: read the file under its lock, measure
    // only if it is still missing, and append the result before letting go of the lock.
    if (auto it = c.index.find(key); it != c.index.end()) return c.list[it->second].kernel;
    LockedCache file(c.cache);
    file.read_into(c);
    if (auto it = c.file.find(key); it != c.file.end()) {
        return remember(c, ProductChoice{key.dtype, key.m, key.n, key.k, key.ta, key.tb, key.accumulate, it->second,
                                         ProductChoice::Source::cache_file, {}});
    }
    ProductChoice p = measure(key, g);
    file.append(cache_line(p));
    return remember(c, std::move(p));
}

}  // namespace

std::string_view kernel_name(ProductKernel k) {
    switch (k) {
    case ProductKernel::eigen: return "eigen";
    case ProductKernel::openblas: return "openblas";
    case ProductKernel::blocked: return "blocked";
    }
    return "?";
}

ProductKernel kernel_from_name(std::string_view name) {
    for (ProductKernel k : {ProductKernel::eigen, ProductKernel::openblas, ProductKernel::blocked}) {
        if (kernel_name(k) == name) return k;
    }
    throw UsageError(fmt::format("product kernel '{}' is unknown (known: eigen, openblas, blocked)", name));
}

std::string detail::openblas_refusal(const std::string& path) {
#if defined(THEANINE_HAVE_OPENBLAS)
    return open_openblas(path.c_str()).error;
#else
    return fmt::format("{}: this build has no OpenBLAS kernel", path);
#endif
}

std::vector<ProductKernel> available_kernels() {
    std::vector<ProductKernel> out{ProductKernel::eigen};
#if defined(THEANINE_HAVE_OPENBLAS)
    if (openblas().sgemm != nullptr) out.push_back(ProductKernel::openblas);
#endif
#if defined(__AVX512F__)
    out.push_back(ProductKernel::blocked);
#endif
    return out;
}

void set_product_kernel(std::optional<ProductKernel> kernel) {
    if (kernel) {
        auto av = available_kernels();
        if (std::find(av.begin(), av.end(), *kernel) == av.end()) {
            throw UsageError(
                fmt::format("set_product_kernel: {} is not available {}", kernel_name(*kernel), why_unavailable(*kernel)));
        }
    }
    Choices& c = choices();
    std::unique_lock lock(c.mutex);
    initialise(c);
    c.forced = kernel;
    c.index.clear();
    c.list.clear();
}

std::optional<ProductKernel> product_kernel() {
    Choices& c = choices();
    std::unique_lock lock(c.mutex);
    initialise(c);
    return c.forced;
}

void set_kernel_cache(const std::filesystem::path& file) {
    Choices& c = choices();
    std::unique_lock lock(c.mutex);
    initialise(c);
    c.cache = file;
    c.file.clear();
    c.index.clear();
    c.list.clear();
}

std::filesystem::path kernel_cache() {
    Choices& c = choices();
    std::unique_lock lock(c.mutex);
    initialise(c);
    return c.cache;
}

std::vector<ProductChoice> product_choices() {
    Choices& c = choices();
    std::shared_lock lock(c.mutex);
    return c.list;
}

std::string ProductChoice::str() const {
    std::string s = fmt::format("{} {}x{}x{} {}{}{}: {}", dtype_name(dtype), m, n, k, trans_a ? 'T' : 'N',
                                trans_b ? 'T' : 'N', accumulate ? " +=" : "", kernel_name(kernel));
    if (source == Source::cache_file) return s + " (from the cache file)";
    std::string times;
    for (auto& [k, sec] : seconds) times += fmt::format("{}{} {:.1f} us", times.empty() ? "" : ", ", kernel_name(k), sec * 1e6);
    return s + fmt::format(" (measured: {})", times.empty() ? "only candidate" : times);
}

namespace detail {

template <class T>
void run_product(const GemmCall<T>& g) {
    if (g.m == 0 || g.n == 0) return;
    if (g.k == 0) {
        // C = beta C (BLAS's rule: with beta 0, C is set to 0 without being read).
        for (std::int64_t i = 0; i < g.m; ++i) {
            T* row = g.c + i * g.ldc;
            for (std::int64_t j = 0; j < g.n; ++j) row[j] = g.beta == T(0) ? T(0) : g.beta * row[j];
        }
        return;
    }
    run_kernel(kernel_for(g), g);
}
template void run_product<float>(const GemmCall<float>&);
template void run_product<double>(const GemmCall<double>&);

void ensure_configured() {
    Choices& c = choices();
    {
        std::shared_lock lock(c.mutex);
        if (c.initialised) return;
    }
    std::unique_lock lock(c.mutex);
    initialise(c);
}

}  // namespace detail

}  // namespace theanine
