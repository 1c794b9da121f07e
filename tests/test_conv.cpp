// conv2d and pool_2d: values against nested loops written here from the definitions, hand
// computations, verify_grad of every op and of the gradient ops, errors.
#include <doctest/doctest.h>

#include <bit>
#include <cmath>
#include <limits>

#include <fmt/format.h>

#include "support/helpers.hpp"

using namespace theanine;
using namespace theanine::testing;

namespace {

using Fn = std::function<Variable(const std::vector<Variable>&)>;

Tensor rt(const Shape& s, std::uint32_t seed, double lo = -1, double hi = 1) { return random_tensor(s, seed, lo, hi); }

std::vector<double> values(const Tensor& t) {
    const Tensor c = t.astype(DType::float64).contiguous();
    return std::vector<double>(c.data<double>(), c.data<double>() + c.size());
}

// The inner product <a, b> of two tensors of the same size, summed in order in double.
double inner(const Tensor& a, const Tensor& b) {
    const std::vector<double> va = values(a), vb = values(b);
    double s = 0;
    for (std::size_t i = 0; i < va.size(); ++i) s += va[i] * vb[i];
    return s;
}

// ---- conv2d from its definition: out[n,f,y,x] = sum in_pad[n,c,y*s+i*d, x*s+j*d] w[f,c,i',j'].
struct ConvCase {
    BorderMode border;
    std::array<std::int64_t, 2> stride{1, 1};
    std::array<std::int64_t, 2> dilation{1, 1};
    bool flip = true;
    std::int64_t groups = 1;
};

std::int64_t pad_of(const ConvCase& c, int axis, std::int64_t k) {
    const std::int64_t d = c.dilation[axis];
    switch (c.border.kind) {
        case BorderMode::Kind::valid: return 0;
        case BorderMode::Kind::full: return d * (k - 1);
        case BorderMode::Kind::half: return d * (k / 2);
        case BorderMode::Kind::explicit_pad: return axis == 0 ? c.border.rows : c.border.cols;
    }
    return 0;
}

Tensor reference_conv(const Tensor& x, const Tensor& w, const ConvCase& c) {
    const std::int64_t N = x.dim(0), C = x.dim(1), H = x.dim(2), W = x.dim(3);
    const std::int64_t F = w.dim(0), KH = w.dim(2), KW = w.dim(3), Cg = w.dim(1), Fg = F / c.groups;
    const std::int64_t ph = pad_of(c, 0, KH), pw = pad_of(c, 1, KW);
    const std::int64_t OH = (H + 2 * ph - c.dilation[0] * (KH - 1) - 1) / c.stride[0] + 1;
    const std::int64_t OW = (W + 2 * pw - c.dilation[1] * (KW - 1) - 1) / c.stride[1] + 1;
    std::vector<double> xv = values(x), wv = values(w), o(static_cast<std::size_t>(N * F * OH * OW), 0.0);
    for (std::int64_t n = 0; n < N; ++n)
        for (std::int64_t f = 0; f < F; ++f)
            for (std::int64_t y = 0; y < OH; ++y)
                for (std::int64_t xo = 0; xo < OW; ++xo) {
                    double s = 0;
                    // Filter f sees the Cg channels of its group f / Fg.
                    for (std::int64_t cw = 0; cw < Cg; ++cw)
                        for (std::int64_t i = 0; i < KH; ++i)
                            for (std::int64_t j = 0; j < KW; ++j) {
                                const std::int64_t iy = y * c.stride[0] + i * c.dilation[0] - ph;
                                const std::int64_t ix = xo * c.stride[1] + j * c.dilation[1] - pw;
                                if (iy < 0 || iy >= H || ix < 0 || ix >= W) continue;
                                const std::int64_t wi = c.flip ? KH - 1 - i : i, wj = c.flip ? KW - 1 - j : j;
                                const std::int64_t ch = f / Fg * Cg + cw;
                                s += xv[static_cast<std::size_t>(((n * C + ch) * H + iy) * W + ix)] *
                                     wv[static_cast<std::size_t>(((f * Cg + cw) * KH + wi) * KW + wj)];
                            }
                    o[static_cast<std::size_t>(((n * F + f) * OH + y) * OW + xo)] = s;
                }
    return T64({N, F, OH, OW}, o);
}

Conv2dArgs args_of(const ConvCase& c) {
    Conv2dArgs a;
    a.border_mode = c.border;
    a.subsample = c.stride;
    a.filter_dilation = c.dilation;
    a.filter_flip = c.flip;
    a.num_groups = c.groups;
    return a;
}

std::string case_name(const ConvCase& c) {
    return fmt::format("{} stride ({}, {}) dilation ({}, {}) {} groups {}", c.border.str(), c.stride[0], c.stride[1],
                       c.dilation[0], c.dilation[1], c.flip ? "conv" : "corr", c.groups);
}

std::vector<ConvCase> conv_cases() {
    std::vector<ConvCase> cs;
    for (BorderMode b : {BorderMode("valid"), BorderMode("full"), BorderMode("half"), BorderMode(1, 2)}) {
        for (std::array<std::int64_t, 2> s : {std::array<std::int64_t, 2>{1, 1}, {2, 3}}) {
            for (std::array<std::int64_t, 2> d : {std::array<std::int64_t, 2>{1, 1}, {2, 1}}) {
                for (bool flip : {true, false}) cs.push_back({b, s, d, flip});
            }
        }
    }
    return cs;
}

void check_grad(const std::string& name, const Fn& fn, const std::vector<Tensor>& pts, double eps = 1e-6) {
    CAPTURE(name);
    VerifyGradReport r;
    VerifyGradOptions options;
    options.eps = eps;
    CHECK_NOTHROW(r = verify_grad(fn, pts, options));
    CHECK(r.n_checked > 0);
}

}  // namespace

