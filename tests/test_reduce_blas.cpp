// Reductions and matrix products.
#include <doctest/doctest.h>

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
