// Shape ops: dimshuffle, reshape, flatten, basic and advanced indexing, arange.
#include <doctest/doctest.h>

#include <fmt/format.h>

#include "support/helpers.hpp"

using namespace theanine;
using namespace theanine::testing;

namespace {
Tensor iota(const Shape& s) {
    std::vector<double> v(static_cast<std::size_t>(shape_size(s)));
    for (std::size_t i = 0; i < v.size(); ++i) v[i] = static_cast<double>(i);
    return T64(s, v);
}
}  // namespace

TEST_CASE("shape, shape(i), reshape and flatten") {
    Variable t = tensor3("t");
    Tensor tv = iota({2, 3, 4});
    CHECK(eval1({t}, t.shape(), {tv}).to_doubles() == std::vector<double>{2, 3, 4});
    CHECK(eval1({t}, t.shape(-1), {tv}).to_doubles() == std::vector<double>{4});
    CHECK(eval1({t}, reshape(t, std::vector<std::int64_t>{6, -1}), {tv}).shape() == Shape{6, 4});
    CHECK(eval1({t}, t.flatten(), {tv}).shape() == Shape{24});
    CHECK(eval1({t}, t.flatten(2), {tv}).shape() == Shape{2, 12});
    Variable r = t.reshape({t.shape(0), t.shape(1) * t.shape(2)});
    CHECK(eval1({t}, r, {tv}).to_doubles() == tv.to_doubles());
    Function f = function({t}, {reshape(t, std::vector<std::int64_t>{5, 5})});
    CHECK_THROWS_WITH_AS(f({tv}), "Reshape{2}: cannot reshape input of shape (2, 3, 4) (24 elements) to (5, 5)", UsageError);
}

TEST_CASE("dimshuffle and transpose") {
    Variable m = matrix("m");
    Tensor mv = iota({2, 3});
    CHECK(eval1({m}, m.T(), {mv}).to_doubles() == std::vector<double>{0, 3, 1, 4, 2, 5});
    Variable d = m.dimshuffle({1, -1, 0});
    CHECK(d.type().str() == "float64 (F, T, F)");
    CHECK(eval1({m}, d, {mv}).shape() == Shape{3, 1, 2});
    CHECK_THROWS_WITH_AS(m.dimshuffle({0}), "DimShuffle{0}: drops axis 1, which is not broadcastable", UsageError);
}

TEST_CASE("subtensor with constant and symbolic bounds follows Python's rules") {
    Variable m = matrix("m");
    Tensor mv = iota({5, 2});
    Variable i = lscalar("i");
    auto rows = [&](const Variable& e, std::int64_t iv) { return eval1({m, i}, e, {mv, iv}).to_doubles(); };
    // The tutorial's minibatch slice.
    Variable batch = subtensor(m, {slice(i * 2, (i + 1) * 2)});
    CHECK(rows(batch, 1) == std::vector<double>{4, 5, 6, 7});
    CHECK(rows(batch, 2) == std::vector<double>{8, 9});  // clamps at the end
    CHECK(rows(subtensor(m, {slice(-2, std::nullopt)}), 0) == std::vector<double>{6, 7, 8, 9});
    CHECK(rows(subtensor(m, {slice(std::nullopt, std::nullopt, -2)}), 0) == std::vector<double>{8, 9, 4, 5, 0, 1});
    CHECK(rows(subtensor(m, {i, 1}), 3) == std::vector<double>{7});
    CHECK(rows(subtensor(m, {Idx::all(), 0}), 0) == std::vector<double>{0, 2, 4, 6, 8});
    CHECK(rows(index(m, {-1}), 0) == std::vector<double>{8, 9});
    Function f = function({m, i}, {subtensor(m, {i})});
    CHECK_THROWS_WITH_AS(f({mv, 7}), "Subtensor{int64}: index 7 out of bounds for axis 0 with size 5", UsageError);
    // The output is a view of the input.
    CHECK(subtensor(m, {slice(0, 2)}).node().op->view_map() == std::vector<int>{0});
}

TEST_CASE("set_subtensor and inc_subtensor") {
    Variable m = matrix("m");
    Tensor mv = iota({3, 2});
    Variable y = vector("y");
    Tensor yv = T64({2}, {10, 20});
    CHECK(eval1({m, y}, inc_subtensor(m, y, {1}), {mv, yv}).to_doubles() == std::vector<double>{0, 1, 12, 23, 4, 5});
    CHECK(eval1({m, y}, set_subtensor(m, y, {slice(0, 2)}), {mv, yv}).to_doubles() ==
          std::vector<double>{10, 20, 10, 20, 4, 5});
}

