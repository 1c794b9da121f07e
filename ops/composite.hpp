/// \file
/// Composite: a chain of elementwise ops run as one loop over memory (what the fusion
/// rewrite produces), optionally summing some of its values over axes in the same loop.
///
/// A Composite holds a small program over registers: registers 0..n_inputs-1 are the inputs
/// (broadcast like Elemwise inputs, converted to the compute dtype T as they are loaded),
/// each instruction applies a scalar op to earlier registers and writes the next register.
/// Each output names a register and either stores it elementwise (the loop shape) or sums it
/// over some axes (a fused Sum: the summed values never go to memory). The kernel walks the
/// loop shape in tiles of up to 1024 elements (whole rows when they fit); each instruction
/// runs as a tight loop over a tile (vectorised: transcendental functions go through Eigen's
/// SIMD versions), so intermediate values stay in cache. Inputs laid out like the loop shape
/// are read in place, others (broadcast, strided, other dtypes) are gathered into the tile;
/// comparisons produce 0/1 in T. Rows, or for a few long rows the columns (with the
/// products' column_slice rule), are split across threads when the program is big enough.
///
/// The constructor simplifies the program: softplus(v) is lowered to
/// max(v, 0) + log1p(exp(-|v|)), whose second term is even in v, so softplus(v) and
/// softplus(-v) in one program share their transcendental part; then identical instructions
/// are merged and unused ones dropped.
#pragma once

#include "graph/graph.hpp"
#include "ops/elemwise.hpp"

namespace theanine {

class Composite final : public Op {
public:
    struct Instr {
        /// Made by lowering softplus: softplus_tail is log1p(exp(-|x|)), the even part of
        /// softplus; relu_add is max(x, 0) + y, or x itself above Theano's softplus cut-off
        /// (16; float32: 14) and 0 below its lower one (-745; float32: -103).
        enum class Kind { scalar, cast_bool, cast_identity, softplus_tail, relu_add } kind = Kind::scalar;
        ScalarOp op = ScalarOp::add;
        std::vector<int> args;  ///< register indices
        bool operator==(const Instr&) const = default;
    };
    struct Output {
        int reg;                ///< register stored
        std::vector<int> sum;   ///< axes of the loop shape summed over (sorted); empty: elementwise
        TensorType type;
        bool operator==(const Output&) const = default;
    };

    /// One elementwise output: the last register.
    Composite(int n_inputs, std::vector<Instr> program, DType compute, TensorType out_type, std::string expr);
    Composite(int n_inputs, std::vector<Instr> program, DType compute, std::vector<Output> outputs, std::string expr);
    const std::vector<Instr>& program() const { return program_; }
    const std::vector<Output>& outputs() const { return outputs_; }
    int n_inputs() const { return n_inputs_; }
    DType compute_dtype() const { return compute_; }
    const std::string& expr() const { return expr_; }

    std::string name() const override { return "Composite{" + expr_ + "}"; }
    std::vector<TensorType> make_types(const std::vector<Variable>& inputs) const override;
    void perform(const Node& node, std::span<const Tensor* const> in, std::span<Tensor* const> out) const override;
    /// A one-output elementwise loop may write over a shared variable input of its output's
    /// type (a parameter's update written into the parameter); the planner picks which, if any.
    std::vector<int> destroy_candidates(const Node& node, int output) const override;
    void validate(const Node& node, std::span<const Tensor* const> in) const override;
    std::vector<Variable> pullback(const Node& node, const std::vector<Variable>& out_grads) const override;
    bool props_equal(const Op& other) const override;
    std::size_t props_hash() const override;

private:
    void simplify();

    int n_inputs_;
    std::vector<Instr> program_;
    DType compute_;
    std::vector<Output> outputs_;
    std::string expr_;
    bool can_write_in_place() const;
    void compute(const Node& node, std::span<const Tensor* const> in, std::span<Tensor* const> out, bool in_place) const;
    std::vector<bool> used_;  ///< inputs some instruction or output reads
    std::int64_t work_ = 1;   ///< relative cost of the program per element
};

}  // namespace theanine
