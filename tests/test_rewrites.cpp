// Rewrites: each pass shown before and after, with equal results with and without it.
#include <doctest/doctest.h>

#include <algorithm>
#include <cmath>

#include "ops/composite.hpp"
#include "support/helpers.hpp"

using namespace theanine;
using namespace theanine::testing;

namespace {
CompileOptions no_rewrites() {
    CompileOptions o;
    o.rewrites.none = true;
    return o;
}
CompileOptions excluding(std::vector<std::string> names) {
    CompileOptions o;
    o.rewrites.excluding = std::move(names);
    return o;
}
std::size_t count_op(const Function& f, const std::string& name) {
    auto n = f.op_names();
    return static_cast<std::size_t>(std::count(n.begin(), n.end(), name));
}
}  // namespace

TEST_CASE("the registry lists every rewrite with its phase") {
    auto names = RewriteRegistry::global().list();
    auto has = [&](const std::string& s) {
        return std::any_of(names.begin(), names.end(), [&](const std::string& n) { return n.rfind(s, 0) == 0; });
    };
    for (auto n : {"merge [graph pass", "constant_fold [graph pass", "local_mul_by_one [canonicalize", "local_add_zero [canonicalize",
                   "local_double_neg [canonicalize", "local_neg_of_sub [canonicalize", "local_log_sigmoid [stabilize",
                   "local_log_one_minus_sigmoid [stabilize", "local_log1p [stabilize"}) {
        CAPTURE(n);
        CHECK(has(n));
    }
    CHECK(RewriteRegistry::global().known("stabilize"));
    CHECK_FALSE(RewriteRegistry::global().known("no_such_rewrite"));
}

TEST_CASE("merge: common subexpressions are computed once") {
    Variable x = matrix("x"), y = matrix("y");
    Variable out = exp(x * y) + exp(x * y);
    // (local_collect_terms would go on to make 2 * exp(x * y).)
    Function on = function({x, y}, {out}, {}, {}, excluding({"fusion", "local_collect_terms"}));
    Function off = function({x, y}, {out}, {}, {}, no_rewrites());
    CHECK(off.n_steps() == 5);
    CHECK(on.n_steps() == 3);
    CHECK(on.debugprint(false) ==
          "Elemwise{add} [id A]\n"
          " |Elemwise{exp} [id B]\n"
          " | |Elemwise{mul} [id C]\n"
          " |   |x [id D]\n"
          " |   |y [id E]\n"
          " |Elemwise{exp} [id B]\n");
    Tensor a = random_tensor({3, 2}, 1), b = random_tensor({3, 2}, 2);
    CHECK(on({a, b})[0].to_doubles() == off({a, b})[0].to_doubles());
}

TEST_CASE("constant_fold: constant subgraphs are evaluated at compile time") {
    Variable x = vector("x");
    Variable k = constant(2.0) * constant(3.0);
    Function f = function({x}, {x * k});
    CHECK(f.n_steps() == 1);
    CHECK(f.debugprint(false) == "Elemwise{mul} [id A]\n |x [id B]\n |TensorConstant{6} [id C]\n");
    CHECK(f({T64({2}, {1, 2})})[0].to_doubles() == std::vector<double>{6, 12});
    Function g = function({x}, {x * k}, {}, {}, excluding({"constant_fold"}));
    CHECK(g.n_steps() == 3);
    CHECK(g({T64({2}, {1, 2})})[0].to_doubles() == std::vector<double>{6, 12});
}

TEST_CASE("canonicalize: x*1, x+0, -(-x), -(a-b)") {
    Variable x = vector("x"), y = vector("y");
    Tensor a = T64({3}, {1, -2, 3}), b = T64({3}, {0.5, 4, -1});
    struct Case {
        const char* name;
        Variable expr;
        const char* after;
    };
    std::vector<Case> cases = {
        {"local_mul_by_one", x * 1.0 + y, "Elemwise{add} [id A]\n |x [id B]\n |y [id C]\n"},
        {"local_add_zero", (0.0 + x) * y, "Elemwise{mul} [id A]\n |x [id B]\n |y [id C]\n"},
        {"local_double_neg", -(-x) * y, "Elemwise{mul} [id A]\n |x [id B]\n |y [id C]\n"},
        {"local_neg_of_sub", -(x - y), "Elemwise{sub} [id A]\n |y [id B]\n |x [id C]\n"},
    };
    for (auto& c : cases) {
        CAPTURE(c.name);
        Function on = function({x, y}, {c.expr}, {}, {}, excluding({"fusion"}));
        // local_collect_terms also removes x + 0; left out to see each rule alone.
        Function off = function({x, y}, {c.expr}, {}, {}, excluding({c.name, "fusion", "local_collect_terms"}));
        CHECK(on.debugprint(false) == c.after);
        CHECK(off.debugprint(false) != c.after);
        CHECK(on({a, b})[0].to_doubles() == off({a, b})[0].to_doubles());
        bool logged = false;
        for (const auto& line : on.rewrite_log()) logged = logged || line.find("rewrite " + std::string(c.name)) == 0;
        CHECK(logged);
    }
}

TEST_CASE("stabilize: log(sigmoid(x)), log(1 - sigmoid(x)) and log(1 + x)") {
    Variable x = vector("x", DType::float32);
    Tensor big = Tensor::from_vector<float>({4}, {-200, -20, 20, 200});
    {
        Variable e = log(sigmoid(x));
        Function on = function({x}, {e}, {}, {}, excluding({"fusion"}));
        Function off = function({x}, {e}, {}, {}, no_rewrites());
        CHECK(on.debugprint(false) ==
              "Elemwise{neg} [id A]\n |Elemwise{softplus} [id B]\n   |Elemwise{neg} [id C]\n     |x [id D]\n");
        auto good = on({big})[0].to_doubles();
        auto bad = off({big})[0].to_doubles();
        CHECK(std::isinf(bad[0]));  // sigmoid(-200) is exactly 0 in float32
        CHECK(good[0] == -200);
        CHECK(good[1] == doctest::Approx(-20.0).epsilon(1e-6));
        CHECK(good[3] == 0);
        CHECK(on({big})[0].to_doubles()[2] == doctest::Approx(off({big})[0].to_doubles()[2]).epsilon(1e-6));
    }
    {
        Variable e = log(1 - sigmoid(x));
        Function on = function({x}, {e}, {}, {}, excluding({"fusion"}));
        Function off = function({x}, {e}, {}, {}, no_rewrites());
        CHECK(on.debugprint(false) == "Elemwise{neg} [id A]\n |Elemwise{softplus} [id B]\n   |x [id C]\n");
        CHECK(std::isinf(off({big})[0].to_doubles()[3]));
        CHECK(on({big})[0].to_doubles()[3] == -200);
        CHECK(on({big})[0].to_doubles()[0] == doctest::Approx(off({big})[0].to_doubles()[0]));
    }
    {
        Variable d = vector("d");
        Function on = function({d}, {log(1 + d)}, {}, {}, excluding({"fusion"}));
        Function off = function({d}, {log(1 + d)}, {}, {}, excluding({"stabilize", "fusion"}));
        CHECK(on.debugprint(false) == "Elemwise{log1p} [id A]\n |d [id B]\n");
        Tensor tiny = T64({2}, {1e-18, 0.5});
        CHECK(on({tiny})[0].to_doubles()[0] == 1e-18);
        CHECK(off({tiny})[0].to_doubles()[0] == 0);
        CHECK(on({tiny})[0].to_doubles()[1] == doctest::Approx(off({tiny})[0].to_doubles()[1]).epsilon(1e-15));
    }
}

TEST_CASE("the dA's cross-entropy stays finite when z saturates in float32") {
    Variable x = fmatrix("x");
    Variable a = fmatrix("a");  // decoder pre-activation
    Variable z = sigmoid(a);
    Variable cost = mean(-sum(x * log(z) + (1 - x) * log(1 - z), 1));
    Tensor xv = Tensor::from_vector<float>({1, 3}, {1, 0, 1});
    Tensor av = Tensor::from_vector<float>({1, 3}, {120, -120, -120});  // z = 1, 0, 0 exactly
    Function on = function({x, a}, {cost});
    Function off = function({x, a}, {cost}, {}, {}, no_rewrites());
    CHECK(std::isnan(off({xv, av})[0].item()));  // 0 * log(0) = nan without the rewrite
    CHECK(on({xv, av})[0].item() == doctest::Approx(120.0).epsilon(1e-6));
}

TEST_CASE("verbose compilation says which rewrite replaced what") {
    Variable x = vector("x");
    CompileOptions o;
    o.verbose = false;
    Function f = function({x}, {log(1 + x)}, {}, {}, o);
    REQUIRE_FALSE(f.rewrite_log().empty());
    CHECK(std::any_of(f.rewrite_log().begin(), f.rewrite_log().end(), [](const std::string& l) {
        return l == "rewrite local_log1p replaced Elemwise{log} by Elemwise{log1p}";
    }));
}

