// Composite: a chain of elementwise ops run as one loop over memory (what the fusion
// rewrite produces).
//
// A Composite holds a small program over registers: registers 0..n_inputs-1 are the inputs
// (broadcast like Elemwise inputs, converted to the compute dtype T as they are loaded),
// each instruction applies a scalar op to earlier registers and writes the next register,
// and the last register is the output. The kernel walks the output row by row in blocks;
// each instruction runs as a tight loop over a block (vectorised: transcendental functions
// go through Eigen's SIMD versions), so intermediate values never go to memory. Inputs that
// are contiguous along the last axis are read in place; comparisons produce 0/1 in T.
#pragma once

#include "graph/graph.hpp"
#include "ops/elemwise.hpp"

namespace theanine {

class Composite final : public Op {
public:
    struct Instr {
        enum class Kind { scalar, cast_bool, cast_identity } kind = Kind::scalar;
        ScalarOp op = ScalarOp::add;
        std::vector<int> args;  // register indices
        bool operator==(const Instr&) const = default;
    };

    Composite(int n_inputs, std::vector<Instr> program, DType compute, TensorType out_type, std::string expr);
    const std::vector<Instr>& program() const { return program_; }
    int n_inputs() const { return n_inputs_; }

    std::string name() const override { return "Composite{" + expr_ + "}"; }
    std::vector<TensorType> make_types(const std::vector<Variable>& inputs) const override;
    void perform(const Node& node, std::span<const Tensor* const> in, std::span<Tensor* const> out) const override;
    std::vector<Variable> pullback(const Node& node, const std::vector<Variable>& out_grads) const override;
    bool props_equal(const Op& other) const override;
    std::size_t props_hash() const override;

private:
    int n_inputs_;
    std::vector<Instr> program_;
    DType compute_;
    TensorType out_type_;
    std::string expr_;
    std::vector<bool> used_;  // inputs some instruction reads
};

}  // namespace theanine
