// The dA tutorial's main job: train a denoising autoencoder on MNIST for each corruption
// level and save its filters as an image, as `python dA.py` does.
#include <unistd.h>

#include <chrono>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <iostream>
#include <limits>
#include <map>
#include <memory>
#include <optional>
#include <string>

#include <fmt/format.h>

#include "examples/io/checkpoint.hpp"
#include "examples/io/files.hpp"
#include "examples/io/mnist.hpp"
#include "examples/io/numpy_like.hpp"
#include "examples/io/training.hpp"
#include "examples/io/npy.hpp"
#include "examples/io/png.hpp"
#include "examples/io/tile.hpp"
#include "theanine.hpp"
#ifdef THEANINE_HAVE_MPI
#include "examples/io/parallel.hpp"
#endif

using namespace theanine;

namespace {

struct Flags {
    int epochs = 15;
    int batch_size = 20;
    double learning_rate = 0.1;
    int hidden = 500;
    std::vector<double> corruption = {0.0, 0.3};
    std::string rng = "mrg";
    std::string data = "data/mnist";
    std::string output = "output";
    std::string floatX = "float64";
    std::uint32_t seed = 123;
    int threads = 0;
    std::int64_t train_size = 50000;
    int pixel_scale = 255;
    bool save_params = false;
    std::string checkpoint, resume;
    std::int64_t checkpoint_every = 500;
    bool nan_guard = false;
    std::string graph_html;
    bool data_parallel = false;
    int average_every = 0;
};

const char* kHelp = R"(usage: dA [flags]

Trains a denoising autoencoder on MNIST for each corruption level, as the Deep Learning
Tutorials' dA.py does, and writes filters_corruption_<pct>.png for each, and the costs of
every epoch to metrics.csv with their plot, curves.png and curves.svg.

