// Tensor: storage, views, dtypes, conversions, buffer reuse.
#include <doctest/doctest.h>

#include <limits>

#include "support/helpers.hpp"

using namespace theanine;
using namespace theanine::testing;

TEST_CASE("tensors are row-major with element strides") {
    Tensor t = T64({2, 3}, {1, 2, 3, 4, 5, 6});
    CHECK(t.strides() == Shape{3, 1});
    CHECK(t.at({1, 2}) == 6);
    CHECK(t.is_contiguous());
    CHECK(t.size() == 6);
    CHECK(shape_string(t.shape()) == "(2, 3)");
    CHECK(shape_string({5}) == "(5,)");
}

TEST_CASE("views share storage: transpose, slice, index, dimshuffle") {
    Tensor t = T64({2, 3}, {1, 2, 3, 4, 5, 6});
    Tensor tt = t.transpose();
    CHECK(tt.shares_storage(t));
    CHECK(tt.shape() == Shape{3, 2});
    CHECK(tt.to_doubles() == std::vector<double>{1, 4, 2, 5, 3, 6});
    CHECK_FALSE(tt.is_contiguous());
    Tensor s = t.slice(1, 2, 0, -1);  // columns 2 then 1 (absolute bounds, stop exclusive)
    CHECK(s.to_doubles() == std::vector<double>{3, 2, 6, 5});
    Tensor r = t.index(0, 1);
    CHECK(r.to_doubles() == std::vector<double>{4, 5, 6});
    t.data<double>()[4] = 50;
    CHECK(r.at({1}) == 50);  // the view sees the write
    Tensor d = t.dimshuffle({-1, 1, 0});
    CHECK(d.shape() == Shape{1, 3, 2});
    CHECK_THROWS_WITH_AS(t.dimshuffle({0}), "dimshuffle drops axis 1 of size 3 (only size-1 axes can be dropped)",
                         UsageError);
}

TEST_CASE("every dtype converts and reports its name") {
    Tensor t = T64({4}, {-1.5, 0, 2.7, 255});
    CHECK(t.astype(DType::int64).to_doubles() == std::vector<double>{-1, 0, 2, 255});
    CHECK(t.astype(DType::int32).to_doubles() == std::vector<double>{-1, 0, 2, 255});
    CHECK(t.astype(DType::uint8).at({3}) == 255);
    CHECK(t.astype(DType::int16).to_doubles() == std::vector<double>{-1, 0, 2, 255});
    CHECK(T64({2}, {-1.5, 100}).astype(DType::int8).to_doubles() == std::vector<double>{-1, 100});
    CHECK(t.astype(DType::uint16).at({3}) == 255);
    CHECK(t.astype(DType::uint32).at({2}) == 2);
    for (const char* n : {"int8", "int16", "uint16", "uint32"}) CHECK(dtype_name(dtype_from_name(n)) == n);
    CHECK(t.astype(DType::boolean).to_doubles() == std::vector<double>{1, 0, 1, 1});
    CHECK(t.astype(DType::float32).at({2}) == static_cast<double>(2.7f));
    CHECK(dtype_from_name("bool") == DType::boolean);
    CHECK_THROWS_WITH_AS(dtype_from_name("float16"),
                         "unknown dtype 'float16' (expected float32, float64, int64, int32, int16, int8, uint32, "
                         "uint16, uint8 or bool)", UsageError);
    CHECK_THROWS_WITH_AS(t.data<float>(), "Tensor: data requested as float32 but the tensor is float64", UsageError);
}

TEST_CASE("ensure reuses a buffer nothing else holds") {
    Tensor t = Tensor::empty(DType::float64, {20, 784});
    const void* p = t.raw_data();
    auto before = storage_allocation_count();
    t.ensure(DType::float64, {20, 784});
    CHECK(t.raw_data() == p);
    CHECK(storage_allocation_count() == before);
    Tensor alias = t;  // now shared: ensure must not overwrite the alias's data
    t.ensure(DType::float64, {20, 784});
    CHECK(t.raw_data() != alias.raw_data());
    CHECK(storage_allocation_count() == before + 1);
}

TEST_CASE("bad shapes and indices are reported") {
    CHECK_THROWS_WITH_AS(Tensor::from_vector<double>({2, 2}, {1, 2, 3}), "Tensor::from_vector: 3 values do not fill shape (2, 2)",
                         UsageError);
    Tensor t = T64({2}, {1, 2});
    CHECK_THROWS_WITH_AS(t.at({2}), "Tensor::at: index 2 out of range for axis 0 of size 2", UsageError);
    CHECK_THROWS_WITH_AS(t.item(), "Tensor::item: tensor of shape (2,) has more than one element", UsageError);
    Tensor u = T64({3}, {1, 2, 3});
    CHECK_THROWS_WITH_AS(t.copy_from(u), "Tensor::copy_from: shape (3,) does not match (2,)", UsageError);
}