TEST_CASE("fusion: an elementwise chain becomes one Composite loop") {
    Variable x = matrix("x"), b = vector("b"), t = matrix("t");
    Variable z = sigmoid(x + b);
    Variable ce = -(t * log(z) + (1 - t) * log(1 - z));
    Function on = function({x, b, t}, {ce});
    Function off = function({x, b, t}, {ce}, {}, {}, excluding({"fusion"}));
    // One loop, plus the bias's DimShuffle (a view, no work).
    auto names = on.op_names();
    CHECK(names.size() == 2);
    CHECK(std::count_if(names.begin(), names.end(), [](const std::string& n) { return n.rfind("Composite{", 0) == 0; }) == 1);
    CHECK(std::count(names.begin(), names.end(), "DimShuffle{x,0}") == 1);
    CHECK(off.n_steps() > 5);
    Tensor xv = random_tensor({30, 700}, 1, -5, 5), bv = random_tensor({700}, 2), tv = random_tensor({30, 700}, 3, 0, 1);
    CHECK(close(on({xv, bv, tv})[0].to_doubles(), off({xv, bv, tv})[0].to_doubles(), 1e-12));
    // A value used twice outside the chain is not fused into it (it would be computed twice);
    // alone, a transcendental op still runs as a (vectorised) one-instruction loop.
    Variable e = exp(x);
    Function two = function({x}, {e + 1.0, e * 2.0});
    CHECK(count_op(two, "Composite{exp(i0)}") == 1);
    CHECK(two.n_steps() == 3);
    // Mixed dtypes: a comparison, a cast and a multiply (the corruption mask) fuse.
    Variable u = fmatrix("u"), xf = fmatrix("xf");
    Function mask = function({u, xf}, {cast(lt(u, 0.7), DType::float32) * xf});
    CHECK(mask.n_steps() == 1);
    Tensor uv = Tensor::from_vector<float>({1, 3}, {0.5f, 0.9f, 0.7f}), xfv = Tensor::from_vector<float>({1, 3}, {2, 3, 4});
    CHECK(mask({uv, xfv})[0].to_doubles() == std::vector<double>{2, 0, 0});
}

TEST_CASE("specialize: transposes move into products and updates accumulate with Gemm") {
    Variable a = matrix("a"), b = matrix("b");
    Function t = function({a, b}, {dot(a, b).T()}, {}, {}, excluding({"fusion"}));
    CHECK(t.debugprint(false) == "Dot22{T,T} [id A]\n |b [id B]\n |a [id C]\n");
    Tensor av = random_tensor({3, 4}, 1), bv = random_tensor({4, 5}, 2);
    Function t0 = function({a, b}, {dot(a, b).T()}, {}, {}, no_rewrites());
    CHECK(close(t({av, bv})[0].to_doubles(), t0({av, bv})[0].to_doubles(), 1e-14));

    SharedVariable W = shared(random_tensor({4, 5}, 3), "W");
    Variable x = matrix("x"), g = matrix("g");
    Variable upd = W - 0.1 * (dot(x.T(), g) + dot(x.T(), g * 2.0));
    Function train = function({x, g}, {}, {{W, upd}});
    std::string graph = train.debugprint(false);
    CHECK(graph.find("Gemm{T,N}") != std::string::npos);
    CHECK(graph.find("Dot") == std::string::npos);  // no separate product or sum of products
    Tensor W0 = W.get_value();
    Tensor xv = random_tensor({6, 4}, 4), gv = random_tensor({6, 5}, 5);
    train({xv, gv});
    // W - 0.1 * 3 x^T g, by hand.
    auto w0 = W0.to_doubles(), w1 = W.get_value().to_doubles();
    double worst = 0;
    for (int i = 0; i < 4; ++i) {
        for (int j = 0; j < 5; ++j) {
            double s = 0;
            for (int r = 0; r < 6; ++r) s += xv.at({r, i}) * gv.at({r, j});
            worst = std::max(worst, std::abs(w1[i * 5 + j] - (w0[i * 5 + j] - 0.3 * s)));
        }
    }
    CHECK(worst < 1e-14);
}

TEST_CASE("in-place: a Gemm update writes into the shared variable's own buffer") {
    SharedVariable W = shared(random_tensor({64, 32}, 3), "W");
    Variable x = matrix("x"), g = matrix("g");
    Variable h = dot(x, W);  // W is read before it is overwritten
    Function train = function({x, g}, {h.sum()}, {{W, W - 0.1 * dot(x.T(), g)}});
    const void* before = W.get_value(true).raw_data();
    Tensor xv = random_tensor({8, 64}, 4), gv = random_tensor({8, 32}, 5);
    Tensor W0 = W.get_value();
    double s = train.scalar({xv, gv});
    CHECK(W.get_value(true).raw_data() == before);
    // The output used the old W: sum(x W0).
    double want = 0;
    for (int r = 0; r < 8; ++r) {
        for (int j = 0; j < 32; ++j) {
            for (int k = 0; k < 64; ++k) want += xv.at({r, k}) * W0.at({k, j});
        }
    }
    CHECK(s == doctest::Approx(want).epsilon(1e-12));
    // Without the in-place grant (W also returned), the buffer changes hands instead.
    Function keep = function({x, g}, {W * 1.0, h.sum()}, {{W, W - 0.1 * dot(x.T(), g)}});
    Tensor before2 = W.get_value();
    auto out = keep({xv, gv});
    CHECK(out[0].to_doubles() == before2.to_doubles());
}

TEST_CASE("one and two threads give the same training step") {
    auto run = [](int threads) {
        set_num_threads(threads);
        RandomState rs(3);
        SharedVariable W = shared(rs.uniform(-0.1, 0.1, {300, 200}), "W");
        SharedVariable data = shared(rs.uniform(0, 1, {40, 300}), "data");
        Variable x = matrix("x");
        Variable y = sigmoid(dot(x, W));
        Variable z = sigmoid(dot(y, W.T()));
        Variable cost = mean(-sum(x * log(z) + (1 - x) * log(1 - z), 1));
        Variable gW = grad(cost, W);
        Variable index = lscalar("i");
        Function f = function({index}, {cost}, {{W, W - 0.1 * gW}}, {{x, subtensor(data, {slice(index * 20, (index + 1) * 20)})}});
        double c = 0;
        for (int i = 0; i < 4; ++i) c += f.scalar({i % 2});
        set_num_threads(0);
        return std::make_pair(c, W.get_value().to_doubles());
    };
    auto [c1, w1] = run(1);
    auto [c2, w2] = run(2);
    CHECK(c1 == doctest::Approx(c2).epsilon(1e-12));
    CHECK(close(w1, w2, 1e-12));
}

TEST_CASE("fusion: softplus(a) and softplus(-a) in one loop share log1p(exp(-|a|))") {
    using K = Composite::Instr::Kind;
    // Program: r1 = neg(i0), r2 = softplus(r1), r3 = softplus(i0), r4 = add(r2, r3).
    std::vector<Composite::Instr> prog = {
        {K::scalar, ScalarOp::neg, {0}}, {K::scalar, ScalarOp::softplus, {1}},
        {K::scalar, ScalarOp::softplus, {0}}, {K::scalar, ScalarOp::add, {2, 3}}};
    for (DType dt : {DType::float64, DType::float32}) {
        Composite c(1, prog, dt, TensorType{dt, {false}}, "test");
        auto tails = std::count_if(c.program().begin(), c.program().end(),
                                   [](const Composite::Instr& i) { return i.kind == K::softplus_tail; });
        CHECK(tails == 1);
        Variable a = vector("a", dt);
        Variable out = apply1(std::make_shared<Composite>(c), {a});
        Function f = function({a}, {out}, {}, {}, no_rewrites());
        std::vector<double> grid;
        for (double v = -60; v <= 60; v += 0.37) grid.push_back(v);
        grid.push_back(0);
        grid.push_back(1e-9);
        Tensor av = Tensor::from_vector<double>({static_cast<std::int64_t>(grid.size())}, grid).astype(dt);
        auto got = f({av})[0].to_doubles();
        auto in = av.to_doubles();
        // softplus(-a) + softplus(a) in long double, with Theano's softplus: x itself above 16
        // (float32: 14), log1p(exp(x)) elsewhere (the low cut-off, -745, is out of range).
        const double ulp = dt == DType::float32 ? 0x1p-23 : 0x1p-52;
        const long double hi = dt == DType::float32 ? 14 : 16;
        auto softplus_ld = [&](long double x) { return x > hi ? x : std::log1p(std::exp(x)); };
        double worst = 0;
        for (std::size_t i = 0; i < got.size(); ++i) {
            long double v = in[i];
            long double want = softplus_ld(v) + softplus_ld(-v);
            worst = std::max(worst, static_cast<double>(std::fabs((got[i] - want) / want)));
        }
        CHECK(worst < 4 * ulp);
    }
}

