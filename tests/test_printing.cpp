// debugprint and Graphviz export, compared string for string.
#include <doctest/doctest.h>

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
