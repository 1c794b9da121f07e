// bench_data_parallel: the dA's and the mlp's compiled training step, on random data of
// MNIST's shape, run by one process or data-parallel by every rank of an MPI job
// (--data-parallel under mpiexec): each rank takes 1/N of every global minibatch and the
// gradients are averaged with AllReduce ops. bench/data_parallel.sh runs both ways in one go
// and prints their ratio.
//   dA   784 visible, 500 hidden, corruption 0.3, learning rate 0.1, global batch 20
//   mlp  784-500-10, tanh, softmax NLL + 0.0001 L2, learning rate 0.01, global batch 20
// Output (rank 0): one line
//   data_parallel model=M dtype=D procs=N threads=T batch=B ms_per_step=X s_per_epoch=Y
//                 allreduce_ms_per_step=Z bytes_per_step=B
// s_per_epoch is 50000 images in minibatches of --batch (default 20), training only;
// allreduce_ms_per_step is the time rank 0's steps spent starting and waiting for their
// messages (what the other steps did not hide); bytes_per_step is what each rank sends.
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <optional>
#include <string>

#include <fmt/format.h>

#include "bench/timing.hpp"
#include "distributed/data_parallel.hpp"
#include "theanine.hpp"

using namespace theanine;

int main(int argc, char** argv) {
    std::string model = "dA", floatX = "float64";
    int steps = 300, reps = 3, threads = 0;
    std::int64_t batch = 20;
    bool parallel = false;
    for (int i = 1; i < argc; ++i) {
        const std::string a = argv[i];
        auto value = [&]() -> std::string {
            if (i + 1 >= argc) {
                std::fprintf(stderr, "bench_data_parallel: %s needs a value\n", a.c_str());
                std::exit(2);
            }
            return argv[++i];
        };
        if (a == "--model") model = value();
        else if (a == "--floatX") floatX = value();
        else if (a == "--steps") steps = std::stoi(value());
        else if (a == "--reps") reps = std::stoi(value());
        else if (a == "--threads") threads = std::stoi(value());
        else if (a == "--batch") batch = std::stoi(value());
        else if (a == "--data-parallel") parallel = true;
        else {
            std::fprintf(stderr, "usage: bench_data_parallel [--model dA|mlp] [--floatX float32|float64] [--steps N] "
                                 "[--reps N] [--threads N] [--batch N] [--data-parallel]\n");
            return 2;
        }
    }
    if (model != "dA" && model != "mlp") {
        std::fprintf(stderr, "bench_data_parallel: --model takes dA or mlp\n");
        return 2;
    }
    std::optional<distributed::Environment> env;
    std::optional<distributed::Communicator> comm;
    if (parallel) {
        env.emplace(&argc, &argv);
        comm = distributed::Communicator::world();
    }
    try {
        config().floatX = dtype_from_name(floatX);
        if (threads > 0) set_num_threads(threads);
        const std::int64_t n_rows = batch * steps;
        const int n = comm ? comm->size() : 1, rank = comm ? comm->rank() : 0;
        if (batch % n != 0) throw UsageError(fmt::format("--batch {} does not split over {} ranks", batch, n));
        const std::int64_t rows = batch / n;
        // This rank's rows of every minibatch, drawn the same on every rank.
        RandomState data_rng(1);
        const Tensor all_x = data_rng.uniform(0, 1, {n_rows, 784}).astype(config().floatX);
        Tensor labels = Tensor::zeros(DType::int64, {n_rows});
        for (std::int64_t i = 0; i < n_rows; ++i) labels.data<std::int64_t>()[i] = (i * 7) % 10;
        Tensor xs = Tensor::empty(config().floatX, {steps * rows, 784}), ys = Tensor::empty(DType::int64, {steps * rows});
        for (std::int64_t s = 0; s < steps; ++s) {
            Tensor dx = xs.slice(0, s * rows, (s + 1) * rows, 1), dy = ys.slice(0, s * rows, (s + 1) * rows, 1);
            dx.copy_from(all_x.slice(0, s * batch + rank * rows, s * batch + (rank + 1) * rows, 1));
            dy.copy_from(labels.slice(0, s * batch + rank * rows, s * batch + (rank + 1) * rows, 1));
        }
        SharedVariable sx = shared(xs, "x_shard", true), sy = shared(ys, "y_shard", true);
        Variable index = lscalar("index"), x = matrix("x"), y = lvector("y");
        RandomState rng(123);
        std::optional<models::dA> da;
        std::optional<models::MLP> mlp;
        Variable cost;
        std::vector<SharedVariable> params;
        double lr = 0.1;
        Givens givens = {{x, subtensor(sx, {slice(index * rows, (index + 1) * rows)})}};
        if (model == "dA") {
            da.emplace(rng, std::make_shared<MRG_RandomStreams>(static_cast<std::uint32_t>(7 + rank)), x, 784, 500);
            cost = da->get_cost_updates(0.3, lr).first;
            params = da->params();
        } else {
            lr = 0.01;
            mlp.emplace(rng, x, 784, 500, 10);
            cost = mlp->negative_log_likelihood(y) + 0.0001 * mlp->L2_sqr;
            params = mlp->params();
            givens.emplace_back(y, subtensor(sy, {slice(index * rows, (index + 1) * rows)}));
        }
        std::vector<Variable> pv(params.begin(), params.end());
        const std::vector<Variable> g = grad(cost, pv);
        Updates updates;
        for (std::size_t k = 0; k < params.size(); ++k) updates.emplace_back(params[k], params[k] - lr * g[k]);
        std::optional<distributed::DataParallel> dp;
        std::optional<Function> step;
        if (comm) {
            dp.emplace(*comm, params);
            step.emplace(dp->function({index}, {cost}, g, updates, givens));
        } else {
            step.emplace(function({index}, {cost}, updates, givens));
        }
        std::size_t bytes = 0;
        for (const auto& p : params) bytes += static_cast<std::size_t>(p.get_value(true).size()) * dtype_size(config().floatX);
        volatile double sink = 0;
        for (int s = 0; s < std::min(steps, 30); ++s) sink = sink + step->scalar({static_cast<long>(s)});  // warm-up
        const double ar0 = comm ? comm->allreduce_seconds() : 0;
        const double seconds = bench::median_seconds(reps, [&] {
            if (comm) comm->barrier();
            for (int s = 0; s < steps; ++s) sink = sink + step->scalar({static_cast<long>(s)});
        });
        const double ar = comm ? (comm->allreduce_seconds() - ar0) / reps : 0;
        if (rank == 0 && std::getenv("BENCH_PROFILE")) {
            std::fprintf(stderr, "%s\n", step->profile_summary().c_str());
            for (const auto& line : step->in_place()) std::fprintf(stderr, "in place: %s\n", line.c_str());
        }
        if (rank == 0) {
            std::printf("data_parallel model=%s dtype=%s procs=%d threads=%d batch=%lld ms_per_step=%.4f s_per_epoch=%.3f "
                        "allreduce_ms_per_step=%.4f bytes_per_step=%zu\n",
                        model.c_str(), floatX.c_str(), n, num_threads(), static_cast<long long>(batch),
                        seconds / steps * 1e3, seconds / steps * 50000 / static_cast<double>(batch),
                        ar / steps * 1e3, comm ? bytes : std::size_t{0});
        }
    } catch (const Error& e) {
        if (comm) distributed::Environment::abort("bench_data_parallel", e.what());
        std::fprintf(stderr, "bench_data_parallel: %s\n", e.what());
        return 1;
    }
    return 0;
}
