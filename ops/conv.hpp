/// \file
/// 2-d convolution with Theano's semantics (theano.tensor.nnet.conv2d).
///
///   conv2d(input, filters): input (batch, channels, rows, cols), filters (n_filters, channels,
///   rows, cols) -> (batch, n_filters, out_rows, out_cols)
///
///   out[n, f, y, x] = sum_{c, i, j} in_pad[n, c, y*sy + i*dy, x*sx + j*dx] * w[f, c, i', j']
///
/// where in_pad is the input with `pad` zeros on each side, i' = kh-1-i and j' = kw-1-j when
/// filter_flip (a true convolution, the default) and i, j otherwise (a correlation), and
///
///   out_rows = (rows + 2 pad_rows - dy (kh - 1) - 1) / sy + 1    (rounded down)
///
/// Border modes: "valid" (no padding), "full" (pad = dy (kh - 1)), "half" (pad = dy (kh / 2):
/// same size for odd filters and stride 1), or explicit padding {rows, cols}. With num_groups G
/// (Theano's grouped convolution) the channels and the filters are split into G groups: filters
/// are (n_filters, channels / G, rows, cols) and filter f sees only the channels of its group
/// f / (n_filters / G).
///
/// The two gradients are ops of their own, as in Theano, so rewrites and the planner see them:
/// Conv2dGradInputs(filters, top_grad, input_rows_cols) and
/// Conv2dGradWeights(input, top_grad, filter_rows_cols). The last input is an int64 vector of
/// two sizes (a strided convolution maps several input sizes to one output size). The three
/// ops are closed under differentiation.
///
/// Kernel: per image, the receptive fields are unrolled into a (channels*kh*kw, out_rows*
/// out_cols) buffer and multiplied with the filters by the project's matrix products (gemm_slice).
/// Images are split into num_threads() parts; each part owns its scratch (kept between calls), and
/// the filter gradient adds the parts' sums in part order, so results depend on the part count
/// alone.
#pragma once

#include <array>
#include <optional>
#include <source_location>

#include "graph/graph.hpp"

namespace theanine {

/// How the input is padded: "valid", "full", "half", or explicit rows/cols of zeros.
struct BorderMode {
    enum class Kind { valid, full, half, explicit_pad };
    Kind kind = Kind::valid;
    std::int64_t rows = 0, cols = 0;  ///< explicit_pad only

