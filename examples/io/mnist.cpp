#include "examples/io/mnist.hpp"

#include <algorithm>
#include <optional>

#include <cstring>
#include <filesystem>
#include <fstream>
#include <vector>

#include <fmt/format.h>
#include <zlib.h>

#include "examples/io/files.hpp"

namespace theanine::io {

namespace {

const char* kFetchHint = "fetch the data with scripts/fetch-mnist.sh (it writes data/mnist)";

// The bytes of an IDX file, plain or gzip-compressed, read as the header asks: the header
// is read first, and the data only once the header has been checked against the file.
class IdxSource {
public:
    explicit IdxSource(const std::string& path) : path_(path) {
        gz_ = path.size() > 3 && path.compare(path.size() - 3, 3, ".gz") == 0;
        if (!gz_) {
            plain_.emplace(path);
            return;
        }
        check_regular_file(path);
        std::error_code ec;
        compressed_size_ = std::filesystem::file_size(path, ec);
        g_ = gzopen(path.c_str(), "rb");
        if (!g_) throw UsageError(fmt::format("cannot open {}; {}", path, kFetchHint));
    }
    ~IdxSource() {
        if (g_) gzclose(g_);
    }
    IdxSource(const IdxSource&) = delete;
    IdxSource& operator=(const IdxSource&) = delete;

    // Reads up to n bytes; returns how many (fewer only at the end of the data).
    std::size_t read_some(unsigned char* dst, std::size_t n) {
        if (!gz_) {
            const std::size_t k = static_cast<std::size_t>(std::min<std::uint64_t>(n, plain_->size() - plain_->offset()));
            plain_->read(dst, k, "the IDX data");
            return k;
        }
        std::size_t done = 0;
        while (done < n) {
            const unsigned chunk = static_cast<unsigned>(std::min<std::size_t>(n - done, 1u << 20));
            const int got = gzread(g_, dst + done, chunk);
            if (got < 0) gz_error();
            if (got == 0) break;
            done += static_cast<std::size_t>(got);
        }
        offset_ += done;
        if (done < n) {
            int err = Z_OK;
            gzerror(g_, &err);
            if (err != Z_OK) gz_error();
        }
        return done;
    }
    // Bytes left to read, when it can be known without reading them (a plain file).
    std::optional<std::uint64_t> remaining() const {
        if (gz_) return std::nullopt;
        return plain_->size() - plain_->offset();
    }
    // The largest data size the file could hold: deflate expands at most about 1032 times.
    std::uint64_t max_data_bytes() const {
        return gz_ ? compressed_size_ * 1040 + 4096 : plain_->size();
    }
    std::uint64_t offset() const { return gz_ ? offset_ : plain_->offset(); }

private:
    [[noreturn]] void gz_error() {
        int err = 0;
        std::string msg = gzerror(g_, &err);
        throw UsageError(fmt::format("{}: corrupt gzip data after {} decompressed bytes ({}); {}", path_, offset_, msg,
                                     kFetchHint));
    }
    std::string path_;
    bool gz_ = false;
    std::optional<InputFile> plain_;
    gzFile g_ = nullptr;
    std::uint64_t compressed_size_ = 0, offset_ = 0;
};

std::uint32_t be32(const unsigned char* b) {
    return (std::uint32_t(b[0]) << 24) | (std::uint32_t(b[1]) << 16) | (std::uint32_t(b[2]) << 8) | std::uint32_t(b[3]);
}

}  // namespace

Tensor read_idx(const std::string& path) {
    IdxSource src(path);
    unsigned char head[4 + 4 * 3];
    const std::size_t got = src.read_some(head, 4);
    if (got < 4) {
        throw UsageError(fmt::format("{}: file is {} bytes, too short for the 4-byte IDX magic number at offset 0; {}",
                                     path, got, kFetchHint));
    }
    if (head[0] != 0 || head[1] != 0 || head[2] != 0x08) {
        throw UsageError(fmt::format("{}: bad IDX magic number at offset 0: bytes {:02x} {:02x} {:02x} {:02x}, expected "
                                     "00 00 08 <ndim> (unsigned byte data); {}", path, head[0], head[1], head[2],
                                     head[3], kFetchHint));
    }
    const int ndim = head[3];
    if (ndim < 1 || ndim > 3) {
        throw UsageError(fmt::format("{}: IDX header at offset 3 says {} dimensions, expected 1 to 3", path, ndim));
    }
    const std::size_t header = 4 + 4 * static_cast<std::size_t>(ndim);
    const std::size_t dims_got = src.read_some(head + 4, header - 4);
    if (dims_got < header - 4) {
        throw UsageError(fmt::format("{}: truncated IDX header: {} bytes, the header needs {}; {}", path, 4 + dims_got,
                                     header, kFetchHint));
    }
    Shape shape;
    for (int i = 0; i < ndim; ++i) shape.push_back(be32(head + 4 + 4 * i));
    const std::uint64_t need = static_cast<std::uint64_t>(shape_size(shape));  // at most 2^96: checked
    if (auto left = src.remaining(); left && *left != need) {
        throw UsageError(fmt::format("{}: the header (dimensions {}) promises {} data bytes from offset {}, but the file "
                                     "has {} ({}); {}", path, shape_string(shape), need, header, *left,
                                     *left < need ? "truncated" : "trailing bytes", kFetchHint));
    }
    if (need > src.max_data_bytes()) {
        throw UsageError(fmt::format("{}: the header (dimensions {}) promises {} data bytes from offset {}, more than "
                                     "a file of this size can hold; {}", path, shape_string(shape), need, header,
                                     kFetchHint));
    }
    Tensor t = Tensor::empty(DType::uint8, shape);
    const std::size_t data_got = src.read_some(t.data<std::uint8_t>(), static_cast<std::size_t>(need));
    unsigned char extra = 0;
    const bool trailing = data_got == need && src.read_some(&extra, 1) == 1;
    if (data_got != need || trailing) {
        throw UsageError(fmt::format("{}: the header (dimensions {}) promises {} data bytes from offset {}, but the file "
                                     "has {} ({}); {}", path, shape_string(shape), need, header,
                                     trailing ? "more" : std::to_string(data_got), trailing ? "trailing bytes" : "truncated",
                                     kFetchHint));
    }
    return t;
}

namespace {
Tensor read_named(const std::string& dir, const std::string& name, const Shape& tail) {
    std::string p = dir + "/" + name;
    std::error_code ec;
    if (!std::filesystem::exists(p, ec) && std::filesystem::exists(p + ".gz", ec)) p += ".gz";
    if (!std::filesystem::exists(p, ec)) {
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
    std::error_code ec;
    if (!std::filesystem::is_directory(dir, ec)) {
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

Tensor mnist_pixels(const Tensor& images, std::int64_t begin, std::int64_t end, DType dtype, int pixel_scale) {
    if (pixel_scale != 255 && pixel_scale != 256) {
        throw UsageError(fmt::format("mnist_pixels: the pixel scale must be 255 or 256, got {}", pixel_scale));
    }
    if (begin < 0 || end > images.dim(0) || begin > end) {
        throw UsageError(fmt::format("mnist_pixels: range [{}, {}) outside the {} images", begin, end, images.dim(0)));
    }
    const std::int64_t row = images.size() / std::max<std::int64_t>(images.dim(0), 1);
    Tensor out = Tensor::empty(dtype, {end - begin, row});
    const std::uint8_t* src = images.data<std::uint8_t>() + begin * row;
    float table[256];
    for (int v = 0; v < 256; ++v) table[v] = static_cast<float>(v / static_cast<double>(pixel_scale));
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
