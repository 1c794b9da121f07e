/// \file
/// Product kernels and how a product picks one.
///
/// Every matrix product theanine runs (Dot, Dot22, Gemm, the convolutions' products, and
/// gemm_slice called by hand) ends in one call per thread that computes
///
///   C[:, cols] = beta * C[:, cols] + alpha * op(A) op(B)[:, cols]
///
/// on row-major storage. Several kernels can do that call:
///
///   eigen     Eigen's general product (always present)
///   openblas  OpenBLAS's sgemm/dgemm, each call on its caller's thread (theanine splits the
///             work itself); present when the build found a pthreads build of OpenBLAS,
///             opened (dlopen) at its first use
///   blocked   theanine's register-blocked kernels for products with one short side (the
///             minibatch's rows, a rank-40 update) or few output columns (a 10-class layer's
///             x W and x^T dL); present in builds for AVX-512 machines
///
/// A cache line records which kernels were timed; one timed without a kernel that now takes
/// its shape is measured again.
///
/// Which is fastest depends on the machine and the shape, so by default nothing is assumed:
/// the first time a shape is seen (dtype, m, columns, k, transposes, whether C is
/// accumulated), each available kernel is timed on the call's own operands into a scratch
/// output, and the fastest is kept for the rest of the process. Products under
/// kSmallProductFlops are not timed (measuring would cost more than it could save) and use
/// Eigen.
///
/// The choices are also written to a cache file (one line per shape, keyed by the CPU), and
/// read back by later processes on the same kind of machine: they then skip the measurement
/// and, more importantly, use the same kernels, so two runs of a program on one machine
/// (a run and its resumption from a checkpoint, the ranks of an MPI job) compute the same
/// bits. The kernels round differently from each other in the last bits; a process that
/// cannot use the file still gets correct products, but two such processes may pick
/// different kernels for a shape whose candidates are within noise of each other.
///
/// THEANINE_FLAGS: `blas_kernel=measure|eigen|openblas|blocked` (measure by default; a name
/// forces that kernel for every product), `kernel_cache=PATH|off` (default
/// `$XDG_CACHE_HOME/theanine/products.txt`, else `$HOME/.cache/theanine/products.txt`).
#pragma once

#include <cstdint>
#include <filesystem>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "graph/tensor.hpp"

namespace theanine {

enum class ProductKernel { eigen, openblas, blocked };

std::string_view kernel_name(ProductKernel k);
/// The kernel named `name`; throws UsageError naming the known kernels otherwise.
ProductKernel kernel_from_name(std::string_view name);
/// The kernels this build can run on this machine, eigen first.
std::vector<ProductKernel> available_kernels();

/// Products of fewer floating-point operations (2 m n k) than this use Eigen untimed.
inline constexpr double kSmallProductFlops = 131072;

/// Forces one kernel for every product (nullopt: choose by measurement, the default).
/// Throws UsageError if the kernel is not available in this build. Clears the choices made
/// so far in this process (not the cache file).
void set_product_kernel(std::optional<ProductKernel> kernel);
/// The forced kernel, or nullopt when products choose by measurement.
std::optional<ProductKernel> product_kernel();

/// Uses `file` as the cache of choices (empty path: no file). Clears the choices made so far
/// in this process; the file's entries are read at the next product.
void set_kernel_cache(const std::filesystem::path& file);
std::filesystem::path kernel_cache();

/// One shape's choice: its key, the kernel kept, and the measured seconds per call of each
/// candidate (empty when it came from the cache file).
struct ProductChoice {
    DType dtype;
    std::int64_t m, n, k;     ///< op(A) is m x k, the columns computed are n
    bool trans_a, trans_b;    ///< after reading column-major operands as transposes
    bool accumulate;          ///< beta != 0
    ProductKernel kernel;
    enum class Source { measured, cache_file } source;
    std::vector<std::pair<ProductKernel, double>> seconds;
    std::string str() const;  ///< "float32 20x256x784 NN: openblas (measured: eigen 181 us, openblas 146 us)"
};
/// The choices this process has made, in the order they were first needed.
std::vector<ProductChoice> product_choices();

namespace detail {
/// One thread's product call on row-major storage (see the file comment): C is m x n with
/// leading dimension ldc, op(A) m x k, op(B) k x n (B already offset to the first column).
template <class T>
struct GemmCall {
    T* c;
    std::int64_t ldc, m, n, k;
    T alpha;
    const T* a;
    std::int64_t lda;
    bool ta;
    const T* b;
    std::int64_t ldb;
    bool tb;
    T beta;
};
/// Runs the call on the kernel chosen for its shape (measuring it the first time).
template <class T>
void run_product(const GemmCall<T>& call);
/// Reads the configuration (THEANINE_FLAGS' blas_kernel, kernel_cache) if not yet done;
/// throws UsageError for a kernel this build lacks. Called before a parallel region, so
/// that nothing inside it throws for that reason.
void ensure_configured();
/// Why the OpenBLAS library at `path` cannot be the openblas kernel ("" if it can): it must
/// open, have cblas_sgemm/dgemm, be a pthreads build (safe for concurrent callers; it is then
/// set to run every call on its caller's thread) and not be loaded by the program already.
/// A library that passes stays loaded.
std::string openblas_refusal(const std::string& path);
}  // namespace detail

}  // namespace theanine