TEST_CASE("fusion: sums run inside the loop, beside the elementwise result when it has other users") {
    Variable x = matrix("x"), y = matrix("y"), b = vector("b");
    Variable e = sigmoid(x + b) * y;
    Variable rows = sum(e, 1), cols = sum(e, 0);
    Function on = function({x, y, b}, {rows, cols, dot(e, y.T())});
    Function off = function({x, y, b}, {rows, cols, dot(e, y.T())}, {}, {}, excluding({"fusion"}));
    // One loop makes e and both its sums; no Sum op is left.
    std::string ops;
    for (const auto& n : on.op_names()) ops += n + ";";
    CHECK(ops.find("Sum{") == std::string::npos);
    CHECK(ops.find("Composite{mul(sigmoid(add(i0, i1)), i2), sum[1], sum[0]}") != std::string::npos);
    for (auto [r, c] : {std::pair{20, 784}, std::pair{300, 7}, std::pair{3, 2000}}) {
        Tensor xv = random_tensor({r, c}, 1, -4, 4), yv = random_tensor({r, c}, 2), bv = random_tensor({c}, 3);
        auto a = on({xv, yv, bv}), z = off({xv, yv, bv});
        for (int k = 0; k < 3; ++k) CHECK(close(a[k].to_doubles(), z[k].to_doubles(), 1e-12));
        // The first row's sum by hand.
        double s00 = 0;
        for (int j = 0; j < c; ++j) {
            double bj = bv.at({j}), xj = xv.at({0, j});
            s00 += yv.at({0, j}) / (1 + std::exp(-(xj + bj)));
        }
        CHECK(a[0].to_doubles()[0] == doctest::Approx(s00).epsilon(1e-12));
    }
    // The same results with one and two threads (rows or columns split).
    Tensor xv = random_tensor({20, 784}, 4, -4, 4), yv = random_tensor({20, 784}, 5), bv = random_tensor({784}, 6);
    set_num_threads(1);
    auto one = on({xv, yv, bv});
    set_num_threads(2);
    auto two = on({xv, yv, bv});
    set_num_threads(0);
    for (int k = 0; k < 2; ++k) CHECK(close(one[k].to_doubles(), two[k].to_doubles(), 1e-13));
}

TEST_CASE("fusion: loops over feature maps with short rows, a bias per channel and sums over maps") {
    // A short last axis is looped together with the one before it when every operand allows
    // (x and y contiguous, b broadcast over both); a transposed map, a sum over the last axis
    // alone and a kept axis between summed ones do not allow it. Each must give the unfused
    // results.
    Variable x = tensor4("x"), y = tensor4("y"), b = vector("b");
    const Variable bc = dimshuffle(b, {-1, 0, -1, -1});
    for (bool transposed : {false, true}) {
        const Variable xm = transposed ? dimshuffle(x, {0, 1, 3, 2}) : x;
        const Variable e = tanh(xm + bc) * y;
        const Variable per_channel = sum_axes(e, {0, 2, 3});
        const std::vector<std::vector<Variable>> output_sets{{e, per_channel, sum_axes(e, {2, 3})},
                                                             {e, per_channel, sum(e, 3)},
                                                             {e, per_channel, sum_axes(e, {1, 3})}};
        for (const std::vector<Variable>& outs : output_sets) {
            CompileOptions opt;
            opt.on_unused_input = CompileOptions::UnusedInput::ignore;
            Function on = function({x, y, b}, outs, {}, {}, opt);
            CompileOptions off_opt = excluding({"fusion"});
            off_opt.on_unused_input = CompileOptions::UnusedInput::ignore;
            Function off = function({x, y, b}, outs, {}, {}, off_opt);
            for (const Shape& s : {Shape{5, 3, 6, 6}, Shape{40, 4, 12, 12}, Shape{2, 3, 1, 7}}) {
                CAPTURE(transposed);
                CAPTURE(shape_string(s));
                const Tensor xv = random_tensor(transposed ? Shape{s[0], s[1], s[3], s[2]} : s, 11, -2, 2);
                const Tensor yv = random_tensor(s, 12), bv = random_tensor({s[1]}, 13);
                auto a = on({xv, yv, bv}), z = off({xv, yv, bv});
                for (std::size_t k = 0; k < outs.size(); ++k) {
                    CAPTURE(k);
                    REQUIRE(a[k].shape() == z[k].shape());
                    CHECK(close(a[k].to_doubles(), z[k].to_doubles(), 1e-12));
                }
                // One element and channel 1's sum over the maps by hand.
                const std::int64_t i = s[0] - 1, c = 1, r = s[2] - 1, q = s[3] - 1;
                const double x_iqr = transposed ? xv.at({i, c, q, r}) : xv.at({i, c, r, q});
                CHECK(a[0].at({i, c, r, q}) == doctest::Approx(std::tanh(x_iqr + bv.at({c})) * yv.at({i, c, r, q})));
                double s1 = 0;
                for (std::int64_t n = 0; n < s[0]; ++n) {
                    for (std::int64_t u = 0; u < s[2]; ++u) {
                        for (std::int64_t v = 0; v < s[3]; ++v) {
                            const double xe = transposed ? xv.at({n, c, v, u}) : xv.at({n, c, u, v});
                            s1 += std::tanh(xe + bv.at({c})) * yv.at({n, c, u, v});
                        }
                    }
                }
                CHECK(a[1].at({c}) == doctest::Approx(s1).epsilon(1e-12));
            }
        }
    }
}

TEST_CASE("fusion: a cheap value read by two loops is recomputed in each, not stored") {
    Variable x = matrix("x"), b = vector("b"), t = matrix("t");
    Variable a = x + b;  // read by the cost's loop and the gradient's loop
    Variable cost = sum(t * softplus(-a) + (1 - t) * softplus(a));
    Variable g = grad(cost, x);
    Function on = function({x, b, t}, {cost, g});
    Function off = function({x, b, t}, {cost, g}, {}, {}, excluding({"fusion"}));
    CHECK(count_op(on, "Elemwise{add}") == 0);
    CHECK(count_op(on, "Elemwise{sub}") == 0);
    auto names = on.op_names();
    CHECK(std::count_if(names.begin(), names.end(), [](const std::string& n) { return n.rfind("Composite{", 0) == 0; }) == 2);
    Tensor xv = random_tensor({20, 50}, 1, -3, 3), bv = random_tensor({50}, 2), tv = random_tensor({20, 50}, 3, 0, 1);
    auto p = on({xv, bv, tv}), q = off({xv, bv, tv});
    CHECK(p[0].item() == doctest::Approx(q[0].item()).epsilon(1e-12));
    CHECK(close(p[1].to_doubles(), q[1].to_doubles(), 1e-12));
}

TEST_CASE("canonicalize: second(x, y) takes x's shape from an input of the same type") {
    Variable x = matrix("x"), y = matrix("y");
    Variable s = second(exp(x) * 2.0, y);
    Function on = function({x, y}, {s}, {}, {}, excluding({"fusion"}));
    Function off = function({x, y}, {s}, {}, {}, excluding({"local_fill_shape_source", "fusion"}));
    CHECK(on.debugprint(false) == "Elemwise{second} [id A]\n |x [id B]\n |y [id C]\n");
    CHECK(off.debugprint(false).find("Elemwise{exp}") != std::string::npos);
    Tensor xv = random_tensor({3, 4}, 1), yv = random_tensor({3, 4}, 2);
    CHECK(on({xv, yv})[0].to_doubles() == off({xv, yv})[0].to_doubles());
    CHECK(on({xv, yv})[0].to_doubles() == yv.to_doubles());
}

TEST_CASE("specialize: two Gemm updates with one factor become one Gemm over joined operands") {
    SharedVariable W = shared(random_tensor({7, 5}, 3), "W");
    Variable x = matrix("x"), g = matrix("g"), d = matrix("d"), y = matrix("y");
    Variable upd = W - 0.1 * (dot(x.T(), g) + dot(d.T(), y));
    Function on = function({x, g, d, y}, {}, {{W, upd}});
    Function off = function({x, g, d, y}, {}, {{W, upd}}, {}, excluding({"local_gemm_merge"}));
    CHECK(count_op(on, "Gemm{T,N}") == 1);
    CHECK(count_op(on, "Join{axis=0}") == 2);
    CHECK(count_op(off, "Gemm{T,N}") == 2);
    CHECK(on.debugprint(false) == "update W:\n"
                                  "Gemm{T,N} [id A]\n"
                                  " |W [id B]\n"
                                  " |TensorConstant{-0.1} [id C]\n"
                                  " |Join{axis=0} [id D]\n"
                                  " | |x [id E]\n"
                                  " | |d [id F]\n"
                                  " |Join{axis=0} [id G]\n"
                                  " | |g [id H]\n"
                                  " | |y [id I]\n"
                                  " |TensorConstant{1} [id J]\n");
    Tensor W0 = W.get_value();
    Tensor xv = random_tensor({4, 7}, 4), gv = random_tensor({4, 5}, 5), dv = random_tensor({3, 7}, 6), yv = random_tensor({3, 5}, 7);
    on({xv, gv, dv, yv});
    Tensor w_on = W.get_value();
    W.set_value(W0);
    off({xv, gv, dv, yv});
    CHECK(close(w_on.to_doubles(), W.get_value().to_doubles(), 1e-14));
    // By hand: W0 - 0.1 (x^T g + d^T y).
    double want = W0.at({2, 3});
    for (int r = 0; r < 4; ++r) want -= 0.1 * xv.at({r, 2}) * gv.at({r, 3});
    for (int r = 0; r < 3; ++r) want -= 0.1 * dv.at({r, 2}) * yv.at({r, 3});
    CHECK(w_on.at({2, 3}) == doctest::Approx(want).epsilon(1e-14));
}

