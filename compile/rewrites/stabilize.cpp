// Stabilisation: forms that stay finite where the naive expression overflows or rounds to
// log(0).
#include "compile/rewrites/rewrites.hpp"
#include "ops/elemwise.hpp"
#include "ops/nnet.hpp"
#include "ops/shape.hpp"

namespace theanine {

namespace {

using pattern::is_constant_value;

bool is(const Variable& v, ScalarOp op) { return pattern::is_elemwise(v, static_cast<int>(op)); }

std::optional<std::vector<Variable>> typed(const Variable& out, const Variable& rep) {
    if (rep.dtype() != out.dtype() || rep.ndim() != out.ndim()) return std::nullopt;
    return std::vector<Variable>{rep};
}

// rep, stretched to shape_of's shape when a broadcast constant made shape_of larger.
Variable keep_shape(const Variable& shape_of, const Variable& rep) {
    if (rep.broadcastable() == shape_of.broadcastable()) return rep;
    return second(shape_of, rep);
}

// log(sigmoid(x)) -> -softplus(-x)
std::optional<std::vector<Variable>> local_log_sigmoid(const Node& n) {
    Variable out = n.output(0);
    if (!is(out, ScalarOp::log) || !is(n.inputs[0], ScalarOp::sigmoid)) return std::nullopt;
    const Variable& x = n.inputs[0].node().inputs[0];
    return typed(out, neg(softplus(neg(x))));
}

// log(1 - sigmoid(x)) -> -softplus(x)
std::optional<std::vector<Variable>> local_log_one_minus_sigmoid(const Node& n) {
    Variable out = n.output(0);
    if (!is(out, ScalarOp::log) || !is(n.inputs[0], ScalarOp::sub)) return std::nullopt;
    const auto& ab = n.inputs[0].node().inputs;
    if (!is_constant_value(ab[0], 1.0) || !is(ab[1], ScalarOp::sigmoid)) return std::nullopt;
    const Variable& x = ab[1].node().inputs[0];
    // 1 may broadcast x up to a larger shape; keep the shape through second().
    return typed(out, keep_shape(n.inputs[0], neg(softplus(x))));
}

// log(1 + x) -> log1p(x), log(x + 1) -> log1p(x)
std::optional<std::vector<Variable>> local_log1p(const Node& n) {
    Variable out = n.output(0);
    if (!is(out, ScalarOp::log) || !is(n.inputs[0], ScalarOp::add)) return std::nullopt;
    const auto& ab = n.inputs[0].node().inputs;
    const Variable* x = nullptr;
    if (is_constant_value(ab[0], 1.0)) x = &ab[1];
    if (is_constant_value(ab[1], 1.0)) x = &ab[0];
    if (!x) return std::nullopt;
    return typed(out, keep_shape(n.inputs[0], log1p(*x)));
}

// log(softmax(x)) -> log_softmax(x); also under the advanced indexing of the tutorials'
// negative log-likelihood: log(softmax(x)[i, j]) -> log_softmax(x)[i, j].
std::optional<std::vector<Variable>> local_log_softmax(const Node& n) {
    Variable out = n.output(0);
    if (!is(out, ScalarOp::log)) return std::nullopt;
    const Variable& in = n.inputs[0];
    if (pattern::op_as<Softmax>(in)) return typed(out, log_softmax(in.node().inputs[0]));
    if (pattern::op_as<AdvancedSubtensor>(in) && pattern::op_as<Softmax>(in.node().inputs[0])) {
        const auto& ins = in.node().inputs;
        const std::vector<Variable> indices(ins.begin() + 1, ins.end());
        return typed(out, advanced_subtensor(log_softmax(ins[0].node().inputs[0]), indices));
    }
    return std::nullopt;
}

// log1p(exp(x)) -> softplus(x)
std::optional<std::vector<Variable>> local_log1p_exp(const Node& n) {
    Variable out = n.output(0);
    if (!is(out, ScalarOp::log1p) || !is(n.inputs[0], ScalarOp::exp)) return std::nullopt;
    return typed(out, softplus(n.inputs[0].node().inputs[0]));
}

}  // namespace

void register_stabilize(RewriteRegistry& r) {
    r.add(NodeRewriter{"local_log_sigmoid", "stabilize", {"fast_run"}, local_log_sigmoid});
    r.add(NodeRewriter{"local_log_one_minus_sigmoid", "stabilize", {"fast_run"}, local_log_one_minus_sigmoid});
    r.add(NodeRewriter{"local_log1p", "stabilize", {"fast_run"}, local_log1p});
    r.add(NodeRewriter{"local_log1p_exp", "stabilize", {"fast_run"}, local_log1p_exp});
    r.add(NodeRewriter{"local_log_softmax", "stabilize", {"fast_run"}, local_log_softmax});
}

}  // namespace theanine
