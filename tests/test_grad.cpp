// grad, verify_grad for every differentiable op, errors, stop-gradients, second order.
#include <doctest/doctest.h>

#include <cmath>

#include "support/helpers.hpp"

using namespace theanine;
using namespace theanine::testing;

namespace {
using Fn = std::function<Variable(const std::vector<Variable>&)>;

void check_grad(const std::string& name, const Fn& fn, const std::vector<Tensor>& pts,
                const VerifyGradOptions& opt = {}) {
    CAPTURE(name);
    VerifyGradReport r;
    CHECK_NOTHROW(r = verify_grad(fn, pts, opt));
    CHECK(r.n_checked > 0);
}

Tensor rt(const Shape& s, std::uint32_t seed, double lo = -1, double hi = 1) { return random_tensor(s, seed, lo, hi); }
}  // namespace

TEST_CASE("verify_grad: every elementwise op, with broadcasting") {
    Tensor a = rt({3, 4}, 1), b = rt({3, 4}, 2), pos = rt({3, 4}, 3, 0.5, 2.0), row = rt({4}, 4);
    check_grad("add", [](auto v) { return v[0] + v[1]; }, {a, b});
    check_grad("sub", [](auto v) { return v[0] - v[1]; }, {a, b});
    check_grad("mul", [](auto v) { return v[0] * v[1]; }, {a, b});
    check_grad("true_div", [](auto v) { return v[0] / v[1]; }, {a, pos});
    check_grad("neg", [](auto v) { return -v[0]; }, {a});
    check_grad("exp", [](auto v) { return exp(v[0]); }, {a});
    check_grad("log", [](auto v) { return log(v[0]); }, {pos});
    check_grad("log1p", [](auto v) { return log1p(v[0]); }, {pos});
    check_grad("sigmoid", [](auto v) { return sigmoid(v[0]); }, {a});
    check_grad("softplus", [](auto v) { return softplus(v[0]); }, {a});
    check_grad("tanh", [](auto v) { return tanh(v[0]); }, {a});
    check_grad("abs (away from 0)", [](auto v) { return abs(v[0]); }, {pos});
    check_grad("sqrt", [](auto v) { return sqrt(v[0]); }, {pos});
    check_grad("sqr", [](auto v) { return sqr(v[0]); }, {a});
    check_grad("pow", [](auto v) { return pow(v[0], v[1]); }, {pos, a});
    check_grad("maximum (no ties)", [](auto v) { return maximum(v[0], v[1]); }, {a, b});
    check_grad("minimum (no ties)", [](auto v) { return minimum(v[0], v[1]); }, {a, b});
    check_grad("switch", [](auto v) { return switch_(gt(v[0], 0.0), v[0] * v[1], v[1]); }, {a, b});
    // Through float32 the function is a staircase at 1e-7: difference over a wide step.
    check_grad("cast round trip", [](auto v) { return cast(cast(v[0], DType::float32), DType::float64); }, {a},
               VerifyGradOptions{1e-2, 1e-5, 1e-4, 42});
    check_grad("second", [](auto v) { return second(v[0], v[1].sum()) * v[0]; }, {a, b});
    check_grad("broadcast row", [](auto v) { return v[0] * v[1]; }, {a, row});
    check_grad("broadcast col", [](auto v) { return v[0] + v[1].dimshuffle({0, -1}).flatten(1).dimshuffle({0, -1}); },
               {a, rt({3}, 6)});
    check_grad("broadcastable input", [](auto v) { return v[0] * exp(v[1].dimshuffle({0, -1})); }, {a, rt({3}, 5)});
}