TEST_CASE("advanced indexing m[arange(n), y] and its increment") {
    Variable p = matrix("p");
    Variable y = lvector("y");
    Tensor pv = iota({3, 4});
    Tensor yv = I64({3}, {2, 0, 3});
    Variable picked = subtensor(p, {arange(p.shape(0)), y});
    CHECK(eval1({p, y}, picked, {pv, yv}).to_doubles() == std::vector<double>{2, 4, 11});
    CHECK(eval1({p, y}, subtensor(p, {y}), {pv, I64({2}, {2, 2})}).to_doubles() ==
          std::vector<double>{8, 9, 10, 11, 8, 9, 10, 11});
    // Duplicates accumulate.
    Variable inc = advanced_inc_subtensor(p, constant(T64({3}, {1, 1, 1})), {lvector("r"), lvector("c")});
    Function f = function({p, inc.node().inputs[2], inc.node().inputs[3]}, {inc});
    Tensor out = f({pv, I64({3}, {0, 0, 2}), I64({3}, {1, 1, 3})})[0];
    CHECK(out.at({0, 1}) == 3);
    CHECK(out.at({2, 3}) == 12);
    Function g = function({p, y}, {picked});
    CHECK_THROWS_WITH_AS(g({pv, I64({3}, {0, 4, 1})}),
                         "AdvancedSubtensor: index 4 (at position 1 of index vector 1) is out of bounds for axis 1 with size 4",
                         UsageError);
    CHECK_THROWS_WITH_AS(g({pv, I64({2}, {0, 1})}),
                         "AdvancedSubtensor: index vectors have different lengths: index 0 has 3, index 1 has 2", UsageError);
}

TEST_CASE("arange") {
    Variable n = lscalar("n");
    CHECK(eval1({n}, arange(n), {4}).to_doubles() == std::vector<double>{0, 1, 2, 3});
    CHECK(eval1({n}, arange(1, n, 2), {6}).to_doubles() == std::vector<double>{1, 3, 5});
    CHECK(eval1({n}, arange(n, 0, -2), {5}).to_doubles() == std::vector<double>{5, 3, 1});
}

TEST_CASE("concatenate joins along an axis, checks the other sizes, and upcasts") {
    Variable a = matrix("a"), b = matrix("b");
    Tensor av = iota({2, 3}), bv = T64({1, 3}, {10, 11, 12}), cv = T64({2, 1}, {7, 8});
    CHECK(eval1({a, b}, concatenate({a, b}, 0), {av, bv}).to_doubles() == std::vector<double>{0, 1, 2, 3, 4, 5, 10, 11, 12});
    CHECK(eval1({a, b}, concatenate({a, b}, -1), {av, cv}).to_doubles() == std::vector<double>{0, 1, 2, 7, 3, 4, 5, 8});
    CHECK(eval1({a, b}, concatenate({a, b}, 0), {av, bv}).shape() == Shape{3, 3});
    Function f = function({a, b}, {concatenate({a, b}, 0)});
    CHECK_THROWS_WITH_AS(f({av, cv}), "Join{axis=0}: input 1 has shape (2, 1) and input 0 has shape (2, 3): all sizes "
                                       "but axis 0 must agree", UsageError);
    Variable i = matrix("i", DType::int32);
    CHECK(concatenate({i, a}, 0).dtype() == DType::float64);
    const int line = __LINE__ + 1;
    CHECK_THROWS_WITH_AS(concatenate({a, vector("v")}, 0),
                         fmt::format("Join{{axis=0}}: input 1 is float64 vector but input 0 is float64 matrix (dtype and "
                                     "rank must agree) (node built at test_shape.cpp:{})", line).c_str(),
                         UsageError);
}

