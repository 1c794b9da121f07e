/// \file
/// Matrix products: dot (matrix-matrix, matrix-vector, vector-matrix, vector-vector) and Gemm,
/// the specialised form the rewrites produce:
///
///   Gemm{transA, transB}(C, alpha, A, B, beta) = beta * C + alpha * op(A) op(B)
///
/// where op(X) is X or X^T read in place through the transpose flag (no copy). Products run
/// on the tensors' storage, each thread on its columns, with the kernel chosen for the shape
/// by measurement (ops/products.hpp).
#pragma once

#include <functional>

#include "graph/graph.hpp"

namespace theanine {

class Dot final : public Op {
public:
    std::string name() const override { return "Dot"; }
    std::vector<TensorType> make_types(const std::vector<Variable>& inputs) const override;
    void perform(const Node& node, std::span<const Tensor* const> in, std::span<Tensor* const> out) const override;
    std::optional<std::vector<Shape>> infer_shape(const std::vector<Shape>& in) const override;
    std::vector<Variable> pullback(const Node& node, const std::vector<Variable>& out_grads) const override;
    bool props_equal(const Op&) const override { return true; }
    std::size_t props_hash() const override { return 0; }
};

/// dot of two matrices read through transpose flags: Dot22{T,N}(A, B) = A^T B, without
/// copying the transposed operand (what the specialise phase makes of Dot with transposes).
class Dot22 final : public Op {
public:
    Dot22(bool trans_a, bool trans_b) : trans_a_(trans_a), trans_b_(trans_b) {}
    bool trans_a() const { return trans_a_; }
    bool trans_b() const { return trans_b_; }
    std::string name() const override;
    std::vector<TensorType> make_types(const std::vector<Variable>& inputs) const override;
    void perform(const Node& node, std::span<const Tensor* const> in, std::span<Tensor* const> out) const override;
    std::optional<std::vector<Shape>> infer_shape(const std::vector<Shape>& in) const override;
    std::vector<Variable> pullback(const Node& node, const std::vector<Variable>& out_grads) const override;
    bool props_equal(const Op& o) const override;
    std::size_t props_hash() const override { return 4u + (trans_a_ ? 2u : 0u) + (trans_b_ ? 1u : 0u); }

private:
    bool trans_a_, trans_b_;
};

class Gemm final : public Op {
public:
    Gemm(bool trans_a, bool trans_b) : trans_a_(trans_a), trans_b_(trans_b) {}
    bool trans_a() const { return trans_a_; }
    bool trans_b() const { return trans_b_; }
    std::string name() const override;
    std::vector<TensorType> make_types(const std::vector<Variable>& inputs) const override;
    void perform(const Node& node, std::span<const Tensor* const> in, std::span<Tensor* const> out) const override;
    std::optional<std::vector<Shape>> infer_shape(const std::vector<Shape>& in) const override;
    std::vector<Variable> pullback(const Node& node, const std::vector<Variable>& out_grads) const override;
    std::vector<int> destroy_map() const override { return {0}; }
    void validate(const Node& node, std::span<const Tensor* const> in) const override;
    bool props_equal(const Op& o) const override;
    std::size_t props_hash() const override { return (trans_a_ ? 2u : 0u) + (trans_b_ ? 1u : 0u); }

private:
    bool trans_a_, trans_b_;
};

/// dot(a, b) with numpy's rules; dtypes are upcast first. 1-d and 2-d operands make a Dot
/// node; a 0-d operand scales the other (mul); higher ranks sum over a's last axis and b's
/// second-to-last, giving shape a.shape[:-1] + b.shape[:-2] + b.shape[-1:] (one Dot on
/// reshaped operands, so the gradient follows).
Variable dot(const Variable& a, const Variable& b,
             std::source_location where = std::source_location::current());
/// outer(u, v) = u[:, None] * v[None, :] as a matrix product.
Variable outer(const Variable& u, const Variable& v);
/// Threads used by matrix products and fused loops; 0 (the default) uses all cores.
/// Parallel kernels always split their work into num_threads() parts, so results depend on
/// this count alone (in the last bits: sums are added part by part), never on how many
/// threads actually run the parts.
void set_num_threads(int n);
int num_threads();
/// How many threads run those parts in the calling thread's current call: num_threads(),
/// or fewer inside a WorkerLimit. The executor lowers it when the threads are not getting
/// cores (another process busy on the machine), so that N threads are never much slower
/// than one.
int active_workers();
class WorkerLimit {
public:
    explicit WorkerLimit(int n);  ///< n <= 0: no limit; nested limits keep the tighter one
    ~WorkerLimit();
    WorkerLimit(const WorkerLimit&) = delete;
    WorkerLimit& operator=(const WorkerLimit&) = delete;

private:
    int saved_;
};

/// out[:, c0:c1] = beta * out[:, c0:c1] + alpha * op(A) op(B)[:, c0:c1] on the calling thread,
/// with out row-major (m x n) and A, B row-major (a_rows x a_cols, b_rows x b_cols): what
/// each thread of Dot22 and Gemm runs on its column slice, on the kernel chosen for the
/// slice's shape (ops/products.hpp). For float and double.
template <class T>
void gemm_slice(T* out, std::int64_t m, std::int64_t n, std::int64_t c0, std::int64_t c1, T alpha, const T* a,
                std::int64_t a_rows, std::int64_t a_cols, bool ta, const T* b, std::int64_t b_rows, std::int64_t b_cols,
                bool tb, T beta);

/// Runs fn(part) for part = 0 .. parts-1 on up to active_workers() threads (the calling
/// thread among them). Kernels that split their work into num_threads() parts this way get
/// results that depend on the part count alone, never on how many threads ran the parts.
void run_parts(int parts, const std::function<void(int)>& fn);

/// The columns [first, second) of n that thread t of nt works on: equal slices rounded up to
/// 16 columns (whole cache lines). Products split their output columns and fused loops their
/// inner axis with this one rule, so a thread reads back the columns it wrote itself.
std::pair<std::int64_t, std::int64_t> column_slice(std::int64_t n, int t, int nt);

Variable dot22(const Variable& a, const Variable& b, bool trans_a, bool trans_b);
Variable gemm(const Variable& c, const Variable& alpha, const Variable& a, const Variable& b,
              const Variable& beta, bool trans_a = false, bool trans_b = false);

}  // namespace theanine