TEST_CASE("verify_grad: reductions over each axis, dot with transposed operands, shape ops") {
    Tensor m = rt({3, 4}, 11), n = rt({4, 5}, 12), t = rt({2, 3, 4}, 13), v = rt({4}, 14), w = rt({3}, 15);
    check_grad("sum all", [](auto x) { return x[0].sum(); }, {m});
    check_grad("sum axis 0", [](auto x) { return x[0].sum(0); }, {m});
    check_grad("sum axis 1", [](auto x) { return x[0].sum(1); }, {m});
    check_grad("sum 3-d axis 1", [](auto x) { return x[0].sum(1); }, {t});
    check_grad("sum keepdims", [](auto x) { return x[0] * x[0].sum(1, true); }, {m});
    check_grad("mean all", [](auto x) { return x[0].mean(); }, {m});
    check_grad("mean axis 0", [](auto x) { return x[0].mean(0); }, {m});
    check_grad("max axis 1", [](auto x) { return x[0].max(1); }, {m});
    check_grad("max axis 0", [](auto x) { return x[0].max(0); }, {m});
    check_grad("dot mm", [](auto x) { return dot(x[0], x[1]); }, {m, n});
    check_grad("concatenate axis 0", [](auto x) { return concatenate({x[0], x[1] * 2.0}, 0); }, {m, rt({2, 4}, 18)});
    check_grad("concatenate axis 1", [](auto x) { return concatenate({x[0], x[1]}, 1); }, {m, rt({3, 2}, 19)});
    check_grad("dot A^T", [](auto x) { return dot(x[0].T(), x[1]); }, {rt({4, 3}, 16), n});
    check_grad("dot B^T", [](auto x) { return dot(x[0], x[1].T()); }, {m, rt({5, 4}, 17)});
    check_grad("dot mv", [](auto x) { return dot(x[0], x[1]); }, {m, v});
    check_grad("dot vm", [](auto x) { return dot(x[0], x[1]); }, {w, m});
    check_grad("dot vv", [](auto x) { return dot(x[0], x[1]); }, {v, v});
    check_grad("gemm", [](auto x) { return gemm(x[0], constant(-0.5), x[1], x[2], constant(2.0), false, true); },
               {rt({3, 5}, 18), m, rt({5, 4}, 19)});
    check_grad("transpose", [](auto x) { return x[0].T() * 1.0; }, {m});
    check_grad("dimshuffle", [](auto x) { return x[0].dimshuffle({2, 0, 1}); }, {t});
    check_grad("reshape", [](auto x) { return reshape(x[0], std::vector<std::int64_t>{6, 2}); }, {m});
    check_grad("flatten", [](auto x) { return x[0].flatten(2); }, {t});
    check_grad("subtensor slice", [](auto x) { return subtensor(x[0], {slice(1, std::nullopt), slice(0, 3, 2)}); }, {m});
    check_grad("subtensor index", [](auto x) { return subtensor(x[0], {1}); }, {m});
    check_grad("inc_subtensor", [](auto x) { return inc_subtensor(x[0], x[1], {slice(0, 2)}); }, {m, v});
    check_grad("set_subtensor", [](auto x) { return set_subtensor(x[0], x[1], {2}); }, {m, v});
    check_grad("advanced indexing", [](auto x) {
        return subtensor(x[0], {constant(I64({3}, {0, 2, 2})), constant(I64({3}, {1, 3, 3}))});
    }, {m});
    check_grad("rows by index vector", [](auto x) { return subtensor(x[0], {constant(I64({2}, {1, 1}))}); }, {m});
}

TEST_CASE("verify_grad: softmax, cross-entropies and a composed expression") {
    Tensor m = rt({3, 4}, 21), w = rt({4, 5}, 22), b = rt({5}, 23), p = rt({3, 4}, 24, 0.1, 0.9);
    check_grad("softmax", [](auto x) { return softmax(x[0]); }, {m});
    check_grad("logistic regression nll", [](auto x) {
        Variable y = constant(I64({3}, {4, 0, 2}));
        Variable pr = softmax(dot(x[0], x[1]) + x[2]);
        return -mean(log(pr)[{arange(pr.shape(0)), y}]);
    }, {m, w, b});
    check_grad("binary cross-entropy", [](auto x) { return binary_crossentropy(sigmoid(x[0]), x[1]); }, {m, p});
    check_grad("tanh MLP layer", [](auto x) { return tanh(dot(x[0], x[1]) + x[2]).sum(1); }, {m, w, b});
}

TEST_CASE("grad sums contributions of a variable used several times (tied weights)") {
    Variable x = scalar("x");
    Variable y = x * x * x + sigmoid(x);  // d/dx = 3x^2 + s(1-s)
    Variable g = grad(y, x);
    double xv = 0.7, s = 1 / (1 + std::exp(-xv));
    CHECK(eval1({x}, g, {xv}).item() == doctest::Approx(3 * xv * xv + s * (1 - s)).epsilon(1e-14));
}

