// The tutorials' mlp.py: one tanh hidden layer and a logistic regression layer, with L1 and
// L2 regularisation, minibatch SGD with early stopping.
#include <cstdio>
#include <iostream>

#include "examples/io/flags.hpp"
#include "examples/io/training.hpp"
#include "theanine.hpp"

using namespace theanine;

int main(int argc, char** argv) {
    int epochs = 1000, batch_size = 20, hidden = 500;
    std::uint32_t seed = 1234;
    double learning_rate = 0.01, L1_reg = 0.0, L2_reg = 0.0001;
    io::CommonFlags common;
    io::FlagParser flags("mlp", "A multilayer perceptron on MNIST, as the tutorials' mlp.py.");
    flags.add("epochs", &epochs, 1, "maximum training epochs");
    flags.add("batch-size", &batch_size, 1, "minibatch size");
    flags.add("learning-rate", &learning_rate, 0, 1e6, "SGD step");
    flags.add("hidden", &hidden, 1, "hidden units");
    flags.add("L1", &L1_reg, 0, 1e6, "L1 weight");
    flags.add("L2", &L2_reg, 0, 1e6, "L2 weight");
    flags.add("seed", &seed, "seed of the weight initialisation");
    common.add_to(flags, "folder to write the parameters into");
    flags.parse(argc, argv);
    try {
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
        models::MLP classifier(rng, x, 28 * 28, hidden, 10);
        Variable cost = classifier.negative_log_likelihood(y) + L1_reg * classifier.L1 + L2_reg * classifier.L2_sqr;
        Function test_model = io::minibatch_function(index, {classifier.errors(y)}, {}, x, y, sets.test_x, sets.test_y, bs);
        Function validate_model =
            io::minibatch_function(index, {classifier.errors(y)}, {}, x, y, sets.valid_x, sets.valid_y, bs);
        auto params = classifier.params();
        std::vector<Variable> pv(params.begin(), params.end());
        auto g = grad(cost, pv);
        Updates updates;
        for (std::size_t i = 0; i < params.size(); ++i) updates.emplace_back(params[i], params[i] - learning_rate * g[i]);
        Function train_model = io::minibatch_function(index, {cost}, updates, x, y, sets.train_x, sets.train_y, bs, options);
        const std::int64_t n_train = io::count_batches(d.train_x.dim(0), bs, "training"),
                           n_valid = io::count_batches(d.valid_x.dim(0), bs, "validation"),
                           n_test = io::count_batches(d.test_x.dim(0), bs, "test");
        io::EarlyStopping rule;
        rule.n_epochs = epochs;
        rule.patience = 10000;
        auto r = io::train_with_early_stopping([&](std::int64_t i) { return train_model.scalar({static_cast<long>(i)}); },
                                               n_train, [&] { return io::mean_over_batches(validate_model, n_valid); },
                                               [&] { return io::mean_over_batches(test_model, n_test); }, rule,
                                               run.resumable(classifier.params()));
        io::write_graph_html(common.graph_html, train_model);
        std::printf("Optimization complete. Best validation score of %f %% obtained at iteration %lld, with test "
                    "performance %f %%\n", r.best_validation * 100, static_cast<long long>(r.best_iter + 1), r.test_score * 100);
        std::printf("The code ran for %d epochs in %.1f s (%.2f s per epoch)\n", r.epochs, r.seconds, r.seconds / r.epochs);
        if (!common.save.empty()) {
            io::save_params({classifier.hidden.W, classifier.hidden.b}, common.save, "mlp_hidden_");
            io::save_params(classifier.log_regression.params(), common.save, "mlp_logistic_");
        }
        std::printf("test error: %f %%\n", r.test_score * 100);
    } catch (const io::Stopped& stop) {
        std::cerr << "mlp: stopped by a signal; resume with --resume " << common.checkpoint << "\n";
        return stop.status;
    } catch (const Error& e) {
        std::cerr << "mlp: " << e.what() << "\n";
        return 1;
    }
    return 0;
}