TEST_CASE("broadcast patterns known when the graph is built: reshape with a 1, flatten, random sizes") {
    auto pattern = [](const Variable& v) {
        std::string s;
        for (bool b : v.broadcastable()) s += b ? 'T' : 'F';
        return s;
    };
    Variable x = vector("x");
    CHECK(pattern(reshape(x, std::vector<std::int64_t>{1, -1})) == "TF");
    // A symbolic shape with a constant 1, or the size of a broadcastable axis.
    CHECK(pattern(reshape(x, {x.shape(0), constant(1.0, DType::int64)})) == "FT");
    Variable r = input(TensorType{DType::float64, {true, false, true}}, "r");
    CHECK(pattern(reshape(r, {r.shape(0), r.shape(2), r.shape(1)})) == "TTF");
    // flatten keeps the leading axes' pattern; the last is broadcastable when all it collapses are.
    CHECK(pattern(r.flatten(2)) == "TF");
    CHECK(pattern(r.flatten(1)) == "F");
    Variable ones = input(TensorType{DType::float64, {false, true, true}}, "ones");
    CHECK(pattern(ones.flatten(2)) == "FT");
    Function f = function({ones, x}, {ones.flatten(2) + x});  // (2, 1) + (3,) broadcasts to (2, 3)
    CHECK(f({T64({2, 1, 1}, {1, 2}), T64({3}, {10, 20, 30})})[0].to_doubles() ==
          std::vector<double>{11, 21, 31, 12, 22, 32});
    // Random draws of a size with a 1.
    RandomStreams rs(1);
    MRG_RandomStreams mrg(2);
    CHECK(pattern(rs.uniform(std::vector<std::int64_t>{1, 3})) == "TF");
    CHECK(pattern(mrg.normal(std::vector<std::int64_t>{4, 1})) == "FT");
    Variable m = matrix("m");
    const Tensor drawn_plus = function({m}, {rs.uniform(std::vector<std::int64_t>{1, 3}) + m})({T64({2, 3}, {0, 0, 0, 1, 1, 1})})[0];
    const auto d = drawn_plus.to_doubles();
    for (int j = 0; j < 3; ++j) CHECK(d[3 + j] == d[j] + 1);  // one row of draws added to both rows
}

TEST_CASE("arange with float bounds, as numpy's") {
    Variable a = scalar("a");
    Variable b = scalar("b");
    Variable st = scalar("st");
    Variable r = arange(a, b, st);
    CHECK(r.dtype() == DType::float64);
    Function f = function({a, b, st}, {r});
    // numpy.arange(0.5, 3.0, 0.5) = [0.5, 1, 1.5, 2, 2.5]; arange(1, 0, -0.3) = [1, 0.7, 0.4, 0.1] (start + i step).
    CHECK(f({0.5, 3.0, 0.5})[0].to_doubles() == std::vector<double>{0.5, 1, 1.5, 2, 2.5});
    CHECK(f({1.0, 0.0, -0.3})[0].to_doubles() == std::vector<double>{1, 1 - 0.3, 1 - 2 * 0.3, 1 - 3 * 0.3});
    CHECK(f({0.0, 1.0, -1.0})[0].size() == 0);
    CHECK(error_of([&] { f({0.0, 1.0, 0.0}); }) == "ARange: step cannot be zero");
    // A float bound with integer ones: all float; a float32 bound stays float32.
    Variable stop32 = scalar("s32", DType::float32);
    Variable r32 = arange(0, stop32);
    CHECK(r32.dtype() == DType::float32);
    CHECK(function({stop32}, {r32})({T32({}, {2.5f})})[0].to_doubles() == std::vector<double>{0, 1, 2});
    CHECK(arange(5).dtype() == DType::int64);
    CHECK(error_of([] { arange(Bound(vector("v"))); }).find("ARange: input 1 must be a number scalar, got float64 vector") == 0);
}