TEST_CASE("conv2d: a hand-computed convolution and correlation") {
    // One 3x3 image, one 2x2 filter [[1, 2], [3, 4]].
    Tensor x = T64({1, 1, 3, 3}, {1, 2, 3, 4, 5, 6, 7, 8, 9});
    Tensor w = T64({1, 1, 2, 2}, {1, 2, 3, 4});
    Variable xs = tensor4("x"), ws = tensor4("w");
    // Correlation: top-left window [[1,2],[4,5]] . [[1,2],[3,4]] = 1 + 4 + 12 + 20 = 37.
    CHECK(values(eval1({xs, ws}, conv2d(xs, ws, {.filter_flip = false}), {x, w})) ==
          std::vector<double>{37, 47, 67, 77});
    // Convolution flips the filter: [[1,2],[4,5]] . [[4,3],[2,1]] = 4 + 6 + 8 + 5 = 23.
    CHECK(values(eval1({xs, ws}, conv2d(xs, ws), {x, w})) == std::vector<double>{23, 33, 53, 63});
    // full: 4x4, the corner sees only x[0,0] * w[0,0] = 1.
    Tensor full = eval1({xs, ws}, conv2d(xs, ws, {.border_mode = "full"}), {x, w});
    CHECK(full.shape() == Shape{1, 1, 4, 4});
    CHECK(values(full)[0] == 1.0);
    CHECK(values(full)[15] == 36.0);  // x[2,2] * w[1,1] = 9 * 4
    // Stride 2 over full: rows/cols 0 and 2 of the full result.
    Tensor strided = eval1({xs, ws}, conv2d(xs, ws, {.border_mode = "full", .subsample = {2, 2}}), {x, w});
    const auto fv = values(full);
    CHECK(values(strided) == std::vector<double>{fv[0], fv[2], fv[8], fv[10]});
}

TEST_CASE("conv2d: every border mode, stride, dilation and flip against nested loops, float64 and float32") {
    Tensor x = rt({3, 2, 7, 6}, 1), w = rt({4, 2, 3, 2}, 2);
    Variable xs = tensor4("x"), ws = tensor4("w");
    for (const ConvCase& c : conv_cases()) {
        CAPTURE(case_name(c));
        Tensor got = eval1({xs, ws}, conv2d(xs, ws, args_of(c)), {x, w});
        Tensor want = reference_conv(x, w, c);
        REQUIRE(got.shape() == want.shape());
        CHECK(close(values(got), values(want), 1e-13));
    }
    Variable xf = tensor4("xf", DType::float32), wf = tensor4("wf", DType::float32);
    Tensor x32 = x.astype(DType::float32), w32 = w.astype(DType::float32);
    for (const ConvCase& c : {ConvCase{"valid"}, ConvCase{"half", {2, 2}}, ConvCase{"full", {1, 1}, {2, 2}, false}}) {
        CAPTURE(case_name(c));
        Tensor got = eval1({xf, wf}, conv2d(xf, wf, args_of(c)), {x32, w32});
        CHECK(got.dtype() == DType::float32);
        CHECK(close(values(got), values(reference_conv(x32, w32, c)), 1e-5));
    }
    // 1x1 filters at stride 1 read the image directly (no unrolling).
    Tensor w1 = rt({5, 2, 1, 1}, 3);
    CHECK(close(values(eval1({xs, ws}, conv2d(xs, ws), {x, w1})), values(reference_conv(x, w1, {})), 1e-13));
}

