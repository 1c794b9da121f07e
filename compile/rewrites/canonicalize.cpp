// Canonicalisation: simple algebra that puts graphs in one form for the later phases.
#include <algorithm>
#include <cmath>

#include "autodiff/grad.hpp"
#include "compile/rewrites/rewrites.hpp"
#include "ops/elemwise.hpp"
#include "ops/nnet.hpp"
#include "ops/reduce.hpp"
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

// op(second(x, y), z) -> op(y, z) for an elementwise op when z already has the result's
// type: the fill only supplied a shape that z supplies too (what the gradient of a sum leaves
// inside the chain rule: second(x, 1) * dz).
std::optional<std::vector<Variable>> local_fill_sink(const Node& n) {
    Variable out = n.output(0);
    const auto* e = op_as<Elemwise>(out);
    if (!e || e->scalar_op() == ScalarOp::second) return std::nullopt;
    for (std::size_t i = 0; i < n.inputs.size(); ++i) {
        if (!is(n.inputs[i], ScalarOp::second)) continue;
        bool shaped = false;
        for (std::size_t j = 0; j < n.inputs.size(); ++j) {
            shaped = shaped || (j != i && n.inputs[j].broadcastable() == out.broadcastable());
        }
        if (!shaped) continue;
        std::vector<Variable> ins = n.inputs;
        ins[i] = n.inputs[i].node().inputs[1];
        return if_same_type(out, apply1(n.op, ins, n.where));
    }
    return std::nullopt;
}

// A product as its factors: numerator and denominator terms and a sign, read through nested
// mul, true_div and neg nodes.
struct Factors {
    std::vector<Variable> num, den;
    bool negate = false;
};

void flatten(const Variable& v, bool in_den, Factors& f) {
    if (is(v, ScalarOp::mul)) {
        flatten(v.node().inputs[0], in_den, f);
        flatten(v.node().inputs[1], in_den, f);
    } else if (is(v, ScalarOp::true_div)) {
        flatten(v.node().inputs[0], in_den, f);
        flatten(v.node().inputs[1], !in_den, f);
    } else if (is(v, ScalarOp::neg)) {
        f.negate = !f.negate;
        flatten(v.node().inputs[0], in_den, f);
    } else {
        (in_den ? f.den : f.num).push_back(v);
    }
}

// Removes every denominator term that is also a numerator term; true if any was.
bool cancel(Factors& f) {
    bool any = false;
    for (auto d = f.den.begin(); d != f.den.end();) {
        auto n = std::find_if(f.num.begin(), f.num.end(), [&](const Variable& v) { return v.same(*d); });
        if (n == f.num.end()) {
            ++d;
            continue;
        }
        f.num.erase(n);
        d = f.den.erase(d);
        any = true;
    }
    return any;
}

Variable rebuild(const Factors& f, DType dt) {
    Variable r;
    for (const auto& v : f.num) r = r.defined() ? mul(r, v) : v;
    if (!r.defined()) r = constant(Tensor::full(dt, {}, 1.0));
    for (const auto& v : f.den) r = true_div(r, v);
    return f.negate ? neg(r) : r;
}

// (a * s) / (s * b) -> a / b: a term in both the numerator and the denominator of one
// product cancels (exact where s != 0, and finite where s == 0, e.g. a saturated sigmoid).
std::optional<std::vector<Variable>> local_mul_div_cancel(const Node& n) {
    Variable out = n.output(0);
    if (!is(out, ScalarOp::mul) && !is(out, ScalarOp::true_div)) return std::nullopt;
    Factors f;
    flatten(out, false, f);
    if (!cancel(f)) return std::nullopt;
    return if_same_type(out, rebuild(f, out.dtype()));
}

// (p / s + q) * s * r -> p * r + q * s * r when a term of a sum inside a product divides by
// another factor of that product: distributing lets the division cancel. Only done when it
// enables a cancellation (the gradient of log(sigmoid(a)) + log(1 - sigmoid(a)) through the
// sigmoid's s (1 - s) becomes division-free).
std::optional<std::vector<Variable>> local_distribute_for_cancel(const Node& n) {
    Variable out = n.output(0);
    if (!is(out, ScalarOp::mul)) return std::nullopt;
    Factors f;
    flatten(out, false, f);
    for (std::size_t i = 0; i < f.num.size(); ++i) {
        const Variable& sum = f.num[i];
        const bool plus = is(sum, ScalarOp::add);
        if (!plus && !is(sum, ScalarOp::sub)) continue;
        Factors rest = f;
        rest.num.erase(rest.num.begin() + static_cast<std::ptrdiff_t>(i));
        bool helps = false;
        for (const auto& term : sum.node().inputs) {
            Factors t;
            flatten(term, false, t);
            for (const auto& d : t.den) {
                helps = helps || std::any_of(rest.num.begin(), rest.num.end(), [&](const Variable& v) { return v.same(d); });
            }
        }
        if (!helps) continue;
        Variable r = rebuild(rest, out.dtype());
        Variable a = mul(sum.node().inputs[0], r), b = mul(sum.node().inputs[1], r);
        return if_same_type(out, plus ? add(a, b) : sub(a, b));
    }
    return std::nullopt;
}

