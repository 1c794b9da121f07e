// Stabilisation: forms that stay finite where the naive expression overflows or rounds to
// log(0).
#include <algorithm>
#include <limits>

#include "compile/rewrites/rewrites.hpp"
#include "ops/elemwise.hpp"
#include "ops/nnet.hpp"
#include "ops/reduce.hpp"
#include "ops/shape.hpp"

namespace theanine {

namespace {

using pattern::is_constant_value;

bool is(const Variable& v, ScalarOp op) { return pattern::is_elemwise(v, static_cast<int>(op)); }

// rep in place of out when it has out's type exactly (a replacement broadcastable where out is
// not would have size 1 where out may be larger).
std::optional<std::vector<Variable>> typed(const Variable& out, const Variable& rep) {
    if (rep.dtype() != out.dtype() || rep.broadcastable() != out.broadcastable()) return std::nullopt;
    return std::vector<Variable>{rep};
}

// A constant 1, or a fill of one (second(s, 1): the ones_like(s) of a user's graph or of a
// gradient); the fill's shape is kept by keep_shape where the 1 stood.
bool is_one(const Variable& v) {
    if (is_constant_value(v, 1.0)) return true;
    return is(v, ScalarOp::second) && is_constant_value(v.node().inputs[1], 1.0);
}

// rep, stretched to shape_of's shape when a broadcast constant made shape_of larger.
Variable keep_shape(const Variable& shape_of, const Variable& rep) {
    if (rep.broadcastable() == shape_of.broadcastable()) return rep;
    return second(shape_of, rep);
}

// When v is sigmoid(x), possibly under DimShuffles and Reshapes (flatten is a Reshape): x
// under the same shape ops, so that softplus can be taken of it where sigmoid was.
std::optional<Variable> sigmoid_arg(const Variable& v) {
    if (is(v, ScalarOp::sigmoid)) return v.node().inputs[0];
    if (!pattern::op_as<DimShuffle>(v) && !pattern::op_as<Reshape>(v)) return std::nullopt;
    std::optional<Variable> inner = sigmoid_arg(v.node().inputs[0]);
    if (!inner) return std::nullopt;
    std::vector<Variable> ins = v.node().inputs;
    ins[0] = *inner;
    return apply1(v.node().op, ins);
}

// log(sigmoid(x)) -> -softplus(-x), also through shape ops between log and sigmoid
std::optional<std::vector<Variable>> local_log_sigmoid(const Node& n) {
    Variable out = n.output(0);
    if (!is(out, ScalarOp::log)) return std::nullopt;
    std::optional<Variable> x = sigmoid_arg(n.inputs[0]);
    if (!x) return std::nullopt;
    return typed(out, neg(softplus(neg(*x))));
}

// log(1 - sigmoid(x)) -> -softplus(x), also through shape ops between the sub and sigmoid
std::optional<std::vector<Variable>> local_log_one_minus_sigmoid(const Node& n) {
    Variable out = n.output(0);
    if (!is(out, ScalarOp::log) || !is(n.inputs[0], ScalarOp::sub)) return std::nullopt;
    const auto& ab = n.inputs[0].node().inputs;
    if (!is_one(ab[0])) return std::nullopt;
    std::optional<Variable> x = sigmoid_arg(ab[1]);
    if (!x) return std::nullopt;
    // 1 may broadcast x up to a larger shape; keep the shape through second().
    return typed(out, keep_shape(n.inputs[0], neg(softplus(*x))));
}

// log(1 + x) -> log1p(x), log(x + 1) -> log1p(x); the 1 may be a fill. For an integer x the
// log reads the sum through a cast to float: log(float(1 + i)) -> log1p(float(i)).
std::optional<std::vector<Variable>> local_log1p(const Node& n) {
    Variable out = n.output(0);
    if (!is(out, ScalarOp::log)) return std::nullopt;
    Variable sum = n.inputs[0];
    const Cast* cast_op = pattern::op_as<Cast>(sum);
    if (cast_op) sum = sum.node().inputs[0];
    if (!is(sum, ScalarOp::add)) return std::nullopt;
    const auto& ab = sum.node().inputs;
    const Variable* x = nullptr;
    if (is_one(ab[0])) x = &ab[1];
    if (is_one(ab[1])) x = &ab[0];
    if (!x) return std::nullopt;
    Variable arg = cast_op ? cast(*x, cast_op->to()) : *x;
    return typed(out, keep_shape(n.inputs[0], log1p(arg)));
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

// Whether a is arange(0, len(y), 1) (then the labels may be fewer than the rows) or
// arange(0, rows of x, 1) (then they must match); nullopt when it is neither.
std::optional<bool> row_range_needs_match(const Variable& a, const Variable& x, const Variable& y) {
    if (!pattern::op_as<ARange>(a)) return std::nullopt;
    const auto& se = a.node().inputs;
    if (!is_constant_value(se[0], 0.0) || !is_constant_value(se[2], 1.0)) return std::nullopt;
    const ShapeI* s = pattern::op_as<ShapeI>(se[1]);
    if (!s || s->axis() != 0) return std::nullopt;
    const Variable& of = se[1].node().inputs[0];
    if (of.same(y)) return false;
    const bool rows_of_x = of.same(x) || ((pattern::op_as<Softmax>(of) || pattern::op_as<LogSoftmax>(of)) &&
                                          of.node().inputs[0].same(x));
    if (rows_of_x) return true;
    return std::nullopt;
}

// The negative log-likelihood in indexing form, log_softmax(x)[arange(len(y)), y] (what
// log(softmax(x))[...] becomes), -> -nll of CrossentropySoftmax1Hot(x, y): one pass that also
// gives the softmax its gradient reads.
std::optional<std::vector<Variable>> local_crossentropy_softmax_1hot(const Node& n) {
    if (n.inputs.size() != 3 || !pattern::op_as<AdvancedSubtensor>(n.output(0))) return std::nullopt;
    const Variable& ls = n.inputs[0];
    if (!pattern::op_as<LogSoftmax>(ls) || ls.ndim() != 2) return std::nullopt;
    const Variable& x = ls.node().inputs[0];
    const Variable& y = n.inputs[2];
    if (y.ndim() != 1) return std::nullopt;
    const std::optional<bool> match = row_range_needs_match(n.inputs[1], x, y);
    if (!match) return std::nullopt;
    return typed(n.output(0), neg(crossentropy_softmax_1hot(x, y, *match).nll));
}

// The gradient of that negative log-likelihood with respect to the logits, as grad builds it
// (after local_mul_div_cancel): A - softmax(x) * sum(A, 1)[:, None], with A the labels'
// gradients v scattered into zeros, A = advanced_inc_subtensor(zeros, v, {arange(len(y)), y}),
// -> CrossentropySoftmax1HotDx(-v, softmax(x), y); the softmax is the one
// CrossentropySoftmax1Hot(x, y) computes, so the forward pass and the gradient share it.
std::optional<std::vector<Variable>> local_crossentropy_softmax_1hot_grad(const Node& n) {
    Variable out = n.output(0);
    if (!is(out, ScalarOp::sub) || out.ndim() != 2) return std::nullopt;
    const Variable& A = n.inputs[0];
    const Variable& M = n.inputs[1];
    if (!is(M, ScalarOp::mul) || M.node().inputs.size() != 2) return std::nullopt;
    const auto* inc = pattern::op_as<AdvancedIncSubtensor>(A);
    if (!inc || A.node().inputs.size() != 4 || inc->set()) return std::nullopt;
    const Variable& zeros = A.node().inputs[0];
    if (!(is(zeros, ScalarOp::second) && is_constant_value(zeros.node().inputs[1], 0.0)) &&
        !is_constant_value(zeros, 0.0)) {
        return std::nullopt;
    }
    // One factor is softmax(x), the other sum(A, axis 1) as a column.
    for (int k = 0; k < 2; ++k) {
        const Variable& S = M.node().inputs[k];
        const Variable& D = M.node().inputs[1 - k];
        if (!pattern::op_as<Softmax>(S)) continue;
        const auto* ds = pattern::op_as<DimShuffle>(D);
        if (!ds || ds->order() != std::vector<int>{0, -1}) continue;
        const Variable& total = D.node().inputs[0];
        const auto* red = pattern::op_as<Reduce>(total);
        if (!red || red->kind() != ReduceKind::sum || red->axes() != std::vector<int>{1} ||
            !total.node().inputs[0].same(A)) {
            continue;
        }
        const Variable& x = S.node().inputs[0];
        const Variable& y = A.node().inputs[3];
        const Variable& v = A.node().inputs[1];
        if (y.ndim() != 1 || v.ndim() > 1 || v.dtype() != out.dtype()) continue;
        const std::optional<bool> match = row_range_needs_match(A.node().inputs[2], x, y);
        if (!match) continue;
        Variable dnll = v.ndim() == 1 ? neg(v) : dimshuffle(neg(v), {-1});
        return typed(out, crossentropy_softmax_1hot_dx(dnll, crossentropy_softmax_1hot(x, y, *match).softmax, y));
    }
    return std::nullopt;
}

// CrossentropySoftmax1Hot(a + b[None, :], y) -> CrossentropySoftmax1HotWithBias(a, y, b), a a
// matrix and b a vector of its dtype (the bias add of a softmax layer, x W + b): the op adds
// the bias to a block of rows at a time inside its pass. The sum is the same (x's dtype), so
// the results are too.
std::optional<std::vector<Variable>> local_crossentropy_softmax_1hot_with_bias(const Node& n) {
    const auto* ce = pattern::op_as<CrossentropySoftmax1Hot>(n.output(0));
    if (!ce || ce->with_bias()) return std::nullopt;
    const Variable& x = n.inputs[0];
    if (!is(x, ScalarOp::add) || x.node().inputs.size() != 2) return std::nullopt;
    for (int k = 0; k < 2; ++k) {
        const Variable& a = x.node().inputs[k];
        const Variable& row = x.node().inputs[1 - k];
        const auto* ds = pattern::op_as<DimShuffle>(row);
        if (!ds || ds->order() != std::vector<int>{-1, 0}) continue;
        const Variable& b = row.node().inputs[0];
        if (a.ndim() != 2 || a.dtype() != x.dtype() || b.dtype() != x.dtype() || a.broadcastable()[1]) continue;
        NllAndSoftmax r = crossentropy_softmax_1hot_with_bias(a, b, n.inputs[1], ce->rows_must_match());
        if (r.softmax.broadcastable() != n.output(1).broadcastable()) continue;
        return std::vector<Variable>{r.nll, r.softmax};
    }
    return std::nullopt;
}

// log1p(exp(x)) -> softplus(x)
std::optional<std::vector<Variable>> local_log1p_exp(const Node& n) {
    Variable out = n.output(0);
    if (!is(out, ScalarOp::log1p) || !is(n.inputs[0], ScalarOp::exp)) return std::nullopt;
    return typed(out, softplus(n.inputs[0].node().inputs[0]));
}

// The y of exp(y), or nullptr.
const Variable* exp_arg(const Variable& v) { return is(v, ScalarOp::exp) ? &v.node().inputs[0] : nullptr; }

// exp(y) / (1 + exp(y)) -> sigmoid(y), 1 / (1 + exp(y)) -> sigmoid(-y) (so 1 / (1 + exp(-x)) ->
// sigmoid(x)); the 1 may stand on either side of the sum. The naive forms give inf / inf = NaN
// once exp overflows (y above 88 in float32, 709 in float64).
std::optional<std::vector<Variable>> local_exp_over_1_plus_exp(const Node& n) {
    Variable out = n.output(0);
    if (!is(out, ScalarOp::true_div) || !is(n.inputs[1], ScalarOp::add)) return std::nullopt;
    const auto& terms = n.inputs[1].node().inputs;
    const Variable* y = nullptr;
    if (is_constant_value(terms[0], 1.0)) y = exp_arg(terms[1]);
    if (!y && is_constant_value(terms[1], 1.0)) y = exp_arg(terms[0]);
    if (!y) return std::nullopt;
    const Variable& num = n.inputs[0];
    const Variable& den = n.inputs[1];
    if (const Variable* z = exp_arg(num); z && z->same(*y)) return typed(out, keep_shape(den, sigmoid(*y)));
    if (!is_constant_value(num, 1.0)) return std::nullopt;
    Variable minus_y = is(*y, ScalarOp::neg) ? y->node().inputs[0] : neg(*y);
    return typed(out, keep_shape(den, sigmoid(minus_y)));
}

// The terms of a tree of elementwise adds.
void add_terms(const Variable& v, std::vector<Variable>& terms) {
    if (is(v, ScalarOp::add)) {
        for (const Variable& t : v.node().inputs) add_terms(t, terms);
    } else {
        terms.push_back(v);
    }
}

// m, or 0 where m is infinite: the shift of a log-sum-exp. Subtracting an infinite maximum
// would give inf - inf = NaN; with 0 the sum itself is inf (or 0 for -inf), as it should be.
Variable finite_shift(const Variable& m) {
    return switch_(eq(abs(m), std::numeric_limits<double>::infinity()), 0.0, m);
}

// log(exp(a) + exp(b) + ...) -> m + log(exp(a - m) + exp(b - m) + ...), m = max(a, b, ...):
// every shifted term is at most 1 and the largest is 1, so the log's argument lies in [1, n].
std::optional<std::vector<Variable>> local_log_add_exp(const Node& n) {
    Variable out = n.output(0);
    if (!is(out, ScalarOp::log) || !is(n.inputs[0], ScalarOp::add)) return std::nullopt;
    std::vector<Variable> terms;
    add_terms(n.inputs[0], terms);
    std::vector<Variable> args;
    for (const Variable& t : terms) {
        const Variable* y = exp_arg(t);
        if (!y) return std::nullopt;
        args.push_back(*y);
    }
    // Already shifted (every argument is t - c with one c, as this rewrite leaves them).
    auto shift_of = [](const Variable& v) -> const Variable* {
        return is(v, ScalarOp::sub) ? &v.node().inputs[1] : nullptr;
    };
    const Variable* c = shift_of(args[0]);
    bool shifted_already = c != nullptr;
    for (const Variable& y : args) shifted_already = shifted_already && shift_of(y) && shift_of(y)->same(*c);
    if (shifted_already) return std::nullopt;
    Variable m = args[0];
    for (std::size_t i = 1; i < args.size(); ++i) m = maximum(m, args[i]);
    m = finite_shift(m);
    Variable shifted = exp(args[0] - m);
    for (std::size_t i = 1; i < args.size(); ++i) shifted = shifted + exp(args[i] - m);
    return typed(out, keep_shape(n.inputs[0], m + log(shifted)));
}

// log(sum(exp(x), axes)) -> m + log(sum(exp(x - m'), axes)), m = max(x, axes) (0 where
// infinite), m' the same with the reduced axes kept: the log-sum-exp of softmax normalisers
// and mixtures, finite for inputs of 1e3 and more.
std::optional<std::vector<Variable>> local_log_sum_exp(const Node& n) {
    Variable out = n.output(0);
    if (!is(out, ScalarOp::log)) return std::nullopt;
    const Variable& s = n.inputs[0];
    const Reduce* r = pattern::op_as<Reduce>(s);
    if (!r || r->kind() != ReduceKind::sum) return std::nullopt;
    const Variable* x = exp_arg(s.node().inputs[0]);
    if (!x || !is_float(x->dtype())) return std::nullopt;
    const std::vector<int>& axes = r->axes();
    Variable m = finite_shift(max_axes(*x, axes, /*keepdims=*/true));
    Variable shifted = sum_axes(exp(*x - m), axes, /*keepdims=*/true);
    Variable keep = m + log(shifted);
    // Drop the kept axes again: the result has the sum's axes.
    std::vector<int> order;
    for (int d = 0; d < x->ndim(); ++d) {
        if (std::find(axes.begin(), axes.end(), d) == axes.end()) order.push_back(d);
    }
    return typed(out, dimshuffle(keep, order));
}

}  // namespace

void register_stabilize(RewriteRegistry& r) {
    r.add(NodeRewriter{"local_log_sigmoid", "stabilize", {"fast_run"}, local_log_sigmoid});
    r.add(NodeRewriter{"local_log_one_minus_sigmoid", "stabilize", {"fast_run"}, local_log_one_minus_sigmoid});
    r.add(NodeRewriter{"local_log1p", "stabilize", {"fast_run"}, local_log1p});
    r.add(NodeRewriter{"local_log1p_exp", "stabilize", {"fast_run"}, local_log1p_exp});
    r.add(NodeRewriter{"local_log_softmax", "stabilize", {"fast_run"}, local_log_softmax});
    r.add(NodeRewriter{"local_crossentropy_softmax_1hot", "stabilize", {"fast_run"}, local_crossentropy_softmax_1hot});
    r.add(NodeRewriter{"local_crossentropy_softmax_1hot_grad", "stabilize", {"fast_run"},
                       local_crossentropy_softmax_1hot_grad});
    r.add(NodeRewriter{"local_crossentropy_softmax_1hot_with_bias", "specialize", {"fast_run"},
                       local_crossentropy_softmax_1hot_with_bias});
    r.add(NodeRewriter{"local_exp_over_1_plus_exp", "stabilize", {"fast_run"}, local_exp_over_1_plus_exp});
    r.add(NodeRewriter{"local_log_add_exp", "stabilize", {"fast_run"}, local_log_add_exp});
    r.add(NodeRewriter{"local_log_sum_exp", "stabilize", {"fast_run"}, local_log_sum_exp});
}

}  // namespace theanine
