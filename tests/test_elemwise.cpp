// Elementwise ops: values against hand-computed ones, broadcasting, dtypes, errors.
#include <doctest/doctest.h>

#include <cmath>
#include <cstring>
#include <functional>
#include <limits>

#include <fmt/format.h>

#include "ops/vecmath.hpp"
#include "support/helpers.hpp"

using namespace theanine;
using namespace theanine::testing;

namespace {
std::vector<double> apply_ref(const std::vector<double>& a, const std::function<double(double)>& f) {
    std::vector<double> r;
    for (double v : a) r.push_back(f(v));
    return r;
}
}  // namespace

TEST_CASE("unary ops match the C library on sample points") {
    const std::vector<double> pos = {0.25, 0.5, 1.5, 3.0};
    const std::vector<double> any = {-2.0, -0.5, 0.5, 3.0};
    Variable x = vector("x");
    struct Case {
        const char* name;
        std::function<Variable(const Variable&)> build;
        std::function<double(double)> ref;
        const std::vector<double>* pts;
    };
    std::vector<Case> cases = {
        {"neg", [](const Variable& v) { return -v; }, [](double v) { return -v; }, &any},
        {"exp", [](const Variable& v) { return exp(v); }, [](double v) { return std::exp(v); }, &any},
        {"log", [](const Variable& v) { return log(v); }, [](double v) { return std::log(v); }, &pos},
        {"log1p", [](const Variable& v) { return log1p(v); }, [](double v) { return std::log1p(v); }, &pos},
        {"sigmoid", [](const Variable& v) { return sigmoid(v); }, [](double v) { return 1 / (1 + std::exp(-v)); }, &any},
        {"softplus", [](const Variable& v) { return softplus(v); }, [](double v) { return std::log(1 + std::exp(v)); }, &any},
        {"tanh", [](const Variable& v) { return tanh(v); }, [](double v) { return std::tanh(v); }, &any},
        {"abs", [](const Variable& v) { return abs(v); }, [](double v) { return std::fabs(v); }, &any},
        {"sgn", [](const Variable& v) { return sgn(v); }, [](double v) { return v > 0 ? 1.0 : -1.0; }, &any},
        {"sqrt", [](const Variable& v) { return sqrt(v); }, [](double v) { return std::sqrt(v); }, &pos},
        {"sqr", [](const Variable& v) { return sqr(v); }, [](double v) { return v * v; }, &any},
    };
    for (const auto& c : cases) {
        CAPTURE(c.name);
        Tensor out = eval1({x}, c.build(x), {T64({4}, *c.pts)});
        CHECK(close(out.to_doubles(), apply_ref(*c.pts, c.ref), 1e-14));
    }
}

TEST_CASE("binary ops and comparisons") {
    Variable a = vector("a"), b = vector("b");
    Tensor av = T64({4}, {1, -2, 3, 4}), bv = T64({4}, {2, 2, -3, 4});
    auto run = [&](const Variable& e) { return eval1({a, b}, e, {av, bv}).to_doubles(); };
    CHECK(run(a + b) == std::vector<double>{3, 0, 0, 8});
    CHECK(run(a - b) == std::vector<double>{-1, -4, 6, 0});
    CHECK(run(a * b) == std::vector<double>{2, -4, -9, 16});
    CHECK(run(a / b) == std::vector<double>{0.5, -1, -1, 1});
    CHECK(run(pow(abs(a), b)) == std::vector<double>{1, 4, 1.0 / 27, 256});
    CHECK(run(maximum(a, b)) == std::vector<double>{2, 2, 3, 4});
    CHECK(run(minimum(a, b)) == std::vector<double>{1, -2, -3, 4});
    CHECK(run(eq(a, b)) == std::vector<double>{0, 0, 0, 1});
    CHECK(run(neq(a, b)) == std::vector<double>{1, 1, 1, 0});
    CHECK(run(lt(a, b)) == std::vector<double>{1, 1, 0, 0});
    CHECK(run(le(a, b)) == std::vector<double>{1, 1, 0, 1});
    CHECK(run(gt(a, b)) == std::vector<double>{0, 0, 1, 0});
    CHECK(run(ge(a, b)) == std::vector<double>{0, 0, 1, 1});
    CHECK(eq(a, b).dtype() == DType::boolean);
    CHECK(run(switch_(gt(a, b), a, b * 10.0)) == std::vector<double>{20, 20, 3, 40});
    CHECK(run(cast(a, DType::int64) * 3) == std::vector<double>{3, -6, 9, 12});
}