TEST_CASE("conv2d: grouped convolution (num_groups) against nested loops, its gradients and errors") {
    // 4 channels in 2 groups, 6 filters (3 per group) of 2 channels each.
    Tensor x = rt({2, 4, 6, 5}, 31), w = rt({6, 2, 3, 2}, 32);
    Variable xs = tensor4("x"), ws = tensor4("w");
    std::vector<ConvCase> cases{{"valid", {1, 1}, {1, 1}, true, 2}, {"full", {2, 1}, {1, 1}, false, 2},
                                {"half", {1, 2}, {2, 1}, true, 2}, {BorderMode(1, 0), {1, 1}, {1, 1}, true, 2}};
    for (const ConvCase& c : cases) {
        CAPTURE(case_name(c));
        Tensor got = eval1({xs, ws}, conv2d(xs, ws, args_of(c)), {x, w});
        CHECK(close(values(got), values(reference_conv(x, w, c)), 1e-13));
        check_grad("grouped " + case_name(c), [&](auto v) { return conv2d(v[0], v[1], args_of(c)); }, {x, w});
        // Second order through both gradient ops. The cost is of degree 6 and about 1e4 here:
        // its rounding (a few ulp of 1e4) over a difference step of 1e-6 would be as large as
        // the tolerance, so the step is 1e-5.
        check_grad("grouped grad of grad " + case_name(c), [&](auto v) {
            Variable out = conv2d(v[0], v[1], args_of(c));
            return sqr(grad(sqr(out).sum(), v[1])).sum() + sqr(grad(sqr(out).sum(), v[0])).sum();
        }, {x, w}, 1e-5);
    }
    // Each group is the ordinary convolution of its channels with its filters.
    Tensor whole = eval1({xs, ws}, conv2d(xs, ws, {.num_groups = 2}), {x, w});
    auto part = [&](const Variable& v, std::int64_t axis, std::int64_t a, std::int64_t b, const Tensor& t) {
        return axis == 0 ? eval1({v}, v[{slice(a, b, std::nullopt)}], {t})
                         : eval1({v}, v[{slice(std::nullopt, std::nullopt, std::nullopt), slice(a, b, std::nullopt)}], {t});
    };
    Tensor first = eval1({xs, ws}, conv2d(xs, ws), {part(xs, 1, 0, 2, x), part(ws, 0, 0, 3, w)});
    Tensor second = eval1({xs, ws}, conv2d(xs, ws), {part(xs, 1, 2, 4, x), part(ws, 0, 3, 6, w)});
    Tensor joined = eval1({xs, ws}, concatenate({xs, ws}, 1), {first, second});
    CHECK(values(whole) == values(joined));
    Function f = function({xs, ws}, {conv2d(xs, ws, {.num_groups = 2})});
    CHECK_THROWS_WITH_AS(f({rt({2, 4, 6, 5}, 1), rt({6, 4, 3, 2}, 2)}),
                         doctest::Contains("Conv2d: the input of shape (2, 4, 6, 5) has 4 channels but the filters of "
                                           "shape (6, 4, 3, 2) expect 8 (4 per group, num_groups=2)"),
                         UsageError);
    CHECK_THROWS_WITH_AS(f({rt({2, 4, 6, 5}, 1), rt({5, 2, 3, 2}, 2)}),
                         doctest::Contains("5 filters (shape (5, 2, 3, 2)) do not split into num_groups=2 groups"),
                         UsageError);
    CHECK_THROWS_WITH_AS(conv2d(xs, ws, {.num_groups = 0}), doctest::Contains("num_groups 0 must be positive"),
                         UsageError);
}

TEST_CASE("conv2d: gradients wrt input and filters by finite differences over every case") {
    Tensor x = rt({2, 2, 5, 6}, 4), w = rt({3, 2, 3, 2}, 5);
    for (const ConvCase& c : conv_cases()) {
        check_grad(case_name(c), [&](auto v) { return conv2d(v[0], v[1], args_of(c)); }, {x, w});
    }
}

TEST_CASE("conv2d: the gradient ops are differentiable (second order) and their own gradients close the family") {
    Tensor x = rt({2, 2, 5, 4}, 6), w = rt({3, 2, 2, 3}, 7);
    for (const ConvCase& c : {ConvCase{"valid"}, ConvCase{"full", {2, 1}}, ConvCase{"half", {1, 2}, {2, 1}, false},
                              ConvCase{BorderMode(1, 0), {2, 2}}}) {
        const ConvParams p{c.border, c.stride, c.dilation, c.flip};
        const Shape top = reference_conv(x, w, c).shape();
        Tensor g = rt(top, 8);
        // gradInputs(w, top) wrt w and top; gradWeights(x, top) wrt x and top.
        check_grad("gradInputs " + case_name(c),
                   [&](auto v) { return conv2d_grad_inputs(v[0], v[1], constant(I64({2}, {x.dim(2), x.dim(3)})), p); },
                   {w, g});
        check_grad("gradWeights " + case_name(c),
                   [&](auto v) { return conv2d_grad_weights(v[0], v[1], constant(I64({2}, {w.dim(2), w.dim(3)})), p); },
                   {x, g});
        // Through grad(): d/dx and d/dw of sum(grad(sum(conv^2), w)^2) and of the input gradient.
        check_grad("grad of grad " + case_name(c),
                   [&](auto v) {
                       Variable out = conv2d(v[0], v[1], args_of(c));
                       Variable gw = grad(sqr(out).sum(), v[1]);
                       Variable gx = grad(sqr(out).sum(), v[0]);
                       return sqr(gw).sum() + (gx * gx).sum();
                   },
                   {x, w});
    }
}

