// Builds a graph, differentiates it and runs it through the installed library.
#include <theanine/theanine.hpp>

#include <cstdio>

int main() {
    using namespace theanine;
    Variable x = vector("x");
    Variable cost = sum(sqr(x) * 3.0);
    Function f = function({x}, {cost, grad(cost, x)});
    auto out = f({Tensor::from_vector<double>({2}, {1, 2})});
    const bool ok = out[0].item() == 15 && out[1].to_doubles() == std::vector<double>{6, 12};
    std::printf("consumer: cost %g, grad [%g, %g]: %s\n", out[0].item(), out[1].at({0}), out[1].at({1}), ok ? "ok" : "WRONG");
    return ok ? 0 : 1;
}
