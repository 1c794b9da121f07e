#include "autodiff/grad.hpp"

#include <iostream>
#include <unordered_set>

#include <fmt/format.h>

#include "ops/blas.hpp"
#include "ops/elemwise.hpp"
#include "ops/reduce.hpp"
#include "ops/shape.hpp"

namespace theanine {

namespace {

// Identity whose pullback is "disconnected".
class DisconnectedGrad final : public Op {
public:
    std::string name() const override { return "DisconnectedGrad"; }
    std::vector<TensorType> make_types(const std::vector<Variable>& inputs) const override {
        if (inputs.size() != 1) throw UsageError("DisconnectedGrad: takes 1 input");
        return {inputs[0].type()};
    }
    void perform(const Node&, std::span<const Tensor* const> in, std::span<Tensor* const> out) const override {
        *out[0] = *in[0];
    }
    std::optional<std::vector<Shape>> infer_shape(const std::vector<Shape>& in) const override {
        return std::vector<Shape>{in[0]};
    }
    std::vector<Variable> pullback(const Node&, const std::vector<Variable>&) const override { return {Variable()}; }
    std::vector<int> view_map() const override { return {0}; }
    bool props_equal(const Op&) const override { return true; }
    std::size_t props_hash() const override { return 0; }
};

// Makes g fit var's type: sums over axes that var broadcasts, casts to var's dtype.
Variable fit_to(const Variable& g, const Variable& var, const Node& node, std::size_t input) {
    if (g.ndim() != var.ndim()) {
        throw InternalError(fmt::format("the pullback of {} returned a {} gradient for input {} of type {}",
                                        node.op->name(), g.type().str(), input, var.type().str()));
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

Variable sum_terms(const std::vector<Variable>& terms) {
    Variable total = terms[0];
    for (std::size_t i = 1; i < terms.size(); ++i) total = add(total, terms[i]);
    return total;
}

}  // namespace

Variable disconnected_grad(const Variable& x) { return apply1(std::make_shared<DisconnectedGrad>(), {x}); }

std::vector<Variable> vjp(const std::vector<Variable>& outputs, const std::vector<Variable>& output_grads,
                          const std::vector<Variable>& wrt, const GradOptions& options) {
    if (outputs.size() != output_grads.size()) {
        throw UsageError(fmt::format("vjp: {} outputs but {} output gradients", outputs.size(), output_grads.size()));
    }
    for (std::size_t i = 0; i < wrt.size(); ++i) {
        if (!wrt[i].defined()) throw UsageError(fmt::format("grad: wrt {} is an undefined Variable", i));
        if (!is_float(wrt[i].dtype())) {
            throw UsageError(fmt::format("grad: wrt {} ('{}') is {}; gradients are defined for float variables only", i,
                                         wrt[i].label(), wrt[i].type().str()));
        }
    }
    VarMap<bool> is_wrt;
    for (const auto& w : wrt) is_wrt[key(w)] = true;
    VarMap<bool> is_const;
    for (const auto& c : options.consider_constant) is_const[key(c)] = true;

    auto order = toposort(outputs);
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
            if (dynamic_cast<const DisconnectedGrad*>(node->op.get())) continue;
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

    for (auto it = order.rbegin(); it != order.rend(); ++it) {
        const auto& node = *it;
        if (node->kind != NodeKind::apply) continue;
        bool any_out = false;
        std::vector<Variable> out_grads(static_cast<std::size_t>(node->n_outputs()));
        for (int o = 0; o < node->n_outputs(); ++o) {
            VarKey k{node.get(), o};
            if (!depends.count(k) || is_const.count(k)) continue;
            auto c = contrib.find(k);
            if (c == contrib.end()) continue;
            out_grads[o] = sum_terms(c->second);
            any_out = true;
        }
        if (!any_out) {
            // Only zero gradients reach this node: its inputs are reached, with zeros.
            bool zero = false;
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
        auto c = contrib.find(key(wrt[i]));
        if (c != contrib.end()) {
            result.push_back(sum_terms(c->second));
            continue;
        }
        if (zero_reached.count(key(wrt[i]))) {
            result.push_back(zeros_like(wrt[i]));
            continue;
        }
        std::string msg = fmt::format(
            "grad: the cost does not depend on wrt {} ('{}', {}); pass disconnected_inputs = ignore or warn to get "
            "zeros", i, wrt[i].label(), wrt[i].type().str());
        if (options.disconnected_inputs == Disconnected::raise) throw UsageError(msg);
        if (options.disconnected_inputs == Disconnected::warn) std::cerr << "warning: " << msg << "\n";
        result.push_back(zeros_like(wrt[i]));
    }
    return result;
}

std::vector<Variable> grad(const Variable& cost, const std::vector<Variable>& wrt, const GradOptions& options) {
    if (!cost.defined()) throw UsageError("grad: the cost is an undefined Variable");
    if (cost.ndim() != 0) {
        throw UsageError(fmt::format("grad: the cost must be a scalar, got {} (take its sum or mean first)",
                                     cost.type().str()));
    }
    if (!is_float(cost.dtype())) {
        throw UsageError(fmt::format("grad: the cost must be a float scalar, got {}", cost.type().str()));
    }
    Variable one = constant(Tensor::full(cost.dtype(), {}, 1.0));
    return vjp({cost}, {one}, wrt, options);
}

Variable grad(const Variable& cost, const Variable& wrt, const GradOptions& options) {
    return grad(cost, std::vector<Variable>{wrt}, options)[0];
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