TEST_CASE("specialize: an L2 weight decay is the update product's beta, not a pass over W") {
    SharedVariable W = shared(random_tensor({7, 5}, 3), "W");
    Variable x = matrix("x"), dh = matrix("dh");
    // The mlp's update of a weight with an L2 term: the gradient of 0.01 * sum(W^2) is 0.02 W.
    Variable cost = sum(dot(x, W) * dh) + 0.01 * sqr(W).sum();
    Variable g = grad(cost, Variable(W));
    Function on = function({x, dh}, {}, {{W, W - 0.1 * g}});
    Function off = function({x, dh}, {}, {{W, W - 0.1 * g}}, {}, excluding({"local_gemm_beta"}));
    CHECK(on.debugprint(false) == "update W:\n"
                                  "Gemm{T,N} [id A]\n"
                                  " |W [id B]\n"
                                  " |TensorConstant{-0.1} [id C]\n"
                                  " |x [id D]\n"
                                  " |dh [id E]\n"
                                  " |TensorConstant{0.998} [id F]\n");
    CHECK(count_op(off, "Elemwise{mul}") == 1);  // W * 0.998, a separate pass
    Tensor W0 = W.get_value();
    Tensor xv = random_tensor({4, 7}, 4), dv = random_tensor({4, 5}, 5);
    on({xv, dv});
    Tensor w_on = W.get_value();
    W.set_value(W0);
    off({xv, dv});
    CHECK(close(w_on.to_doubles(), W.get_value().to_doubles(), 1e-14));
    // By hand: W0 (1 - 0.1 * 0.02) - 0.1 x^T dh.
    double want = W0.at({2, 3}) * (1 - 0.1 * 0.02);
    for (int r = 0; r < 4; ++r) want -= 0.1 * xv.at({r, 2}) * dv.at({r, 3});
    CHECK(w_on.at({2, 3}) == doctest::Approx(want).epsilon(1e-14));
    // A tensor factor (not a scalar) stays a separate product.
    Variable s = matrix("s");
    Function tensor_factor = function({x, dh, s}, {}, {{W, W * s - 0.1 * dot(x.T(), dh)}});
    CHECK(count_op(tensor_factor, "Elemwise{mul}") + count_op(tensor_factor, "Composite{mul(i0, i1)}") == 1);
}

TEST_CASE("canonicalize: the first or last row of an added length-1 axis is the tensor itself") {
    // A one-step loop's result is stacked as y.dimshuffle('x', 0, 1) and read as [0] or [-1]
    // (scan_single_step); the product of that row with W is then the product of y with W.
    Variable y = matrix("y"), W = matrix("W");
    Tensor a = testing::random_tensor({3, 4}, 1), w = testing::random_tensor({4, 5}, 2);
    Variable stacked = y.dimshuffle({-1, 0, 1});
    for (long i : {0L, -1L}) {
        CAPTURE(i);
        Variable e = dot(stacked[{i}], W) * dot(y, W);
        Function on = function({y, W}, {e}, {}, {}, excluding({"fusion"}));
        Function off = function({y, W}, {e}, {}, {}, excluding({"fusion", "local_subtensor_of_new_axis"}));
        CHECK(count_op(on, "Dot22{N,N}") == 1);
        CHECK(count_op(off, "Dot22{N,N}") == 2);
        CHECK(count_op(on, "Subtensor{" + std::to_string(i) + "}") == 0);
        CHECK(on({a, w})[0].to_doubles() == off({a, w})[0].to_doubles());
    }
    // Full slices around the index keep the other axes: y.dimshuffle(0, 'x', 1)[:, -1] is y.
    Function mid = function({y}, {y.dimshuffle({0, -1, 1})[{slice(std::nullopt, std::nullopt, std::nullopt), -1L}] * 2.0}, {}, {}, excluding({"fusion"}));
    CHECK(count_op(mid, "Subtensor{:, -1}") == 0);
    std::vector<double> twice = a.to_doubles();
    for (double& v : twice) v *= 2;
    CHECK(mid({a})[0].to_doubles() == twice);
    // An added axis that stays (two were added, one is indexed) keeps a DimShuffle.
    Variable two = y.dimshuffle({-1, 0, -1, 1})[{0L}];
    Function keep = function({y}, {two}, {}, {}, excluding({"fusion"}));
    CHECK(count_op(keep, "Subtensor{0}") == 0);
    CHECK(keep({a})[0].shape() == Shape{3, 1, 4});
    CHECK(keep({a})[0].to_doubles() == a.to_doubles());
    // Index 1 of a length-1 axis is out of range: left for the Subtensor to refuse.
    Function bad = function({y}, {stacked[{1L}]}, {}, {}, excluding({"fusion"}));
    CHECK(count_op(bad, "Subtensor{1}") == 1);
    CHECK_THROWS_WITH_AS(bad({a}), doctest::Contains("index 1"), UsageError);
    // An index on one of y's own axes is not this rewrite's.
    Function own = function({y}, {stacked[{slice(std::nullopt, std::nullopt, std::nullopt), 2L}]}, {}, {}, excluding({"fusion"}));
    CHECK(own({a})[0].to_doubles() == std::vector<double>{a.to_doubles()[8], a.to_doubles()[9], a.to_doubles()[10], a.to_doubles()[11]});
}

TEST_CASE("canonicalize: a factor in a product's numerator and denominator cancels") {
    Variable a = matrix("a"), s = matrix("s"), b = matrix("b");
    Variable e = (a * s) / (s * b);
    Function on = function({a, s, b}, {e}, {}, {}, excluding({"fusion"}));
    Function off = function({a, s, b}, {e}, {}, {}, excluding({"local_mul_div_cancel", "fusion"}));
    CHECK(on.debugprint(false) == "Elemwise{true_div} [id A]\n |a [id B]\n |b [id C]\n");
    Tensor av = random_tensor({2, 3}, 1), sv = random_tensor({2, 3}, 2, 0.5, 2), bv = random_tensor({2, 3}, 3, 0.5, 2);
    CHECK(close(on({av, sv, bv})[0].to_doubles(), off({av, sv, bv})[0].to_doubles(), 1e-15));
    // Where s is 0 the product is NaN without the rewrite, a / b with it.
    Tensor zero = Tensor::full(DType::float64, {2, 3}, 0.0);
    CHECK(std::isnan(off({av, zero, bv})[0].to_doubles()[0]));
    CHECK(on({av, zero, bv})[0].to_doubles()[0] == av.to_doubles()[0] / bv.to_doubles()[0]);
}

TEST_CASE("canonicalize: the cross-entropy's gradient through the sigmoid becomes division-free") {
    Variable x = fmatrix("x"), a = fmatrix("a");
    Variable z = sigmoid(a);
    Variable cost = mean(-sum(x * log(z) + (1 - x) * log(1 - z), 1));
    Variable g = grad(cost, a);
    Function on = function({x, a}, {g});
    Function off = function({x, a}, {g}, {}, {}, excluding({"local_distribute_for_cancel"}));
    std::string graph = on.debugprint(false);
    CHECK(graph.find("true_div(mul") == std::string::npos);  // no division by z or 1 - z left
    CHECK(off.debugprint(false).find("true_div") != std::string::npos);
    // z saturates to exactly 1 and 0 in float32: the gradient stays (z - x) / n.
    Tensor xv = Tensor::from_vector<float>({2, 3}, {1, 0, 1, 0, 1, 0.5f});
    Tensor av = Tensor::from_vector<float>({2, 3}, {120, -120, -120, 120, 0.5f, 3});
    auto got = on({xv, av})[0].to_doubles();
    auto bad = off({xv, av})[0].to_doubles();
    CHECK(std::any_of(bad.begin(), bad.end(), [](double v) { return !std::isfinite(v); }));
    auto xs = xv.to_doubles(), as = av.to_doubles();
    for (std::size_t i = 0; i < got.size(); ++i) {
        const double want = (1 / (1 + std::exp(-as[i])) - xs[i]) / 2;
        CHECK(got[i] == doctest::Approx(want).epsilon(1e-6));
    }
}