TEST_CASE("conv2d: the gradient ops match the transposed products they stand for") {
    // <top, conv(x, w)> = <gradWeights(x, top), w> = <gradInputs(w, top), x> for every case.
    Tensor x = rt({2, 3, 6, 5}, 9), w = rt({2, 3, 3, 3}, 10);
    Variable xs = tensor4("x"), ws = tensor4("w"), ts = tensor4("t");
    for (const ConvCase& c : conv_cases()) {
        CAPTURE(case_name(c));
        const ConvParams p{c.border, c.stride, c.dilation, c.flip};
        Tensor conv = reference_conv(x, w, c);
        Tensor top = rt(conv.shape(), 11);
        const double lhs = inner(conv, top);
        Tensor gw = eval1({xs, ws, ts}, conv2d_grad_weights(xs, ts, make_vector({ws.shape(2), ws.shape(3)}), p),
                          {x, w, top});
        Tensor gx = eval1({xs, ws, ts}, conv2d_grad_inputs(ws, ts, make_vector({xs.shape(2), xs.shape(3)}), p),
                          {x, w, top});
        CHECK(inner(gw, w) == doctest::Approx(lhs).epsilon(1e-12));
        CHECK(inner(gx, x) == doctest::Approx(lhs).epsilon(1e-12));
    }
}

TEST_CASE("conv2d and its gradient ops on rows of several vectors: every case, float64 and float32") {
    // Output rows of 6 to 24 values: the unrolling copies and adds whole 32-byte chunks and the
    // rest (float32: 8 values a chunk, float64: 4), with padding cutting rows at both ends.
    Tensor x = rt({2, 2, 9, 21}, 14), w = rt({3, 2, 3, 4}, 15);
    for (DType dt : {DType::float64, DType::float32}) {
        const double tol = dt == DType::float64 ? 1e-12 : 2e-5;
        Variable xs = tensor4("x", dt), ws = tensor4("w", dt), ts = tensor4("t", dt);
        const Tensor xd = x.astype(dt), wd = w.astype(dt);
        for (const ConvCase& c : conv_cases()) {
            CAPTURE(case_name(c));
            CAPTURE(dtype_name(dt));
            const ConvParams p{c.border, c.stride, c.dilation, c.flip};
            Tensor want = reference_conv(xd, wd, c);
            Tensor got = eval1({xs, ws}, conv2d(xs, ws, args_of(c)), {xd, wd});
            REQUIRE(got.shape() == want.shape());
            CHECK(close(values(got), values(want), tol));
            // <top, conv(x, w)> = <gradWeights(x, top), w> = <gradInputs(w, top), x>.
            Tensor top = rt(want.shape(), 16).astype(dt);
            const double lhs = inner(want, top);
            Tensor gw = eval1({xs, ws, ts}, conv2d_grad_weights(xs, ts, make_vector({ws.shape(2), ws.shape(3)}), p),
                              {xd, wd, top});
            Tensor gx = eval1({xs, ws, ts}, conv2d_grad_inputs(ws, ts, make_vector({xs.shape(2), xs.shape(3)}), p),
                              {xd, wd, top});
            CHECK(inner(gw, wd) == doctest::Approx(lhs).epsilon(tol * 10));
            CHECK(inner(gx, xd) == doctest::Approx(lhs).epsilon(tol * 10));
        }
    }
}

TEST_CASE("conv2d_transpose: the adjoint of conv2d, by hand and against the input gradient") {
    // A 2x2 input with a 2x2 filter, valid forward mode: the transpose is the full convolution.
    Variable xs = tensor4("x"), ws = tensor4("w"), ts = tensor4("t");
    Tensor in = T64({1, 1, 2, 2}, {1, 2, 3, 4}), w = T64({1, 1, 2, 2}, {1, 0, 0, 2});
    Tensor up = eval1({xs, ws}, conv2d_transpose(xs, ws, {1, 1, 3, 3}), {in, w});
    CHECK(up.shape() == Shape{1, 1, 3, 3});
    // The adjoint of a valid convolution is the full correlation with the same filter:
    // out[p] = sum_y in[y] w[K-1-p+y] per axis; worked by hand: [[2, 4, 0], [6, 9, 2], [0, 3, 4]].
    CHECK(values(up) == std::vector<double>{2, 4, 0, 6, 9, 2, 0, 3, 4});
    CHECK(values(up) == values(eval1({xs, ws}, conv2d(xs, ws, {.border_mode = "full", .filter_flip = false}), {in, w})));
    // Strided, padded, grouped: equal to the gradient of conv2d wrt its input.
    Tensor x = rt({2, 4, 7, 6}, 41), wg = rt({6, 2, 3, 3}, 42);
    const ConvCase c{BorderMode(1, 1), {2, 2}, {1, 1}, true, 2};
    Tensor top = rt(reference_conv(x, wg, c).shape(), 43);
    Tensor want = eval1({xs, ws, ts}, grad((conv2d(xs, ws, args_of(c)) * ts).sum(), xs), {x, wg, top});
    Tensor got = eval1({xs, ws, ts},
                       conv2d_transpose(ts, ws, {-1, -1, 7, 6},
                                        {.border_mode = BorderMode(1, 1), .input_dilation = {2, 2}, .num_groups = 2}),
                       {x, wg, top});
    CHECK(got.shape() == x.shape());
    CHECK(values(got) == values(want));
    check_grad("conv2d_transpose", [&](auto v) {
        return conv2d_transpose(v[0], v[1], {-1, -1, 7, 6}, {.border_mode = BorderMode(1, 1), .input_dilation = {2, 2},
                                                             .num_groups = 2});
    }, {top, wg});
    CHECK_THROWS_WITH_AS(conv2d_transpose(xs, ws, {1, 1, -1, 3}), doctest::Contains("must give the output's rows"),
                         UsageError);
}

