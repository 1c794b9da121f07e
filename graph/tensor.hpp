/// \file
/// Tensor: the runtime n-d array that flows through compiled functions.
///
/// A Tensor is a dtype, a shape, row-major strides (in elements) and an offset into a
/// reference-counted Storage. Views (transpose, slices, dimshuffle) share storage. Kernels
/// read data through typed pointers and strides; most kernels ask for contiguous inputs and
/// get them cheaply because almost every tensor in a training step is contiguous.
#pragma once

#include <cstddef>
#include <cstdint>
#include <initializer_list>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "graph/error.hpp"

namespace theanine {

/// Element types. The order is the checkpoint format's dtype code: new ones go at the end.
enum class DType : std::uint8_t { float32, float64, int64, int32, uint8, boolean, int8, int16, uint16, uint32 };

using Shape = std::vector<std::int64_t>;

std::size_t dtype_size(DType dt);
std::string_view dtype_name(DType dt);
/// Parses "float32", "float64", "int64", "int32", "int16", "int8", "uint32", "uint16", "uint8",
/// "bool"; throws UsageError otherwise.
DType dtype_from_name(std::string_view name);
bool is_float(DType dt);
bool is_integer(DType dt);  ///< the signed and unsigned integer dtypes (not bool)
/// Whether numpy's "safe" casting allows from -> to (every value of from has a value in to
/// that numpy deems equal: bool to anything, an integer to a wider integer of either
/// signedness that holds its range, small integers to float32 (8 and 16 bits) and every
/// integer to float64, float32 to float64). Function arguments and set_value convert
/// such values; other conversions need allow_input_downcast.
bool casts_safely(DType from, DType to);

template <class T>
constexpr DType dtype_of();
template <> constexpr DType dtype_of<float>() { return DType::float32; }
template <> constexpr DType dtype_of<double>() { return DType::float64; }
template <> constexpr DType dtype_of<std::int64_t>() { return DType::int64; }
template <> constexpr DType dtype_of<std::int32_t>() { return DType::int32; }
template <> constexpr DType dtype_of<std::uint8_t>() { return DType::uint8; }
template <> constexpr DType dtype_of<bool>() { return DType::boolean; }
template <> constexpr DType dtype_of<std::int8_t>() { return DType::int8; }
template <> constexpr DType dtype_of<std::int16_t>() { return DType::int16; }
template <> constexpr DType dtype_of<std::uint16_t>() { return DType::uint16; }
template <> constexpr DType dtype_of<std::uint32_t>() { return DType::uint32; }

/// Calls `f.template operator()<T>()` with T the C++ type of dt.
template <class F>
decltype(auto) dispatch(DType dt, F&& f) {
    switch (dt) {
    case DType::float32: return f.template operator()<float>();
    case DType::float64: return f.template operator()<double>();
    case DType::int64: return f.template operator()<std::int64_t>();
    case DType::int32: return f.template operator()<std::int32_t>();
    case DType::uint8: return f.template operator()<std::uint8_t>();
    case DType::boolean: return f.template operator()<bool>();
    case DType::int8: return f.template operator()<std::int8_t>();
    case DType::int16: return f.template operator()<std::int16_t>();
    case DType::uint16: return f.template operator()<std::uint16_t>();
    case DType::uint32: return f.template operator()<std::uint32_t>();
    }
    throw InternalError("dispatch: unknown dtype");
}

std::string shape_string(const Shape& shape);  ///< "(20, 784)"
/// Checked size arithmetic, used for every element and byte count: a negative dimension or a
/// count past 2^63 - 1 throws UsageError naming the shape instead of wrapping.
std::int64_t shape_size(const Shape& shape);
std::size_t checked_byte_size(const Shape& shape, std::size_t element_bytes);
std::int64_t checked_mul(std::int64_t a, std::int64_t b, const char* what);

/// A 64-byte aligned buffer.
class Storage {
public:
    explicit Storage(std::size_t bytes);
    ~Storage();
    Storage(const Storage&) = delete;
    Storage& operator=(const Storage&) = delete;
    void* data() const { return data_; }
    std::size_t bytes() const { return bytes_; }

private:
    void* data_ = nullptr;
    std::size_t bytes_ = 0;
};

/// Counts Storage allocations, so tests can check that a steady-state call allocates nothing.
std::uint64_t storage_allocation_count();

class Tensor {
public:
    Tensor() = default;  ///< an empty tensor: no dtype, no storage