TEST_CASE("canonicalize: a fill inside an elementwise op whose other input has the shape is dropped") {
    Variable x = matrix("x"), z = matrix("z");
    Variable e = second(x, 1.0) * z;
    Function on = function({x, z}, {e}, {}, {}, excluding({"fusion"}));
    Function off = function({x, z}, {e}, {}, {}, excluding({"local_fill_sink", "fusion"}));
    CHECK(on.debugprint(false) == "z [id A]\n");
    CHECK(off.debugprint(false).find("Elemwise{second}") != std::string::npos);
    Tensor xv = random_tensor({2, 3}, 1), zv = random_tensor({2, 3}, 2);
    CHECK(on({xv, zv})[0].to_doubles() == off({xv, zv})[0].to_doubles());
}

TEST_CASE("canonicalize: a sum of products is expanded, collected and factored when terms cancel") {
    Variable g = matrix("g"), s = matrix("s"), x = matrix("x");
    Variable e = g * (1 - x) * s - g * x * (1 - s);  // = g (s - x)
    Function on = function({g, s, x}, {e}, {}, {}, excluding({"fusion"}));
    Function off = function({g, s, x}, {e}, {}, {}, excluding({"local_collect_terms", "fusion"}));
    CHECK(on.debugprint(false) == "Elemwise{mul} [id A]\n |g [id B]\n |Elemwise{sub} [id C]\n   |s [id D]\n   |x [id E]\n");
    CHECK(off.n_steps() > on.n_steps());
    Tensor gv = random_tensor({4, 5}, 1), sv = random_tensor({4, 5}, 2, 0, 1), xv = random_tensor({4, 5}, 3, 0, 1);
    CHECK(close(on({gv, sv, xv})[0].to_doubles(), off({gv, sv, xv})[0].to_doubles(), 1e-14));
    // Nothing cancels: left alone.
    Variable keep = g * (1 - x) + s;
    Function k = function({g, s, x}, {keep}, {}, {}, excluding({"fusion"}));
    for (const auto& line : k.rewrite_log()) CHECK(line.find("local_collect_terms") == std::string::npos);
    // Merged terms: x + 2 x -> 3 x.
    Function m = function({x}, {x + 2.0 * x}, {}, {}, excluding({"fusion"}));
    CHECK(m.debugprint(false) == "Elemwise{mul} [id A]\n |x [id B]\n |TensorConstant{3} [id C]\n");
}

TEST_CASE("stabilize: log(softmax(x)) becomes LogSoftmax, finite for logits 1000 apart, with a finite gradient") {
    for (const DType dt : {DType::float64, DType::float32}) {
        CAPTURE(dtype_name(dt));
        Variable x = input(TensorType{dt, {false, false}}, "x");
        Variable y = lvector("y");
        Tensor xv = T64({2, 3}, {1, 2, 3, 1000, 0, -1000}).astype(dt);
        // Row 0 by hand: x - (3 + log(e^-2 + e^-1 + 1)); row 1: exp(-1000) is 0 next to 1.
        const double lse0 = 3 + std::log(std::exp(-2.0) + std::exp(-1.0) + 1);
        const std::vector<double> want = {1 - lse0, 2 - lse0, 3 - lse0, 0, -1000, -2000};
        Function on = function({x}, {log(softmax(x))});
        Function off = function({x}, {log(softmax(x))}, {}, {}, excluding({"local_log_softmax"}));
        CHECK(count_op(on, "LogSoftmax") == 1);
        CHECK(count_op(on, "Softmax") == 0);
        CHECK(count_op(off, "Softmax") == 1);
        const auto got = on({xv})[0].to_doubles();
        const double tol = dt == DType::float32 ? 1e-6 : 1e-14;
        CHECK(close(got, want, tol));
        const auto naive = off({xv})[0].to_doubles();
        CHECK(std::isinf(naive[5]));  // log(0) without the rewrite
        CHECK(close({naive[0], naive[1], naive[2]}, {want[0], want[1], want[2]}, tol));

        // The tutorials' negative log-likelihood, -mean(log(softmax(x))[arange(n), y]): its value
        // and its gradient (softmax(x) - onehot(y)) / n stay finite for these logits.
        Variable nll = -log(softmax(x))[{arange(y.shape(0)), y}].mean();
        Function f = function({x, y}, {nll, grad(nll, x)});
        CHECK(count_op(f, "CrossentropySoftmax1Hot{leading_rows}") == 1);
        const auto out = f({xv, I64({2}, {0, 2})});
        CHECK(out[0].item() == doctest::Approx(-(want[0] + want[5]) / 2).epsilon(tol));
        std::vector<double> g_want(6);
        for (int j = 0; j < 6; ++j) g_want[j] = std::exp(want[j]) / 2;
        g_want[0] -= 0.5;
        g_want[5] -= 0.5;
        CHECK(close(out[1].to_doubles(), g_want, tol));
        // categorical_crossentropy(softmax(x), y) is the same graph.
        Function cce = function({x, y}, {categorical_crossentropy(softmax(x), y).mean()});
        CHECK(count_op(cce, "CrossentropySoftmax1Hot") == 1);
        CHECK(cce({xv, I64({2}, {0, 2})})[0].item() == doctest::Approx(out[0].item()).epsilon(tol));
    }
}

TEST_CASE("stabilize: the indexing negative log-likelihood and its gradient become CrossentropySoftmax1Hot and its Dx") {
    const std::vector<std::string> both = {"local_crossentropy_softmax_1hot", "local_crossentropy_softmax_1hot_grad"};
    for (const DType dt : {DType::float64, DType::float32}) {
        CAPTURE(dtype_name(dt));
        const double tol = dt == DType::float32 ? 2e-6 : 1e-14;
        Variable x = input(TensorType{dt, {false, false}}, "x");
        Variable y = lvector("y");
        Variable nll = -mean(log(softmax(x))[{arange(y.shape(0)), y}]);
        Variable gx = grad(nll, x);
        Function on = function({x, y}, {nll, gx});
        Function off = function({x, y}, {nll, gx}, {}, {}, excluding(both));
        // Before: LogSoftmax, a separate Softmax for the gradient, a scatter into zeros and a row sum.
        CHECK(count_op(off, "LogSoftmax") == 1);
        CHECK(count_op(off, "Softmax") == 1);
        CHECK(count_op(off, "AdvancedIncSubtensor") == 1);
        // After: one op gives the nll and the softmax, the other the gradient.
        CHECK(count_op(on, "CrossentropySoftmax1Hot{leading_rows}") == 1);
        CHECK(count_op(on, "CrossentropySoftmax1HotDx") == 1);
        CHECK(count_op(on, "LogSoftmax") == 0);
        CHECK(count_op(on, "Softmax") == 0);
        CHECK(count_op(on, "AdvancedIncSubtensor") == 0);

        // Ordinary logits: both graphs agree; labels may be negative (counted from the row's end).
        const Tensor xv = random_tensor({5, 4}, 11, -3, 3).astype(dt);
        const Tensor yv = I64({5}, {0, 3, -1, 2, 1});
        const auto a = on({xv, yv});
        const auto b = off({xv, yv});
        CHECK(a[0].item() == doctest::Approx(b[0].item()).epsilon(tol));
        CHECK(close(a[1].to_doubles(), b[1].to_doubles(), tol));
        // By hand for row 0: -log(e^x0 / sum e^xj) / 5 is its share of the mean.
        const auto xd = xv.to_doubles();
        double want = 0;
        const std::vector<int> lab = {0, 3, 3, 2, 1};
        for (int r = 0; r < 5; ++r) {
            double s = 0;
            for (int j = 0; j < 4; ++j) s += std::exp(xd[r * 4 + j]);
            want += (std::log(s) - xd[r * 4 + lab[r]]) / 5;
        }
        CHECK(a[0].item() == doctest::Approx(want).epsilon(tol));

        // Logits 1000 apart: the naive graph (no rewrites at all) gives inf and a NaN gradient;
        // the fused one the hand value 2000 / 2 and a finite gradient (softmax - onehot) / n.
        const Tensor big = T64({2, 3}, {1000, 0, -1000, 0, 1000, 2}).astype(dt);
        const Tensor ybig = I64({2}, {2, 1});
        Function naive = function({x, y}, {nll, gx}, {}, {}, no_rewrites());
        const auto nv = naive({big, ybig});
        CHECK(std::isinf(nv[0].item()));
        const auto fv = on({big, ybig});
        CHECK(fv[0].item() == doctest::Approx(1000.0).epsilon(tol));
        const std::vector<double> g_want = {0.5, 0, -0.5, 0, 0, 0};
        const auto g = fv[1].to_doubles();
        for (double v : g) CHECK(std::isfinite(v));
        CHECK(close(g, g_want, tol));
    }
}

