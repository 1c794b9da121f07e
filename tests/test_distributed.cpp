// Data parallelism over MPI (distributed/). Run under mpirun with 2 and 4 processes (ctest
// does both); every rank runs every test case, so the collectives meet. Checks never throw
// out of a test case on one rank alone (CHECK, not REQUIRE), so a failure cannot leave the
// other ranks waiting in a collective.
#define DOCTEST_CONFIG_IMPLEMENT
#include <doctest/doctest.h>
#include <fmt/format.h>

#include <cmath>
#include <string>

#include "distributed/data_parallel.hpp"
#include "examples/io/parallel.hpp"
#include "theanine.hpp"

using namespace theanine;
using namespace theanine::distributed;

namespace {

Communicator world() { return Communicator::world(); }

double max_rel_diff(const Tensor& a, const Tensor& b) {
    auto x = a.to_doubles(), y = b.to_doubles();
    if (x.size() != y.size()) return INFINITY;
    double worst = 0;
    for (std::size_t i = 0; i < x.size(); ++i) {
        const double scale = std::max(std::abs(x[i]), std::abs(y[i]));
        if (scale > 0) worst = std::max(worst, std::abs(x[i] - y[i]) / std::max(scale, 1e-3));
    }
    return worst;
}

// A small classification set, the same on every rank: n rows of dim features, labels 0..k-1.
struct Data {
    Tensor x, y;
};
Data make_data(std::int64_t n, std::int64_t dim, int k, std::uint32_t seed) {
    RandomState rng(seed);
    Data d{rng.uniform(-1, 1, {n, dim}).astype(DType::float64), Tensor::zeros(DType::int64, {n})};
    for (std::int64_t i = 0; i < n; ++i) {
        double s = 0;
        for (std::int64_t j = 0; j < dim; ++j) s += d.x.at({i, j}) * (j % 3 - 1);
        d.y.data<std::int64_t>()[i] = s > 0.3 ? 2 : s > -0.3 ? 1 : 0;
    }
    (void)k;
    return d;
}

// One mlp trainer: a model, a compiled SGD step over minibatches of `rows` rows of (x, y).
struct MlpRun {
    Variable x = matrix("x"), y = lvector("y"), index = lscalar("index");
    RandomState rng;
    models::MLP mlp;
    Variable cost;
    std::vector<SharedVariable> params;
    std::vector<Variable> grads;
    Updates updates;
    SharedVariable sx, sy;
    Givens givens;
    MlpRun(const Data& d, std::int64_t rows, double lr)
        : rng(99), mlp(rng, x, static_cast<int>(d.x.dim(1)), 7, 3) {
        cost = mlp.negative_log_likelihood(y) + 0.001 * mlp.L2_sqr;
        params = mlp.params();
        grads = grad(cost, std::vector<Variable>(params.begin(), params.end()));
        for (std::size_t i = 0; i < params.size(); ++i) updates.emplace_back(params[i], params[i] - lr * grads[i]);
        sx = shared(d.x, "set_x");
        sy = shared(d.y, "set_y");
        givens = {{x, subtensor(sx, {slice(index * rows, (index + 1) * rows)})},
                  {y, subtensor(sy, {slice(index * rows, (index + 1) * rows)})}};
    }
};

}  // namespace

