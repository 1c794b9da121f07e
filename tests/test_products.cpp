// Product kernels and their choice by measurement (ops/products.hpp): every kernel against a
// product computed by hand in double precision, the measurement, the cache file shared by
// processes, and hostile cache files.
#include <doctest/doctest.h>

#include <cmath>
#include <filesystem>
#include <fstream>
#include <random>
#include <sstream>
#include <thread>

#include <fmt/format.h>
#include <unistd.h>

#include "support/helpers.hpp"

using namespace theanine;
using namespace theanine::testing;
namespace fs = std::filesystem;

namespace {

// A fresh cache file under the temporary directory, removed with the fixture; products use
// it (and measure) while the fixture lives, then go back to the process's own settings.
struct TempCache {
    fs::path dir, file;
    fs::path saved = kernel_cache();
    std::optional<ProductKernel> saved_kernel = product_kernel();
    TempCache() {
        dir = fs::temp_directory_path() / fmt::format("theanine-products-{}-{}", ::getpid(), std::random_device{}());
        fs::create_directories(dir);
        file = dir / "products.txt";
        set_product_kernel(std::nullopt);
        set_kernel_cache(file);
    }
    ~TempCache() {
        set_product_kernel(saved_kernel);
        set_kernel_cache(saved);
        std::error_code ec;
        fs::remove_all(dir, ec);
    }
    std::vector<std::string> lines() const {
        std::ifstream in(file);
        std::vector<std::string> out;
        for (std::string l; std::getline(in, l);) {
            if (!l.empty() && l[0] != '#') out.push_back(l);
        }
        return out;
    }
};

std::vector<double> uniform(std::size_t n, unsigned seed) {
    std::mt19937 gen(seed);
    std::uniform_real_distribution<double> u(-1, 1);
    std::vector<double> v(n);
    for (auto& x : v) x = u(gen);
    return v;
}

// C[:, c0:c1] = beta C + alpha op(A) op(B) through gemm_slice, against the sum computed here.
template <class T>
void check_slice(std::int64_t m, std::int64_t n, std::int64_t k, bool ta, bool tb, std::int64_t c0, std::int64_t c1,
                 double alpha, double beta) {
    // (At least one element each: gemm_slice refuses null pointers, also with k = 0.)
    auto ad = uniform(static_cast<std::size_t>(std::max<std::int64_t>(m * k, 1)), 1),
         bd = uniform(static_cast<std::size_t>(std::max<std::int64_t>(k * n, 1)), 2),
         cd = uniform(static_cast<std::size_t>(m * n), 3);
    std::vector<T> a(ad.begin(), ad.end()), b(bd.begin(), bd.end()), c(cd.begin(), cd.end());
    if (beta == 0) std::fill(c.begin(), c.end(), std::numeric_limits<T>::quiet_NaN());  // must not be read
    const std::vector<T> c_before = c;
    auto A = [&](std::int64_t i, std::int64_t p) { return static_cast<double>(ta ? a[p * m + i] : a[i * k + p]); };
    auto B = [&](std::int64_t p, std::int64_t j) { return static_cast<double>(tb ? b[j * k + p] : b[p * n + j]); };
    gemm_slice<T>(c.data(), m, n, c0, c1, static_cast<T>(alpha), a.data(), ta ? k : m, ta ? m : k, ta, b.data(),
                  tb ? n : k, tb ? k : n, tb, static_cast<T>(beta));
    const double tol = std::is_same_v<T, float> ? 1e-5 * std::sqrt(static_cast<double>(k)) : 1e-13 * k;
    std::int64_t bad = 0;
    for (std::int64_t i = 0; i < m; ++i) {
        for (std::int64_t j = 0; j < n; ++j) {
            const std::size_t at = static_cast<std::size_t>(i * n + j);
            if (j < c0 || j >= c1) {
                bad += !(std::isnan(c_before[at]) ? std::isnan(c[at]) : c[at] == c_before[at]);  // untouched
                continue;
            }
            double s = 0;
            for (std::int64_t p = 0; p < k; ++p) s += A(i, p) * B(p, j);
            const double want = (beta == 0 ? 0.0 : beta * static_cast<double>(c_before[at])) + alpha * s;
            bad += !(std::abs(static_cast<double>(c[at]) - want) <= tol * (1 + std::abs(want)));
        }
    }
    CHECK(bad == 0);
}

}  // namespace