TEST_CASE("size arithmetic is checked: overflowing shapes are errors, never small buffers") {
    const std::int64_t g = std::int64_t(1) << 32;
    CHECK_THROWS_WITH_AS(Tensor::zeros(DType::float64, {g, g}), "shape (4294967296, 4294967296) has more than 2^63 - 1 elements",
                         UsageError);
    CHECK_THROWS_WITH_AS(Tensor::empty(DType::float64, {std::int64_t(1) << 31, std::int64_t(1) << 31}),
                         "shape (2147483648, 2147483648) needs more than 2^63 - 1 bytes", UsageError);
    CHECK_THROWS_WITH_AS(Tensor::empty(DType::uint8, {3, -1}), "negative dimension in shape (3, -1)", UsageError);
    CHECK_THROWS_WITH_AS(checked_mul(std::int64_t(1) << 40, std::int64_t(1) << 40, "test"),
                         "test: 1099511627776 x 1099511627776 overflows a 64-bit size", UsageError);
    Tensor t = Tensor::zeros(DType::float32, {2, 3});
    CHECK_THROWS_AS(t.ensure(DType::float64, {g, g}), UsageError);
    CHECK(t.size() == 6);

    // Through compiled graphs: a reshape whose sizes overflow, an arange too long to store.
    Variable x = vector("x");
    Variable a = lscalar("a");
    Variable b = lscalar("b");
    Function r = function({x, a, b}, {x.reshape({a, b})});
    CHECK_THROWS_WITH_AS(r({Tensor::zeros(DType::float64, {4}), g, g}), "Reshape: 4294967296 x 4294967296 overflows a 64-bit size",
                         UsageError);
    CHECK(r({Tensor::zeros(DType::float64, {4}), 2, 2})[0].shape() == Shape{2, 2});
    Function ar = function({a, b}, {arange(a, b)});
    CHECK_THROWS_WITH_AS(ar({std::numeric_limits<std::int64_t>::min(), std::numeric_limits<std::int64_t>::max()}),
                         doctest::Contains("too many to store"), UsageError);
    CHECK(ar({-2, 2})[0].to_doubles() == std::vector<double>{-2, -1, 0, 1});
}

// A constant list whose last quarter is zero: the case GCC 12.2 built by broadcasting the first
// element under -march=native on AVX-512 Intel cores (CMakeLists.txt checks for it and works
// around it). Every width of list, float32 and float64, must come back as written.
TEST_CASE("constant lists with zero tails arrive as written") {
    CHECK(T64({2, 2}, {1, 1, 1, 0}).to_doubles() == std::vector<double>{1, 1, 1, 0});
    CHECK(T64({4}, {2, 2, 0, 0}).to_doubles() == std::vector<double>{2, 2, 0, 0});
    CHECK(T64({8}, {3, 3, 3, 3, 3, 3, 3, 0}).to_doubles() == std::vector<double>{3, 3, 3, 3, 3, 3, 3, 0});
    CHECK(T32({8}, {1, 1, 1, 1, 1, 1, 1, 0}).to_doubles() == std::vector<double>{1, 1, 1, 1, 1, 1, 1, 0});
    CHECK(I64({4}, {5, 5, 5, 0}).to_doubles() == std::vector<double>{5, 5, 5, 0});
}

TEST_CASE("copies of strided views (permuted axes, negative steps, dtype changes) read every element where it is") {
    std::vector<double> v(2 * 3 * 4);
    for (std::size_t i = 0; i < v.size(); ++i) v[i] = static_cast<double>(i);
    Tensor t = T64({2, 3, 4}, v);
    // view[a][b][c] = t[b][2c][3 - a]: axes (2, 0, 1), the first reversed, every other entry of the last.
    Tensor view = t.dimshuffle({2, 0, 1}).slice(0, 3, -1, -1).slice(2, 0, 3, 2);
    REQUIRE(view.shape() == Shape{4, 2, 2});
    for (DType dt : {DType::float64, DType::float32, DType::int64}) {
        Tensor c = view.astype(dt);
        CHECK(c.is_contiguous());
        const std::vector<double> got = c.to_doubles();
        std::size_t k = 0;
        for (int a = 0; a < 4; ++a) {
            for (int b = 0; b < 2; ++b) {
                for (int cc = 0; cc < 2; ++cc) CHECK(got[k++] == v[static_cast<std::size_t>(b * 12 + (2 * cc) * 4 + (3 - a))]);
            }
        }
    }
    // Into a strided destination: a transposed copy written through a view.
    Tensor dst = Tensor::zeros(DType::float64, {4, 2});
    dst.transpose().copy_from(T64({2, 4}, {1, 2, 3, 4, 5, 6, 7, 8}));
    CHECK(dst.to_doubles() == std::vector<double>{1, 5, 2, 6, 3, 7, 4, 8});
    // Zero-size and 0-d copies.
    CHECK(Tensor::zeros(DType::float32, {0, 3}).transpose().copy().size() == 0);
    CHECK(Tensor::scalar<double>(2.5).astype(DType::float32).to_doubles() == std::vector<double>{2.5});
}
