// Reductions and matrix products.
#include <doctest/doctest.h>

#include <algorithm>
#include <cmath>

#include "support/helpers.hpp"

using namespace theanine;
using namespace theanine::testing;

TEST_CASE("sum, mean, max and argmax over each axis and over all") {
    Variable m = matrix("m");
    Tensor mv = T64({2, 3}, {1, 5, 3, 4, 2, 6});
    auto run = [&](const Variable& e) { return eval1({m}, e, {mv}).to_doubles(); };
    CHECK(run(m.sum()) == std::vector<double>{21});
    CHECK(run(m.sum(0)) == std::vector<double>{5, 7, 9});
    CHECK(run(m.sum(1)) == std::vector<double>{9, 12});
    CHECK(run(m.sum(-1)) == std::vector<double>{9, 12});
    CHECK(run(m.mean()) == std::vector<double>{3.5});
    CHECK(run(m.mean(0)) == std::vector<double>{2.5, 3.5, 4.5});
    CHECK(run(m.mean(1)) == std::vector<double>{3, 4});
    CHECK(run(m.max()) == std::vector<double>{6});
    CHECK(run(m.max(0)) == std::vector<double>{4, 5, 6});
    CHECK(run(m.max(1)) == std::vector<double>{5, 6});
    CHECK(run(m.argmax(0)) == std::vector<double>{1, 0, 1});
    CHECK(run(m.argmax(1)) == std::vector<double>{1, 2});
    CHECK(run(m.argmax()) == std::vector<double>{5});
    CHECK(m.sum(1, true).type().str() == "float64 col");
    CHECK(run(m - m.max(1, true)) == std::vector<double>{-4, 0, -2, -2, -4, 0});
    CHECK(m.argmax(1).dtype() == DType::int64);
    CHECK(sum(lvector("i")).dtype() == DType::int64);
    CHECK(mean(lvector("i")).dtype() == DType::float64);
    CHECK_THROWS_WITH_AS(m.sum(2), "sum: axis 2 is out of range for a 2-d input", UsageError);
}

TEST_CASE("sum over axes of a 3-d tensor and of a transposed view") {
    Variable t = tensor3("t");
    std::vector<double> vals(24);
    for (int i = 0; i < 24; ++i) vals[i] = i;
    Tensor tv = T64({2, 3, 4}, vals);
    CHECK(eval1({t}, t.sum(1), {tv}).to_doubles() ==
          std::vector<double>{12, 15, 18, 21, 48, 51, 54, 57});
    CHECK(eval1({t}, sum_axes(t, {0, 2}), {tv}).to_doubles() == std::vector<double>{60, 92, 124});
    Variable m = matrix("m");
    CHECK(eval1({m}, m.T().sum(0), {T64({2, 3}, {1, 2, 3, 4, 5, 6})}).to_doubles() == std::vector<double>{6, 15});
}