TEST_CASE("advanced indexing, whole: matrix index arrays, arrays mixed with slices and scalars, 3-d, broadcast writes") {
    // x = arange(24).reshape(2, 3, 4): x[i, j, k] = 12 i + 4 j + k.
    Variable x = tensor3("x");
    std::vector<double> xs(24);
    for (int i = 0; i < 24; ++i) xs[i] = i;
    const Tensor xv = T64({2, 3, 4}, xs);
    auto at = [](int i, int j, int k) { return 12.0 * i + 4 * j + k; };
    auto run = [&](const Variable& out) { return function({x}, {out})({xv})[0]; };
    Variable m = constant(I64({2, 2}, {0, 2, 1, 1}));   // a matrix of indices
    Variable v = constant(I64({3}, {3, 0, -1}));
    // x[:, m]: shape (2, 2, 2, 4); element [a, p, q, c] = x[a, m[p, q], c].
    Tensor r = run(x[{Idx::all(), m}]);
    CHECK(r.shape() == Shape{2, 2, 2, 4});
    const std::vector<int> mm = {0, 2, 1, 1};
    for (int a = 0; a < 2; ++a)
        for (int pq = 0; pq < 4; ++pq)
            for (int c = 0; c < 4; ++c) CHECK(r.to_doubles()[(a * 4 + pq) * 4 + c] == at(a, mm[pq], c));
    // x[1, :, v]: the scalar is advanced too, non-adjacent to v? (axes 0 and 2): S first, shape (3, 3).
    r = run(x[{1, Idx::all(), v}]);
    CHECK(r.shape() == Shape{3, 3});
    const std::vector<int> vv = {3, 0, 3};
    for (int p = 0; p < 3; ++p)
        for (int j = 0; j < 3; ++j) CHECK(r.to_doubles()[p * 3 + j] == at(1, j, vv[p]));
    // x[:, v[0:2] as 1..., 1:3]: adjacent arrays at axes 1 (vector) with a slice after: x[:, [2, 0], 1:3] -> (2, 2, 2).
    Variable rows = constant(I64({2}, {2, 0}));
    r = run(x[{Idx::all(), rows, slice(1, 3)}]);
    CHECK(r.shape() == Shape{2, 2, 2});
    const std::vector<int> rr = {2, 0};
    for (int a = 0; a < 2; ++a)
        for (int p = 0; p < 2; ++p)
            for (int c = 0; c < 2; ++c) CHECK(r.to_doubles()[(a * 2 + p) * 2 + c] == at(a, rr[p], 1 + c));
    // Two arrays broadcast against each other: x[[[0], [1]], :, [0, 3]] -> S = (2, 2), then axis 1: (2, 2, 3).
    Variable col = constant(I64({2, 1}, {0, 1}));
    Variable two = constant(I64({2}, {0, 3}));
    r = run(x[{col, Idx::all(), two}]);
    CHECK(r.shape() == Shape{2, 2, 3});
    for (int p = 0; p < 2; ++p)
        for (int q = 0; q < 2; ++q)
            for (int j = 0; j < 3; ++j) CHECK(r.to_doubles()[(p * 2 + q) * 3 + j] == at(p, j, q == 0 ? 0 : 3));

    // Writes: a scalar added at many places (duplicates accumulate), a row set at chosen rows.
    Variable mat = matrix("mat");
    const Tensor mv = T64({3, 4}, std::vector<double>(12, 0.0));
    Variable idx = constant(I64({4}, {0, 2, 0, 1}));
    Function inc = function({mat}, {inc_subtensor(mat, constant(1.5), {idx, Idx(3)})});
    CHECK(inc({mv})[0].to_doubles() == std::vector<double>{0, 0, 0, 3, 0, 0, 0, 1.5, 0, 0, 0, 1.5});
    Variable rowv = vector("rowv");
    Function setrows = function({mat, rowv}, {set_subtensor(mat, rowv, {constant(I64({2}, {2, 0}))})});
    CHECK(setrows({mv, T64({4}, {1, 2, 3, 4})})[0].to_doubles() ==
          std::vector<double>{1, 2, 3, 4, 0, 0, 0, 0, 1, 2, 3, 4});
    // 3-d with a slice: x[:, m] += 1 where m repeats row 1: rows 0 and 2 once, row 1 twice.
    Tensor w = run(inc_subtensor(x, constant(1.0), {Idx::all(), m}));
    for (int a = 0; a < 2; ++a)
        for (int j = 0; j < 3; ++j)
            for (int c = 0; c < 4; ++c) CHECK(w.to_doubles()[(a * 3 + j) * 4 + c] == at(a, j, c) + (j == 1 ? 2 : 1));
    // A sliced write: x[0, 1:3, v] = 0 (scalar and array advanced, apart: S first).
    w = run(set_subtensor(x, constant(0.0), {0, slice(1, 3), v}));
    for (int j = 0; j < 3; ++j)
        for (int c = 0; c < 4; ++c) {
            const bool hit = j >= 1 && (c == 3 || c == 0);
            CHECK(w.to_doubles()[j * 4 + c] == (hit ? 0.0 : at(0, j, c)));
            CHECK(w.to_doubles()[12 + j * 4 + c] == at(1, j, c));
        }

    // Gradients through each form agree with finite differences.
    const Tensor xr = random_tensor({2, 3, 4}, 51);
    VerifyGradReport g = verify_grad([&](auto in) { return in[0][{Idx::all(), m}]; }, {xr});
    CHECK(g.n_checked > 0);
    g = verify_grad([&](auto in) { return in[0][{col, Idx::all(), two}]; }, {xr});
    CHECK(g.n_checked > 0);
    g = verify_grad([&](auto in) { return inc_subtensor(in[0], in[1], {Idx::all(), m}); },
                    {xr, random_tensor({4}, 52)});
    CHECK(g.n_checked > 0);
    // (set with distinct positions: where an index repeats, the last write wins and, as in
    // Theano, the value's gradient still counts every position)
    Variable distinct = constant(I64({3}, {3, 0, 1}));
    g = verify_grad([&](auto in) { return set_subtensor(in[0], in[1], {0, slice(1, 3), distinct}); },
                    {xr, random_tensor({2}, 53)});
    CHECK(g.n_checked > 0);
    CHECK(error_of([&] { x[{Idx::all(), constant(T64({2}, {0, 1}))}]; }).find("indexing: the index of axis 1 must be integer") == 0);
}
