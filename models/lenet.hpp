/// \file
/// The convolutional network of the Deep Learning Tutorials (LeNet5): convolution + max-pooling
/// layers, a tanh hidden layer and a logistic regression, written as the tutorial writes it.
#pragma once

#include <array>
#include <vector>

#include "graph/graph.hpp"
#include "models/mlp.hpp"
#include "ops/random.hpp"

namespace theanine::models {

/// tanh(pool_2d(conv2d(input, W), poolsize, ignore_border) + b[None, :, None, None]).
/// W (n_filters, channels, rows, cols) starts uniform in +-sqrt(6 / (fan_in + fan_out)) with
/// fan_in = channels*rows*cols and fan_out = n_filters*rows*cols / prod(poolsize) (rounded
/// down), drawn from rng; b starts at zero. image_shape is declared to conv2d (and checked at
/// run time).
class LeNetConvPoolLayer {
public:
    LeNetConvPoolLayer(RandomState& rng, const Variable& input, std::array<std::int64_t, 4> filter_shape,
                       std::array<std::int64_t, 4> image_shape, std::array<std::int64_t, 2> poolsize = {2, 2});
    std::vector<SharedVariable> params() const { return {W, b}; }

    SharedVariable W, b;
    Variable input, output;
};

/// evaluate_lenet5's network for 28x28 images: two conv-pool layers of nkerns[0] and nkerns[1]
/// 5x5 filters, a tanh hidden layer of 500 units and a 10-way logistic regression. x is a
/// (batch_size, 784) matrix.
class LeNet5 {
public:
    LeNet5(RandomState& rng, const Variable& x, std::int64_t batch_size, std::array<std::int64_t, 2> nkerns);
    Variable negative_log_likelihood(const Variable& y) const { return layer3.negative_log_likelihood(y); }
    Variable errors(const Variable& y) const { return layer3.errors(y); }
    /// Top layer first, as the tutorial lists them: layer3, layer2, layer1, layer0.
    std::vector<SharedVariable> params() const;

    LeNetConvPoolLayer layer0, layer1;
    HiddenLayer layer2;
    LogisticRegression layer3;
};

}  // namespace theanine::models