TEST_CASE("sum and max of an input alone (the Reduce op): every axis, long and short runs, against long double") {
    // Long runs are added in 32 independent accumulators, column sums a block of 1024 columns
    // at a time (float64: 32 columns at a time over 64 rows, then the rest): shapes with runs
    // shorter and longer than all of these, float32 (accumulated in double, as Theano) and
    // float64; max exact, and a NaN anywhere makes its max NaN. Flat runs of 65536 values or
    // more are folded in blocks of 32768 (combined in order), and inputs of 131072 values or
    // more are split over the threads.
    for (DType dt : {DType::float32, DType::float64}) {
        for (Shape s : {Shape{784, 500}, Shape{3, 1037}, Shape{7, 5}, Shape{70001, 1}, Shape{1, 70001}, Shape{5, 2100},
                        Shape{200, 63}, Shape{1100, 131}}) {
            CAPTURE(dtype_name(dt));
            CAPTURE(shape_string(s));
            Tensor X = testing::random_tensor(s, 21).astype(dt);
            Variable x = matrix("x", dt);
            Function f = function({x}, {x.sum(), x.sum(0), x.sum(1), x.max(), x.max(0), x.max(1)});
            const auto names = f.op_names();
            CHECK(std::none_of(names.begin(), names.end(), [](const std::string& n) { return n.rfind("Composite", 0) == 0; }));
            CHECK(std::count(names.begin(), names.end(), "Sum{axes=[0]}") == 1);
            const auto out = f({X});
            const auto xv = X.to_doubles();  // the values as stored (float32 ones exactly)
            long double all = 0, mag = 0;
            double mx = -INFINITY;
            std::vector<long double> col(static_cast<std::size_t>(s[1]), 0), row(static_cast<std::size_t>(s[0]), 0);
            std::vector<double> cmax(col.size(), -INFINITY), rmax(row.size(), -INFINITY);
            for (std::int64_t i = 0; i < s[0]; ++i) {
                for (std::int64_t j = 0; j < s[1]; ++j) {
                    const double v = xv[static_cast<std::size_t>(i * s[1] + j)];
                    all += v;
                    mag += std::abs(v);
                    col[static_cast<std::size_t>(j)] += v;
                    row[static_cast<std::size_t>(i)] += v;
                    mx = std::max(mx, v);
                    cmax[static_cast<std::size_t>(j)] = std::max(cmax[static_cast<std::size_t>(j)], v);
                    rmax[static_cast<std::size_t>(i)] = std::max(rmax[static_cast<std::size_t>(i)], v);
                }
            }
            // Sums in double whatever the dtype, then rounded to it.
            const long double tol = (dt == DType::float32 ? 1e-7L : 1e-15L) * (mag + 1);
            auto near = [&](double got, long double want) { return std::abs(static_cast<long double>(got) - want) <= tol; };
            CHECK(near(out[0].item(), all));
            std::int64_t bad = 0;
            const auto c = out[1].to_doubles(), r = out[2].to_doubles();
            for (std::size_t j = 0; j < col.size(); ++j) bad += !near(c[j], col[j]);
            for (std::size_t i = 0; i < row.size(); ++i) bad += !near(r[i], row[i]);
            CHECK(out[3].item() == mx);
            CHECK(out[4].to_doubles() == cmax);
            CHECK(out[5].to_doubles() == rmax);
            CHECK(bad == 0);
            // A NaN in the last row's last column (the tail of every run it is in).
            auto xn = xv;
            xn.back() = NAN;
            const auto outn = f({T64(s, xn).astype(dt)});
            CHECK(std::isnan(outn[0].item()));
            CHECK(std::isnan(outn[3].item()));
            CHECK(std::isnan(outn[4].to_doubles().back()));
            CHECK(std::isnan(outn[5].to_doubles().back()));
            CHECK(!std::isnan(outn[5].to_doubles().front()) == (s[0] > 1));
            // A NaN in the first column, halfway down: its column's sum and max are NaN.
            xn = xv;
            xn[static_cast<std::size_t>(s[0] / 2 * s[1])] = NAN;
            const auto outc = f({T64(s, xn).astype(dt)});
            CHECK(std::isnan(outc[1].to_doubles().front()));
            CHECK(std::isnan(outc[4].to_doubles().front()));
            CHECK(std::isnan(outc[1].to_doubles().back()) == (s[1] == 1));
            // The bits do not depend on the thread count (parts of fixed size, or whole rows
            // and column ranges).
            std::vector<std::vector<Tensor>> by_threads;
            for (int threads : {1, 3}) {
                set_num_threads(threads);
                by_threads.push_back(f({X}));
            }
            set_num_threads(0);
            for (std::size_t i = 0; i < out.size(); ++i) {
                CHECK(by_threads[0][i].to_doubles() == out[i].to_doubles());
                CHECK(by_threads[1][i].to_doubles() == out[i].to_doubles());
            }
        }
    }
}

