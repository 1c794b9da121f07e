// 8-bit grayscale PNG files through libpng.
#pragma once

#include <string>

#include "graph/tensor.hpp"

namespace theanine::io {

// image: uint8 (height, width).
void write_png_gray(const std::string& path, const Tensor& image);
Tensor read_png_gray(const std::string& path);

}  // namespace theanine::io
