// Rewrites: each pass shown before and after, with equal results with and without it.
#include <doctest/doctest.h>

#include <algorithm>
#include <cmath>

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
    Function on = function({x, y}, {out});
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
        Function on = function({x, y}, {c.expr});
        Function off = function({x, y}, {c.expr}, {}, {}, excluding({c.name}));
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
        Function on = function({x}, {e});
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
        Function on = function({x}, {e});
        Function off = function({x}, {e}, {}, {}, no_rewrites());
        CHECK(on.debugprint(false) == "Elemwise{neg} [id A]\n |Elemwise{softplus} [id B]\n   |x [id C]\n");
        CHECK(std::isinf(off({big})[0].to_doubles()[3]));
        CHECK(on({big})[0].to_doubles()[3] == -200);
        CHECK(on({big})[0].to_doubles()[0] == doctest::Approx(off({big})[0].to_doubles()[0]));
    }
    {
        Variable d = vector("d");
        Function on = function({d}, {log(1 + d)});
        Function off = function({d}, {log(1 + d)}, {}, {}, excluding({"stabilize"}));
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