TEST_CASE("broadcasting follows the static broadcastable pattern") {
    Variable m = matrix("m");
    Variable v = vector("v");
    Tensor mv = T64({2, 3}, {1, 2, 3, 4, 5, 6});
    Tensor vv = T64({3}, {10, 20, 30});
    // A vector aligns to the last axis (a bias add).
    CHECK(eval1({m, v}, m + v, {mv, vv}).to_doubles() == std::vector<double>{11, 22, 33, 14, 25, 36});
    // A column from dimshuffle broadcasts along axis 1.
    Variable c = vector("c").dimshuffle({0, -1});
    CHECK(c.type().str() == "float64 col");
    Tensor cv = T64({2}, {100, 200});
    CHECK(eval1({m, c.node().inputs[0]}, m + c, {mv, cv}).to_doubles() ==
          std::vector<double>{101, 102, 103, 204, 205, 206});
    // Scalars broadcast everywhere; weak constants adopt float32.
    Variable f = fmatrix("f");
    Tensor fv = T32({1, 2}, {1.5f, 2.5f});
    Tensor out = eval1({f}, 2.0 * f - 1, {fv});
    CHECK(out.dtype() == DType::float32);
    CHECK(out.to_doubles() == std::vector<double>{2, 4});
    // A non-contiguous (transposed) operand.
    CHECK(eval1({m}, m.T() * 1.0, {mv}).to_doubles() == std::vector<double>{1, 4, 2, 5, 3, 6});
}

TEST_CASE("mismatched shapes on a non-broadcastable axis raise a clear error") {
    Variable a = matrix("a"), b = matrix("b");
    Function f = function({a, b}, {a + b});
    CHECK_THROWS_WITH_AS(f({T64({2, 3}, {1, 2, 3, 4, 5, 6}), T64({2, 2}, {1, 2, 3, 4})}),
                         "Elemwise{add}: shapes do not match along axis 1: input 0 has shape (2, 3), input 1 has shape (2, 2)",
                         UsageError);
    // Size 1 where the type is not broadcastable is an error too (as in Theano).
    CHECK_THROWS_WITH_AS(f({T64({2, 3}, {1, 2, 3, 4, 5, 6}), T64({1, 3}, {1, 2, 3})}),
                         "Elemwise{add}: shapes do not match along axis 0: input 0 has shape (2, 3), input 1 has shape (1, 3)",
                         UsageError);
}

TEST_CASE("sigmoid and softplus do not overflow") {
    Variable x = vector("x");
    Tensor out = eval1({x}, sigmoid(x), {T64({3}, {-1000, 0, 1000})});
    CHECK(out.to_doubles() == std::vector<double>{0, 0.5, 1});
    Tensor sp = eval1({x}, softplus(x), {T64({3}, {-1000, 0, 1000})});
    CHECK(sp.to_doubles()[0] == 0);
    CHECK(sp.to_doubles()[1] == doctest::Approx(std::log(2.0)).epsilon(1e-15));
    CHECK(sp.to_doubles()[2] == 1000);
}

TEST_CASE("ops have value identity through their props") {
    Elemwise a(ScalarOp::add), a2(ScalarOp::add), m(ScalarOp::mul);
    CHECK(a.equals(a2));
    CHECK(a.hash() == a2.hash());
    CHECK_FALSE(a.equals(m));
    CHECK(a.name() == "Elemwise{add}");
    Cast c(DType::int64);
    CHECK(c.name() == "Cast{int64}");
    CHECK_FALSE(c.equals(a));
    CHECK(a.infer_shape({{2, 1}, {1, 3}})->at(0) == Shape{2, 3});
}

