// Elementwise ops: values against hand-computed ones, broadcasting, dtypes, errors.
#include <doctest/doctest.h>

#include <cmath>
#include <functional>

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
