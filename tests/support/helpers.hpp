// Small helpers shared by the test suites.
#pragma once

#include <cmath>
#include <string>
#include <vector>

#include "theanine.hpp"

namespace theanine::testing {

// The message of the exception f throws, or "" when it throws none.
template <class F>
std::string error_of(F&& f) {
    try {
        f();
    } catch (const std::exception& e) {
        return e.what();
    }
    return "";
}

inline Tensor T64(const Shape& s, const std::vector<double>& v) { return Tensor::from_vector<double>(s, v); }
inline Tensor T32(const Shape& s, const std::vector<float>& v) { return Tensor::from_vector<float>(s, v); }
inline Tensor I64(const Shape& s, const std::vector<std::int64_t>& v) { return Tensor::from_vector<std::int64_t>(s, v); }

// Compiles outputs of inputs and evaluates them once. Tests evaluate many expressions over
// one list of inputs, so an input an expression does not use is allowed here.
inline std::vector<Tensor> eval(const std::vector<Variable>& inputs, const std::vector<Variable>& outputs,
                                const std::vector<Arg>& args) {
    std::vector<In> ins(inputs.begin(), inputs.end());
    CompileOptions options;
    options.on_unused_input = CompileOptions::UnusedInput::ignore;
    Function f = function(ins, outputs, {}, {}, options);
    return f(args);
}
inline Tensor eval1(const std::vector<Variable>& inputs, const Variable& output, const std::vector<Arg>& args) {
    return eval(inputs, {output}, args)[0];
}

// Whether all values are within tol of the expected ones (relative to max(1, |expected|)).
inline bool close(const std::vector<double>& got, const std::vector<double>& want, double tol = 1e-12) {
    if (got.size() != want.size()) return false;
    for (std::size_t i = 0; i < got.size(); ++i) {
        if (!(std::abs(got[i] - want[i]) <= tol * std::max(1.0, std::abs(want[i])))) return false;
    }
    return true;
}

// A deterministic float64 tensor with values in [lo, hi).
inline Tensor random_tensor(const Shape& s, std::uint32_t seed, double lo = -1, double hi = 1) {
    RandomState rs(seed);
    return rs.uniform(lo, hi, s);
}

}  // namespace theanine::testing