TEST_CASE("every product kernel computes the product, for every transpose, slice and beta") {
    TempCache cache;
    for (ProductKernel kernel : available_kernels()) {
        set_product_kernel(kernel);
        CAPTURE(kernel_name(kernel));
        // Short and long sides (the blocked kernels take m or k <= 64 and leave the rest to
        // Eigen), few columns with long m and k (their dot-product and A^T B forms for a
        // softmax layer's x W and x^T dL), odd sizes; each in full and in column slices (one
        // float32 and one float64 slice per case, starting mid-row).
        struct Case { std::int64_t m, n, k, f0, f1, d0, d1; } cases[] = {
            {20, 77, 131, 5, 74, 16, 77}, {3, 40, 9, 5, 37, 16, 40}, {70, 33, 70, 5, 30, 16, 33},
            {131, 50, 20, 5, 47, 16, 50}, {300, 10, 200, 5, 10, 0, 5}, {97, 13, 71, 6, 13, 0, 7},
            {70, 1, 65, 0, 1, 0, 1},      {65, 16, 130, 8, 16, 0, 8}};
        for (auto [m, n, k, f0, f1, d0, d1] : cases) {
            for (int t = 0; t < 4; ++t) {
                const bool ta = t & 2, tb = t & 1;
                CAPTURE(m); CAPTURE(n); CAPTURE(k); CAPTURE(ta); CAPTURE(tb);
                check_slice<float>(m, n, k, ta, tb, 0, n, 1.0, 0.0);
                check_slice<double>(m, n, k, ta, tb, 0, n, 1.0, 0.0);
                check_slice<float>(m, n, k, ta, tb, f0, f1, -0.1, 1.0);
                check_slice<double>(m, n, k, ta, tb, d0, d1, 0.5, -2.0);
            }
        }
        // k = 0: C = beta C, and with beta 0 the NaNs in C are overwritten with zeros.
        check_slice<double>(4, 5, 0, false, false, 0, 5, 1.0, 0.0);
        check_slice<double>(4, 5, 0, false, false, 1, 4, 1.0, 3.0);
    }
    // Forced kernels are not choices by measurement.
    CHECK(product_choices().empty());
}

TEST_CASE("a product through the graph (Dot22, Gemm, transposed views) is the same on every kernel") {
    TempCache cache;
    Variable a = matrix("a"), b = matrix("b"), c = matrix("c");
    Tensor av = random_tensor({30, 200}, 1), bv = random_tensor({40, 200}, 2), cv = random_tensor({30, 40}, 3);
    Function f = function({a, b, c}, {dot(a, b.T()), c - 0.1 * dot(a, b.T())});
    std::vector<std::vector<double>> first;
    for (ProductKernel kernel : available_kernels()) {
        set_product_kernel(kernel);
        auto got = f({av, bv, cv});
        if (first.empty()) {
            for (auto& t : got) first.push_back(t.to_doubles());
        } else {
            CHECK(close(got[0].to_doubles(), first[0], 1e-12));
            CHECK(close(got[1].to_doubles(), first[1], 1e-12));
        }
    }
}