    static Tensor empty(DType dt, const Shape& shape);  ///< uninitialised
    static Tensor zeros(DType dt, const Shape& shape);
    static Tensor full(DType dt, const Shape& shape, double value);
    template <class T>
    static Tensor scalar(T value) {
        Tensor t = empty(dtype_of<T>(), {});
        *t.data<T>() = value;
        return t;
    }
    template <class T>
    static Tensor from_vector(const Shape& shape, const std::vector<T>& values);

    bool defined() const { return storage_ != nullptr; }
    DType dtype() const { return dtype_; }
    const Shape& shape() const { return shape_; }
    const Shape& strides() const { return strides_; }
    int ndim() const { return static_cast<int>(shape_.size()); }
    std::int64_t size() const { return shape_size(shape_); }
    std::int64_t dim(int i) const { return shape_.at(static_cast<std::size_t>(i)); }
    bool is_contiguous() const;

    /// Typed access; throws UsageError when T is not the tensor's dtype.
    template <class T>
    T* data() {
        check_dtype(dtype_of<T>());
        return static_cast<T*>(storage_->data()) + offset_;
    }
    template <class T>
    const T* data() const {
        check_dtype(dtype_of<T>());
        return static_cast<const T*>(storage_->data()) + offset_;
    }
    void* raw_data() const;

    /// Element at a multi-index (bounds checked), converted to double / int64.
    double at(std::initializer_list<std::int64_t> index) const;
    /// The single value of a tensor with one element, converted.
    double item() const;
    std::int64_t item_int() const;
    /// All values in C order, converted.
    std::vector<double> to_doubles() const;

    /// Views sharing storage.
    Tensor dimshuffle(const std::vector<int>& order) const;  ///< -1 inserts a size-1 axis
    Tensor transpose() const;                                  ///< reverses the axes
    Tensor slice(int axis, std::int64_t start, std::int64_t stop, std::int64_t step) const;
    Tensor index(int axis, std::int64_t i) const;  ///< drops the axis
    /// Makes this tensor the view base.index(0, i), reusing its own shape and stride storage
    /// (a loop rebinds its step's inputs this way without allocating).
    void assign_row(const Tensor& base, std::int64_t i);
    Tensor reshape_view(const Shape& shape) const;  ///< contiguous tensors only

    Tensor copy() const;  ///< contiguous deep copy
    Tensor contiguous() const { return is_contiguous() ? *this : copy(); }
    Tensor astype(DType dt) const;
    void copy_from(const Tensor& src);  ///< same shape, any dtype; converts

    bool shares_storage(const Tensor& other) const {
        return storage_ != nullptr && storage_ == other.storage_;
    }
    /// Whether this tensor holds the only reference to its storage, so that writing the buffer
    /// cannot change a value someone else holds. When true, every read of the buffer by a
    /// former holder on another thread happens before the caller's next write (see tensor.cpp).
    bool sole_owner() const;
    std::size_t storage_bytes() const { return storage_ ? storage_->bytes() : 0; }
    const void* storage_id() const { return storage_.get(); }  ///< the same for all views of a buffer

    /// Makes this tensor a contiguous dt/shape tensor, reusing its storage when nothing else
    /// refers to it and it is large enough. Contents are unspecified afterwards. A placed
    /// view (place_in) of that dtype and shape is kept as it is.
    void ensure(DType dt, const Shape& shape);
    /// The compiler's placement of a value inside another buffer (a Join's output): ensure()
    /// then writes into the view instead of allocating. Any reassignment drops the mark.
    Tensor placed() const {
        Tensor t = *this;
        t.placed_ = true;
        return t;
    }

    std::string str() const;  ///< numpy-like text, for messages and tests

private:
    void check_dtype(DType dt) const;
    std::shared_ptr<Storage> storage_;
    std::int64_t offset_ = 0;
    DType dtype_ = DType::float64;
    Shape shape_;
    Shape strides_;
    bool placed_ = false;
};

Shape contiguous_strides(const Shape& shape);

template <class T>
Tensor Tensor::from_vector(const Shape& shape, const std::vector<T>& values) {
    if (static_cast<std::int64_t>(values.size()) != shape_size(shape)) {
        throw UsageError("Tensor::from_vector: " + std::to_string(values.size()) +
                         " values do not fill shape " + shape_string(shape));
    }
    Tensor t = empty(dtype_of<T>(), shape);
    T* d = t.data<T>();
    for (std::size_t i = 0; i < values.size(); ++i) d[i] = values[i];
    return t;
}

}  // namespace theanine