  --epochs N            training epochs per model (default 15)
  --batch-size N        minibatch size (default 20)
  --learning-rate X     SGD step (default 0.1)
  --hidden N            hidden units (default 500)
  --corruption L[,L..]  corruption levels in [0, 1] (default 0,0.3)
  --rng mrg|numpy       corruption stream class: MRG_RandomStreams (as the shipped dA.py)
                        or the numpy-backed RandomStreams (default mrg)
  --data DIR            folder with the MNIST IDX files (default data/mnist)
  --output DIR          folder for the images, metrics and parameters (default output)
  --floatX T            float32 or float64 (default float64)
  --seed N              seed of numpy_rng (default 123)
  --threads N           threads for matrix products (default: all cores)
  --train-size N        training images used, from the start (default 50000)
  --pixel-scale 255|256 pixels as byte/255 (default, as the tutorial's loader) or byte/256
                        (as the original mnist.pkl.gz behind the documented figures)
  --save-params         also write W, b and b' of each model as .npy files
  --checkpoint DIR      write DIR/checkpoint.bin every --checkpoint-every minibatches, at
                        each epoch's end and on SIGINT/SIGTERM (then exit)
  --checkpoint-every N  minibatches between checkpoints (default 500)
  --resume DIR          continue the run checkpointed in DIR (same flags), printing its
                        lines again: the output is that of an uninterrupted run
  --nan-guard           check every step for NaN/inf and name the op that made one
  --graph-html FILE     write an HTML view of the last model's compiled training function
  --data-parallel       train on every process of an MPI job (mpirun -np N dA --data-parallel):
                        each takes 1/N of every minibatch (--batch-size is the whole minibatch)
                        and the gradients are averaged; rank 0 prints and writes the files. Rank
                        r > 0 draws its corruption from a stream seeded one apart per rank
  --average-every N     with --data-parallel: local steps, the parameters averaged every N
                        minibatches (default 0: the gradients every minibatch)
  --help                this text
)";

[[noreturn]] void bad_flag(const std::string& msg) {
    std::cerr << "dA: " << msg << "\n(run dA --help for the flags)\n";
    std::exit(2);
}

// An integer in [lo, hi], hi being the largest value the flag's own type holds.
long parse_int(const std::string& flag, const std::string& v, long lo, long hi) {
    try {
        std::size_t pos = 0;
        long x = std::stol(v, &pos);
        if (pos != v.size() || x < lo || x > hi) throw std::invalid_argument("range");
        return x;
    } catch (const std::exception&) {
        bad_flag(fmt::format("{} needs an integer in [{}, {}], got '{}'", flag, lo, hi, v));
    }
}

constexpr long kIntMax = std::numeric_limits<int>::max();

double parse_double(const std::string& flag, const std::string& v, double lo, double hi) {
    try {
        std::size_t pos = 0;
        double x = std::stod(v, &pos);
        if (pos != v.size() || !(x >= lo && x <= hi)) throw std::invalid_argument("range");
        return x;
    } catch (const std::exception&) {
        bad_flag(fmt::format("{} needs a number in [{}, {}], got '{}'", flag, lo, hi, v));
    }
}

Flags parse(int argc, char** argv) {
    Flags f;
    for (int i = 1; i < argc; ++i) {
        std::string a = argv[i];
        if (a == "--help" || a == "-h") {
            std::cout << kHelp;
            std::exit(0);
        }
        if (a == "--save-params" || a == "--nan-guard" || a == "--data-parallel") {
            (a == "--save-params" ? f.save_params : a == "--nan-guard" ? f.nan_guard : f.data_parallel) = true;
            continue;
        }
        std::string value;
        auto eq = a.find('=');
        if (eq != std::string::npos) {
            value = a.substr(eq + 1);
            a = a.substr(0, eq);
        } else {
            if (i + 1 >= argc) bad_flag(fmt::format("{} needs a value", a));
            value = argv[++i];
        }
        if (a == "--epochs") f.epochs = static_cast<int>(parse_int(a, value, 1, kIntMax));
        else if (a == "--batch-size") f.batch_size = static_cast<int>(parse_int(a, value, 1, kIntMax));
        else if (a == "--learning-rate") f.learning_rate = parse_double(a, value, 0, 1e6);
        else if (a == "--hidden") f.hidden = static_cast<int>(parse_int(a, value, 1, kIntMax));
        else if (a == "--corruption") {
            f.corruption.clear();
            std::size_t s = 0;
            while (s <= value.size()) {
                std::size_t e = value.find(',', s);
                if (e == std::string::npos) e = value.size();
                f.corruption.push_back(parse_double(a, value.substr(s, e - s), 0, 1));
                s = e + 1;
            }
        } else if (a == "--rng") {
            if (value != "mrg" && value != "numpy") bad_flag(fmt::format("--rng takes mrg or numpy, got '{}'", value));
            f.rng = value;
        } else if (a == "--data") f.data = value;
        else if (a == "--output") f.output = value;
        else if (a == "--graph-html") f.graph_html = value;
        else if (a == "--floatX") {
            if (value != "float32" && value != "float64") bad_flag(fmt::format("--floatX takes float32 or float64, got '{}'", value));
            f.floatX = value;
        } else if (a == "--seed") f.seed = static_cast<std::uint32_t>(parse_int(a, value, 0, 4294967295L));
        else if (a == "--threads") f.threads = static_cast<int>(parse_int(a, value, 1, kIntMax));
        else if (a == "--train-size") f.train_size = parse_int(a, value, 1, std::numeric_limits<long>::max());
        else if (a == "--pixel-scale") {
            if (value != "255" && value != "256") bad_flag(fmt::format("--pixel-scale takes 255 or 256, got '{}'", value));
            f.pixel_scale = value == "256" ? 256 : 255;
        }
        else if (a == "--average-every") f.average_every = static_cast<int>(parse_int(a, value, 0, kIntMax));
        else if (a == "--checkpoint") f.checkpoint = value;
        else if (a == "--resume") f.resume = value;
        else if (a == "--checkpoint-every") f.checkpoint_every = parse_int(a, value, 1, std::numeric_limits<long>::max());
        else bad_flag(fmt::format("unknown flag '{}'", a));
    }
    if (f.average_every > 0 && !f.data_parallel) bad_flag("--average-every needs --data-parallel");
    if (f.data_parallel && (!f.checkpoint.empty() || !f.resume.empty())) {
        bad_flag("--checkpoint and --resume are not available with --data-parallel");
    }
#ifndef THEANINE_HAVE_MPI
    if (f.data_parallel) bad_flag("--data-parallel: this dA was built without MPI (install libopenmpi-dev and rebuild)");
#endif
    return f;
}

// Where a run is: model (corruption level index), epoch, next minibatch, this epoch's costs
// so far, minibatches run in all, and the lines printed.
io::Checkpoint position(std::size_t level, std::int64_t epoch, std::int64_t batch, const io::EpochCosts& costs,
                        std::int64_t steps, const io::PrintedLines& out, const io::Metrics& metrics) {
    io::Checkpoint c;
    c["level"] = io::int_entry(static_cast<std::int64_t>(level));
    c["epoch"] = io::int_entry(epoch);
    c["batch"] = io::int_entry(batch);
    c["costs"] = costs.to_tensor();
    c["steps"] = io::int_entry(steps);
    c["printed"] = out.to_tensor();
    c["metrics"] = metrics.to_tensor();
    return c;
}

int stopped(const io::Checkpointer& checkpoints) {
    std::cerr << "dA: stopped by a signal"
              << (checkpoints.enabled() ? "; resume with --resume " + checkpoints.dir() : "") << "\n";
    return io::stop_status();
}

std::string level_name(double c) { return fmt::format("{}", static_cast<int>(std::lround(c * 100))); }

}  // namespace