TEST_CASE("conv2d: results do not depend on how many threads ran the parts") {
    Tensor x = rt({9, 3, 10, 9}, 12), w = rt({4, 3, 3, 3}, 13);
    Variable xs = tensor4("x"), ws = tensor4("w");
    Variable out = conv2d(xs, ws, {.border_mode = "half"});
    Variable cost = (sqr(out) * 0.5).sum();
    const std::vector<Variable> outs{out, grad(cost, ws), grad(cost, xs)};
    std::vector<Tensor> a = eval({xs, ws}, outs, {x, w}), b;
    {
        WorkerLimit one(1);
        b = eval({xs, ws}, outs, {x, w});
    }
    for (std::size_t i = 0; i < a.size(); ++i) CHECK(values(a[i]) == values(b[i]));
}

TEST_CASE("conv2d: errors name the op, the shapes and the user's line") {
    Variable xs = tensor4("x"), ws = tensor4("w");
    const int line = __LINE__; Function f = function({xs, ws}, {conv2d(xs, ws)});  // NOLINT: one line
    CHECK_THROWS_WITH_AS(f({rt({2, 3, 8, 8}, 1), rt({4, 2, 3, 3}, 2)}),
                         doctest::Contains("Conv2d: the input of shape (2, 3, 8, 8) has 3 channels but the filters of "
                                           "shape (4, 2, 3, 3) expect 2"),
                         UsageError);
    const std::string where = fmt::format("(node built at test_conv.cpp:{})", line);
    CHECK_THROWS_WITH_AS(f({rt({2, 3, 8, 8}, 1), rt({4, 2, 3, 3}, 2)}), doctest::Contains(where.c_str()), UsageError);
    CHECK_THROWS_WITH_AS(f({rt({1, 1, 4, 8}, 1), rt({1, 1, 5, 3}, 2)}),
                         doctest::Contains("Conv2d: filters of shape (1, 1, 5, 3) do not fit the input of shape "
                                           "(1, 1, 4, 8) (border mode valid"),
                         UsageError);
    Function declared = function({xs, ws}, {conv2d(xs, ws, {.input_shape = {{-1, 1, 28, 28}},
                                                            .filter_shape = {{20, 1, 5, 5}}})});
    CHECK_THROWS_WITH_AS(declared({rt({2, 1, 28, 27}, 1), rt({20, 1, 5, 5}, 2)}),
                         doctest::Contains("Conv2d: input 0 (input) has shape (2, 1, 28, 27) but input_shape was "
                                           "declared (None, 1, 28, 28)"),
                         UsageError);
    CHECK(declared({rt({3, 1, 28, 28}, 1), rt({20, 1, 5, 5}, 2)})[0].shape() == Shape{3, 20, 24, 24});
    CHECK_THROWS_WITH_AS(conv2d(xs, ws, {.input_shape = {{-1, 3, 28, 28}}, .filter_shape = {{20, 1, 5, 5}}}),
                         doctest::Contains("input_shape (None, 3, 28, 28) has 3 channels but filter_shape "
                                           "(20, 1, 5, 5) has 1"),
                         UsageError);
    CHECK_THROWS_WITH_AS(conv2d(xs, ws, {.border_mode = "same"}), doctest::Contains("border_mode \"same\""),
                         UsageError);
    CHECK_THROWS_WITH_AS(conv2d(xs, ws, {.subsample = {0, 1}}), doctest::Contains("subsample (0, 1)"), UsageError);
    CHECK_THROWS_WITH_AS(conv2d(matrix("m"), ws), doctest::Contains("4-d"), UsageError);
}

// ---------------------------------------------------------------- pooling

