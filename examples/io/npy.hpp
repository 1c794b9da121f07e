// numpy .npy files (format 1.0, little-endian, C order): write any tensor, read the dtypes
// numpy writes for our types (uint32 data is widened to int64).
#pragma once

#include <string>

#include "graph/tensor.hpp"

namespace theanine::io {

void save_npy(const std::string& path, const Tensor& t);
Tensor load_npy(const std::string& path);

}  // namespace theanine::io