TEST_CASE("fused sums of squares, absolute values and products: every layout against long double sums") {
    // The loop computes sum(x^2), sum(|x|) and sum(x * y) from its operands without storing
    // the squares (float32 sums over every axis in one pass of 4 x 16 lanes, added in double
    // every 1024 terms); checked over contiguous inputs, a broadcast operand, sums over one
    // axis, and a square also returned elementwise (not fused), in float32 and float64.
    for (DType dt : {DType::float32, DType::float64}) {
        for (Shape s : {Shape{784, 500}, Shape{3, 1037}, Shape{7, 5}, Shape{70001, 1}}) {
            CAPTURE(dtype_name(dt));
            CAPTURE(shape_string(s));
            Tensor X = testing::random_tensor(s, 11).astype(dt), Y = testing::random_tensor(s, 12).astype(dt);
            Tensor R = testing::random_tensor({s[1]}, 13).astype(dt);  // broadcast along rows
            Variable x = matrix("x", dt), y = matrix("y", dt), r = vector("r", dt);
            Function f = function({x, y, r}, {sqr(x).sum(), abs(x).sum(), (x * y).sum(), (x * r.dimshuffle({-1, 0})).sum(),
                                              sqr(x).sum({0}), (x * y).sum({1})});
            Function g = function({x}, {sqr(x), sqr(x).sum()});  // the square is an output too
            const auto out = f({X, Y, R});
            const auto xv = X.to_doubles(), yv = Y.to_doubles(), rv = R.to_doubles();
            long double sq = 0, ab = 0, xy = 0, xr = 0;
            std::vector<long double> col(static_cast<std::size_t>(s[1]), 0), row(static_cast<std::size_t>(s[0]), 0);
            for (std::int64_t i = 0; i < s[0]; ++i) {
                for (std::int64_t j = 0; j < s[1]; ++j) {
                    const std::size_t k = static_cast<std::size_t>(i * s[1] + j);
                    sq += static_cast<long double>(xv[k]) * xv[k];
                    ab += std::abs(static_cast<long double>(xv[k]));
                    xy += static_cast<long double>(xv[k]) * yv[k];
                    xr += static_cast<long double>(xv[k]) * rv[static_cast<std::size_t>(j)];
                    col[static_cast<std::size_t>(j)] += static_cast<long double>(xv[k]) * xv[k];
                    row[static_cast<std::size_t>(i)] += static_cast<long double>(xv[k]) * yv[k];
                }
            }
            // float32: each product rounded to float, sums kept near double (Theano accumulates
            // float32 sums in float64): relative 1e-6 of the sum of magnitudes.
            const double tol = dt == DType::float32 ? 1e-6 : 1e-13;
            auto near = [&](double got, long double want, long double scale) {
                return std::abs(static_cast<long double>(got) - want) <= tol * scale;
            };
            CHECK(near(out[0].item(), sq, sq));
            CHECK(near(out[1].item(), ab, ab));
            CHECK(near(out[2].item(), xy, ab));
            CHECK(near(out[3].item(), xr, ab));
            const auto cv = out[4].to_doubles(), rw = out[5].to_doubles();
            for (std::size_t j = 0; j < col.size(); ++j) CHECK(near(cv[j], col[j], col[j] + 1e-30L));
            for (std::size_t i = 0; i < row.size(); ++i) CHECK(near(rw[i], row[i], ab));
            const auto both = g({X});
            CHECK(near(both[1].item(), sq, sq));
            const double x0 = dt == DType::float32 ? static_cast<double>(static_cast<float>(xv[0]) * static_cast<float>(xv[0]))
                                                   : xv[0] * xv[0];
            CHECK(both[0].to_doubles()[0] == x0);
        }
    }
}

TEST_CASE("dot for matrix-matrix, matrix-vector, vector-matrix and vector-vector") {
    Variable A = matrix("A"), B = matrix("B"), u = vector("u"), v = vector("v");
    Tensor Av = T64({2, 3}, {1, 2, 3, 4, 5, 6});
    Tensor Bv = T64({3, 2}, {1, 0, 0, 1, 2, 2});
    Tensor uv = T64({3}, {1, -1, 2});
    Tensor vv = T64({2}, {3, 4});
    CHECK(eval1({A, B}, dot(A, B), {Av, Bv}).to_doubles() == std::vector<double>{7, 8, 16, 17});
    CHECK(eval1({A, u}, dot(A, u), {Av, uv}).to_doubles() == std::vector<double>{5, 11});
    CHECK(eval1({v, A}, dot(v, A), {vv, Av}).to_doubles() == std::vector<double>{19, 26, 33});
    CHECK(eval1({u}, dot(u, u), {uv}).to_doubles() == std::vector<double>{6});
    // Transposed operands are read in place.
    CHECK(eval1({A}, dot(A, A.T()), {Av}).to_doubles() == std::vector<double>{14, 32, 32, 77});
    CHECK(eval1({A}, dot(A.T(), A), {Av}).to_doubles() ==
          std::vector<double>{17, 22, 27, 22, 29, 36, 27, 36, 45});
    CompileOptions plain;
    plain.rewrites.none = true;
    Function f = function({A, B}, {dot(A, B)}, {}, {}, plain);
    CHECK_THROWS_WITH_AS(f({Av, Av}), "Dot: shapes (2, 3) (input 0) and (2, 3) (input 1) are not aligned: 3 != 2",
                         UsageError);
    Function g = function({A, B}, {dot(A, B)});  // specialised to Dot22
    CHECK_THROWS_WITH_AS(g({Av, Av}), "Dot22{N,N}: shapes (2, 3) (input 0) and (2, 3) (input 1) are not aligned: 3 != 2",
                         UsageError);
    CHECK(dot(fmatrix("a"), fmatrix("b")).dtype() == DType::float32);
}