namespace {

// pool_2d from its definition: pad the image, windows [j*s, min(j*s+ws, padded)); max/sum/
// exc_pad over the real positions, inc_pad divides by the window's padded size.
Tensor reference_pool(const Tensor& x, std::array<std::int64_t, 2> ws, std::array<std::int64_t, 2> st,
                      std::array<std::int64_t, 2> pad, bool ignore_border, const std::string& mode) {
    const std::int64_t N = x.dim(0) * x.dim(1), H = x.dim(2), W = x.dim(3);
    auto outn = [&](std::int64_t v, int a) -> std::int64_t {
        v += 2 * pad[a];
        if (ignore_border) return v >= ws[a] ? (v - ws[a]) / st[a] + 1 : 0;
        // Window j starts at j*s below v; overlapping windows (s < ws) stop after the first
        // one that reaches the end.
        std::int64_t n = 1;
        while (n * st[a] < v && (st[a] >= ws[a] || (n - 1) * st[a] + ws[a] < v)) ++n;
        return n;
    };
    const std::int64_t OH = outn(H, 0), OW = outn(W, 1);
    std::vector<double> xv = values(x), o;
    for (std::int64_t n = 0; n < N; ++n)
        for (std::int64_t r = 0; r < OH; ++r)
            for (std::int64_t c = 0; c < OW; ++c) {
                const std::int64_t r0 = r * st[0], r1 = std::min(r0 + ws[0], H + 2 * pad[0]);
                const std::int64_t c0 = c * st[1], c1 = std::min(c0 + ws[1], W + 2 * pad[1]);
                double m = -std::numeric_limits<double>::infinity(), s = 0;
                int count = 0;
                for (std::int64_t i = r0; i < r1; ++i)
                    for (std::int64_t j = c0; j < c1; ++j) {
                        const std::int64_t ii = i - pad[0], jj = j - pad[1];
                        if (ii < 0 || ii >= H || jj < 0 || jj >= W) continue;
                        const double v = xv[static_cast<std::size_t>((n * H + ii) * W + jj)];
                        m = std::max(m, v);
                        s += v;
                        ++count;
                    }
                if (mode == "max") o.push_back(m);
                else if (mode == "sum") o.push_back(s);
                else if (mode == "average_exc_pad") o.push_back(s / count);
                else o.push_back(s / static_cast<double>((r1 - r0) * (c1 - c0)));
            }
    return T64({x.dim(0), x.dim(1), OH, OW}, o);
}

struct PoolCase {
    std::array<std::int64_t, 2> ws, stride, pad;
    bool ignore_border;
};

std::vector<PoolCase> pool_cases() {
    return {{{2, 2}, {2, 2}, {0, 0}, true},  {{2, 2}, {2, 2}, {0, 0}, false}, {{3, 2}, {1, 1}, {0, 0}, true},
            {{3, 2}, {1, 1}, {0, 0}, false}, {{3, 3}, {2, 2}, {0, 0}, false}, {{2, 3}, {3, 2}, {0, 0}, false},
            {{3, 3}, {2, 2}, {1, 2}, true},  {{2, 2}, {1, 1}, {1, 1}, true},  {{4, 4}, {4, 4}, {0, 0}, false},
            {{3, 3}, {3, 3}, {0, 0}, true}};
}

std::string pool_name(const PoolCase& c, const std::string& mode) {
    return fmt::format("{} ws ({}, {}) stride ({}, {}) pad ({}, {}) ignore_border {}", mode, c.ws[0], c.ws[1],
                       c.stride[0], c.stride[1], c.pad[0], c.pad[1], c.ignore_border);
}

const std::vector<std::string> kModes{"max", "sum", "average_inc_pad", "average_exc_pad"};

}  // namespace

TEST_CASE("pool_2d: hand-computed windows, partial borders kept or dropped") {
    // 3x5 image 0..14; 2x2 windows.
    std::vector<double> v(15);
    for (int i = 0; i < 15; ++i) v[static_cast<std::size_t>(i)] = i;
    Tensor x = T64({1, 1, 3, 5}, v);
    Variable xs = tensor4("x");
    CHECK(values(eval1({xs}, pool_2d(xs, {2, 2}, {.ignore_border = true}), {x})) == std::vector<double>{6, 8});
    // Kept partial windows: columns [4,5) and row [2,3).
    CHECK(values(eval1({xs}, pool_2d(xs, {2, 2}), {x})) == std::vector<double>{6, 8, 9, 11, 13, 14});
    CHECK(values(eval1({xs}, pool_2d(xs, {2, 2}, {.mode = "sum"}), {x})) ==
          std::vector<double>{12, 20, 13, 21, 25, 14});
    // inc_pad and exc_pad agree without padding: the partial window divides by what it covers.
    CHECK(values(eval1({xs}, pool_2d(xs, {2, 2}, {.mode = "average_inc_pad"}), {x})) ==
          std::vector<double>{3, 5, 6.5, 10.5, 12.5, 14});
    // Padding 1: the top-left 2x2 window covers only x[0,0] = 0; inc_pad divides by 4.
    Tensor inc = eval1({xs}, pool_2d(xs, {2, 2}, {.ignore_border = true, .pad = {1, 1}, .mode = "average_inc_pad"}),
                       {x});
    Tensor exc = eval1({xs}, pool_2d(xs, {2, 2}, {.ignore_border = true, .pad = {1, 1}, .mode = "average_exc_pad"}),
                       {x});
    CHECK(inc.shape() == Shape{1, 1, 2, 3});
    CHECK(values(inc)[1] == (1 + 2) / 4.0);
    CHECK(values(exc)[1] == (1 + 2) / 2.0);
    // Window (0, 2): padded rows [0, 2), cols [4, 6) hold x[0, 3] = 3 and x[0, 4] = 4.
    CHECK(values(inc)[2] == (3 + 4) / 4.0);
    CHECK(values(exc)[2] == (3 + 4) / 2.0);
    // Window (1, 2) lies inside the image: x[1:3, 3:5] = 8, 9, 13, 14.
    CHECK(values(inc)[5] == 11.0);
    CHECK(values(exc)[5] == 11.0);
}