TEST_CASE("softmax, log_softmax, the cross-entropy and its gradient on many rows (split over threads) against per-row sums") {
    // 5100 x 13: enough work for the row ops to hand blocks of rows to the threads (the
    // gradient needs 65536 entries, the others 16384); 5000 labels for 5100 rows (the
    // leading-rows form). Every row against its definition, 1 and 2 threads.
    Variable x = dmatrix("x");
    Variable y = lvector("y");
    auto [nll, sm] = crossentropy_softmax_1hot(x, y, false);
    Function f = function({x, y}, {nll, sm, softmax(x), log_softmax(x), grad(nll.sum(), x)}, {}, {}, no_rewrites());
    CHECK(count_op(f, "CrossentropySoftmax1HotDx") == 1);
    const Tensor xv = random_tensor({5100, 13}, 21, -5, 5);
    std::vector<std::int64_t> labels(5000);
    for (std::size_t i = 0; i < labels.size(); ++i) labels[i] = static_cast<std::int64_t>((i * 7) % 13);
    const Tensor yv = Tensor::from_vector<std::int64_t>({5000}, labels);
    for (int threads : {1, 2}) {
        set_num_threads(threads);
        const auto out = f({xv, yv});
        set_num_threads(0);
        CAPTURE(threads);
        std::int64_t bad = 0;
        for (std::int64_t r = 0; r < 5100; ++r) {
            double mx = -1e300, s = 0;
            for (std::int64_t j = 0; j < 13; ++j) mx = std::max(mx, xv.at({r, j}));
            for (std::int64_t j = 0; j < 13; ++j) s += std::exp(xv.at({r, j}) - mx);
            for (std::int64_t j = 0; j < 13; ++j) {
                const double p = std::exp(xv.at({r, j}) - mx) / s;
                bad += std::abs(out[1].at({r, j}) - p) > 1e-15;
                bad += std::abs(out[2].at({r, j}) - p) > 1e-15;
                bad += std::abs(out[3].at({r, j}) - (xv.at({r, j}) - mx - std::log(s))) > 1e-14;
                // The gradient of the summed nll: softmax minus the one-hot label, 0 past the labels.
                const double dx = r < 5000 ? p - (j == labels[static_cast<std::size_t>(r)] ? 1.0 : 0.0) : 0.0;
                bad += std::abs(out[4].at({r, j}) - dx) > 1e-15;
            }
            if (r < 5000) {
                const double want = std::log(s) + mx - xv.at({r, labels[static_cast<std::size_t>(r)]});
                bad += std::abs(out[0].at({r}) - want) > 1e-14 * (1 + std::abs(want));
            }
        }
        CHECK(out[0].shape() == Shape{5000});
        CHECK(bad == 0);
    }
}

TEST_CASE("softmax and the cross-entropy sum a float32 row in double, as Theano") {
    // A row of 2^24 + 2 zeros: every exp is exactly 1. A float32 sum stops at 2^24 (adding 1
    // to 2^24 rounds back to it), so a float sum would give 2^-24 for every entry; the sum in
    // double is 2^24 + 2 and the entries are 1 / (2^24 + 2) rounded to float32, one ulp below.
    const std::int64_t n = (std::int64_t{1} << 24) + 2;
    const Tensor row = Tensor::zeros(DType::float32, {1, n});
    Variable x = fmatrix("x");
    Variable y = lvector("y");
    auto [nll, sm] = crossentropy_softmax_1hot(x, y);
    Function f = function({x, y}, {softmax(x), sm, nll});
    const auto out = f({row, I64({1}, {n - 1})});
    const float want = static_cast<float>(1.0 / static_cast<double>(n));
    CHECK(want != std::ldexp(1.0f, -24));
    for (int k = 0; k < 2; ++k) {
        const float* p = out[static_cast<std::size_t>(k)].data<float>();
        CHECK(p[0] == want);
        CHECK(p[n - 1] == want);
        CHECK(std::count(p, p + n, want) == n);
    }
    // nll = log(sum) - 0: log(2^24 + 2) in double, rounded to float32.
    CHECK(out[2].data<float>()[0] == static_cast<float>(std::log(static_cast<double>(n))));
}

TEST_CASE("canonicalize: argmax of softmax or log_softmax along their rows is argmax of the logits") {
    Variable x = dmatrix("x"), b = vector("b", DType::float64), v = vector("v", DType::float64);
    const Variable pred = argmax(softmax(x + b), 1), pred_log = argmax(log_softmax(x), -1), pred_v = argmax(softmax(v));
    const Variable columns = argmax(softmax(x), 0);  // across rows: not the axis softmax normalises
    CompileOptions opt;
    opt.on_unused_input = CompileOptions::UnusedInput::ignore;
    Function on = function({x, b, v}, {pred, pred_log, pred_v, columns}, {}, {}, opt);
    CompileOptions off_opt = excluding({"local_argmax_pushdown"});
    off_opt.on_unused_input = CompileOptions::UnusedInput::ignore;
    Function off = function({x, b, v}, {pred, pred_log, pred_v, columns}, {}, {}, off_opt);
    // One Softmax is left, the one under the argmax across rows; no LogSoftmax.
    CHECK(count_op(on, "Softmax") == 1);
    CHECK(count_op(off, "Softmax") == 3);
    CHECK(count_op(on, "LogSoftmax") == 0);
    const Tensor xv = T64({3, 4}, {0.5, 2.0, -1.0, 1.0, 3.0, 4.5, 0.0, -2.0, -1.0, -3.0, -0.5, -4.0});
    const Tensor bv = T64({4}, {0.0, -1.0, 0.0, 0.25});  // moves row 0's maximum from column 1 to 3
    const Tensor vv = T64({5}, {0.1, 0.7, -2.0, 0.69, 0.0});
    const auto a = on({xv, bv, vv}), z = off({xv, bv, vv});
    CHECK(a[0].to_doubles() == std::vector<double>{3, 1, 2});  // rows of x + b: 1.25 wins row 0
    // Across rows: the columns' largest probabilities (row 2's 0.58 of its row, row 1's 0.81).
    CHECK(a[3].to_doubles() == std::vector<double>{2, 1, 2, 0});
    CHECK(a[1].to_doubles() == std::vector<double>{1, 1, 2});
    CHECK(a[2].item() == 1);
    for (int k = 0; k < 4; ++k) CHECK(a[k].to_doubles() == z[k].to_doubles());
}

TEST_CASE("CrossentropySoftmax1Hot: values by hand, fewer labels than rows, and errors naming the input") {
    Variable x = dmatrix("x");
    Variable y = lvector("y");
    auto [nll, sm] = crossentropy_softmax_1hot(x, y);
    Function f = function({x, y}, {nll, sm});
    // Row (1, 2, 3) with label 2: nll = log(e^-2 + e^-1 + 1); softmax = e^(x-3) / that sum.
    const double s = std::exp(-2.0) + std::exp(-1.0) + 1;
    const auto out = f({T64({1, 3}, {1, 2, 3}), I64({1}, {2})});
    CHECK(out[0].item() == doctest::Approx(std::log(s)).epsilon(1e-15));
    CHECK(close(out[1].to_doubles(), {std::exp(-2.0) / s, std::exp(-1.0) / s, 1 / s}, 1e-15));

    CHECK(error_of([&] { f({T64({2, 3}, {1, 2, 3, 4, 5, 6}), I64({2}, {0, 3})}); })
              .find("CrossentropySoftmax1Hot: label 3 (at position 1 of input 1) is out of bounds for rows of 3 classes") !=
          std::string::npos);
    CHECK(error_of([&] { f({T64({2, 3}, {1, 2, 3, 4, 5, 6}), I64({1}, {0})}); })
              .find("CrossentropySoftmax1Hot: 1 labels for a matrix of 2 rows") != std::string::npos);
    CHECK(error_of([&] { crossentropy_softmax_1hot(x, vector("p", DType::float64)); })
              .find("CrossentropySoftmax1Hot: input 1 (the labels) must be an integer vector, got float64 vector (node built at test_rewrites.cpp") != std::string::npos);

    // The indexing form over arange(len(y)) reads only the first len(y) rows: the fused graph
    // does the same, and the gradient's other rows are zero.
    Variable cost = -log(softmax(x))[{arange(y.shape(0)), y}].sum();
    Function part = function({x, y}, {cost, grad(cost, x)});
    Function ref = function({x, y}, {cost, grad(cost, x)}, {}, {},
                            excluding({"local_crossentropy_softmax_1hot", "local_crossentropy_softmax_1hot_grad"}));
    CHECK(count_op(part, "CrossentropySoftmax1HotDx") == 1);
    const Tensor xv = random_tensor({4, 3}, 12, -2, 2);
    const auto p = part({xv, I64({2}, {1, 0})});
    const auto r = ref({xv, I64({2}, {1, 0})});
    CHECK(p[0].item() == doctest::Approx(r[0].item()).epsilon(1e-14));
    CHECK(close(p[1].to_doubles(), r[1].to_doubles(), 1e-14));
    const auto pg = p[1].to_doubles();
    for (int i = 6; i < 12; ++i) CHECK(pg[i] == 0.0);
    // More labels than rows is refused as the indexing would refuse it.
    CHECK(error_of([&] { part({xv, I64({5}, {0, 0, 0, 0, 0})}); }).find("5 labels for a matrix of 4 rows") !=
          std::string::npos);
}