TEST_CASE("gemm computes beta*C + alpha*op(A)op(B) with transpose flags") {
    Variable C = matrix("C"), A = matrix("A"), B = matrix("B");
    Tensor Cv = T64({2, 2}, {1, 1, 1, 1});
    Tensor Av = T64({3, 2}, {1, 2, 3, 4, 5, 6});  // used as A^T: (2, 3)
    Tensor Bv = T64({3, 2}, {1, 0, 0, 1, 1, 1});
    Variable g = gemm(C, constant(-2.0), A, B, constant(3.0), true, false);
    // A^T B = [[6, 8], [8, 10]]
    CHECK(eval1({C, A, B}, g, {Cv, Av, Bv}).to_doubles() == std::vector<double>{-9, -13, -13, -17});
    CHECK(Gemm(true, false).name() == "Gemm{T,N}");
}

TEST_CASE("products of every shape class agree with a direct sum, in both float dtypes and threads") {
    // Short sides (a minibatch of rows, a rank-k update) take the register-blocked kernels,
    // long ones Eigen; transposed operands arrive as flags or as transposed views.
    struct Case {
        std::int64_t m, k, n;
    };
    const std::vector<Case> cases = {{1, 1, 1},   {3, 5, 2},    {20, 784, 37}, {7, 33, 65},
                                     {784, 40, 50}, {65, 70, 66}, {10, 3, 300},  {4, 17, 33},
                                     {600, 784, 10}, {784, 600, 10}};  // x W by rows; x^T dL by slices of k
    for (DType dt : {DType::float64, DType::float32}) {
        for (int threads : {1, 2}) {
            set_num_threads(threads);
            for (const auto& c : cases) {
                for (int flags = 0; flags < 4; ++flags) {
                    const bool ta = flags & 1, tb = flags & 2;
                    CAPTURE(c.m);
                    CAPTURE(c.k);
                    CAPTURE(c.n);
                    CAPTURE(flags);
                    CAPTURE(threads);
                    Tensor av = random_tensor(ta ? Shape{c.k, c.m} : Shape{c.m, c.k}, 1).astype(dt);
                    Tensor bv = random_tensor(tb ? Shape{c.n, c.k} : Shape{c.k, c.n}, 2).astype(dt);
                    Tensor cv = random_tensor({c.m, c.n}, 3).astype(dt);
                    Variable a = matrix("a", dt), b = matrix("b", dt), cc = matrix("c", dt);
                    Variable opa = ta ? a.T() : a, opb = tb ? b.T() : b;
                    Function f = function({a, b, cc}, {dot(opa, opb), cc * 0.5 - 0.25 * dot(opa, opb)});
                    auto got = f({av, bv, cv});
                    std::vector<double> want(static_cast<std::size_t>(c.m * c.n)), upd(want.size());
                    for (std::int64_t i = 0; i < c.m; ++i) {
                        for (std::int64_t j = 0; j < c.n; ++j) {
                            double s = 0;
                            for (std::int64_t p = 0; p < c.k; ++p) {
                                s += (ta ? av.at({p, i}) : av.at({i, p})) * (tb ? bv.at({j, p}) : bv.at({p, j}));
                            }
                            want[static_cast<std::size_t>(i * c.n + j)] = s;
                            upd[static_cast<std::size_t>(i * c.n + j)] = 0.5 * cv.at({i, j}) - 0.25 * s;
                        }
                    }
                    const double tol = dt == DType::float32 ? 2e-5 * std::sqrt(static_cast<double>(c.k)) : 1e-12;
                    CHECK(close(got[0].to_doubles(), want, tol));
                    CHECK(close(got[1].to_doubles(), upd, tol));
                }
            }
        }
    }
    set_num_threads(0);
}

