#include "examples/io/tile.hpp"

#include <algorithm>
#include <vector>

#include <fmt/format.h>

namespace theanine::io {

Tensor tile_raster_images(const Tensor& X, std::array<int, 2> img_shape, std::array<int, 2> tile_shape,
                          std::array<int, 2> tile_spacing, bool scale) {
    if (X.ndim() != 2 || X.dim(1) != static_cast<std::int64_t>(img_shape[0]) * img_shape[1]) {
        throw UsageError(fmt::format("tile_raster_images: X has shape {}, expected (n, {})", shape_string(X.shape()),
                                     img_shape[0] * img_shape[1]));
    }
    const int H = (img_shape[0] + tile_spacing[0]) * tile_shape[0] - tile_spacing[0];
    const int W = (img_shape[1] + tile_spacing[1]) * tile_shape[1] - tile_spacing[1];
    Tensor out = Tensor::zeros(DType::uint8, {H, W});
    std::uint8_t* o = out.data<std::uint8_t>();
    const std::vector<double> xs = X.to_doubles();
    const std::int64_t row = X.dim(1);
    for (int tr = 0; tr < tile_shape[0]; ++tr) {
        for (int tc = 0; tc < tile_shape[1]; ++tc) {
            const std::int64_t idx = static_cast<std::int64_t>(tr) * tile_shape[1] + tc;
            if (idx >= X.dim(0)) continue;
            std::vector<double> img(xs.begin() + idx * row, xs.begin() + (idx + 1) * row);
            if (scale) {
                const double mn = *std::min_element(img.begin(), img.end());
                for (double& v : img) v -= mn;
                const double mx = *std::max_element(img.begin(), img.end());
                for (double& v : img) v *= 1.0 / (mx + 1e-8);
            }
            for (int r = 0; r < img_shape[0]; ++r) {
                for (int c = 0; c < img_shape[1]; ++c) {
                    const double v = img[static_cast<std::size_t>(r) * img_shape[1] + c] * 255;
                    const int y = tr * (img_shape[0] + tile_spacing[0]) + r;
                    const int x = tc * (img_shape[1] + tile_spacing[1]) + c;
                    o[static_cast<std::size_t>(y) * W + x] = static_cast<std::uint8_t>(v);
                }
            }
        }
    }
    return out;
}

}  // namespace theanine::io