TEST_CASE("grad errors name the problem") {
    Variable x = matrix("x");
    Variable w = vector("w");
    CHECK_THROWS_WITH_AS(grad(x * 2.0, x), "grad: the cost must be a scalar, got float64 matrix (take its sum or mean first)",
                         UsageError);
    CHECK_THROWS_WITH_AS(grad(x.sum(), w),
                         "grad: the cost does not depend on wrt 0 ('w', float64 vector); pass disconnected_inputs = ignore "
                         "or warn to get zeros", UsageError);
    Variable z = grad(x.sum(), w, GradOptions{{}, Disconnected::ignore});
    CHECK(eval1({w}, z, {T64({2}, {1, 2})}).to_doubles() == std::vector<double>{0, 0});
    // An integer wrt gets a float gradient (Theano's): d(sum(x) * i)/di = sum(x).
    Variable i = lscalar("i");
    Variable gi = grad(x.sum() * i, i);
    CHECK(gi.dtype() == DType::float64);
    CHECK(eval1({x, i}, gi, {T64({1, 2}, {1.5, 2}), I64({}, {4})}).item() == 3.5);
    try {
        grad(cast(x.argmax(1), DType::float64).sum() + x.sum(), x);
        // argmax is disconnected (zero gradient by definition) so this works; a random op is not.
    } catch (...) {
        FAIL("argmax should be treated as disconnected");
    }
    RandomStreams rs(1);
    Variable mu = scalar("mu");
    Variable draw = rs.normal(std::vector<std::int64_t>{3});
    (void)draw;
    // An op with no gradient on the path to wrt raises, naming the op and input.
    auto nd = apply(std::make_shared<NumpyRandomOp>(NumpyRandomOp::Dist::normal, DType::float64, 1),
                    {shared(RandomState(1).to_blob()), constant(I64({1}, {3})), mu, constant(1.0)});
    try {
        grad(nd[1].sum(), mu);
        FAIL("no error");
    } catch (const UsageError& e) {
        CHECK(std::string(e.what()).find("grad: RandomFunction{normal, float64} has no gradient with respect to its input 2") == 0);
    }
}

TEST_CASE("consider_constant and disconnected_grad stop gradients") {
    Variable x = scalar("x");
    Variable y = x * x;
    Variable g1 = grad(y * x, x, GradOptions{{y}, Disconnected::raise});  // y treated as a constant: d/dx = y
    CHECK(eval1({x}, g1, {3.0}).item() == 9);
    Variable g2 = grad(disconnected_grad(y) * x, x);
    CHECK(eval1({x}, g2, {3.0}).item() == 9);
    CHECK(eval1({x}, grad(y * x, x), {3.0}).item() == 27);
}