TEST_CASE("floor division, remainder and rounding as Python and numpy define them") {
    Variable a = vector("a"), b = vector("b");
    Tensor av = T64({6}, {7, -7, 7.5, -7.5, 7, -7}), bv = T64({6}, {2, 2, 2, 2, -3, 3});
    auto got = eval({a, b}, {int_div(a, b), mod(a, b)}, {av, bv});
    CHECK(got[0].to_doubles() == std::vector<double>{3, -4, 3, -4, -3, -3});
    CHECK(got[1].to_doubles() == std::vector<double>{1, 1, 1.5, 0.5, -2, 2});
    Variable i = lvector("i"), j = lvector("j");
    auto gi = eval({i, j}, {int_div(i, j), mod(i, j)}, {I64({4}, {7, -7, 7, -7}), I64({4}, {2, 2, -3, 3})});
    CHECK(gi[0].to_doubles() == std::vector<double>{3, -4, -3, -3});
    CHECK(gi[1].to_doubles() == std::vector<double>{1, 1, -2, 2});
    Tensor r = eval1({a}, round_half_to_even(a), {T64({6}, {0.5, 1.5, 2.5, -0.5, -1.5, 0.49999999999999994})});
    CHECK(r.to_doubles() == std::vector<double>{0, 2, 2, -0.0, -2, 0});
    // No gradient flows through floor division or rounding (Theano's rule): zeros.
    Variable s = scalar("s");
    auto g = eval({s}, {grad(int_div(s * 3.0, 2.0), s), grad(round_half_to_even(s * 3.0), s)}, {1.3});
    CHECK(g[0].item() == 0.0);
    CHECK(g[1].item() == 0.0);
}

TEST_CASE("softplus as Theano computes it: x above 16, 0 below -745, log1p(exp(x)) between") {
    Variable a = vector("a");
    CompileOptions unfused;
    unfused.rewrites.none = true;
    // The plain kernel and the fused loop (which computes log1p(exp(x)) its own way, to an ulp).
    for (bool fused : {false, true}) {
        CAPTURE(fused);
        Function f = fused ? function({a}, {softplus(a)}) : function({a}, {softplus(a)}, {}, {}, unfused);
        const auto v = f({T64({5}, {20, 16, 1, -800, -30})})[0].to_doubles();
        CHECK(v[0] == 20.0);
        CHECK(v[1] == doctest::Approx(std::log1p(std::exp(16.0))).epsilon(1e-15));
        CHECK(v[2] == doctest::Approx(std::log1p(std::exp(1.0))).epsilon(1e-15));
        CHECK(v[3] == 0.0);
        CHECK(v[4] == doctest::Approx(std::log1p(std::exp(-30.0))).epsilon(1e-15));
    }
    // log(1 + exp(x)) becomes softplus(x): finite where exp overflows.
    Tensor big = eval1({a}, log(1.0 + exp(a)), {T64({2}, {800, 0})});
    CHECK(big.at({0}) == 800.0);
    CHECK(big.at({1}) == doctest::Approx(std::log(2.0)).epsilon(1e-15));
}