TEST_CASE("gemm_slice names the shapes that do not agree") {
    std::vector<float> a(6), b(12), c(8);
    CHECK_THROWS_WITH_AS(gemm_slice<float>(c.data(), 2, 4, 0, 4, 1.f, a.data(), 2, 3, false, b.data(), 4, 3, false, 0.f),
                         "gemm_slice: out (2 x 4), columns [0, 4), op(A) (2 x 3), op(B) (4 x 3) do not agree", UsageError);
    CHECK_THROWS_WITH_AS(gemm_slice<float>(c.data(), 2, 4, 3, 5, 1.f, a.data(), 2, 3, false, b.data(), 3, 4, false, 0.f),
                         "gemm_slice: out (2 x 4), columns [3, 5), op(A) (2 x 3), op(B) (3 x 4) do not agree", UsageError);
    // A valid slice: columns 1..3 of A B with A = 1, B = 2 everywhere; the rest untouched.
    std::fill(a.begin(), a.end(), 1.f);
    std::fill(b.begin(), b.end(), 2.f);
    std::fill(c.begin(), c.end(), -1.f);
    gemm_slice<float>(c.data(), 2, 4, 1, 3, 1.f, a.data(), 2, 3, false, b.data(), 3, 4, false, 0.f);
    CHECK(c == std::vector<float>{-1, 6, 6, -1, -1, 6, 6, -1});
}

TEST_CASE("dot beyond matrices as numpy: a scalar scales, higher ranks sum a's last axis with b's second-to-last") {
    Variable s = scalar("s");
    Variable m = matrix("m");
    Variable v = vector("v");
    Variable t3 = tensor3("t3");
    const Tensor mv = random_tensor({3, 4}, 41), tv = random_tensor({2, 3, 4}, 42), t4v = random_tensor({2, 4, 5}, 43);
    const Tensor vv = random_tensor({4}, 44);
    // A scalar operand scales the other, either side.
    std::vector<double> twice = mv.to_doubles();
    for (auto& e : twice) e *= 2;
    CHECK(function({s, m}, {dot(s, m)})({2.0, mv})[0].to_doubles() == twice);
    CHECK(function({s, m}, {dot(m, s)})({2.0, mv})[0].to_doubles() == twice);
    // dot(t3 (2,3,4), m (4,5)) = sum_k t3[i,j,k] m[k,l]: shape (2, 3, 5).
    Variable m45 = matrix("m45");
    const Tensor m45v = random_tensor({4, 5}, 45);
    const Tensor r = function({t3, m45}, {dot(t3, m45)})({tv, m45v})[0];
    CHECK(r.shape() == Shape{2, 3, 5});
    // dot(m (3,4), t3b (2,4,5)) = sum_k m[i,k] t3b[j,k,l]: shape (3, 2, 5).
    Variable t3b = tensor3("t3b");
    const Tensor r2 = function({m, t3b}, {dot(m, t3b)})({mv, t4v})[0];
    CHECK(r2.shape() == Shape{3, 2, 5});
    // dot(t3 (2,3,4), v (4)): shape (2, 3).
    const Tensor r3 = function({t3, v}, {dot(t3, v)})({tv, vv})[0];
    CHECK(r3.shape() == Shape{2, 3});
    const auto t = tv.to_doubles(), w = m45v.to_doubles(), mm = mv.to_doubles(), b = t4v.to_doubles(), vx = vv.to_doubles();
    std::vector<double> want(30, 0), want2(30, 0), want3(6, 0);
    for (int i = 0; i < 2; ++i)
        for (int j = 0; j < 3; ++j)
            for (int k = 0; k < 4; ++k) {
                for (int l = 0; l < 5; ++l) want[(i * 3 + j) * 5 + l] += t[(i * 3 + j) * 4 + k] * w[k * 5 + l];
                want3[i * 3 + j] += t[(i * 3 + j) * 4 + k] * vx[k];
            }
    for (int i = 0; i < 3; ++i)
        for (int j = 0; j < 2; ++j)
            for (int k = 0; k < 4; ++k)
                for (int l = 0; l < 5; ++l) want2[(i * 2 + j) * 5 + l] += mm[i * 4 + k] * b[(j * 4 + k) * 5 + l];
    CHECK(close(r.to_doubles(), want, 1e-14));
    CHECK(close(r2.to_doubles(), want2, 1e-14));
    CHECK(close(r3.to_doubles(), want3, 1e-14));
    // Gradients through the reshaped product agree with finite differences.
    VerifyGradReport rep = verify_grad([](auto x) { return dot(x[0], x[1]); }, {tv, m45v});
    CHECK(rep.n_checked > 0);
    rep = verify_grad([](auto x) { return dot(x[0], x[1]); }, {mv, t4v});
    CHECK(rep.n_checked > 0);
}
