// The tutorials' convolutional_mlp.py (LeNet5): two convolution + max-pooling layers, a tanh
// hidden layer and a logistic regression, trained by minibatch SGD with early stopping.
// Prints the tutorial's lines and writes the first layer's filters to filters_layer0.png.
#include <cmath>
#include <cstdio>
#include <iostream>

#include <fmt/format.h>
#include <fmt/printf.h>

#include "examples/io/files.hpp"
#include "examples/io/flags.hpp"
#include "examples/io/png.hpp"
#include "examples/io/tile.hpp"
#include "examples/io/training.hpp"
#include "models/lenet.hpp"
#include "theanine.hpp"

using namespace theanine;

namespace {

// The filters of a (n, channels, rows, cols) weight tensor, channel 0, tiled in a near-square
// grid and magnified `zoom` times (nearest neighbour) so 5x5 filters can be seen.
Tensor filter_image(const Tensor& W, int zoom) {
    const std::int64_t n = W.dim(0), rows = W.dim(2), cols = W.dim(3);
    Tensor first = W.astype(DType::float64).contiguous();
    std::vector<double> flat(static_cast<std::size_t>(n * rows * cols));
    const std::int64_t per_filter = W.dim(1) * rows * cols;
    for (std::int64_t f = 0; f < n; ++f) {
        for (std::int64_t i = 0; i < rows * cols; ++i) {
            flat[static_cast<std::size_t>(f * rows * cols + i)] = first.data<double>()[f * per_filter + i];
        }
    }
    const int grid_cols = static_cast<int>(std::ceil(std::sqrt(static_cast<double>(n))));
    const int grid_rows = static_cast<int>((n + grid_cols - 1) / grid_cols);
    Tensor tiles = io::tile_raster_images(Tensor::from_vector<double>({n, rows * cols}, flat),
                                          {static_cast<int>(rows), static_cast<int>(cols)}, {grid_rows, grid_cols},
                                          {1, 1});
    const std::int64_t h = tiles.dim(0), w = tiles.dim(1);
    Tensor big = Tensor::zeros(tiles.dtype(), {h * zoom, w * zoom});
    const auto* src = tiles.contiguous().data<std::uint8_t>();
    auto* dst = big.data<std::uint8_t>();
    for (std::int64_t y = 0; y < h * zoom; ++y) {
        for (std::int64_t x = 0; x < w * zoom; ++x) dst[y * w * zoom + x] = src[(y / zoom) * w + x / zoom];
    }
    return big;
}

}  // namespace

int main(int argc, char** argv) {
    int epochs = 200, batch_size = 500;
    std::uint32_t seed = 23455;
    double learning_rate = 0.1;
    std::string nkerns_text = "20,50";
    io::CommonFlags common;
    io::FlagParser flags("convolutional_mlp", "LeNet5 on MNIST, as the tutorials' convolutional_mlp.py.");
    flags.add("epochs", &epochs, 1, "maximum training epochs");
    flags.add("nkerns", &nkerns_text, "filters of the two convolution layers, e.g. 20,50");
    flags.add("batch-size", &batch_size, 1, "minibatch size");
    flags.add("learning-rate", &learning_rate, 0, 1e6, "SGD step");
    flags.add("seed", &seed, "seed of the weight initialisation (numpy RandomState)");
    common.add_to(flags, "folder to write the parameters into", "filters_layer0.png");
    flags.parse(argc, argv);
    try {
        const std::vector<int> nk = io::parse_int_list("--nkerns", nkerns_text);
        if (nk.size() != 2 || nk[0] < 1 || nk[1] < 1) {
            throw UsageError(fmt::format("--nkerns: expected two positive counts such as 20,50, got \"{}\"", nkerns_text));
        }
        common.apply();
        io::Run run(common);
        const CompileOptions options = io::compile_options(common);
        io::MnistSplits d = io::load_mnist_splits(common);
        io::SharedSplits sets(d);
        const long bs = batch_size;
        Variable index = lscalar("index");
        Variable x = matrix("x");
        Variable y = lvector("y");
        RandomState rng(seed);
        // Printed once: a resumed run has printed them again from its checkpoint.
        if (!run.resumed) run.out.print("... building the model");
        models::LeNet5 net(rng, x, bs, {nk[0], nk[1]});
        Variable cost = net.negative_log_likelihood(y);
        Function test_model = io::minibatch_function(index, {net.errors(y)}, {}, x, y, sets.test_x, sets.test_y, bs);
        Function validate_model =
            io::minibatch_function(index, {net.errors(y)}, {}, x, y, sets.valid_x, sets.valid_y, bs);
        const auto params = net.params();
        const std::vector<Variable> pv(params.begin(), params.end());
        const auto g = grad(cost, pv);
        Updates updates;
        for (std::size_t i = 0; i < params.size(); ++i) updates.emplace_back(params[i], params[i] - learning_rate * g[i]);
        Function train_model = io::minibatch_function(index, {cost}, updates, x, y, sets.train_x, sets.train_y, bs, options);
        const std::int64_t n_train = io::count_batches(d.train_x.dim(0), bs, "training"),
                           n_valid = io::count_batches(d.valid_x.dim(0), bs, "validation"),
                           n_test = io::count_batches(d.test_x.dim(0), bs, "test");
        if (!run.resumed) run.out.print("... training");
        io::EarlyStopping rule;
        rule.n_epochs = epochs;
        rule.patience = 10000;
        rule.print_iter_every = 100;
        auto r = io::train_with_early_stopping([&](std::int64_t i) { return train_model.scalar({static_cast<long>(i)}); },
                                               n_train, [&] { return io::mean_over_batches(validate_model, n_valid); },
                                               [&] { return io::mean_over_batches(test_model, n_test); }, rule,
                                               run.resumable(params));
        io::write_graph_html(common.graph_html, train_model);
        run.out.print("Optimization complete.");
        run.out.print(fmt::sprintf("Best validation score of %f %% obtained at iteration %lld, with test performance "
                                   "%f %%", r.best_validation * 100, static_cast<long long>(r.best_iter + 1),
                                   r.test_score * 100));
        std::fprintf(stderr, "The code for file convolutional_mlp ran for %.2fm (%d epochs, %.2f s per epoch)\n",
                     r.seconds / 60, r.epochs, r.seconds / r.epochs);
        io::write_png_gray(common.output + "/filters_layer0.png", filter_image(net.layer0.W.get_value(true), 8));
        if (!common.save.empty()) io::save_params(params, common.save, "lenet_");
    } catch (const io::Stopped& stop) {
        std::cerr << "convolutional_mlp: stopped by a signal; resume with --resume " << common.checkpoint << "\n";
        return stop.status;
    } catch (const Error& e) {
        std::cerr << "convolutional_mlp: " << e.what() << "\n";
        return 1;
    }
    return 0;
}