TEST_CASE("allreduce sums, averages and takes the max and min over the ranks") {
    const Communicator comm = world();
    const int n = comm.size(), r = comm.rank();
    Variable v = vector("v");
    Function f = function({v}, {allreduce(v, comm, Over::sum), allreduce(v, comm, Over::mean),
                                allreduce(v, comm, Over::max), allreduce(v, comm, Over::min)});
    // Rank r gives [r + 1, 2 (r + 1), -r]; sums over r = 0..n-1 by hand.
    const double s1 = n * (n + 1) / 2.0;
    for (int call = 0; call < 3; ++call) {  // the same plan, called again, gives the same
        auto out = f({Tensor::from_vector<double>({3}, {r + 1.0, 2.0 * (r + 1), -1.0 * r})});
        CHECK(out[0].to_doubles() == std::vector<double>{s1, 2 * s1, -(s1 - n)});
        CHECK(out[1].to_doubles() == std::vector<double>{s1 / n, 2 * s1 / n, -(s1 - n) / n});
        CHECK(out[2].to_doubles() == std::vector<double>{1.0 * n, 2.0 * n, 0.0});
        CHECK(out[3].to_doubles() == std::vector<double>{1.0, 2.0, -(n - 1.0)});
    }
    // float32 and int64 travel as themselves.
    Variable fv = vector("fv", DType::float32);
    Variable iv = lvector("iv");
    Function g = function({fv, iv}, {allreduce(fv, comm), allreduce(iv, comm)});
    auto out = g({Tensor::from_vector<float>({2}, {0.5f, r * 1.0f}),
                  Tensor::from_vector<std::int64_t>({2}, {r, std::int64_t{1} << 40})});
    CHECK(out[0].dtype() == DType::float32);
    CHECK(out[0].to_doubles() == std::vector<double>{0.5 * n, s1 - n});
    CHECK(out[1].dtype() == DType::int64);
    CHECK(out[1].to_doubles() == std::vector<double>{s1 - n, static_cast<double>(n) * (1LL << 40)});
}

TEST_CASE("one message for several tensors: shapes, a transposed view, a scalar") {
    const Communicator comm = world();
    const int n = comm.size(), r = comm.rank();
    Variable a = matrix("a"), b = matrix("b"), c = scalar("c");
    auto red = allreduce({a, b.T(), c * 2.0}, comm, Over::mean);
    CHECK(red[0].node().inputs[0].node().op->name() == "AllReduce{sum, bucket of 3}");
    Function f = function({a, b, c}, red);
    Tensor ta = Tensor::from_vector<double>({2, 3}, {1, 2, 3, 4, 5, 6});
    Tensor tb = Tensor::from_vector<double>({2, 3}, {r * 1.0, 0, 0, 0, 0, 7});
    for (int call = 0; call < 2; ++call) {
        auto out = f({ta, tb, Tensor::scalar<double>(r)});
        CHECK(out[0].to_doubles() == ta.to_doubles());  // every rank gave the same a
        CHECK(out[1].shape() == Shape{3, 2});
        // b.T's first element is rank-dependent: the mean of r over the ranks.
        CHECK(out[1].at({0, 0}) == doctest::Approx((n - 1) / 2.0).epsilon(1e-15));
        CHECK(out[1].at({2, 1}) == 7.0);
        CHECK(out[2].item() == doctest::Approx(n - 1.0).epsilon(1e-15));  // mean of 2r
    }
}

TEST_CASE("an allreduce whose input is also returned keeps the input; one whose input is dead works in place") {
    const Communicator comm = world();
    const int n = comm.size(), r = comm.rank();
    Variable v = vector("v");
    Variable t = v * 3.0;
    Function both = function({v}, {t, allreduce(t, comm)});
    auto out = both({Tensor::from_vector<double>({2}, {1.0 + r, 1.0})});
    CHECK(out[0].to_doubles() == std::vector<double>{3.0 * (1 + r), 3.0});
    CHECK(out[1].to_doubles() == std::vector<double>{3.0 * n * (n + 1) / 2, 3.0 * n});
    Function alone = function({v}, {allreduce(t, comm) + 1.0});
    bool granted = false;
    for (const auto& line : alone.in_place()) granted = granted || line.find("AllReduce") != std::string::npos;
    CHECK(granted);
    auto out2 = alone({Tensor::from_vector<double>({2}, {1.0 + r, 1.0})});
    CHECK(out2[0].to_doubles() == std::vector<double>{3.0 * n * (n + 1) / 2 + 1, 3.0 * n + 1});
}

