// Writes the graph view (Function::to_html) of an MLP's training step, compiled with
// profiling and called three times, to argv[1]; prints the number of steps. The browser test
// (tests/browser/graph_view.sh) loads the page in headless Chromium.
#include <cstdio>
#include <fstream>
#include <iostream>

#include "theanine.hpp"

using namespace theanine;

int main(int argc, char** argv) {
    if (argc != 2) {
        std::cerr << "usage: write_graph_page FILE.html\n";
        return 2;
    }
    try {
        RandomState rng(1234);
        Variable x = matrix("x");
        Variable y = lvector("y");
        models::MLP net(rng, x, 30, 16, 5);
        Variable cost = net.negative_log_likelihood(y) + 0.0001 * net.L2_sqr;
        const auto params = net.params();
        const auto grads = grad(cost, std::vector<Variable>(params.begin(), params.end()));
        Updates updates;
        for (std::size_t i = 0; i < params.size(); ++i) updates.push_back({params[i], params[i] - 0.1 * grads[i]});
        CompileOptions options;
        options.profile = true;
        Function train = function({x, y}, {cost, net.errors(y)}, updates, {}, options);
        RandomState data(7);
        Tensor xs = Tensor::empty(DType::float64, {20, 30});
        Tensor ys = Tensor::empty(DType::int64, {20});
        for (std::int64_t i = 0; i < xs.size(); ++i) xs.data<double>()[i] = data.next_double();
        for (std::int64_t i = 0; i < ys.size(); ++i) ys.data<std::int64_t>()[i] = data.randint(5);
        for (int call = 0; call < 3; ++call) train({xs, ys});
        std::ofstream(argv[1]) << train.to_html();
        std::printf("%zu\n", train.n_steps());
    } catch (const Error& e) {
        std::cerr << "write_graph_page: " << e.what() << "\n";
        return 1;
    }
    return 0;
}
