// Canonicalisation: simple algebra that puts graphs in one form for the later phases.
#include "compile/rewrites/rewrites.hpp"
#include "ops/elemwise.hpp"
#include "ops/shape.hpp"

namespace theanine {

namespace pattern {

bool is_elemwise(const Variable& v, int scalar_op) {
    const auto* e = op_as<Elemwise>(v);
    return e && static_cast<int>(e->scalar_op()) == scalar_op;
}

bool is_constant_value(const Variable& v, double value) {
    Variable cur = v;
    while (op_as<DimShuffle>(cur)) cur = cur.node().inputs[0];
    if (!cur.is_constant()) return false;
    for (double d : cur.node().value.to_doubles()) {
        if (d != value) return false;
    }
    return true;
}

}  // namespace pattern

namespace {

using pattern::is_constant_value;
using pattern::is_elemwise;
using pattern::op_as;

bool is(const Variable& v, ScalarOp op) { return is_elemwise(v, static_cast<int>(op)); }

// Replacing out by x is only valid when x already has out's type.
std::optional<std::vector<Variable>> if_same_type(const Variable& out, const Variable& x) {
    if (x.type() != out.type()) return std::nullopt;
    return std::vector<Variable>{x};
}

// x * 1 -> x, 1 * x -> x
std::optional<std::vector<Variable>> local_mul_by_one(const Node& n) {
    Variable out = n.output(0);
    if (!is(out, ScalarOp::mul)) return std::nullopt;
    if (is_constant_value(n.inputs[1], 1.0)) return if_same_type(out, n.inputs[0]);
    if (is_constant_value(n.inputs[0], 1.0)) return if_same_type(out, n.inputs[1]);
    return std::nullopt;
}

// x + 0 -> x, 0 + x -> x, x - 0 -> x
std::optional<std::vector<Variable>> local_add_zero(const Node& n) {
    Variable out = n.output(0);
    if (is(out, ScalarOp::add) || is(out, ScalarOp::sub)) {
        if (is_constant_value(n.inputs[1], 0.0)) return if_same_type(out, n.inputs[0]);
        if (is(out, ScalarOp::add) && is_constant_value(n.inputs[0], 0.0)) return if_same_type(out, n.inputs[1]);
    }
    return std::nullopt;
}

// -(-x) -> x
std::optional<std::vector<Variable>> local_double_neg(const Node& n) {
    Variable out = n.output(0);
    if (!is(out, ScalarOp::neg) || !is(n.inputs[0], ScalarOp::neg)) return std::nullopt;
    return if_same_type(out, n.inputs[0].node().inputs[0]);
}

// -(a - b) -> b - a
std::optional<std::vector<Variable>> local_neg_of_sub(const Node& n) {
    Variable out = n.output(0);
    if (!is(out, ScalarOp::neg) || !is(n.inputs[0], ScalarOp::sub)) return std::nullopt;
    const auto& ab = n.inputs[0].node().inputs;
    return if_same_type(out, sub(ab[1], ab[0]));
}

// second(x, y) reads only x's shape. When x is an elementwise result, an input of it with
// x's type has that same shape (only broadcastable axes stretch), so x may be replaced by
// that input, and so on up the chain: the value x then need not be computed just for its
// shape (the gradient of a sum reads its argument only this way).
std::optional<std::vector<Variable>> local_fill_shape_source(const Node& n) {
    Variable out = n.output(0);
    if (!is(out, ScalarOp::second)) return std::nullopt;
    Variable x = n.inputs[0];
    for (bool moved = true; moved;) {
        moved = false;
        if (!x.is_apply() || !op_as<Elemwise>(x)) break;
        for (const auto& in : x.node().inputs) {
            if (in.type() == x.type()) {
                x = in;
                moved = true;
                break;
            }
        }
    }
    if (x.same(n.inputs[0])) return std::nullopt;
    return if_same_type(out, second(x, n.inputs[1]));
}

}  // namespace

void register_canonicalize(RewriteRegistry& r) {
    r.add(NodeRewriter{"local_mul_by_one", "canonicalize", {"fast_run"}, local_mul_by_one});
    r.add(NodeRewriter{"local_add_zero", "canonicalize", {"fast_run"}, local_add_zero});
    r.add(NodeRewriter{"local_double_neg", "canonicalize", {"fast_run"}, local_double_neg});
    r.add(NodeRewriter{"local_neg_of_sub", "canonicalize", {"fast_run"}, local_neg_of_sub});
    r.add(NodeRewriter{"local_fill_shape_source", "canonicalize", {"fast_run"}, local_fill_shape_source});
}

}  // namespace theanine