TEST_CASE("the gradient through a sum over ranks is the sum over ranks of the gradients") {
    // c_r = sum(allreduce(x * w) * u) on rank r: d(sum_s c_s)/dx_r = (sum_s u_s) * w_r.
    const Communicator comm = world();
    const int n = comm.size(), r = comm.rank();
    Variable x = vector("x"), w = vector("w"), u = vector("u");
    Variable c = sum(allreduce(x * w, comm) * u);
    Function f = function({x, w, u}, {grad(c, x)});
    auto out = f({Tensor::from_vector<double>({2}, {0.5, -1.0}), Tensor::from_vector<double>({2}, {r + 1.0, 2.0}),
                  Tensor::from_vector<double>({2}, {1.0, r * 1.0})});
    const double su0 = n, su1 = n * (n - 1) / 2.0;
    CHECK(out[0].to_doubles() == std::vector<double>{su0 * (r + 1), su1 * 2});
    // max and min have no gradient.
    CHECK_THROWS_WITH_AS(grad(sum(allreduce(x, comm, Over::max)), x),
                         doctest::Contains("the max or min over ranks has no gradient"), UsageError);
}

TEST_CASE("the exchange: overlapped and blocking give the same; measuring picks one way on every rank") {
    const Communicator comm = world();
    const int r = comm.rank();
    Variable v = vector("v");
    auto over = std::make_shared<AllReduce>(comm, distributed::Reduce::sum, 1, Exchange::overlap);
    auto block = std::make_shared<AllReduce>(comm, distributed::Reduce::sum, 1, Exchange::blocking);
    auto measure = std::make_shared<AllReduce>(comm, distributed::Reduce::sum, 1, Exchange::measure);
    Function f = function({v}, {apply1(over, {v}), apply1(block, {v}), apply1(measure, {v * 2.0})});
    Tensor arg = Tensor::from_vector<double>({3}, {1.0 * r, 1.0, 2.0});
    for (int call = 0; call < 30; ++call) {
        auto out = f({arg});
        CHECK(out[0].to_doubles() == out[1].to_doubles());
        for (std::size_t i = 0; i < 3; ++i) CHECK(out[2].to_doubles()[i] == 2 * out[0].to_doubles()[i]);
    }
    CHECK(measure->decided());
    const double choice = measure->blocking() ? 1.0 : 0.0;
    CHECK(comm.allreduce(choice, distributed::Reduce::min) == comm.allreduce(choice, distributed::Reduce::max));
}

TEST_CASE("DataParallel: N ranks with minibatch b/N take the steps one process takes with minibatch b") {
    const Communicator comm = world();
    const std::int64_t batch = 12, steps = 8;  // 12 rows split over 2 or 4 ranks
    const Data d = make_data(batch * steps, 5, 3, 7);
    // The reference: one process, whole minibatches (every rank computes it alone).
    MlpRun ref(d, batch, 0.1);
    Function ref_step = function({ref.index}, {ref.cost}, ref.updates, ref.givens);
    // Data parallel: this rank's rows of every minibatch.
    MlpRun mine(d, batch / comm.size(), 0.1);
    DataParallel dp(comm, mine.params);
    const Shard s = dp.shard(batch);
    CHECK(s.size == batch / comm.size());
    CHECK(s.offset == comm.rank() * s.size);
    mine.sx.set_value(io::shard_rows(d.x, batch, s));
    mine.sy.set_value(io::shard_rows(d.y, batch, s));
    Function step = dp.function({mine.index}, {mine.cost}, mine.grads, mine.updates, mine.givens);
    double worst_cost = 0;
    for (std::int64_t i = 0; i < steps; ++i) {
        const double c_ref = ref_step.scalar({static_cast<long>(i)});
        const double c = step.scalar({static_cast<long>(i)});
        worst_cost = std::max(worst_cost, std::abs(c - c_ref) / std::abs(c_ref));
    }
    CHECK(worst_cost <= 1e-12);  // the printed cost: the global minibatch's
    for (std::size_t k = 0; k < ref.params.size(); ++k) {
        INFO("parameter " << ref.params[k].name());
        const double diff = max_rel_diff(ref.params[k].get_value(), mine.params[k].get_value());
        CHECK(diff <= 1e-12);
        CHECK(max_rel_diff(ref.params[k].get_value(), Tensor::zeros(DType::float64, ref.params[k].get_value().shape())) > 0);
    }
}

