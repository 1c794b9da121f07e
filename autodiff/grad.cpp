#include "autodiff/grad.hpp"

#include <iostream>
#include <unordered_set>

#include <fmt/format.h>

#include "graph/config.hpp"
#include "ops/blas.hpp"
#include "ops/elemwise.hpp"
#include "ops/reduce.hpp"
#include "ops/shape.hpp"

namespace theanine {

namespace {

// Makes g fit var's type: sums over axes that var broadcasts, casts to var's dtype when var is
// float. The gradient of an integer variable stays float (floatX when it arrives integer).
Variable fit_to(const Variable& g, const Variable& var, const Node& node, std::size_t input) {
    if (g.ndim() != var.ndim()) {
        throw InternalError(fmt::format("the pullback of {} returned a {} gradient for input {} of type {}",
                                        node.op->name(), g.type().str(), input, var.type().str()));
    }
    if (!is_float(var.dtype())) {
        Variable out = g;
        std::vector<int> axes;
        for (int d = 0; d < var.ndim(); ++d) {
            if (var.broadcastable()[d] && !g.broadcastable()[d]) axes.push_back(d);
        }
        if (!axes.empty()) out = sum_axes(out, axes, true);
        return is_float(out.dtype()) ? out : cast(out, config().floatX);
    }
    Variable out = g;
    std::vector<int> axes;
    for (int d = 0; d < var.ndim(); ++d) {
        if (var.broadcastable()[d] && !g.broadcastable()[d]) axes.push_back(d);
    }
    if (!axes.empty()) out = sum_axes(out, axes, true);
    if (out.dtype() != var.dtype()) out = cast(out, var.dtype());
    return out;
}

// Whether g is zeros_like(x) (second(x, 0)): a gradient known to be zero, as floor division,
// rounding and comparisons give. Such a gradient is not propagated further (the whole
// backward graph behind it would compute zeros), but the variable still counts as reached.
bool is_zero_gradient(const Variable& g) {
    if (!g.is_apply()) return false;
    const auto* e = dynamic_cast<const Elemwise*>(g.node().op.get());
    if (!e || e->scalar_op() != ScalarOp::second) return false;
    const Variable& c = g.node().inputs[1];
    return c.is_constant() && c.node().value.size() == 1 && c.node().value.item() == 0.0;
}

// zeros_like(x) in a float dtype: x's own, or floatX for an integer x.
Variable float_zeros_like(const Variable& x) {
    Variable z = zeros_like(x);
    return is_float(x.dtype()) ? z : cast(z, config().floatX);
}

Variable sum_terms(const std::vector<Variable>& terms) {
    Variable total = terms[0];
    for (std::size_t i = 1; i < terms.size(); ++i) total = add(total, terms[i]);
    return total;
}

}  // namespace

std::string GradOverride::name() const {
    switch (kind_) {
    case GradOverrideKind::disconnected: return "DisconnectedGrad";
    case GradOverrideKind::zero: return "ZeroGrad";
    case GradOverrideKind::consider_constant: return "ConsiderConstant";
    case GradOverrideKind::clip: return fmt::format("GradClip{{{}, {}}}", a_, b_);
    case GradOverrideKind::scale: return fmt::format("GradScale{{{}}}", a_);
    }
    return "GradOverride";
}

std::vector<TensorType> GradOverride::make_types(const std::vector<Variable>& inputs) const {
    if (inputs.size() != 1) throw UsageError(fmt::format("{}: takes 1 input, got {}", name(), inputs.size()));
    return {inputs[0].type()};
}

void GradOverride::perform(const Node&, std::span<const Tensor* const> in, std::span<Tensor* const> out) const {
    *out[0] = *in[0];
}

std::optional<std::vector<Shape>> GradOverride::infer_shape(const std::vector<Shape>& in) const {
    return std::vector<Shape>{in[0]};
}

std::vector<Variable> GradOverride::pullback(const Node& node, const std::vector<Variable>& g) const {
    switch (kind_) {
    case GradOverrideKind::disconnected: return {Variable()};
    case GradOverrideKind::zero:
    case GradOverrideKind::consider_constant: return {zeros_like(node.inputs[0])};
    case GradOverrideKind::clip: return {clip(g[0], a_, b_)};
    case GradOverrideKind::scale: return {mul(g[0], a_)};
    }
    return {Variable()};
}

bool GradOverride::props_equal(const Op& o) const {
    const auto& x = static_cast<const GradOverride&>(o);
    return x.kind_ == kind_ && x.a_ == a_ && x.b_ == b_;
}

std::size_t GradOverride::props_hash() const {
    return static_cast<std::size_t>(kind_) * 31u + std::hash<double>()(a_) + 7u * std::hash<double>()(b_);
}

Variable disconnected_grad(const Variable& x) {
    return apply1(std::make_shared<GradOverride>(GradOverrideKind::disconnected), {x});
}
Variable zero_grad(const Variable& x) { return apply1(std::make_shared<GradOverride>(GradOverrideKind::zero), {x}); }
Variable consider_constant(const Variable& x) {
    return apply1(std::make_shared<GradOverride>(GradOverrideKind::consider_constant), {x});
}
Variable grad_clip(const Variable& x, double lo, double hi) {
    if (!(lo <= hi)) throw UsageError(fmt::format("grad_clip: the lower bound {} is above the upper bound {}", lo, hi));
    return apply1(std::make_shared<GradOverride>(GradOverrideKind::clip, lo, hi), {x});
}
Variable grad_scale(const Variable& x, double factor) {
    return apply1(std::make_shared<GradOverride>(GradOverrideKind::scale, factor), {x});
}

std::vector<Variable> vjp(const std::vector<Variable>& outputs, const std::vector<Variable>& output_grads,
                          const std::vector<Variable>& wrt, const GradOptions& options) {
    if (outputs.size() != output_grads.size()) {
        throw UsageError(fmt::format("vjp: {} outputs but {} output gradients", outputs.size(), output_grads.size()));
    }
    for (std::size_t i = 0; i < wrt.size(); ++i) {
        if (!wrt[i].defined()) throw UsageError(fmt::format("grad: wrt {} is an undefined Variable", i));
    }
    VarMap<bool> is_wrt;
    for (const auto& w : wrt) is_wrt[key(w)] = true;
    VarMap<bool> is_const;
    for (const auto& c : options.consider_constant) is_const[key(c)] = true;
    // Known gradients replace what flows into their variables.
    VarMap<Variable> known;
    std::vector<Variable> roots = outputs;
    for (std::size_t i = 0; i < options.known_grads.size(); ++i) {
        const auto& [var, g] = options.known_grads[i];
        if (!var.defined() || !g.defined()) {
            throw UsageError(fmt::format("grad: known_grads entry {} has an undefined {}", i,
                                         var.defined() ? "gradient" : "variable"));
        }
        if (!is_float(g.dtype()) || g.ndim() != var.ndim()) {
            throw UsageError(fmt::format("grad: the known gradient of '{}' ({}) is {}; it must be a float tensor of the "
                                         "variable's rank", var.label(), var.type().str(), g.type().str()));
        }
        known[key(var)] = fit_to(g, var, var.node(), 0);
        roots.push_back(var);
    }

    auto order = toposort(roots);
    // Forward pass: which variables depend on some wrt.
    VarMap<bool> depends;
    for (const auto& node : order) {
        for (int o = 0; o < node->n_outputs(); ++o) {
            VarKey k{node.get(), o};
            if (is_wrt.count(k)) {
                depends[k] = true;
                continue;
            }
            if (node->kind != NodeKind::apply || is_const.count(k)) continue;
            const auto* go = dynamic_cast<const GradOverride*>(node->op.get());
            if (go && go->kind() == GradOverrideKind::disconnected) continue;
            bool dep = false;
            for (const auto& in : node->inputs) dep = dep || depends.count(key(in));
            if (dep) depends[k] = true;
        }
    }

    VarMap<std::vector<Variable>> contrib;
    VarMap<bool> zero_reached;  // variables reached only by gradients known to be zero
    for (std::size_t i = 0; i < outputs.size(); ++i) {
        if (!output_grads[i].defined()) continue;
        contrib[key(outputs[i])].push_back(fit_to(output_grads[i], outputs[i], outputs[i].node(), 0));
    }
    // The gradient of a variable: its known gradient, else the sum of what reached it.
    auto gradient_of = [&](const VarKey& k) -> Variable {
        if (auto kn = known.find(k); kn != known.end()) return kn->second;
        auto c = contrib.find(k);
        return c == contrib.end() ? Variable() : sum_terms(c->second);
    };

    for (auto it = order.rbegin(); it != order.rend(); ++it) {
        const auto& node = *it;
        if (node->kind != NodeKind::apply) continue;
        bool any_out = false;
        bool any_float_out = false;
        std::vector<Variable> out_grads(static_cast<std::size_t>(node->n_outputs()));
        for (int o = 0; o < node->n_outputs(); ++o) {
            VarKey k{node.get(), o};
            if (!depends.count(k) || is_const.count(k)) continue;
            out_grads[o] = gradient_of(k);
            if (!out_grads[o].defined()) continue;
            any_out = true;
            any_float_out = any_float_out || is_float(node->types[o].dtype);
        }
        if (!any_out || !any_float_out) {
            // Only zero gradients reach this node, or only its integer outputs lead to the cost
            // (their gradient says nothing about the inputs): its inputs are reached, with zeros.
            bool zero = any_out;
            for (int o = 0; o < node->n_outputs(); ++o) zero = zero || zero_reached.count(VarKey{node.get(), o});
            if (zero) {
                for (const auto& in : node->inputs) {
                    if (depends.count(key(in))) zero_reached[key(in)] = true;
                }
            }
            continue;
        }
        // Outputs without a gradient get zeros when the op needs all of them.
        for (int o = 0; o < node->n_outputs(); ++o) {
            if (!out_grads[o].defined() && node->n_outputs() > 1 && is_float(node->types[o].dtype)) {
                out_grads[o] = zeros_like(node->output(o));
            }
        }
        std::vector<Variable> in_grads = node->op->pullback(*node, out_grads);
        if (in_grads.size() != node->inputs.size()) {
            throw InternalError(fmt::format("the pullback of {} returned {} gradients for {} inputs", node->op->name(),
                                            in_grads.size(), node->inputs.size()));
        }
        for (std::size_t i = 0; i < node->inputs.size(); ++i) {
            const Variable& in = node->inputs[i];
            if (!depends.count(key(in)) || !in_grads[i].defined()) continue;
            if (is_zero_gradient(in_grads[i])) {
                zero_reached[key(in)] = true;
                continue;
            }
            if (is_not_differentiable(in_grads[i])) {
                const std::string reason = not_differentiable_reason(in_grads[i]);
                throw UsageError(fmt::format(
                    "grad: {} has no gradient with respect to its input {} ({}){}, and the cost depends on a "
                    "requested variable through it (node built at {})",
                    node->op->name(), i, in.type().str(), reason.empty() ? "" : ": " + reason,
                    where_string(node->where)));
            }
            contrib[key(in)].push_back(fit_to(in_grads[i], in, *node, i));
        }
    }

    std::vector<Variable> result;
    for (std::size_t i = 0; i < wrt.size(); ++i) {
        if (Variable g = gradient_of(key(wrt[i])); g.defined()) {
            result.push_back(g);
            continue;
        }
        if (zero_reached.count(key(wrt[i]))) {
            result.push_back(float_zeros_like(wrt[i]));
            continue;
        }
        std::string msg = fmt::format(
            "grad: the cost does not depend on wrt {} ('{}', {}); pass disconnected_inputs = ignore or warn to get "
            "zeros", i, wrt[i].label(), wrt[i].type().str());
        if (options.disconnected_inputs == Disconnected::raise) throw UsageError(msg);
        if (options.disconnected_inputs == Disconnected::warn) std::cerr << "warning: " << msg << "\n";
        result.push_back(float_zeros_like(wrt[i]));
    }
    return result;
}

std::vector<Variable> grad(const Variable& cost, const std::vector<Variable>& wrt, const GradOptions& options) {
    if (!cost.defined() && options.known_grads.empty()) {
        throw UsageError("grad: the cost is an undefined Variable (and no known_grads are given)");
    }
    std::vector<Variable> outputs, seeds;
    if (cost.defined()) {
        if (cost.ndim() != 0) {
            throw UsageError(fmt::format("grad: the cost must be a scalar, got {} (take its sum or mean first)",
                                         cost.type().str()));
        }
        // d cost / d cost = 1, in floatX for an integer cost (a gradient is always float).
        const DType dt = is_float(cost.dtype()) ? cost.dtype() : config().floatX;
        outputs.push_back(cost);
        seeds.push_back(constant(Tensor::full(dt, {}, 1.0)));
    }
    std::vector<Variable> result = vjp(outputs, seeds, wrt, options);
    if (options.add_names && cost.defined() && !cost.name().empty()) {
        for (std::size_t i = 0; i < wrt.size(); ++i) {
            if (!wrt[i].name().empty() && result[i].is_apply()) {
                result[i].set_name(fmt::format("(d{}/d{})", cost.name(), wrt[i].name()));
            }
        }
    }
    return result;
}

Variable grad(const Variable& cost, const Variable& wrt, const GradOptions& options) {
    return grad(cost, std::vector<Variable>{wrt}, options)[0];
}

std::vector<Variable> Rop(const std::vector<Variable>& f, const std::vector<Variable>& wrt,
                          const std::vector<Variable>& eval_points) {
    if (wrt.size() != eval_points.size()) {
        throw UsageError(fmt::format("Rop: {} variables but {} evaluation points", wrt.size(), eval_points.size()));
    }
    for (std::size_t j = 0; j < wrt.size(); ++j) {
        if (!wrt[j].defined() || !eval_points[j].defined()) {
            throw UsageError(fmt::format("Rop: {} {} is an undefined Variable", wrt[j].defined() ? "evaluation point" : "wrt", j));
        }
        if (eval_points[j].ndim() != wrt[j].ndim()) {
            throw UsageError(fmt::format("Rop: evaluation point {} is {} but wrt {} ('{}') is {}", j,
                                         eval_points[j].type().str(), j, wrt[j].label(), wrt[j].type().str()));
        }
    }
    // J v by transposing the vector-Jacobian product: with u a cotangent of f's type,
    // vjp(f, u) = J^T u is linear in u, so d/du (v . J^T u) = J v, whatever u holds. u is a
    // placeholder input, replaced by f itself afterwards (only its shape can remain in use).
    std::vector<Variable> u;
    for (const auto& fi : f) {
        if (!fi.defined()) throw UsageError("Rop: an output is an undefined Variable");
        u.push_back(input(TensorType{is_float(fi.dtype()) ? fi.dtype() : config().floatX, fi.broadcastable()},
                          "rop_cotangent"));
    }
    const GradOptions quiet{{}, Disconnected::ignore, {}, false};
    std::vector<Variable> jt_u = vjp(f, u, wrt, quiet);
    Variable s;
    for (std::size_t j = 0; j < wrt.size(); ++j) {
        Variable v = eval_points[j];
        if (v.dtype() != jt_u[j].dtype()) v = cast(v, jt_u[j].dtype());
        Variable term = sum(mul(jt_u[j], v));
        s = s.defined() ? add(s, term) : term;
    }
    std::vector<Variable> jv = s.defined() ? vjp({s}, {ones_like(s)}, u, quiet) : std::vector<Variable>{};
    VarMap<Variable> back;
    for (std::size_t i = 0; i < f.size(); ++i) back[key(u[i])] = f[i];
    std::vector<Variable> result;
    for (std::size_t i = 0; i < f.size(); ++i) {
        result.push_back(jv.empty() ? float_zeros_like(f[i]) : jv[i]);
    }
    return clone_with_replace(result, back);
}

Variable Rop(const Variable& f, const Variable& wrt, const Variable& eval_point) {
    return Rop(std::vector<Variable>{f}, std::vector<Variable>{wrt}, std::vector<Variable>{eval_point})[0];
}

Variable jacobian(const Variable& expr, const Variable& wrt, std::int64_t n) {
    if (expr.ndim() != 1) {
        throw UsageError(fmt::format("jacobian: the expression must be a vector, got {}", expr.type().str()));
    }
    if (n < 1) throw UsageError(fmt::format("jacobian: the length n must be positive, got {}", n));
    Variable total;
    for (std::int64_t i = 0; i < n; ++i) {
        Variable gi = grad(subtensor(expr, {Idx(static_cast<long>(i))}), wrt,
                           GradOptions{{}, Disconnected::ignore});
        Tensor e = Tensor::zeros(wrt.dtype(), {n});
        dispatch(wrt.dtype(), [&]<class T>() { e.data<T>()[i] = T(1); });
        Variable row = outer(constant(e), gi.flatten(1));
        total = total.defined() ? add(total, row) : row;
    }
    return total;
}

Variable hessian(const Variable& cost, const Variable& wrt, std::int64_t n) {
    if (wrt.ndim() != 1) {
        throw UsageError(fmt::format("hessian: wrt must be a vector, got {}", wrt.type().str()));
    }
    return jacobian(grad(cost, wrt), wrt, n);
}

}  // namespace theanine