TEST_CASE("unary kernels at infinities, NaN, signed zeros, tiny and huge values: plain, rewritten and fused") {
    const double inf = std::numeric_limits<double>::infinity(), nan = std::numeric_limits<double>::quiet_NaN();
    const std::vector<double> pts = {-inf, -1e300, -800, -745.5, -100, -40, -20, -1, -0.5, -1e-300, -0.0, 0.0,
                                     1e-300, 1e-20, 0.5, 1, 14.5, 20, 40, 100, 710, 800, 1e300, inf, nan};
    struct Case {
        const char* name;
        std::function<Variable(const Variable&)> build;
        std::function<double(double, bool)> ref;  // (x, float32)
    };
    auto softplus_ref = [](double x, bool f32) {
        if (x > (f32 ? 14 : 16)) return x;
        if (x < (f32 ? -103 : -745)) return 0.0;
        return std::log1p(std::exp(x));
    };
    const std::vector<Case> cases = {
        {"neg", [](const Variable& v) { return -v; }, [](double v, bool) { return -v; }},
        {"exp", [](const Variable& v) { return exp(v); }, [](double v, bool) { return std::exp(v); }},
        {"log", [](const Variable& v) { return log(v); }, [](double v, bool) { return std::log(v); }},
        {"log1p", [](const Variable& v) { return log1p(v); }, [](double v, bool) { return std::log1p(v); }},
        {"sigmoid", [](const Variable& v) { return sigmoid(v); }, [](double v, bool) { return 1 / (1 + std::exp(-v)); }},
        {"softplus", [](const Variable& v) { return softplus(v); }, softplus_ref},
        {"tanh", [](const Variable& v) { return tanh(v); }, [](double v, bool) { return std::tanh(v); }},
        {"abs", [](const Variable& v) { return abs(v); }, [](double v, bool) { return std::fabs(v); }},
        {"sgn", [](const Variable& v) { return sgn(v); },
         [](double v, bool) { return std::isnan(v) ? v : v > 0 ? 1.0 : v < 0 ? -1.0 : 0.0; }},
        {"sqrt", [](const Variable& v) { return sqrt(v); }, [](double v, bool) { return std::sqrt(v); }},
        {"sqr", [](const Variable& v) { return sqr(v); }, [](double v, bool) { return v * v; }},
    };
    for (const bool f32 : {false, true}) {
        const DType dt = f32 ? DType::float32 : DType::float64;
        Variable x = input(TensorType{dt, {false}}, "x");
        Variable one = input(TensorType{dt, {false}}, "one");
        std::vector<double> xs = pts;
        if (f32) {
            for (double& v : xs) v = static_cast<double>(static_cast<float>(v));
        }
        const auto n = static_cast<std::int64_t>(xs.size());
        Tensor xv = Tensor::from_vector<double>({n}, xs).astype(dt);
        Tensor ones = Tensor::full(dt, {n}, 1.0);
        CompileOptions plain;
        plain.rewrites.none = true;
        plain.on_unused_input = CompileOptions::UnusedInput::ignore;
        CompileOptions rewritten;
        rewritten.on_unused_input = CompileOptions::UnusedInput::ignore;
        for (const auto& c : cases) {
            // The kernel alone without rewrites, with them, and fused with a multiplication
            // by an input of ones (one loop computing both).
            const std::vector<std::pair<const char*, Function>> forms = [&] {
                std::vector<std::pair<const char*, Function>> f;
                f.emplace_back("plain", function({x, one}, {c.build(x)}, {}, {}, plain));
                f.emplace_back("rewritten", function({x, one}, {c.build(x)}, {}, {}, rewritten));
                f.emplace_back("fused", function({x, one}, {c.build(x) * one}, {}, {}, rewritten));
                return f;
            }();
            for (const auto& [form, fn] : forms) {
                const auto got = const_cast<Function&>(fn)({xv, ones})[0].to_doubles();
                for (std::size_t i = 0; i < xs.size(); ++i) {
                    double want = c.ref(xs[i], f32);
                    if (f32) want = static_cast<double>(static_cast<float>(want));
                    const std::string op = c.name, how = form;
                    CAPTURE(op);
                    CAPTURE(how);
                    CAPTURE(f32);
                    CAPTURE(xs[i]);
                    CAPTURE(got[i]);
                    CAPTURE(want);
                    if (std::isnan(want)) {
                        CHECK(std::isnan(got[i]));
                    } else if (std::isinf(want)) {
                        CHECK(got[i] == want);
                    } else {
                        // A few ulp; results below the smallest normal number may be flushed.
                        const double tiny = f32 ? 1.2e-38 : 2.3e-308;
                        CHECK(std::abs(got[i] - want) <= std::max((f32 ? 4e-7 : 1e-15) * std::abs(want), tiny));
                    }
                }
            }
        }
    }
}

