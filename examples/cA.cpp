// The tutorials' cA.py (test_cA): a contractive autoencoder on MNIST, printing per epoch the
// numbers the tutorial prints (numpy.mean(c_array[0]) and numpy.mean(sqrt(c_array[1])): the
// first two minibatches' [reconstruction cost, Jacobian norm] pairs, as the tutorial takes
// them), then writing cae_filters.png.
#include <chrono>
#include <cmath>
#include <cstdio>
#include <iostream>

#include <fmt/format.h>

#include "examples/io/checkpoint.hpp"
#include "examples/io/files.hpp"
#include "examples/io/flags.hpp"
#include "examples/io/numpy_like.hpp"
#include "examples/io/png.hpp"
#include "examples/io/tile.hpp"
#include "examples/io/training.hpp"
#include "models/cA.hpp"
#include "theanine.hpp"

using namespace theanine;
namespace np = theanine::io::numpy;

namespace {

// numpy.mean of two values of the outputs' dtype, as Python prints it.
std::string mean2(double a, double b, DType dt) {
    if (dt == DType::float32) {
        const float v[2] = {static_cast<float>(a), static_cast<float>(b)};
        return np::scalar_str(np::mean(v, 2), true);
    }
    const double v[2] = {a, b};
    return np::scalar_str(np::mean(v, 2));
}

}  // namespace

int main(int argc, char** argv) {
    int epochs = 20, batch_size = 10, hidden = 500;
    double learning_rate = 0.01, contraction_level = 0.1;
    io::CommonFlags common;
    io::FlagParser flags("cA", "A contractive autoencoder on MNIST, as the tutorials' cA.py.");
    flags.add("epochs", &epochs, 1, "training epochs");
    flags.add("batch-size", &batch_size, 1, "minibatch size");
    flags.add("learning-rate", &learning_rate, 0, 1e6, "SGD step");
    flags.add("contraction-level", &contraction_level, 0, 1e6, "weight of the Jacobian norm in the cost");
    flags.add("hidden", &hidden, 1, "hidden units");
    common.output = "cA_plots";
    common.add_to(flags, "folder to write W, b and b_prime into (cA_*.npy)", "cae_filters.png");
    flags.parse(argc, argv);
    try {
        common.apply();
        const DType fx = config().floatX;
        io::MnistSplits d = io::load_mnist_splits(common);
        SharedVariable train_set_x = shared(d.train_x, "train_set_x", true);
        const std::int64_t n_train_batches = io::count_batches(d.train_x.dim(0), batch_size, "training");
        if (n_train_batches < 2) throw UsageError("cA: needs at least two minibatches (the tutorial prints from two)");
        Variable index = lscalar("index");
        Variable x = matrix("x");
        RandomState rng(123);
        models::cA ca(rng, x, 28 * 28, hidden, batch_size);
        auto [cost, updates] = ca.get_cost_updates(contraction_level, learning_rate);
        const long bs = batch_size;
        const CompileOptions options = io::compile_options(common);
        Function train_ca = function({index}, {ca.L_rec.mean(), ca.L_jacob}, updates,
                                     {{x, train_set_x[{slice(index * bs, (index + 1) * bs)}]}}, options);
        // Resumable: the parameters, the position, and the epoch's first two minibatches'
        // figures (all the epoch's line needs).
        io::Run run(common);
        const std::vector<SharedVariable> state = ca.params();
        std::int64_t epoch0 = 0, batch0 = 0, steps = 0;
        std::vector<double> first0;
        if (run.resumed) {
            io::set_values(*run.resumed, "state", state);
            epoch0 = io::get_int(*run.resumed, "epoch");
            batch0 = io::get_int(*run.resumed, "batch");
            steps = io::get_int(*run.resumed, "steps");
            first0 = run.resumed->at("first").to_doubles();
        }
        auto checkpoint = [&](std::int64_t epoch, std::int64_t batch, const std::vector<double>& first) {
            io::Checkpoint ck;
            io::put_values(ck, "state", state);
            ck["epoch"] = io::int_entry(epoch);
            ck["batch"] = io::int_entry(batch);
            ck["steps"] = io::int_entry(steps);
            ck["first"] = Tensor::from_vector<double>({static_cast<std::int64_t>(first.size())}, first);
            run.put_progress(ck);
            run.checkpoints.save(ck);
        };
        const auto start = std::chrono::steady_clock::now();
        for (std::int64_t epoch = epoch0; epoch < epochs; ++epoch) {
            // c_array = numpy.vstack(c): row i holds minibatch i's [mean L_rec, L_jacob]; the
            // line reads rows 0 and 1 only, kept here as [r0, j0, r1, j1].
            std::vector<double> first = epoch == epoch0 ? first0 : std::vector<double>();
            io::Progress progress(fmt::format("epoch {}", epoch));
            for (std::int64_t b = epoch == epoch0 ? batch0 : 0; b < n_train_batches; ++b) {
                auto out = train_ca({static_cast<long>(b)});
                if (!std::isfinite(out[0].item())) {
                    progress.clear();
                    throw UsageError(fmt::format("the reconstruction cost became {} at epoch {}, minibatch {}",
                                                 out[0].item(), epoch, b));
                }
                if (b < 2) {
                    first.push_back(out[0].item());
                    first.push_back(out[1].item());
                }
                ++steps;
                progress.update(b + 1, n_train_batches);
                if (b + 1 < n_train_batches && (run.checkpoints.due(steps) || io::stop_requested())) {
                    checkpoint(epoch, b + 1, first);
                    if (io::stop_requested()) throw io::Stopped{io::stop_status()};
                }
            }
            const std::vector<std::array<double, 2>> c = {{first[0], first[1]}, {first[2], first[3]}};
            progress.clear();
            const std::string rec = mean2(c[0][0], c[0][1], fx);
            const std::string jac = fx == DType::float32
                                        ? mean2(std::sqrt(static_cast<float>(c[1][0])), std::sqrt(static_cast<float>(c[1][1])), fx)
                                        : mean2(std::sqrt(c[1][0]), std::sqrt(c[1][1]), fx);
            run.out.print(fmt::format("Training epoch {}, reconstruction cost  {}  jacobian norm  {}", epoch, rec, jac));
            // The numbers as printed (float32 ones in their shortest form read back exactly).
            run.metrics.add("reconstruction cost", "reconstruction cost", static_cast<double>(epoch), std::stod(rec));
            run.metrics.add("jacobian norm", "jacobian norm", static_cast<double>(epoch), std::stod(jac));
            run.metrics.write();
            if (epoch + 1 < epochs) {
                checkpoint(epoch + 1, 0, {});
                if (io::stop_requested()) throw io::Stopped{io::stop_status()};
            }
        }
        const double minutes = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count() / 60.0;
        io::write_graph_html(common.graph_html, train_ca);
        std::fprintf(stderr, "The code for file cA ran for %.2fm\n", minutes);
        Tensor image = io::tile_raster_images(ca.W.get_value(true).transpose(), {28, 28}, {10, 10}, {1, 1});
        io::write_png_gray(common.output + "/cae_filters.png", image);
        if (!common.save.empty()) io::save_params(ca.params(), common.save, "cA_");
    } catch (const io::Stopped& stop) {
        std::cerr << "cA: stopped by a signal; resume with --resume " << common.checkpoint << "\n";
        return stop.status;
    } catch (const Error& e) {
        std::cerr << "cA: " << e.what() << "\n";
        return 1;
    }
    return 0;
}