// Every kernel is called from several threads at once (each thread its part of a product):
// one that shares state between callers gives wrong parts now and then. Two threads compute
// the two column parts of one product 300 times each, as the graph's split products do; then
// the graph's split shapes (by columns, by rows, by k) through a Function on two threads.
TEST_CASE("every product kernel can be called from several threads at once") {
    TempCache cache;
    struct Threads {
        Threads() { set_num_threads(2); }
        ~Threads() { set_num_threads(0); }
    } two;
    const std::int64_t m = 30, n = 40, k = 200;
    auto ad = uniform(m * k, 4), bd = uniform(n * k, 5);
    std::vector<double> want(m * n);
    for (std::int64_t i = 0; i < m; ++i) {
        for (std::int64_t j = 0; j < n; ++j) {
            double s = 0;
            for (std::int64_t p = 0; p < k; ++p) s += ad[i * k + p] * bd[j * k + p];
            want[i * n + j] = s;
        }
    }
    Variable x = matrix("x"), w = matrix("w"), dl = matrix("dl"), a = matrix("a"), b = matrix("b"), c = matrix("c");
    Tensor xv = random_tensor({600, 784}, 6), wv = random_tensor({784, 10}, 7), dlv = random_tensor({600, 10}, 8),
           av = random_tensor({30, 200}, 9), bv = random_tensor({40, 200}, 10), cv = random_tensor({30, 40}, 11);
    CompileOptions keep_threads;
    keep_threads.adapt_workers = false;
    Function f = function({x, w, dl, a, b, c},
                          {dot(x, w), dot(x.T(), dl), dot(a, b.T()), c - 0.1 * dot(a, b.T())}, {}, {}, keep_threads);
    const std::vector<Arg> args{xv, wv, dlv, av, bv, cv};
    std::vector<std::vector<double>> eigen_out;
    for (ProductKernel kernel : available_kernels()) {
        set_product_kernel(kernel);
        CAPTURE(kernel_name(kernel));
        std::vector<double> out(m * n);
        std::int64_t bad[2] = {0, 0};
        auto part = [&](int t) {
            const std::int64_t c0 = t == 0 ? 0 : 32, c1 = t == 0 ? 32 : n;
            for (int call = 0; call < 300; ++call) {
                gemm_slice<double>(out.data(), m, n, c0, c1, 1.0, ad.data(), m, k, false, bd.data(), n, k, true, 0.0);
                for (std::int64_t i = 0; i < m; ++i) {
                    for (std::int64_t j = c0; j < c1; ++j) bad[t] += !(std::abs(out[i * n + j] - want[i * n + j]) <= 1e-12);
                }
            }
        };
        std::thread other(part, 1);
        part(0);
        other.join();
        CHECK(bad[0] == 0);
        CHECK(bad[1] == 0);
        // Through the graph: every call gives the first call's bits, and Eigen's within rounding.
        std::vector<std::vector<double>> first;
        for (auto& t : f(args)) first.push_back(t.to_doubles());
        std::int64_t changed = 0;
        for (int call = 0; call < 100; ++call) {
            auto got = f(args);
            for (std::size_t o = 0; o < got.size(); ++o) changed += got[o].to_doubles() != first[o];
        }
        CHECK(changed == 0);
        if (eigen_out.empty()) {
            eigen_out = first;
        } else {
            for (std::size_t o = 0; o < first.size(); ++o) CHECK(close(first[o], eigen_out[o], 1e-12));
        }
    }
}

TEST_CASE("a new shape is timed on every candidate once, the fastest is kept and written to the cache file") {
    TempCache cache;
    std::vector<float> a(20 * 300, 0.5f), b(300 * 64, 0.25f), c(20 * 64);
    gemm_slice<float>(c.data(), 20, 64, 0, 64, 1.f, a.data(), 20, 300, false, b.data(), 300, 64, false, 0.f);
    CHECK(c[0] == doctest::Approx(300 * 0.125));
    auto choices = product_choices();
    REQUIRE(choices.size() == 1);
    const ProductChoice& p = choices[0];
    CHECK(p.dtype == DType::float32);
    CHECK((p.m == 20 && p.n == 64 && p.k == 300 && !p.trans_a && !p.trans_b && !p.accumulate));
    CHECK(p.source == ProductChoice::Source::measured);
    const auto kernels = available_kernels();
    if (kernels.size() > 1) {
        // Every candidate that takes the shape was timed, and the one kept is the fastest.
        REQUIRE(p.seconds.size() >= 2);
        double best = 1e300;
        ProductKernel fastest = p.seconds[0].first;
        for (auto& [k, s] : p.seconds) {
            CHECK(s > 0);
            if (s < best) best = s, fastest = k;
        }
        CHECK(p.kernel == fastest);
        CHECK(p.str().find("(measured: eigen ") != std::string::npos);
    }
    // The same shape again: no second measurement.
    gemm_slice<float>(c.data(), 20, 64, 0, 64, 1.f, a.data(), 20, 300, false, b.data(), 300, 64, false, 0.f);
    CHECK(product_choices().size() == 1);
    // A small product is not timed.
    std::vector<float> s(4);
    gemm_slice<float>(s.data(), 2, 2, 0, 2, 1.f, a.data(), 2, 3, false, b.data(), 3, 2, false, 0.f);
    CHECK(product_choices().size() == 1);
    // The file holds one line for the shape: this CPU's key, the shape, the kernel, the times.
    auto lines = cache.lines();
    REQUIRE(lines.size() == 1);
    std::istringstream in(lines[0]);
    std::string cpu, dtype, trans, kernel;
    std::int64_t m, n, k;
    int acc;
    in >> cpu >> dtype >> m >> n >> k >> trans >> acc >> kernel;
    CHECK(cpu.size() == 16);
    CHECK(dtype == "float32");
    CHECK((m == 20 && n == 64 && k == 300 && trans == "NN" && acc == 0));
    CHECK(kernel == kernel_name(p.kernel));
}