TEST_CASE("integers in grad as Theano: float gradients for integer inputs, zeros behind integer outputs") {
    // A gradient with respect to an integer input equals the one with respect to a float input
    // holding the same numbers (dot(X, W) + b through a sigmoid).
    Variable W = matrix("W");
    Variable b = vector("b");
    auto grad_fn = [&](const Variable& X) {
        Variable cost = sigmoid(dot(X, W) + b).sum();
        return function({X, W, b}, {grad(cost, X)});
    };
    Function int_f = grad_fn(input(TensorType{DType::int32, {false, false}}, "X"));
    Function float_f = grad_fn(matrix("X"));
    const Tensor Xi = Tensor::from_vector<std::int32_t>({5, 3}, {3, -120, 44, 7, 0, -1, 90, 12, -33, 5, 5, 5, -7, 100, 64});
    const Tensor Wv = random_tensor({3, 4}, 21, -0.02, 0.02), bv = random_tensor({4}, 22);
    const Tensor gi = int_f({Xi, Wv, bv})[0];
    CHECK(gi.dtype() == DType::float64);
    CHECK(close(gi.to_doubles(), float_f({Xi.astype(DType::float64), Wv, bv})[0].to_doubles(), 1e-15));

    // grad of an integer scalar with respect to itself is 1 (a float).
    Variable k = iscalar("k");
    Variable dk = grad(k, k);
    CHECK(is_float(dk.dtype()));
    CHECK(eval1({k}, dk, {Tensor::from_vector<std::int32_t>({}, {12})}).item() == 1.0);
    // An op with an integer result passes zeros, connected (no disconnected error).
    Variable j = iscalar("j");
    auto gij = grad(k + j, {k, j});
    CHECK(eval1({k, j}, gij[0], {Tensor::from_vector<std::int32_t>({}, {2}), Tensor::from_vector<std::int32_t>({}, {3})})
              .item() == 0.0);
    Variable x = vector("x");
    Variable through_floor = grad(cast(cast(x, DType::int64), DType::float64).sum() + x.sum(), x);
    CHECK(eval1({x}, through_floor, {T64({2}, {0.5, 2.5})}).to_doubles() == std::vector<double>{1, 1});

    // The gradient of a float32 variable stays float32 even where integers join the sum.
    Variable xf = scalar("xf", DType::float32);
    Variable y = xf * 2.0;
    Variable z = lscalar("z");
    Variable c = y + z;
    auto gs = grad(c, {xf, y, z, c});
    CHECK(gs[0].dtype() == DType::float32);
    for (const auto& g : gs) CHECK(is_float(g.dtype()));
}

TEST_CASE("known_grads: a gradient given for an inner variable gives the same gradients as the cost") {
    // cost = (c[t] * x ** arange(10)[t])^2, the gradients at every layer given as known.
    Variable full_range = arange(constant(10.0, DType::int64));
    Variable x = scalar("x");
    Variable t = lscalar("t");
    Variable ft = full_range[{t}];
    Variable coeffs = vector("c");
    Variable ct = coeffs[{t}];
    Variable p = pow(x, ft);
    Variable yv = ct * p;
    Variable cost = sqr(yv);
    const std::vector<Variable> inputs = {coeffs, t, x};
    const std::vector<In> ins = {coeffs, t, x};
    const Tensor cv = random_tensor({10}, 23);
    const std::vector<Arg> values = {cv, I64({}, {3}), T64({}, {0.8})};
    auto outs = [](const std::vector<Variable>& v) { return std::vector<Out>(v.begin(), v.end()); };
    const GradOptions ignore{{}, Disconnected::ignore};
    Function truth = function(ins, outs(grad(cost, inputs, ignore)));
    const auto want = truth(values);
    // By hand: d/dx = 2 y c3 * 3 x^2 with y = c3 x^3; d/dc3 = 2 y x^3; d/dt = 0 (integer index).
    const double c3 = cv.to_doubles()[3], xv = 0.8, yy = c3 * xv * xv * xv;
    CHECK(want[2].item() == doctest::Approx(2 * yy * c3 * 3 * xv * xv).epsilon(1e-14));
    CHECK(want[0].to_doubles()[3] == doctest::Approx(2 * yy * xv * xv * xv).epsilon(1e-14));
    CHECK(want[1].item() == 0.0);

    const std::vector<std::vector<Variable>> layers = {{cost}, {yv}, {ct, p}, {ct, x, ft}, {coeffs, t, full_range, x}};
    for (std::size_t l = 0; l < layers.size(); ++l) {
        CAPTURE(l);
        std::vector<Variable> first = grad(cost, layers[l], ignore);
        GradOptions known = ignore;
        for (std::size_t k = 0; k < layers[l].size(); ++k) known.known_grads.emplace_back(layers[l][k], first[k]);
        Function full = function(ins, outs(grad(Variable(), inputs, known)), {}, {}, [] {
            CompileOptions o;
            o.on_unused_input = CompileOptions::UnusedInput::ignore;
            return o;
        }());
        const auto got = full(values);
        for (std::size_t k = 0; k < 3; ++k) CHECK(close(got[k].to_doubles(), want[k].to_doubles(), 1e-14));
    }

    // An integer variable with a known gradient passes it on as it is.
    Variable i = iscalar("i");
    Variable gexp = scalar("g");
    GradOptions kn;
    kn.known_grads.emplace_back(i, gexp);
    Variable gi = grad(Variable(), i, kn);
    CHECK(eval1({gexp}, gi, {T64({}, {0.6})}).item() == 0.6);
    // A known gradient replaces what the cost sends: cost = 3 y, y = x^2, dcost/dy known as 1.
    Variable xs = scalar("xs");
    Variable ys = sqr(xs);
    GradOptions rep;
    rep.known_grads.emplace_back(ys, constant(1.0));
    CHECK(eval1({xs}, grad(3.0 * ys, xs, rep), {T64({}, {5})}).item() == 10.0);
    // Errors: an integer gradient, a gradient of another rank.
    GradOptions bad;
    bad.known_grads.emplace_back(ys, lscalar("n"));
    CHECK(error_of([&] { grad(Variable(), xs, bad); })
              .find("grad: the known gradient of 'Elemwise{sqr}' (float64 scalar) is int64 scalar; it must be a float") == 0);
    bad.known_grads[0].second = vector("v");
    CHECK(error_of([&] { grad(Variable(), xs, bad); }).find("is float64 vector; it must be a float tensor of the variable's rank") !=
          std::string::npos);
    CHECK(error_of([] { grad(Variable(), scalar("q")); }) ==
          "grad: the cost is an undefined Variable (and no known_grads are given)");
}

