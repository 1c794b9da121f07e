// tile_raster_images with the tutorials' semantics: each row of X is an image of img_shape;
// the first tile_shape[0]*tile_shape[1] rows are laid out row by row with tile_spacing
// pixels of 0 between them. With scale_rows_to_unit_interval each image is shifted by its
// minimum and divided by (its max + 1e-8); pixel values are then value * 255 truncated to
// uint8, as numpy does when it stores floats in a uint8 array.
#pragma once

#include <array>

#include "graph/tensor.hpp"

namespace theanine::io {

Tensor tile_raster_images(const Tensor& X, std::array<int, 2> img_shape, std::array<int, 2> tile_shape,
                          std::array<int, 2> tile_spacing = {0, 0}, bool scale_rows_to_unit_interval = true);

}  // namespace theanine::io
