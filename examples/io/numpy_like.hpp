// What the tutorial programs compute and print with numpy, computed and printed the same way,
// so the numbers compare digit for digit:
//   pairwise_sum / mean  numpy's add.reduce over a contiguous axis (pairwise summation: runs of
//                        up to 128 summed with 8 partial sums, longer runs split in halves)
//   inv                  numpy.linalg.inv, i.e. LAPACK's dgesv on the identity: LU with
//                        partial pivoting by recursive column halving (dgetrf2), then the
//                        unit-lower and upper triangular solves, in the reference order
//   cov                  numpy.cov(m) for m of shape (variables, observations), ddof 1: row
//                        means by pairwise sums, products summed in order (the reference
//                        dsyrk), scaled by 1 / (N - 1)
//   array_str            str(array) with numpy's default print options (precision 8, the
//                        maxprec float mode, scientific notation when the magnitudes spread,
//                        75 columns)
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "graph/tensor.hpp"

namespace theanine::io::numpy {

template <class T>
T pairwise_sum(const T* a, std::int64_t n, std::int64_t stride = 1);

// numpy.mean of n values (pairwise sum, then divided by n in T).
template <class T>
T mean(const T* a, std::int64_t n, std::int64_t stride = 1) {
    return pairwise_sum(a, n, stride) / static_cast<T>(n);
}

// a: n x n, row-major. Throws UsageError when the matrix is singular. In T's precision
// (numpy inverts a float32 matrix with sgesv).
template <class T>
std::vector<T> inv(const std::vector<T>& a, int n);

// m: vars x obs, row-major; returns vars x vars.
std::vector<double> cov(const std::vector<double>& m, int vars, std::int64_t obs);

// values in C order of a 1-d or 2-d shape; float32 formats each value as a float32.
std::string array_str(const std::vector<double>& values, const Shape& shape, bool float32 = false);

// Python's str() of a numpy float scalar: the shortest text that round-trips.
std::string scalar_str(double v, bool float32 = false);

}  // namespace theanine::io::numpy
