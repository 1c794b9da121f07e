#include "examples/io/npy.hpp"

#include "examples/io/atomic_file.hpp"

#include <cstring>
#include <fstream>
#include <vector>

#include <fmt/format.h>

namespace theanine::io {

namespace {
std::string descr_of(DType dt) {
    switch (dt) {
    case DType::float32: return "<f4";
    case DType::float64: return "<f8";
    case DType::int64: return "<i8";
    case DType::int32: return "<i4";
    case DType::uint8: return "|u1";
    case DType::boolean: return "|b1";
    }
    return "";
}
}  // namespace

void save_npy(const std::string& path, const Tensor& t0) {
    const Tensor t = t0.contiguous();
    std::string shape = "(";
    for (int i = 0; i < t.ndim(); ++i) shape += std::to_string(t.dim(i)) + (t.ndim() == 1 ? "," : (i + 1 < t.ndim() ? ", " : ""));
    shape += ")";
    std::string header = fmt::format("{{'descr': '{}', 'fortran_order': False, 'shape': {}, }}", descr_of(t.dtype()), shape);
    std::size_t total = 10 + header.size() + 1;
    header.append((64 - total % 64) % 64, ' ');
    header += '\n';
    AtomicFile f(path);
    const char magic[] = "\x93NUMPY\x01\x00";
    f.write(magic, 8);
    const std::uint16_t hlen = static_cast<std::uint16_t>(header.size());
    const char lenb[2] = {static_cast<char>(hlen & 0xff), static_cast<char>(hlen >> 8)};
    f.write(lenb, 2);
    f.write(header.data(), header.size());
    f.write(t.raw_data(), static_cast<std::size_t>(t.size()) * dtype_size(t.dtype()));
    f.commit();
}

Tensor load_npy(const std::string& path) {
    std::ifstream f(path, std::ios::binary);
    if (!f) throw UsageError(fmt::format("load_npy: cannot open {}", path));
    std::vector<char> b((std::istreambuf_iterator<char>(f)), std::istreambuf_iterator<char>());
    if (b.size() < 10 || std::memcmp(b.data(), "\x93NUMPY", 6) != 0) {
        throw UsageError(fmt::format("load_npy: {}: no .npy magic at offset 0", path));
    }
    const int major = static_cast<unsigned char>(b[6]);
    std::size_t hlen, hstart;
    if (major == 1) {
        hlen = static_cast<unsigned char>(b[8]) | (static_cast<std::size_t>(static_cast<unsigned char>(b[9])) << 8);
        hstart = 10;
    } else {
        if (b.size() < 12) throw UsageError(fmt::format("load_npy: {}: truncated header", path));
        hlen = 0;
        for (int i = 0; i < 4; ++i) hlen |= static_cast<std::size_t>(static_cast<unsigned char>(b[8 + i])) << (8 * i);
        hstart = 12;
    }
    if (b.size() < hstart + hlen) throw UsageError(fmt::format("load_npy: {}: truncated header", path));
    std::string h(b.data() + hstart, hlen);
    auto field = [&](const std::string& key) {
        auto p = h.find("'" + key + "'");
        if (p == std::string::npos) throw UsageError(fmt::format("load_npy: {}: header has no '{}'", path, key));
        return p + key.size() + 2;
    };
    std::size_t dp = h.find('\'', h.find(':', field("descr")));
    std::string descr = h.substr(dp + 1, h.find('\'', dp + 1) - dp - 1);
    if (h.find("True", field("fortran_order")) < h.find(',', field("fortran_order"))) {
        throw UsageError(fmt::format("load_npy: {}: Fortran order is not supported", path));
    }
    std::size_t sp = h.find('(', field("shape"));
    std::string sh = h.substr(sp + 1, h.find(')', sp) - sp - 1);
    Shape shape;
    std::size_t i = 0;
    while (i < sh.size()) {
        while (i < sh.size() && (sh[i] == ' ' || sh[i] == ',')) ++i;
        if (i >= sh.size()) break;
        std::size_t j = i;
        while (j < sh.size() && sh[j] != ',') ++j;
        shape.push_back(std::stoll(sh.substr(i, j - i)));
        i = j;
    }
    const char* data = b.data() + hstart + hlen;
    const std::size_t avail = b.size() - hstart - hlen;
    const std::int64_t n = shape_size(shape);
    auto need = [&](std::size_t esz) {
        if (avail < static_cast<std::size_t>(n) * esz) {
            throw UsageError(fmt::format("load_npy: {}: {} data bytes at offset {}, shape {} needs {}", path, avail,
                                         hstart + hlen, shape_string(shape), static_cast<std::size_t>(n) * esz));
        }
    };
    if (descr == "<u4") {
        need(4);
        Tensor t = Tensor::empty(DType::int64, shape);
        for (std::int64_t k = 0; k < n; ++k) {
            std::uint32_t v;
            std::memcpy(&v, data + 4 * k, 4);
            t.data<std::int64_t>()[k] = v;
        }
        return t;
    }
    DType dt;
    if (descr == "<f8") dt = DType::float64;
    else if (descr == "<f4") dt = DType::float32;
    else if (descr == "<i8") dt = DType::int64;
    else if (descr == "<i4") dt = DType::int32;
    else if (descr == "|u1") dt = DType::uint8;
    else if (descr == "|b1") dt = DType::boolean;
    else throw UsageError(fmt::format("load_npy: {}: unsupported dtype '{}'", path, descr));
    need(dtype_size(dt));
    Tensor t = Tensor::empty(dt, shape);
    std::memcpy(t.raw_data(), data, static_cast<std::size_t>(n) * dtype_size(dt));
    return t;
}

}  // namespace theanine::io
