// 8-bit grayscale PNG files through libpng.
#pragma once

#include <string>

#include "graph/tensor.hpp"

namespace theanine::io {

// image: uint8 (height, width).
void write_png_gray(const std::string& path, const Tensor& image);
Tensor read_png_gray(const std::string& path);
// Decodes any PNG file whole, as 8-bit RGBA: uint8 (height, width, 4). Throws UsageError
// naming the file and libpng's reason when it does not decode.
Tensor read_png_rgba(const std::string& path);

}  // namespace theanine::io