// A sum of products as monomials: coefficient times a multiset of atoms (values that are not
// add, sub, neg, mul or a scalar constant), with products over sums expanded.
struct Monomial {
    double coef;
    std::vector<int> atoms;  // indices into the atom list, sorted
};

struct Atoms {
    std::vector<Variable> list;  // in order of first appearance
    VarMap<int> index;
    int of(const Variable& v) {
        auto [it, fresh] = index.emplace(key(v), static_cast<int>(list.size()));
        if (fresh) list.push_back(v);
        return it->second;
    }
};

std::optional<double> scalar_constant(const Variable& v) {
    Variable cur = v;
    while (op_as<DimShuffle>(cur)) cur = cur.node().inputs[0];
    if (!cur.is_constant() || cur.node().value.size() != 1) return std::nullopt;
    const double d = cur.node().value.item();
    return std::isfinite(d) ? std::optional<double>(d) : std::nullopt;
}

bool expand(const Variable& v, std::vector<Monomial>& out, Atoms& atoms, std::size_t limit) {
    auto negate = [](std::vector<Monomial>& ms) {
        for (auto& m : ms) m.coef = -m.coef;
    };
    if (is(v, ScalarOp::add) || is(v, ScalarOp::sub)) {
        std::vector<Monomial> b;
        if (!expand(v.node().inputs[0], out, atoms, limit) || !expand(v.node().inputs[1], b, atoms, limit)) return false;
        if (is(v, ScalarOp::sub)) negate(b);
        out.insert(out.end(), b.begin(), b.end());
    } else if (is(v, ScalarOp::neg)) {
        std::vector<Monomial> a;
        if (!expand(v.node().inputs[0], a, atoms, limit)) return false;
        negate(a);
        out.insert(out.end(), a.begin(), a.end());
    } else if (is(v, ScalarOp::mul)) {
        std::vector<Monomial> a, b;
        if (!expand(v.node().inputs[0], a, atoms, limit) || !expand(v.node().inputs[1], b, atoms, limit)) return false;
        if (a.size() * b.size() > limit) return false;
        for (const auto& x : a) {
            for (const auto& y : b) {
                Monomial m{x.coef * y.coef, x.atoms};
                m.atoms.insert(m.atoms.end(), y.atoms.begin(), y.atoms.end());
                std::sort(m.atoms.begin(), m.atoms.end());
                out.push_back(std::move(m));
            }
        }
    } else if (auto c = scalar_constant(v)) {
        out.push_back({*c, {}});
    } else {
        out.push_back({1.0, {atoms.of(v)}});
    }
    return out.size() <= limit;
}

// (1 - x) s - x (1 - s) -> s - x, and g s - g x -> g (s - x): a float sum of products is
// expanded into monomials; when some cancel or merge, it is rebuilt from what is left, with
// the factors common to every monomial taken out. (The dA's gradient at the decoder
// pre-activation comes out of grad() in the first form.)
std::optional<std::vector<Variable>> local_collect_terms(const Node& n) {
    Variable out = n.output(0);
    if (!is_float(out.dtype()) || !(is(out, ScalarOp::add) || is(out, ScalarOp::sub))) return std::nullopt;
    std::vector<Monomial> ms;
    Atoms atoms;
    if (!expand(out, ms, atoms, 16)) return std::nullopt;
    std::vector<Monomial> collected;
    for (const auto& m : ms) {
        auto it = std::find_if(collected.begin(), collected.end(), [&](const Monomial& c) { return c.atoms == m.atoms; });
        if (it == collected.end()) {
            collected.push_back(m);
        } else {
            it->coef += m.coef;
        }
    }
    std::erase_if(collected, [](const Monomial& m) { return m.coef == 0; });
    if (collected.size() == ms.size() || collected.empty()) return std::nullopt;
    // Factors every monomial has.
    std::vector<int> common = collected[0].atoms;
    for (const auto& m : collected) {
        std::vector<int> keep;
        std::vector<int> rest = m.atoms;
        for (const auto& a : common) {
            auto it = std::find(rest.begin(), rest.end(), a);
            if (it != rest.end()) {
                keep.push_back(a);
                rest.erase(it);
            }
        }
        common = keep;
    }
    const DType dt = out.dtype();
    auto product = [&](const std::vector<int>& ks) {
        Variable r;
        for (int k : ks) r = r.defined() ? mul(r, atoms.list[k]) : atoms.list[k];
        return r;
    };
    Variable sum;
    for (auto m : collected) {
        for (const auto& c : common) m.atoms.erase(std::find(m.atoms.begin(), m.atoms.end(), c));
        Variable term = product(m.atoms);
        const double mag = std::abs(m.coef);
        if (!term.defined()) {
            term = constant(Tensor::full(dt, {}, mag));
        } else if (mag != 1) {
            term = mul(constant(Tensor::full(dt, {}, mag)), term);
        }
        if (!sum.defined()) {
            sum = m.coef < 0 ? neg(term) : term;
        } else {
            sum = m.coef < 0 ? sub(sum, term) : add(sum, term);
        }
    }
    Variable f = product(common);
    return if_same_type(out, f.defined() ? mul(f, sum) : sum);
}