TEST_CASE("a choice in the cache file is used without measuring; lines that do not apply are skipped") {
    TempCache cache;
    // Learn this machine's CPU key from a line the library writes.
    std::vector<double> a(64 * 64, 1.0), b(64 * 64, 1.0), c(64 * 64);
    gemm_slice<double>(c.data(), 64, 64, 0, 64, 1.0, a.data(), 64, 64, false, b.data(), 64, 64, false, 0.0);
    auto lines = cache.lines();
    REQUIRE(lines.size() == 1);
    const std::string cpu = lines[0].substr(0, lines[0].find(' '));
    const std::string last = available_kernels().back() == ProductKernel::eigen ? "eigen"
                                                                                 : std::string(kernel_name(available_kernels().back()));
    // A line is used when every kernel that takes its shape was timed for it.
    std::string every_time;
    for (ProductKernel k : available_kernels()) every_time += fmt::format(" {}=1us", kernel_name(k));
    {
        std::ofstream out(cache.file, std::ios::app);
        out << "garbage line\n"
            << cpu << " float64 -3 5 5 NN 0 eigen\n"                  // negative size
            << cpu << " float64 48 48 48 XY 0 eigen\n"                // bad transpose
            << cpu << " float64 48 48 48 NN 0 mkl\n"                  // unknown kernel
            << "0123456789abcdef float64 48 48 48 NN 0 eigen\n"       // another CPU
            << cpu << " float16 48 48 48 NN 0 eigen\n"                // bad dtype
            << cpu << " float64 48 48 48 NN 0 " << last << every_time << "\n"  // the line that applies
            << cpu << " float64 48 48 48 NN 0 eigen\n"                // a later line for it: the first wins
            << cpu << " float64 56 56 56 NN 0 eigen eigen=1us\n"     // measured without the other kernels
            << cpu << " float64 50 50 50 NN 0 eigen";                 // no newline: being written, skipped
    }
    set_kernel_cache(cache.file);  // forget this process's choices, read the file afresh
    std::vector<double> d(48 * 48);
    gemm_slice<double>(d.data(), 48, 48, 0, 48, 1.0, a.data(), 48, 48, false, b.data(), 48, 48, false, 0.0);
    CHECK(d[47] == 48.0);
    auto choices = product_choices();
    REQUIRE(choices.size() == 1);
    CHECK(choices[0].source == ProductChoice::Source::cache_file);
    CHECK(kernel_name(choices[0].kernel) == last);
    CHECK(choices[0].seconds.empty());
    CHECK(choices[0].str().find("(from the cache file)") != std::string::npos);
    // The unterminated line's shape is measured (and appended on a line of its own).
    std::vector<double> e(50 * 50);
    gemm_slice<double>(e.data(), 50, 50, 0, 50, 1.0, a.data(), 50, 50, false, b.data(), 50, 50, false, 0.0);
    CHECK(product_choices().size() == 2);
    CHECK(product_choices()[1].source == ProductChoice::Source::measured);
    // The line timed on Eigen alone is measured again when other kernels take its shape (a
    // kernel added to the build after the line was written).
    std::vector<double> f(56 * 56);
    gemm_slice<double>(f.data(), 56, 56, 0, 56, 1.0, a.data(), 56, 56, false, b.data(), 56, 56, false, 0.0);
    REQUIRE(product_choices().size() == 3);
    CHECK(product_choices()[2].source == (available_kernels().size() > 1 ? ProductChoice::Source::measured
                                                                         : ProductChoice::Source::cache_file));
}

