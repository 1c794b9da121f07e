// The tutorials' logistic_sgd.py: multiclass logistic regression on MNIST, minibatch SGD
// with early stopping on the validation error.
#include <cstdio>
#include <iostream>

#include <fmt/format.h>

#include "examples/io/flags.hpp"
#include "examples/io/training.hpp"
#include "theanine.hpp"

using namespace theanine;

int main(int argc, char** argv) {
    int epochs = 1000, batch_size = 600;
    double learning_rate = 0.13;
    io::CommonFlags common;
    io::FlagParser flags("logistic_sgd", "Logistic regression on MNIST, as the tutorials' logistic_sgd.py.");
    flags.add("epochs", &epochs, 1, "maximum training epochs");
    flags.add("batch-size", &batch_size, 1, "minibatch size");
    flags.add("learning-rate", &learning_rate, 0, 1e6, "SGD step");
    common.add_to(flags, "folder to write logistic_W.npy and logistic_b.npy into");
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
        models::LogisticRegression classifier(x, 28 * 28, 10);
        Variable cost = classifier.negative_log_likelihood(y);
        Function test_model = io::minibatch_function(index, {classifier.errors(y)}, {}, x, y, sets.test_x, sets.test_y, bs);
        Function validate_model =
            io::minibatch_function(index, {classifier.errors(y)}, {}, x, y, sets.valid_x, sets.valid_y, bs);
        auto g = grad(cost, std::vector<Variable>{classifier.W, classifier.b});
        Function train_model = io::minibatch_function(
            index, {cost}, {{classifier.W, classifier.W - learning_rate * g[0]}, {classifier.b, classifier.b - learning_rate * g[1]}},
            x, y, sets.train_x, sets.train_y, bs, options);
        const std::int64_t n_train = io::count_batches(d.train_x.dim(0), bs, "training"),
                           n_valid = io::count_batches(d.valid_x.dim(0), bs, "validation"),
                           n_test = io::count_batches(d.test_x.dim(0), bs, "test");
        io::EarlyStopping rule;
        rule.n_epochs = epochs;
        rule.patience = 5000;
        auto r = io::train_with_early_stopping([&](std::int64_t i) { return train_model.scalar({static_cast<long>(i)}); },
                                               n_train, [&] { return io::mean_over_batches(validate_model, n_valid); },
                                               [&] { return io::mean_over_batches(test_model, n_test); }, rule,
                                               run.resumable(classifier.params()));
        io::write_graph_html(common.graph_html, train_model);
        std::printf("Optimization complete with best validation score of %f %%, with test performance %f %%\n",
                    r.best_validation * 100, r.test_score * 100);
        std::printf("The code ran for %d epochs, with %f epochs/sec\n", r.epochs, r.epochs / r.seconds);
        if (!common.save.empty()) io::save_params(classifier.params(), common.save, "logistic_");
        std::printf("test error: %f %%\n", r.test_score * 100);
    } catch (const io::Stopped& stop) {
        std::cerr << "logistic_sgd: stopped by a signal; resume with --resume " << common.checkpoint << "\n";
        return stop.status;
    } catch (const Error& e) {
        std::cerr << "logistic_sgd: " << e.what() << "\n";
        return 1;
    }
    return 0;
}
