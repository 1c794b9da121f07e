#include "examples/io/npy.hpp"

#include "examples/io/files.hpp"

#include <cstring>
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
    case DType::int8: return "|i1";
    case DType::int16: return "<i2";
    case DType::uint16: return "<u2";
    case DType::uint32: return "<u4";
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

namespace {

// The header dictionary of a .npy file, parsed strictly: {'descr': '<f8', 'fortran_order':
// False, 'shape': (3, 4), } with keys in any order, each once, and nothing else.
struct NpyHeader {
    std::string descr;
    bool fortran_order = false;
    Shape shape;
};

class HeaderParser {
public:
    HeaderParser(const std::string& path, const std::string& text, std::size_t base)
        : path_(path), s_(text), base_(base) {}

    NpyHeader parse() {
        NpyHeader h;
        bool has_descr = false, has_order = false, has_shape = false;
        expect('{');
        while (true) {
            skip_space();
            if (peek() == '}') break;
            const std::string key = quoted();
            expect(':');
            skip_space();
            if (key == "descr" && !has_descr) {
                h.descr = quoted();
                has_descr = true;
            } else if (key == "fortran_order" && !has_order) {
                h.fortran_order = boolean();
                has_order = true;
            } else if (key == "shape" && !has_shape) {
                h.shape = tuple();
                has_shape = true;
            } else {
                fail(fmt::format("unexpected or repeated key '{}'", key));
            }
            skip_space();
            if (peek() == ',') {
                ++i_;
                continue;
            }
            if (peek() != '}') fail("expected ',' or '}'");
        }
        ++i_;
        skip_space();
        if (i_ != s_.size()) fail("text after the header dictionary");
        if (!has_descr || !has_order || !has_shape) fail("the header needs 'descr', 'fortran_order' and 'shape'");
        return h;
    }

private:
    [[noreturn]] void fail(const std::string& what) const {
        throw UsageError(fmt::format("load_npy: {}: malformed header at byte offset {}: {}", path_, base_ + i_, what));
    }
    char peek() const { return i_ < s_.size() ? s_[i_] : '\0'; }
    void skip_space() {
        while (i_ < s_.size() && (s_[i_] == ' ' || s_[i_] == '\n')) ++i_;
    }
    void expect(char c) {
        skip_space();
        if (peek() != c) fail(fmt::format("expected '{}'", c));
        ++i_;
    }
    std::string quoted() {
        skip_space();
        const char q = peek();
        if (q != '\'' && q != '"') fail("expected a quoted string");
        const std::size_t end = s_.find(q, i_ + 1);
        if (end == std::string::npos) fail("unterminated string");
        std::string out = s_.substr(i_ + 1, end - i_ - 1);
        i_ = end + 1;
        return out;
    }
    bool boolean() {
        if (s_.compare(i_, 4, "True") == 0) {
            i_ += 4;
            return true;
        }
        if (s_.compare(i_, 5, "False") == 0) {
            i_ += 5;
            return false;
        }
        fail("expected True or False");
    }
    Shape tuple() {
        if (peek() != '(') fail("expected a shape tuple");
        ++i_;
        Shape shape;
        while (true) {
            skip_space();
            if (peek() == ')') break;
            if (!(peek() >= '0' && peek() <= '9')) fail("a shape entry must be a non-negative integer");
            std::int64_t v = 0;
            while (peek() >= '0' && peek() <= '9') {
                if (__builtin_mul_overflow(v, 10, &v) || __builtin_add_overflow(v, peek() - '0', &v)) {
                    fail("a shape entry is larger than 2^63 - 1");
                }
                ++i_;
            }
            shape.push_back(v);
            skip_space();
            if (peek() == ',') {
                ++i_;
            } else if (peek() != ')') {
                fail("expected ',' or ')' in the shape");
            }
        }
        ++i_;
        if (shape.size() > 32) fail("more than 32 dimensions");
        return shape;
    }
    const std::string& path_;
    const std::string& s_;
    std::size_t base_;
    std::size_t i_ = 0;
};

}  // namespace

Tensor load_npy(const std::string& path) {
    InputFile f(path);
    unsigned char pre[12];
    if (f.size() < 10) throw UsageError(fmt::format("load_npy: {}: no .npy magic at offset 0 (the file has {} bytes)", path, f.size()));
    f.read(pre, 8, "the .npy magic");
    if (std::memcmp(pre, "\x93NUMPY", 6) != 0) throw UsageError(fmt::format("load_npy: {}: no .npy magic at offset 0", path));
    const int major = pre[6];
    std::size_t hlen = 0;
    if (major == 1) {
        f.read(pre + 8, 2, "the header length");
        hlen = pre[8] | (static_cast<std::size_t>(pre[9]) << 8);
    } else if (major == 2 || major == 3) {
        f.read(pre + 8, 4, "the header length");
        for (int i = 0; i < 4; ++i) hlen |= static_cast<std::size_t>(pre[8 + i]) << (8 * i);
    } else {
        throw UsageError(fmt::format("load_npy: {}: unsupported .npy format version {} at offset 6", path, major));
    }
    const std::size_t hstart = f.offset();
    if (hlen > f.size() - hstart) {
        throw UsageError(fmt::format("load_npy: {}: truncated header: {} bytes at offset {}, the file has {} after it",
                                     path, hlen, hstart, f.size() - hstart));
    }
    std::string text(hlen, '\0');
    f.read(text.data(), hlen, "the header");
    const NpyHeader h = HeaderParser(path, text, hstart).parse();
    if (h.fortran_order) throw UsageError(fmt::format("load_npy: {}: Fortran order is not supported", path));
    const bool widen_u4 = h.descr == "<u4";
    DType dt;
    if (widen_u4) dt = DType::int64;
    else if (h.descr == "<f8") dt = DType::float64;
    else if (h.descr == "<f4") dt = DType::float32;
    else if (h.descr == "<i8") dt = DType::int64;
    else if (h.descr == "<i4") dt = DType::int32;
    else if (h.descr == "|u1") dt = DType::uint8;
    else if (h.descr == "|b1") dt = DType::boolean;
    else if (h.descr == "|i1") dt = DType::int8;
    else if (h.descr == "<i2") dt = DType::int16;
    else if (h.descr == "<u2") dt = DType::uint16;
    else throw UsageError(fmt::format("load_npy: {}: unsupported dtype '{}'", path, h.descr));
    const std::size_t esz = widen_u4 ? 4 : dtype_size(dt);
    const std::size_t bytes = checked_byte_size(h.shape, esz);
    const std::uint64_t avail = f.size() - f.offset();
    if (avail < bytes) {
        throw UsageError(fmt::format("load_npy: {}: {} data bytes at offset {}, shape {} needs {}", path, avail,
                                     f.offset(), shape_string(h.shape), bytes));
    }
    Tensor t = Tensor::empty(dt, h.shape);
    if (!widen_u4) {
        f.read(t.raw_data(), bytes, "the data");
        if (dt == DType::boolean) {
            for (std::int64_t k = 0; k < t.size(); ++k) {
                auto* b = static_cast<unsigned char*>(t.raw_data());
                if (b[k] > 1) {
                    throw UsageError(fmt::format("load_npy: {}: bool value {} at byte offset {}", path, b[k], f.offset() - bytes + k));
                }
            }
        }
        return t;
    }
    std::vector<std::uint32_t> raw(static_cast<std::size_t>(t.size()));
    f.read(raw.data(), bytes, "the data");
    for (std::int64_t k = 0; k < t.size(); ++k) t.data<std::int64_t>()[k] = raw[static_cast<std::size_t>(k)];
    return t;
}

}  // namespace theanine::io