TEST_CASE("gradient ops: zero_grad, consider_constant, disconnected_grad, grad_clip, grad_scale; removed when compiled") {
    Variable x = vector("x");
    const Tensor xv = T64({4}, {-2, 0.3, 0.9, 3});
    // d/dx (x * zero_grad(x)) = zero_grad(x) = x; consider_constant is the same.
    CHECK(eval1({x}, grad((x * zero_grad(x)).sum(), x), {xv}).to_doubles() == xv.to_doubles());
    CHECK(eval1({x}, grad((x * consider_constant(x)).sum(), x), {xv}).to_doubles() == xv.to_doubles());
    // Only through zero_grad: zeros, no disconnected error; only through disconnected_grad: the error.
    CHECK(eval1({x}, grad(zero_grad(x).sum(), x), {xv}).to_doubles() == std::vector<double>(4, 0.0));
    CHECK(error_of([&] { grad(disconnected_grad(x).sum(), x); }).find("grad: the cost does not depend on wrt 0 ('x'") == 0);
    // grad_clip: d/dx sum(clip'd(x)^2) = clip(2x, -1, 1).
    CHECK(eval1({x}, grad(sqr(grad_clip(x, -1, 1)).sum(), x), {xv}).to_doubles() ==
          std::vector<double>{-1, 0.6, 1, 1});
    // grad_scale: d/dx sum(scaled(x)^2) = 2x * factor; the forward value is x.
    Variable scaled = grad_scale(x, -0.5);
    CHECK(eval1({x}, grad(sqr(scaled).sum(), x), {xv}).to_doubles() == std::vector<double>{2, -0.3, -0.9, -3});
    CHECK(eval1({x}, scaled, {xv}).to_doubles() == xv.to_doubles());
    // The compiled graph has none of them (local_remove_gradient_ops); without rewrites they are views.
    Variable all = zero_grad(x) + consider_constant(x) + disconnected_grad(x) + grad_clip(x, -1, 1) + grad_scale(x, 2);
    Function f = function({x}, {all});
    for (const auto& n : f.op_names()) {
        CHECK(n.find("Grad") == std::string::npos);
        CHECK(n.find("ConsiderConstant") == std::string::npos);
    }
    CompileOptions raw;
    raw.rewrites.none = true;
    Function g = function({x}, {all}, {}, {}, raw);
    CHECK(g({xv})[0].to_doubles() == std::vector<double>{-10, 1.5, 4.5, 15});
    CHECK(f({xv})[0].to_doubles() == g({xv})[0].to_doubles());
    CHECK(error_of([&] { grad_clip(x, 1, -1); }) == "grad_clip: the lower bound 1 is above the upper bound -1");
}