TEST_CASE("pool_2d: every mode over strides, padding and borders against nested loops") {
    Tensor x = rt({2, 3, 7, 6}, 21);
    Variable xs = tensor4("x");
    for (const PoolCase& c : pool_cases()) {
        for (const std::string& mode : kModes) {
            CAPTURE(pool_name(c, mode));
            Tensor got = eval1({xs}, pool_2d(xs, c.ws, {c.ignore_border, c.stride, c.pad, mode}), {x});
            Tensor want = reference_pool(x, c.ws, c.stride, c.pad, c.ignore_border, mode);
            REQUIRE(got.shape() == want.shape());
            CHECK(close(values(got), values(want), 1e-14));
        }
    }
    // float32, and any number of leading axes.
    Variable x3 = tensor3("x3", DType::float32);
    Tensor t = rt({3, 7, 6}, 22).astype(DType::float32);
    Tensor got = eval1({x3}, pool_2d(x3, {3, 2}, {.stride = {{2, 1}}, .mode = "average_exc_pad"}), {t});
    Tensor want = reference_pool(T64({1, 3, 7, 6}, values(t)), {3, 2}, {2, 1}, {0, 0}, false, "average_exc_pad");
    CHECK(got.dtype() == DType::float32);
    CHECK(got.shape() == Shape{3, want.dim(2), want.dim(3)});
    CHECK(close(values(got), values(want), 1e-6));
}

TEST_CASE("pool_2d: gradients by finite differences, and the gradient of the gradient") {
    Tensor x = rt({2, 2, 7, 6}, 23);
    for (const PoolCase& c : pool_cases()) {
        for (const std::string& mode : kModes) {
            const PoolArgs a{c.ignore_border, c.stride, c.pad, mode};
            check_grad(pool_name(c, mode), [&](auto v) { return pool_2d(v[0], c.ws, a); }, {x});
            // The gradient as a function of (x, gz): linear in gz, piecewise constant in x.
            Tensor gz = rt(reference_pool(x, c.ws, c.stride, c.pad, c.ignore_border, mode).shape(), 24);
            check_grad("grad of " + pool_name(c, mode),
                       [&](auto v) { return grad((pool_2d(v[0], c.ws, a) * v[1]).sum(), v[0]); }, {x, gz});
        }
    }
    // Third order for max: MaxPoolGradGrad's own gradient is MaxPoolGrad.
    Tensor ggx = rt(x.shape(), 25);
    check_grad("max grad grad", [&](auto v) {
        Variable gx = grad((pool_2d(v[0], {3, 2}, {.stride = {{2, 1}}}) * v[1]).sum(), v[0]);
        Variable ggz = grad((gx * v[2]).sum(), v[1]);
        return ggz * v[1];
    }, {x, rt(reference_pool(x, {3, 2}, {2, 1}, {0, 0}, false, "max").shape(), 26), ggx});
}

TEST_CASE("pool_2d: max gives every input tied for the maximum the window's gradient") {
    Tensor x = T64({1, 1, 2, 4}, {5, 5, 1, 2, 0, 3, 2, 2});
    Variable xs = tensor4("x");
    Variable g = grad(pool_2d(xs, {2, 2}).sum(), xs);
    CHECK(values(eval1({xs}, g, {x})) == std::vector<double>{1, 1, 0, 1, 0, 0, 1, 1});
    // Overlapping windows add: stride 1 over a constant image gives each input its window count.
    Tensor ones = Tensor::full(DType::float64, {1, 1, 3, 3}, 1.0);
    Variable g2 = grad(pool_2d(xs, {2, 2}, {.ignore_border = true, .stride = {{1, 1}}}).sum(), xs);
    CHECK(values(eval1({xs}, g2, {ones})) == std::vector<double>{1, 2, 1, 2, 4, 2, 1, 2, 1});
}

