// The tutorials' SdA.py: stacked denoising autoencoders, pretrained layer by layer (each
// layer's function takes index, corruption and lr, the last two with defaults, called by
// name), then fine-tuned as a whole with a logistic regression on top.
#include <chrono>
#include <cmath>
#include <cstdio>
#include <iostream>

#include <fmt/format.h>
#include <fmt/printf.h>

#include "examples/io/flags.hpp"
#include "examples/io/training.hpp"
#include "theanine.hpp"

using namespace theanine;

int main(int argc, char** argv) {
    int pretrain_epochs = 15, finetune_epochs = 1000, batch_size = 1;
    std::uint32_t seed = 89677;
    double pretrain_lr = 0.001, finetune_lr = 0.1;
    std::string hidden_text = "1000,1000,1000", corruption_text = "0.1,0.2,0.3", rng_kind = "numpy";
    io::CommonFlags common;
    io::FlagParser flags("SdA", "Stacked denoising autoencoders on MNIST, as the tutorials' SdA.py.");
    flags.add("pretrain-epochs", &pretrain_epochs, 0, "pretraining epochs per layer");
    flags.add("finetune-epochs", &finetune_epochs, 1, "maximum fine-tuning epochs");
    flags.add("batch-size", &batch_size, 1, "minibatch size");
    flags.add("pretrain-lr", &pretrain_lr, 0, 1e6, "pretraining SGD step");
    flags.add("learning-rate", &finetune_lr, 0, 1e6, "fine-tuning SGD step");
    flags.add("hidden", &hidden_text, "hidden layer sizes, comma separated");
    flags.add("corruption", &corruption_text, "corruption level per layer, comma separated");
    flags.add("seed", &seed, "seed of numpy_rng");
    flags.add("rng", &rng_kind, "corruption streams: numpy (RandomStreams) or mrg", {"numpy", "mrg"});
    common.add_to(flags, "folder to write the parameters into");
    flags.parse(argc, argv);
    try {
        common.apply();
        std::vector<int> hidden = io::parse_int_list("hidden", hidden_text);
        std::vector<double> corruption;
        for (std::size_t s = 0; s <= corruption_text.size();) {
            std::size_t e = corruption_text.find(',', s);
            if (e == std::string::npos) e = corruption_text.size();
            corruption.push_back(std::stod(corruption_text.substr(s, e - s)));
            s = e + 1;
        }
        if (corruption.size() != hidden.size()) {
            throw UsageError(fmt::format("--corruption has {} levels for {} hidden layers", corruption.size(), hidden.size()));
        }
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
        std::shared_ptr<RandomStreamsBase> theano_rng;
        auto stream_seed = static_cast<std::uint32_t>(numpy_rng.randint(1LL << 30));
        if (rng_kind == "mrg") {
            theano_rng = std::make_shared<MRG_RandomStreams>(stream_seed);
        } else {
            theano_rng = std::make_shared<RandomStreams>(stream_seed);
        }
        say("... building the model", resumed);
        models::SdA sda(numpy_rng, theano_rng, 28 * 28, hidden, 10);

        say("... getting the pretraining functions", resumed);
        auto pretraining_fns = sda.pretraining_functions(sets.train_x, bs, options);
        // Everything the steps update: the parameters, the dA layers' visible biases and the
        // corruption streams' states.
        std::vector<SharedVariable> state = sda.params();
        for (const auto& da : sda.dA_layers) state.push_back(da.b_prime);
        if (auto* r = dynamic_cast<MRG_RandomStreams*>(theano_rng.get())) {
            for (const auto& v : r->state_variables()) state.push_back(v);
        }
        if (auto* r = dynamic_cast<RandomStreams*>(theano_rng.get())) {
            for (const auto& v : r->state_variables()) state.push_back(v);
        }
        say("... pre-training the model", resumed);
        const double pretrain_s = io::pretrain_layers(
            run, sda.dA_layers.size(), pretrain_epochs, n_train, state,
            [&](std::size_t i, std::int64_t b) {
                return pretraining_fns[i]
                    .call_named({arg("index", static_cast<long>(b)), arg("corruption", corruption[i]), arg("lr", pretrain_lr)})[0]
                    .item();
            },
            [](std::size_t i, std::int64_t epoch, double cost) {
                return fmt::sprintf("Pre-training layer %zu, epoch %d, cost %f", i, static_cast<int>(epoch), cost);
            });
        const bool finetune_resumed = io::resumed_in_finetuning(run);
        if (!finetune_resumed) run.out.print(fmt::sprintf("The pretraining code ran for %.2fm", pretrain_s / 60));

        say("... getting the finetuning functions", finetune_resumed);
        Variable index = lscalar("index");
        auto params = sda.params();
        std::vector<Variable> pv(params.begin(), params.end());
        auto g = grad(sda.finetune_cost, pv);
        Updates updates;
        for (std::size_t i = 0; i < params.size(); ++i) updates.emplace_back(params[i], params[i] - finetune_lr * g[i]);
        Function train_fn =
            io::minibatch_function(index, {sda.finetune_cost}, updates, sda.x, sda.y, sets.train_x, sets.train_y, bs, options);
        Function valid_fn = io::minibatch_function(index, {sda.errors}, {}, sda.x, sda.y, sets.valid_x, sets.valid_y, bs);
        Function test_fn = io::minibatch_function(index, {sda.errors}, {}, sda.x, sda.y, sets.test_x, sets.test_y, bs);
        say("... finetunning the model", finetune_resumed);  // sic, as SdA.py prints it
        io::EarlyStopping rule;
        rule.n_epochs = finetune_epochs;
        rule.patience = 10 * n_train;
        io::Resumable finetuning = run.resumable(state);
        if (!finetune_resumed) finetuning.resume = nullptr;
        auto r = io::train_with_early_stopping([&](std::int64_t i) { return train_fn.scalar({static_cast<long>(i)}); },
                                               n_train, [&] { return io::mean_over_batches(valid_fn, n_valid); },
                                               [&] { return io::mean_over_batches(test_fn, n_test); }, rule, finetuning);
        io::write_graph_html(common.graph_html, train_fn);
        std::printf("Optimization complete with best validation score of %f %%, on iteration %lld, with test "
                    "performance %f %%\n", r.best_validation * 100, static_cast<long long>(r.best_iter + 1), r.test_score * 100);
        std::printf("The training code ran for %.2fm (%d epochs)\n", r.seconds / 60, r.epochs);
        if (!common.save.empty()) {
            for (std::size_t i = 0; i < sda.sigmoid_layers.size(); ++i) {
                io::save_params(sda.sigmoid_layers[i].params(), common.save, "sda_layer" + std::to_string(i) + "_");
            }
            io::save_params(sda.log_layer->params(), common.save, "sda_logistic_");
        }
        std::printf("test error: %f %%\n", r.test_score * 100);
    } catch (const io::Stopped& stop) {
        std::cerr << "SdA: stopped by a signal; resume with --resume " << common.checkpoint << "\n";
        return stop.status;
    } catch (const Error& e) {
        std::cerr << "SdA: " << e.what() << "\n";
        return 1;
    } catch (const std::exception& e) {
        std::cerr << "SdA: " << e.what() << "\n";
        return 2;
    }
    return 0;
}
