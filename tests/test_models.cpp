// The supervised tutorial models on small data the tests make: costs fall, errors beat
// chance, stacked dA pretraining functions take named inputs with defaults, and parameters
// saved to .npy reload to the same outputs.
#include <doctest/doctest.h>

#include <filesystem>

#include <unistd.h>

#include "examples/io/training.hpp"
#include "support/helpers.hpp"

using namespace theanine;
using namespace theanine::testing;

namespace {
// n points in d dimensions from k Gaussian-ish clusters, labels = cluster.
std::pair<Tensor, Tensor> clusters(std::int64_t n, std::int64_t d, int k, std::uint32_t seed) {
    RandomState rs(seed);
    Tensor centers = rs.uniform(0, 1, {k, d});
    Tensor x = Tensor::empty(DType::float64, {n, d});
    Tensor y = Tensor::empty(DType::int64, {n});
    for (std::int64_t i = 0; i < n; ++i) {
        const int c = static_cast<int>(i % k);
        y.data<std::int64_t>()[i] = c;
        for (std::int64_t j = 0; j < d; ++j) {
            x.data<double>()[i * d + j] = std::clamp(centers.at({c, j}) + 0.15 * (rs.next_double() - 0.5), 0.0, 1.0);
        }
    }
    return {x, y};
}

struct Setup {
    SharedVariable sx, sy;
    Variable index = lscalar("index"), x = matrix("x"), y = lvector("y");
    Givens batch(long bs) {
        return {{x, sx[{slice(index * bs, (index + 1) * bs)}]}, {y, sy[{slice(index * bs, (index + 1) * bs)}]}};
    }
};

double train_epochs(Function& f, int epochs, int batches, double* first) {
    double last = 0;
    for (int e = 0; e < epochs; ++e) {
        double c = 0;
        for (int b = 0; b < batches; ++b) c += f.scalar({b});
        if (e == 0) *first = c / batches;
        last = c / batches;
    }
    return last;
}
}  // namespace

TEST_CASE("logistic regression learns separable clusters; errors counts mistakes") {
    auto [xv, yv] = clusters(300, 16, 4, 1);
    Setup s{shared(xv, "x"), shared(yv, "y")};
    models::LogisticRegression lr(s.x, 16, 4);
    Variable cost = lr.negative_log_likelihood(s.y);
    auto g = grad(cost, std::vector<Variable>{lr.W, lr.b});
    Function train = function({s.index}, {cost}, {{lr.W, lr.W - 0.5 * g[0]}, {lr.b, lr.b - 0.5 * g[1]}}, s.batch(30));
    Function initial = function({s.x, s.y}, {cost});
    CHECK(initial({xv, yv})[0].item() == doctest::Approx(std::log(4.0)).epsilon(1e-12));  // zero weights: uniform p
    double first = 0;
    double last = train_epochs(train, 20, 10, &first);
    CHECK(last < 0.5 * first);
    Function err = function({s.x, s.y}, {lr.errors(s.y)});
    CHECK(err({xv, yv})[0].item() < 0.05);  // chance is 0.75
    CHECK_THROWS_WITH_AS(lr.errors(matrix("m")), doctest::Contains("y should have the same shape"), UsageError);
    CHECK_THROWS_WITH_AS(lr.errors(vector("v")), doctest::Contains("y must be an integer vector"), UsageError);
}

