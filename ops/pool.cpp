#include "ops/pool.hpp"

#include <algorithm>
#include <bit>
#include <cstdint>
#include <type_traits>
#include <cmath>
#include <limits>
#include <vector>

#include <fmt/format.h>

#include "ops/blas.hpp"
#include "ops/elemwise.hpp"

namespace theanine {

std::string pool_mode_name(PoolMode m) {
    switch (m) {
        case PoolMode::max: return "max";
        case PoolMode::sum: return "sum";
        case PoolMode::average_inc_pad: return "average_inc_pad";
        case PoolMode::average_exc_pad: return "average_exc_pad";
    }
    return "";
}

std::string PoolParams::str() const {
    std::string s = fmt::format("{}, ws=({}, {})", pool_mode_name(mode), ws[0], ws[1]);
    if (stride != ws) s += fmt::format(", stride=({}, {})", stride[0], stride[1]);
    if (pad != std::array<std::int64_t, 2>{0, 0}) s += fmt::format(", pad=({}, {})", pad[0], pad[1]);
    s += ignore_border ? ", ignore_border" : "";
    return s;
}

std::size_t PoolParams::hash() const {
    std::size_t h = static_cast<std::size_t>(mode) * 2u + (ignore_border ? 1u : 0u);
    for (std::int64_t v : {ws[0], ws[1], stride[0], stride[1], pad[0], pad[1]}) {
        h = h * 31u + static_cast<std::size_t>(v);
    }
    return h;
}

std::int64_t PoolParams::out_size(int a, std::int64_t in) const {
    const std::int64_t v = in + 2 * pad[a], w = ws[a], s = stride[a];
    if (ignore_border) return v < w ? 0 : (v - w) / s + 1;
    if (v <= 0) return 0;
    if (s >= w) return (v - 1) / s + 1;
    return std::max<std::int64_t>(0, (v - 1 - w + s) / s) + 1;
}

namespace {

// The windows of one axis: for output position j, the input positions [lo(j), hi(j)) it
// covers (padding excluded) and the divisor of the averaging modes.
struct AxisWindows {
    std::int64_t ws = 1, stride = 1, pad = 0, padded = 0;
    bool inc_pad = false;
    std::int64_t start(std::int64_t j) const { return j * stride; }
    std::int64_t end(std::int64_t j) const { return std::min(start(j) + ws, padded); }
    std::int64_t lo(std::int64_t j) const { return std::max(start(j), pad) - pad; }
    std::int64_t hi(std::int64_t j) const { return std::max(lo(j), std::min(end(j), padded - pad) - pad); }
    std::int64_t div(std::int64_t j) const { return inc_pad ? end(j) - start(j) : hi(j) - lo(j); }
};

AxisWindows windows(const PoolParams& p, int a, std::int64_t in) {
    return {p.ws[a], p.stride[a], p.pad[a], in + 2 * p.pad[a], p.mode == PoolMode::average_inc_pad};
}

// Runtime layout: the leading axes flattened into `slices` images of rows x cols.
struct PoolGeom {
    std::int64_t slices, rows, cols, orows, ocols;
    AxisWindows wr, wc;
};

PoolGeom pool_geom(const PoolParams& p, const Shape& xs) {
    PoolGeom g{};
    const std::size_t nd = xs.size();
    g.rows = xs[nd - 2];
    g.cols = xs[nd - 1];
    g.slices = 1;
    for (std::size_t i = 0; i + 2 < nd; ++i) g.slices *= xs[i];
    g.orows = p.out_size(0, g.rows);
    g.ocols = p.out_size(1, g.cols);
    g.wr = windows(p, 0, g.rows);
    g.wc = windows(p, 1, g.cols);
    return g;
}

Shape pooled_shape(const PoolParams& p, const Shape& xs) {
    Shape s = xs;
    const std::size_t nd = xs.size();
    s[nd - 2] = p.out_size(0, xs[nd - 2]);
    s[nd - 1] = p.out_size(1, xs[nd - 1]);
    return s;
}

// The larger of a and b, NaN when either is NaN (as numpy's max); a on a tie. Written as two
// selects the compiler turns into a max and a conditional move: a branch here is mispredicted
// on every other window of random data, and the short rows of a pooled image (4 or 12 columns)
// run in the scalar tail of a vectorised loop.
template <class T>
T max_nan(T a, T b) {
    const T m = b > a ? b : a;
    return b != b ? b : m;
}

// d where keep, +0 elsewhere, without a branch (the bits of d masked).
template <class T>
T keep_if(bool keep, T d) {
    using U = std::conditional_t<sizeof(T) == 4, std::uint32_t, std::uint64_t>;
    return std::bit_cast<T>(std::bit_cast<U>(d) & (U(0) - U(keep)));
}

// Runs fn(slice) over the slices, split into parts run on the worker threads.
template <class F>
void for_slices(std::int64_t slices, F&& fn) {
    const int parts = static_cast<int>(std::max<std::int64_t>(1, std::min<std::int64_t>(num_threads(), slices)));
    run_parts(parts, [&](int part) {
        const std::int64_t s0 = slices * part / parts, s1 = slices * (part + 1) / parts;
        for (std::int64_t s = s0; s < s1; ++s) fn(s);
    });
}

void check_input(const std::string& op, const std::vector<Variable>& inputs, std::size_t i, int ndim) {
    const Variable& v = inputs[i];
    if (!is_float(v.dtype()) || v.ndim() < 2 || (ndim >= 0 && v.ndim() != ndim) ||
        v.dtype() != inputs[0].dtype()) {
        throw UsageError(fmt::format("{}: input {} must be a float tensor of {} dims of the dtype of input 0 ({}), "
                                     "got {}", op, i, ndim >= 0 ? std::to_string(ndim) : std::string("2 or more"),
                                     inputs[0].type().str(), v.type().str()));
    }
}

void check_same_shape(const std::string& op, const Tensor& a, const char* an, const Tensor& b, const char* bn) {
    if (a.shape() != b.shape()) {
        throw UsageError(fmt::format("{}: {} has shape {} but {} has shape {}", op, an, shape_string(a.shape()), bn,
                                     shape_string(b.shape())));
    }
}

void check_pooled(const std::string& op, const PoolParams& p, const Tensor& x, const Tensor& z, const char* zn) {
    if (z.shape() != pooled_shape(p, x.shape())) {
        throw UsageError(fmt::format("{}: {} has shape {} but pooling the input of shape {} gives {}", op, zn,
                                     shape_string(z.shape()), shape_string(x.shape()),
                                     shape_string(pooled_shape(p, x.shape()))));
    }
}

}  // namespace

// ---------------------------------------------------------------- Pool

std::string Pool::name() const { return fmt::format("Pool{{{}}}", p_.str()); }

std::vector<TensorType> Pool::make_types(const std::vector<Variable>& inputs) const {
    if (inputs.size() != 1) throw UsageError("Pool: takes 1 input");
    check_input("Pool", inputs, 0, -1);
    std::vector<bool> b = inputs[0].broadcastable();
    b[b.size() - 2] = b[b.size() - 1] = false;
    return {TensorType{inputs[0].dtype(), b}};
}

std::optional<std::vector<Shape>> Pool::infer_shape(const std::vector<Shape>& in) const {
    return std::vector<Shape>{pooled_shape(p_, in[0])};
}

void Pool::perform(const Node& node, std::span<const Tensor* const> in,
                   std::span<Tensor* const> out) const try {
    const Tensor x = in[0]->contiguous();
    const PoolGeom g = pool_geom(p_, x.shape());
    out[0]->ensure(x.dtype(), pooled_shape(p_, x.shape()));
    if (out[0]->size() == 0) return;
    dispatch(x.dtype(), [&]<class T>() {
        if constexpr (std::is_floating_point_v<T>) {
            const T* xp = x.data<T>();
            T* zp = out[0]->data<T>();
            const bool is_max = p_.mode == PoolMode::max;
            // 2x2 max-pooling at stride 2 (the tutorials' layer) reads each window directly.
            const bool max2 = is_max && p_.ws == std::array<std::int64_t, 2>{2, 2} && p_.stride == p_.ws &&
                              p_.pad == std::array<std::int64_t, 2>{0, 0} &&
                              g.orows * 2 <= g.rows && g.ocols * 2 <= g.cols;
            for_slices(g.slices, [&](std::int64_t s) {
                if (max2) {
                    const T* xs = xp + s * g.rows * g.cols;
                    T* zs = zp + s * g.orows * g.ocols;
                    for (std::int64_t r = 0; r < g.orows; ++r) {
                        const T* a = xs + 2 * r * g.cols;
                        const T* b = a + g.cols;
                        T* zr = zs + r * g.ocols;
                        for (std::int64_t c = 0; c < g.ocols; ++c) {
                            zr[c] = max_nan(max_nan(a[2 * c], a[2 * c + 1]), max_nan(b[2 * c], b[2 * c + 1]));
                        }
                    }
                    return;
                }
                // Otherwise: windows are rectangles, so max and sum are taken over the window's
                // rows first (a vectorisable pass over whole input rows), then its columns.
                thread_local std::vector<T> row_acc;
                row_acc.resize(static_cast<std::size_t>(g.cols));
                T* acc = row_acc.data();
                const T* xs = xp + s * g.rows * g.cols;
                T* zs = zp + s * g.orows * g.ocols;
                for (std::int64_t r = 0; r < g.orows; ++r) {
                    const std::int64_t i0 = g.wr.lo(r), i1 = g.wr.hi(r);
                    std::copy(xs + i0 * g.cols, xs + (i0 + 1) * g.cols, acc);
                    for (std::int64_t i = i0 + 1; i < i1; ++i) {
                        const T* xr = xs + i * g.cols;
                        if (is_max) {
                            for (std::int64_t j = 0; j < g.cols; ++j) acc[j] = max_nan(acc[j], xr[j]);
                        } else {
                            for (std::int64_t j = 0; j < g.cols; ++j) acc[j] += xr[j];
                        }
                    }
                    T* zr = zs + r * g.ocols;
                    for (std::int64_t c = 0; c < g.ocols; ++c) {
                        const std::int64_t j0 = g.wc.lo(c), j1 = g.wc.hi(c);
                        T v = acc[j0];
                        if (is_max) {
                            for (std::int64_t j = j0 + 1; j < j1; ++j) v = max_nan(v, acc[j]);
                        } else {
                            for (std::int64_t j = j0 + 1; j < j1; ++j) v += acc[j];
                            if (p_.mode != PoolMode::sum) v /= static_cast<T>(g.wr.div(r) * g.wc.div(c));
                        }
                        zr[c] = v;
                    }
                }
            });
        }
    });
} catch (const UsageError& e) {
    rethrow_at(e, node.where);
}

std::vector<Variable> Pool::pullback(const Node& node, const std::vector<Variable>& g) const {
    if (!g[0].defined()) return {Variable()};
    const Variable& x = node.inputs[0];
    if (p_.mode == PoolMode::max) {
        return {apply1(std::make_shared<MaxPoolGrad>(p_), {x, node.output(0), g[0]}, node.where)};
    }
    return {apply1(std::make_shared<AveragePoolGrad>(p_), {x, g[0]}, node.where)};
}

// ---------------------------------------------------------------- MaxPoolGrad

std::string MaxPoolGrad::name() const { return fmt::format("MaxPoolGrad{{{}}}", p_.str()); }

std::vector<TensorType> MaxPoolGrad::make_types(const std::vector<Variable>& inputs) const {
    if (inputs.size() != 3) throw UsageError("MaxPoolGrad: takes 3 inputs (x, pooled, gz)");
    for (std::size_t i = 0; i < 3; ++i) check_input("MaxPoolGrad", inputs, i, inputs[0].ndim());
    return {inputs[0].type()};
}

void MaxPoolGrad::perform(const Node& node, std::span<const Tensor* const> in,
                          std::span<Tensor* const> out) const try {
    const Tensor x = in[0]->contiguous(), z = in[1]->contiguous(), gz = in[2]->contiguous();
    check_pooled("MaxPoolGrad", p_, x, z, "pooled (input 1)");
    check_same_shape("MaxPoolGrad", z, "pooled (input 1)", gz, "gz (input 2)");
    const PoolGeom g = pool_geom(p_, x.shape());
    out[0]->ensure(x.dtype(), x.shape());
    if (out[0]->size() == 0) return;
    dispatch(x.dtype(), [&]<class T>() {
        if constexpr (std::is_floating_point_v<T>) {
            const T* xp = x.data<T>();
            const T* zp = z.data<T>();
            const T* gp = gz.data<T>();
            T* op = out[0]->data<T>();
            // Windows that neither overlap nor skip columns (stride == ws, no padding): each
            // input position belongs to at most one window, so gx is written in one pass.
            // (Partial windows at the border, kept without ignore_border, take the general path.)
            const bool tiled = p_.stride == p_.ws && p_.pad == std::array<std::int64_t, 2>{0, 0} &&
                               g.orows * p_.ws[0] <= g.rows && g.ocols * p_.ws[1] <= g.cols;
            for_slices(g.slices, [&](std::int64_t s) {
                const T* xs = xp + s * g.rows * g.cols;
                const T* zs = zp + s * g.orows * g.ocols;
                const T* gs = gp + s * g.orows * g.ocols;
                T* os = op + s * g.rows * g.cols;
                if (tiled) {
                    // Each pooled row's maxima and gradients are spread once over the columns
                    // of their windows; the window's input rows then compare and select in a
                    // vectorised pass each (a window at a time does not vectorise).
                    const std::int64_t wr = p_.ws[0], wc = p_.ws[1];
                    const std::int64_t covered = g.ocols * wc;
                    thread_local std::vector<T> spread;
                    spread.resize(static_cast<std::size_t>(2 * covered));
                    T* zw = spread.data();
                    T* gw = zw + covered;
                    for (std::int64_t r = 0; r < g.orows; ++r) {
                        const T* zr = zs + r * g.ocols;
                        const T* gr = gs + r * g.ocols;
                        if (wc == 2) {
                            for (std::int64_t c = 0; c < g.ocols; ++c) {
                                zw[2 * c] = zw[2 * c + 1] = zr[c];
                                gw[2 * c] = gw[2 * c + 1] = gr[c];
                            }
                        } else {
                            for (std::int64_t c = 0; c < g.ocols; ++c) {
                                std::fill(zw + c * wc, zw + (c + 1) * wc, zr[c]);
                                std::fill(gw + c * wc, gw + (c + 1) * wc, gr[c]);
                            }
                        }
                        for (std::int64_t i = r * wr; i < (r + 1) * wr; ++i) {
                            const T* xr = xs + i * g.cols;
                            T* orow = os + i * g.cols;
                            for (std::int64_t j = 0; j < covered; ++j) orow[j] = keep_if(xr[j] == zw[j], gw[j]);
                            std::fill(orow + covered, orow + g.cols, T(0));
                        }
                    }
                    std::fill(os + g.orows * wr * g.cols, os + g.rows * g.cols, T(0));
                    return;
                }
                // Input rows are zeroed as the windows reach them (windows move down), so
                // each row is written while it is in cache.
                std::int64_t zeroed = 0;
                for (std::int64_t r = 0; r < g.orows; ++r) {
                    const std::int64_t i0 = g.wr.lo(r), i1 = g.wr.hi(r);
                    if (i1 > zeroed) {
                        std::fill(os + zeroed * g.cols, os + i1 * g.cols, T(0));
                        zeroed = i1;
                    }
                    for (std::int64_t i = i0; i < i1; ++i) {
                        const T* xr = xs + i * g.cols;
                        T* orow = os + i * g.cols;
                        for (std::int64_t c = 0; c < g.ocols; ++c) {
                            const T m = zs[r * g.ocols + c], d = gs[r * g.ocols + c];
                            for (std::int64_t j = g.wc.lo(c), j1 = g.wc.hi(c); j < j1; ++j) {
                                orow[j] += keep_if(xr[j] == m, d);
                            }
                        }
                    }
                }
                std::fill(os + zeroed * g.cols, os + g.rows * g.cols, T(0));
            });
        }
    });
} catch (const UsageError& e) {
    rethrow_at(e, node.where);
}

std::vector<Variable> MaxPoolGrad::pullback(const Node& node, const std::vector<Variable>& g) const {
    if (!g[0].defined()) return {Variable(), Variable(), Variable()};
    const Variable& x = node.inputs[0];
    const Variable& z = node.inputs[1];
    // Piecewise constant in x and the maximum: their gradients are zero where defined.
    return {zeros_like(x), zeros_like(z), apply1(std::make_shared<MaxPoolGradGrad>(p_), {x, z, g[0]}, node.where)};
}

// ---------------------------------------------------------------- AveragePoolGrad

std::string AveragePoolGrad::name() const { return fmt::format("AveragePoolGrad{{{}}}", p_.str()); }

std::vector<TensorType> AveragePoolGrad::make_types(const std::vector<Variable>& inputs) const {
    if (inputs.size() != 2) throw UsageError("AveragePoolGrad: takes 2 inputs (x, gz)");
    for (std::size_t i = 0; i < 2; ++i) check_input("AveragePoolGrad", inputs, i, inputs[0].ndim());
    return {inputs[0].type()};
}

void AveragePoolGrad::perform(const Node& node, std::span<const Tensor* const> in,
                              std::span<Tensor* const> out) const try {
    const Tensor& x = *in[0];
    const Tensor gz = in[1]->contiguous();
    check_pooled("AveragePoolGrad", p_, x, gz, "gz (input 1)");
    const PoolGeom g = pool_geom(p_, x.shape());
    out[0]->ensure(x.dtype(), x.shape());
    if (out[0]->size() == 0) return;
    dispatch(x.dtype(), [&]<class T>() {
        if constexpr (std::is_floating_point_v<T>) {
            const T* gp = gz.data<T>();
            T* op = out[0]->data<T>();
            for_slices(g.slices, [&](std::int64_t s) {
                T* os = op + s * g.rows * g.cols;
                std::fill(os, os + g.rows * g.cols, T(0));
                for (std::int64_t r = 0; r < g.orows; ++r) {
                    for (std::int64_t c = 0; c < g.ocols; ++c) {
                        T d = gp[s * g.orows * g.ocols + r * g.ocols + c];
                        if (p_.mode != PoolMode::sum) d /= static_cast<T>(g.wr.div(r) * g.wc.div(c));
                        for (std::int64_t i = g.wr.lo(r); i < g.wr.hi(r); ++i) {
                            for (std::int64_t j = g.wc.lo(c); j < g.wc.hi(c); ++j) os[i * g.cols + j] += d;
                        }
                    }
                }
            });
        }
    });
} catch (const UsageError& e) {
    rethrow_at(e, node.where);
}

std::vector<Variable> AveragePoolGrad::pullback(const Node& node, const std::vector<Variable>& g) const {
    if (!g[0].defined()) return {Variable(), Variable()};
    // Linear in gz; x gives the shape only.
    return {zeros_like(node.inputs[0]), apply1(std::make_shared<Pool>(p_), {g[0]}, node.where)};
}

// ---------------------------------------------------------------- MaxPoolGradGrad

std::string MaxPoolGradGrad::name() const { return fmt::format("MaxPoolGradGrad{{{}}}", p_.str()); }

std::vector<TensorType> MaxPoolGradGrad::make_types(const std::vector<Variable>& inputs) const {
    if (inputs.size() != 3) throw UsageError("MaxPoolGradGrad: takes 3 inputs (x, pooled, ggx)");
    for (std::size_t i = 0; i < 3; ++i) check_input("MaxPoolGradGrad", inputs, i, inputs[0].ndim());
    return {inputs[1].type()};
}

void MaxPoolGradGrad::perform(const Node& node, std::span<const Tensor* const> in,
                              std::span<Tensor* const> out) const try {
    const Tensor x = in[0]->contiguous(), z = in[1]->contiguous(), ggx = in[2]->contiguous();
    check_pooled("MaxPoolGradGrad", p_, x, z, "pooled (input 1)");
    check_same_shape("MaxPoolGradGrad", x, "x (input 0)", ggx, "ggx (input 2)");
    const PoolGeom g = pool_geom(p_, x.shape());
    out[0]->ensure(x.dtype(), z.shape());
    if (out[0]->size() == 0) return;
    dispatch(x.dtype(), [&]<class T>() {
        if constexpr (std::is_floating_point_v<T>) {
            const T* xp = x.data<T>();
            const T* zp = z.data<T>();
            const T* gp = ggx.data<T>();
            T* op = out[0]->data<T>();
            for_slices(g.slices, [&](std::int64_t s) {
                const T* xs = xp + s * g.rows * g.cols;
                const T* gs = gp + s * g.rows * g.cols;
                for (std::int64_t r = 0; r < g.orows; ++r) {
                    for (std::int64_t c = 0; c < g.ocols; ++c) {
                        const std::int64_t k = s * g.orows * g.ocols + r * g.ocols + c;
                        const T m = zp[k];
                        T acc = 0;
                        for (std::int64_t i = g.wr.lo(r); i < g.wr.hi(r); ++i) {
                            for (std::int64_t j = g.wc.lo(c); j < g.wc.hi(c); ++j) {
                                acc += keep_if(xs[i * g.cols + j] == m, gs[i * g.cols + j]);
                            }
                        }
                        op[k] = acc;
                    }
                }
            });
        }
    });
} catch (const UsageError& e) {
    rethrow_at(e, node.where);
}

std::vector<Variable> MaxPoolGradGrad::pullback(const Node& node, const std::vector<Variable>& g) const {
    if (!g[0].defined()) return {Variable(), Variable(), Variable()};
    const Variable& x = node.inputs[0];
    const Variable& z = node.inputs[1];
    return {zeros_like(x), zeros_like(z), apply1(std::make_shared<MaxPoolGrad>(p_), {x, z, g[0]}, node.where)};
}

// ---------------------------------------------------------------- builder

Variable pool_2d(const Variable& input, std::array<std::int64_t, 2> ws, const PoolArgs& args,
                 std::source_location where) {
    PoolParams p;
    p.ws = ws;
    p.stride = args.stride.value_or(ws);
    p.pad = args.pad;
    p.ignore_border = args.ignore_border;
    if (args.mode == "max") {
        p.mode = PoolMode::max;
    } else if (args.mode == "sum") {
        p.mode = PoolMode::sum;
    } else if (args.mode == "average_inc_pad") {
        p.mode = PoolMode::average_inc_pad;
    } else if (args.mode == "average_exc_pad") {
        p.mode = PoolMode::average_exc_pad;
    } else {
        throw UsageError(fmt::format("pool_2d: mode \"{}\" is not one of \"max\", \"sum\", \"average_inc_pad\", "
                                     "\"average_exc_pad\"", args.mode));
    }
    if (input.ndim() < 2) {
        throw UsageError(fmt::format("pool_2d: the input must have 2 or more dims, got {}", input.type().str()));
    }
    for (int a = 0; a < 2; ++a) {
        if (p.ws[a] < 1 || p.stride[a] < 1 || p.pad[a] < 0) {
            throw UsageError(fmt::format("pool_2d: ws ({}, {}) and stride ({}, {}) must be positive and pad ({}, {}) "
                                         "not negative", p.ws[0], p.ws[1], p.stride[0], p.stride[1], p.pad[0],
                                         p.pad[1]));
        }
        if (p.pad[a] >= p.ws[a]) {
            throw UsageError(fmt::format("pool_2d: pad ({}, {}) must be smaller than ws ({}, {})", p.pad[0], p.pad[1],
                                         p.ws[0], p.ws[1]));
        }
    }
    if ((p.pad[0] || p.pad[1]) && !p.ignore_border) {
        throw UsageError(fmt::format("pool_2d: padding ({}, {}) needs ignore_border=true", p.pad[0], p.pad[1]));
    }
    return apply1(std::make_shared<Pool>(p), {input}, where);
}

}  // namespace theanine
