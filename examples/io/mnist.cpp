#include "examples/io/mnist.hpp"

#include <cstring>
#include <filesystem>
#include <fstream>
#include <vector>

#include <fmt/format.h>
#include <zlib.h>

namespace theanine::io {

namespace {

const char* kFetchHint = "fetch the data with scripts/fetch-mnist.sh (it writes data/mnist)";

std::vector<unsigned char> read_bytes(const std::string& path) {
    const bool gz = path.size() > 3 && path.compare(path.size() - 3, 3, ".gz") == 0;
    std::vector<unsigned char> out;
    if (!gz) {
        std::ifstream f(path, std::ios::binary);
        if (!f) throw UsageError(fmt::format("cannot open {}; {}", path, kFetchHint));
        out.assign(std::istreambuf_iterator<char>(f), std::istreambuf_iterator<char>());
        return out;
    }
    gzFile g = gzopen(path.c_str(), "rb");
    if (!g) throw UsageError(fmt::format("cannot open {}; {}", path, kFetchHint));
    unsigned char buf[1 << 16];
    while (true) {
        int n = gzread(g, buf, sizeof buf);
        if (n < 0) {
            int err = 0;
            std::string msg = gzerror(g, &err);
            gzclose(g);
            throw UsageError(fmt::format("{}: corrupt gzip data after {} decompressed bytes ({}); {}", path, out.size(),
                                         msg, kFetchHint));
        }
        if (n == 0) break;
        out.insert(out.end(), buf, buf + n);
    }
    int err = Z_OK;
    std::string msg = gzerror(g, &err);
    gzclose(g);
    if (err != Z_OK) {
        throw UsageError(fmt::format("{}: corrupt gzip data after {} decompressed bytes ({}); {}", path, out.size(), msg,
                                     kFetchHint));
    }
    return out;
}

std::uint32_t be32(const std::vector<unsigned char>& b, std::size_t off) {
    return (std::uint32_t(b[off]) << 24) | (std::uint32_t(b[off + 1]) << 16) | (std::uint32_t(b[off + 2]) << 8) |
           std::uint32_t(b[off + 3]);
}

}  // namespace

Tensor read_idx(const std::string& path) {
    std::vector<unsigned char> b = read_bytes(path);
    if (b.size() < 4) {
        throw UsageError(fmt::format("{}: file is {} bytes, too short for the 4-byte IDX magic number at offset 0; {}",
                                     path, b.size(), kFetchHint));
    }
    if (b[0] != 0 || b[1] != 0 || b[2] != 0x08) {
        throw UsageError(fmt::format("{}: bad IDX magic number at offset 0: bytes {:02x} {:02x} {:02x} {:02x}, expected "
                                     "00 00 08 <ndim> (unsigned byte data); {}", path, b[0], b[1], b[2], b[3], kFetchHint));
    }
    const int ndim = b[3];
    if (ndim < 1 || ndim > 3) {
        throw UsageError(fmt::format("{}: IDX header at offset 3 says {} dimensions, expected 1 to 3", path, ndim));
    }
    const std::size_t header = 4 + 4 * static_cast<std::size_t>(ndim);
    if (b.size() < header) {
        throw UsageError(fmt::format("{}: truncated IDX header: {} bytes, the header needs {}; {}", path, b.size(),
                                     header, kFetchHint));
    }
    Shape shape;
    for (int i = 0; i < ndim; ++i) shape.push_back(be32(b, 4 + 4 * static_cast<std::size_t>(i)));
    const std::size_t need = header + static_cast<std::size_t>(shape_size(shape));
    if (b.size() != need) {
        throw UsageError(fmt::format("{}: the header (dimensions {}) promises {} data bytes from offset {}, but the file "
                                     "has {} ({}); {}", path, shape_string(shape), need - header, header,
                                     b.size() - header, b.size() < need ? "truncated" : "trailing bytes", kFetchHint));
    }
    Tensor t = Tensor::empty(DType::uint8, shape);
    std::memcpy(t.raw_data(), b.data() + header, need - header);
    return t;
}

namespace {
Tensor read_named(const std::string& dir, const std::string& name, const Shape& tail) {
    std::string p = dir + "/" + name;
    if (!std::filesystem::exists(p) && std::filesystem::exists(p + ".gz")) p += ".gz";
    if (!std::filesystem::exists(p)) {
        throw UsageError(fmt::format("MNIST file {} (or {}.gz) not found; {}", dir + "/" + name, dir + "/" + name,
                                     kFetchHint));
    }
    Tensor t = read_idx(p);
    Shape got(t.shape().begin() + 1, t.shape().end());
    if (got != tail) {
        throw UsageError(fmt::format("{}: dimensions {} do not look like MNIST (expected (n, {}))", p,
                                     shape_string(t.shape()), shape_string(tail)));
    }
    return t;
}
}  // namespace

Mnist load_mnist(const std::string& dir) {
    if (!std::filesystem::is_directory(dir)) {
        throw UsageError(fmt::format("MNIST folder {} does not exist; {}", dir, kFetchHint));
    }
    Mnist m;
    m.train_images = read_named(dir, "train-images-idx3-ubyte", {28, 28});
    m.train_labels = read_named(dir, "train-labels-idx1-ubyte", {});
    m.test_images = read_named(dir, "t10k-images-idx3-ubyte", {28, 28});
    m.test_labels = read_named(dir, "t10k-labels-idx1-ubyte", {});
    if (m.train_images.dim(0) != m.train_labels.dim(0) || m.test_images.dim(0) != m.test_labels.dim(0)) {
        throw UsageError(fmt::format("MNIST in {}: image and label counts differ ({} / {} train, {} / {} test)", dir,
                                     m.train_images.dim(0), m.train_labels.dim(0), m.test_images.dim(0),
                                     m.test_labels.dim(0)));
    }
    return m;
}

Tensor mnist_pixels(const Tensor& images, std::int64_t begin, std::int64_t end, DType dtype) {
    if (begin < 0 || end > images.dim(0) || begin > end) {
        throw UsageError(fmt::format("mnist_pixels: range [{}, {}) outside the {} images", begin, end, images.dim(0)));
    }
    const std::int64_t row = images.size() / std::max<std::int64_t>(images.dim(0), 1);
    Tensor out = Tensor::empty(dtype, {end - begin, row});
    const std::uint8_t* src = images.data<std::uint8_t>() + begin * row;
    float table[256];
    for (int v = 0; v < 256; ++v) table[v] = static_cast<float>(v / 255.0);
    const std::int64_t n = out.size();
    if (dtype == DType::float32) {
        float* d = out.data<float>();
        for (std::int64_t i = 0; i < n; ++i) d[i] = table[src[i]];
    } else if (dtype == DType::float64) {
        double* d = out.data<double>();
        for (std::int64_t i = 0; i < n; ++i) d[i] = table[src[i]];
    } else {
        throw UsageError("mnist_pixels: dtype must be float32 or float64");
    }
    return out;
}

}  // namespace theanine::io