TEST_CASE("the MLP with L1/L2 terms trains below chance") {
    auto [xv, yv] = clusters(300, 16, 3, 2);
    Setup s{shared(xv, "x"), shared(yv, "y")};
    RandomState rng(1234);
    models::MLP mlp(rng, s.x, 16, 20, 3);
    Variable cost = mlp.negative_log_likelihood(s.y) + 0.0 * mlp.L1 + 0.0001 * mlp.L2_sqr;
    auto params = mlp.params();
    std::vector<Variable> pv(params.begin(), params.end());
    auto g = grad(cost, pv);
    Updates up;
    for (std::size_t i = 0; i < params.size(); ++i) up.emplace_back(params[i], params[i] - 0.1 * g[i]);
    Function train = function({s.index}, {cost}, up, s.batch(20));
    double first = 0;
    double last = train_epochs(train, 15, 15, &first);
    CHECK(last < 0.7 * first);
    Function err = function({s.x, s.y}, {mlp.errors(s.y)});
    CHECK(err({xv, yv})[0].item() < 0.2);  // chance is 2/3
    // The L2 term is the sum of squared weights.
    double l2 = 0;
    for (double w : mlp.hidden.W.get_value().to_doubles()) l2 += w * w;
    for (double w : mlp.log_regression.W.get_value().to_doubles()) l2 += w * w;
    CHECK(function({}, {mlp.L2_sqr}).scalar() == doctest::Approx(l2).epsilon(1e-12));
}

TEST_CASE("SdA: pretraining functions called by name with defaults, then fine-tuning") {
    auto [xv, yv] = clusters(200, 20, 2, 3);
    SharedVariable sx = shared(xv, "x"), sy = shared(yv, "y");
    RandomState numpy_rng(89677);
    models::SdA sda(numpy_rng, nullptr, 20, {12, 8}, 2);
    auto fns = sda.pretraining_functions(sx, 10);
    REQUIRE(fns.size() == 2);
    // The dA layers share the hidden layers' weights.
    CHECK(sda.dA_layers[1].W.same(sda.sigmoid_layers[1].W));
    for (auto& f : fns) {
        double first = 0, last = 0;
        for (int e = 0; e < 20; ++e) {
            double c = 0;
            for (int b = 0; b < 20; ++b) c += f.call_named({arg("index", b), arg("corruption", 0.1), arg("lr", 0.1)})[0].item();
            if (e == 0) first = c;
            last = c;
        }
        CHECK(last < first);
        f.call_named({arg("index", 0)});  // corruption and lr take their defaults
    }
    auto params = sda.params();
    std::vector<Variable> pv(params.begin(), params.end());
    auto g = grad(sda.finetune_cost, pv);
    Updates up;
    for (std::size_t i = 0; i < params.size(); ++i) up.emplace_back(params[i], params[i] - 0.1 * g[i]);
    Variable index = lscalar("index");
    Function train = function({index}, {sda.finetune_cost}, up,
                              {{sda.x, sx[{slice(index * 10, (index + 1) * 10)}]}, {sda.y, sy[{slice(index * 10, (index + 1) * 10)}]}});
    for (int e = 0; e < 30; ++e) {
        for (int b = 0; b < 20; ++b) train.scalar({b});
    }
    Function err = function({sda.x, sda.y}, {sda.errors});
    CHECK(err({xv, yv})[0].item() < 0.25);  // chance is 0.5
}

TEST_CASE("parameters saved to .npy reload to the same outputs") {
    auto dir = std::filesystem::temp_directory_path() / ("theanine_params_" + std::to_string(::getpid()));
    RandomState rng(5);
    Variable x = matrix("x");
    models::MLP a(rng, x, 6, 5, 3);
    models::MLP b(rng, x, 6, 5, 3);  // different random weights
    Tensor xv = random_tensor({4, 6}, 9);
    Function fa = function({x}, {a.log_regression.p_y_given_x});
    Function fb = function({x}, {b.log_regression.p_y_given_x});
    a.log_regression.W.set_value(random_tensor({5, 3}, 10));
    io::save_params({a.hidden.W, a.hidden.b}, dir.string(), "hidden_");
    io::save_params(a.log_regression.params(), dir.string(), "logistic_");
    CHECK(fa({xv})[0].to_doubles() != fb({xv})[0].to_doubles());
    io::load_params({b.hidden.W, b.hidden.b}, dir.string(), "hidden_");
    io::load_params(b.log_regression.params(), dir.string(), "logistic_");
    CHECK(fa({xv})[0].to_doubles() == fb({xv})[0].to_doubles());
    models::MLP c(rng, x, 6, 7, 3);
    CHECK_THROWS_WITH_AS(io::load_params({c.hidden.W}, dir.string(), "hidden_"),
                         doctest::Contains("holds float64 (6, 5), but 'W' is float64 (6, 7)"), UsageError);
    std::filesystem::remove_all(dir);
}

