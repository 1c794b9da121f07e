#include "graph/tensor.hpp"

#include <atomic>
#include <cstdlib>
#include <cstring>
#include <sstream>

#include <fmt/format.h>

namespace theanine {

#if defined(__cpp_lib_source_location)
std::string where_string(const std::source_location& loc) {
    if (loc.line() == 0) return "";
    std::string_view file = loc.file_name();
    auto slash = file.find_last_of('/');
    if (slash != std::string_view::npos) file = file.substr(slash + 1);
    return fmt::format("{}:{}", file, loc.line());
}

void rethrow_at(const UsageError& e, const std::source_location& loc) {
    const std::string where = where_string(loc);
    if (where.empty()) throw e;
    throw UsageError(fmt::format("{} (node built at {})", e.what(), where));
}
#endif

void internal_check(bool cond, const std::string& message) {
    if (!cond) throw InternalError("theanine internal error: " + message);
}

void internal_failure(const char* message) { throw InternalError(std::string("theanine internal error: ") + message); }

std::size_t dtype_size(DType dt) {
    switch (dt) {
    case DType::float32: return 4;
    case DType::float64: return 8;
    case DType::int64: return 8;
    case DType::int32: return 4;
    case DType::uint8: return 1;
    case DType::boolean: return 1;
    case DType::int8: return 1;
    case DType::int16: return 2;
    case DType::uint16: return 2;
    case DType::uint32: return 4;
    }
    return 0;
}

std::string_view dtype_name(DType dt) {
    switch (dt) {
    case DType::float32: return "float32";
    case DType::float64: return "float64";
    case DType::int64: return "int64";
    case DType::int32: return "int32";
    case DType::uint8: return "uint8";
    case DType::boolean: return "bool";
    case DType::int8: return "int8";
    case DType::int16: return "int16";
    case DType::uint16: return "uint16";
    case DType::uint32: return "uint32";
    }
    return "?";
}

DType dtype_from_name(std::string_view name) {
    for (DType dt : {DType::float32, DType::float64, DType::int64, DType::int32, DType::int16, DType::int8,
                     DType::uint32, DType::uint16, DType::uint8, DType::boolean}) {
        if (dtype_name(dt) == name) return dt;
    }
    throw UsageError(fmt::format(
        "unknown dtype '{}' (expected float32, float64, int64, int32, int16, int8, uint32, uint16, uint8 or bool)",
        name));
}

bool is_float(DType dt) { return dt == DType::float32 || dt == DType::float64; }
bool is_integer(DType dt) {
    switch (dt) {
    case DType::int64: case DType::int32: case DType::int16: case DType::int8:
    case DType::uint32: case DType::uint16: case DType::uint8: return true;
    default: return false;
    }
}

namespace {
// An integer dtype's bits and signedness.
struct IntInfo {
    int bits;
    bool is_signed;
};
IntInfo int_info(DType dt) {
    switch (dt) {
    case DType::int8: return {8, true};
    case DType::int16: return {16, true};
    case DType::int32: return {32, true};
    case DType::int64: return {64, true};
    case DType::uint8: return {8, false};
    case DType::uint16: return {16, false};
    case DType::uint32: return {32, false};
    default: return {0, false};
    }
}
}  // namespace

bool casts_safely(DType from, DType to) {
    if (from == to || from == DType::boolean) return true;
    if (from == DType::float32) return to == DType::float64;
    if (!is_integer(from)) return false;
    const IntInfo f = int_info(from);
    if (to == DType::float64) return true;
    if (to == DType::float32) return f.bits <= 16;
    if (!is_integer(to)) return false;
    const IntInfo t = int_info(to);
    if (f.is_signed == t.is_signed) return t.bits >= f.bits;
    return !f.is_signed && t.is_signed && t.bits > f.bits;  // unsigned into a wider signed type
}

std::string shape_string(const Shape& shape) {
    std::string s = "(";
    for (std::size_t i = 0; i < shape.size(); ++i) {
        if (i) s += ", ";
        s += std::to_string(shape[i]);
    }
    if (shape.size() == 1) s += ",";
    return s + ")";
}

std::int64_t checked_mul(std::int64_t a, std::int64_t b, const char* what) {
    std::int64_t r = 0;
    if (__builtin_mul_overflow(a, b, &r)) {
        throw UsageError(fmt::format("{}: {} x {} overflows a 64-bit size", what, a, b));
    }
    return r;
}

std::int64_t shape_size(const Shape& shape) {
    std::int64_t n = 1;
    for (auto d : shape) {
        if (d < 0) throw UsageError("negative dimension in shape " + shape_string(shape));
        if (__builtin_mul_overflow(n, d, &n)) {
            throw UsageError("shape " + shape_string(shape) + " has more than 2^63 - 1 elements");
        }
    }
    return n;
}

std::size_t checked_byte_size(const Shape& shape, std::size_t element_bytes) {
    const std::int64_t n = shape_size(shape);
    std::int64_t bytes = 0;
    if (__builtin_mul_overflow(n, static_cast<std::int64_t>(element_bytes), &bytes)) {
        throw UsageError("shape " + shape_string(shape) + " needs more than 2^63 - 1 bytes");
    }
    return static_cast<std::size_t>(bytes);
}

Shape contiguous_strides(const Shape& shape) {
    Shape st(shape.size());
    std::int64_t s = 1;
    for (std::size_t i = shape.size(); i-- > 0;) {
        st[i] = s;
        s *= shape[i];
    }
    return st;
}

namespace {
std::atomic<std::uint64_t> g_allocations{0};
}

std::uint64_t storage_allocation_count() { return g_allocations.load(); }

Storage::Storage(std::size_t bytes) : bytes_(bytes) {
    std::size_t rounded = ((bytes + 63) / 64) * 64;
    if (rounded == 0) rounded = 64;
    data_ = std::aligned_alloc(64, rounded);
    if (!data_) throw Error(fmt::format("out of memory allocating {} bytes", bytes));
    g_allocations.fetch_add(1, std::memory_order_relaxed);
}

Storage::~Storage() { std::free(data_); }

Tensor Tensor::empty(DType dt, const Shape& shape) {
    const std::size_t bytes = checked_byte_size(shape, dtype_size(dt));
    Tensor t;
    t.dtype_ = dt;
    t.shape_ = shape;
    t.strides_ = contiguous_strides(shape);
    t.storage_ = std::make_shared<Storage>(bytes);
    return t;
}

Tensor Tensor::zeros(DType dt, const Shape& shape) {
    Tensor t = empty(dt, shape);
    std::memset(t.raw_data(), 0, static_cast<std::size_t>(t.size()) * dtype_size(dt));
    return t;
}

Tensor Tensor::full(DType dt, const Shape& shape, double value) {
    Tensor t = empty(dt, shape);
    dispatch(dt, [&]<class T>() {
        T* d = t.data<T>();
        T v = static_cast<T>(value);
        for (std::int64_t i = 0; i < t.size(); ++i) d[i] = v;
    });
    return t;
}

void* Tensor::raw_data() const {
    if (!storage_) throw UsageError("Tensor: access to an empty tensor");
    return static_cast<char*>(storage_->data()) +
           static_cast<std::size_t>(offset_) * dtype_size(dtype_);
}

void Tensor::check_dtype(DType dt) const {
    if (!storage_) throw UsageError("Tensor: access to an empty tensor");
    if (dt != dtype_) {
        throw UsageError(fmt::format("Tensor: data requested as {} but the tensor is {}",
                                     dtype_name(dt), dtype_name(dtype_)));
    }
}

bool Tensor::is_contiguous() const {
    std::int64_t s = 1;
    for (std::size_t i = shape_.size(); i-- > 0;) {
        if (shape_[i] != 1 && strides_[i] != s) return false;
        s *= shape_[i];
    }
    return true;
}

namespace {
template <class T>
double to_double(const void* base, std::int64_t off) {
    return static_cast<double>(static_cast<const T*>(base)[off]);
}

// Calls f(offset) for each element offset in C order.
template <class F>
void for_each_offset(const Shape& shape, const Shape& strides, F&& f) {
    const int nd = static_cast<int>(shape.size());
    if (shape_size(shape) == 0) return;
    std::vector<std::int64_t> idx(static_cast<std::size_t>(nd), 0);
    std::int64_t off = 0;
    while (true) {
        f(off);
        int d = nd - 1;
        for (; d >= 0; --d) {
            idx[d]++;
            off += strides[d];
            if (idx[d] < shape[d]) break;
            off -= strides[d] * shape[d];
            idx[d] = 0;
        }
        if (d < 0) return;
    }
}
}  // namespace

double Tensor::at(std::initializer_list<std::int64_t> index) const {
    if (static_cast<int>(index.size()) != ndim()) {
        throw UsageError(fmt::format("Tensor::at: {} indices for a {}-d tensor", index.size(),
                                     ndim()));
    }
    std::int64_t off = 0;
    int d = 0;
    for (auto i : index) {
        if (i < 0 || i >= shape_[d]) {
            throw UsageError(fmt::format("Tensor::at: index {} out of range for axis {} of size {}",
                                         i, d, shape_[d]));
        }
        off += i * strides_[d];
        ++d;
    }
    const void* base = static_cast<const char*>(storage_->data()) +
                       static_cast<std::size_t>(offset_) * dtype_size(dtype_);
    return dispatch(dtype_, [&]<class T>() { return to_double<T>(base, off); });
}

double Tensor::item() const {
    if (size() != 1) {
        throw UsageError("Tensor::item: tensor of shape " + shape_string(shape_) +
                         " has more than one element");
    }
    return dispatch(dtype_, [&]<class T>() { return static_cast<double>(*data<T>()); });
}

std::int64_t Tensor::item_int() const {
    if (size() != 1) {
        throw UsageError("Tensor::item_int: tensor of shape " + shape_string(shape_) +
                         " has more than one element");
    }
    return dispatch(dtype_, [&]<class T>() { return static_cast<std::int64_t>(*data<T>()); });
}

std::vector<double> Tensor::to_doubles() const {
    std::vector<double> out;
    out.reserve(static_cast<std::size_t>(size()));
    const void* base = raw_data();
    dispatch(dtype_, [&]<class T>() {
        for_each_offset(shape_, strides_, [&](std::int64_t off) {
            out.push_back(to_double<T>(base, off));
        });
    });
    return out;
}

Tensor Tensor::dimshuffle(const std::vector<int>& order) const {
    Tensor t = *this;
    t.placed_ = false;  // a view of a placed value is an ordinary view
    t.shape_.clear();
    t.strides_.clear();
    std::vector<bool> used(shape_.size(), false);
    for (int o : order) {
        if (o == -1) {
            t.shape_.push_back(1);
            t.strides_.push_back(0);
        } else {
            t.shape_.push_back(shape_.at(static_cast<std::size_t>(o)));
            t.strides_.push_back(strides_[static_cast<std::size_t>(o)]);
            used[static_cast<std::size_t>(o)] = true;
        }
    }
    for (std::size_t i = 0; i < used.size(); ++i) {
        if (!used[i] && shape_[i] != 1) {
            throw UsageError(fmt::format("dimshuffle drops axis {} of size {} (only size-1 axes can be dropped)", i, shape_[i]));
        }
    }
    return t;
}

Tensor Tensor::transpose() const {
    std::vector<int> order;
    for (int i = ndim() - 1; i >= 0; --i) order.push_back(i);
    return dimshuffle(order);
}

Tensor Tensor::slice(int axis, std::int64_t start, std::int64_t stop, std::int64_t step) const {
    Tensor t = *this;
    t.placed_ = false;  // a view of a placed value is an ordinary view
    std::int64_t n = 0;
    if (step > 0 && stop > start) n = (stop - start + step - 1) / step;
    if (step < 0 && stop < start) n = (start - stop + (-step) - 1) / (-step);
    if (n > 0) t.offset_ += start * strides_[axis];
    t.shape_[axis] = n;
    t.strides_[axis] = strides_[axis] * step;
    return t;
}

Tensor Tensor::index(int axis, std::int64_t i) const {
    Tensor t = *this;
    t.placed_ = false;  // a view of a placed value is an ordinary view
    t.offset_ += i * strides_[axis];
    t.shape_.erase(t.shape_.begin() + axis);
    t.strides_.erase(t.strides_.begin() + axis);
    return t;
}

void Tensor::assign_row(const Tensor& base, std::int64_t i) {
    internal_check(base.ndim() >= 1 && i >= 0 && i < base.dim(0), "assign_row: row out of range");
    storage_ = base.storage_;
    dtype_ = base.dtype_;
    placed_ = false;
    offset_ = base.offset_ + i * base.strides_[0];
    shape_.assign(base.shape_.begin() + 1, base.shape_.end());
    strides_.assign(base.strides_.begin() + 1, base.strides_.end());
}

Tensor Tensor::reshape_view(const Shape& shape) const {
    internal_check(is_contiguous(), "reshape_view of a non-contiguous tensor");
    internal_check(shape_size(shape) == size(), "reshape_view changes the size");
    Tensor t = *this;
    t.placed_ = false;  // a view of a placed value is an ordinary view
    t.shape_ = shape;
    t.strides_ = contiguous_strides(shape);
    return t;
}

Tensor Tensor::copy() const {
    Tensor out = empty(dtype_, shape_);
    out.copy_from(*this);
    return out;
}

Tensor Tensor::astype(DType dt) const {
    Tensor out = empty(dt, shape_);
    out.copy_from(*this);
    return out;
}

void Tensor::copy_from(const Tensor& src) {
    if (src.shape_ != shape_) {
        throw UsageError("Tensor::copy_from: shape " + shape_string(src.shape_) +
                         " does not match " + shape_string(shape_));
    }
    if (src.dtype_ == dtype_ && src.is_contiguous() && is_contiguous()) {
        std::memmove(raw_data(), src.raw_data(), static_cast<std::size_t>(size()) * dtype_size(dtype_));
        return;
    }
    if (size() == 0) return;
    const void* sbase = src.raw_data();
    void* dbase = raw_data();
    dispatch(dtype_, [&]<class D>() {
        dispatch(src.dtype_, [&]<class S>() {
            D* d = static_cast<D*>(dbase);
            const S* s = static_cast<const S*>(sbase);
            const int nd = static_cast<int>(shape_.size());
            if (nd == 0) {
                d[0] = static_cast<D>(s[0]);
                return;
            }
            // Row-major order over the shape: the last axis in a tight loop, the others
            // counted like an odometer (no per-element index arithmetic).
            const std::int64_t n_last = shape_[nd - 1], ss = src.strides_[nd - 1], ds = strides_[nd - 1];
            std::vector<std::int64_t> idx(static_cast<std::size_t>(nd), 0);
            std::int64_t so = 0, dof = 0;
            for (;;) {
                if (ss == 1 && ds == 1) {
                    for (std::int64_t i = 0; i < n_last; ++i) d[dof + i] = static_cast<D>(s[so + i]);
                } else {
                    for (std::int64_t i = 0; i < n_last; ++i) d[dof + i * ds] = static_cast<D>(s[so + i * ss]);
                }
                int a = nd - 2;
                for (; a >= 0; --a) {
                    so += src.strides_[a];
                    dof += strides_[a];
                    if (++idx[a] < shape_[a]) break;
                    so -= src.strides_[a] * shape_[a];
                    dof -= strides_[a] * shape_[a];
                    idx[a] = 0;
                }
                if (a < 0) break;
            }
        });
    });
}

bool Tensor::sole_owner() const {
    // use_count() is a relaxed load: seeing 1 does not order the last other holder's reads of
    // the buffer (on another thread) before this thread's writes. Copying the pointer does: its
    // increment is an acquire-release read-modify-write of the count, which reads the value the
    // other holder's release (its decrement) wrote.
    if (!storage_ || storage_.use_count() != 1) return false;
    std::shared_ptr<Storage> synchronise = storage_;
    return true;
}

void Tensor::ensure(DType dt, const Shape& shape) {
    if (placed_ && storage_ && dtype_ == dt && shape_ == shape && is_contiguous()) return;
    const std::size_t need = checked_byte_size(shape, dtype_size(dt));
    if (sole_owner() && storage_->bytes() >= need &&
        storage_->bytes() <= 2 * need + 64) {
        dtype_ = dt;
        offset_ = 0;
        if (shape_ != shape) {
            shape_ = shape;
            strides_ = contiguous_strides(shape);
        } else if (!is_contiguous()) {
            strides_ = contiguous_strides(shape);
        }
        return;
    }
    *this = empty(dt, shape);
}

std::string Tensor::str() const {
    if (!storage_) return "Tensor(empty)";
    std::ostringstream os;
    std::vector<double> v = to_doubles();
    os << "Tensor(" << dtype_name(dtype_) << ", " << shape_string(shape_) << ", [";
    for (std::size_t i = 0; i < v.size() && i < 20; ++i) {
        if (i) os << ", ";
        os << fmt::format("{}", v[i]);
    }
    if (v.size() > 20) os << ", ...";
    os << "])";
    return os.str();
}

}  // namespace theanine