// disconnected_grad(x), zero_grad(x), consider_constant(x), grad_clip(x), grad_scale(x) -> x:
// they change only gradients, which are built before compiling.
std::optional<std::vector<Variable>> local_remove_gradient_ops(const Node& n) {
    if (!dynamic_cast<const GradOverride*>(n.op.get())) return std::nullopt;
    return std::vector<Variable>{n.inputs[0]};
}

// y.dimshuffle(...)[i], where i is a constant 0 or -1 (the only indices a length-1 axis has)
// on an axis the DimShuffle added and every other entry is a full slice: the DimShuffle
// without that axis (y itself when nothing else changes). A loop of one step
// (scan_single_step) stacks its results as y.dimshuffle('x', ...), and readers take their
// [0] or [-1] row; without this rewrite, a product of that row and the same product of y
// are not recognised as one.
std::optional<std::vector<Variable>> local_subtensor_of_new_axis(const Node& n) {
    using Kind = IndexSpec::BoundSpec::Kind;
    const Variable out = n.output(0);
    const auto* sub = op_as<Subtensor>(out);
    if (!sub || n.inputs.size() != 1) return std::nullopt;  // constant entries only
    const Variable& x = n.inputs[0];
    const auto* ds = op_as<DimShuffle>(x);
    if (!ds) return std::nullopt;
    const std::vector<int>& order = ds->order();
    const auto& entries = sub->spec().entries;
    if (entries.size() > order.size()) return std::nullopt;
    std::vector<int> kept;
    bool dropped = false;
    for (std::size_t i = 0; i < order.size(); ++i) {
        if (i < entries.size()) {
            const IndexSpec::Entry& e = entries[i];
            if (e.is_index) {
                const bool first_or_last = e.b[0].kind == Kind::constant && (e.b[0].value == 0 || e.b[0].value == -1);
                if (order[i] != -1 || !first_or_last) return std::nullopt;
                dropped = true;
                continue;
            }
            if (e.b[0].kind != Kind::none || e.b[1].kind != Kind::none || e.b[2].kind != Kind::none) return std::nullopt;
        }
        kept.push_back(order[i]);
    }
    if (!dropped) return std::nullopt;
    const Variable& y = x.node().inputs[0];
    bool identity = static_cast<int>(kept.size()) == y.ndim();
    for (std::size_t i = 0; i < kept.size() && identity; ++i) identity = kept[i] == static_cast<int>(i);
    return if_same_type(out, identity ? y : y.dimshuffle(kept));
}

// argmax(softmax(x)) -> argmax(x) along the axis softmax normalises (and the same for
// log_softmax): both increase with each entry of a row, so the row's largest entry keeps its
// place; a prediction's argmax over class probabilities then needs no softmax pass.
std::optional<std::vector<Variable>> local_argmax_pushdown(const Node& n) {
    const auto* a = dynamic_cast<const Argmax*>(n.op.get());
    if (!a || !a->axis()) return std::nullopt;
    const Variable& in = n.inputs[0];
    if (!op_as<Softmax>(in) && !op_as<LogSoftmax>(in)) return std::nullopt;
    if (*a->axis() != in.ndim() - 1) return std::nullopt;
    return std::vector<Variable>{argmax(in.node().inputs[0], *a->axis())};
}

}  // namespace

void register_canonicalize(RewriteRegistry& r) {
    r.add(NodeRewriter{"local_remove_gradient_ops", "canonicalize", {"fast_run"}, local_remove_gradient_ops});
    r.add(NodeRewriter{"local_mul_by_one", "canonicalize", {"fast_run"}, local_mul_by_one});
    r.add(NodeRewriter{"local_add_zero", "canonicalize", {"fast_run"}, local_add_zero});
    r.add(NodeRewriter{"local_double_neg", "canonicalize", {"fast_run"}, local_double_neg});
    r.add(NodeRewriter{"local_neg_of_sub", "canonicalize", {"fast_run"}, local_neg_of_sub});
    r.add(NodeRewriter{"local_fill_shape_source", "canonicalize", {"fast_run"}, local_fill_shape_source});
    r.add(NodeRewriter{"local_fill_sink", "canonicalize", {"fast_run"}, local_fill_sink});
    r.add(NodeRewriter{"local_mul_div_cancel", "canonicalize", {"fast_run"}, local_mul_div_cancel});
    r.add(NodeRewriter{"local_distribute_for_cancel", "canonicalize", {"fast_run"}, local_distribute_for_cancel});
    r.add(NodeRewriter{"local_collect_terms", "canonicalize", {"fast_run"}, local_collect_terms});
    r.add(NodeRewriter{"local_subtensor_of_new_axis", "canonicalize", {"fast_run"}, local_subtensor_of_new_axis});
    r.add(NodeRewriter{"local_argmax_pushdown", "canonicalize", {"fast_run"}, local_argmax_pushdown});
}

}  // namespace theanine
