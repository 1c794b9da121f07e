// The tutorials' mlp.py: one tanh hidden layer and a logistic regression layer, with L1 and
// L2 regularisation, minibatch SGD with early stopping.
#include <cstdio>
#include <iostream>

#include "examples/io/flags.hpp"
#include "examples/io/training.hpp"
#include "theanine.hpp"
#ifdef THEANINE_HAVE_MPI
#include "examples/io/parallel.hpp"
#endif

using namespace theanine;

int main(int argc, char** argv) {
    int epochs = 1000, batch_size = 20, hidden = 500;
    std::uint32_t seed = 1234;
    double learning_rate = 0.01, L1_reg = 0.0, L2_reg = 0.0001;
    bool data_parallel = false;
    int average_every = 0;
    io::CommonFlags common;
    io::FlagParser flags("mlp", "A multilayer perceptron on MNIST, as the tutorials' mlp.py.");
    flags.add("epochs", &epochs, 1, "maximum training epochs");
    flags.add("batch-size", &batch_size, 1, "minibatch size");
    flags.add("learning-rate", &learning_rate, 0, 1e6, "SGD step");
    flags.add("hidden", &hidden, 1, "hidden units");
    flags.add("L1", &L1_reg, 0, 1e6, "L1 weight");
    flags.add("L2", &L2_reg, 0, 1e6, "L2 weight");
    flags.add("seed", &seed, "seed of the weight initialisation");
    flags.add_switch("data-parallel", &data_parallel,
                     "train on every process of an MPI job (mpirun -np N mlp --data-parallel): each takes 1/N "
                     "of every minibatch, the gradients are averaged; rank 0 prints and writes the files");
    flags.add("average-every", &average_every, 0,
              "with --data-parallel: local steps, parameters averaged every N minibatches (0: gradients every step)");
    common.add_to(flags, "folder to write the parameters into");
    flags.parse(argc, argv);
#ifdef THEANINE_HAVE_MPI
    std::optional<io::ParallelRun> par;
#endif
    try {
        if (data_parallel || average_every > 0) {
#ifdef THEANINE_HAVE_MPI
            if (!data_parallel) throw UsageError("--average-every needs --data-parallel");
            if (!common.checkpoint.empty() || !common.resume.empty()) {
                throw UsageError("--checkpoint and --resume are not available with --data-parallel");
            }
            par.emplace(true, &argc, &argv);
#else
            throw UsageError("--data-parallel: this mlp was built without MPI (install libopenmpi-dev and rebuild)");
#endif
        }
        common.apply();
#ifdef THEANINE_HAVE_MPI
        if (par && !par->root) common.output = common.save = common.graph_html = "";  // rank 0 writes the files
#endif
        io::Run run(common);
        const CompileOptions options = io::compile_options(common);
        io::MnistSplits d = io::load_mnist_splits(common);
        const long bs = batch_size;
        const std::int64_t n_train = io::count_batches(d.train_x.dim(0), bs, "training"),
                           n_valid = io::count_batches(d.valid_x.dim(0), bs, "validation"),
                           n_test = io::count_batches(d.test_x.dim(0), bs, "test");
        Variable index = lscalar("index");
        Variable x = matrix("x");
        Variable y = lvector("y");
        RandomState rng(seed);
        models::MLP classifier(rng, x, 28 * 28, hidden, 10);
        Variable cost = classifier.negative_log_likelihood(y) + L1_reg * classifier.L1 + L2_reg * classifier.L2_sqr;
        long local_bs = bs;  // the rows of each minibatch this process trains on
#ifdef THEANINE_HAVE_MPI
        std::optional<distributed::DataParallel> dp;
        if (par && par->comm) {
            distributed::DataParallelOptions dpo;
            dpo.average_every = average_every;
            dp.emplace(*par->comm, classifier.params(), dpo);
            const distributed::Shard shard = dp->shard(bs);
            d.train_x = io::shard_rows(d.train_x, bs, shard);
            d.train_y = io::shard_rows(d.train_y, bs, shard);
            local_bs = static_cast<long>(shard.size);
        }
#endif
        io::SharedSplits sets(d);
        Function test_model = io::minibatch_function(index, {classifier.errors(y)}, {}, x, y, sets.test_x, sets.test_y, bs);
        Function validate_model =
            io::minibatch_function(index, {classifier.errors(y)}, {}, x, y, sets.valid_x, sets.valid_y, bs);
        auto params = classifier.params();
        std::vector<Variable> pv(params.begin(), params.end());
        auto g = grad(cost, pv);
        Updates updates;
        for (std::size_t i = 0; i < params.size(); ++i) updates.emplace_back(params[i], params[i] - learning_rate * g[i]);
        std::optional<Function> train_model;
        std::function<double(Function&, std::int64_t)> mean_over = [](Function& f, std::int64_t n) {
            return io::mean_over_batches(f, n);
        };
#ifdef THEANINE_HAVE_MPI
        if (dp) {
            const Givens givens = {{x, subtensor(sets.train_x, {slice(index * local_bs, (index + 1) * local_bs)})},
                                   {y, subtensor(sets.train_y, {slice(index * local_bs, (index + 1) * local_bs)})}};
            train_model.emplace(dp->function({index}, {cost}, g, updates, givens, options));
            mean_over = [&](Function& f, std::int64_t n) { return io::mean_over_batches(f, n, *par->comm); };
        }
#endif
        if (!train_model) {
            train_model.emplace(io::minibatch_function(index, {cost}, updates, x, y, sets.train_x, sets.train_y, bs, options));
        }
        io::EarlyStopping rule;
        rule.n_epochs = epochs;
        rule.patience = 10000;
        auto step = [&](std::int64_t i) {
            const double c = train_model->scalar({static_cast<long>(i)});
#ifdef THEANINE_HAVE_MPI
            if (dp) dp->step_done();
#endif
            return c;
        };
        auto r = io::train_with_early_stopping(step, n_train, [&] { return mean_over(validate_model, n_valid); },
                                               [&] { return mean_over(test_model, n_test); }, rule,
                                               run.resumable(classifier.params()));
        io::write_graph_html(common.graph_html, *train_model);
        std::printf("Optimization complete. Best validation score of %f %% obtained at iteration %lld, with test "
                    "performance %f %%\n", r.best_validation * 100, static_cast<long long>(r.best_iter + 1), r.test_score * 100);
        std::printf("The code ran for %d epochs in %.1f s (%.2f s per epoch)\n", r.epochs, r.seconds, r.seconds / r.epochs);
#ifdef THEANINE_HAVE_MPI
        if (dp && par->root) {
            std::fprintf(stderr, "data parallel: %d ranks, %.2f s per epoch, rank 0 spent %.2f s in allreduce\n",
                         par->comm->size(), r.seconds / r.epochs, par->comm->allreduce_seconds());
        }
#endif
        if (!common.save.empty()) {
            io::save_params({classifier.hidden.W, classifier.hidden.b}, common.save, "mlp_hidden_");
            io::save_params(classifier.log_regression.params(), common.save, "mlp_logistic_");
        }
        std::printf("test error: %f %%\n", r.test_score * 100);
    } catch (const io::Stopped& stop) {
#ifdef THEANINE_HAVE_MPI
        // Each rank may see the signal at a different minibatch: the whole job ends at once.
        if (par) par->fail("mlp", "stopped by a signal");
#endif
        std::cerr << "mlp: stopped by a signal; resume with --resume " << common.checkpoint << "\n";
        return stop.status;
    } catch (const Error& e) {
#ifdef THEANINE_HAVE_MPI
        if (par) par->fail("mlp", e.what());
#endif
        std::cerr << "mlp: " << e.what() << "\n";
        return 1;
    }
    return 0;
}
