#include "ops/blas.hpp"

#include <omp.h>

#include <algorithm>
#include <exception>
#include <vector>

#include <Eigen/Core>
#include <fmt/format.h>

#include "ops/elemwise.hpp"
#include "ops/products.hpp"
#include "ops/reduce.hpp"
#include "ops/shape.hpp"
#include "ops/team.hpp"

namespace theanine {

namespace {

template <class T>
using RowMat = Eigen::Matrix<T, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;
template <class T>
using ColMat = Eigen::Matrix<T, Eigen::Dynamic, Eigen::Dynamic, Eigen::ColMajor>;

// A 2-d view readable by Eigen without a copy: row-major (contiguous) or column-major (the
// transpose of a contiguous matrix). Anything else is copied into `scratch` first.
struct MatView {
    const void* data;
    std::int64_t rows, cols;
    bool col_major;
};

MatView mat_view(const Tensor& t, Tensor& scratch) {
    const std::int64_t r = t.dim(0), c = t.dim(1);
    const auto& st = t.strides();
    if ((st[1] == 1 || c <= 1) && (st[0] == c || r <= 1)) return {t.raw_data(), r, c, false};
    if ((st[0] == 1 || r <= 1) && (st[1] == r || c <= 1)) return {t.raw_data(), r, c, true};
    scratch = t.copy();
    return {scratch.raw_data(), r, c, false};
}

int g_threads = 0;  // 0: all the cores OpenMP reports

int threads_for_products() {
    static const bool eigen_single = (Eigen::setNbThreads(1), true);  // theanine splits products itself
    (void)eigen_single;
    return g_threads > 0 ? g_threads : omp_get_max_threads();
}


// out[r0:r1, c0:c1] = beta * out[r0:r1, c0:c1] + alpha * (op(A) op(B))[r0:r1, c0:c1], out
// row-major (m x n), on the kernel chosen for the block's shape (ops/products.hpp). A
// column-major view is the row-major transpose: its flag is flipped instead of copying it.
template <class T>
void gemm_block(T* out, std::int64_t m, std::int64_t n, std::int64_t r0, std::int64_t r1, std::int64_t c0, std::int64_t c1,
                T alpha, const MatView& a, bool ta, const MatView& b, bool tb, T beta) {
    if constexpr (!std::is_same_v<T, float> && !std::is_same_v<T, double>) {
        // Integer products: Eigen's general product, untimed.
        Eigen::Map<RowMat<T>> full(out, m, n);
        auto o = full.block(r0, c0, r1 - r0, c1 - c0);
        auto run = [&](const auto& A, const auto& B) {
            auto As = A.middleRows(r0, r1 - r0);
            auto Bs = B.middleCols(c0, c1 - c0);
            if (beta == T(0)) {
                o.noalias() = alpha * (As * Bs);
            } else {
                if (beta != T(1)) o *= beta;
                o.noalias() += alpha * (As * Bs);
            }
        };
        auto with_b = [&](const auto& A) {
            if (b.col_major) {
                Eigen::Map<const ColMat<T>> B(static_cast<const T*>(b.data), b.rows, b.cols);
                if (tb) run(A, B.transpose()); else run(A, B);
            } else {
                Eigen::Map<const RowMat<T>> B(static_cast<const T*>(b.data), b.rows, b.cols);
                if (tb) run(A, B.transpose()); else run(A, B);
            }
        };
        if (a.col_major) {
            Eigen::Map<const ColMat<T>> A(static_cast<const T*>(a.data), a.rows, a.cols);
            if (ta) with_b(A.transpose()); else with_b(A);
        } else {
            Eigen::Map<const RowMat<T>> A(static_cast<const T*>(a.data), a.rows, a.cols);
            if (ta) with_b(A.transpose()); else with_b(A);
        }
    } else {
        const bool ra = a.col_major ? !ta : ta, rb = b.col_major ? !tb : tb;
        const std::int64_t lda = a.col_major ? a.rows : a.cols, ldb = b.col_major ? b.rows : b.cols;
        const std::int64_t k = ta ? a.rows : a.cols;
        const T* A = static_cast<const T*>(a.data);
        const T* B = static_cast<const T*>(b.data);
        detail::run_product<T>({out + r0 * n + c0, n, r1 - r0, c1 - c0, k, alpha, ra ? A + r0 : A + r0 * lda, lda, ra,
                                rb ? B + c0 * ldb : B + c0, ldb, rb, beta});
    }
}

// out = beta * out + alpha * A^T B for row-major A (k x m) and B (k x n), as nt parts over
// slices of the k rows (column_slice(k, part, nt)) into partial products, added in part order.
template <class T>
void gemm_by_k(T* out, std::int64_t m, std::int64_t n, std::int64_t k, T alpha, const MatView& a, const MatView& b,
               T beta, int nt) {
    thread_local std::vector<T> partial;
    partial.resize(static_cast<std::size_t>(nt * m * n));
    T* parts = partial.data();
    const T* A = static_cast<const T*>(a.data);
    const T* B = static_cast<const T*>(b.data);
    auto run_part = [&](int part) {
        auto [k0, k1] = column_slice(k, part, nt);
        T* p = parts + static_cast<std::int64_t>(part) * m * n;
        if (k1 <= k0) {
            std::fill(p, p + m * n, T(0));
            return;
        }
        gemm_block(p, m, n, 0, m, 0, n, T(1), MatView{A + k0 * a.cols, k1 - k0, a.cols, false}, true,
                   MatView{B + k0 * b.cols, k1 - k0, b.cols, false}, false, T(0));
    };
    // out's rows [r0, r1) take the parts' sum.
    // A chunk at a time, each part's rows added in one vectorised pass (the same sums as
    // element by element: the other parts' rows come from the other threads' caches, and a
    // scalar loop over them kept few loads in flight).
    auto combine = [&](std::int64_t r0, std::int64_t r1) {
        constexpr std::int64_t kChunk = 512;
        alignas(64) T s[kChunk];
        for (std::int64_t i0 = r0 * n; i0 < r1 * n; i0 += kChunk) {
            const std::int64_t len = std::min(kChunk, r1 * n - i0);
            std::copy(parts + i0, parts + i0 + len, s);
            for (int q = 1; q < nt; ++q) {
                const T* p = parts + static_cast<std::int64_t>(q) * m * n + i0;
                for (std::int64_t i = 0; i < len; ++i) s[i] += p[i];
            }
            T* o = out + i0;
            if (beta == T(0)) {
                for (std::int64_t i = 0; i < len; ++i) o[i] = alpha * s[i];
            } else {
                for (std::int64_t i = 0; i < len; ++i) o[i] = beta * o[i] + alpha * s[i];
            }
        }
    };
    const int workers = std::min(nt, active_workers());
    if (workers > 1) {
        team::run(workers, [&](int w, int n_workers) {
            // A part that throws still reaches the barrier (the others wait there for it).
            std::exception_ptr error;
            try {
                for (int part = w; part < nt; part += n_workers) run_part(part);
            } catch (...) {
                error = std::current_exception();
            }
            team::barrier();
            if (error) std::rethrow_exception(error);
            const std::int64_t per = (m + n_workers - 1) / n_workers;
            combine(std::min(m, w * per), std::min(m, (w + 1) * per));
        });
    } else {
        for (int part = 0; part < nt; ++part) run_part(part);
        combine(0, m);
    }
}

// out = beta * out + alpha * op(A) op(B). Large products are split across the threads, each
// running a single-threaded product on its part: by output columns (for the skinny shapes
// of minibatch training this beats a threaded GEMM, which splits the short dimension), or by
// output rows when there are too few columns to share (a 10-class layer's x W and x^T dL).
template <class T>
void gemm_kernel(T* out, std::int64_t m, std::int64_t n, T alpha, const MatView& a, bool ta, const MatView& b, bool tb,
                 T beta) {
    const std::int64_t k = ta ? a.rows : a.cols;
    const int nt = threads_for_products();
    detail::ensure_configured();  // a bad blas_kernel flag throws here, not inside the threads
    const bool by_columns = n >= 16 * nt, by_rows = !by_columns && m >= 16 * nt;
    // Too few columns to share, and k runs along the stored rows of both operands (x^T dL,
    // the weight gradient of a 10-class layer: 784 x 10 from k = 600 minibatch rows): each
    // part multiplies its slice of the k rows, the slice the product x W split by rows gave
    // the same thread, so the thread reads the rows of x it has in its cache; the parts'
    // products are then added in part order (nt fixed parts: the bits depend on the thread
    // count, not on how many threads run the parts).
    const bool by_k = nt > 1 && !by_columns && ta && !tb && !a.col_major && !b.col_major && k >= 64 * nt &&
                      m * n * k >= 100000;
    if (by_k) {
        gemm_by_k(out, m, n, k, alpha, a, b, beta, nt);
        return;
    }
    if (nt > 1 && m * n * k >= 100000 && (by_columns || by_rows)) {
        // nt parts whatever the number of threads that run them (active_workers).
        const int workers = std::min(nt, active_workers());
        auto run_part = [&](int part) {
            if (by_columns) {
                auto [c0, c1] = column_slice(n, part, nt);
                if (c1 > c0) gemm_block(out, m, n, 0, m, c0, c1, alpha, a, ta, b, tb, beta);
            } else {
                auto [r0, r1] = column_slice(m, part, nt);
                if (r1 > r0) gemm_block(out, m, n, r0, r1, 0, n, alpha, a, ta, b, tb, beta);
            }
        };
        if (workers > 1) {
            team::run(workers, [&](int w, int n_workers) {
                for (int part = w; part < nt; part += n_workers) run_part(part);
            });
        } else {
            // One worker runs the parts itself.
            for (int part = 0; part < nt; ++part) run_part(part);
        }
        return;
    }
    gemm_block(out, m, n, 0, m, 0, n, alpha, a, ta, b, tb, beta);
}

// Views a tensor of ndim <= 2 as a matrix: vectors as (1, n) rows or (n, 1) columns.
Tensor as_matrix(const Tensor& t, bool vector_as_column) {
    if (t.ndim() == 2) return t;
    return vector_as_column ? t.dimshuffle({0, -1}) : t.dimshuffle({-1, 0});
}

void check_dot_dtype(const std::string& op, const std::vector<Variable>& inputs, std::size_t a, std::size_t b) {
    if (inputs[a].dtype() != inputs[b].dtype()) {
        throw UsageError(fmt::format("{}: input {} is {} but input {} is {} (dtypes differ)", op, a,
                                     inputs[a].type().str(), b, inputs[b].type().str()));
    }
    DType dt = inputs[a].dtype();
    if (!is_float(dt) && dt != DType::int64 && dt != DType::int32) {
        throw UsageError(fmt::format("{}: {} inputs are not supported (cast them to int32, int64 or a float)", op,
                                     dtype_name(dt)));
    }
}

}  // namespace

std::pair<std::int64_t, std::int64_t> column_slice(std::int64_t n, int t, int nt) {
    const std::int64_t per = ((n + nt - 1) / nt + 15) / 16 * 16;
    return {std::min<std::int64_t>(n, t * per), std::min<std::int64_t>(n, (t + 1) * per)};
}

template <class T>
void gemm_slice(T* out, std::int64_t m, std::int64_t n, std::int64_t c0, std::int64_t c1, T alpha, const T* a,
                std::int64_t a_rows, std::int64_t a_cols, bool ta, const T* b, std::int64_t b_rows, std::int64_t b_cols,
                bool tb, T beta) {
    const std::int64_t am = ta ? a_cols : a_rows, ka = ta ? a_rows : a_cols;
    const std::int64_t kb = tb ? b_cols : b_rows, bn = tb ? b_rows : b_cols;
    if (am != m || bn != n || ka != kb || c0 < 0 || c0 > c1 || c1 > n || !out || !a || !b) {
        throw UsageError(fmt::format("gemm_slice: out ({} x {}), columns [{}, {}), op(A) ({} x {}), op(B) ({} x {}) do "
                                     "not agree", m, n, c0, c1, am, ka, kb, bn));
    }
    gemm_block<T>(out, m, n, 0, m, c0, c1, alpha, MatView{a, a_rows, a_cols, false}, ta, MatView{b, b_rows, b_cols, false},
                  tb, beta);
}
template void gemm_slice<float>(float*, std::int64_t, std::int64_t, std::int64_t, std::int64_t, float, const float*,
                                std::int64_t, std::int64_t, bool, const float*, std::int64_t, std::int64_t, bool, float);
template void gemm_slice<double>(double*, std::int64_t, std::int64_t, std::int64_t, std::int64_t, double, const double*,
                                 std::int64_t, std::int64_t, bool, const double*, std::int64_t, std::int64_t, bool, double);

void set_num_threads(int n) {
    g_threads = n < 0 ? 0 : n;
}
int num_threads() { return threads_for_products(); }

namespace {
thread_local int g_worker_limit = 0;  // 0: no limit
}

int active_workers() {
    if (team::in_part()) return 1;  // a kernel called from a part runs on that part's thread
    const int n = threads_for_products();
    return g_worker_limit > 0 ? std::min(n, g_worker_limit) : n;
}

void run_parts(int parts, const std::function<void(int)>& fn) {
    const int workers = std::min(parts, active_workers());
    if (workers <= 1) {
        for (int p = 0; p < parts; ++p) fn(p);
        return;
    }
    // The first exception a part throws is rethrown once every thread has finished.
    team::run(workers, [&](int w, int n) {
        for (int p = w; p < parts; p += n) fn(p);
    });
}

WorkerLimit::WorkerLimit(int n) : saved_(g_worker_limit) {
    // The tighter of this limit and the one already in force.
    if (n > 0 && (saved_ <= 0 || n < saved_)) g_worker_limit = n;
}
WorkerLimit::~WorkerLimit() { g_worker_limit = saved_; }

std::vector<TensorType> Dot::make_types(const std::vector<Variable>& inputs) const {
    if (inputs.size() != 2) throw UsageError("Dot: takes 2 inputs");
    const Variable& a = inputs[0];
    const Variable& b = inputs[1];
    if (a.ndim() < 1 || a.ndim() > 2 || b.ndim() < 1 || b.ndim() > 2) {
        throw UsageError(fmt::format("Dot: inputs must be vectors or matrices, got input 0 {} and input 1 {}",
                                     a.type().str(), b.type().str()));
    }
    check_dot_dtype("Dot", inputs, 0, 1);
    std::vector<bool> bc;
    if (a.ndim() == 2) bc.push_back(a.broadcastable()[0]);
    if (b.ndim() == 2) bc.push_back(b.broadcastable()[1]);
    return {TensorType{a.dtype(), bc}};
}

std::optional<std::vector<Shape>> Dot::infer_shape(const std::vector<Shape>& in) const {
    Shape s;
    if (in[0].size() == 2) s.push_back(in[0][0]);
    if (in[1].size() == 2) s.push_back(in[1][1]);
    return std::vector<Shape>{s};
}

void Dot::perform(const Node&, std::span<const Tensor* const> in, std::span<Tensor* const> out) const {
    const Tensor& a = *in[0];
    const Tensor& b = *in[1];
    const std::int64_t ka = a.dim(a.ndim() - 1);
    const std::int64_t kb = b.dim(0);
    if (ka != kb) {
        throw UsageError(fmt::format("Dot: shapes {} (input 0) and {} (input 1) are not aligned: {} != {}",
                                     shape_string(a.shape()), shape_string(b.shape()), ka, kb));
    }
    Shape os = (*infer_shape({a.shape(), b.shape()}))[0];
    out[0]->ensure(a.dtype(), os);
    Tensor am = as_matrix(a, false);
    Tensor bm = as_matrix(b, true);
    Tensor sa, sb;
    MatView va = mat_view(am, sa);
    MatView vb = mat_view(bm, sb);
    dispatch(a.dtype(), [&]<class T>() {
        if constexpr (std::is_same_v<T, bool> || std::is_same_v<T, std::uint8_t>) {
            internal_check(false, "Dot on bool/uint8");
        } else {
            gemm_kernel<T>(out[0]->data<T>(), va.rows, vb.cols, T(1), va, false, vb, false, T(0));
        }
    });
}

std::vector<Variable> Dot::pullback(const Node& node, const std::vector<Variable>& g) const {
    const Variable& a = node.inputs[0];
    const Variable& b = node.inputs[1];
    const Variable& gz = g[0];
    if (a.ndim() == 2 && b.ndim() == 2) return {dot(gz, b.T()), dot(a.T(), gz)};
    if (a.ndim() == 2 && b.ndim() == 1) return {outer(gz, b), dot(a.T(), gz)};
    if (a.ndim() == 1 && b.ndim() == 2) return {dot(b, gz), outer(a, gz)};
    return {mul(gz, b), mul(gz, a)};
}

Variable dot(const Variable& a_in, const Variable& b_in, std::source_location where) {
    Variable a = a_in, b = b_in;
    if (a.dtype() != b.dtype()) {
        DType dt = promote(a.dtype(), b.dtype());
        a = cast(a, dt);
        b = cast(b, dt);
    }
    // numpy's dot beyond vectors and matrices: a scalar operand scales the other; otherwise
    // the sum runs over a's last axis and b's second-to-last (its only one for a vector),
    // done as one matrix product on reshaped operands.
    if (a.ndim() == 0 || b.ndim() == 0) return mul(a, b);
    if (a.ndim() <= 2 && b.ndim() <= 2) return apply1(std::make_shared<Dot>(), {a, b}, where);
    const Variable minus_one = constant(-1.0, DType::int64);
    std::vector<Variable> out_shape;
    for (int d = 0; d + 1 < a.ndim(); ++d) out_shape.push_back(a.shape(d));
    const Variable a2 = a.ndim() == 1 ? a : reshape(a, std::vector<Variable>{minus_one, a.shape(a.ndim() - 1)});
    Variable b2 = b;
    if (b.ndim() >= 2) {
        std::vector<int> k_first = {b.ndim() - 2};
        for (int d = 0; d + 2 < b.ndim(); ++d) {
            k_first.push_back(d);
            out_shape.push_back(b.shape(d));
        }
        k_first.push_back(b.ndim() - 1);
        out_shape.push_back(b.shape(b.ndim() - 1));
        b2 = reshape(dimshuffle(b, k_first), std::vector<Variable>{b.shape(b.ndim() - 2), minus_one});
    }
    const Variable r = apply1(std::make_shared<Dot>(), {a2, b2}, where);
    return out_shape.empty() ? r : reshape(r, out_shape);
}

Variable outer(const Variable& u, const Variable& v) { return dot(dimshuffle(u, {0, -1}), dimshuffle(v, {-1, 0})); }

std::string Dot22::name() const {
    return fmt::format("Dot22{{{},{}}}", trans_a_ ? "T" : "N", trans_b_ ? "T" : "N");
}

bool Dot22::props_equal(const Op& o) const {
    const auto& d = static_cast<const Dot22&>(o);
    return d.trans_a_ == trans_a_ && d.trans_b_ == trans_b_;
}

std::vector<TensorType> Dot22::make_types(const std::vector<Variable>& inputs) const {
    if (inputs.size() != 2) throw UsageError(name() + ": takes 2 inputs");
    for (std::size_t i = 0; i < 2; ++i) {
        if (inputs[i].ndim() != 2) {
            throw UsageError(fmt::format("{}: input {} is {}, expected a matrix", name(), i, inputs[i].type().str()));
        }
    }
    check_dot_dtype(name(), inputs, 0, 1);
    const auto& a = inputs[0].broadcastable();
    const auto& b = inputs[1].broadcastable();
    return {TensorType{inputs[0].dtype(), {trans_a_ ? a[1] : a[0], trans_b_ ? b[0] : b[1]}}};
}

std::optional<std::vector<Shape>> Dot22::infer_shape(const std::vector<Shape>& in) const {
    return std::vector<Shape>{{trans_a_ ? in[0][1] : in[0][0], trans_b_ ? in[1][0] : in[1][1]}};
}

void Dot22::perform(const Node&, std::span<const Tensor* const> in, std::span<Tensor* const> out) const {
    const Tensor& a = *in[0];
    const Tensor& b = *in[1];
    const std::int64_t m = trans_a_ ? a.dim(1) : a.dim(0), ka = trans_a_ ? a.dim(0) : a.dim(1);
    const std::int64_t kb = trans_b_ ? b.dim(1) : b.dim(0), n = trans_b_ ? b.dim(0) : b.dim(1);
    if (ka != kb) {
        throw UsageError(fmt::format("{}: shapes {} (input 0) and {} (input 1) are not aligned: {} != {}", name(),
                                     shape_string(a.shape()), shape_string(b.shape()), ka, kb));
    }
    out[0]->ensure(a.dtype(), {m, n});
    Tensor sa, sb;
    MatView va = mat_view(a, sa);
    MatView vb = mat_view(b, sb);
    dispatch(a.dtype(), [&]<class T>() {
        if constexpr (std::is_same_v<T, bool> || std::is_same_v<T, std::uint8_t>) {
            internal_check(false, "Dot22 on bool/uint8");
        } else {
            gemm_kernel<T>(out[0]->data<T>(), m, n, T(1), va, trans_a_, vb, trans_b_, T(0));
        }
    });
}

std::vector<Variable> Dot22::pullback(const Node& node, const std::vector<Variable>& g) const {
    Variable opa = trans_a_ ? node.inputs[0].T() : node.inputs[0];
    Variable opb = trans_b_ ? node.inputs[1].T() : node.inputs[1];
    Variable ga = dot(g[0], opb.T()), gb = dot(opa.T(), g[0]);
    return {trans_a_ ? ga.T() : ga, trans_b_ ? gb.T() : gb};
}

Variable dot22(const Variable& a, const Variable& b, bool trans_a, bool trans_b) {
    return apply1(std::make_shared<Dot22>(trans_a, trans_b), {a, b});
}

std::string Gemm::name() const {
    return fmt::format("Gemm{{{},{}}}", trans_a_ ? "T" : "N", trans_b_ ? "T" : "N");
}

bool Gemm::props_equal(const Op& o) const {
    const auto& g = static_cast<const Gemm&>(o);
    return g.trans_a_ == trans_a_ && g.trans_b_ == trans_b_;
}

std::vector<TensorType> Gemm::make_types(const std::vector<Variable>& inputs) const {
    if (inputs.size() != 5) throw UsageError(name() + ": takes C, alpha, A, B, beta");
    const char* names[] = {"C", "alpha", "A", "B", "beta"};
    for (std::size_t i = 0; i < 5; ++i) {
        int want = (i == 1 || i == 4) ? 0 : 2;
        if (inputs[i].ndim() != want) {
            throw UsageError(fmt::format("{}: input {} ({}) is {}, expected {} dimensions", name(), i, names[i],
                                         inputs[i].type().str(), want));
        }
        if (inputs[i].dtype() != inputs[0].dtype()) {
            throw UsageError(fmt::format("{}: input {} ({}) is {} but C is {}", name(), i, names[i],
                                         inputs[i].type().str(), inputs[0].type().str()));
        }
    }
    return {TensorType{inputs[0].dtype(), {false, false}}};
}

std::optional<std::vector<Shape>> Gemm::infer_shape(const std::vector<Shape>& in) const {
    return std::vector<Shape>{in[0]};
}

void Gemm::validate(const Node&, std::span<const Tensor* const> in) const {
    const Tensor& c = *in[0];
    const Tensor& a = *in[2];
    const Tensor& b = *in[3];
    const std::int64_t m = trans_a_ ? a.dim(1) : a.dim(0);
    const std::int64_t ka = trans_a_ ? a.dim(0) : a.dim(1);
    const std::int64_t kb = trans_b_ ? b.dim(1) : b.dim(0);
    const std::int64_t n = trans_b_ ? b.dim(0) : b.dim(1);
    if (ka != kb || c.dim(0) != m || c.dim(1) != n) {
        throw UsageError(fmt::format("{}: shapes do not agree: C {}, A {}, B {}", name(), shape_string(c.shape()),
                                     shape_string(a.shape()), shape_string(b.shape())));
    }
}

void Gemm::perform(const Node& node, std::span<const Tensor* const> in, std::span<Tensor* const> out) const {
    validate(node, in);
    const Tensor& c = *in[0];
    const Tensor& a = *in[2];
    const Tensor& b = *in[3];
    const std::int64_t m = trans_a_ ? a.dim(1) : a.dim(0);
    const std::int64_t n = trans_b_ ? b.dim(0) : b.dim(1);
    // Accumulate into C's own buffer when nothing else holds it (the executor hands the
    // tensor over when liveness allows); otherwise into a copy.
    if (out[0] != in[0]) {
        out[0]->ensure(c.dtype(), c.shape());
        out[0]->copy_from(c);
    }
    Tensor sa, sb;
    MatView va = mat_view(a, sa);
    MatView vb = mat_view(b, sb);
    dispatch(c.dtype(), [&]<class T>() {
        if constexpr (std::is_same_v<T, bool> || std::is_same_v<T, std::uint8_t>) {
            internal_check(false, "Gemm on bool/uint8");
        } else {
            gemm_kernel<T>(out[0]->data<T>(), m, n, static_cast<T>(in[1]->item()), va, trans_a_, vb, trans_b_,
                           static_cast<T>(in[4]->item()));
        }
    });
}

std::vector<Variable> Gemm::pullback(const Node& node, const std::vector<Variable>& g) const {
    const auto& x = node.inputs;
    Variable opa = trans_a_ ? x[2].T() : x[2];
    Variable opb = trans_b_ ? x[3].T() : x[3];
    Variable prod = dot(opa, opb);
    Variable ga = mul(x[1], dot(g[0], opb.T()));
    Variable gb = mul(x[1], dot(opa.T(), g[0]));
    if (trans_a_) ga = ga.T();
    if (trans_b_) gb = gb.T();
    return {mul(g[0], x[4]), sum(mul(g[0], prod)), ga, gb, sum(mul(g[0], x[0]))};
}

Variable gemm(const Variable& c, const Variable& alpha, const Variable& a, const Variable& b, const Variable& beta,
              bool trans_a, bool trans_b) {
    return apply1(std::make_shared<Gemm>(trans_a, trans_b), {c, cast(alpha, c.dtype()), a, b, cast(beta, c.dtype())});
}

}  // namespace theanine