TEST_CASE("LeNet5: the tutorial's initialisation order and bounds, and it learns to tell bars apart") {
    // Weights come from one RandomState in the tutorial's order: layer0, layer1, the hidden
    // layer; bounds sqrt(6 / (fan_in + fan_out)) with fan_out = filters*25 / 4 rounded down.
    const std::int64_t batch = 20;
    Variable x = matrix("x"), y = lvector("y");
    RandomState rng(23455), expect(23455);
    models::LeNet5 net(rng, x, batch, {4, 6});
    const double b0 = std::sqrt(6.0 / (25 + 4 * 25 / 4)), b1 = std::sqrt(6.0 / (4 * 25 + 6 * 25 / 4));
    const double b2 = std::sqrt(6.0 / (6 * 16 + 500));
    CHECK(net.layer0.W.get_value().shape() == Shape{4, 1, 5, 5});
    CHECK(net.layer0.W.get_value().to_doubles() == expect.uniform(-b0, b0, {4, 1, 5, 5}).to_doubles());
    CHECK(net.layer1.W.get_value().to_doubles() == expect.uniform(-b1, b1, {6, 4, 5, 5}).to_doubles());
    CHECK(net.layer2.W.get_value().to_doubles() == expect.uniform(-b2, b2, {96, 500}).to_doubles());
    CHECK(net.params().size() == 8);
    CHECK(net.params()[0].same(net.layer3.W));
    CHECK(net.params()[7].same(net.layer0.b));

    // Three classes of 28x28 images: a vertical, a horizontal or a diagonal bar at a random
    // place, over noise.
    const std::int64_t n = 200;
    RandomState rs(5);
    Tensor xv = Tensor::empty(DType::float64, {n, 784});
    Tensor yv = Tensor::empty(DType::int64, {n});
    for (std::int64_t i = 0; i < n; ++i) {
        const int label = static_cast<int>(i % 3);
        const std::int64_t at = 4 + static_cast<std::int64_t>(rs.next_double() * 20);
        double* img = xv.data<double>() + i * 784;
        for (int p = 0; p < 784; ++p) img[p] = 0.2 * rs.next_double();
        for (std::int64_t k = 2; k < 26; ++k) {
            const std::int64_t r = label == 0 ? k : label == 1 ? at : k;
            const std::int64_t c = label == 0 ? at : label == 1 ? k : k;
            img[r * 28 + c] = 1.0;
        }
        yv.data<std::int64_t>()[i] = label;
    }
    Setup s{shared(xv, "x"), shared(yv, "y")};
    RandomState init(23455);
    models::LeNet5 model(init, s.x, batch, {4, 6});
    Variable cost = model.negative_log_likelihood(s.y);
    auto params = model.params();
    std::vector<Variable> pv(params.begin(), params.end());
    auto g = grad(cost, pv);
    Updates up;
    for (std::size_t i = 0; i < params.size(); ++i) up.emplace_back(params[i], params[i] - 0.1 * g[i]);
    Function train = function({s.index}, {cost}, up, s.batch(batch));
    double first = 0;
    const double last = train_epochs(train, 12, 10, &first);
    CHECK(last < 0.3 * first);
    Function err = function({s.index}, {model.errors(s.y)}, {}, s.batch(batch));
    double errors = 0;
    for (long b = 0; b < 10; ++b) errors += err({b})[0].item();
    CHECK(errors / 10 < 0.1);  // chance is 2/3
}
