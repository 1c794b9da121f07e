#include "examples/io/training.hpp"

#include "examples/io/numpy_like.hpp"

#include "examples/io/files.hpp"

#include <chrono>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <limits>
#include <set>

#include <fmt/format.h>
#include <fmt/printf.h>

#include "examples/io/mnist.hpp"
#include "compile/function.hpp"
#include "ops/elemwise.hpp"
#include "ops/shape.hpp"
#include "examples/io/npy.hpp"

namespace theanine::io {

MnistSplits load_mnist_splits(const std::string& dir, DType dtype, std::int64_t train_size, int pixel_scale) {
    Mnist m = load_mnist(dir);
    if (m.train_images.dim(0) < 60000 && train_size == 50000) {
        throw UsageError(fmt::format("MNIST in {} has {} training images, expected 60000", dir, m.train_images.dim(0)));
    }
    if (train_size < 1 || train_size > 50000) {
        throw UsageError(fmt::format("train_size must be in [1, 50000], got {}", train_size));
    }
    auto labels = [](const Tensor& l, std::int64_t a, std::int64_t b) {
        Tensor t = Tensor::empty(DType::int64, {b - a});
        for (std::int64_t i = a; i < b; ++i) t.data<std::int64_t>()[i - a] = l.data<std::uint8_t>()[i];
        return t;
    };
    const std::int64_t n = m.train_images.dim(0);
    MnistSplits s;
    s.train_x = mnist_pixels(m.train_images, 0, train_size, dtype, pixel_scale);
    s.train_y = labels(m.train_labels, 0, train_size);
    s.valid_x = mnist_pixels(m.train_images, n - 10000, n, dtype, pixel_scale);
    s.valid_y = labels(m.train_labels, n - 10000, n);
    s.test_x = mnist_pixels(m.test_images, 0, m.test_images.dim(0), dtype, pixel_scale);
    s.test_y = labels(m.test_labels, 0, m.test_labels.dim(0));
    return s;
}

MnistSplits load_mnist_splits(const CommonFlags& flags) {
    return load_mnist_splits(flags.data, config().floatX, flags.train_size, flags.scale());
}

CompileOptions compile_options(const CommonFlags& flags) {
    CompileOptions options;
    options.nan_guard = options.nan_guard || flags.nan_guard;
    return options;
}

SharedSplits::SharedSplits(const MnistSplits& d)
    : train_x(shared(d.train_x, "train_x", true)), train_y(shared(d.train_y, "train_y", true)),
      valid_x(shared(d.valid_x, "valid_x", true)), valid_y(shared(d.valid_y, "valid_y", true)),
      test_x(shared(d.test_x, "test_x", true)), test_y(shared(d.test_y, "test_y", true)) {}

Function minibatch_function(const Variable& index, const std::vector<Variable>& outputs, const Updates& updates,
                            const Variable& x, const Variable& y, const SharedVariable& set_x,
                            const SharedVariable& set_y, long batch_size, const CompileOptions& options) {
    const long bs = batch_size;
    return function({index}, outputs, updates,
                    {{x, set_x[{slice(index * bs, (index + 1) * bs)}]}, {y, set_y[{slice(index * bs, (index + 1) * bs)}]}},
                    options);
}

Run::Run(const CommonFlags& flags)
    : checkpoints(flags.checkpoint, flags.checkpoint_every, flags.resume), resumed(checkpoints.resume()),
      metrics(flags.output) {
    if (resumed) {
        out.replay(resumed->at("printed"));
        // Checkpoints written before metrics were kept have none.
        if (resumed->count("metrics")) metrics.restore(resumed->at("metrics"));
    }
    install_stop_signals();
}

void Run::put_progress(Checkpoint& c) const {
    c["printed"] = out.to_tensor();
    c["metrics"] = metrics.to_tensor();
}

void write_graph_html(const std::string& path, const Function& f) {
    if (path.empty()) return;
    const std::string page = f.to_html();
    AtomicFile file(path);
    file.write(page.data(), page.size());
    file.commit();
}

bool resumed_in_finetuning(const Run& run) { return run.resumed && !run.resumed->count("pretrain_layer"); }

double pretrain_layers(Run& run, std::size_t n_layers, std::int64_t epochs, std::int64_t n_batches,
                       const std::vector<SharedVariable>& state,
                       const std::function<double(std::size_t, std::int64_t)>& step,
                       const std::function<std::string(std::size_t, std::int64_t, double)>& line) {
    const Checkpoint* resumed = run.resumed ? &*run.resumed : nullptr;
    if (resumed) set_values(*resumed, "state", state);
    if (resumed_in_finetuning(run)) return 0;
    std::size_t layer0 = 0;
    std::int64_t epoch0 = 0, batch0 = 0, steps = 0;
    EpochCosts costs0;
    if (resumed) {
        layer0 = static_cast<std::size_t>(get_int(*resumed, "pretrain_layer"));
        epoch0 = get_int(*resumed, "pretrain_epoch");
        batch0 = get_int(*resumed, "pretrain_batch");
        costs0 = EpochCosts::from_tensor(resumed->at("pretrain_costs"));
        steps = get_int(*resumed, "steps");
    }
    auto checkpoint = [&](std::size_t layer, std::int64_t epoch, std::int64_t batch, const EpochCosts& costs) {
        Checkpoint c;
        put_values(c, "state", state);
        c["pretrain_layer"] = int_entry(static_cast<std::int64_t>(layer));
        c["pretrain_epoch"] = int_entry(epoch);
        c["pretrain_batch"] = int_entry(batch);
        c["pretrain_costs"] = costs.to_tensor();
        c["steps"] = int_entry(steps);
        run.put_progress(c);
        run.checkpoints.save(c);
    };
    const auto t0 = std::chrono::steady_clock::now();
    for (std::size_t i = layer0; i < n_layers; ++i) {
        for (std::int64_t epoch = i == layer0 ? epoch0 : 0; epoch < epochs; ++epoch) {
            const bool resuming_here = i == layer0 && epoch == epoch0;
            EpochCosts c = resuming_here ? costs0 : EpochCosts();
            Progress progress(fmt::format("pre-training layer {}, epoch {}", i, epoch));
            for (std::int64_t b = resuming_here ? batch0 : 0; b < n_batches; ++b) {
                const double cost = step(i, b);
                if (!std::isfinite(cost)) {
                    progress.clear();
                    throw UsageError(fmt::format("the pre-training cost of layer {} became {} at epoch {}, minibatch {}; "
                                                 "rerun with --nan-guard to find the op that made it", i, cost, epoch, b));
                }
                c.add(cost);
                ++steps;
                progress.update(b + 1, n_batches);
                if (b + 1 < n_batches && (run.checkpoints.due(steps) || stop_requested())) {
                    checkpoint(i, epoch, b + 1, c);
                    if (stop_requested()) throw Stopped{stop_status()};
                }
            }
            progress.clear();
            const double mean_cost = c.mean();
            run.out.print(line(i, epoch, mean_cost));
            run.metrics.add("pre-training cost", fmt::format("layer {}", i), static_cast<double>(epoch), mean_cost);
            run.metrics.write();
            const bool last = i + 1 == n_layers && epoch + 1 == epochs;
            if (!last) {
                if (epoch + 1 < epochs) {
                    checkpoint(i, epoch + 1, 0, EpochCosts());
                } else {
                    checkpoint(i + 1, 0, 0, EpochCosts());
                }
                if (stop_requested()) throw Stopped{stop_status()};
            }
        }
    }
    return std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
}

Resumable Run::resumable(std::vector<SharedVariable> state) {
    return Resumable{&checkpoints, std::move(state), &out, resumed ? &*resumed : nullptr, &metrics};
}

std::int64_t count_batches(std::int64_t n, std::int64_t batch_size, const std::string& split) {
    if (batch_size < 1 || n / batch_size < 1) {
        throw UsageError(fmt::format("--batch-size {} does not fit the {} set of {} examples: no whole minibatch",
                                     batch_size, split, n));
    }
    return n / batch_size;
}

double mean_over_batches(Function& f, std::int64_t n) {
    if (n < 1) throw UsageError("mean_over_batches: no batches");
    std::vector<double> v(static_cast<std::size_t>(n));
    for (std::int64_t i = 0; i < n; ++i) v[static_cast<std::size_t>(i)] = f.scalar({static_cast<long>(i)});
    return numpy::mean(v.data(), n);
}

double EpochCosts::mean() const {
    if (values.empty()) throw UsageError("EpochCosts::mean: no costs");
    return numpy::mean(values.data(), static_cast<std::int64_t>(values.size()));
}

Tensor EpochCosts::to_tensor() const {
    return Tensor::from_vector<double>({static_cast<std::int64_t>(values.size())}, values);
}

EpochCosts EpochCosts::from_tensor(const Tensor& t) {
    if (t.dtype() != DType::float64 || t.ndim() != 1) {
        throw UsageError(fmt::format("checkpoint: the epoch's costs are {} {}, expected a float64 vector",
                                     dtype_name(t.dtype()), shape_string(t.shape())));
    }
    EpochCosts c;
    c.values = t.to_doubles();
    return c;
}

void save_params(const std::vector<SharedVariable>& params, const std::string& dir, const std::string& prefix) {
    check_writable_dir(dir, "save_params:");
    std::set<std::string> seen;
    for (const auto& p : params) {
        if (p.name().empty()) throw UsageError("save_params: a parameter has no name");
        if (!seen.insert(p.name()).second) {
            throw UsageError(fmt::format("save_params: two parameters are named '{}'; give the prefix per layer", p.name()));
        }
        save_npy(dir + "/" + prefix + p.name() + ".npy", p.get_value(true));
    }
}

void load_params(const std::vector<SharedVariable>& params, const std::string& dir, const std::string& prefix) {
    for (const auto& p : params) {
        const std::string path = dir + "/" + prefix + p.name() + ".npy";
        Tensor t = load_npy(path);
        if (t.dtype() != p.dtype() || t.shape() != p.get_value(true).shape()) {
            throw UsageError(fmt::format("load_params: {} holds {} {}, but '{}' is {} {}", path, dtype_name(t.dtype()),
                                         shape_string(t.shape()), p.name(), dtype_name(p.dtype()),
                                         shape_string(p.get_value(true).shape())));
        }
        p.set_value(t, true);
    }
}

TrainResult train_with_early_stopping(const std::function<double(std::int64_t)>& train_batch,
                                      std::int64_t n_train_batches, const std::function<double()>& validation_error,
                                      const std::function<double()>& test_error, const EarlyStopping& rule,
                                      const Resumable& run) {
    auto start = std::chrono::steady_clock::now();
    PrintedLines own_lines;
    PrintedLines& out = run.out ? *run.out : own_lines;
    TrainResult r;
    r.best_validation = std::numeric_limits<double>::infinity();
    double patience = static_cast<double>(rule.patience);
    const std::int64_t validation_frequency = std::max<std::int64_t>(1, std::min<std::int64_t>(n_train_batches, rule.patience / 2));
    bool done = false;
    int epoch = 0;
    std::int64_t first_batch = 0;
    double seconds_before = 0;
    if (run.resume) {
        const Checkpoint& c = *run.resume;
        set_values(c, "state", run.state);
        epoch = static_cast<int>(get_int(c, "epoch"));
        first_batch = get_int(c, "batch");
        patience = get_double(c, "patience");
        r.best_validation = get_double(c, "best_validation");
        r.best_iter = get_int(c, "best_iter");
        r.test_score = get_double(c, "test_score");
        done = get_int(c, "done") != 0;
        seconds_before = get_double(c, "seconds");
    }
    // The state after minibatch `batch` of `epoch` (epoch counted from 1 as printed).
    auto checkpoint = [&](std::int64_t batch) {
        if (!run.checkpoints || !run.checkpoints->enabled()) return;
        Checkpoint c;
        put_values(c, "state", run.state);
        c["epoch"] = int_entry(epoch);
        c["batch"] = int_entry(batch);
        c["patience"] = double_entry(patience);
        c["best_validation"] = double_entry(r.best_validation);
        c["best_iter"] = int_entry(r.best_iter);
        c["test_score"] = double_entry(r.test_score);
        c["done"] = int_entry(done ? 1 : 0);
        c["seconds"] = double_entry(seconds_before + std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count());
        c["printed"] = out.to_tensor();
        if (run.metrics) c["metrics"] = run.metrics->to_tensor();
        run.checkpoints->save(c);
    };
    auto stop = [&](std::int64_t batch) {
        checkpoint(batch);
        throw Stopped{stop_status()};
    };
    // A resumed run is inside epoch `epoch` at minibatch first_batch (0: the epoch is over).
    bool resume_inside = run.resume && first_batch > 0;
    while ((resume_inside || epoch < rule.n_epochs) && !done) {
        if (!resume_inside) ++epoch;
        Progress progress(fmt::format("epoch {}", epoch));
        for (std::int64_t b = resume_inside ? first_batch : 0; b < n_train_batches; ++b) {
            const std::int64_t iter = (epoch - 1) * n_train_batches + b;
            if (rule.print_iter_every > 0 && iter % rule.print_iter_every == 0) {
                progress.clear();
                out.print(fmt::format("training @ iter =  {}", iter));
            }
            const double cost = train_batch(b);
            if (!std::isfinite(cost)) {
                progress.clear();
                throw UsageError(fmt::format("the cost became {} at epoch {}, minibatch {}; rerun with --nan-guard to "
                                             "find the op that made it", cost, epoch, b));
            }
            progress.update(b + 1, n_train_batches);
            if ((iter + 1) % validation_frequency == 0) {
                const double v = validation_error();
                const double at_epoch = static_cast<double>(iter + 1) / static_cast<double>(n_train_batches);
                if (run.metrics) run.metrics->add("error (%)", "validation error", at_epoch, v * 100);
                progress.clear();
                out.print(fmt::sprintf("epoch %d, minibatch %lld/%lld, validation error %f %%", epoch,
                                       static_cast<long long>(b + 1), static_cast<long long>(n_train_batches), v * 100));
                if (v < r.best_validation) {
                    if (v < r.best_validation * rule.improvement_threshold) {
                        patience = std::max(patience, static_cast<double>(iter) * rule.patience_increase);
                    }
                    r.best_validation = v;
                    r.best_iter = iter;
                    r.test_score = test_error();
                    if (run.metrics) run.metrics->add("error (%)", "test error of best model", at_epoch, r.test_score * 100);
                    out.print(fmt::sprintf("     epoch %d, minibatch %lld/%lld, test error of best model %f %%", epoch,
                                           static_cast<long long>(b + 1), static_cast<long long>(n_train_batches),
                                           r.test_score * 100));
                }
            }
            if (patience <= static_cast<double>(iter)) {
                done = true;
                break;
            }
            if (b + 1 < n_train_batches) {
                const std::int64_t steps = iter + 1;
                if (run.checkpoints && run.checkpoints->due(steps)) checkpoint(b + 1);
                if (stop_requested()) stop(b + 1);
            }
        }
        resume_inside = false;
        progress.clear();
        if (run.metrics) run.metrics->write();
        checkpoint(0);
        if (stop_requested() && !done && epoch < rule.n_epochs) stop(0);
    }
    r.epochs = epoch;
    r.seconds = seconds_before + std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
    return r;
}

}  // namespace theanine::io