TEST_CASE("binary kernels at infinities, NaN and zeros: plain, rewritten and fused, as numpy computes them") {
    const double inf = std::numeric_limits<double>::infinity(), nan = std::numeric_limits<double>::quiet_NaN();
    const std::vector<double> vals = {-inf, -2, -1, -0.5, -0.0, 0.0, 0.5, 1, 2, 3, 1e300, inf, nan};
    std::vector<double> as, bs;
    for (double a : vals) {
        for (double b : vals) {
            as.push_back(a);
            bs.push_back(b);
        }
    }
    // numpy's maximum and minimum propagate NaN (so does Theano's).
    auto nan_max = [](double a, double b) { return std::isnan(a) || std::isnan(b) ? a + b : std::max(a, b); };
    auto nan_min = [](double a, double b) { return std::isnan(a) || std::isnan(b) ? a + b : std::min(a, b); };
    struct Case {
        const char* name;
        std::function<Variable(const Variable&, const Variable&)> build;
        std::function<double(double, double)> ref;
    };
    const std::vector<Case> cases = {
        {"add", [](const Variable& a, const Variable& b) { return a + b; }, [](double a, double b) { return a + b; }},
        {"sub", [](const Variable& a, const Variable& b) { return a - b; }, [](double a, double b) { return a - b; }},
        {"mul", [](const Variable& a, const Variable& b) { return a * b; }, [](double a, double b) { return a * b; }},
        {"true_div", [](const Variable& a, const Variable& b) { return a / b; }, [](double a, double b) { return a / b; }},
        {"pow", [](const Variable& a, const Variable& b) { return pow(a, b); },
         [](double a, double b) { return std::pow(a, b); }},
        {"maximum", [](const Variable& a, const Variable& b) { return maximum(a, b); }, nan_max},
        {"minimum", [](const Variable& a, const Variable& b) { return minimum(a, b); }, nan_min},
    };
    for (const bool f32 : {false, true}) {
        const DType dt = f32 ? DType::float32 : DType::float64;
        Variable a = input(TensorType{dt, {false}}, "a"), b = input(TensorType{dt, {false}}, "b");
        Variable one = input(TensorType{dt, {false}}, "one");
        std::vector<double> av = as, bv = bs;
        if (f32) {
            for (double& v : av) v = static_cast<double>(static_cast<float>(v));
            for (double& v : bv) v = static_cast<double>(static_cast<float>(v));
        }
        const auto n = static_cast<std::int64_t>(av.size());
        const Tensor at = Tensor::from_vector<double>({n}, av).astype(dt), bt = Tensor::from_vector<double>({n}, bv).astype(dt);
        const Tensor ones = Tensor::full(dt, {n}, 1.0);
        CompileOptions plain;
        plain.rewrites.none = true;
        plain.on_unused_input = CompileOptions::UnusedInput::ignore;
        CompileOptions rewritten;
        rewritten.on_unused_input = CompileOptions::UnusedInput::ignore;
        for (const auto& c : cases) {
            std::vector<std::pair<std::string, Function>> forms;
            forms.emplace_back("plain", function({a, b, one}, {c.build(a, b)}, {}, {}, plain));
            forms.emplace_back("rewritten", function({a, b, one}, {c.build(a, b)}, {}, {}, rewritten));
            forms.emplace_back("fused", function({a, b, one}, {c.build(a, b) * one}, {}, {}, rewritten));
            for (auto& [form, fn] : forms) {
                const auto got = fn({at, bt, ones})[0].to_doubles();
                for (std::size_t i = 0; i < av.size(); ++i) {
                    double want = c.ref(av[i], bv[i]);
                    if (f32) want = static_cast<double>(static_cast<float>(want));
                    const std::string op = c.name;
                    CAPTURE(op);
                    CAPTURE(form);
                    CAPTURE(f32);
                    CAPTURE(av[i]);
                    CAPTURE(bv[i]);
                    CAPTURE(got[i]);
                    CAPTURE(want);
                    if (std::isnan(want)) {
                        CHECK(std::isnan(got[i]));
                    } else if (std::isinf(want) || want == 0) {
                        CHECK(got[i] == want);
                    } else {
                        CHECK(std::abs(got[i] - want) <= (f32 ? 4e-7 : 1e-15) * std::abs(want));
                    }
                }
            }
        }
    }
}

