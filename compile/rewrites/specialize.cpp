// Specialisation: matrix products become BLAS-style calls that read transposed operands in
// place and accumulate into their output, and transposes of products move inside.
#include "compile/rewrites/rewrites.hpp"
#include "ops/blas.hpp"
#include "ops/elemwise.hpp"
#include "ops/shape.hpp"

namespace theanine {

namespace {

using pattern::op_as;

bool is_transpose(const Variable& v) {
    const auto* d = op_as<DimShuffle>(v);
    return d && d->is_transpose();
}

bool is(const Variable& v, ScalarOp op) { return pattern::is_elemwise(v, static_cast<int>(op)); }

// x^T: strips a transpose instead of stacking a second one.
Variable transposed(const Variable& x) { return is_transpose(x) ? x.node().inputs[0] : x.T(); }

// (x^T)^T -> x
std::optional<std::vector<Variable>> local_transpose_of_transpose(const Node& n) {
    Variable out = n.output(0);
    if (!is_transpose(out) || !is_transpose(n.inputs[0])) return std::nullopt;
    const Variable& x = n.inputs[0].node().inputs[0];
    if (x.type() != out.type()) return std::nullopt;
    return std::vector<Variable>{x};
}

// dot(A, B)^T -> dot(B^T, A^T), so a gradient that arrives transposed is produced in
// row-major order instead of being read through a strided view.
std::optional<std::vector<Variable>> local_transpose_of_dot(const Node& n) {
    Variable out = n.output(0);
    if (!is_transpose(out) || !op_as<Dot>(n.inputs[0])) return std::nullopt;
    const auto& ab = n.inputs[0].node().inputs;
    if (ab[0].ndim() != 2 || ab[1].ndim() != 2) return std::nullopt;
    return std::vector<Variable>{dot(transposed(ab[1]), transposed(ab[0]))};
}

// dot(A^T, B) -> Dot22{T,N}(A, B) (and the other flag combinations)
std::optional<std::vector<Variable>> local_dot22(const Node& n) {
    Variable out = n.output(0);
    if (!op_as<Dot>(out)) return std::nullopt;
    const Variable& a = n.inputs[0];
    const Variable& b = n.inputs[1];
    if (a.ndim() != 2 || b.ndim() != 2) return std::nullopt;
    const bool ta = is_transpose(a), tb = is_transpose(b);
    return std::vector<Variable>{dot22(ta ? a.node().inputs[0] : a, tb ? b.node().inputs[0] : b, ta, tb)};
}

// A scalar hidden in a broadcastable tensor: a one-element constant, or a scalar under a
// DimShuffle that only adds axes.
std::optional<Variable> as_scalar(const Variable& v) {
    for (bool b : v.broadcastable()) {
        if (!b) return std::nullopt;
    }
    if (v.is_constant() && v.node().value.size() == 1) return constant(Tensor::full(v.dtype(), {}, v.node().value.item()));
    if (op_as<DimShuffle>(v) && v.node().inputs[0].ndim() == 0) return v.node().inputs[0];
    if (v.ndim() == 0) return v;
    return std::nullopt;
}

// One product op(A) op(B) of a sum.
struct Product {
    Variable a, b;
    bool ta, tb;
};

// The matrix products summed in x: Dot22 nodes added together, or already a Gemm that
// adds a product to another sum with unit factors (what this rewrite makes of an inner
// add first).
bool collect_products(const Variable& x, std::vector<Product>& products) {
    if (const auto* d = op_as<Dot22>(x)) {
        products.push_back({x.node().inputs[0], x.node().inputs[1], d->trans_a(), d->trans_b()});
        return true;
    }
    if (is(x, ScalarOp::add)) {
        return collect_products(x.node().inputs[0], products) && collect_products(x.node().inputs[1], products);
    }
    if (const auto* g = op_as<Gemm>(x)) {
        const auto& in = x.node().inputs;
        if (!pattern::is_constant_value(in[1], 1.0) || !pattern::is_constant_value(in[4], 1.0)) return false;
        if (!collect_products(in[0], products)) return false;
        products.push_back({in[2], in[3], g->trans_a(), g->trans_b()});
        return true;
    }
    return false;
}

// C - k * (A B + D E) -> Gemm(Gemm(C, -k, A, B, 1), -k, D, E, 1)   (and C + k * ..., C - A B)
std::optional<std::vector<Variable>> local_gemm_update(const Node& n) {
    Variable out = n.output(0);
    const bool minus = is(out, ScalarOp::sub);
    if (!minus && !is(out, ScalarOp::add)) return std::nullopt;
    const Variable& c = n.inputs[0];
    const Variable& rhs = n.inputs[1];
    if (c.ndim() != 2 || c.type() != out.type()) return std::nullopt;
    Variable k = constant(Tensor::full(c.dtype(), {}, 1.0));
    Variable sum = rhs;
    if (is(rhs, ScalarOp::mul)) {
        const auto& f = rhs.node().inputs;
        if (auto s = as_scalar(f[0])) {
            k = *s;
            sum = f[1];
        } else if (auto s2 = as_scalar(f[1])) {
            k = *s2;
            sum = f[0];
        }
    }
    std::vector<Product> products;
    if (!collect_products(sum, products)) return std::nullopt;
    Variable alpha = minus ? neg(k) : k;
    Variable acc = c;
    for (const Product& p : products) {
        acc = gemm(acc, alpha, p.a, p.b, constant(Tensor::full(c.dtype(), {}, 1.0)), p.ta, p.tb);
    }
    return std::vector<Variable>{acc};
}

bool same_scalar(const Variable& a, const Variable& b) {
    if (a.same(b)) return true;
    return a.is_constant() && b.is_constant() && a.node().value.size() == 1 && b.node().value.size() == 1 &&
           a.dtype() == b.dtype() && a.node().value.item() == b.node().value.item();
}

// Gemm(Gemm(C, a, A1, B1, b), a, A2, B2, 1) -> Gemm(C, a, [A1 A2], [B1; B2], b): two products
// with the same factor become one with the inner dimensions joined, so C is read and written
// once and the kernel runs with k1 + k2 (the dA's two W-gradient products, k = 20 each, make
// one with k = 40). The joined operands cost a copy of A and B, much smaller than C. (The
// inner Gemm is assumed to have no other reader, as local_gemm_update builds it.)
std::optional<std::vector<Variable>> local_gemm_merge(const Node& n) {
    const auto* outer = op_as<Gemm>(n.output(0));
    if (!outer) return std::nullopt;
    const Variable& c2 = n.inputs[0];
    const auto* inner = op_as<Gemm>(c2);
    if (!inner || inner->trans_a() != outer->trans_a() || inner->trans_b() != outer->trans_b()) return std::nullopt;
    const auto& in1 = c2.node().inputs;
    if (!pattern::is_constant_value(n.inputs[4], 1.0) || !same_scalar(in1[1], n.inputs[1])) return std::nullopt;
    const bool ta = outer->trans_a(), tb = outer->trans_b();
    Variable a = concatenate({in1[2], n.inputs[2]}, ta ? 0 : 1);
    Variable b = concatenate({in1[3], n.inputs[3]}, tb ? 1 : 0);
    return std::vector<Variable>{gemm(in1[0], in1[1], a, b, in1[4], ta, tb)};
}

// Gemm(s * C, alpha, A, B, beta) -> Gemm(C, alpha, A, B, beta * s) for a scalar s: a scaling of
// the accumulated matrix (the weight decay of an L2 term, which canonicalisation turns into
// W * (1 - lr * 2 * l2) - lr * x^T dh) is done by the product's beta instead of a separate
// pass over C. The product then reads C itself, and can write into it in place when C is the
// parameter it updates.
std::optional<std::vector<Variable>> local_gemm_beta(const Node& n) {
    const auto* g = op_as<Gemm>(n.output(0));
    if (!g) return std::nullopt;
    const Variable& c = n.inputs[0];
    if (!is(c, ScalarOp::mul) || c.node().inputs.size() != 2) return std::nullopt;
    const auto& f = c.node().inputs;
    std::optional<Variable> s;
    Variable base;
    if ((s = as_scalar(f[0])) && f[1].type() == c.type()) {
        base = f[1];
    } else if ((s = as_scalar(f[1])) && f[0].type() == c.type()) {
        base = f[0];
    } else {
        return std::nullopt;
    }
    Variable beta = mul(n.inputs[4], cast(*s, c.dtype()));
    return std::vector<Variable>{gemm(base, n.inputs[1], n.inputs[2], n.inputs[3], beta, g->trans_a(), g->trans_b())};
}

}  // namespace

// pow(x, 2) -> sqr(x), pow(x, 1) -> x, pow(x, 0.5) -> sqrt(x), pow(x, -1) -> 1 / x (as Theano's
// local_pow_specialize: a library pow per element costs many multiplications)
std::optional<std::vector<Variable>> local_pow_specialize(const Node& n) {
    if (!pattern::is_elemwise(n.output(0), static_cast<int>(ScalarOp::pow))) return std::nullopt;
    const Variable out = n.output(0);
    const Variable& x = n.inputs[0];
    if (x.dtype() != out.dtype() || x.broadcastable() != out.broadcastable()) return std::nullopt;
    Variable rep;
    if (pattern::is_constant_value(n.inputs[1], 2.0)) rep = sqr(x);
    else if (pattern::is_constant_value(n.inputs[1], 1.0)) rep = x;
    else if (pattern::is_constant_value(n.inputs[1], 0.5) && is_float(x.dtype())) rep = sqrt(x);
    else if (pattern::is_constant_value(n.inputs[1], -1.0) && is_float(x.dtype())) rep = true_div(1.0, x);
    if (!rep.defined() || rep.dtype() != out.dtype()) return std::nullopt;
    return std::vector<Variable>{rep};
}

void register_specialize(RewriteRegistry& r) {
    r.add(NodeRewriter{"local_pow_specialize", "specialize", {"fast_run"}, local_pow_specialize});
    r.add(NodeRewriter{"local_transpose_of_transpose", "canonicalize", {"fast_run"}, local_transpose_of_transpose});
    r.add(NodeRewriter{"local_transpose_of_dot", "canonicalize", {"fast_run"}, local_transpose_of_dot});
    r.add(NodeRewriter{"local_dot22", "specialize", {"fast_run", "blas"}, local_dot22});
    r.add(NodeRewriter{"local_gemm_update", "specialize", {"fast_run", "blas"}, local_gemm_update});
    r.add(NodeRewriter{"local_gemm_merge", "specialize", {"fast_run", "blas"}, local_gemm_merge});
    r.add(NodeRewriter{"local_gemm_beta", "specialize", {"fast_run", "blas"}, local_gemm_beta});
}

}  // namespace theanine