    BorderMode() = default;
    BorderMode(const char* name);                       ///< NOLINT: "valid" / "full" / "half"
    BorderMode(std::int64_t both);                      ///< NOLINT: explicit, same on both axes
    BorderMode(std::int64_t rows, std::int64_t cols);   ///< explicit
    /// The padding of one axis for a filter of k taps with dilation d.
    std::int64_t pad(int axis, std::int64_t k, std::int64_t d) const;
    std::string str() const;
    bool operator==(const BorderMode&) const = default;
};

/// Shapes declared at graph construction (Theano's input_shape / filter_shape): -1 is an
/// unknown size. A declared size is checked against the runtime value.
using DeclaredShape = std::optional<std::array<std::int64_t, 4>>;

struct Conv2dArgs {
    DeclaredShape input_shape{};
    DeclaredShape filter_shape{};
    BorderMode border_mode{};
    std::array<std::int64_t, 2> subsample{1, 1};
    bool filter_flip = true;
    std::array<std::int64_t, 2> filter_dilation{1, 1};
    std::int64_t num_groups = 1;  ///< channels and filters split into this many independent groups
};

/// The geometry shared by the three ops (no declared shapes).
struct ConvParams {
    BorderMode border;
    std::array<std::int64_t, 2> stride{1, 1};
    std::array<std::int64_t, 2> dilation{1, 1};
    bool flip = true;
    std::int64_t groups = 1;
    bool operator==(const ConvParams&) const = default;
    std::string str() const;
    std::size_t hash() const;
    /// Output size of one axis, or a value < 1 when the filter does not fit.
    std::int64_t out_size(int axis, std::int64_t in, std::int64_t k) const;
};

class Conv2d final : public Op {
public:
    Conv2d(ConvParams p, DeclaredShape input_shape, DeclaredShape filter_shape)
        : p_(p), input_shape_(input_shape), filter_shape_(filter_shape) {}
    const ConvParams& params() const { return p_; }
    std::string name() const override;
    std::vector<TensorType> make_types(const std::vector<Variable>& inputs) const override;
    void perform(const Node& node, std::span<const Tensor* const> in, std::span<Tensor* const> out) const override;
    std::optional<std::vector<Shape>> infer_shape(const std::vector<Shape>& in) const override;
    std::vector<Variable> pullback(const Node& node, const std::vector<Variable>& out_grads) const override;
    bool props_equal(const Op& o) const override;
    std::size_t props_hash() const override { return p_.hash(); }

private:
    ConvParams p_;
    DeclaredShape input_shape_, filter_shape_;
};

class Conv2dGradInputs final : public Op {
public:
    explicit Conv2dGradInputs(ConvParams p) : p_(p) {}
    const ConvParams& params() const { return p_; }
    std::string name() const override;
    std::vector<TensorType> make_types(const std::vector<Variable>& inputs) const override;
    void perform(const Node& node, std::span<const Tensor* const> in, std::span<Tensor* const> out) const override;
    std::vector<Variable> pullback(const Node& node, const std::vector<Variable>& out_grads) const override;
    bool props_equal(const Op& o) const override;
    std::size_t props_hash() const override { return p_.hash() * 3u + 1u; }

private:
    ConvParams p_;
};

class Conv2dGradWeights final : public Op {
public:
    explicit Conv2dGradWeights(ConvParams p) : p_(p) {}
    const ConvParams& params() const { return p_; }
    std::string name() const override;
    std::vector<TensorType> make_types(const std::vector<Variable>& inputs) const override;
    void perform(const Node& node, std::span<const Tensor* const> in, std::span<Tensor* const> out) const override;
    std::vector<Variable> pullback(const Node& node, const std::vector<Variable>& out_grads) const override;
    bool props_equal(const Op& o) const override;
    std::size_t props_hash() const override { return p_.hash() * 3u + 2u; }

private:
    ConvParams p_;
};

/// theano.tensor.nnet.conv2d_transpose: the adjoint of conv2d (the gradient of a convolution
/// wrt its input), mapping input (batch, n_filters, rows, cols) to (batch, channels,
/// output rows, output cols) with filters laid out as conv2d's (n_filters, channels / G, rows,
/// cols). border_mode and input_dilation are those of the forward convolution (padding there
/// crops here; input_dilation is its subsample).
struct Conv2dTransposeArgs {
    BorderMode border_mode{};
    std::array<std::int64_t, 2> input_dilation{1, 1};
    bool filter_flip = true;
    std::array<std::int64_t, 2> filter_dilation{1, 1};
    std::int64_t num_groups = 1;
};

/// theano.tensor.nnet.conv2d. Input and filters are upcast to a common float dtype.
Variable conv2d(const Variable& input, const Variable& filters, const Conv2dArgs& args = {},
                std::source_location where = std::source_location::current());
/// output_shape: (batch, channels, rows, cols) of the result; rows and cols are required (a
/// strided forward convolution maps several sizes to one), -1 leaves the others open.
Variable conv2d_transpose(const Variable& input, const Variable& filters, std::array<std::int64_t, 4> output_shape,
                          const Conv2dTransposeArgs& args = {},
                          std::source_location where = std::source_location::current());
/// The gradients as ops (Theano's conv2d_grad_wrt_inputs / conv2d_grad_wrt_weights):
/// input_rows_cols / filter_rows_cols are int64 vectors of two sizes.
Variable conv2d_grad_inputs(const Variable& filters, const Variable& top_grad, const Variable& input_rows_cols,
                            const ConvParams& p, std::source_location where = std::source_location::current());
Variable conv2d_grad_weights(const Variable& input, const Variable& top_grad, const Variable& filter_rows_cols,
                             const ConvParams& p, std::source_location where = std::source_location::current());

}  // namespace theanine
