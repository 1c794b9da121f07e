#include "ops/composite.hpp"

#include <algorithm>
#include <array>
#include <cstdlib>
#include <limits>
#include <map>
#include <memory>
#include <tuple>

#include <Eigen/Core>
#include <fmt/format.h>

#include "ops/blas.hpp"
#include "ops/team.hpp"
#include "ops/vecmath.hpp"

namespace theanine {

namespace {
constexpr std::int64_t kTile = 1024;  // elements per register buffer
constexpr int kMaxThreads = 64;

template <class T>
using Arr = Eigen::Map<Eigen::Array<T, Eigen::Dynamic, 1>>;
template <class T>
using CArr = Eigen::Map<const Eigen::Array<T, Eigen::Dynamic, 1>>;

// log1p(x) = log(u) + (x - (u - 1)) / u with u = 1 + x: the second term restores what
// rounding 1 + x lost (and gives x where u == 1). Vectorised through Eigen's log, where the
// library log1p is scalar; accurate to a few ulp. Where u is 0 or inf the correction is
// 0/0 or inf/inf (NaN) and log(u) alone is the answer (-inf at x = -1, inf at x = inf).
template <class T, class E>
auto log1p_vec(const E& x) {
    auto u = x + T(1);
    auto correction = (x - (u - T(1))) / u;
    return (correction == correction).select(u.log() + correction, u.log());
}

// log1p(t) for t in [0, 1] as 2 atanh(s) with s = t / (2 + t) <= 1/3: the odd series
// 2 (s + s^3/3 + s^5/5 + ...) converges by a factor s^2 <= 1/9 per term, so 7 terms reach
// float precision and 16 double precision. One division and a polynomial: several times
// cheaper than a general vectorised log, which needs a range reduction.
template <class T>
void log1p_unit(T* d, std::int64_t n) {
    constexpr int terms = std::is_same_v<T, float> ? 7 : 16;
    for (std::int64_t j = 0; j < n; ++j) {
        const T t = d[j];
        const T s = t / (T(2) + t);
        const T z = s * s;
        T p = T(1) / T(2 * terms - 1);
#pragma GCC unroll 16
        for (int k = terms - 2; k >= 0; --k) p = p * z + T(1) / T(2 * k + 1);
        d[j] = T(2) * s * p;
    }
}

// The sum of f(k) for k < n: blocks of 1024 terms are added in 4 vectors of lanes that
// accumulate independently (one chain of adds per lane: 4 * lanes chains keep the adders
// busy, where one vector's chain would wait on each add), and each block's lanes are added
// into lanes of doubles, so a float chain is never longer than 1024 / 64 = 16 adds.
template <class T, class F>
double lane_sum(std::int64_t n, F f) {
    constexpr int kLanes = 4 * 64 / static_cast<int>(sizeof(T));
    constexpr std::int64_t kBlock = 1024;
    double total[kLanes] = {};
    std::int64_t i = 0;
    while (i + kLanes <= n) {
        const std::int64_t end = i + std::min<std::int64_t>(kBlock, (n - i) / kLanes * kLanes);
        T acc[kLanes] = {};
        for (; i < end; i += kLanes) {
            for (int l = 0; l < kLanes; ++l) acc[l] += f(i + l);
        }
        for (int l = 0; l < kLanes; ++l) total[l] += static_cast<double>(acc[l]);
    }
    double s = 0;
    for (int l = 0; l < kLanes; ++l) s += total[l];
    for (; i < n; ++i) s += static_cast<double>(f(i));
    return s;
}

template <class T, class F>
void compare(T* d, const T* a, const T* b, std::int64_t n, F f) {
    for (std::int64_t j = 0; j < n; ++j) d[j] = f(a[j], b[j]) ? T(1) : T(0);
}

// dst[0..n) = op(args...) over a block.
template <class T>
void run_instr(const Composite::Instr& ins, const std::vector<const T*>& reg, T* dst, std::int64_t n) {
    Arr<T> d(dst, n);
    auto A = [&](int k) { return CArr<T>(reg[ins.args[k]], n); };
    auto P = [&](int k) { return reg[ins.args[k]]; };
    using K = Composite::Instr::Kind;
    switch (ins.kind) {
    case K::cast_bool: {
        const T* a = P(0);
        for (std::int64_t j = 0; j < n; ++j) dst[j] = a[j] != T(0) ? T(1) : T(0);
        return;
    }
    case K::softplus_tail:
        // exp(-|x|) in one pass, the lanes where it is subnormal from the C library.
        vecmath::exp_into(dst, P(0), n, /*of_minus_abs=*/true);
        log1p_unit(dst, n);
        return;
    case K::relu_add: {
        // Theano's softplus is x itself above 16 and 0 below -745 (float32: 14 and -103).
        constexpr T hi = std::is_same_v<T, float> ? T(14) : T(16);
        constexpr T lo = std::is_same_v<T, float> ? T(-103) : T(-745);
        d = (A(0) > hi).select(A(0), (A(0) < lo).select(T(0), A(0).max(T(0)) + A(1)));
        return;
    }
    case K::cast_identity:
        d = A(0);
        return;
    case K::scalar:
        break;
    }
    switch (ins.op) {
    case ScalarOp::add: d = A(0) + A(1); break;
    case ScalarOp::sub: d = A(0) - A(1); break;
    case ScalarOp::mul: d = A(0) * A(1); break;
    case ScalarOp::true_div: d = A(0) / A(1); break;
    case ScalarOp::neg: d = -A(0); break;
    case ScalarOp::exp: vecmath::exp_into(dst, P(0), n); break;
    case ScalarOp::log: vecmath::log_into(dst, P(0), n); break;
    case ScalarOp::log1p: d = log1p_vec<T>(A(0)); break;
    case ScalarOp::sigmoid: vecmath::sigmoid_into(dst, P(0), n); break;
    case ScalarOp::softplus:  // simplify() lowers it to softplus_tail and relu_add
        internal_check(false, "Composite: softplus not lowered");
        break;
    case ScalarOp::tanh: vecmath::tanh_into(dst, P(0), n); break;
    case ScalarOp::abs: d = A(0).abs(); break;
    case ScalarOp::sgn: d = A(0).sign(); break;
    case ScalarOp::sqrt:
        // Eigen's fast float square root (a reciprocal estimate refined) gives NaN at inf.
        d = (A(0) == std::numeric_limits<T>::infinity()).select(A(0), A(0).sqrt());
        break;
    case ScalarOp::sqr: d = A(0).square(); break;
    // The C library's pow, as numpy uses: Eigen's vectorised pow loses the sign of
    // (-0)^-1 and (-inf)^3.
    case ScalarOp::pow: d = A(0).binaryExpr(A(1), [](T a, T b) { return std::pow(a, b); }); break;
    // maximum and minimum propagate NaN (numpy, Theano); Eigen's max and min do not.
    case ScalarOp::maximum: d = (A(0) != A(0) || A(1) != A(1)).select(A(0) + A(1), A(0).max(A(1))); break;
    case ScalarOp::minimum: d = (A(0) != A(0) || A(1) != A(1)).select(A(0) + A(1), A(0).min(A(1))); break;
    case ScalarOp::switch_: d = (A(0) != T(0)).select(A(1), A(2)); break;
    case ScalarOp::eq: compare(dst, P(0), P(1), n, [](T x, T y) { return x == y; }); break;
    case ScalarOp::neq: compare(dst, P(0), P(1), n, [](T x, T y) { return x != y; }); break;
    case ScalarOp::lt: compare(dst, P(0), P(1), n, [](T x, T y) { return x < y; }); break;
    case ScalarOp::le: compare(dst, P(0), P(1), n, [](T x, T y) { return x <= y; }); break;
    case ScalarOp::gt: compare(dst, P(0), P(1), n, [](T x, T y) { return x > y; }); break;
    case ScalarOp::ge: compare(dst, P(0), P(1), n, [](T x, T y) { return x >= y; }); break;
    case ScalarOp::second: d = A(1); break;
    case ScalarOp::int_div: case ScalarOp::mod: case ScalarOp::round_half_to_even:
        internal_check(false, "Composite: floor division, remainder and rounding are not fused");
        break;
    }
}

bool commutative(ScalarOp op) {
    switch (op) {
    case ScalarOp::add: case ScalarOp::mul: case ScalarOp::maximum: case ScalarOp::minimum:
    case ScalarOp::eq: case ScalarOp::neq:
        return true;
    default:
        return false;
    }
}

template <class T>
// 64-byte aligned, like tensor storage: vectorised sums peel unaligned leading elements,
// so the alignment of a tile decides the summation order, and every thread's tiles must
// have the same one for results not to depend on which thread ran a part.
struct Scratch {
    struct Free {
        void operator()(T* p) const { std::free(p); }
    };
    std::unique_ptr<T, Free> buf;
    std::size_t size = 0;
    T* get(std::size_t n) {
        if (size < n) {
            const std::size_t bytes = (n * sizeof(T) + 63) / 64 * 64;
            buf.reset(static_cast<T*>(std::aligned_alloc(64, bytes)));
            if (!buf) throw Error("out of memory for a fused loop's scratch");
            size = n;
        }
        return buf.get();
    }
};

}  // namespace

Composite::Composite(int n_inputs, std::vector<Instr> program, DType compute, TensorType out_type, std::string expr)
    : Composite(n_inputs, std::move(program), compute,
                std::vector<Output>{{n_inputs + static_cast<int>(program.size()) - 1, {}, std::move(out_type)}},
                std::move(expr)) {}

Composite::Composite(int n_inputs, std::vector<Instr> program, DType compute, std::vector<Output> outputs, std::string expr)
    : n_inputs_(n_inputs), program_(std::move(program)), compute_(compute), outputs_(std::move(outputs)),
      expr_(std::move(expr)) {
    internal_check(!outputs_.empty(), "Composite without outputs");
    internal_check(is_float(compute_), "Composite computes in a float dtype");
    for (const auto& o : outputs_) {
        internal_check(o.reg >= 0 && o.reg < n_inputs_ + static_cast<int>(program_.size()), "Composite output register");
    }
    simplify();
    // Relative cost per element: transcendental instructions and divisions count as 4.
    work_ = 0;
    for (const auto& ins : program_) {
        const bool heavy = ins.kind == Instr::Kind::softplus_tail ||
                           (ins.kind == Instr::Kind::scalar &&
                            (scalar_op_is_transcendental(ins.op) || ins.op == ScalarOp::true_div));
        work_ += heavy ? 4 : 1;
    }
    used_.assign(static_cast<std::size_t>(n_inputs_), false);
    for (const auto& ins : program_) {
        for (int a : ins.args) {
            if (a < n_inputs_) used_[a] = true;
        }
    }
    for (const auto& o : outputs_) {
        if (o.reg < n_inputs_) used_[o.reg] = true;
    }
}

// Lowering of softplus, merging of identical instructions, removal of unused ones.
void Composite::simplify() {
    using K = Instr::Kind;
    std::vector<Instr> prog;
    std::vector<int> map(static_cast<std::size_t>(n_inputs_));  // old register -> new register
    for (int i = 0; i < n_inputs_; ++i) map[i] = i;
    std::map<std::tuple<int, int, std::vector<int>>, int> seen;  // (kind, op, args) -> register
    auto producer = [&](int reg) -> const Instr* { return reg >= n_inputs_ ? &prog[reg - n_inputs_] : nullptr; };
    auto emit = [&](Instr ins) {
        if (ins.kind == K::scalar && commutative(ins.op)) std::sort(ins.args.begin(), ins.args.end());
        auto k = std::make_tuple(static_cast<int>(ins.kind), static_cast<int>(ins.op), ins.args);
        auto it = seen.find(k);
        if (it != seen.end()) return it->second;
        prog.push_back(ins);
        int r = n_inputs_ + static_cast<int>(prog.size()) - 1;
        seen[k] = r;
        return r;
    };
    for (const Instr& old : program_) {
        Instr ins = old;
        for (int& a : ins.args) a = map[a];
        int r;
        if (ins.kind == K::scalar && ins.op == ScalarOp::softplus) {
            // softplus(v) = max(v, 0) + log1p(exp(-|v|)); the tail is even in v.
            int v = ins.args[0];
            int even = v;
            if (const Instr* p = producer(v); p && p->kind == K::scalar && p->op == ScalarOp::neg) even = p->args[0];
            int tail = emit(Instr{K::softplus_tail, ScalarOp::add, {even}});
            r = emit(Instr{K::relu_add, ScalarOp::add, {v, tail}});
        } else {
            r = emit(std::move(ins));
        }
        map.push_back(r);
    }
    for (auto& o : outputs_) o.reg = map[o.reg];
    // Remove instructions no output depends on.
    const int n = static_cast<int>(prog.size());
    std::vector<bool> live(static_cast<std::size_t>(n_inputs_ + n), false);
    for (const auto& o : outputs_) live[o.reg] = true;
    for (int i = n - 1; i >= 0; --i) {
        if (!live[n_inputs_ + i]) continue;
        for (int a : prog[i].args) live[a] = true;
    }
    std::vector<int> renum(static_cast<std::size_t>(n_inputs_ + n), -1);
    for (int i = 0; i < n_inputs_; ++i) renum[i] = i;
    program_.clear();
    for (int i = 0; i < n; ++i) {
        if (!live[n_inputs_ + i]) continue;
        Instr ins = prog[i];
        for (int& a : ins.args) a = renum[a];
        renum[n_inputs_ + i] = n_inputs_ + static_cast<int>(program_.size());
        program_.push_back(std::move(ins));
    }
    for (auto& o : outputs_) o.reg = renum[o.reg];
}

std::vector<TensorType> Composite::make_types(const std::vector<Variable>& inputs) const {
    if (static_cast<int>(inputs.size()) != n_inputs_) {
        throw UsageError(fmt::format("{}: takes {} inputs, got {}", name(), n_inputs_, inputs.size()));
    }
    const int nd = static_cast<int>(outputs_[0].type.ndim() + outputs_[0].sum.size());
    for (std::size_t i = 0; i < inputs.size(); ++i) {
        if (inputs[i].ndim() != nd) {
            throw UsageError(fmt::format("{}: input {} is {}, expected {} dimensions", name(), i, inputs[i].type().str(), nd));
        }
    }
    std::vector<TensorType> types;
    for (const auto& o : outputs_) types.push_back(o.type);
    return types;
}

bool Composite::can_write_in_place() const {
    // One elementwise output, made by the last instruction: every instruction has read its
    // tile of the inputs before that one writes the same elements.
    return outputs_.size() == 1 && outputs_[0].sum.empty() && outputs_[0].type.dtype == compute_ && !program_.empty() &&
           outputs_[0].reg == n_inputs_ + static_cast<int>(program_.size()) - 1 &&
           program_.back().kind != Instr::Kind::cast_identity;
}

std::vector<int> Composite::destroy_candidates(const Node& node, int output) const {
    std::vector<int> c;
    if (output != 0 || !can_write_in_place()) return c;
    // Shared variables only: a parameter's update written into the parameter saves a buffer
    // of the parameter's size per call. Intermediate values gain nothing measurable from it
    // (the planner's pool already hands their buffers on), and writing over them changed the
    // buffers the dA's steps touch and cost it 5-10 % (AMD EPYC, 2 threads).
    for (int k = 0; k < n_inputs_; ++k) {
        if (node.inputs[k].is_shared() && node.inputs[k].type() == outputs_[0].type) c.push_back(k);
    }
    return c;
}

void Composite::validate(const Node& node, std::span<const Tensor* const> in) const {
    broadcast_shapes(*this, in, node);
}

void Composite::perform(const Node& node, std::span<const Tensor* const> in, std::span<Tensor* const> out) const {
    // The planner may have granted an input's buffer to the output (destroy_candidates): then
    // out[0] is that input's tensor. The loop writes over it when it is laid out as the output;
    // otherwise the input is read through a reference of its own and the output gets a new buffer.
    for (int k = 0; k < n_inputs_; ++k) {
        if (out[0] != in[k]) continue;
        const Tensor& t = *in[k];
        if (t.dtype() == compute_ && t.is_contiguous() && t.shape() == broadcast_shapes(*this, in, node)) {
            compute(node, in, out, true);
            return;
        }
        const Tensor saved = t;
        std::vector<const Tensor*> ins(in.begin(), in.end());
        ins[static_cast<std::size_t>(k)] = &saved;
        *out[0] = Tensor();
        compute(node, ins, out, false);
        return;
    }
    compute(node, in, out, false);
}

void Composite::compute(const Node& node, std::span<const Tensor* const> in, std::span<Tensor* const> out,
                        bool in_place) const {
    const Shape full = broadcast_shapes(*this, in, node);
    Shape os = full;  // the loop's shape (trailing axes merged below)
    int nd = static_cast<int>(os.size());
    const int n_out = static_cast<int>(outputs_.size());
    // Output shapes; for a sum, the strides of its accumulator over the loop shape's axes
    // (0 on summed axes).
    std::vector<Shape> acc_stride(static_cast<std::size_t>(n_out));
    std::vector<std::int64_t> acc_size(static_cast<std::size_t>(n_out), 0);
    for (int o = 0; o < n_out; ++o) {
        const Output& spec = outputs_[o];
        if (spec.sum.empty()) {
            if (!(in_place && o == 0)) out[o]->ensure(spec.type.dtype, os);
            continue;
        }
        Shape rs;
        acc_stride[o].assign(static_cast<std::size_t>(nd), 0);
        std::int64_t stride = 1;
        for (int d = nd - 1; d >= 0; --d) {
            if (std::find(spec.sum.begin(), spec.sum.end(), d) != spec.sum.end()) continue;
            acc_stride[o][d] = stride;
            stride *= os[d];
        }
        for (int d = 0; d < nd; ++d) {
            if (std::find(spec.sum.begin(), spec.sum.end(), d) == spec.sum.end()) rs.push_back(os[d]);
        }
        out[o]->ensure(spec.type.dtype, rs);
        acc_size[o] = stride;
    }
    // Per input: broadcast strides over the loop shape's axes.
    std::vector<Shape> st(static_cast<std::size_t>(n_inputs_), Shape(static_cast<std::size_t>(nd), 0));
    for (int k = 0; k < n_inputs_; ++k) {
        for (int d = 0; d < nd; ++d) st[k][d] = (in[k]->dim(d) == 1 && os[d] != 1) ? 0 : in[k]->strides()[d];
    }
    // A short last axis (a feature map's columns) is merged with the axis before it wherever
    // every operand steps over the two as over one (the maps' rows and columns under a bias
    // broadcast over channels: 500x20x12x12 loops as 500x20x144). Each tile row costs an
    // index computation per operand, so 12-element rows spent more there than in the math
    // (tanh(x + b) on 500x20x12x12 float32 took 1.1 ms at 2 threads).
    auto mergeable = [&](int d) {
        for (int k = 0; k < n_inputs_; ++k) {
            if (st[k][d] != st[k][d + 1] * os[d + 1]) return false;
        }
        for (int o = 0; o < n_out; ++o) {
            if (!outputs_[o].sum.empty() && acc_stride[o][d] != acc_stride[o][d + 1] * os[d + 1]) return false;
        }
        return true;
    };
    while (nd >= 2 && os[nd - 1] < 64 && mergeable(nd - 2)) {
        // The merged axis steps as the inner one did.
        os[nd - 2] *= os[nd - 1];
        os.pop_back();
        for (auto& s : st) {
            s[nd - 2] = s[nd - 1];
            s.pop_back();
        }
        for (auto& s : acc_stride) {
            if (s.empty()) continue;
            s[nd - 2] = s[nd - 1];
            s.pop_back();
        }
        --nd;
    }
    const std::int64_t inner = nd ? os[nd - 1] : 1;
    const std::int64_t total = shape_size(os);
    const int n_regs = n_inputs_ + static_cast<int>(program_.size());

    dispatch(compute_, [&]<class T>() {
        if constexpr (std::is_floating_point_v<T>) {
            for (int o = 0; o < n_out; ++o) {
                if (!outputs_[o].sum.empty()) {
                    dispatch(out[o]->dtype(), [&]<class O>() { std::fill_n(out[o]->data<O>(), out[o]->size(), O(0)); });
                }
            }
            if (total == 0) return;
            const std::int64_t rows = total / inner;
            // The instruction whose register an elementwise output of dtype T stores writes
            // straight into that output.
            std::vector<int> direct(program_.size(), -1);
            for (int o = 0; o < n_out; ++o) {
                const Output& spec = outputs_[o];
                if (spec.sum.empty() && spec.type.dtype == compute_ && spec.reg >= n_inputs_ &&
                    direct[spec.reg - n_inputs_] < 0 && program_[spec.reg - n_inputs_].kind != Instr::Kind::cast_identity) {
                    direct[spec.reg - n_inputs_] = o;
                }
            }
            // A sum whose summed register is a square, an absolute value or a product that
            // nothing else reads (an L2 or L1 penalty, a dot product) is taken straight from
            // the instruction's operands, without storing the register: one pass over the
            // operands instead of a store and a reload (3x faster on a 784x500 sum(W^2)).
            std::vector<int> fused_sum(static_cast<std::size_t>(n_out), -1);  // per output: its instruction
            std::vector<bool> skip(program_.size(), false);
            for (int o = 0; o < n_out; ++o) {
                const int r = outputs_[o].reg;
                if (outputs_[o].sum.empty() || r < n_inputs_) continue;
                const Instr& ins = program_[r - n_inputs_];
                const bool kind_ok = ins.kind == Instr::Kind::scalar &&
                                     (ins.op == ScalarOp::sqr || ins.op == ScalarOp::abs || ins.op == ScalarOp::mul);
                bool alone = kind_ok;
                for (std::size_t i = 0; i < program_.size() && alone; ++i) {
                    for (int a : program_[i].args) alone = alone && a != r;
                }
                for (int q = 0; q < n_out && alone; ++q) alone = q == o || outputs_[q].reg != r;
                if (!alone) continue;
                fused_sum[o] = r - n_inputs_;
                skip[static_cast<std::size_t>(r - n_inputs_)] = true;
            }
            // Every output such a sum over all the loop's axes, of inputs read in place: each
            // part is one run of elements, summed in one pass (no tiles; 784x500 float32: 67 ->
            // 33 us).
            bool whole_runs = true;
            for (int o = 0; o < n_out && whole_runs; ++o) {
                whole_runs = fused_sum[o] >= 0 && acc_size[o] == 1;
                for (int a : whole_runs ? program_[static_cast<std::size_t>(fused_sum[o])].args : std::vector<int>{}) {
                    whole_runs = whole_runs && a < n_inputs_ && in[a]->dtype() == compute_ && in[a]->is_contiguous() &&
                                 in[a]->shape() == full;
                }
            }
            // Rows and columns are independent: split them across threads when there is
            // enough work. Few long rows (a minibatch) split by columns, with the rule the
            // products use, so each thread reads the columns a product wrote on its core.
            // Threads pay off from about 30k instruction-elements (measured on 20x784 loops:
            // a lone sigmoid runs faster on one core, the cross-entropy on two).
            int nt = total * work_ >= 30000 ? std::min(num_threads(), kMaxThreads) : 1;
            const bool by_columns = nt > 1 && inner >= 64 * nt && rows < 8 * nt;
            if (!by_columns) nt = static_cast<int>(std::min<std::int64_t>(nt, rows));
            std::array<double*, kMaxThreads> parts{};  // per thread: the sums' accumulators
            std::int64_t acc_total = 0;
            std::vector<std::int64_t> acc_base(static_cast<std::size_t>(n_out), 0);
            for (int o = 0; o < n_out; ++o) {
                acc_base[o] = acc_total;
                acc_total += acc_size[o];
            }
            // Inputs laid out exactly as the loop shape (contiguous, same dtype) are read in
            // place wherever a tile is contiguous.
            std::vector<bool> dense(static_cast<std::size_t>(n_inputs_), false);
            {
                const Shape cs = contiguous_strides(os);
                for (int k = 0; k < n_inputs_; ++k) {
                    bool d = in[k]->dtype() == compute_;
                    for (int a = 0; a < nd && d; ++a) d = os[a] == 1 || st[k][a] == cs[a];
                    dense[k] = d;
                }
            }
            // nt parts, run by as many threads as are getting a core (active_workers): each
            // part has its own accumulators, so the sums do not depend on who ran it.
            const int workers = std::min(nt, active_workers());
            // One worker runs the parts itself (handing them to the team costs more than a
            // small loop). Several share them.
            auto part_loop = [&](int worker, int n_workers) {
                thread_local Scratch<T> scratch;
                thread_local Scratch<double> acc_scratch;
                thread_local std::vector<const T*> reg;
                thread_local std::vector<std::int64_t> off, acc_off;  // per tile row
                T* buffers = scratch.get(static_cast<std::size_t>(n_regs * kTile));
                const int my_parts = (nt - worker + n_workers - 1) / n_workers;
                double* acc_all =
                    acc_total ? acc_scratch.get(static_cast<std::size_t>(acc_total * std::max(my_parts, 1))) : nullptr;
                for (int t = worker, local = 0; t < nt; t += n_workers, ++local) {
                    double* acc = acc_all ? acc_all + static_cast<std::int64_t>(local) * acc_total : nullptr;
                    if (acc) std::fill_n(acc, acc_total, 0.0);
                    parts[t] = acc;
                    std::int64_t r0 = 0, r1 = rows, c0 = 0, c1 = inner;
                    if (by_columns) {
                        std::tie(c0, c1) = column_slice(inner, t, nt);
                    } else {
                        const std::int64_t per = (rows + nt - 1) / nt;
                        r0 = std::min(rows, t * per);
                        r1 = std::min(rows, (t + 1) * per);
                    }
                    if (whole_runs && !by_columns) {
                        const std::int64_t e0 = r0 * inner, n_run = (r1 - r0) * inner;
                        for (int o = 0; o < n_out; ++o) {
                            const Instr& ins = program_[static_cast<std::size_t>(fused_sum[o])];
                            const T* x = in[ins.args[0]]->data<T>() + e0;
                            const T* y = ins.args.size() > 1 ? in[ins.args[1]]->data<T>() + e0 : nullptr;
                            double& a = acc[acc_base[o]];
                            if (ins.op == ScalarOp::sqr) {
                                a += lane_sum<T>(n_run, [x](std::int64_t k) { return x[k] * x[k]; });
                            } else if (ins.op == ScalarOp::abs) {
                                a += lane_sum<T>(n_run, [x](std::int64_t k) { return std::abs(x[k]); });
                            } else {
                                a += lane_sum<T>(n_run, [x, y](std::int64_t k) { return x[k] * y[k]; });
                            }
                        }
                        continue;
                    }
                    // Tiles of up to kTile elements: whole rows of this thread's columns when they
                    // fit, so short rows do not pay the per-instruction cost one by one.
                    const std::int64_t tw = std::max<std::int64_t>(1, std::min(c1 - c0, kTile));
                    const std::int64_t th = std::max<std::int64_t>(1, kTile / tw);
                    reg.assign(static_cast<std::size_t>(n_regs), nullptr);
                    off.assign(static_cast<std::size_t>(th * n_inputs_), 0);
                    acc_off.assign(static_cast<std::size_t>(th * n_out), 0);
                    for (std::int64_t ra = r0; ra < r1; ra += th) {
                        const std::int64_t h = std::min(r1, ra + th) - ra;
                        // Offsets of each tile row (its index over the leading axes).
                        for (std::int64_t rr = 0; rr < h; ++rr) {
                            std::int64_t rem = ra + rr;
                            std::int64_t* o_in = off.data() + rr * n_inputs_;
                            std::int64_t* o_acc = acc_off.data() + rr * n_out;
                            std::fill_n(o_in, n_inputs_, 0);
                            std::fill_n(o_acc, n_out, 0);
                            for (int d = nd - 2; d >= 0; --d) {
                                const std::int64_t i = rem % os[d];
                                rem /= os[d];
                                for (int k = 0; k < n_inputs_; ++k) o_in[k] += i * st[k][d];
                                for (int o = 0; o < n_out; ++o) {
                                    if (!outputs_[o].sum.empty()) o_acc[o] += i * acc_stride[o][d];
                                }
                            }
                        }
                        for (std::int64_t ca = c0; ca < c1; ca += tw) {
                            const std::int64_t w = std::min(tw, c1 - ca), n = h * w;
                            const bool contiguous = w == inner || h == 1;  // the tile is one run
                            for (int k = 0; k < n_inputs_; ++k) {
                                if (!used_[k]) continue;
                                const Tensor& tk = *in[k];
                                const std::int64_t s = nd ? st[k][nd - 1] : 0;
                                if (dense[k] && contiguous) {
                                    reg[k] = tk.data<T>() + off[k] + ca * s;
                                    continue;
                                }
                                T* b = buffers + static_cast<std::int64_t>(k) * kTile;
                                reg[k] = b;
                                dispatch(tk.dtype(), [&]<class S>() {
                                    for (std::int64_t rr = 0; rr < h; ++rr) {
                                        const S* p = tk.data<S>() + off[rr * n_inputs_ + k] + ca * s;
                                        T* q = b + rr * w;
                                        if (s == 0) {
                                            std::fill(q, q + w, static_cast<T>(p[0]));
                                        } else if (s == 1) {
                                            for (std::int64_t j = 0; j < w; ++j) q[j] = static_cast<T>(p[j]);
                                        } else {
                                            for (std::int64_t j = 0; j < w; ++j) q[j] = static_cast<T>(p[j * s]);
                                        }
                                    }
                                });
                            }
                            for (std::size_t i = 0; i < program_.size(); ++i) {
                                const int dst = n_inputs_ + static_cast<int>(i);
                                const Instr& ins = program_[i];
                                if (skip[i]) continue;
                                if (ins.kind == Instr::Kind::cast_identity) {
                                    reg[dst] = reg[ins.args[0]];
                                    continue;
                                }
                                T* d = direct[i] >= 0 && contiguous ? out[direct[i]]->data<T>() + ra * inner + ca
                                                                    : buffers + static_cast<std::int64_t>(dst) * kTile;
                                run_instr<T>(ins, reg, d, n);
                                reg[dst] = d;
                            }
                            for (int o = 0; o < n_out; ++o) {
                                const Output& spec = outputs_[o];
                                const T* res = reg[spec.reg];
                                if (!spec.sum.empty() && fused_sum[o] >= 0) {
                                    const Instr& ins = program_[static_cast<std::size_t>(fused_sum[o])];
                                    const T* x = reg[ins.args[0]];
                                    const T* y = ins.args.size() > 1 ? reg[ins.args[1]] : nullptr;
                                    for (std::int64_t rr = 0; rr < h; ++rr) {
                                        double* a = acc + acc_base[o] + acc_off[rr * n_out + o];
                                        CArr<T> xr(x + rr * w, w);
                                        if (acc_stride[o][nd - 1] == 0) {
                                            T row = 0;
                                            if (ins.op == ScalarOp::sqr) {
                                                row = xr.square().sum();
                                            } else if (ins.op == ScalarOp::abs) {
                                                row = xr.abs().sum();
                                            } else {
                                                row = (xr * CArr<T>(y + rr * w, w)).sum();
                                            }
                                            a[0] += static_cast<double>(row);
                                        } else {
                                            for (std::int64_t j = 0; j < w; ++j) {
                                                const T v = ins.op == ScalarOp::sqr   ? xr[j] * xr[j]
                                                            : ins.op == ScalarOp::abs ? std::abs(xr[j])
                                                                                      : xr[j] * y[rr * w + j];
                                                a[ca + j] += static_cast<double>(v);
                                            }
                                        }
                                    }
                                } else if (!spec.sum.empty()) {
                                    for (std::int64_t rr = 0; rr < h; ++rr) {
                                        double* a = acc + acc_base[o] + acc_off[rr * n_out + o];
                                        const T* v = res + rr * w;
                                        if (acc_stride[o][nd - 1] == 0) {
                                            a[0] += static_cast<double>(CArr<T>(v, w).sum());
                                        } else {
                                            for (std::int64_t j = 0; j < w; ++j) a[ca + j] += static_cast<double>(v[j]);
                                        }
                                    }
                                } else if (spec.reg < n_inputs_ || direct[spec.reg - n_inputs_] != o || !contiguous) {
                                    dispatch(out[o]->dtype(), [&]<class O>() {
                                        for (std::int64_t rr = 0; rr < h; ++rr) {
                                            O* p = out[o]->data<O>() + (ra + rr) * inner + ca;
                                            const T* v = res + rr * w;
                                            for (std::int64_t j = 0; j < w; ++j) {
                                                if constexpr (std::is_same_v<O, bool>) {
                                                    p[j] = v[j] != T(0);
                                                } else {
                                                    p[j] = static_cast<O>(v[j]);
                                                }
                                            }
                                        }
                                    });
                                }
                            }
                        }
                    }
                }
            };
            team::run(workers, part_loop);
            // Sums: add the parts' accumulators in part order.
            for (int o = 0; o < n_out; ++o) {
                if (outputs_[o].sum.empty()) continue;
                dispatch(out[o]->dtype(), [&]<class O>() {
                    O* p = out[o]->data<O>();
                    for (std::int64_t i = 0; i < acc_size[o]; ++i) {
                        double s = 0;
                        for (int t = 0; t < nt; ++t) s += parts[t][acc_base[o] + i];
                        p[i] = static_cast<O>(s);
                    }
                });
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
    return o.n_inputs_ == n_inputs_ && o.program_ == program_ && o.compute_ == compute_ && o.outputs_ == outputs_;
}

std::size_t Composite::props_hash() const { return std::hash<std::string>()(expr_) ^ static_cast<std::size_t>(n_inputs_); }

}  // namespace theanine