TEST_CASE("pool_2d: 2x2 max and its gradient on short float32 rows: NaN, ties and non-finite gradients") {
    // Rows of 8 and 24 columns (4 and 12 windows: the scalar tail of the vectorised loops),
    // with NaN in each window position, ties and signed zeros; checked against nested loops.
    for (std::int64_t cols : {8, 24}) {
        const Shape s{3, 2, 6, cols};
        Tensor x = rt(s, 31).astype(DType::float32);
        float* xp = x.data<float>();
        const float nan = std::numeric_limits<float>::quiet_NaN(), inf = std::numeric_limits<float>::infinity();
        xp[0] = nan;                  // window (0, 0), top left
        xp[3] = nan;                  // window (0, 1), top right
        xp[cols + 4] = nan;           // window (0, 2), bottom left
        xp[cols + 7] = nan;           // window (0, 3), bottom right
        xp[2 * cols] = xp[2 * cols + 1] = 0.75f;  // a tie in window (1, 0)
        xp[4 * cols] = -0.0f;         // window (2, 0): -0 first, +0 after (the first wins a tie)
        xp[4 * cols + 1] = xp[5 * cols] = xp[5 * cols + 1] = 0.0f;
        Variable xs = tensor4("x", DType::float32), gzs = tensor4("gz", DType::float32);
        Variable z = pool_2d(xs, {2, 2});
        const Shape zs{3, 2, 3, cols / 2};
        Tensor gz = rt(zs, 32).astype(DType::float32);
        gz.data<float>()[cols / 2] = inf;      // window (1, 0): both tied inputs take it, the others 0
        gz.data<float>()[cols / 2 + 1] = nan;  // window (1, 1): its maximum takes NaN, the others 0
        CompileOptions opt;
        opt.on_unused_input = CompileOptions::UnusedInput::ignore;
        Function f = function({xs, gzs}, {z, grad((z * gzs).sum(), xs)}, {}, {}, opt);
        const auto out = f({x, gz});
        const float* zp = out[0].data<float>();
        const float* gp = out[1].data<float>();
        const float* gzp = gz.data<float>();
        for (std::int64_t sl = 0; sl < 6; ++sl) {
            for (std::int64_t r = 0; r < 3; ++r) {
                for (std::int64_t c = 0; c < cols / 2; ++c) {
                    const std::int64_t o = (sl * 3 + r) * (cols / 2) + c;
                    float m = 0;
                    bool any_nan = false;
                    for (int i = 0; i < 4; ++i) {
                        const float v = xp[sl * 6 * cols + (2 * r + i / 2) * cols + 2 * c + i % 2];
                        if (v != v) any_nan = true;
                        if (i == 0 || v > m) m = v;
                    }
                    INFO("cols ", cols, " slice ", sl, " window (", r, ", ", c, ")");
                    if (any_nan) {
                        CHECK(std::isnan(zp[o]));
                    } else {
                        CHECK(std::bit_cast<std::uint32_t>(zp[o]) == std::bit_cast<std::uint32_t>(m));
                    }
                    for (int i = 0; i < 4; ++i) {
                        const std::int64_t e = sl * 6 * cols + (2 * r + i / 2) * cols + 2 * c + i % 2;
                        const float want = xp[e] == zp[o] ? gzp[o] : 0.0f;
                        CHECK(std::bit_cast<std::uint32_t>(gp[e]) == std::bit_cast<std::uint32_t>(want));
                    }
                }
            }
        }
        // The spots set above, by hand: NaN windows, the tie sharing inf, -0 kept.
        for (std::int64_t c = 0; c < 4; ++c) CHECK(std::isnan(zp[c]));
        CHECK(zp[cols / 2] == 0.75f);
        CHECK(gp[2 * cols] == inf);
        CHECK(gp[2 * cols + 1] == inf);
        CHECK(gp[3 * cols] == 0.0f);
        CHECK(std::signbit(zp[2 * (cols / 2)]));
    }
}

TEST_CASE("pool_2d: errors") {
    Variable xs = tensor4("x");
    CHECK_THROWS_WITH_AS(pool_2d(xs, {2, 2}, {.mode = "average"}), doctest::Contains("mode \"average\""), UsageError);
    CHECK_THROWS_WITH_AS(pool_2d(xs, {2, 2}, {.pad = {1, 0}}),
                         doctest::Contains("padding (1, 0) needs ignore_border=true"), UsageError);
    CHECK_THROWS_WITH_AS(pool_2d(xs, {2, 2}, {.ignore_border = true, .pad = {2, 0}}),
                         doctest::Contains("pad (2, 0) must be smaller than ws (2, 2)"), UsageError);
    CHECK_THROWS_WITH_AS(pool_2d(vector("v"), {2, 2}), doctest::Contains("2 or more dims"), UsageError);
    CHECK_THROWS_WITH_AS(pool_2d(xs, {0, 2}), doctest::Contains("ws (0, 2)"), UsageError);
    CHECK_THROWS_WITH_AS(pool_2d(tensor4("i", DType::int64), {2, 2}), doctest::Contains("Pool: input 0"), UsageError);
}

TEST_CASE("a steady-state convolutional training step allocates no tensor storage") {
    // Two conv + pool layers, a dense layer and softmax regression with SGD updates: after the
    // first calls, every buffer (the unrolled receptive fields, the per-part filter gradients
    // included) is reused.
    config().floatX = DType::float64;
    Variable x = matrix("x"), y = lvector("y");
    RandomState rng(3), data(4);
    const std::int64_t batch = 6;
    models::LeNet5 net(rng, x, batch, {3, 4});
    const auto params = net.params();
    const std::vector<Variable> pv(params.begin(), params.end());
    const auto g = grad(net.negative_log_likelihood(y), pv);
    Updates up;
    for (std::size_t i = 0; i < params.size(); ++i) up.emplace_back(params[i], params[i] - 0.1 * g[i]);
    Function step = function({x, y}, {net.negative_log_likelihood(y)}, up);
    const Tensor xv = data.uniform(0, 1, {batch, 784});
    const Tensor yv = I64({batch}, {0, 1, 2, 3, 4, 5});
    step({xv, yv});
    step({xv, yv});
    const std::uint64_t before = storage_allocation_count();
    double cost = 0;
    for (int i = 0; i < 3; ++i) cost = step.scalar({xv, yv});
    CHECK(storage_allocation_count() == before);
    CHECK(std::isfinite(cost));
}
