// Loading the reference fixtures (numpy .npy files made with numpy 1.24 and Theano 1.0.5;
// tests/fixtures/SOURCE.md says how each was made).
#pragma once

#include <cstring>
#include <string>

#include "examples/io/npy.hpp"
#include "graph/tensor.hpp"

namespace theanine::testing {

inline Tensor fixture(const std::string& name) { return io::load_npy(std::string(THEANINE_FIXTURES) + "/" + name); }

// Whether two tensors have the same dtype, shape and bytes.
inline bool bit_equal(const Tensor& a0, const Tensor& b0) {
    if (a0.dtype() != b0.dtype() || a0.shape() != b0.shape()) return false;
    Tensor a = a0.contiguous(), b = b0.contiguous();
    return std::memcmp(a.raw_data(), b.raw_data(), static_cast<std::size_t>(a.size()) * dtype_size(a.dtype())) == 0;
}

// Number of elements that differ (after conversion to double).
inline std::int64_t count_diff(const Tensor& a, const Tensor& b) {
    auto x = a.to_doubles(), y = b.to_doubles();
    if (x.size() != y.size()) return -1;
    std::int64_t n = 0;
    for (std::size_t i = 0; i < x.size(); ++i) n += x[i] != y[i];
    return n;
}

}  // namespace theanine::testing
