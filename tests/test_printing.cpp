// debugprint and Graphviz export, compared string for string.
#include <doctest/doctest.h>

#include <cstdlib>
#include <optional>

#include <fmt/format.h>

#include "support/helpers.hpp"

using namespace theanine;
using namespace theanine::testing;

TEST_CASE("debugprint of a variable prints shared nodes once") {
    Variable x = matrix("x");
    Variable y = vector("y");
    Variable e = exp(x);
    Variable out = e * e + y;
    CHECK(debugprint(out) ==
          "Elemwise{add} [id A] <float64 matrix>\n"
          " |Elemwise{mul} [id B] <float64 matrix>\n"
          " | |Elemwise{exp} [id C] <float64 matrix>\n"
          " | | |x [id D] <float64 matrix>\n"
          " | |Elemwise{exp} [id C] <float64 matrix>\n"
          " |DimShuffle{x,0} [id E] <float64 row>\n"
          "   |y [id F] <float64 vector>\n");
    PrintOptions no_types;
    no_types.print_type = false;
    CHECK(debugprint(x.sum(1), no_types) == "Sum{axes=[1]} [id A]\n |x [id B]\n");
}

TEST_CASE("debugprint of a compiled function shows the graph after rewrites and the updates") {
    Variable x = vector("x");
    SharedVariable s = shared(T64({2}, {0, 0}), "s");
    Function f = function({x}, {log(1 + x) * 1.0}, {{s, s + x}});
    CHECK(f.debugprint() ==
          "Composite{log1p(i0)} [id A] <float64 vector>\n"
          " |x [id B] <float64 vector>\n"
          "update s:\n"
          "Elemwise{add} [id A] <float64 vector>\n"
          " |s [id B] <float64 vector>\n"
          " |x [id C] <float64 vector>\n");
}

TEST_CASE("Graphviz export lists every node and edge") {
    Variable x = vector("x");
    Variable y = x + 1.0;
    std::string dot = to_dot({y});
    CHECK(dot.find("digraph theanine {") == 0);
    CHECK(dot.find("[shape=ellipse, label=\"x\\nfloat64 vector\"]") != std::string::npos);
    CHECK(dot.find("[shape=box, label=\"Elemwise{add}\"]") != std::string::npos);
    CHECK(dot.find("-> out0") != std::string::npos);
    Function f = function({x}, {y});
    CHECK(f.to_dot().find("Elemwise{add}") != std::string::npos);
}

namespace {
std::size_t count_of(const std::string& s, const std::string& what) {
    std::size_t n = 0;
    for (std::size_t at = s.find(what); at != std::string::npos; at = s.find(what, at + what.size())) ++n;
    return n;
}

// Sets an environment variable for the scope.
struct EnvScope {
    std::string name;
    std::optional<std::string> old;
    EnvScope(std::string n, const std::string& value) : name(std::move(n)) {
        if (const char* v = std::getenv(name.c_str())) old = v;
        ::setenv(name.c_str(), value.c_str(), 1);
    }
    ~EnvScope() {
        if (old) {
            ::setenv(name.c_str(), old->c_str(), 1);
        } else {
            ::unsetenv(name.c_str());
        }
    }
};
}  // namespace

TEST_CASE("Function::to_html lays out every step with its types, shapes, in-place writes and times") {
    Variable x = matrix("x");
    SharedVariable W = shared(random_tensor({3, 2}, 1), "W");
    Variable cost = dot(x, W).sum();
    Variable g = grad(cost, std::vector<Variable>{W})[0];
    CompileOptions options;
    options.profile = true;
    Function f = function({x}, {cost}, {{W, W - 0.1 * g}}, {}, options);
    REQUIRE(!f.in_place().empty());  // the update's Gemm writes W's buffer

    const std::string before = f.to_html();
    CHECK(count_of(before, "class=\"node step\"") == f.n_steps());
    CHECK(count_of(before, "class=\"node input\"") == 1);
    CHECK(count_of(before, "class=\"node shared\"") == 1);
    CHECK(count_of(before, "class=\"node output\"") == 1);
    CHECK(count_of(before, "class=\"node update\"") == 1);
    CHECK(before.find("float64 matrix, not run yet") != std::string::npos);
    CHECK(before.find(fmt::format("data-expected-steps=\"{}\"", f.n_steps())) != std::string::npos);

    f({random_tensor({4, 3}, 2)});
    f({random_tensor({4, 3}, 3)});
    const std::string page = f.to_html();
    CHECK(page.find("not run yet") == std::string::npos);
    // The product's output after the calls, its buffer, and the in-place Gemm into W.
    CHECK(page.find("float64 matrix (4, 2), buffer 64 B") != std::string::npos);
    CHECK(page.find("\"output 0 overwrites input 0 (W)\"") != std::string::npos);
    CHECK(page.find("(in place)") != std::string::npos);
    CHECK(page.find("% of the steps (2 calls)") != std::string::npos);
    CHECK(page.find("profile: 2 calls") != std::string::npos);
    CHECK(page.find("\"update W\"") != std::string::npos);
    // The line that built each node.
    CHECK(page.find("test_printing.cpp:") != std::string::npos);
    CHECK(count_of(page, "<script>") == 1);
    CHECK(count_of(page, "</script>") == 1);
}

TEST_CASE("Function::to_html: names cannot break the page; a missing or failing dot is reported") {
    Variable x = vector("</script><b>x");
    Function f = function({x}, {exp(x)});
    const std::string page = f.to_html();
    CHECK(count_of(page, "</script>") == 1);  // the name is escaped in the SVG and the JSON
    CHECK(page.find("<\\/script><b>x") != std::string::npos);
    {
        EnvScope dot("THEANINE_DOT", "/nonexistent/dot");
        CHECK_THROWS_WITH_AS(f.to_html(), doctest::Contains("cannot run Graphviz's '/nonexistent/dot'"), UsageError);
    }
    {
        EnvScope dot("THEANINE_DOT", "false");
        CHECK_THROWS_WITH_AS(f.to_html(), doctest::Contains("'false' failed (exit status 1)"), UsageError);
    }
    CHECK(count_of(f.to_html(), "class=\"node step\"") == 1);
}