TEST_CASE("DataParallel from the cost and an update rule; the dA without corruption") {
    const Communicator comm = world();
    const std::int64_t batch = 8, steps = 5;
    RandomState data_rng(3);
    const Tensor xs = data_rng.uniform(0, 1, {batch * steps, 12}).astype(DType::float64);
    auto run = [&](std::int64_t rows, std::optional<DataParallel>* dp) {
        RandomState rng(123);
        auto streams = std::make_shared<RandomStreams>(5);
        Variable x = matrix("x"), index = lscalar("index");
        models::dA da(rng, streams, x, 12, 6);
        auto [cost, updates] = da.get_cost_updates(0.0, 0.1);
        Tensor data = xs;
        if (dp) {
            dp->emplace(comm, da.params());
            data = io::shard_rows(xs, batch, (*dp)->shard(batch));
        }
        SharedVariable sx = shared(data, "sx");
        const Givens givens = {{x, subtensor(sx, {slice(index * rows, (index + 1) * rows)})}};
        auto ps = da.params();
        std::optional<Function> f;
        if (dp) {
            f.emplace((*dp)->function({index}, {cost}, cost,
                                      [&](const std::vector<Variable>& p, const std::vector<Variable>& g) {
                                          Updates u;
                                          for (std::size_t k = 0; k < p.size(); ++k) u.emplace_back(ps[k], p[k] - 0.1 * g[k]);
                                          return u;
                                      },
                                      givens));
        } else {
            f.emplace(function({index}, {cost}, updates, givens));
        }
        std::vector<double> costs;
        for (std::int64_t i = 0; i < steps; ++i) costs.push_back(f->scalar({static_cast<long>(i)}));
        return std::make_pair(costs, std::vector<Tensor>{ps[0].get_value(), ps[1].get_value(), ps[2].get_value()});
    };
    std::optional<DataParallel> dp;
    auto [ref_costs, ref_params] = run(batch, nullptr);
    auto [costs, params] = run(batch / comm.size(), &dp);
    for (std::int64_t i = 0; i < steps; ++i) CHECK(std::abs(costs[i] - ref_costs[i]) <= 1e-12 * std::abs(ref_costs[i]));
    for (std::size_t k = 0; k < 3; ++k) CHECK(max_rel_diff(params[k], ref_params[k]) <= 1e-12);
}

TEST_CASE("periodic averaging: local steps, then the mean of the replicas every K steps") {
    const Communicator comm = world();
    const int n = comm.size();
    const std::int64_t batch = 4 * n, steps = 6, K = 3;
    const Data d = make_data(batch * steps, 4, 3, 11);
    // The reference, on every rank: all n replicas trained locally on their own shards, their
    // parameters averaged by hand every K steps.
    std::vector<std::unique_ptr<MlpRun>> replicas;
    std::vector<Function> fs;
    for (int q = 0; q < n; ++q) {
        replicas.push_back(std::make_unique<MlpRun>(d, batch / n, 0.2));
        const Shard s{q * (batch / n), batch / n};
        replicas.back()->sx.set_value(io::shard_rows(d.x, batch, s));
        replicas.back()->sy.set_value(io::shard_rows(d.y, batch, s));
        fs.push_back(function({replicas.back()->index}, {replicas.back()->cost}, replicas.back()->updates,
                              replicas.back()->givens));
    }
    MlpRun mine(d, batch / n, 0.2);
    DataParallelOptions o;
    o.average_every = K;
    o.average_outputs = false;
    DataParallel dp(comm, mine.params, o);
    const Shard s = dp.shard(batch);
    mine.sx.set_value(io::shard_rows(d.x, batch, s));
    mine.sy.set_value(io::shard_rows(d.y, batch, s));
    Function step = dp.function({mine.index}, {mine.cost}, mine.grads, mine.updates, mine.givens);
    int averaged = 0;
    for (std::int64_t i = 0; i < steps; ++i) {
        step({static_cast<long>(i)});
        averaged += dp.step_done() ? 1 : 0;
        for (int q = 0; q < n; ++q) fs[static_cast<std::size_t>(q)]({static_cast<long>(i)});
        if ((i + 1) % K == 0) {
            for (std::size_t k = 0; k < mine.params.size(); ++k) {
                Tensor mean = Tensor::zeros(DType::float64, replicas[0]->params[k].get_value().shape());
                std::vector<double> acc(static_cast<std::size_t>(mean.size()), 0.0);
                for (int q = 0; q < n; ++q) {
                    auto v = replicas[static_cast<std::size_t>(q)]->params[k].get_value().to_doubles();
                    for (std::size_t e = 0; e < acc.size(); ++e) acc[e] += v[e];
                }
                for (std::size_t e = 0; e < acc.size(); ++e) mean.data<double>()[e] = acc[e] / n;
                for (int q = 0; q < n; ++q) replicas[static_cast<std::size_t>(q)]->params[k].set_value(mean);
            }
        }
    }
    CHECK(averaged == steps / K);
    CHECK(dp.averagings() == steps / K);
    for (std::size_t k = 0; k < mine.params.size(); ++k) {
        INFO("parameter " << k);
        CHECK(max_rel_diff(mine.params[k].get_value(), replicas[static_cast<std::size_t>(comm.rank())]->params[k].get_value()) <= 1e-12);
    }
}

