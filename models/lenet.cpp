#include "models/lenet.hpp"

#include <cmath>

#include <fmt/format.h>

#include "graph/config.hpp"
#include "ops/conv.hpp"
#include "ops/elemwise.hpp"
#include "ops/pool.hpp"
#include "ops/shape.hpp"

namespace theanine::models {

LeNetConvPoolLayer::LeNetConvPoolLayer(RandomState& rng, const Variable& in, std::array<std::int64_t, 4> filter_shape,
                                       std::array<std::int64_t, 4> image_shape, std::array<std::int64_t, 2> poolsize)
    : input(in) {
    if (image_shape[1] != filter_shape[1]) {
        throw UsageError(fmt::format("LeNetConvPoolLayer: image_shape has {} channels but filter_shape has {}",
                                     image_shape[1], filter_shape[1]));
    }
    const DType fx = config().floatX;
    const std::int64_t fan_in = filter_shape[1] * filter_shape[2] * filter_shape[3];
    const std::int64_t fan_out = filter_shape[0] * filter_shape[2] * filter_shape[3] / (poolsize[0] * poolsize[1]);
    const double bound = std::sqrt(6.0 / static_cast<double>(fan_in + fan_out));
    const Shape fs(filter_shape.begin(), filter_shape.end());
    W = shared(rng.uniform(-bound, bound, fs).astype(fx), "W", true);
    b = shared(Tensor::zeros(fx, {filter_shape[0]}), "b", true);
    Variable conv_out = conv2d(input, W, {.input_shape = image_shape, .filter_shape = filter_shape});
    Variable pooled_out = pool_2d(conv_out, poolsize, {.ignore_border = true});
    output = tanh(pooled_out + b.dimshuffle({-1, 0, -1, -1}));
}

namespace {

Variable as_images(const Variable& x, std::int64_t batch_size) {
    return reshape(x, std::vector<std::int64_t>{batch_size, 1, 28, 28});
}

}  // namespace

LeNet5::LeNet5(RandomState& rng, const Variable& x, std::int64_t batch_size, std::array<std::int64_t, 2> nkerns)
    : layer0(rng, as_images(x, batch_size), {nkerns[0], 1, 5, 5}, {batch_size, 1, 28, 28}),
      layer1(rng, layer0.output, {nkerns[1], nkerns[0], 5, 5}, {batch_size, nkerns[0], 12, 12}),
      layer2(rng, layer1.output.flatten(2), static_cast<int>(nkerns[1] * 4 * 4), 500, Activation::tanh),
      layer3(layer2.output, 500, 10) {}

std::vector<SharedVariable> LeNet5::params() const {
    return {layer3.W, layer3.b, layer2.W, layer2.b, layer1.W, layer1.b, layer0.W, layer0.b};
}

}  // namespace theanine::models
