// What the supervised tutorial programs share: MNIST split as the tutorials split it,
// parameter files, and minibatch SGD with the tutorials' early stopping.
#pragma once

#include <cstdint>
#include <functional>
#include <optional>
#include <string>
#include <vector>

#include "compile/function.hpp"
#include "examples/io/checkpoint.hpp"
#include "examples/io/flags.hpp"
#include "examples/io/metrics.hpp"
#include "graph/graph.hpp"

namespace theanine::io {

// train = the first 50000 training images, valid = the last 10000, test = the t10k file;
// pixels as float32(byte / 255) cast to dtype, labels as int64 vectors.
struct MnistSplits {
    Tensor train_x, train_y, valid_x, valid_y, test_x, test_y;
};
MnistSplits load_mnist_splits(const std::string& dir, DType dtype, std::int64_t train_size = 50000,
                              int pixel_scale = 255);

// The splits the program's flags ask for (--data, floatX, --train-size, --pixel-scale), and
// the compile options they ask for (--nan-guard).
MnistSplits load_mnist_splits(const CommonFlags& flags);
CompileOptions compile_options(const CommonFlags& flags);

// The splits as shared variables (borrowing the tensors), as the tutorials' shared_dataset.
struct SharedSplits {
    SharedVariable train_x, train_y, valid_x, valid_y, test_x, test_y;
    explicit SharedSplits(const MnistSplits& d);
};

// function({index}, outputs, updates) over minibatch `index` of (set_x, set_y) given as x, y.
Function minibatch_function(const Variable& index, const std::vector<Variable>& outputs, const Updates& updates,
                            const Variable& x, const Variable& y, const SharedVariable& set_x,
                            const SharedVariable& set_y, long batch_size,
                            const CompileOptions& options = CompileOptions());

// The number of whole minibatches of batch_size in a split of n examples; throws UsageError
// naming the split when not even one fits (an epoch of nothing, an error rate of 0 / 0).
std::int64_t count_batches(std::int64_t n, std::int64_t batch_size, const std::string& split);

// The mean of f(i) over batches i = 0 .. n-1 (a scalar-output compiled function), summed as
// numpy.mean sums a list of them (pairwise, in float64).
double mean_over_batches(Function& f, std::int64_t n);

// An epoch's minibatch costs, averaged as the tutorials' numpy.mean(c, dtype='float64')
// averages them (pairwise sums); kept whole so that a checkpoint can carry them.
struct EpochCosts {
    std::vector<double> values;
    void add(double c) { values.push_back(c); }
    double mean() const;
    Tensor to_tensor() const;  // float64 vector
    static EpochCosts from_tensor(const Tensor& t);
};

// Writes each shared variable to dir/<prefix><name>.npy (names must be unique).
void save_params(const std::vector<SharedVariable>& params, const std::string& dir, const std::string& prefix);
// Reads them back, checking dtype and shape against each variable.
void load_params(const std::vector<SharedVariable>& params, const std::string& dir, const std::string& prefix);

struct EarlyStopping {
    int n_epochs = 1000;
    std::int64_t patience = 5000;         // look at this many minibatches regardless
    double patience_increase = 2;         // wait this much longer when a new best is found
    double improvement_threshold = 0.995; // a relative improvement of this much is significant
    std::int64_t print_iter_every = 0;    // print "training @ iter =  N" every this many (0: never)
};

struct TrainResult {
    double best_validation = 0;  // error rate
    double test_score = 0;       // error rate of the best model on the test set
    int epochs = 0;
    std::int64_t best_iter = 0;
    double seconds = 0;
};

// What makes a training run stoppable and resumable (examples/io/checkpoint.hpp): the shared
// variables its steps update (parameters, generator states), where checkpoints go, the
// printed lines, the per-epoch metrics, and the checkpoint to resume from.
struct Resumable {
    Checkpointer* checkpoints = nullptr;
    std::vector<SharedVariable> state;
    PrintedLines* out = nullptr;
    const Checkpoint* resume = nullptr;
    Metrics* metrics = nullptr;
};

// Minibatch SGD as the tutorials run it: validation every min(n_train_batches, patience/2)
// minibatches, the test error recomputed at each new best, stopping when patience runs out.
// Prints the tutorials' progress lines (and a progress line on a terminal); the errors go to
// the metrics too (panel "error (%)", at the epoch's fraction done), written at each epoch's end. Checkpoints every
// Checkpointer::due minibatches and at each epoch's end; on SIGINT/SIGTERM it checkpoints
// and throws Stopped. A cost that is not finite throws UsageError naming the minibatch.
TrainResult train_with_early_stopping(const std::function<double(std::int64_t)>& train_batch,
                                      std::int64_t n_train_batches, const std::function<double()>& validation_error,
                                      const std::function<double()>& test_error, const EarlyStopping& rule,
                                      const Resumable& run = {});

// Thrown by a training loop that stopped on SIGINT/SIGTERM after writing its checkpoint.
struct Stopped {
    int status;
};

// A program's --checkpoint / --resume / --checkpoint-every / --output: the checkpointer, the
// checkpoint to resume from (its printed lines are printed again and its metrics restored
// when this is made), the lines and the metrics (written into --output).
struct Run {
    Checkpointer checkpoints;
    std::optional<Checkpoint> resumed;
    PrintedLines out;
    Metrics metrics;
    explicit Run(const CommonFlags& flags);
    // The Resumable of a training loop whose steps update state.
    Resumable resumable(std::vector<SharedVariable> state);
    // A checkpoint's entries for the lines and the metrics.
    void put_progress(Checkpoint& c) const;
};

// Writes f.to_html() to path (--graph-html) unless path is empty; programs call it after
// training, so that the page shows the shapes of the last call.
void write_graph_html(const std::string& path, const Function& f);

// Greedy layer-wise pre-training as SdA.py and DBN.py run it: for each of n_layers layers,
// `epochs` epochs of step(layer, minibatch) over n_batches minibatches, printing
// line(layer, epoch, mean cost) after each epoch, and the cost to the metrics (panel
// "pre-training cost", series "layer i", the epoch as printed) (a cost that is not finite stops it with an
// error naming the minibatch). Resumable: checkpoints carry state, the position and the
// epoch's costs so far; a run resumed in fine-tuning skips it all. Returns the seconds it ran
// (0 when skipped).
double pretrain_layers(Run& run, std::size_t n_layers, std::int64_t epochs, std::int64_t n_batches,
                       const std::vector<SharedVariable>& state,
                       const std::function<double(std::size_t, std::int64_t)>& step,
                       const std::function<std::string(std::size_t, std::int64_t, double)>& line);
// Whether the run resumed in fine-tuning (past pre-training).
bool resumed_in_finetuning(const Run& run);

}  // namespace theanine::io
