#include "ops/composite.hpp"

#include "ops/blas.hpp"

#include <omp.h>

#include <Eigen/Core>
#include <fmt/format.h>

namespace theanine {

namespace {
constexpr std::int64_t kBlock = 512;

template <class T>
using Arr = Eigen::Map<Eigen::Array<T, Eigen::Dynamic, 1>>;
template <class T>
using CArr = Eigen::Map<const Eigen::Array<T, Eigen::Dynamic, 1>>;

// log1p(x) = log(u) + (x - (u - 1)) / u with u = 1 + x: the second term restores what
// rounding 1 + x lost (and gives x where u == 1). Vectorised through Eigen's log, where the
// library log1p is scalar; accurate to a few ulp.
template <class T, class E>
auto log1p_vec(const E& x) {
    auto u = x + T(1);
    return u.log() + (x - (u - T(1))) / u;
}

// dst[0..n) = op(args...) over a block.
template <class T>
void run_instr(const Composite::Instr& ins, std::vector<const T*>& reg, T* dst, std::int64_t n) {
    Arr<T> d(dst, n);
    auto A = [&](int k) { return CArr<T>(reg[ins.args[k]], n); };
    using K = Composite::Instr::Kind;
    if (ins.kind == K::cast_bool) {
        d = (A(0) != T(0)).template cast<T>();
        return;
    }
    switch (ins.op) {
    case ScalarOp::add: d = A(0) + A(1); break;
    case ScalarOp::sub: d = A(0) - A(1); break;
    case ScalarOp::mul: d = A(0) * A(1); break;
    case ScalarOp::true_div: d = A(0) / A(1); break;
    case ScalarOp::neg: d = -A(0); break;
    case ScalarOp::exp: d = A(0).exp(); break;
    case ScalarOp::log: d = A(0).log(); break;
    case ScalarOp::log1p: d = log1p_vec<T>(A(0)); break;
    case ScalarOp::sigmoid: d = A(0).logistic(); break;
    case ScalarOp::softplus:
        // max(a, 0) + log1p(exp(-|a|)), with exp(-|a|) stored once (d may alias nothing else).
        d = (-A(0).abs()).exp();
        d = A(0).max(T(0)) + log1p_vec<T>(CArr<T>(dst, n));
        break;
    case ScalarOp::tanh: d = A(0).tanh(); break;
    case ScalarOp::abs: d = A(0).abs(); break;
    case ScalarOp::sgn: d = A(0).sign(); break;
    case ScalarOp::sqrt: d = A(0).sqrt(); break;
    case ScalarOp::sqr: d = A(0).square(); break;
    case ScalarOp::pow: d = A(0).pow(A(1)); break;
    case ScalarOp::maximum: d = A(0).max(A(1)); break;
    case ScalarOp::minimum: d = A(0).min(A(1)); break;
    case ScalarOp::switch_: d = (A(0) != T(0)).select(A(1), A(2)); break;
    case ScalarOp::eq: d = (A(0) == A(1)).template cast<T>(); break;
    case ScalarOp::neq: d = (A(0) != A(1)).template cast<T>(); break;
    case ScalarOp::lt: d = (A(0) < A(1)).template cast<T>(); break;
    case ScalarOp::le: d = (A(0) <= A(1)).template cast<T>(); break;
    case ScalarOp::gt: d = (A(0) > A(1)).template cast<T>(); break;
    case ScalarOp::ge: d = (A(0) >= A(1)).template cast<T>(); break;
    case ScalarOp::second: d = A(1); break;
    }
}

template <class T>
struct Scratch {
    std::vector<T> buf;
    T* get(std::size_t n) {
        if (buf.size() < n) buf.resize(n);
        return buf.data();
    }
};

}  // namespace

Composite::Composite(int n_inputs, std::vector<Instr> program, DType compute, TensorType out_type, std::string expr)
    : n_inputs_(n_inputs), program_(std::move(program)), compute_(compute), out_type_(std::move(out_type)),
      expr_(std::move(expr)), used_(static_cast<std::size_t>(n_inputs), false) {
    internal_check(!program_.empty(), "Composite with an empty program");
    internal_check(is_float(compute_), "Composite computes in a float dtype");
    for (const auto& ins : program_) {
        for (int a : ins.args) {
            if (a < n_inputs_) used_[a] = true;
        }
    }
}

std::vector<TensorType> Composite::make_types(const std::vector<Variable>& inputs) const {
    if (static_cast<int>(inputs.size()) != n_inputs_) {
        throw UsageError(fmt::format("{}: takes {} inputs, got {}", name(), n_inputs_, inputs.size()));
    }
    for (std::size_t i = 0; i < inputs.size(); ++i) {
        if (inputs[i].ndim() != out_type_.ndim()) {
            throw UsageError(fmt::format("{}: input {} is {}, expected {} dimensions", name(), i, inputs[i].type().str(),
                                         out_type_.ndim()));
        }
    }
    return {out_type_};
}

void Composite::perform(const Node& node, std::span<const Tensor* const> in, std::span<Tensor* const> out) const {
    std::vector<const Tensor*> ins(in.begin(), in.end());
    std::vector<std::vector<bool>> bcs;
    for (const auto& v : node.inputs) bcs.push_back(v.broadcastable());
    const Shape os = broadcast_shapes(name(), ins, bcs);
    out[0]->ensure(out_type_.dtype, os);
    const int nd = static_cast<int>(os.size());
    const std::int64_t inner = nd ? os[nd - 1] : 1;
    const std::int64_t total = shape_size(os);
    if (total == 0) return;
    const std::int64_t rows = total / inner;
    const int n_regs = n_inputs_ + static_cast<int>(program_.size());

    dispatch(compute_, [&]<class T>() {
        if constexpr (std::is_floating_point_v<T>) {
            // Per input: broadcast strides over the output's axes.
            std::vector<Shape> st(static_cast<std::size_t>(n_inputs_), Shape(static_cast<std::size_t>(nd), 0));
            for (int k = 0; k < n_inputs_; ++k) {
                for (int d = 0; d < nd; ++d) st[k][d] = (in[k]->dim(d) == 1 && os[d] != 1) ? 0 : in[k]->strides()[d];
            }
            const bool out_is_T = out_type_.dtype == compute_;
            T* outp = out_is_T ? out[0]->data<T>() : nullptr;
            bool* outb = out_is_T ? nullptr : out[0]->data<bool>();
            // Rows are independent: split them across threads when there is enough work.
            const int nt = total >= 8192 && rows > 1 ? std::min<int>(num_threads(), static_cast<int>(rows)) : 1;
#pragma omp parallel num_threads(nt) if (nt > 1)
            {
                thread_local Scratch<T> scratch;
                thread_local std::vector<const T*> reg;
                thread_local std::vector<std::int64_t> off;
                T* buffers = scratch.get(static_cast<std::size_t>(n_regs * kBlock));
                reg.assign(static_cast<std::size_t>(n_regs), nullptr);
                off.assign(static_cast<std::size_t>(n_inputs_), 0);
                const int t = nt > 1 ? omp_get_thread_num() : 0;
                const std::int64_t per = (rows + nt - 1) / nt;
                const std::int64_t r0 = std::min(rows, t * per), r1 = std::min(rows, (t + 1) * per);
                for (std::int64_t r = r0; r < r1; ++r) {
                    // Input offsets of row r (its index over the leading axes).
                    std::int64_t rem = r;
                    std::fill(off.begin(), off.end(), 0);
                    for (int d = nd - 2; d >= 0; --d) {
                        const std::int64_t i = rem % os[d];
                        rem /= os[d];
                        for (int k = 0; k < n_inputs_; ++k) off[k] += i * st[k][d];
                    }
                    for (std::int64_t j0 = 0; j0 < inner; j0 += kBlock) {
                        const std::int64_t len = std::min(kBlock, inner - j0);
                        for (int k = 0; k < n_inputs_; ++k) {
                            if (!used_[k]) continue;
                            const Tensor& tk = *in[k];
                            const std::int64_t s = nd ? st[k][nd - 1] : 0;
                            const std::int64_t base = off[k] + j0 * s;
                            if (tk.dtype() == compute_ && s == 1) {
                                reg[k] = tk.data<T>() + base;
                                continue;
                            }
                            T* b = buffers + static_cast<std::int64_t>(k) * kBlock;
                            dispatch(tk.dtype(), [&]<class S>() {
                                const S* p = tk.data<S>() + base;
                                if (s == 0) {
                                    std::fill(b, b + len, static_cast<T>(p[0]));
                                } else {
                                    for (std::int64_t j = 0; j < len; ++j) b[j] = static_cast<T>(p[j * s]);
                                }
                            });
                            reg[k] = b;
                        }
                        for (std::size_t i = 0; i < program_.size(); ++i) {
                            const int dst = n_inputs_ + static_cast<int>(i);
                            const Instr& ins = program_[i];
                            const bool last = i + 1 == program_.size();
                            if (ins.kind == Instr::Kind::cast_identity) {
                                reg[dst] = reg[ins.args[0]];
                                if (last && outp) std::copy(reg[dst], reg[dst] + len, outp + r * inner + j0);
                                continue;
                            }
                            T* d = (last && outp) ? outp + r * inner + j0 : buffers + static_cast<std::int64_t>(dst) * kBlock;
                            run_instr<T>(ins, reg, d, len);
                            reg[dst] = d;
                        }
                        if (outb) {
                            const T* res = reg[n_regs - 1];
                            for (std::int64_t j = 0; j < len; ++j) outb[r * inner + j0 + j] = res[j] != T(0);
                        }
                    }
                }
            }
        }
    });
}

std::vector<Variable> Composite::pullback(const Node& node, const std::vector<Variable>&) const {
    // Composites are made by the fusion rewrite at compile time, after grad has run.
    std::vector<Variable> g;
    for (std::size_t i = 0; i < node.inputs.size(); ++i) g.push_back(not_differentiable(*this, static_cast<int>(i)));
    return g;
}

bool Composite::props_equal(const Op& other) const {
    const auto& o = static_cast<const Composite&>(other);
    return o.n_inputs_ == n_inputs_ && o.program_ == program_ && o.compute_ == compute_ && o.out_type_ == out_type_;
}

std::size_t Composite::props_hash() const { return std::hash<std::string>()(expr_) ^ static_cast<std::size_t>(n_inputs_); }

}  // namespace theanine
