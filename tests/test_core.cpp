#include <doctest/doctest.h>
#include "theanine.hpp"
using namespace theanine;
TEST_CASE("smoke") {
    auto x = matrix("x");
    auto y = x * 2.0 + 1.0;
    auto f = function({x}, {y});
    Tensor t = Tensor::from_vector<double>({2, 2}, {1, 2, 3, 4});
    auto out = f({t});
    CHECK(out[0].to_doubles() == std::vector<double>{3, 5, 7, 9});
}