TEST_CASE("an undefined gradient inside a graph is refused when the function is compiled") {
    Variable a = vector("a");
    auto op = std::make_shared<GradOverride>(GradOverrideKind::zero);
    Variable b = a + not_differentiable(*op, 0, "a test of the check");
    CHECK(error_of([&] { function({a}, {b}); }) ==
          "function: the graph uses an undefined gradient, NotDifferentiable{ZeroGrad, input 0} (a test of the check); a "
          "function cannot compute it");
}

TEST_CASE("gradients are named (dcost/dwrt) when both have names") {
    Variable A = matrix("A");
    Variable x = vector("x");
    Variable f = dot(x, dot(A, x));
    f.set_name("f");
    CHECK(f.name() == "f");
    CHECK(grad(f, x).name() == "(df/dx)");
    CHECK(grad(f, A).name() == "(df/dA)");
    CHECK(debugprint(f).rfind("Dot 'f' [id A]", 0) == 0);
    GradOptions plain;
    plain.add_names = false;
    CHECK(grad(f, x, plain).name().empty());
    CHECK(grad(dot(x, x), x).name().empty());  // an unnamed cost
    CHECK(error_of([&] { x.set_name("y"); }) == "set_name: 'x' is a leaf and keeps the name it was made with");
}

TEST_CASE("Rop: Jacobian-vector products against finite differences and jacobian()") {
    Variable W = matrix("W");
    Variable V = matrix("V");
    Variable xin = vector("xin");
    // f(W) = softmax(tanh(xin . W) * 2)[0:3] reshaped, through dot, elementwise, softmax, subtensor.
    auto f_of = [&](const Variable& w) { return reshape(softmax(tanh(dot(xin, w)) * 2.0), std::vector<std::int64_t>{5}); };
    Variable f = f_of(W);
    Variable jv = Rop(f, W, V);
    Function rop = function({xin, W, V}, {jv});
    Function fwd = function({xin, W}, {f});
    const Tensor xv = random_tensor({3}, 31), Wv = random_tensor({3, 5}, 32), Vv = random_tensor({3, 5}, 33);
    const auto got = rop({xv, Wv, Vv})[0].to_doubles();
    const double eps = 1e-6;
    Tensor wp = Wv.copy(), wm = Wv.copy();
    for (std::int64_t i = 0; i < 15; ++i) {
        wp.data<double>()[i] += eps * Vv.data<double>()[i];
        wm.data<double>()[i] -= eps * Vv.data<double>()[i];
    }
    const auto fp = fwd({xv, wp})[0].to_doubles(), fm = fwd({xv, wm})[0].to_doubles();
    std::vector<double> fd(5);
    for (int i = 0; i < 5; ++i) fd[i] = (fp[i] - fm[i]) / (2 * eps);
    CHECK(close(got, fd, 1e-8));

    // A vector function of a vector: Rop equals jacobian(f, w) . v.
    Variable w = vector("w");
    Variable v = vector("v");
    Variable g = exp(w) * w.sum() + sqr(w);
    Function both = function({w, v}, {Rop(g, w, v), dot(jacobian(g, w, 3), v)});
    const auto r = both({T64({3}, {0.2, -0.4, 1.1}), T64({3}, {1, -2, 0.5})});
    CHECK(close(r[0].to_doubles(), r[1].to_doubles(), 1e-14));

    // Two wrt at once, an output that does not depend on them (zeros), zero_grad (zeros).
    Variable u = vector("u");
    Variable du = vector("du");
    auto two = Rop({w * u, u.sum() * 0.0 + constant(1.0), zero_grad(w) * 2.0}, {w, u}, {v, du});
    Function f2 = function({w, u, v, du}, two);
    const auto o = f2({T64({3}, {1, 2, 3}), T64({3}, {4, 5, 6}), T64({3}, {0.5, 0, -1}), T64({3}, {1, 1, 2})});
    CHECK(o[0].to_doubles() == std::vector<double>{0.5 * 4 + 1 * 1, 0 + 2 * 1, -6 + 3 * 2});
    CHECK(o[1].item() == 0.0);
    CHECK(o[2].to_doubles() == std::vector<double>{0, 0, 0});
    CHECK(error_of([&] { Rop(g, w, W); }) == "Rop: evaluation point 0 is float64 matrix but wrt 0 ('w') is float64 vector");
}

