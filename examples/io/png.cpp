#include "examples/io/png.hpp"

#include "examples/io/files.hpp"

#include <cstdio>
#include <cstring>
#include <memory>
#include <vector>

#include <fmt/format.h>
#include <png.h>

namespace theanine::io {

namespace {
struct FileCloser {
    void operator()(std::FILE* f) const { std::fclose(f); }
};
}  // namespace

void write_png_gray(const std::string& path, const Tensor& image0) {
    if (image0.dtype() != DType::uint8 || image0.ndim() != 2) {
        throw UsageError(fmt::format("write_png_gray: expected a uint8 matrix, got {} {}", dtype_name(image0.dtype()),
                                     shape_string(image0.shape())));
    }
    const Tensor image = image0.contiguous();
    AtomicFile file(path);
    png_structp png = png_create_write_struct(PNG_LIBPNG_VER_STRING, nullptr, nullptr, nullptr);
    png_infop info = png ? png_create_info_struct(png) : nullptr;
    if (!png || !info) {
        png_destroy_write_struct(&png, &info);
        throw Error("write_png_gray: libpng could not start");
    }
    if (setjmp(png_jmpbuf(png))) {
        png_destroy_write_struct(&png, &info);
        throw UsageError(fmt::format("write_png_gray: libpng failed writing {}", path));
    }
    png_init_io(png, file.stream());
    const auto h = static_cast<png_uint_32>(image.dim(0)), w = static_cast<png_uint_32>(image.dim(1));
    png_set_IHDR(png, info, w, h, 8, PNG_COLOR_TYPE_GRAY, PNG_INTERLACE_NONE, PNG_COMPRESSION_TYPE_DEFAULT,
                 PNG_FILTER_TYPE_DEFAULT);
    png_write_info(png, info);
    const std::uint8_t* d = image.data<std::uint8_t>();
    for (png_uint_32 r = 0; r < h; ++r) png_write_row(png, const_cast<png_bytep>(d + static_cast<std::size_t>(r) * w));
    png_write_end(png, nullptr);
    png_destroy_write_struct(&png, &info);
    file.commit();
}

Tensor read_png_gray(const std::string& path) {
    check_regular_file(path);
    std::unique_ptr<std::FILE, FileCloser> f(std::fopen(path.c_str(), "rb"));
    if (!f) throw UsageError(fmt::format("read_png_gray: cannot open {}", path));
    png_structp png = png_create_read_struct(PNG_LIBPNG_VER_STRING, nullptr, nullptr, nullptr);
    png_infop info = png ? png_create_info_struct(png) : nullptr;
    if (!png || !info) {
        png_destroy_read_struct(&png, &info, nullptr);
        throw Error("read_png_gray: libpng could not start");
    }
    Tensor out;
    if (setjmp(png_jmpbuf(png))) {
        png_destroy_read_struct(&png, &info, nullptr);
        throw UsageError(fmt::format("read_png_gray: {} is not a readable PNG", path));
    }
    png_init_io(png, f.get());
    png_read_info(png, info);
    const png_uint_32 w = png_get_image_width(png, info), h = png_get_image_height(png, info);
    if (png_get_color_type(png, info) != PNG_COLOR_TYPE_GRAY || png_get_bit_depth(png, info) != 8) {
        png_destroy_read_struct(&png, &info, nullptr);
        throw UsageError(fmt::format("read_png_gray: {} is not 8-bit grayscale", path));
    }
    out = Tensor::empty(DType::uint8, {static_cast<std::int64_t>(h), static_cast<std::int64_t>(w)});
    std::uint8_t* d = out.data<std::uint8_t>();
    for (png_uint_32 r = 0; r < h; ++r) png_read_row(png, d + static_cast<std::size_t>(r) * w, nullptr);
    png_destroy_read_struct(&png, &info, nullptr);
    return out;
}

Tensor read_png_rgba(const std::string& path) {
    check_regular_file(path);
    png_image image;
    std::memset(&image, 0, sizeof image);
    image.version = PNG_IMAGE_VERSION;
    if (!png_image_begin_read_from_file(&image, path.c_str())) {
        throw UsageError(fmt::format("read_png_rgba: {} is not a readable PNG ({})", path, image.message));
    }
    image.format = PNG_FORMAT_RGBA;
    Tensor out = Tensor::empty(DType::uint8, {static_cast<std::int64_t>(image.height),
                                              static_cast<std::int64_t>(image.width), 4});
    if (!png_image_finish_read(&image, nullptr, out.raw_data(), 0, nullptr)) {
        const std::string why = image.message;
        png_image_free(&image);
        throw UsageError(fmt::format("read_png_rgba: {} does not decode ({})", path, why));
    }
    return out;
}

}  // namespace theanine::io