namespace {
// Distance in units in the last place between two floats of one type (0 for equal values, for
// +0 and -0, and for two NaNs; huge when only one is NaN).
template <class T>
std::int64_t ulp_distance(T a, T b) {
    if (std::isnan(a) || std::isnan(b)) return std::isnan(a) && std::isnan(b) ? 0 : std::numeric_limits<std::int64_t>::max();
    using I = std::conditional_t<sizeof(T) == 4, std::int32_t, std::int64_t>;
    I ia, ib;
    std::memcpy(&ia, &a, sizeof a);
    std::memcpy(&ib, &b, sizeof b);
    // Map the sign-magnitude order onto integers: negative values below zero, -0 onto +0.
    const std::int64_t ma = ia < 0 ? -static_cast<std::int64_t>(ia & std::numeric_limits<I>::max()) : ia;
    const std::int64_t mb = ib < 0 ? -static_cast<std::int64_t>(ib & std::numeric_limits<I>::max()) : ib;
    return ma > mb ? ma - mb : mb - ma;
}
}  // namespace

// Every transcendental kernel of the fused loops against the C library's long double functions
// (correctly rounded to the dtype for practical purposes) over the whole range: 2^17 points with
// magnitudes spread evenly in the exponent from the smallest subnormal to the largest finite
// value, both signs, plus +-0, +-inf and NaN. The bounds, in ulp, are the ones the README
// states; a result that is subnormal in the reference may be flushed to zero.
TEST_CASE("fused transcendental kernels stay within their ulp bounds over the whole range, float32 and float64") {
    struct Case {
        const char* name;
        std::function<Variable(const Variable&)> build;
        std::function<long double(long double, bool)> ref;
        int ulp32, ulp64;
    };
    const std::vector<Case> cases = {
        {"exp", [](const Variable& v) { return exp(v); }, [](long double v, bool) { return std::exp(v); }, 2, 2},
        {"log", [](const Variable& v) { return log(v); }, [](long double v, bool) { return std::log(v); }, 2, 2},
        {"log1p", [](const Variable& v) { return log1p(v); }, [](long double v, bool) { return std::log1p(v); }, 3, 3},
        {"tanh", [](const Variable& v) { return tanh(v); }, [](long double v, bool) { return std::tanh(v); }, 4, 2},
        {"sigmoid", [](const Variable& v) { return sigmoid(v); },
         [](long double v, bool) { return 1 / (1 + std::exp(-v)); }, 3, 3},
        {"softplus", [](const Variable& v) { return softplus(v); },
         [](long double v, bool f32) -> long double {
             if (v > (f32 ? 14 : 16)) return v;  // Theano's cut-offs
             if (v < (f32 ? -103 : -745)) return 0;
             return std::log1p(std::exp(v));
         },
         4, 4},
        {"sqrt", [](const Variable& v) { return sqrt(v); }, [](long double v, bool) { return std::sqrt(v); }, 1, 1},
    };
    auto run = [&]<class T>() {
        constexpr bool f32 = std::is_same_v<T, float>;
        const DType dt = f32 ? DType::float32 : DType::float64;
        std::vector<T> xs;
        const double lo = std::log2(static_cast<double>(std::numeric_limits<T>::denorm_min()));
        const double hi = std::log2(static_cast<double>(std::numeric_limits<T>::max()));
        const int n = 1 << 16;
        for (int i = 0; i < n; ++i) {
            const T v = static_cast<T>(std::exp2(lo + (hi - lo) * (i + 0.5) / n));
            xs.push_back(v);
            xs.push_back(-v);
        }
        // The region where most functions change shape, densely.
        for (int i = -4000; i <= 4000; ++i) xs.push_back(static_cast<T>(i / 100.0));
        const T inf = std::numeric_limits<T>::infinity();
        for (T v : {T(0), T(-0.0), inf, -inf, std::numeric_limits<T>::quiet_NaN(), std::numeric_limits<T>::max(),
                    std::numeric_limits<T>::lowest(), T(-1)}) {
            xs.push_back(v);
        }
        const auto count = static_cast<std::int64_t>(xs.size());
        Tensor xv = Tensor::from_vector<T>({count}, xs);
        Tensor ones = Tensor::full(dt, {count}, 1.0);
        Variable x = input(TensorType{dt, {false}}, "x"), one = input(TensorType{dt, {false}}, "one");
        for (const Case& c : cases) {
            Function f = function({x, one}, {c.build(x) * one});  // one fused loop
            const Tensor got = f({xv, ones})[0];
            const T* g = got.data<T>();
            std::int64_t worst = 0;
            T worst_x = 0;
            for (std::int64_t i = 0; i < count; ++i) {
                const T want = static_cast<T>(c.ref(static_cast<long double>(xs[i]), f32));
                std::int64_t d = ulp_distance(g[i], want);
                if (d != 0 && std::fpclassify(want) == FP_SUBNORMAL && g[i] == T(0)) d = 0;  // flushed
                if (d > worst) worst = d, worst_x = xs[i];
            }
            const std::string op = c.name;
            CAPTURE(op);
            CAPTURE(f32);
            CAPTURE(worst_x);
            MESSAGE(fmt::format("{} {}: at most {} ulp (at x = {})", op, f32 ? "float32" : "float64", worst, worst_x));
            CHECK(worst <= (f32 ? c.ulp32 : c.ulp64));
        }
    };
    run.template operator()<float>();
    run.template operator()<double>();
}

