// Loop templates shared by the elementwise-style kernels (elemwise, subtensor increments).
// Internal to ops/.
#pragma once

#include <array>
#include <cstdint>
#include <vector>

#include "graph/tensor.hpp"

namespace theanine::loops {

// Loops over the output in C order; inputs are read through broadcast strides.
template <class TO, class TI, std::size_t N, class F>
void elemwise_loop(const std::array<const Tensor*, N>& in, Tensor& out, F f) {
    const Shape& os = out.shape();
    const int nd = static_cast<int>(os.size());
    const std::int64_t total = out.size();
    if (total == 0) return;
    std::array<const TI*, N> ptr{};
    std::array<Shape, N> st;
    bool flat = true;
    for (std::size_t k = 0; k < N; ++k) {
        ptr[k] = in[k]->template data<TI>();
        const Tensor& t = *in[k];
        st[k].assign(static_cast<std::size_t>(nd), 0);
        for (int d = 0; d < nd; ++d) {
            st[k][d] = (t.dim(d) == 1 && os[d] != 1) ? 0 : t.strides()[d];
        }
        if (!(t.shape() == os && t.is_contiguous())) flat = false;
    }
    TO* o = out.data<TO>();
    if (flat) {
        if constexpr (N == 1) {
            const TI* a = ptr[0];
            for (std::int64_t i = 0; i < total; ++i) o[i] = f(a[i]);
        } else if constexpr (N == 2) {
            const TI* a = ptr[0];
            const TI* b = ptr[1];
            for (std::int64_t i = 0; i < total; ++i) o[i] = f(a[i], b[i]);
        } else {
            for (std::int64_t i = 0; i < total; ++i) o[i] = f(ptr[0][i], ptr[1][i], ptr[2][i]);
        }
        return;
    }
    const std::int64_t inner = nd ? os[nd - 1] : 1;
    std::array<std::int64_t, N> inner_st{};
    for (std::size_t k = 0; k < N; ++k) inner_st[k] = nd ? st[k][nd - 1] : 0;
    std::vector<std::int64_t> idx(static_cast<std::size_t>(nd > 0 ? nd - 1 : 0), 0);
    std::array<std::int64_t, N> off{};
    for (std::int64_t pos = 0; pos < total; pos += inner) {
        // Rows read contiguously or broadcast (a bias added to each row of a minibatch) get
        // loops the compiler vectorises; other strides are read one by one.
        if constexpr (N == 1) {
            const TI* a = ptr[0] + off[0];
            if (inner_st[0] == 1) {
                for (std::int64_t j = 0; j < inner; ++j) o[pos + j] = f(a[j]);
            } else {
                for (std::int64_t j = 0; j < inner; ++j) o[pos + j] = f(a[j * inner_st[0]]);
            }
        } else if constexpr (N == 2) {
            const TI* a = ptr[0] + off[0];
            const TI* b = ptr[1] + off[1];
            const std::int64_t sa = inner_st[0], sb = inner_st[1];
            if (sa == 1 && sb == 1) {
                for (std::int64_t j = 0; j < inner; ++j) o[pos + j] = f(a[j], b[j]);
            } else if (sa == 1 && sb == 0) {
                const TI bv = b[0];
                for (std::int64_t j = 0; j < inner; ++j) o[pos + j] = f(a[j], bv);
            } else if (sa == 0 && sb == 1) {
                const TI av = a[0];
                for (std::int64_t j = 0; j < inner; ++j) o[pos + j] = f(av, b[j]);
            } else {
                for (std::int64_t j = 0; j < inner; ++j) o[pos + j] = f(a[j * sa], b[j * sb]);
            }
        } else {
            for (std::int64_t j = 0; j < inner; ++j) {
                o[pos + j] = f(ptr[0][off[0] + j * inner_st[0]], ptr[1][off[1] + j * inner_st[1]],
                               ptr[2][off[2] + j * inner_st[2]]);
            }
        }
        for (int d = nd - 2; d >= 0; --d) {
            idx[d]++;
            for (std::size_t k = 0; k < N; ++k) off[k] += st[k][d];
            if (idx[d] < os[d]) break;
            for (std::size_t k = 0; k < N; ++k) off[k] -= st[k][d] * os[d];
            idx[d] = 0;
        }
    }
}

// Calls body(i, offsets) for each output element i in C order, with each input's element
// offset under broadcasting. Used by kernels whose inputs have different dtypes.
template <std::size_t N, class Body>
void broadcast_iterate(const std::array<const Tensor*, N>& in, const Shape& os, Body body) {
    const int nd = static_cast<int>(os.size());
    std::array<Shape, N> st;
    for (std::size_t k = 0; k < N; ++k) {
        st[k].assign(static_cast<std::size_t>(nd), 0);
        for (int d = 0; d < nd; ++d) st[k][d] = (in[k]->dim(d) == 1 && os[d] != 1) ? 0 : in[k]->strides()[d];
    }
    const std::int64_t total = shape_size(os);
    std::vector<std::int64_t> idx(static_cast<std::size_t>(nd), 0);
    std::array<std::int64_t, N> off{};
    for (std::int64_t i = 0; i < total; ++i) {
        body(i, off);
        for (int d = nd - 1; d >= 0; --d) {
            idx[d]++;
            for (std::size_t k = 0; k < N; ++k) off[k] += st[k][d];
            if (idx[d] < os[d]) break;
            for (std::size_t k = 0; k < N; ++k) off[k] -= st[k][d] * os[d];
            idx[d] = 0;
        }
    }
}

}  // namespace theanine::loops