int main(int argc, char** argv) {
    Flags flags = parse(argc, argv);
#ifdef THEANINE_HAVE_MPI
    std::optional<io::ParallelRun> par;
#endif
    try {
        bool root = true;  // the process that prints and writes files
#ifdef THEANINE_HAVE_MPI
        if (flags.data_parallel) {
            par.emplace(true, &argc, &argv);
            root = par->root;
            if (flags.batch_size % par->comm->size() != 0) {
                throw UsageError(fmt::format("--batch-size {} does not split evenly over {} ranks", flags.batch_size,
                                             par->comm->size()));
            }
        }
#endif
        config().floatX = dtype_from_name(flags.floatX);
        if (flags.threads > 0) set_num_threads(flags.threads);
        const DType fx = config().floatX;
        io::check_writable_dir(flags.output, "--output");
        if (!flags.graph_html.empty()) io::check_writable_file_dir(flags.graph_html, "--graph-html");
        io::Checkpointer checkpoints(flags.checkpoint, flags.checkpoint_every, flags.resume);
        const std::optional<io::Checkpoint> resumed = checkpoints.resume();
        io::install_stop_signals();
        // A signal ends the run at a minibatch's end; with several ranks each may see it at a
        // different one, so the whole job ends at once instead (no rank left in a collective).
        auto stop = [&]() -> int {
#ifdef THEANINE_HAVE_MPI
            if (par) par->fail("dA", "stopped by a signal");
#endif
            return stopped(checkpoints);
        };
        io::Mnist mnist = io::load_mnist(flags.data);
        const std::int64_t n_train = std::min<std::int64_t>(flags.train_size, mnist.train_images.dim(0));
        Tensor train_x = io::mnist_pixels(mnist.train_images, 0, n_train, fx, flags.pixel_scale);
        const std::int64_t n_batches = n_train / flags.batch_size;
        if (n_batches < 1) {
            bad_flag(fmt::format("--train-size {} is smaller than one batch of {}", n_train, flags.batch_size));
        }
        long bs = flags.batch_size;  // the rows of each minibatch this process trains on
#ifdef THEANINE_HAVE_MPI
        if (par) {
            const distributed::Shard shard{par->comm->rank() * (bs / par->comm->size()), bs / par->comm->size()};
            train_x = io::shard_rows(train_x, bs, shard);
            bs = static_cast<long>(shard.size);
        }
#endif
        SharedVariable train_set_x = shared(train_x, "train_set_x", true);
        CompileOptions options;
        options.nan_guard = options.nan_guard || flags.nan_guard;

        // Where a resumed run starts: the model (corruption level), epoch and minibatch.
        io::PrintedLines out;
        io::Metrics metrics(root ? flags.output : "");
        std::size_t first_level = 0;
        std::int64_t start_epoch = 0, start_batch = 0, steps = 0;
        io::EpochCosts start_costs;
        if (resumed) {
            out.replay(resumed->at("printed"));
            if (resumed->count("metrics")) metrics.restore(resumed->at("metrics"));
            first_level = static_cast<std::size_t>(io::get_int(*resumed, "level"));
            start_epoch = io::get_int(*resumed, "epoch");
            start_batch = io::get_int(*resumed, "batch");
            start_costs = io::EpochCosts::from_tensor(resumed->at("costs"));
            steps = io::get_int(*resumed, "steps");
        }

        Variable index = lscalar("index");
        Variable x = matrix("x");
        for (std::size_t li = first_level; li < flags.corruption.size(); ++li) {
            const double level = flags.corruption[li];
            RandomState rng(flags.seed);
            auto stream_seed = static_cast<std::uint32_t>(rng.randint(1LL << 30));
#ifdef THEANINE_HAVE_MPI
            if (par) stream_seed += static_cast<std::uint32_t>(par->comm->rank());  // each rank its own noise
#endif
            std::shared_ptr<RandomStreamsBase> theano_rng;
            if (flags.rng == "mrg") {
                theano_rng = std::make_shared<MRG_RandomStreams>(stream_seed);
            } else {
                theano_rng = std::make_shared<RandomStreams>(stream_seed);
            }
            models::dA da(rng, theano_rng, x, 28 * 28, flags.hidden);
            auto [cost, updates] = da.get_cost_updates(level, flags.learning_rate);
            std::vector<SharedVariable> rng_states;  // the generator states the draws advance
            if (auto* r = dynamic_cast<MRG_RandomStreams*>(theano_rng.get())) rng_states = r->state_variables();
            if (auto* r = dynamic_cast<RandomStreams*>(theano_rng.get())) rng_states = r->state_variables();
            const Givens givens = {{x, subtensor(train_set_x, {slice(index * bs, (index + 1) * bs)})}};
            const std::vector<SharedVariable> params = {da.W, da.b, da.b_prime};
#ifdef THEANINE_HAVE_MPI
            std::optional<distributed::DataParallel> dp;
            std::optional<Function> dp_train;
            if (par) {
                // The tutorial's update rule, param - learning_rate * gradient, on the averaged gradients.
                distributed::DataParallelOptions dpo;
                dpo.average_every = flags.average_every;
                dp.emplace(*par->comm, params, dpo);
                const double lr = flags.learning_rate;
                dp_train.emplace(dp->function(
                    {index}, {cost}, cost,
                    [&](const std::vector<Variable>& ps, const std::vector<Variable>& gs) {
                        Updates u;
                        for (std::size_t k = 0; k < ps.size(); ++k) u.emplace_back(params[k], ps[k] - lr * gs[k]);
                        return u;
                    },
                    givens, options));
            }
            Function train_da = dp_train ? std::move(*dp_train) : function({index}, {cost}, updates, givens, options);
#else
            Function train_da = function({index}, {cost}, updates, givens, options);
#endif

            std::int64_t epoch0 = 0, batch0 = 0;
            io::EpochCosts costs;
            if (resumed && li == first_level && resumed->count("param0")) {
                io::set_values(*resumed, "param", params);
                io::set_values(*resumed, "rng", rng_states);
                epoch0 = start_epoch;
                batch0 = start_batch;
                costs = start_costs;
            }
            // Everything a resumed run needs to continue from minibatch `batch` of `epoch`.
            auto checkpoint = [&](std::int64_t epoch, std::int64_t batch) {
                io::Checkpoint c = position(li, epoch, batch, costs, steps, out, metrics);
                io::put_values(c, "param", params);
                io::put_values(c, "rng", rng_states);
                checkpoints.save(c);
            };

            auto start = std::chrono::steady_clock::now();
#ifdef THEANINE_HAVE_MPI
            const double allreduce0 = par ? par->comm->allreduce_seconds() : 0.0;
#endif
            for (std::int64_t epoch = epoch0; epoch < flags.epochs; ++epoch) {
                io::Progress progress(fmt::format("epoch {}", epoch));
                for (std::int64_t i = epoch == epoch0 ? batch0 : 0; i < n_batches; ++i) {
                    const double c = train_da.scalar({static_cast<long>(i)});
#ifdef THEANINE_HAVE_MPI
                    if (dp) dp->step_done();
#endif
                    if (!std::isfinite(c)) {
                        progress.clear();
                        std::cerr << fmt::format("dA: the cost became {} at epoch {}, minibatch {} (corruption {}); "
                                                 "rerun with --nan-guard to find the op that made it\n",
                                                 c, epoch, i, level);
                        return 1;
                    }
                    costs.add(c);
                    ++steps;
                    progress.update(i + 1, n_batches);
                    if (i + 1 < n_batches) {
                        if (checkpoints.due(steps) || io::stop_requested()) checkpoint(epoch, i + 1);
                        if (io::stop_requested()) {
                            progress.clear();
                            return stop();
                        }
                    }
                }
                progress.clear();
                // print('Training epoch %d, cost ' % epoch, numpy.mean(c, dtype='float64'))
                const double mean_cost = costs.mean();
                out.print(fmt::format("Training epoch {}, cost  {}", epoch, io::numpy::scalar_str(mean_cost)));
                metrics.add("cost", fmt::format("corruption {}%", level_name(level)), static_cast<double>(epoch), mean_cost);
                metrics.write();
                costs = io::EpochCosts();
                if (epoch + 1 < flags.epochs) {
                    checkpoint(epoch + 1, 0);
                    if (io::stop_requested()) return stop();
                }
            }
            const double minutes =
                std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count() / 60.0;
            std::string what = level == 0 ? "no corruption" : level_name(level) + "% corruption";
            if (root) std::cerr << fmt::format("The {} code for file dA ran for {:.2f}m", what, minutes) << std::endl;
#ifdef THEANINE_HAVE_MPI
            if (par && root) {
                std::cerr << fmt::format("data parallel: {} ranks, {:.3f} s per epoch, rank 0 spent {:.3f} s in allreduce",
                                         par->comm->size(), minutes * 60 / (flags.epochs - epoch0),
                                         par->comm->allreduce_seconds() - allreduce0)
                          << std::endl;
            }
#endif
            if (!root) continue;
            io::write_graph_html(flags.graph_html, train_da);

            Tensor filters = io::tile_raster_images(da.W.get_value(true).transpose(), {28, 28}, {10, 10}, {1, 1});
            std::string png = flags.output + "/filters_corruption_" + level_name(level) + ".png";
            io::write_png_gray(png, filters);
            if (flags.save_params) {
                std::string base = flags.output + "/dA_corruption_" + level_name(level) + "_";
                io::save_npy(base + "W.npy", da.W.get_value(true));
                io::save_npy(base + "b.npy", da.b.get_value(true));
                io::save_npy(base + "b_prime.npy", da.b_prime.get_value(true));
            }
            // The next model starts from scratch.
            if (li + 1 < flags.corruption.size()) checkpoints.save(position(li + 1, 0, 0, io::EpochCosts(), steps, out, metrics));
            if (io::stop_requested() && li + 1 < flags.corruption.size()) return stop();
        }
        // A finished run: resuming it prints its lines and trains nothing.
        checkpoints.save(position(flags.corruption.size(), 0, 0, io::EpochCosts(), steps, out, metrics));
    } catch (const theanine::Error& e) {
#ifdef THEANINE_HAVE_MPI
        if (par) par->fail("dA", e.what());
#endif
        std::cerr << "dA: " << e.what() << "\n";
        return 1;
    }
    return 0;
}