TEST_CASE("CrossentropySoftmax1Hot and its Dx: gradients agree with finite differences") {
    const Variable y = constant(I64({3}, {2, 0, 3}));
    // Both outputs of the fused op feed the cost, so both pullback terms are checked.
    VerifyGradReport r = verify_grad(
        [&](auto v) {
            auto [nll, sm] = crossentropy_softmax_1hot(v[0], y);
            return add(sum(mul(nll, constant(T64({3}, {0.3, -1.2, 0.7})))), sum(mul(sm, sm)));
        },
        {random_tensor({3, 4}, 13, -2, 2)});
    CHECK(r.n_checked > 0);
    // The Dx op in dnll and in sm; two labels for three rows (the third row's gradient is zero).
    const Variable y2 = constant(I64({2}, {1, -1}));
    r = verify_grad([&](auto v) { return crossentropy_softmax_1hot_dx(v[0], v[1], y2); },
                    {random_tensor({2}, 14, -1, 1), random_tensor({3, 3}, 15, 0.1, 0.9)});
    CHECK(r.n_checked > 0);
    // Second derivative through the fused graph: grad of sum(grad^2) matches finite differences.
    r = verify_grad(
        [&](auto v) {
            Variable c = crossentropy_softmax_1hot(v[0], y).nll.sum();
            return sum(sqr(grad(c, v[0])));
        },
        {random_tensor({3, 4}, 16, -2, 2)});
    CHECK(r.n_checked > 0);
}

TEST_CASE("specialize: a softmax layer's bias add moves into CrossentropySoftmax1HotWithBias, with the same bits") {
    // The logistic regression's cost and gradients, -mean(log(softmax(x W + b))[arange(n), y]):
    // with the rewrite the bias add is made inside the cross-entropy's pass; without it, by an
    // add of its own. 1400 rows (split over the threads), all labelled and 1300 of them labelled.
    for (const DType dt : {DType::float64, DType::float32}) {
        CAPTURE(dtype_name(dt));
        Variable x = input(TensorType{dt, {false, false}}, "x");
        Variable W = input(TensorType{dt, {false, false}}, "W");
        Variable b = input(TensorType{dt, {false}}, "b");
        Variable y = lvector("y");
        Variable nll = -mean(log(softmax(dot(x, W) + b))[{arange(y.shape(0)), y}]);
        const std::vector<Variable> outs{nll, grad(nll, W), grad(nll, b)};
        Function on = function({x, W, b, y}, outs);
        Function off = function({x, W, b, y}, outs, {}, {}, excluding({"local_crossentropy_softmax_1hot_with_bias"}));
        CHECK(count_op(on, "CrossentropySoftmax1HotWithBias{leading_rows}") == 1);
        CHECK(count_op(on, "CrossentropySoftmax1Hot{leading_rows}") == 0);
        CHECK(count_op(off, "CrossentropySoftmax1Hot{leading_rows}") == 1);
        CHECK(count_op(off, "CrossentropySoftmax1HotWithBias{leading_rows}") == 0);
        const Tensor xv = random_tensor({1400, 9}, 31, -2, 2).astype(dt);
        const Tensor Wv = random_tensor({9, 13}, 32, -1, 1).astype(dt);
        const Tensor bv = random_tensor({13}, 33, -3, 3).astype(dt);
        for (std::int64_t n : {1400, 1300}) {
            CAPTURE(n);
            std::vector<std::int64_t> labels(static_cast<std::size_t>(n));
            for (std::size_t i = 0; i < labels.size(); ++i) labels[i] = static_cast<std::int64_t>((i * 5) % 13);
            const Tensor yv = Tensor::from_vector<std::int64_t>({n}, labels);
            const auto a = on({xv, Wv, bv, yv});
            const auto r = off({xv, Wv, bv, yv});
            for (std::size_t i = 0; i < a.size(); ++i) CHECK(a[i].to_doubles() == r[i].to_doubles());
        }
    }
}

TEST_CASE("CrossentropySoftmax1HotWithBias: values by hand, gradients by finite differences, errors") {
    Variable x = dmatrix("x");
    Variable b = vector("b", DType::float64);
    Variable y = lvector("y");
    auto [nll, sm] = crossentropy_softmax_1hot_with_bias(x, b, y);
    Function f = function({x, b, y}, {nll, sm});
    // Row (1, 2, 3) + bias (0.5, -1, 2) = (1.5, 1, 5), label 0: nll = log(e^-3.5 + e^-4 + 1) + 3.5.
    const double s = std::exp(-3.5) + std::exp(-4.0) + 1;
    const auto out = f({T64({1, 3}, {1, 2, 3}), T64({3}, {0.5, -1, 2}), I64({1}, {0})});
    CHECK(out[0].item() == doctest::Approx(std::log(s) + 3.5).epsilon(1e-15));
    CHECK(close(out[1].to_doubles(), {std::exp(-3.5) / s, std::exp(-4.0) / s, 1 / s}, 1e-15));
    CHECK(error_of([&] { f({T64({1, 3}, {1, 2, 3}), T64({2}, {0.5, -1}), I64({1}, {0})}); })
              .find("CrossentropySoftmax1HotWithBias: the bias (input 2) has 2 entries for logits of shape (1, 3)") !=
          std::string::npos);
    CHECK(error_of([&] { crossentropy_softmax_1hot_with_bias(x, vector("c", DType::float32), y); })
              .find("CrossentropySoftmax1HotWithBias: input 2 (the bias) must be a vector of the logits' dtype float64, "
                    "got float32 vector") != std::string::npos);
    // Both outputs feed the cost, so the gradients with respect to the logits and the bias
    // both come through the pullback; three labels for four rows.
    const Variable labels = constant(I64({3}, {2, 0, 3}));
    VerifyGradReport r = verify_grad(
        [&](auto v) {
            auto [l, p] = crossentropy_softmax_1hot_with_bias(v[0], v[1], labels, false);
            return add(sum(mul(l, constant(T64({3}, {0.3, -1.2, 0.7})))), sum(mul(p, p)));
        },
        {random_tensor({4, 4}, 17, -2, 2), random_tensor({4}, 18, -1, 1)});
    CHECK(r.n_checked > 0);
}

TEST_CASE("LogSoftmax's gradient agrees with finite differences, vector and matrix") {
    VerifyGradReport r = verify_grad([](auto v) { return log_softmax(v[0]); }, {random_tensor({3, 4}, 5, -3, 3)});
    CHECK(r.n_checked > 0);
    r = verify_grad([](auto v) { return log_softmax(v[0]); }, {random_tensor({5}, 6, -3, 3)});
    CHECK(r.n_checked > 0);
    CHECK_THROWS_WITH_AS(log_softmax(lscalar("i")), doctest::Contains("LogSoftmax: input 0 must be a float vector or matrix"),
                         UsageError);
}

TEST_CASE("stabilize: exp(x) / (1 + exp(x)) and 1 / (1 + exp(-x)) become sigmoid, finite where exp overflows") {
    for (const DType dt : {DType::float64, DType::float32}) {
        CAPTURE(dtype_name(dt));
        Variable x = input(TensorType{dt, {false}}, "x");
        // exp overflows above 88.7 in float32 and 709.8 in float64: inf / inf is NaN without the rewrite.
        Tensor xv = T64({6}, {-1000, -30, -0.5, 0, 2, 1000}).astype(dt);
        const double tol = dt == DType::float32 ? 2e-7 : 1e-15;
        for (const auto& [label, e] : std::vector<std::pair<std::string, Variable>>{
                 {"exp(x) / (1 + exp(x))", exp(x) / (1 + exp(x))},
                 {"exp(x) / (exp(x) + 1)", exp(x) / (exp(x) + 1)},
                 {"1 / (1 + exp(-x))", 1 / (1 + exp(-x))}}) {
            CAPTURE(label);
            Function on = function({x}, {e}, {}, {}, excluding({"fusion"}));
            Function off = function({x}, {e}, {}, {}, excluding({"local_exp_over_1_plus_exp"}));
            CHECK(on.debugprint(false) == "Elemwise{sigmoid} [id A]\n |x [id B]\n");
            const auto got = on({xv})[0].to_doubles();
            const auto naive = off({xv})[0].to_doubles();
            // 1 / (1 + e^-x) by hand in long double.
            for (int i = 0; i < 6; ++i) {
                const long double v = xv.to_doubles()[i];
                const double want = static_cast<double>(1 / (1 + std::exp(-v)));
                if (want < 1e-30) {
                    CHECK(got[i] < 1e-30);
                } else {
                    CHECK(got[i] == doctest::Approx(want).epsilon(tol));
                }
            }
            CHECK(got[5] == 1);
            if (label != "1 / (1 + exp(-x))") CHECK(std::isnan(naive[5]));
            CHECK(naive[3] == doctest::Approx(got[3]).epsilon(tol));
        }
        // 1 / (1 + exp(y)) is sigmoid(-y).
        Function g = function({x}, {1 / (1 + exp(x))}, {}, {}, excluding({"fusion"}));
        CHECK(g.debugprint(false) == "Elemwise{sigmoid} [id A]\n |Elemwise{neg} [id B]\n   |x [id C]\n");
        CHECK(g({xv})[0].to_doubles()[0] == 1);
        // Not the pattern: the numerator's exp has another argument.
        Variable z = input(TensorType{dt, {false}}, "z");
        Function h = function({x, z}, {exp(z) / (1 + exp(x))}, {}, {}, excluding({"fusion"}));
        CHECK(count_op(h, "Elemwise{sigmoid}") == 0);
    }
}