TEST_CASE("without a cache file products still choose, in the process only") {
    TempCache cache;
    set_kernel_cache("");
    std::vector<float> a(32 * 100, 1.f), b(100 * 48, 1.f), c(32 * 48);
    gemm_slice<float>(c.data(), 32, 48, 0, 48, 1.f, a.data(), 32, 100, false, b.data(), 100, 48, false, 0.f);
    CHECK(c[5] == 100.f);
    REQUIRE(product_choices().size() == 1);
    CHECK(product_choices()[0].source == ProductChoice::Source::measured);
    CHECK(!fs::exists(cache.file));
    // A cache path that cannot be created (under a regular file) is no error either.
    std::ofstream(cache.dir / "plain") << "x";
    set_kernel_cache(cache.dir / "plain" / "products.txt");
    gemm_slice<float>(c.data(), 32, 48, 0, 48, 1.f, a.data(), 32, 100, false, b.data(), 100, 48, false, 0.f);
    CHECK(c[5] == 100.f);
    CHECK(product_choices().size() == 1);
}

TEST_CASE("kernel names and flags are checked") {
    CHECK(kernel_name(kernel_from_name("openblas")) == "openblas");
    CHECK_THROWS_WITH_AS(kernel_from_name("mkl"), "product kernel 'mkl' is unknown (known: eigen, openblas, blocked)",
                         UsageError);
    Config c;
    apply_flags("blas_kernel=eigen,kernel_cache=/tmp/x.txt", c);
    CHECK(c.blas_kernel == "eigen");
    CHECK(c.kernel_cache == "/tmp/x.txt");
    apply_flags("kernel_cache=off", c);
    CHECK(c.kernel_cache.empty());
    CHECK_THROWS_WITH_AS(apply_flags("blas_kernel=fastest", c),
                         "THEANINE_FLAGS: blas_kernel must be measure, eigen, openblas or blocked, got 'fastest'",
                         UsageError);
    CHECK(available_kernels().front() == ProductKernel::eigen);
    auto av = available_kernels();
    for (ProductKernel k : {ProductKernel::openblas, ProductKernel::blocked}) {
        if (std::find(av.begin(), av.end(), k) == av.end()) {
            // "... not available in this build", or "... here (why)" for an OpenBLAS refused.
            const std::string want = fmt::format("set_product_kernel: {} is not available ", kernel_name(k));
            std::string said;
            try {
                set_product_kernel(k);
            } catch (const UsageError& e) {
                said = e.what();
            }
            CHECK(said.rfind(want, 0) == 0);
        }
    }
}

TEST_CASE("an OpenBLAS that cannot be called from several threads at once is refused, saying why") {
    const std::string m = detail::openblas_refusal("libm.so.6");
    if (m.ends_with("this build has no OpenBLAS kernel")) {
        MESSAGE("built without OpenBLAS");
        return;
    }
    // A library the program has loaded keeps its own settings.
    CHECK(m == "libm.so.6: already loaded by the program, which sets its thread count itself");
    CHECK(detail::openblas_refusal("libanl.so.1") ==
          "libanl.so.1: lacks cblas_sgemm, cblas_dgemm, openblas_set_num_threads or openblas_get_parallel");
    const std::string none = detail::openblas_refusal("/nonexistent/libopenblas.so.0");
    CHECK(none.rfind("/nonexistent/libopenblas.so.0: could not be opened: ", 0) == 0);
    // Debian's sequential build, where installed, is refused; the thread count the caller set
    // for its own OpenBLAS is put back after the library is opened (and unset stays unset).
    const std::string serial = "/usr/lib/x86_64-linux-gnu/openblas-serial/libopenblas.so.0";
    if (!fs::exists(serial)) {
        MESSAGE("no sequential OpenBLAS here: " << serial);
        return;
    }
    ::setenv("OPENBLAS_NUM_THREADS", "3", 1);
    CHECK(detail::openblas_refusal(serial) ==
          serial + ": a sequential build, which cannot be called from several threads at once (install the pthreads "
                   "build: libopenblas0-pthread)");
    CHECK(std::string(std::getenv("OPENBLAS_NUM_THREADS")) == "3");
    ::unsetenv("OPENBLAS_NUM_THREADS");
    CHECK(!detail::openblas_refusal(serial).empty());
    CHECK(std::getenv("OPENBLAS_NUM_THREADS") == nullptr);
}