TEST_CASE("a gradient of a gradient: Hessian-vector product against finite differences") {
    Variable w = vector("w");
    Variable v = vector("v");
    Variable cost = sum(exp(w) * w) + sqr(w.sum());
    Variable g = grad(cost, w);
    Variable hv = grad(sum(g * v), w);
    Tensor wv = T64({3}, {0.1, -0.3, 0.5});
    Tensor vv = T64({3}, {1.0, 2.0, -1.0});
    Tensor got = eval1({w, v}, hv, {wv, vv});
    Function gf = function({w}, {g});
    const double eps = 1e-6;
    std::vector<double> want(3);
    Tensor wp = wv.copy(), wm = wv.copy();
    for (int i = 0; i < 3; ++i) {
        wp.data<double>()[i] += eps * vv.at({i});
        wm.data<double>()[i] -= eps * vv.at({i});
    }
    auto gp = gf({wp})[0].to_doubles(), gm = gf({wm})[0].to_doubles();
    for (int i = 0; i < 3; ++i) want[i] = (gp[i] - gm[i]) / (2 * eps);
    CHECK(close(got.to_doubles(), want, 1e-7));
    // And the closed form: H = diag(exp(w)(w+2)) + 2 * ones.
    for (int i = 0; i < 3; ++i) {
        double wi = wv.at({i});
        double hvi = std::exp(wi) * (wi + 2) * vv.at({i}) + 2 * (1.0 + 2.0 - 1.0);
        CHECK(got.at({i}) == doctest::Approx(hvi).epsilon(1e-12));
    }
}

TEST_CASE("jacobian and hessian") {
    Variable x = vector("x");
    Variable J = jacobian(x * x * 2.0, x, 3);
    Tensor xv = T64({3}, {1, 2, 3});
    CHECK(eval1({x}, J, {xv}).to_doubles() == std::vector<double>{4, 0, 0, 0, 8, 0, 0, 0, 12});
    Variable H = hessian(x[{0}] * x[{1}] + sqr(x[{2}]), x, 3);
    CHECK(eval1({x}, H, {xv}).to_doubles() == std::vector<double>{0, 1, 0, 1, 0, 0, 0, 0, 2});
}

TEST_CASE("verify_grad reports the worst element when a gradient is wrong") {
    // A deliberately wrong gradient: an op whose pullback returns twice the true value.
    struct Twice final : public Op {
        std::string name() const override { return "Twice"; }
        std::vector<TensorType> make_types(const std::vector<Variable>& in) const override { return {in[0].type()}; }
        void perform(const Node&, std::span<const Tensor* const> in, std::span<Tensor* const> out) const override {
            out[0]->ensure(in[0]->dtype(), in[0]->shape());
            out[0]->copy_from(*in[0]);
        }
        std::vector<Variable> pullback(const Node&, const std::vector<Variable>& g) const override { return {g[0] * 2.0}; }
        bool props_equal(const Op&) const override { return true; }
        std::size_t props_hash() const override { return 0; }
    };
    try {
        verify_grad([](auto v) { return apply1(std::make_shared<Twice>(), {v[0]}); }, {T64({2}, {1, 2})});
        FAIL("no error");
    } catch (const UsageError& e) {
        CHECK(std::string(e.what()).find("verify_grad: gradient of input 0 disagrees with finite differences at index") == 0);
    }
}

TEST_CASE("pow's gradient is finite at a zero base, as Theano's") {
    // d/dx x^y = y x^(y-1); d/dy x^y = x^y log(x), taken as 0 where x is 0.
    Variable x = vector("x"), y = vector("y");
    Variable c = pow(x, y).sum();
    Function f = function({x, y}, {grad(c, x), grad(c, y)});
    const auto out = f({T64({3}, {0, 0, 2}), T64({3}, {2, 3, 3})});
    CHECK(out[0].to_doubles() == std::vector<double>{0, 0, 12});  // 2*0, 3*0^2, 3*2^2
    const auto gy = out[1].to_doubles();
    CHECK(gy[0] == 0);
    CHECK(gy[1] == 0);
    CHECK(gy[2] == doctest::Approx(8 * std::log(2.0)).epsilon(1e-15));
}