TEST_CASE("stabilize: a broadcast numerator keeps the result's shape") {
    // A (2, 3) matrix of ones over 1 + exp(row): the result is (2, 3), not the row's (1, 3).
    Variable r = input(TensorType{DType::float64, {true, false}}, "r");
    Variable ones = constant(T64({2, 3}, {1, 1, 1, 1, 1, 1}));
    Function f = function({r}, {ones / (1 + exp(r))});
    const auto out = f({T64({1, 3}, {0, 1000, -1000})})[0];
    CHECK(out.shape() == Shape{2, 3});
    CHECK(out.to_doubles() == std::vector<double>{0.5, 0, 1, 0.5, 0, 1});
}

TEST_CASE("stabilize: log(exp(a) + exp(b)) and log(sum(exp(x))) are max-shifted") {
    for (const DType dt : {DType::float64, DType::float32}) {
        CAPTURE(dtype_name(dt));
        const double tol = dt == DType::float32 ? 1e-6 : 1e-14;
        const double inf = std::numeric_limits<double>::infinity();
        Variable a = input(TensorType{dt, {false}}, "a"), b = input(TensorType{dt, {false}}, "b");
        Variable c = input(TensorType{dt, {false}}, "c");
        {
            Variable e = log(exp(a) + exp(b) + exp(c));
            Function on = function({a, b, c}, {e});
            Function off = function({a, b, c}, {e}, {}, {}, excluding({"local_log_add_exp"}));
            Function unfused = function({a, b, c}, {e}, {}, {}, excluding({"fusion"}));
            CHECK(count_op(unfused, "Elemwise{maximum}") == 2);  // m = max(max(a, b), c)
            CHECK(count_op(unfused, "Elemwise{exp}") == 3);      // exp(a - m), exp(b - m), exp(c - m)
            Tensor av = T64({5}, {1000, -1000, 0, inf, -inf}).astype(dt);
            Tensor bv = T64({5}, {999, -1001, 0, 0, -inf}).astype(dt);
            Tensor cv = T64({5}, {-inf, -1000, 0, 1, -inf}).astype(dt);
            const auto got = on({av, bv, cv})[0].to_doubles();
            // By hand: m + log(sum exp(t - m)).
            CHECK(got[0] == doctest::Approx(1000 + std::log1p(std::exp(-1.0))).epsilon(tol));
            CHECK(got[1] == doctest::Approx(-1000 + std::log(2 + std::exp(-1.0))).epsilon(tol));
            CHECK(got[2] == doctest::Approx(std::log(3.0)).epsilon(tol));
            CHECK(got[3] == inf);
            CHECK(got[4] == -inf);
            const auto naive = off({av, bv, cv})[0].to_doubles();
            CHECK(naive[0] == inf);   // exp(1000) overflows
            CHECK(naive[1] == -inf);  // exp(-1000) is 0
            CHECK(naive[2] == doctest::Approx(got[2]).epsilon(tol));
            // NaN stays NaN.
            Tensor nan_v = T64({5}, {std::nan(""), 0, 0, 0, 0}).astype(dt);
            CHECK(std::isnan(on({nan_v, bv, cv})[0].to_doubles()[0]));
        }
        {
            Variable X = input(TensorType{dt, {false, false}}, "X");
            Tensor xv = T64({2, 3}, {1000, 1001, 999, -1000, -inf, -1001}).astype(dt);
            const double l0 = 1001 + std::log(std::exp(-1.0) + 1 + std::exp(-2.0));
            const double l1 = -1000 + std::log1p(std::exp(-1.0));
            Function rows = function({X}, {log(sum(exp(X), 1))});
            Function rows_off = function({X}, {log(sum(exp(X), 1))}, {}, {}, excluding({"local_log_sum_exp"}));
            Function unfused = function({X}, {log(sum(exp(X), 1))}, {}, {}, excluding({"fusion"}));
            CHECK(count_op(unfused, "Max{axes=[1]}") == 1);
            CHECK(count_op(rows_off, "Max{axes=[1]}") == 0);
            const auto got = rows({xv})[0];
            CHECK(got.shape() == Shape{2});
            CHECK(close(got.to_doubles(), {l0, l1}, tol));
            const auto naive = rows_off({xv})[0].to_doubles();
            CHECK(naive[0] == inf);
            CHECK(naive[1] == -inf);
            // Over every axis, and a row of -inf only.
            Function all = function({X}, {log(sum(exp(X)))});
            const double m = 1001;
            const double want = m + std::log(std::exp(-1.0) + 1 + std::exp(-2.0));
            CHECK(all({xv})[0].item() == doctest::Approx(want).epsilon(tol));
            Tensor ninf = T64({2, 3}, {-inf, -inf, -inf, 0, 0, 0}).astype(dt);
            const auto r = rows({ninf})[0].to_doubles();
            CHECK(r[0] == -inf);
            CHECK(r[1] == doctest::Approx(std::log(3.0)).epsilon(tol));
        }
    }
}

TEST_CASE("stabilize: log(sigmoid) and log(1 - sigmoid) through flatten, reshape and dimshuffle") {
    for (const DType dt : {DType::float64, DType::float32}) {
        CAPTURE(dtype_name(dt));
        Variable X = input(TensorType{dt, {false, false}}, "X");
        Tensor xv = T64({2, 2}, {-1000, -20, 20, 1000}).astype(dt);
        // softplus is x itself a little earlier than where log1p(exp(x)) rounds to x.
        const double tol = dt == DType::float32 ? 1e-6 : 1e-9;
        // log(1 - sigmoid(x)) = -softplus(x); log(sigmoid(x)) = -softplus(-x); both by hand.
        auto softplus_ref = [](double v) { return v > 30 ? v : std::log1p(std::exp(v)); };
        const std::vector<Variable> shaped = {sigmoid(X).flatten(1), sigmoid(X).reshape({X.shape(1), X.shape(0)}),
                                              sigmoid(X).dimshuffle({1, 0}),
                                              sigmoid(X).dimshuffle({1, 0}).flatten(1)};
        for (std::size_t k = 0; k < shaped.size(); ++k) {
            CAPTURE(k);
            for (const bool one_minus : {true, false}) {
                CAPTURE(one_minus);
                Variable e = one_minus ? log(1 - shaped[k]) : log(shaped[k]);
                Function on = function({X}, {e}, {}, {}, excluding({"fusion"}));
                Function off = function({X}, {e}, {}, {}, no_rewrites());
                CHECK(count_op(on, "Elemwise{softplus}") == 1);
                CHECK(count_op(on, "Elemwise{sigmoid}") == 0);
                const auto got = on({xv})[0].to_doubles();
                const auto naive = off({xv})[0].to_doubles();
                // flatten and reshape keep the row-major order; the transposes swap the middle two.
                const std::vector<double> xs = xv.to_doubles();
                const std::vector<int> order = k < 2 ? std::vector<int>{0, 1, 2, 3} : std::vector<int>{0, 2, 1, 3};
                for (int i = 0; i < 4; ++i) {
                    const double v = xs[order[i]];
                    const double want = one_minus ? -softplus_ref(v) : -softplus_ref(-v);
                    CHECK(got[i] == doctest::Approx(want).epsilon(tol));
                }
                CHECK(std::isinf(naive[one_minus ? 3 : 0]));
            }
        }
    }
}

TEST_CASE("stabilize: log(1 + x) with the 1 as a fill, and with an integer x") {
    Variable d = vector("d"), M = matrix("M");
    // ones_like(M) + d: the fill's shape (M's) stays; each element is log1p(d).
    Variable e = log(second(M, 1.0) + d);
    Function on = function({M, d}, {e}, {}, {}, excluding({"fusion"}));
    CHECK(count_op(on, "Elemwise{log1p}") == 1);
    CHECK(count_op(on, "Elemwise{log}") == 0);
    const auto out = on({T64({2, 2}, {5, 6, 7, 8}), T64({2}, {1e-18, 0.5})})[0];
    CHECK(out.shape() == Shape{2, 2});
    CHECK(out.to_doubles() == std::vector<double>{1e-18, std::log1p(0.5), 1e-18, std::log1p(0.5)});
    // An integer operand: log(1 + i) is float64, as log1p(i).
    Variable i = lvector("i");
    Function fi = function({i}, {log(1 + i)}, {}, {}, excluding({"fusion"}));
    CHECK(count_op(fi, "Elemwise{log1p}") == 1);
    CHECK(fi({I64({3}, {0, 1, 1000000})})[0].to_doubles() ==
          std::vector<double>{0, std::log1p(1.0), std::log1p(1000000.0)});
}