TEST_CASE("DataParallel starts every replica from rank 0's values") {
    const Communicator comm = world();
    SharedVariable w = shared(Tensor::full(DType::float64, {2, 3}, 10.0 + comm.rank()), "w");
    SharedVariable b = shared(Tensor::full(DType::float32, {3}, -1.0 * comm.rank()), "b");
    DataParallel dp(comm, {w, b});
    CHECK(w.get_value().to_doubles() == std::vector<double>(6, 10.0));
    CHECK(b.get_value().to_doubles() == std::vector<double>(3, 0.0));
}

TEST_CASE("errors name what is wrong and where") {
    const Communicator comm = world();
    // Parameters that differ on one rank: every rank throws, naming it.
    SharedVariable w = shared(Tensor::zeros(DType::float64, {2, comm.rank() == 1 ? 4 : 3}), "W");
    CHECK_THROWS_WITH_AS(DataParallel(comm, {w}),
                         doctest::Contains("the parameters of rank(s) 1 differ from rank 0's (rank 0: [W float64 (2, 3)]"),
                         DistributedError);
    SharedVariable ok = shared(Tensor::zeros(DType::float64, {2}), "ok");
    DataParallel dp(comm, {ok});
    const std::string uneven =
        fmt::format("a minibatch of {} rows does not split evenly over {} ranks", comm.size() + 1, comm.size());
    CHECK_THROWS_WITH_AS(dp.shard(comm.size() + 1), doctest::Contains(uneven.c_str()), UsageError);
    CHECK_THROWS_WITH_AS(allreduce(lvector("labels"), comm, Over::mean),
                         doctest::Contains("the mean over ranks takes float tensors; input 0 (labels) is int64 vector"),
                         UsageError);
    CHECK_THROWS_WITH_AS(allreduce({vector("a"), vector("f", DType::float32)}, comm),
                         doctest::Contains("one message holds one dtype: input 0 is float64 vector, input 1 (f) is float32 vector"),
                         UsageError);
    Variable x = vector("x");
    Variable unused = x * 2.0;
    CHECK_THROWS_WITH_AS(dp.function({x}, {}, {unused}, {{ok, ok - x}}),
                         doctest::Contains("no update reads gradient 0 (of 'ok')"), UsageError);
    CHECK_THROWS_WITH_AS(dp.function({x}, {sum(x).astype(DType::int64)}, {x}, {{ok, ok - x}}),
                         doctest::Contains("output 0"), UsageError);
}

int main(int argc, char** argv) {
    Environment env(&argc, &argv);
    doctest::Context context(argc, argv);
    int result = context.run();
    // Every rank ends with the worst result, so mpirun reports a failure on any rank.
    MPI_Allreduce(MPI_IN_PLACE, &result, 1, MPI_INT, MPI_MAX, MPI_COMM_WORLD);
    return result;
}