// The vectorised exp and log hand the lanes Eigen gets wrong (exp below log of the smallest
// normal number, log of a subnormal) to the C library. The test that finds such lanes reads a
// block a packet at a time and its tail as a padded packet: one such lane at every position of
// blocks of 1 to 40 values, among NaNs and ordinary values, must come out as the C library's.
TEST_CASE("vectorised exp and log recompute out-of-range lanes at every position of a block") {
    auto run = [&]<class T>() {
        const T far = static_cast<T>(std::is_same_v<T, float> ? -110.0 : -800.0);  // exp: 0 (Eigen: smallest normal)
        const T sub = std::numeric_limits<T>::denorm_min() * 3;                   // log: about -744 or -102
        const T nan = std::numeric_limits<T>::quiet_NaN();
        std::int64_t bad = 0;
        for (int n = 1; n <= 40; ++n) {
            for (int pos = 0; pos < n; ++pos) {
                std::vector<T> x(static_cast<std::size_t>(n)), y(x.size()), z(x.size()), w(x.size());
                for (int i = 0; i < n; ++i) x[static_cast<std::size_t>(i)] = i % 7 == 3 ? nan : static_cast<T>(0.25 * (i % 5));
                std::vector<T> lx = x;
                x[static_cast<std::size_t>(pos)] = far;
                lx[static_cast<std::size_t>(pos)] = sub;
                vecmath::exp_into(y.data(), x.data(), n);
                vecmath::exp_into(z.data(), x.data(), n, /*of_minus_abs=*/true);
                vecmath::log_into(w.data(), lx.data(), n);
                const auto p = static_cast<std::size_t>(pos);
                bad += y[p] != std::exp(far) || z[p] != std::exp(far) || w[p] != std::log(sub);
                for (std::size_t i = 0; i < x.size(); ++i) {
                    if (i == p) continue;
                    const bool is_nan = std::isnan(x[i]);
                    bad += is_nan != std::isnan(y[i]) || is_nan != std::isnan(z[i]) || is_nan != std::isnan(w[i]);
                    if (!is_nan) {
                        bad += std::abs(y[i] - std::exp(x[i])) > 4 * std::numeric_limits<T>::epsilon() * std::exp(x[i]);
                        bad += std::abs(z[i] - std::exp(-x[i])) > 4 * std::numeric_limits<T>::epsilon() * std::exp(-x[i]);
                    }
                }
            }
        }
        CAPTURE(sizeof(T));
        CHECK(bad == 0);
        CHECK(std::exp(far) == T(0));  // the case the C library gets right and Eigen's packet exp does not
    };
    run.template operator()<float>();
    run.template operator()<double>();
}

