// bench_contention: the compiled mlp and dA training steps with 1 and 2 threads, on an idle
// machine and with another process busy on one core, to check that N threads are never much
// slower than one whatever else runs (the executor measures and runs the parallel parts on
// fewer threads when they are not getting cores).
//
// The steps are the tutorials' (mlp: 784-500-10 tanh, softmax NLL + L2, batch 20; dA: 784-500,
// corruption 0.3, batch 20) on random data of MNIST's shape, float64. The busy process is a
// child spinning on a core of its own for the length of each timed run.
//
// Output: seconds per 1000 steps for each (model, load, threads), with a busy core also on 2
// threads with the adaptation off (CompileOptions::adapt_workers, the baseline it improves
// on); then per model the ratio of 2 threads to 1 thread under load, and the line
// `contention mlp=X dA=Y` (those ratios).
#include <sched.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <functional>
#include <string>
#include <vector>

#include <fmt/format.h>

#include "theanine.hpp"

using namespace theanine;

namespace {

using Clock = std::chrono::steady_clock;

// A child process that spins on the last core until stopped.
class BusyCore {
public:
    BusyCore() {
        pid_ = fork();
        if (pid_ == 0) {
            cpu_set_t set;
            CPU_ZERO(&set);
            CPU_SET(static_cast<int>(sysconf(_SC_NPROCESSORS_ONLN)) - 1, &set);
            sched_setaffinity(0, sizeof set, &set);
            volatile unsigned long x = 0;
            while (true) x = x + 1;
        }
    }
    ~BusyCore() {
        if (pid_ > 0) {
            kill(pid_, SIGKILL);
            waitpid(pid_, nullptr, 0);
        }
    }

private:
    pid_t pid_ = -1;
};

struct Step {
    std::string name;
    std::function<Function(const CompileOptions&)> compile;
};

// Seconds per 1000 calls of a fresh compile of the step, after a warm-up.
double time_steps(const Step& step, int threads, bool adapt, std::int64_t n_batches, std::int64_t calls) {
    set_num_threads(threads);
    CompileOptions options;
    options.adapt_workers = adapt;
    Function f = step.compile(options);
    for (std::int64_t i = 0; i < 50; ++i) f({static_cast<long>(i % n_batches)});
    auto t0 = Clock::now();
    for (std::int64_t i = 0; i < calls; ++i) f({static_cast<long>(i % n_batches)});
    return std::chrono::duration<double>(Clock::now() - t0).count() / static_cast<double>(calls) * 1000;
}

}  // namespace

int main(int argc, char** argv) {
    std::int64_t calls = 3000;
    if (argc > 2 && std::string(argv[1]) == "--calls") calls = std::stoll(argv[2]);
    const std::int64_t n = 2000, bs = 20, n_batches = n / bs;
    RandomState data_rng(1);
    SharedVariable set_x = shared(data_rng.uniform(0, 1, {n, 784}), "set_x");
    std::vector<std::int64_t> labels(static_cast<std::size_t>(n));
    for (auto& l : labels) l = data_rng.randint(10);
    SharedVariable set_y = shared(Tensor::from_vector<std::int64_t>({n}, labels), "set_y");

    Variable index = lscalar("index");
    Variable x = matrix("x");
    Variable y = lvector("y");
    Givens givens = {{x, set_x[{slice(index * bs, (index + 1) * bs)}]}, {y, set_y[{slice(index * bs, (index + 1) * bs)}]}};

    std::vector<Step> steps;
    steps.push_back({"mlp", [&](const CompileOptions& options) {
                         RandomState rng(1234);
                         models::MLP mlp(rng, x, 784, 500, 10);
                         Variable cost = mlp.negative_log_likelihood(y) + 1e-4 * mlp.L2_sqr;
                         auto params = mlp.params();
                         std::vector<Variable> pv(params.begin(), params.end());
                         auto g = grad(cost, pv);
                         Updates updates;
                         for (std::size_t i = 0; i < params.size(); ++i) updates.emplace_back(params[i], params[i] - 0.01 * g[i]);
                         return function({index}, {cost}, updates, givens, options);
                     }});
    steps.push_back({"dA", [&](const CompileOptions& options) {
                         RandomState rng(123);
                         auto streams = std::make_shared<MRG_RandomStreams>(static_cast<std::uint32_t>(rng.randint(1 << 30)));
                         models::dA da(rng, streams, x, 784, 500);
                         auto [cost, updates] = da.get_cost_updates(0.3, 0.1);
                         return function({index}, {cost}, updates, {givens[0]}, options);
                     }});

    std::printf("%-6s %-6s %-22s %14s\n", "model", "load", "threads", "s/1000 steps");
    std::vector<double> ratios;
    struct Config {
        int threads;
        bool adapt;
        const char* name;
    };
    const Config configs[] = {{1, true, "1"}, {2, true, "2"}, {2, false, "2, not adapting (base)"}};
    for (const Step& step : steps) {
        double under_load[3] = {0, 0, 0};
        for (bool busy : {false, true}) {
            for (int k = 0; k < 3; ++k) {
                if (!busy && k == 2) continue;
                std::unique_ptr<BusyCore> load;
                if (busy) load = std::make_unique<BusyCore>();
                const double s = time_steps(step, configs[k].threads, configs[k].adapt, n_batches, calls);
                if (busy) under_load[k] = s;
                std::printf("%-6s %-6s %-22s %14.3f\n", step.name.c_str(), busy ? "busy" : "idle", configs[k].name, s);
                std::fflush(stdout);
            }
        }
        const double r = under_load[1] / under_load[0];
        std::printf("%s with a busy core: 2 threads / 1 thread %.3f (not adapting: %.3f)\n", step.name.c_str(), r,
                    under_load[2] / under_load[0]);
        ratios.push_back(r);
    }
    std::printf("contention mlp=%.3f dA=%.3f\n", ratios[0], ratios[1]);
    return 0;
}
