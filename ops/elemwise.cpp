#include "ops/elemwise.hpp"

#include <array>
#include <cmath>
#include <type_traits>
#include <utility>

#include <fmt/format.h>

#include "ops/loops.hpp"
#include "ops/shape.hpp"

namespace theanine {

namespace {

using loops::broadcast_iterate;
using loops::elemwise_loop;

struct ScalarOpInfo {
    ScalarOp op;
    const char* name;
    int arity;
    bool float_only;   // integer inputs are upcast to a float dtype first
    bool comparison;   // output is bool
    bool transcendental;  // a library function, many times an add's cost
};

constexpr ScalarOpInfo kScalarOps[] = {
    {ScalarOp::add, "add", 2, false, false, false},
    {ScalarOp::sub, "sub", 2, false, false, false},
    {ScalarOp::mul, "mul", 2, false, false, false},
    {ScalarOp::true_div, "true_div", 2, true, false, false},
    {ScalarOp::neg, "neg", 1, false, false, false},
    {ScalarOp::exp, "exp", 1, true, false, true},
    {ScalarOp::log, "log", 1, true, false, true},
    {ScalarOp::log1p, "log1p", 1, true, false, true},
    {ScalarOp::sigmoid, "sigmoid", 1, true, false, true},
    {ScalarOp::softplus, "softplus", 1, true, false, true},
    {ScalarOp::tanh, "tanh", 1, true, false, true},
    {ScalarOp::abs, "abs", 1, false, false, false},
    {ScalarOp::sgn, "sgn", 1, false, false, false},
    {ScalarOp::sqrt, "sqrt", 1, true, false, true},
    {ScalarOp::sqr, "sqr", 1, false, false, false},
    {ScalarOp::pow, "pow", 2, false, false, true},
    {ScalarOp::maximum, "maximum", 2, false, false, false},
    {ScalarOp::minimum, "minimum", 2, false, false, false},
    {ScalarOp::switch_, "switch", 3, false, false, false},
    {ScalarOp::eq, "eq", 2, false, true, false},
    {ScalarOp::neq, "neq", 2, false, true, false},
    {ScalarOp::lt, "lt", 2, false, true, false},
    {ScalarOp::le, "le", 2, false, true, false},
    {ScalarOp::gt, "gt", 2, false, true, false},
    {ScalarOp::ge, "ge", 2, false, true, false},
    {ScalarOp::second, "second", 2, false, false, false},
    {ScalarOp::int_div, "int_div", 2, false, false, false},
    {ScalarOp::mod, "mod", 2, false, false, false},
    {ScalarOp::round_half_to_even, "round_half_to_even", 1, false, false, false},
};
static_assert(std::size(kScalarOps) == static_cast<std::size_t>(ScalarOp::round_half_to_even) + 1,
              "every ScalarOp needs a table entry, in enum order");

const ScalarOpInfo& info(ScalarOp op) { return kScalarOps[static_cast<std::size_t>(op)]; }

// Arithmetic type for transcendental functions of integer inputs.
template <class T>
using calc_t = std::conditional_t<std::is_floating_point_v<T>, T, double>;

template <class T>
T stable_sigmoid(T x) {
    if (x >= T(0)) return T(1) / (T(1) + std::exp(-x));
    T e = std::exp(x);
    return e / (T(1) + e);
}

// Theano's softplus: log1p(exp(x)), with x itself above 16 (float32: 14), where the two
// agree to within exp(-x), and 0 below -745 (float32: -103), where exp(x) is 0.
template <class T>
T stable_softplus(T x) {
    constexpr T lo = std::is_same_v<T, float> ? T(-103) : T(-745);
    constexpr T hi = std::is_same_v<T, float> ? T(14) : T(16);
    if (x < lo) return T(0);
    if (x > hi) return x;
    return std::log1p(std::exp(x));
}

// maximum and minimum propagate NaN, as numpy's and Theano's do: NaN when either is NaN.
template <class T>
T nan_or(T x, T y, T value) {
    if constexpr (std::is_floating_point_v<T>) {
        if (x != x || y != y) return x + y;
    }
    return value;
}

template <class T>
T sign_of(T x) {
    if constexpr (std::is_same_v<T, bool>) {
        return x;
    } else {
        // NaN stays NaN (numpy's sign), where the comparisons alone would give 0.
        if constexpr (std::is_floating_point_v<T>) {
            if (x != x) return x;
        }
        return static_cast<T>((T(0) < x) - (x < T(0)));
    }
}

template <class T>
T abs_of(T x) {
    if constexpr (std::is_unsigned_v<T> || std::is_same_v<T, bool>) {
        return x;
    } else {
        return x < T(0) ? static_cast<T>(-x) : x;
    }
}

// Python's floor division and remainder (the remainder takes the divisor's sign), for
// integers and floats; an integer division by zero gives 0, as numpy's does.
template <class T>
T floor_divide(T x, T y) {
    if constexpr (std::is_floating_point_v<T>) {
        if (y == 0) return std::floor(x / y);
        if (y < 0) return x < 0 ? std::floor((-x) / (-y)) : -std::floor(x / (-y)) - (std::fmod(x, -y) == 0 ? 0 : 1);
        return x < 0 ? -std::floor((-x) / y) - (std::fmod(-x, y) == 0 ? 0 : 1) : std::floor(x / y);
    } else if constexpr (std::is_same_v<T, bool>) {
        return y ? x : false;
    } else {
        if (y == 0) return T(0);
        T q = static_cast<T>(x / y);
        if ((x % y != 0) && ((x < 0) != (y < 0))) q = static_cast<T>(q - 1);
        return q;
    }
}

template <class T>
T python_mod(T x, T y) {
    if constexpr (std::is_floating_point_v<T>) {
        T r = std::fmod(x, y);
        if (r != 0 && ((r < 0) != (y < 0))) r += y;
        return r;
    } else if constexpr (std::is_same_v<T, bool>) {
        return false;
    } else {
        if (y == 0) return T(0);
        T r = static_cast<T>(x % y);
        if (r != 0 && ((r < 0) != (y < 0))) r = static_cast<T>(r + y);
        return r;
    }
}

template <class T>
void run_op(ScalarOp op, std::span<const Tensor* const> in, Tensor& out) {
    using C = calc_t<T>;
    auto c = [](auto v) { return static_cast<C>(v); };
    std::array<const Tensor*, 1> a1{in[0]};
    switch (op) {
    case ScalarOp::neg: return elemwise_loop<T, T>(a1, out, [](T x) { return static_cast<T>(-x); });
    case ScalarOp::exp: return elemwise_loop<T, T>(a1, out, [&](T x) { return static_cast<T>(std::exp(c(x))); });
    case ScalarOp::log: return elemwise_loop<T, T>(a1, out, [&](T x) { return static_cast<T>(std::log(c(x))); });
    case ScalarOp::log1p: return elemwise_loop<T, T>(a1, out, [&](T x) { return static_cast<T>(std::log1p(c(x))); });
    case ScalarOp::sigmoid: return elemwise_loop<T, T>(a1, out, [&](T x) { return static_cast<T>(stable_sigmoid(c(x))); });
    case ScalarOp::softplus: return elemwise_loop<T, T>(a1, out, [&](T x) { return static_cast<T>(stable_softplus(c(x))); });
    case ScalarOp::tanh: return elemwise_loop<T, T>(a1, out, [&](T x) { return static_cast<T>(std::tanh(c(x))); });
    case ScalarOp::abs: return elemwise_loop<T, T>(a1, out, [](T x) { return abs_of(x); });
    case ScalarOp::sgn: return elemwise_loop<T, T>(a1, out, [](T x) { return sign_of(x); });
    case ScalarOp::sqrt: return elemwise_loop<T, T>(a1, out, [&](T x) { return static_cast<T>(std::sqrt(c(x))); });
    case ScalarOp::sqr: return elemwise_loop<T, T>(a1, out, [](T x) { return static_cast<T>(x * x); });
    case ScalarOp::round_half_to_even:
        return elemwise_loop<T, T>(a1, out, [](T x) {
            if constexpr (std::is_floating_point_v<T>) {
                return std::nearbyint(x);
            } else {
                return x;
            }
        });
    default: break;
    }
    std::array<const Tensor*, 2> a2{in[0], in.size() > 1 ? in[1] : nullptr};
    switch (op) {
    case ScalarOp::add: return elemwise_loop<T, T>(a2, out, [](T x, T y) { return static_cast<T>(x + y); });
    case ScalarOp::sub: return elemwise_loop<T, T>(a2, out, [](T x, T y) { return static_cast<T>(x - y); });
    case ScalarOp::mul: return elemwise_loop<T, T>(a2, out, [](T x, T y) { return static_cast<T>(x * y); });
    case ScalarOp::true_div: return elemwise_loop<T, T>(a2, out, [](T x, T y) { return static_cast<T>(x / y); });
    case ScalarOp::pow: return elemwise_loop<T, T>(a2, out, [&](T x, T y) { return static_cast<T>(std::pow(c(x), c(y))); });
    case ScalarOp::maximum: return elemwise_loop<T, T>(a2, out, [](T x, T y) { return nan_or(x, y, x < y ? y : x); });
    case ScalarOp::minimum: return elemwise_loop<T, T>(a2, out, [](T x, T y) { return nan_or(x, y, y < x ? y : x); });
    case ScalarOp::second: return elemwise_loop<T, T>(a2, out, [](T, T y) { return y; });
    case ScalarOp::int_div: return elemwise_loop<T, T>(a2, out, [](T x, T y) { return floor_divide(x, y); });
    case ScalarOp::mod: return elemwise_loop<T, T>(a2, out, [](T x, T y) { return python_mod(x, y); });
    case ScalarOp::eq: return elemwise_loop<bool, T>(a2, out, [](T x, T y) { return x == y; });
    case ScalarOp::neq: return elemwise_loop<bool, T>(a2, out, [](T x, T y) { return x != y; });
    case ScalarOp::lt: return elemwise_loop<bool, T>(a2, out, [](T x, T y) { return x < y; });
    case ScalarOp::le: return elemwise_loop<bool, T>(a2, out, [](T x, T y) { return x <= y; });
    case ScalarOp::gt: return elemwise_loop<bool, T>(a2, out, [](T x, T y) { return x > y; });
    case ScalarOp::ge: return elemwise_loop<bool, T>(a2, out, [](T x, T y) { return x >= y; });
    default: break;
    }
    internal_check(false, fmt::format("no kernel for scalar op {}", info(op).name));
}

// switch(cond, a, b): cond is bool, a and b share dtype T.
template <class T>
void run_switch(std::span<const Tensor* const> in, Tensor& out) {
    const bool* c = in[0]->data<bool>();
    const T* a = in[1]->data<T>();
    const T* b = in[2]->data<T>();
    T* o = out.data<T>();
    broadcast_iterate<3>({in[0], in[1], in[2]}, out.shape(), [&](std::int64_t i, const std::array<std::int64_t, 3>& off) {
        o[i] = c[off[0]] ? a[off[1]] : b[off[2]];
    });
}

bool is_weak(const Variable& v) { return v.is_constant() && v.node().weak; }

DType float_for(DType dt) {
    if (is_float(dt)) return dt;
    if (dt == DType::int64 || dt == DType::int32 || dt == DType::uint32) return DType::float64;
    return config().floatX;
}

// The float dtype a float-only op gives integer operands (Theano's upgrade_to_float): the
// small integers (bool and 8 or 16 bits) become float32, the 32 and 64-bit ones float64;
// int / int true division gives floatX instead.
DType upgrade_to_float(ScalarOp op, DType dt) {
    if (is_float(dt)) return dt;
    if (op == ScalarOp::true_div) return config().floatX;
    return dt == DType::int64 || dt == DType::int32 || dt == DType::uint32 ? DType::float64 : DType::float32;
}

int kind_rank(DType dt) { return dt == DType::boolean ? 0 : (is_integer(dt) ? 1 : 2); }

// Casts v to dt: weak constants are re-made in dt, others get a Cast node.
Variable cast_to(const Variable& v, DType dt, std::source_location where) {
    if (v.dtype() == dt) return v;
    if (is_weak(v)) return constant(v.node().value.astype(dt), "", true);
    return apply1(std::make_shared<Cast>(dt), {v}, where);
}

Variable align_rank(const Variable& v, int ndim, std::source_location where) {
    if (v.ndim() == ndim) return v;
    std::vector<int> order(static_cast<std::size_t>(ndim - v.ndim()), -1);
    for (int i = 0; i < v.ndim(); ++i) order.push_back(i);
    return apply1(std::make_shared<DimShuffle>(v.broadcastable(), order), {v}, where);
}

}  // namespace

const char* scalar_op_name(ScalarOp op) { return info(op).name; }
int scalar_op_arity(ScalarOp op) { return info(op).arity; }
bool scalar_op_is_transcendental(ScalarOp op) { return info(op).transcendental; }

DType promote(DType a, DType b) {
    // numpy's promotion of two array dtypes.
    if (a == b) return a;
    if (a == DType::boolean) return b;
    if (b == DType::boolean) return a;
    const auto bits = [](DType d) { return static_cast<int>(dtype_size(d)) * 8; };
    if (is_float(a) || is_float(b)) {
        if (a == DType::float64 || b == DType::float64) return DType::float64;
        const DType i = is_float(a) ? b : a;  // float32 with an integer (or float32)
        return is_float(i) || bits(i) <= 16 ? DType::float32 : DType::float64;
    }
    const auto is_signed = [](DType d) {
        return d == DType::int8 || d == DType::int16 || d == DType::int32 || d == DType::int64;
    };
    const auto signed_of = [](int b) {
        return b <= 8 ? DType::int8 : b <= 16 ? DType::int16 : b <= 32 ? DType::int32 : DType::int64;
    };
    if (is_signed(a) == is_signed(b)) return bits(a) >= bits(b) ? a : b;
    const DType s = is_signed(a) ? a : b, u = is_signed(a) ? b : a;
    return bits(s) > bits(u) ? s : signed_of(std::min(64, 2 * bits(u)));
}

namespace {

template <class Broadcastable>
Shape broadcast_shapes_impl(const Op& op, std::span<const Tensor* const> inputs, const Broadcastable& bc) {
    int nd = 0;
    for (auto* t : inputs) nd = std::max(nd, t->ndim());
    Shape out(static_cast<std::size_t>(nd), 1);
    int who_small[8];
    std::vector<int> who_big;
    int* who = who_small;
    if (nd > 8) {
        who_big.resize(static_cast<std::size_t>(nd));
        who = who_big.data();
    }
    for (int d = 0; d < nd; ++d) who[d] = -1;
    for (std::size_t k = 0; k < inputs.size(); ++k) {
        const Tensor& t = *inputs[k];
        if (t.ndim() != nd) {
            throw UsageError(fmt::format("{}: input {} has {} dimensions, expected {}", op.name(), k, t.ndim(), nd));
        }
        for (int d = 0; d < nd; ++d) {
            if (bc(k, d)) continue;
            if (who[d] < 0) {
                out[d] = t.dim(d);
                who[d] = static_cast<int>(k);
            } else if (t.dim(d) != out[d]) {
                throw UsageError(fmt::format(
                    "{}: shapes do not match along axis {}: input {} has shape {}, input {} has "
                    "shape {}",
                    op.name(), d, who[d], shape_string(inputs[static_cast<std::size_t>(who[d])]->shape()), k,
                    shape_string(t.shape())));
            }
        }
    }
    return out;
}

}  // namespace

Shape broadcast_shapes(const Op& op, std::span<const Tensor* const> inputs, const Node& node) {
    return broadcast_shapes_impl(op, inputs, [&](std::size_t k, int d) {
        return node.inputs[k].broadcastable()[static_cast<std::size_t>(d)];
    });
}

Shape broadcast_shapes(const Op& op, std::span<const Tensor* const> inputs,
                       const std::vector<std::vector<bool>>& broadcastable) {
    return broadcast_shapes_impl(op, inputs, [&](std::size_t k, int d) {
        return !broadcastable.empty() && broadcastable[k][static_cast<std::size_t>(d)];
    });
}

std::string Elemwise::name() const { return fmt::format("Elemwise{{{}}}", info(op_).name); }

bool Elemwise::props_equal(const Op& other) const {
    return static_cast<const Elemwise&>(other).op_ == op_;
}

std::vector<TensorType> Elemwise::make_types(const std::vector<Variable>& inputs) const {
    const auto& inf = info(op_);
    if (static_cast<int>(inputs.size()) != inf.arity) {
        throw UsageError(fmt::format("{}: takes {} inputs, got {}", name(), inf.arity, inputs.size()));
    }
    const int nd = inputs[0].ndim();
    for (std::size_t i = 0; i < inputs.size(); ++i) {
        if (inputs[i].ndim() != nd) {
            throw UsageError(fmt::format("{}: input {} is {} but input 0 is {} (ranks differ)", name(),
                                         i, inputs[i].type().str(), inputs[0].type().str()));
        }
    }
    std::size_t first_value = op_ == ScalarOp::switch_ ? 1 : 0;
    if (op_ == ScalarOp::switch_ && inputs[0].dtype() != DType::boolean) {
        throw UsageError(fmt::format("{}: input 0 (the condition) is {}, expected bool", name(),
                                     inputs[0].type().str()));
    }
    DType dt = inputs[first_value].dtype();
    for (std::size_t i = first_value; i < inputs.size(); ++i) {
        if (inputs[i].dtype() != dt) {
            throw UsageError(fmt::format("{}: input {} is {} but input {} is {} (dtypes differ)", name(), i,
                                         inputs[i].type().str(), first_value, inputs[first_value].type().str()));
        }
    }
    std::vector<bool> bc(static_cast<std::size_t>(nd), true);
    for (const auto& in : inputs) {
        for (int d = 0; d < nd; ++d) bc[d] = bc[d] && in.broadcastable()[d];
    }
    if (op_ == ScalarOp::second) bc = inputs[0].broadcastable();
    return {TensorType{inf.comparison ? DType::boolean : dt, bc}};
}

std::optional<std::vector<Shape>> Elemwise::infer_shape(const std::vector<Shape>& in) const {
    Shape out = in[0];
    for (const auto& s : in) {
        for (std::size_t d = 0; d < s.size() && d < out.size(); ++d) {
            if (out[d] == 1) out[d] = s[d];
        }
    }
    if (op_ == ScalarOp::second) out = in[0];
    return std::vector<Shape>{out};
}

void Elemwise::perform(const Node& node, std::span<const Tensor* const> in,
                       std::span<Tensor* const> out) const {
    Shape os;
    if (op_ == ScalarOp::second) {
        os = in[0]->shape();
        broadcast_shapes(*this, in, node);
    } else {
        os = broadcast_shapes(*this, in, node);
    }
    const DType out_dt = node.types[0].dtype;
    out[0]->ensure(out_dt, os);
    if (op_ == ScalarOp::switch_) {
        dispatch(in[1]->dtype(), [&]<class T>() { run_switch<T>(in, *out[0]); });
        return;
    }
    dispatch(in[0]->dtype(), [&]<class T>() { run_op<T>(op_, in, *out[0]); });
}

std::vector<Variable> Elemwise::pullback(const Node& node, const std::vector<Variable>& out_grads) const {
    const Variable& g = out_grads[0];
    const auto& x = node.inputs;
    const Variable out = node.output(0);
    if (info(op_).comparison) return {zeros_like(x[0]), zeros_like(x[1])};
    switch (op_) {
    case ScalarOp::add: return {g, g};
    case ScalarOp::sub: return {g, neg(g)};
    case ScalarOp::mul: return {mul(g, x[1]), mul(g, x[0])};
    case ScalarOp::true_div: return {true_div(g, x[1]), neg(true_div(mul(g, x[0]), sqr(x[1])))};
    case ScalarOp::neg: return {neg(g)};
    case ScalarOp::exp: return {mul(g, out)};
    case ScalarOp::log: return {true_div(g, x[0])};
    case ScalarOp::log1p: return {true_div(g, add(x[0], 1.0))};
    case ScalarOp::sigmoid: return {mul(g, mul(out, sub(1.0, out)))};
    case ScalarOp::softplus: return {mul(g, sigmoid(x[0]))};
    case ScalarOp::tanh: return {mul(g, sub(1.0, sqr(out)))};
    case ScalarOp::abs: return {mul(g, sgn(x[0]))};
    case ScalarOp::sgn: return {zeros_like(x[0])};
    case ScalarOp::int_div: return {zeros_like(x[0]), zeros_like(x[1])};
    case ScalarOp::round_half_to_even: return {zeros_like(x[0])};
    case ScalarOp::mod: return {g, neg(mul(g, int_div(x[0], x[1])))};
    case ScalarOp::sqrt: return {true_div(mul(g, 0.5), out)};
    case ScalarOp::sqr: return {mul(g, mul(x[0], 2.0))};
    case ScalarOp::pow:
        // d/dy x^y = x^y log(x), taken as 0 where x is 0 (x^y is 0 or 1 there, and 0 * log(0)
        // would be NaN), as Theano's.
        return {mul(g, mul(x[1], pow(x[0], sub(x[1], 1.0)))),
                switch_(eq(x[0], 0.0), 0.0, mul(g, mul(out, log(x[0]))))};
    case ScalarOp::maximum: {
        DType dt = node.types[0].dtype;
        return {mul(g, cast(ge(x[0], x[1]), dt)), mul(g, cast(lt(x[0], x[1]), dt))};
    }
    case ScalarOp::minimum: {
        DType dt = node.types[0].dtype;
        return {mul(g, cast(le(x[0], x[1]), dt)), mul(g, cast(gt(x[0], x[1]), dt))};
    }
    case ScalarOp::switch_: {
        Variable z = zeros_like(g);
        return {Variable(), switch_(x[0], g, z), switch_(x[0], z, g)};
    }
    case ScalarOp::second: return {Variable(), g};
    default: break;
    }
    return Op::pullback(node, out_grads);
}

std::string Cast::name() const { return fmt::format("Cast{{{}}}", dtype_name(to_)); }

std::vector<TensorType> Cast::make_types(const std::vector<Variable>& inputs) const {
    if (inputs.size() != 1) throw UsageError(fmt::format("{}: takes 1 input, got {}", name(), inputs.size()));
    return {TensorType{to_, inputs[0].broadcastable()}};
}

std::optional<std::vector<Shape>> Cast::infer_shape(const std::vector<Shape>& in) const {
    return std::vector<Shape>{in[0]};
}

void Cast::perform(const Node&, std::span<const Tensor* const> in, std::span<Tensor* const> out) const {
    out[0]->ensure(to_, in[0]->shape());
    out[0]->copy_from(*in[0]);
}

std::vector<Variable> Cast::pullback(const Node& node, const std::vector<Variable>& out_grads) const {
    const Variable& x = node.inputs[0];
    // An integer result passes no gradient (grad gives its inputs zeros before asking); an
    // integer source gets the float gradient as it is, as Theano's.
    if (!is_float(to_)) return {Variable()};
    if (!is_float(x.dtype())) return {out_grads[0]};
    return {cast(out_grads[0], x.dtype())};
}

Operand::Operand(double x, std::source_location w)
    : var(constant(Tensor::full(config().floatX, {}, x), "", true)), where(w) {}
Operand::Operand(int x, std::source_location w)
    : var(constant(Tensor::full(DType::int64, {}, x), "", true)), where(w) {}
Operand::Operand(long x, std::source_location w)
    : var(constant(Tensor::full(DType::int64, {}, static_cast<double>(x)), "", true)), where(w) {
    if (static_cast<long>(static_cast<double>(x)) != x) {
        Tensor t = Tensor::scalar<std::int64_t>(x);
        var = constant(t, "", true);
    }
}

Variable elemwise(ScalarOp op, const std::vector<Variable>& inputs, std::source_location where) {
    const auto& inf = info(op);
    if (static_cast<int>(inputs.size()) != inf.arity) {
        throw UsageError(fmt::format("Elemwise{{{}}}: takes {} inputs, got {}", inf.name, inf.arity,
                                     inputs.size()));
    }
    std::vector<Variable> ins = inputs;
    std::size_t first = 0;
    if (op == ScalarOp::switch_) {
        if (ins[0].dtype() != DType::boolean) ins[0] = apply1(std::make_shared<Cast>(DType::boolean), {ins[0]}, where);
        first = 1;
    }
    // Result dtype: promote strong operands; weak constants only raise the kind.
    std::optional<DType> strong;
    std::optional<DType> weak;
    for (std::size_t i = first; i < ins.size(); ++i) {
        DType d = ins[i].dtype();
        if (is_weak(ins[i])) {
            weak = weak ? promote(*weak, d) : d;
        } else {
            strong = strong ? promote(*strong, d) : d;
        }
    }
    DType dt;
    if (!strong) {
        dt = *weak;
    } else {
        dt = *strong;
        if (weak && kind_rank(*weak) > kind_rank(dt)) dt = kind_rank(*weak) == 2 ? float_for(dt) : DType::int64;
    }
    if (inf.float_only) dt = upgrade_to_float(op, dt);
    int nd = 0;
    for (const auto& v : ins) nd = std::max(nd, v.ndim());
    for (std::size_t i = 0; i < ins.size(); ++i) {
        if (i >= first) ins[i] = cast_to(ins[i], dt, where);
        ins[i] = align_rank(ins[i], nd, where);
    }
    return apply1(std::make_shared<Elemwise>(op), ins, where);
}

Variable add(const Operand& a, const Operand& b) { return elemwise(ScalarOp::add, {a.var, b.var}, a.where); }
Variable sub(const Operand& a, const Operand& b) { return elemwise(ScalarOp::sub, {a.var, b.var}, a.where); }
Variable mul(const Operand& a, const Operand& b) { return elemwise(ScalarOp::mul, {a.var, b.var}, a.where); }
Variable true_div(const Operand& a, const Operand& b) { return elemwise(ScalarOp::true_div, {a.var, b.var}, a.where); }
Variable neg(const Operand& a) { return elemwise(ScalarOp::neg, {a.var}, a.where); }
Variable exp(const Operand& a) { return elemwise(ScalarOp::exp, {a.var}, a.where); }
Variable log(const Operand& a) { return elemwise(ScalarOp::log, {a.var}, a.where); }
Variable log1p(const Operand& a) { return elemwise(ScalarOp::log1p, {a.var}, a.where); }
Variable sigmoid(const Operand& a) { return elemwise(ScalarOp::sigmoid, {a.var}, a.where); }
Variable softplus(const Operand& a) { return elemwise(ScalarOp::softplus, {a.var}, a.where); }
Variable tanh(const Operand& a) { return elemwise(ScalarOp::tanh, {a.var}, a.where); }
Variable abs(const Operand& a) { return elemwise(ScalarOp::abs, {a.var}, a.where); }
Variable sgn(const Operand& a) { return elemwise(ScalarOp::sgn, {a.var}, a.where); }
Variable int_div(const Operand& a, const Operand& b) { return elemwise(ScalarOp::int_div, {a.var, b.var}, a.where); }
Variable mod(const Operand& a, const Operand& b) { return elemwise(ScalarOp::mod, {a.var, b.var}, a.where); }
Variable round_half_to_even(const Operand& a) { return elemwise(ScalarOp::round_half_to_even, {a.var}, a.where); }
Variable sqrt(const Operand& a) { return elemwise(ScalarOp::sqrt, {a.var}, a.where); }
Variable sqr(const Operand& a) { return elemwise(ScalarOp::sqr, {a.var}, a.where); }
Variable pow(const Operand& a, const Operand& b) { return elemwise(ScalarOp::pow, {a.var, b.var}, a.where); }
Variable maximum(const Operand& a, const Operand& b) { return elemwise(ScalarOp::maximum, {a.var, b.var}, a.where); }
Variable minimum(const Operand& a, const Operand& b) { return elemwise(ScalarOp::minimum, {a.var, b.var}, a.where); }
Variable clip(const Operand& x, const Operand& lo, const Operand& hi) {
    return elemwise(ScalarOp::minimum, {elemwise(ScalarOp::maximum, {x.var, lo.var}, x.where), hi.var}, x.where);
}
Variable switch_(const Operand& c, const Operand& a, const Operand& b) {
    return elemwise(ScalarOp::switch_, {c.var, a.var, b.var}, c.where);
}
Variable eq(const Operand& a, const Operand& b) { return elemwise(ScalarOp::eq, {a.var, b.var}, a.where); }
Variable neq(const Operand& a, const Operand& b) { return elemwise(ScalarOp::neq, {a.var, b.var}, a.where); }
Variable lt(const Operand& a, const Operand& b) { return elemwise(ScalarOp::lt, {a.var, b.var}, a.where); }
Variable le(const Operand& a, const Operand& b) { return elemwise(ScalarOp::le, {a.var, b.var}, a.where); }
Variable gt(const Operand& a, const Operand& b) { return elemwise(ScalarOp::gt, {a.var, b.var}, a.where); }
Variable ge(const Operand& a, const Operand& b) { return elemwise(ScalarOp::ge, {a.var, b.var}, a.where); }

Variable second(const Operand& a, const Operand& b) {
    // b takes a's dtype when b is a weak constant; otherwise a's values are ignored and only
    // its shape matters, so b keeps its own dtype.
    Variable bv = is_weak(b.var) ? cast_to(b.var, a.var.dtype(), b.where) : b.var;
    Variable av = a.var;
    if (av.dtype() != bv.dtype()) av = apply1(std::make_shared<Cast>(bv.dtype()), {av}, a.where);
    int nd = std::max(av.ndim(), bv.ndim());
    return apply1(std::make_shared<Elemwise>(ScalarOp::second),
                  {align_rank(av, nd, a.where), align_rank(bv, nd, a.where)}, a.where);
}

Variable cast(const Operand& a, DType to) {
    if (a.var.dtype() == to) return a.var;
    return apply1(std::make_shared<Cast>(to), {a.var}, a.where);
}

Variable zeros_like(const Variable& a) { return second(a, constant(Tensor::full(a.dtype(), {}, 0.0))); }
Variable ones_like(const Variable& a) { return second(a, constant(Tensor::full(a.dtype(), {}, 1.0))); }

Variable operator+(const Operand& a, const Operand& b) { return add(a, b); }
Variable operator-(const Operand& a, const Operand& b) { return sub(a, b); }
Variable operator*(const Operand& a, const Operand& b) { return mul(a, b); }
Variable operator/(const Operand& a, const Operand& b) { return true_div(a, b); }
Variable operator-(const Operand& a) { return neg(a); }

}  // namespace theanine
