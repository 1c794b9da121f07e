// Types, variables, constants, shared variables, configuration and error locations.
#include <doctest/doctest.h>

#include <string>

#include "support/helpers.hpp"

using namespace theanine;
using namespace theanine::testing;

TEST_CASE("constructors mirror Theano's types") {
    CHECK(scalar("a").type().str() == "float64 scalar");
    CHECK(lscalar("i").type().str() == "int64 scalar");
    CHECK(iscalar("i").type().str() == "int32 scalar");
    CHECK(vector("v").type().str() == "float64 vector");
    CHECK(matrix("m").type().str() == "float64 matrix");
    CHECK(dmatrix("m").type().str() == "float64 matrix");
    CHECK(fmatrix("m").type().str() == "float32 matrix");
    CHECK(tensor3("t").type().str() == "float64 (F, F, F)");
    CHECK(tensor4("t").ndim() == 4);
    CHECK(matrix("x").name() == "x");
}

TEST_CASE("floatX defaults to float64 and can be set in code or by THEANINE_FLAGS") {
    CHECK(config().floatX == DType::float64);
    Config c;
    apply_flags("floatX=float32,optimizer_excluding=fusion:local_log1p,optimizer_verbose=True", c);
    CHECK(c.floatX == DType::float32);
    CHECK(c.optimizer_excluding == std::vector<std::string>{"fusion", "local_log1p"});
    CHECK(c.optimizer_verbose);
    apply_flags("optimizer=None", c);
    CHECK(c.optimizer_none);
    CHECK_THROWS_WITH_AS(apply_flags("floatX=float16", c), "THEANINE_FLAGS: floatX must be float32 or float64, got 'float16'",
                         UsageError);
    CHECK_THROWS_WITH_AS(apply_flags("colour=red", c),
                         "THEANINE_FLAGS: unknown key 'colour' (known: floatX, optimizer, optimizer_excluding, "
                         "optimizer_including, optimizer_verbose, profile, nan_guard, blas_kernel, kernel_cache)", UsageError);
    config().floatX = DType::float32;
    CHECK(matrix("x").dtype() == DType::float32);
    config().floatX = DType::float64;
}

TEST_CASE("numbers wrap as weak constants that adopt the tensor's dtype") {
    Variable xf = fmatrix("x");
    CHECK((xf * 0.5).dtype() == DType::float32);  // a Python float does not upcast float32
    CHECK((1 - xf).dtype() == DType::float32);
    Variable i = lscalar("i");
    CHECK((i * 20).dtype() == DType::int64);       // index arithmetic stays int64
    Variable i32 = iscalar("i");
    CHECK((i32 + 1).dtype() == DType::int32);
    CHECK((i * 0.5).dtype() == DType::float64);   // a float literal lifts integers to float
    CHECK((i / 2).dtype() == DType::float64);     // true division
    CHECK(promote(DType::int64, DType::float32) == DType::float64);
    CHECK(promote(DType::uint8, DType::float32) == DType::float32);
    CHECK((xf + dmatrix("d")).dtype() == DType::float64);
}

TEST_CASE("shared variables: get/set with and without borrow, type checks") {
    Tensor w = T64({2, 2}, {1, 2, 3, 4});
    SharedVariable W = shared(w, "W");
    CHECK_FALSE(W.get_value(true).shares_storage(w));  // shared() copies unless borrow
    Tensor borrowed = W.get_value(true);
    CHECK(borrowed.shares_storage(W.get_value(true)));
    Tensor copy = W.get_value();
    CHECK_FALSE(copy.shares_storage(borrowed));
    SharedVariable V = shared(w, "V", true);
    CHECK(V.get_value(true).shares_storage(w));
    W.set_value(T64({2, 2}, {5, 6, 7, 8}));
    CHECK(W.get_value().to_doubles() == std::vector<double>{5, 6, 7, 8});
    // Values that convert safely are converted (float32 or int64 data for a float64 variable);
    // a conversion that may lose precision is refused.
    W.set_value(T32({2, 2}, {1, 2, 3.5f, 4}));
    CHECK(W.get_value().dtype() == DType::float64);
    CHECK(W.get_value().to_doubles() == std::vector<double>{1, 2, 3.5, 4});
    W.set_value(I64({2, 2}, {9, 8, 7, 6}), true);
    CHECK(W.get_value().to_doubles() == std::vector<double>{9, 8, 7, 6});
    SharedVariable F = shared(T32({2}, {0, 0}), "F");
    CHECK_THROWS_WITH_AS(F.set_value(T64({2}, {1, 2})),
                         "set_value of shared variable 'F': value float64 (2,) does not fit its type float32 vector "
                         "without losing precision (cast it first)", UsageError);
    CHECK_THROWS_WITH_AS(F.set_value(I64({2}, {1, 2})),
                         "set_value of shared variable 'F': value int64 (2,) does not fit its type float32 vector "
                         "without losing precision (cast it first)", UsageError);
    CHECK_THROWS_WITH_AS(W.set_value(T64({4}, {1, 2, 3, 4})),
                         "set_value of shared variable 'W': value float64 (4,) does not fit its type float64 matrix",
                         UsageError);
    // Usable anywhere a variable is.
    Variable y = W * 2.0;
    CHECK(y.type().str() == "float64 matrix");
}

TEST_CASE("type errors name the op, the inputs and the user's line") {
    Variable x = matrix("x");
    Variable v = vector("v", DType::float32);
    const int line = __LINE__ + 1;
    auto build = [&] { return apply1(std::make_shared<Dot>(), {x, tensor3("t")}); };
    try {
        build();
        FAIL("no error");
    } catch (const UsageError& e) {
        std::string msg = e.what();
        CHECK(msg.find("Dot: inputs must be vectors or matrices, got input 0 float64 matrix and input 1 float64 (F, F, F)") == 0);
        CHECK(msg.find("(node built at test_graph.cpp:" + std::to_string(line) + ")") != std::string::npos);
    }
    try {
        Variable bad = apply1(std::make_shared<Elemwise>(ScalarOp::add), {x, v});
        FAIL("no error");
    } catch (const UsageError& e) {
        CHECK(std::string(e.what()).find("Elemwise{add}: input 1 is float32 vector but input 0 is float64 matrix (ranks differ)") == 0);
    }
    // Errors derive from theanine::Error.
    CHECK_THROWS_AS(apply1(std::make_shared<Dot>(), {x, tensor3("t")}), Error);
}

TEST_CASE("clone_with_replace rebuilds only what depends on the replaced variable") {
    Variable x = matrix("x");
    Variable y = matrix("y");
    Variable a = exp(y);
    Variable out = x + a;
    Variable z = matrix("z");
    VarMap<Variable> rep;
    rep[key(x)] = z;
    Variable out2 = clone_with_replace({out}, rep)[0];
    CHECK_FALSE(out2.same(out));
    CHECK(out2.node().inputs[0].same(z));
    CHECK(out2.node().inputs[1].same(a));  // the unchanged subgraph is shared
    auto order = toposort({out});
    CHECK(order.size() == 4);
    CHECK(order.back().get() == &out.node());
}
