// The tutorials' DBN.py: a deep belief network, its RBM layers pretrained one after the other
// by CD-k (each layer's function takes index and lr, lr with a default, called by name), then
// fine-tuned as a whole with a logistic regression on top.
#include <chrono>
#include <cmath>
#include <cstdio>
#include <iostream>

#include <fmt/format.h>
#include <fmt/printf.h>

#include "examples/io/flags.hpp"
#include "examples/io/numpy_like.hpp"
#include "examples/io/training.hpp"
#include "theanine.hpp"

using namespace theanine;

int main(int argc, char** argv) {
    int pretrain_epochs = 100, finetune_epochs = 1000, batch_size = 10, k = 1;
    std::uint32_t seed = 123;
    double pretrain_lr = 0.01, finetune_lr = 0.1;
    std::string hidden_text = "1000,1000,1000";
    io::CommonFlags common;
    io::FlagParser flags("DBN", "A deep belief network on MNIST, as the tutorials' DBN.py.");
    flags.add("pretrain-epochs", &pretrain_epochs, 0, "pretraining epochs per layer");
    flags.add("finetune-epochs", &finetune_epochs, 1, "maximum fine-tuning epochs");
    flags.add("batch-size", &batch_size, 1, "minibatch size");
    flags.add("k", &k, 1, "Gibbs steps of CD-k in pretraining");
    flags.add("pretrain-lr", &pretrain_lr, 0, 1e6, "pretraining SGD step");
    flags.add("finetune-lr", &finetune_lr, 0, 1e6, "fine-tuning SGD step");
    flags.add("hidden", &hidden_text, "hidden layer sizes, comma separated");
    flags.add("seed", &seed, "seed of numpy_rng");
    common.add_to(flags, "folder to write the parameters into");
    flags.parse(argc, argv);
    try {
        common.apply();
        std::vector<int> hidden = io::parse_int_list("hidden", hidden_text);
        io::Run run(common);
        const CompileOptions options = io::compile_options(common);
        io::MnistSplits d = io::load_mnist_splits(common);
        io::SharedSplits sets(d);
        const long bs = batch_size;
        const std::int64_t n_train = io::count_batches(d.train_x.dim(0), bs, "training"),
                           n_valid = io::count_batches(d.valid_x.dim(0), bs, "validation"),
                           n_test = io::count_batches(d.test_x.dim(0), bs, "test");

        // A resumed run: where pretraining stopped (n_layers: it had finished), or in fine-tuning.
        const io::Checkpoint* resumed = run.resumed ? &*run.resumed : nullptr;
        auto say = [&](const std::string& line, bool already_printed) {
            if (!already_printed) run.out.print(line);
        };

        RandomState numpy_rng(seed);
        // DBN.py draws the MRG streams' seed from numpy_rng before the layers' weights.
        auto theano_rng = std::make_shared<MRG_RandomStreams>(static_cast<std::uint32_t>(numpy_rng.randint(1LL << 30)));
        say("... building the model", resumed);
        models::DBN dbn(numpy_rng, theano_rng, 28 * 28, hidden, 10);

        say("... getting the pretraining functions", resumed);
        auto pretraining_fns = dbn.pretraining_functions(sets.train_x, bs, k, options);
        // Everything the steps update: the parameters, the RBMs' visible biases and the
        // Gibbs chains' generator states.
        std::vector<SharedVariable> state = dbn.params();
        for (const auto& rbm : dbn.rbm_layers) state.push_back(rbm.vbias);
        for (const auto& v : theano_rng->state_variables()) state.push_back(v);
        say("... pre-training the model", resumed);
        const double pretrain_s = io::pretrain_layers(
            run, dbn.rbm_layers.size(), pretrain_epochs, n_train, state,
            [&](std::size_t i, std::int64_t b) {
                return pretraining_fns[i].call_named({arg("index", static_cast<long>(b)), arg("lr", pretrain_lr)})[0].item();
            },
            [](std::size_t i, std::int64_t epoch, double cost) {
                // print('Pre-training layer %i, epoch %d, cost ' % (i, epoch), end=' ')
                // print(numpy.mean(c, dtype='float64'))
                return fmt::format("Pre-training layer {}, epoch {}, cost  {}", i, epoch, io::numpy::scalar_str(cost));
            });
        const bool finetune_resumed = io::resumed_in_finetuning(run);
        if (!finetune_resumed) std::fprintf(stderr, "The pretraining code for file DBN ran for %.2fm\n", pretrain_s / 60);

        say("... getting the finetuning functions", finetune_resumed);
        Variable index = lscalar("index");
        auto params = dbn.params();
        std::vector<Variable> pv(params.begin(), params.end());
        auto g = grad(dbn.finetune_cost, pv);
        Updates updates;
        for (std::size_t i = 0; i < params.size(); ++i) updates.emplace_back(params[i], params[i] - finetune_lr * g[i]);
        Function train_fn =
            io::minibatch_function(index, {dbn.finetune_cost}, updates, dbn.x, dbn.y, sets.train_x, sets.train_y, bs, options);
        Function valid_fn = io::minibatch_function(index, {dbn.errors}, {}, dbn.x, dbn.y, sets.valid_x, sets.valid_y, bs);
        Function test_fn = io::minibatch_function(index, {dbn.errors}, {}, dbn.x, dbn.y, sets.test_x, sets.test_y, bs);
        say("... finetuning the model", finetune_resumed);
        io::EarlyStopping rule;
        rule.n_epochs = finetune_epochs;
        rule.patience = 4 * n_train;
        io::Resumable finetuning = run.resumable(state);
        if (!finetune_resumed) finetuning.resume = nullptr;
        auto r = io::train_with_early_stopping([&](std::int64_t i) { return train_fn.scalar({static_cast<long>(i)}); },
                                               n_train, [&] { return io::mean_over_batches(valid_fn, n_valid); },
                                               [&] { return io::mean_over_batches(test_fn, n_test); }, rule, finetuning);
        io::write_graph_html(common.graph_html, train_fn);
        std::printf("Optimization complete with best validation score of %f %%, obtained at iteration %lld, with test "
                    "performance %f %%\n", r.best_validation * 100, static_cast<long long>(r.best_iter + 1), r.test_score * 100);
        std::fprintf(stderr, "The fine tuning code for file DBN ran for %.2fm\n", r.seconds / 60);
        if (!common.save.empty()) {
            for (std::size_t i = 0; i < dbn.sigmoid_layers.size(); ++i) {
                io::save_params(dbn.sigmoid_layers[i].params(), common.save, "dbn_layer" + std::to_string(i) + "_");
            }
            io::save_params(dbn.log_layer->params(), common.save, "dbn_logistic_");
        }
    } catch (const io::Stopped& stop) {
        std::cerr << "DBN: stopped by a signal; resume with --resume " << common.checkpoint << "\n";
        return stop.status;
    } catch (const Error& e) {
        std::cerr << "DBN: " << e.what() << "\n";
        return 1;
    } catch (const std::exception& e) {
        std::cerr << "DBN: " << e.what() << "\n";
        return 2;
    }
    return 0;
}
