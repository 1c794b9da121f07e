#include "ops/conv.hpp"

#include <algorithm>
#include <cstring>
#include <vector>

#include <fmt/format.h>
#include <fmt/ranges.h>

#include "ops/blas.hpp"
#include "ops/elemwise.hpp"
#include "ops/shape.hpp"

namespace theanine {

// ---------------------------------------------------------------- parameters

BorderMode::BorderMode(const char* name) {
    const std::string s = name ? name : "";
    if (s == "valid") {
        kind = Kind::valid;
    } else if (s == "full") {
        kind = Kind::full;
    } else if (s == "half") {
        kind = Kind::half;
    } else {
        throw UsageError(fmt::format("conv2d: border_mode \"{}\" is not one of \"valid\", \"full\", \"half\" or "
                                     "explicit padding {{rows, cols}}", s));
    }
}

BorderMode::BorderMode(std::int64_t both) : BorderMode(both, both) {}

BorderMode::BorderMode(std::int64_t r, std::int64_t c) : kind(Kind::explicit_pad), rows(r), cols(c) {
    if (r < 0 || c < 0) throw UsageError(fmt::format("conv2d: padding ({}, {}) must not be negative", r, c));
}

std::int64_t BorderMode::pad(int axis, std::int64_t k, std::int64_t d) const {
    switch (kind) {
        case Kind::valid: return 0;
        case Kind::full: return d * (k - 1);
        case Kind::half: return d * (k / 2);
        case Kind::explicit_pad: return axis == 0 ? rows : cols;
    }
    return 0;
}

std::string BorderMode::str() const {
    switch (kind) {
        case Kind::valid: return "valid";
        case Kind::full: return "full";
        case Kind::half: return "half";
        case Kind::explicit_pad: return fmt::format("({}, {})", rows, cols);
    }
    return "";
}

std::string ConvParams::str() const {
    std::string s = border.str();
    if (stride != std::array<std::int64_t, 2>{1, 1}) s += fmt::format(", subsample=({}, {})", stride[0], stride[1]);
    if (dilation != std::array<std::int64_t, 2>{1, 1}) {
        s += fmt::format(", filter_dilation=({}, {})", dilation[0], dilation[1]);
    }
    if (!flip) s += ", correlation";
    if (groups != 1) s += fmt::format(", num_groups={}", groups);
    return s;
}

std::size_t ConvParams::hash() const {
    std::size_t h = static_cast<std::size_t>(border.kind) * 1000003u;
    for (std::int64_t v : {border.rows, border.cols, stride[0], stride[1], dilation[0], dilation[1], groups}) {
        h = h * 31u + static_cast<std::size_t>(v);
    }
    return h * 2u + (flip ? 1u : 0u);
}

std::int64_t ConvParams::out_size(int axis, std::int64_t in, std::int64_t k) const {
    const std::int64_t d = dilation[axis], s = stride[axis];
    const std::int64_t span = in + 2 * border.pad(axis, k, d) - d * (k - 1);
    if (span < 1) return 0;
    return (span - 1) / s + 1;
}

namespace {

void check_params(const ConvParams& p) {
    if (p.stride[0] < 1 || p.stride[1] < 1) {
        throw UsageError(fmt::format("conv2d: subsample ({}, {}) must be positive", p.stride[0], p.stride[1]));
    }
    if (p.dilation[0] < 1 || p.dilation[1] < 1) {
        throw UsageError(
            fmt::format("conv2d: filter_dilation ({}, {}) must be positive", p.dilation[0], p.dilation[1]));
    }
    if (p.groups < 1) throw UsageError(fmt::format("conv2d: num_groups {} must be positive", p.groups));
}

std::string declared_str(const std::array<std::int64_t, 4>& s) {
    auto one = [](std::int64_t v) { return v < 0 ? std::string("None") : std::to_string(v); };
    return fmt::format("({}, {}, {}, {})", one(s[0]), one(s[1]), one(s[2]), one(s[3]));
}

// The geometry of one call: sizes, padding, output size. C and F count all channels and
// filters; each of the G groups has C / G channels and F / G filters.
struct Geom {
    std::int64_t N, C, H, W, F, KH, KW, OH, OW, ph, pw, sh, sw, dh, dw, G;
    bool flip;
    std::int64_t Fg() const { return F / G; }
    std::int64_t ckk() const { return C / G * KH * KW; }  // unrolled rows of one group
    std::int64_t P() const { return OH * OW; }
    // 1x1 filters at stride 1 without padding read the image itself as the unrolled matrix.
    bool direct() const { return KH == 1 && KW == 1 && sh == 1 && sw == 1 && ph == 0 && pw == 0; }
};

Geom geometry(const ConvParams& p, std::int64_t N, std::int64_t C, std::int64_t H, std::int64_t W, std::int64_t F,
              std::int64_t KH, std::int64_t KW) {
    Geom g{};
    g.N = N; g.C = C; g.H = H; g.W = W; g.F = F; g.KH = KH; g.KW = KW;
    g.sh = p.stride[0]; g.sw = p.stride[1]; g.dh = p.dilation[0]; g.dw = p.dilation[1];
    g.ph = p.border.pad(0, KH, g.dh);
    g.pw = p.border.pad(1, KW, g.dw);
    g.OH = p.out_size(0, H, KH);
    g.OW = p.out_size(1, W, KW);
    g.flip = p.flip;
    g.G = p.groups;
    return g;
}

// dst[0, n) = src[0, n) for the short rows of an unrolled image (8 to 30 values; a call to
// memcpy per row, or a loop with a run-time trip count, costs more than the copy): whole
// 32-byte chunks, the last one ending at n (it overlaps the one before; the values are the same).
template <class T>
inline void copy_row(const T* src, T* dst, std::int64_t n) {
    constexpr std::int64_t kV = 32 / static_cast<std::int64_t>(sizeof(T));
    if (n < kV) {
        for (std::int64_t i = 0; i < n; ++i) dst[i] = src[i];
        return;
    }
    for (std::int64_t i = 0; i + kV < n; i += kV) std::memcpy(dst + i, src + i, 32);
    std::memcpy(dst + n - kV, src + n - kV, 32);
}

// dst[0, n) += src[0, n), the adjoint of copy_row: whole 32-byte chunks, then the rest one
// value at a time.
template <class T>
inline void add_row(const T* src, T* dst, std::int64_t n) {
    constexpr std::int64_t kV = 32 / static_cast<std::int64_t>(sizeof(T));
    using V [[gnu::vector_size(32)]] = T;
    std::int64_t i = 0;
    for (; i + kV <= n; i += kV) {
        V a, b;
        std::memcpy(&a, dst + i, 32);
        std::memcpy(&b, src + i, 32);
        a += b;
        std::memcpy(dst + i, &a, 32);
    }
    for (; i < n; ++i) dst[i] += src[i];
}

// Unrolls the receptive fields of one image x (C, H, W) into col (C*KH*KW, OH*OW).
template <class T>
void im2col(const T* x, const Geom& g, T* col) {
    const std::int64_t P = g.P();
    for (std::int64_t c = 0; c < g.C; ++c) {
        for (std::int64_t i = 0; i < g.KH; ++i) {
            const std::int64_t ki = g.flip ? g.KH - 1 - i : i;
            for (std::int64_t j = 0; j < g.KW; ++j) {
                const std::int64_t kj = g.flip ? g.KW - 1 - j : j;
                T* row = col + ((c * g.KH + i) * g.KW + j) * P;
                const std::int64_t base = kj * g.dw - g.pw;
                // Output columns whose input column falls inside the image: [lo, hi).
                std::int64_t lo = base >= 0 ? 0 : (-base + g.sw - 1) / g.sw;
                std::int64_t hi = g.W - base > 0 ? (g.W - base - 1) / g.sw + 1 : 0;
                lo = std::min(lo, g.OW);
                hi = std::clamp(hi, lo, g.OW);
                for (std::int64_t oy = 0; oy < g.OH; ++oy) {
                    T* dst = row + oy * g.OW;
                    const std::int64_t iy = oy * g.sh + ki * g.dh - g.ph;
                    if (iy < 0 || iy >= g.H) {
                        std::fill(dst, dst + g.OW, T(0));
                        continue;
                    }
                    const T* src = x + (c * g.H + iy) * g.W + base;
                    std::fill(dst, dst + lo, T(0));
                    if (g.sw == 1) {
                        copy_row(src + lo, dst + lo, hi - lo);
                    } else {
                        for (std::int64_t ox = lo; ox < hi; ++ox) dst[ox] = src[ox * g.sw];
                    }
                    std::fill(dst + hi, dst + g.OW, T(0));
                }
            }
        }
    }
}

// The adjoint of im2col: adds each entry of col (C*KH*KW, OH*OW) into the image position it
// was read from; gx (C, H, W) must hold zeros (or what it accumulates onto).
template <class T>
void col2im(const T* col, const Geom& g, T* gx) {
    const std::int64_t P = g.P();
    for (std::int64_t c = 0; c < g.C; ++c) {
        for (std::int64_t i = 0; i < g.KH; ++i) {
            const std::int64_t ki = g.flip ? g.KH - 1 - i : i;
            for (std::int64_t j = 0; j < g.KW; ++j) {
                const std::int64_t kj = g.flip ? g.KW - 1 - j : j;
                const T* row = col + ((c * g.KH + i) * g.KW + j) * P;
                const std::int64_t base = kj * g.dw - g.pw;
                std::int64_t lo = base >= 0 ? 0 : (-base + g.sw - 1) / g.sw;
                std::int64_t hi = g.W - base > 0 ? (g.W - base - 1) / g.sw + 1 : 0;
                lo = std::min(lo, g.OW);
                hi = std::clamp(hi, lo, g.OW);
                for (std::int64_t oy = 0; oy < g.OH; ++oy) {
                    const std::int64_t iy = oy * g.sh + ki * g.dh - g.ph;
                    if (iy < 0 || iy >= g.H) continue;
                    const T* src = row + oy * g.OW;
                    T* dst = gx + (c * g.H + iy) * g.W + base;
                    if (g.sw == 1) {
                        add_row(src + lo, dst + lo, hi - lo);
                    } else {
                        for (std::int64_t ox = lo; ox < hi; ++ox) dst[ox * g.sw] += src[ox];
                    }
                }
            }
        }
    }
}

// Images [first, second) of part `part` when n images are split into `parts` parts.
std::pair<std::int64_t, std::int64_t> image_range(std::int64_t n, int part, int parts) {
    return {n * part / parts, n * (part + 1) / parts};
}

int parts_for(std::int64_t images) {
    return static_cast<int>(std::max<std::int64_t>(1, std::min<std::int64_t>(num_threads(), images)));
}

void check_float4(const char* op, const std::vector<Variable>& inputs, std::size_t i, const char* what) {
    const Variable& v = inputs[i];
    if (v.ndim() != 4 || !is_float(v.dtype())) {
        throw UsageError(fmt::format("{}: input {} ({}) must be a 4-d float tensor, got {}", op, i, what,
                                     v.type().str()));
    }
}

void check_same_dtype(const char* op, const std::vector<Variable>& inputs, std::size_t a, std::size_t b) {
    if (inputs[a].dtype() != inputs[b].dtype()) {
        throw UsageError(fmt::format("{}: input {} is {} but input {} is {} (dtypes differ)", op, a,
                                     inputs[a].type().str(), b, inputs[b].type().str()));
    }
}

void check_size_vector(const char* op, const std::vector<Variable>& inputs, std::size_t i, const char* what) {
    const Variable& v = inputs[i];
    if (v.ndim() != 1 || !is_integer(v.dtype())) {
        throw UsageError(fmt::format("{}: input {} ({}) must be an integer vector of 2 sizes, got {}", op, i, what,
                                     v.type().str()));
    }
}

// The two sizes held by a runtime size vector, checked.
std::array<std::int64_t, 2> read_sizes(const char* op, const Tensor& t, const char* what) {
    if (t.ndim() != 1 || t.dim(0) != 2) {
        throw UsageError(fmt::format("{}: {} must hold 2 sizes, got shape {}", op, what, shape_string(t.shape())));
    }
    const std::int64_t p[2] = {static_cast<std::int64_t>(t.at({0})), static_cast<std::int64_t>(t.at({1}))};
    if (p[0] < 1 || p[1] < 1) throw UsageError(fmt::format("{}: {} ({}, {}) must be positive", op, what, p[0], p[1]));
    return {p[0], p[1]};
}

void check_fits(const char* op, const Geom& g, const ConvParams& p, const Shape& xs, const Shape& ws) {
    if (g.OH < 1 || g.OW < 1) {
        throw UsageError(fmt::format("{}: filters of shape {} do not fit the input of shape {} (border mode {}, "
                                     "filter_dilation ({}, {})): the output would have {} x {} positions",
                                     op, shape_string(ws), shape_string(xs), p.border.str(), p.dilation[0],
                                     p.dilation[1], std::max<std::int64_t>(g.OH, 0), std::max<std::int64_t>(g.OW, 0)));
    }
}

// The input's channels must be the filters' channels times the groups, and the filters must
// split evenly into the groups.
void check_groups(const char* op, std::int64_t channels, std::int64_t filter_channels, std::int64_t filters,
                  std::int64_t groups, const Shape& xs, const Shape& ws) {
    if (channels != filter_channels * groups) {
        throw UsageError(fmt::format("{}: the input of shape {} has {} channels but the filters of shape {} expect {}{}",
                                     op, shape_string(xs), channels, shape_string(ws), filter_channels * groups,
                                     groups > 1 ? fmt::format(" ({} per group, num_groups={})", filter_channels, groups)
                                                : std::string()));
    }
    if (filters % groups != 0) {
        throw UsageError(fmt::format("{}: {} filters (shape {}) do not split into num_groups={} groups", op, filters,
                                     shape_string(ws), groups));
    }
}

Variable size_vector(const Variable& x) { return make_vector({x.shape(2), x.shape(3)}); }

}  // namespace

// ---------------------------------------------------------------- Conv2d

std::string Conv2d::name() const { return fmt::format("Conv2d{{{}}}", p_.str()); }

bool Conv2d::props_equal(const Op& o) const {
    const auto& c = static_cast<const Conv2d&>(o);
    return p_ == c.p_ && input_shape_ == c.input_shape_ && filter_shape_ == c.filter_shape_;
}

std::vector<TensorType> Conv2d::make_types(const std::vector<Variable>& inputs) const {
    if (inputs.size() != 2) throw UsageError("Conv2d: takes 2 inputs (input, filters)");
    check_float4("Conv2d", inputs, 0, "input");
    check_float4("Conv2d", inputs, 1, "filters");
    check_same_dtype("Conv2d", inputs, 0, 1);
    if (input_shape_ && filter_shape_) {
        const auto& is = *input_shape_;
        const auto& fs = *filter_shape_;
        if (is[1] >= 0 && fs[1] >= 0 && is[1] != fs[1] * p_.groups) {
            throw UsageError(fmt::format("Conv2d: input_shape {} has {} channels but filter_shape {} has {}{}",
                                         declared_str(is), is[1], declared_str(fs), fs[1],
                                         p_.groups > 1 ? fmt::format(" per group of num_groups={}", p_.groups)
                                                       : std::string()));
        }
        for (int a = 0; a < 2; ++a) {
            if (is[2 + a] >= 0 && fs[2 + a] >= 0 && p_.out_size(a, is[2 + a], fs[2 + a]) < 1) {
                throw UsageError(fmt::format("Conv2d: filter_shape {} does not fit input_shape {} (border mode {})",
                                             declared_str(fs), declared_str(is), p_.border.str()));
            }
        }
    }
    const auto& xb = inputs[0].broadcastable();
    const auto& wb = inputs[1].broadcastable();
    return {TensorType{inputs[0].dtype(), {xb[0], wb[0], false, false}}};
}

std::optional<std::vector<Shape>> Conv2d::infer_shape(const std::vector<Shape>& in) const {
    const Shape& x = in[0];
    const Shape& w = in[1];
    return std::vector<Shape>{{x[0], w[0], p_.out_size(0, x[2], w[2]), p_.out_size(1, x[3], w[3])}};
}

void Conv2d::perform(const Node& node, std::span<const Tensor* const> in,
                     std::span<Tensor* const> out) const try {
    const Tensor x = in[0]->contiguous();
    const Tensor w = in[1]->contiguous();
    auto check_declared = [&](const DeclaredShape& d, const Tensor& t, const char* what, int i) {
        if (!d) return;
        for (int a = 0; a < 4; ++a) {
            if ((*d)[a] >= 0 && (*d)[a] != t.dim(a)) {
                throw UsageError(fmt::format("Conv2d: input {} ({}) has shape {} but {} was declared {}", i, what,
                                             shape_string(t.shape()), i == 0 ? "input_shape" : "filter_shape",
                                             declared_str(*d)));
            }
        }
    };
    check_declared(input_shape_, x, "input", 0);
    check_declared(filter_shape_, w, "filters", 1);
    check_groups("Conv2d", x.dim(1), w.dim(1), w.dim(0), p_.groups, x.shape(), w.shape());
    const Geom g = geometry(p_, x.dim(0), x.dim(1), x.dim(2), x.dim(3), w.dim(0), w.dim(2), w.dim(3));
    check_fits("Conv2d", g, p_, x.shape(), w.shape());
    out[0]->ensure(x.dtype(), {g.N, g.F, g.OH, g.OW});
    if (out[0]->size() == 0) return;
    if (g.ckk() == 0) {
        out[0]->copy_from(Tensor::zeros(x.dtype(), out[0]->shape()));
        return;
    }
    dispatch(x.dtype(), [&]<class T>() {
        if constexpr (std::is_floating_point_v<T>) {
            const T* xp = x.data<T>();
            const T* wp = w.data<T>();
            T* op = out[0]->data<T>();
            const int parts = parts_for(g.N);
            run_parts(parts, [&](int part) {
                thread_local std::vector<T> col;
                const auto [n0, n1] = image_range(g.N, part, parts);
                if (!g.direct()) col.resize(static_cast<std::size_t>(g.G * g.ckk() * g.P()));
                for (std::int64_t n = n0; n < n1; ++n) {
                    const T* xn = xp + n * g.C * g.H * g.W;
                    const T* cn = xn;
                    if (!g.direct()) {
                        im2col(xn, g, col.data());
                        cn = col.data();
                    }
                    // Group k: its filters' rows of W times its channels' rows of the unrolled image.
                    for (std::int64_t k = 0; k < g.G; ++k) {
                        gemm_slice<T>(op + (n * g.F + k * g.Fg()) * g.P(), g.Fg(), g.P(), 0, g.P(), T(1),
                                      wp + k * g.Fg() * g.ckk(), g.Fg(), g.ckk(), false, cn + k * g.ckk() * g.P(),
                                      g.ckk(), g.P(), false, T(0));
                    }
                }
            });
        }
    });
} catch (const UsageError& e) {
    rethrow_at(e, node.where);
}

std::vector<Variable> Conv2d::pullback(const Node& node, const std::vector<Variable>& g) const {
    if (!g[0].defined()) return {Variable(), Variable()};
    const Variable& x = node.inputs[0];
    const Variable& w = node.inputs[1];
    return {conv2d_grad_inputs(w, g[0], size_vector(x), p_, node.where),
            conv2d_grad_weights(x, g[0], size_vector(w), p_, node.where)};
}

// ---------------------------------------------------------------- Conv2dGradInputs

std::string Conv2dGradInputs::name() const { return fmt::format("Conv2dGradInputs{{{}}}", p_.str()); }

bool Conv2dGradInputs::props_equal(const Op& o) const { return p_ == static_cast<const Conv2dGradInputs&>(o).p_; }

std::vector<TensorType> Conv2dGradInputs::make_types(const std::vector<Variable>& inputs) const {
    const char* const op = "Conv2dGradInputs";
    if (inputs.size() != 3) throw UsageError(fmt::format("{}: takes 3 inputs (filters, top_grad, input_rows_cols)", op));
    check_float4(op, inputs, 0, "filters");
    check_float4(op, inputs, 1, "top_grad");
    check_same_dtype(op, inputs, 0, 1);
    check_size_vector(op, inputs, 2, "input_rows_cols");
    return {TensorType{inputs[0].dtype(), {inputs[1].broadcastable()[0], inputs[0].broadcastable()[1], false, false}}};
}

void Conv2dGradInputs::perform(const Node& node, std::span<const Tensor* const> in,
                               std::span<Tensor* const> out) const try {
    const char* const op = "Conv2dGradInputs";
    const Tensor w = in[0]->contiguous();
    const Tensor top = in[1]->contiguous();
    const auto [H, W] = read_sizes(op, *in[2], "input_rows_cols");
    if (top.dim(1) != w.dim(0)) {
        throw UsageError(fmt::format("{}: top_grad of shape {} has {} channels but there are {} filters (shape {})", op,
                                     shape_string(top.shape()), top.dim(1), w.dim(0), shape_string(w.shape())));
    }
    if (w.dim(0) % p_.groups != 0) check_groups(op, w.dim(1) * p_.groups, w.dim(1), w.dim(0), p_.groups, {}, w.shape());
    const Geom g = geometry(p_, top.dim(0), w.dim(1) * p_.groups, H, W, w.dim(0), w.dim(2), w.dim(3));
    const Shape xs{g.N, g.C, H, W};
    check_fits(op, g, p_, xs, w.shape());
    if (top.dim(2) != g.OH || top.dim(3) != g.OW) {
        throw UsageError(fmt::format("{}: top_grad has shape {} but an input of shape {} gives an output of {} x {}",
                                     op, shape_string(top.shape()), shape_string(xs), g.OH, g.OW));
    }
    out[0]->ensure(w.dtype(), xs);
    if (out[0]->size() == 0) return;
    dispatch(w.dtype(), [&]<class T>() {
        if constexpr (std::is_floating_point_v<T>) {
            const T* wp = w.data<T>();
            const T* tp = top.data<T>();
            T* gp = out[0]->data<T>();
            const std::int64_t image = g.C * g.H * g.W;
            const int parts = parts_for(g.N);
            run_parts(parts, [&](int part) {
                thread_local std::vector<T> col;
                const auto [n0, n1] = image_range(g.N, part, parts);
                if (!g.direct()) col.resize(static_cast<std::size_t>(g.G * g.ckk() * g.P()));
                for (std::int64_t n = n0; n < n1; ++n) {
                    T* gn = gp + n * image;
                    const T* tn = tp + n * g.F * g.P();
                    if (g.F == 0) {
                        std::fill(gn, gn + image, T(0));
                        continue;
                    }
                    // Group k: the unrolled rows of its channels = its filters^T times its
                    // filters' output gradient (written straight into the image for 1x1 filters).
                    T* dst = g.direct() ? gn : col.data();
                    for (std::int64_t k = 0; k < g.G; ++k) {
                        gemm_slice<T>(dst + k * g.ckk() * g.P(), g.ckk(), g.P(), 0, g.P(), T(1),
                                      wp + k * g.Fg() * g.ckk(), g.Fg(), g.ckk(), true, tn + k * g.Fg() * g.P(), g.Fg(),
                                      g.P(), false, T(0));
                    }
                    if (!g.direct()) {
                        std::fill(gn, gn + image, T(0));
                        col2im(col.data(), g, gn);
                    }
                }
            });
        }
    });
} catch (const UsageError& e) {
    rethrow_at(e, node.where);
}

std::vector<Variable> Conv2dGradInputs::pullback(const Node& node, const std::vector<Variable>& g) const {
    if (!g[0].defined()) return {Variable(), Variable(), Variable()};
    const Variable& w = node.inputs[0];
    const Variable& top = node.inputs[1];
    return {conv2d_grad_weights(g[0], top, size_vector(w), p_, node.where),
            apply1(std::make_shared<Conv2d>(p_, std::nullopt, std::nullopt), {g[0], w}, node.where), Variable()};
}

// ---------------------------------------------------------------- Conv2dGradWeights

std::string Conv2dGradWeights::name() const { return fmt::format("Conv2dGradWeights{{{}}}", p_.str()); }

bool Conv2dGradWeights::props_equal(const Op& o) const { return p_ == static_cast<const Conv2dGradWeights&>(o).p_; }

std::vector<TensorType> Conv2dGradWeights::make_types(const std::vector<Variable>& inputs) const {
    const char* const op = "Conv2dGradWeights";
    if (inputs.size() != 3) throw UsageError(fmt::format("{}: takes 3 inputs (input, top_grad, filter_rows_cols)", op));
    check_float4(op, inputs, 0, "input");
    check_float4(op, inputs, 1, "top_grad");
    check_same_dtype(op, inputs, 0, 1);
    check_size_vector(op, inputs, 2, "filter_rows_cols");
    return {TensorType{inputs[0].dtype(), {inputs[1].broadcastable()[1], inputs[0].broadcastable()[1], false, false}}};
}

void Conv2dGradWeights::perform(const Node& node, std::span<const Tensor* const> in,
                                std::span<Tensor* const> out) const try {
    const char* const op = "Conv2dGradWeights";
    const Tensor x = in[0]->contiguous();
    const Tensor top = in[1]->contiguous();
    const auto [KH, KW] = read_sizes(op, *in[2], "filter_rows_cols");
    if (top.dim(0) != x.dim(0)) {
        throw UsageError(fmt::format("{}: top_grad of shape {} holds {} images but the input of shape {} holds {}", op,
                                     shape_string(top.shape()), top.dim(0), shape_string(x.shape()), x.dim(0)));
    }
    if (x.dim(1) % p_.groups != 0 || top.dim(1) % p_.groups != 0) {
        throw UsageError(fmt::format("{}: the input of shape {} and top_grad of shape {} do not split into "
                                     "num_groups={} groups of channels", op, shape_string(x.shape()),
                                     shape_string(top.shape()), p_.groups));
    }
    const Geom g = geometry(p_, x.dim(0), x.dim(1), x.dim(2), x.dim(3), top.dim(1), KH, KW);
    const Shape ws{g.F, g.C / g.G, KH, KW};
    check_fits(op, g, p_, x.shape(), ws);
    if (top.dim(2) != g.OH || top.dim(3) != g.OW) {
        throw UsageError(fmt::format("{}: top_grad has shape {} but filters of shape {} give an output of {} x {}", op,
                                     shape_string(top.shape()), shape_string(ws), g.OH, g.OW));
    }
    out[0]->ensure(x.dtype(), ws);
    if (out[0]->size() == 0) return;
    dispatch(x.dtype(), [&]<class T>() {
        if constexpr (std::is_floating_point_v<T>) {
            const T* xp = x.data<T>();
            const T* tp = top.data<T>();
            T* gp = out[0]->data<T>();
            const std::int64_t wsize = g.F * g.ckk();
            const int parts = parts_for(g.N);
            // Part 0 sums into the output, the others into their own buffers, added in order.
            thread_local std::vector<T> partial;
            partial.resize(static_cast<std::size_t>((parts - 1) * wsize));
            T* const partial_data = partial.data();  // the calling thread's buffer, used by all
            run_parts(parts, [&](int part) {
                thread_local std::vector<T> col;
                T* acc = part == 0 ? gp : partial_data + (part - 1) * wsize;
                const auto [n0, n1] = image_range(g.N, part, parts);
                if (n0 == n1) std::fill(acc, acc + wsize, T(0));
                if (!g.direct()) col.resize(static_cast<std::size_t>(g.G * g.ckk() * g.P()));
                for (std::int64_t n = n0; n < n1; ++n) {
                    const T* xn = xp + n * g.C * g.H * g.W;
                    const T* cn = xn;
                    if (!g.direct()) {
                        im2col(xn, g, col.data());
                        cn = col.data();
                    }
                    // Group k: its filters' gradient rows += their output gradient times the
                    // unrolled rows of the group's channels.
                    for (std::int64_t k = 0; k < g.G; ++k) {
                        gemm_slice<T>(acc + k * g.Fg() * g.ckk(), g.Fg(), g.ckk(), 0, g.ckk(), T(1),
                                      tp + (n * g.F + k * g.Fg()) * g.P(), g.Fg(), g.P(), false,
                                      cn + k * g.ckk() * g.P(), g.ckk(), g.P(), true, n == n0 ? T(0) : T(1));
                    }
                }
            });
            for (int part = 1; part < parts; ++part) {
                const T* src = partial_data + (part - 1) * wsize;
                for (std::int64_t i = 0; i < wsize; ++i) gp[i] += src[i];
            }
        }
    });
} catch (const UsageError& e) {
    rethrow_at(e, node.where);
}

std::vector<Variable> Conv2dGradWeights::pullback(const Node& node, const std::vector<Variable>& g) const {
    if (!g[0].defined()) return {Variable(), Variable(), Variable()};
    const Variable& x = node.inputs[0];
    const Variable& top = node.inputs[1];
    return {conv2d_grad_inputs(g[0], top, size_vector(x), p_, node.where),
            apply1(std::make_shared<Conv2d>(p_, std::nullopt, std::nullopt), {x, g[0]}, node.where), Variable()};
}

// ---------------------------------------------------------------- builders

namespace {

std::pair<Variable, Variable> common_float(const Variable& a, const Variable& b) {
    DType dt = promote(a.dtype(), b.dtype());
    if (!is_float(dt)) dt = DType::float64;
    return {a.dtype() == dt ? a : cast(a, dt), b.dtype() == dt ? b : cast(b, dt)};
}

}  // namespace

Variable conv2d(const Variable& input, const Variable& filters, const Conv2dArgs& args, std::source_location where) {
    ConvParams p{args.border_mode, args.subsample, args.filter_dilation, args.filter_flip, args.num_groups};
    check_params(p);
    if (input.ndim() != 4 || filters.ndim() != 4) {
        throw UsageError(fmt::format("conv2d: input and filters must be 4-d tensors, got {} and {}",
                                     input.type().str(), filters.type().str()));
    }
    auto [x, w] = common_float(input, filters);
    return apply1(std::make_shared<Conv2d>(p, args.input_shape, args.filter_shape), {x, w}, where);
}

Variable conv2d_transpose(const Variable& input, const Variable& filters, std::array<std::int64_t, 4> output_shape,
                          const Conv2dTransposeArgs& args, std::source_location where) {
    if (output_shape[2] < 1 || output_shape[3] < 1) {
        throw UsageError(fmt::format("conv2d_transpose: output_shape {} must give the output's rows and columns",
                                     declared_str(output_shape)));
    }
    const ConvParams p{args.border_mode, args.input_dilation, args.filter_dilation, args.filter_flip, args.num_groups};
    const Variable rows_cols =
        constant(Tensor::from_vector<std::int64_t>({2}, {output_shape[2], output_shape[3]}));
    return conv2d_grad_inputs(filters, input, rows_cols, p, where);
}

Variable conv2d_grad_inputs(const Variable& filters, const Variable& top_grad, const Variable& input_rows_cols,
                            const ConvParams& p, std::source_location where) {
    check_params(p);
    auto [w, t] = common_float(filters, top_grad);
    return apply1(std::make_shared<Conv2dGradInputs>(p), {w, t, input_rows_cols}, where);
}

Variable conv2d_grad_weights(const Variable& input, const Variable& top_grad, const Variable& filter_rows_cols,
                             const ConvParams& p, std::source_location where) {
    check_params(p);
    auto [x, t] = common_float(input, top_grad);
    return apply1(std::make_shared<Conv2dGradWeights>(p), {x, t, filter_rows_cols}, where);
}

}  // namespace theanine