TEST_CASE("int8, int16, uint16, uint32: numpy's promotions, safe conversions, arithmetic that wraps as numpy's") {
    using DT = DType;
    // Promotion of two array dtypes, as numpy.result_type.
    CHECK(promote(DT::int8, DT::uint8) == DT::int16);
    CHECK(promote(DT::int16, DT::uint16) == DT::int32);
    CHECK(promote(DT::int32, DT::uint32) == DT::int64);
    CHECK(promote(DT::int64, DT::uint32) == DT::int64);
    CHECK(promote(DT::int16, DT::uint8) == DT::int16);
    CHECK(promote(DT::uint16, DT::uint32) == DT::uint32);
    CHECK(promote(DT::int8, DT::float32) == DT::float32);
    CHECK(promote(DT::uint16, DT::float32) == DT::float32);
    CHECK(promote(DT::uint32, DT::float32) == DT::float64);
    CHECK(promote(DT::boolean, DT::int8) == DT::int8);
    // Safe casts (numpy.can_cast).
    CHECK(casts_safely(DT::int8, DT::int16));
    CHECK(casts_safely(DT::uint16, DT::int32));
    CHECK(casts_safely(DT::uint16, DT::float32));
    CHECK_FALSE(casts_safely(DT::uint16, DT::int16));
    CHECK_FALSE(casts_safely(DT::int8, DT::uint32));
    CHECK_FALSE(casts_safely(DT::uint32, DT::float32));
    CHECK(casts_safely(DT::uint32, DT::int64));
    CHECK(dtype_from_name("uint16") == DT::uint16);
    CHECK(dtype_size(DT::int16) == 2);

    Variable b = bvector("b");
    Variable u = input(TensorType{DT::uint8, {false}}, "u");
    Variable w = wvector("w");
    CHECK((b + u).dtype() == DT::int16);
    CHECK(exp(w).dtype() == DT::float32);   // Theano's upgrade_to_float
    CHECK(exp(input(TensorType{DT::uint32, {false}}, "q")).dtype() == DT::float64);
    Function f = function({b, u, w}, {b + u, b + b, w * w, int_div(w, b), exp(w), b.sum(), lt(b, u)});
    const Tensor bv = Tensor::from_vector<std::int8_t>({3}, {127, -128, -7});
    const Tensor uv = Tensor::from_vector<std::uint8_t>({3}, {255, 1, 2});
    const Tensor wv = Tensor::from_vector<std::int16_t>({3}, {300, -2, 7});
    const auto r = f({bv, uv, wv});
    CHECK(r[0].to_doubles() == std::vector<double>{382, -127, -5});  // int16: no overflow
    CHECK(r[1].to_doubles() == std::vector<double>{-2, 0, -14});     // int8 wraps as numpy's
    CHECK(r[2].dtype() == DT::int16);
    CHECK(r[2].to_doubles() == std::vector<double>{24464, 4, 49});   // 90000 wraps to 24464
    CHECK(r[3].to_doubles() == std::vector<double>{2, 0, -1});       // floor division
    CHECK(r[4].dtype() == DT::float32);
    CHECK(r[4].to_doubles()[2] == static_cast<double>(std::exp(7.0f)));
    CHECK(r[5].dtype() == DT::int64);
    CHECK(r[5].item() == -8);
    CHECK(r[6].to_doubles() == std::vector<double>{1, 1, 1});
    // Arguments: int8 data for an int16 input converts; int32 data is refused.
    Function g = function({w}, {w + 1});
    CHECK(g({Tensor::from_vector<std::int8_t>({2}, {-3, 4})})[0].to_doubles() == std::vector<double>{-2, 5});
    CHECK(error_of([&] { g({Tensor::from_vector<std::int32_t>({1}, {5})}); })
              .find("expects int16 vector; int32 data may lose precision as int16") != std::string::npos);
    // Casts between them.
    Variable x = vector("x");
    const Tensor c16 = function({x}, {cast(x, DT::uint16)})({T64({2}, {65535, 3})})[0];
    CHECK(c16.dtype() == DT::uint16);
    CHECK(c16.to_doubles() == std::vector<double>{65535, 3});
    const Tensor c8 = function({x}, {cast(x, DT::int8)})({T64({2}, {100, -1})})[0];
    CHECK(c8.dtype() == DT::int8);
    CHECK(c8.to_doubles() == std::vector<double>{100, -1});
}
