// The tutorials' rbm.py (test_rbm): an RBM trained on MNIST by PCD-15 with MRG binomial draws,
// the filters written after every epoch, then samples from a persistent chain started at test
// images, each after plot_every Gibbs steps (a 1000-step scan of gibbs_vhv).
#include <chrono>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <iostream>

#include <fmt/format.h>

#include "examples/io/checkpoint.hpp"
#include "examples/io/files.hpp"
#include "examples/io/flags.hpp"
#include "examples/io/mnist.hpp"
#include "examples/io/numpy_like.hpp"
#include "examples/io/png.hpp"
#include "examples/io/tile.hpp"
#include "examples/io/training.hpp"
#include "theanine.hpp"

using namespace theanine;
namespace np = theanine::io::numpy;

namespace {

// numpy.mean of a list of the cost's values, in the cost's dtype, as Python prints it.
std::string mean_text(const std::vector<double>& v, DType dt) {
    if (dt == DType::float32) {
        std::vector<float> f(v.begin(), v.end());
        return np::scalar_str(np::mean(f.data(), static_cast<std::int64_t>(f.size())), true);
    }
    return np::scalar_str(np::mean(v.data(), static_cast<std::int64_t>(v.size())));
}

}  // namespace

int main(int argc, char** argv) {
    int epochs = 15, batch_size = 20, k = 15, hidden = 500, chains = 20, samples = 10, plot_every = 1000;
    double learning_rate = 0.1;
    io::CommonFlags common;
    io::FlagParser flags("rbm", "A restricted Boltzmann machine trained by PCD-k on MNIST, then sampled, as the "
                                "tutorials' rbm.py.");
    flags.add("epochs", &epochs, 1, "training epochs");
    flags.add("batch-size", &batch_size, 1, "minibatch size (and the persistent chain's rows)");
    flags.add("learning-rate", &learning_rate, 0, 1e6, "SGD step");
    flags.add("k", &k, 1, "Gibbs steps per update (PCD-k)");
    flags.add("hidden", &hidden, 1, "hidden units");
    flags.add("chains", &chains, 1, "parallel chains sampled after training");
    flags.add("samples", &samples, 0, "samples plotted per chain");
    flags.add("plot-every", &plot_every, 1, "Gibbs steps between plotted samples");
    common.output = "rbm_plots";
    common.add_to(flags, "folder to write W, hbias and vbias into (rbm_*.npy)", "filters_at_epoch_N.png and samples.png");
    flags.parse(argc, argv);
    try {
        common.apply();
        const DType fx = config().floatX;
        io::MnistSplits d = io::load_mnist_splits(common);
        SharedVariable train_set_x = shared(d.train_x, "train_set_x", true);
        const std::int64_t n_train_batches = io::count_batches(d.train_x.dim(0), batch_size, "training");

        Variable index = lscalar("index");
        Variable x = matrix("x");
        RandomState rng(123);
        auto theano_rng = std::make_shared<MRG_RandomStreams>(static_cast<std::uint32_t>(rng.randint(1LL << 30)));
        SharedVariable persistent_chain = shared(Tensor::zeros(fx, {batch_size, hidden}), "persistent_chain", true);
        models::RBM rbm(x, 28 * 28, hidden, rng, theano_rng);
        auto [cost, updates] = rbm.get_cost_updates(learning_rate, persistent_chain, k);
        const long bs = batch_size;
        const CompileOptions options = io::compile_options(common);
        Function train_rbm =
            function({index}, {cost}, updates, {{x, train_set_x[{slice(index * bs, (index + 1) * bs)}]}}, options);

        // Everything a step changes: the parameters, the persistent chain, the bit index of the
        // pseudo-likelihood and the generator states; with the position and the epoch's costs.
        io::Run run(common);
        std::vector<SharedVariable> state = rbm.params();
        state.push_back(persistent_chain);
        state.push_back(*rbm.bit_i_idx);
        for (const auto& v : theano_rng->state_variables()) state.push_back(v);
        std::int64_t epoch0 = 0, batch0 = 0, steps = 0;
        io::EpochCosts costs0;
        if (run.resumed) {
            io::set_values(*run.resumed, "state", state);
            epoch0 = io::get_int(*run.resumed, "epoch");
            batch0 = io::get_int(*run.resumed, "batch");
            steps = io::get_int(*run.resumed, "steps");
            costs0 = io::EpochCosts::from_tensor(run.resumed->at("costs"));
        }
        auto checkpoint = [&](std::int64_t epoch, std::int64_t batch, const io::EpochCosts& costs) {
            io::Checkpoint c;
            io::put_values(c, "state", state);
            c["epoch"] = io::int_entry(epoch);
            c["batch"] = io::int_entry(batch);
            c["steps"] = io::int_entry(steps);
            c["costs"] = costs.to_tensor();
            run.put_progress(c);
            run.checkpoints.save(c);
        };

        double plotting_time = 0;
        const auto start = std::chrono::steady_clock::now();
        for (std::int64_t epoch = epoch0; epoch < epochs; ++epoch) {
            io::EpochCosts c = epoch == epoch0 ? costs0 : io::EpochCosts();
            io::Progress progress(fmt::format("epoch {}", epoch));
            for (std::int64_t b = epoch == epoch0 ? batch0 : 0; b < n_train_batches; ++b) {
                const double v = train_rbm.scalar({static_cast<long>(b)});
                if (!std::isfinite(v)) {
                    progress.clear();
                    throw UsageError(fmt::format("the cost became {} at epoch {}, minibatch {}", v, epoch, b));
                }
                c.add(v);
                ++steps;
                progress.update(b + 1, n_train_batches);
                if (b + 1 < n_train_batches && (run.checkpoints.due(steps) || io::stop_requested())) {
                    checkpoint(epoch, b + 1, c);
                    if (io::stop_requested()) throw io::Stopped{io::stop_status()};
                }
            }
            progress.clear();
            const std::string cost = mean_text(c.values, fx);
            run.out.print(fmt::format("Training epoch {}, cost is  {}", epoch, cost));
            run.metrics.add("cost", "training cost", static_cast<double>(epoch), std::stod(cost));
            run.metrics.write();
            const auto p0 = std::chrono::steady_clock::now();
            Tensor image = io::tile_raster_images(rbm.W.get_value(true).transpose(), {28, 28}, {10, 10}, {1, 1});
            io::write_png_gray(fmt::format("{}/filters_at_epoch_{}.png", common.output, epoch), image);
            plotting_time += std::chrono::duration<double>(std::chrono::steady_clock::now() - p0).count();
            checkpoint(epoch + 1, 0, io::EpochCosts());
            if (io::stop_requested()) throw io::Stopped{io::stop_status()};
        }
        const double training = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count() - plotting_time;
        io::write_graph_html(common.graph_html, train_rbm);
        run.out.print(fmt::format("Training took {:f} minutes", training / 60.));
        if (!common.save.empty()) io::save_params(rbm.params(), common.save, "rbm_");

        // Sampling: persistent chains started at `chains` consecutive test images.
        const std::int64_t n_test = d.test_x.dim(0);
        if (n_test <= chains) throw UsageError(fmt::format("--chains {} needs more than {} test images", chains, n_test));
        const std::int64_t test_idx = rng.randint(n_test - chains);
        SharedVariable persistent_vis_chain =
            shared(d.test_x.slice(0, test_idx, test_idx + chains, 1).copy(), "persistent_vis_chain");
        ScanResult r = scan(
            [&rbm](const std::vector<Variable>& a) {
                auto g = rbm.gibbs_vhv(a[0]);
                return ScanStep(std::vector<Variable>(g.begin(), g.end()));
            },
            {},
            {ScanOutput::none(), ScanOutput::none(), ScanOutput::none(), ScanOutput::none(), ScanOutput::none(),
             ScanOutput(persistent_vis_chain)},
            {}, plot_every, -1, false, "gibbs_vhv");
        Updates sample_updates = r.updates;
        Variable vis_mf = r[4][{-1}], vis_sample = r[5][{-1}];
        sample_updates.emplace_back(persistent_vis_chain, vis_sample);
        Function sample_fn = function({}, {vis_mf, vis_sample}, sample_updates);
        Tensor image_data = Tensor::zeros(DType::uint8, {29 * samples + 1, 29 * chains - 1});
        for (int idx = 0; idx < samples; ++idx) {
            auto out = sample_fn();
            run.out.print(fmt::format(" ... plotting sample {}", idx));
            Tensor tiles = io::tile_raster_images(out[0], {28, 28}, {1, chains}, {1, 1});
            image_data.slice(0, 29 * idx, 29 * idx + 28, 1).copy_from(tiles);
        }
        io::write_png_gray(common.output + "/samples.png", image_data);
    } catch (const io::Stopped& stop) {
        std::cerr << "rbm: stopped by a signal; resume with --resume " << common.checkpoint << "\n";
        return stop.status;
    } catch (const Error& e) {
        std::cerr << "rbm: " << e.what() << "\n";
        return 1;
    }
    return 0;
}
