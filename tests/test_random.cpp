// Random streams against the numpy 1.24 / Theano 1.0.5 reference draws, bit for bit.
#include <doctest/doctest.h>

#include <fmt/format.h>

#include "support/fixtures.hpp"
#include "support/helpers.hpp"
#include "theanine.hpp"

using namespace theanine;
using theanine::testing::bit_equal;
using theanine::testing::count_diff;
using theanine::testing::error_of;
using theanine::testing::fixture;
using theanine::testing::T64;

namespace {

struct FloatXScope {
    DType saved;
    explicit FloatXScope(DType dt) : saved(config().floatX) { config().floatX = dt; }
    ~FloatXScope() { config().floatX = saved; }
};

Tensor stack3(const std::vector<Tensor>& calls, DType dt) {
    Shape s = calls[0].shape();
    s.insert(s.begin(), 3);
    Tensor out = Tensor::empty(dt, s);
    const std::int64_t n = calls[0].size();
    dispatch(dt, [&]<class T>() {
        for (int k = 0; k < 3; ++k) {
            Tensor c = calls[k].astype(dt);
            for (std::int64_t i = 0; i < n; ++i) out.data<T>()[k * n + i] = c.data<T>()[i];
        }
    });
    return out;
}

void check_state(const RandomState& rs, const std::string& prefix) {
    Tensor key = fixture(prefix + "_key.npy");
    Tensor meta = fixture(prefix + "_meta.npy");
    REQUIRE(key.size() == 624);
    std::int64_t mismatched = 0;
    for (int i = 0; i < 624; ++i) mismatched += rs.key()[i] != static_cast<std::uint32_t>(key.data<std::int64_t>()[i]);
    CHECK(mismatched == 0);
    CHECK(rs.pos() == static_cast<int>(meta.at({0})));
    CHECK(rs.has_gauss() == (meta.at({1}) != 0));
    CHECK(rs.cached_gaussian() == meta.at({2}));
}

}  // namespace

TEST_CASE("RandomState reproduces numpy's legacy generator (fixture A)") {
    for (std::uint32_t seed : {0u, 1u, 123u, 4294967295u, 987654321u}) {
        CAPTURE(seed);
        const std::string p = fmt::format("A_np_s{}_", seed);
        RandomState rs(seed);
        CHECK(bit_equal(rs.random_sample({10}), fixture(p + "1_random_sample.npy")));
        std::vector<std::int64_t> ints;
        for (int i = 0; i < 5; ++i) ints.push_back(rs.randint(1LL << 30));
        CHECK(bit_equal(Tensor::from_vector<std::int64_t>({5}, ints), fixture(p + "2_randint_2p30_x5.npy")));
        CHECK(bit_equal(rs.uniform(-1.0, 1.0, {3, 4}), fixture(p + "3_uniform_m1_1.npy")));
        CHECK(bit_equal(rs.binomial(1, 0.7, {20, 784}).astype(DType::uint8), fixture(p + "4_binomial_n1_p0.7_uint8.npy")));
        CHECK(bit_equal(rs.binomial(1, 0.3, {100}), fixture(p + "5_binomial_n1_p0.3.npy")));
        CHECK(bit_equal(rs.binomial(5, 0.2, {50}), fixture(p + "6_binomial_n5_p0.2.npy")));
        CHECK(bit_equal(rs.binomial(100, 0.5, {50}), fixture(p + "7_binomial_n100_p0.5.npy")));
        CHECK(bit_equal(rs.normal(0.0, 1.0, {11}), fixture(p + "8_normal_0_1_x11.npy")));
        CHECK(bit_equal(rs.normal(2.0, 3.0, {4}), fixture(p + "9_normal_2_3_x4.npy")));
        check_state(rs, p + "state_after9");
    }
}

TEST_CASE("RandomState rejects bad arguments") {
    RandomState rs(1);
    CHECK_THROWS_WITH_AS(rs.binomial(3, 1.5), "binomial: p must be in [0, 1], got 1.5", UsageError);
    CHECK_THROWS_WITH_AS(rs.binomial(-1, 0.5), "binomial: n must be >= 0, got -1", UsageError);
    CHECK_THROWS_WITH_AS(rs.randint(0), "RandomState::randint: high must be positive, got 0", UsageError);
}

TEST_CASE("the dA's initial W equals numpy's (fixture B)") {
    RandomState rng(123);
    CHECK(rng.randint(1LL << 30) == fixture("B_dA_seed.npy").item_int());
    const double bound = 4 * std::sqrt(6. / (500 + 784));
    Tensor W = rng.uniform(-bound, bound, {784, 500});
    CHECK(bit_equal(W, fixture("B_dA_W_float64.npy")));
    CHECK(bit_equal(W.astype(DType::float32), fixture("B_dA_W_float32.npy")));

    for (DType fx : {DType::float64, DType::float32}) {
        FloatXScope scope(fx);
        RandomState numpy_rng(123);
        auto theano_rng = std::make_shared<MRG_RandomStreams>(static_cast<std::uint32_t>(numpy_rng.randint(1LL << 30)));
        models::dA da(numpy_rng, theano_rng);
        CHECK(bit_equal(da.W.get_value(true),
                        fixture(fx == DType::float64 ? "B_dA_W_float64.npy" : "B_dA_W_float32.npy")));
        CHECK(da.b.get_value(true).to_doubles() == std::vector<double>(500, 0.0));
    }
}

TEST_CASE("RandomStreams masks in a compiled function match Theano's (fixture C1)") {
    for (std::uint32_t seed : {843828734u, 234u}) {
        for (DType fx : {DType::float64, DType::float32}) {
            CAPTURE(seed);
            CAPTURE(dtype_name(fx));
            FloatXScope scope(fx);
            RandomStreams rng(seed);
            Variable x = matrix("x");
            Variable mask = rng.binomial(x.shape(), 1, 0.7, fx);
            Function f = function({x}, {mask});
            Tensor xin = Tensor::full(fx, {20, 784}, 1.0);
            std::vector<Tensor> calls;
            for (int k = 0; k < 3; ++k) calls.push_back(f({xin})[0]);
            CHECK(calls[0].dtype() == fx);
            const std::string p = fmt::format("C_rs_s{}_{}_mask", seed, dtype_name(fx));
            CHECK(bit_equal(stack3(calls, DType::uint8), fixture(p + "_x3.npy")));
            check_state(rng.state(0), p + "_state");
        }
    }
}

TEST_CASE("RandomStreams uniform and normal match Theano's (fixtures C1' and C2)") {
    for (DType fx : {DType::float64, DType::float32}) {
        CAPTURE(dtype_name(fx));
        FloatXScope scope(fx);
        const std::string f1 = fmt::format("C_rs_s234_{}_", dtype_name(fx));
        {
            RandomStreams rng(234);
            Variable u = rng.uniform(std::vector<std::int64_t>{3, 5}, -2, 3);
            Function f = function({}, {u});
            std::vector<Tensor> calls;
            for (int k = 0; k < 3; ++k) calls.push_back(f()[0]);
            CHECK(bit_equal(stack3(calls, fx), fixture(f1 + "uniform_x3.npy")));
            check_state(rng.state(0), f1 + "uniform_state");
        }
        {
            RandomStreams rng(234);
            Variable n = rng.normal(std::vector<std::int64_t>{7}, 1, 2);
            Function f = function({}, {n});
            std::vector<Tensor> calls;
            for (int k = 0; k < 3; ++k) calls.push_back(f()[0]);
            CHECK(bit_equal(stack3(calls, fx), fixture(f1 + "normal_x3.npy")));
            check_state(rng.state(0), f1 + "normal_state");
        }
        {
            const std::string f2 = fmt::format("C2_rs_s234_{}_pair_", dtype_name(fx));
            RandomStreams rng(234);
            Variable u = rng.uniform(std::vector<std::int64_t>{3, 5}, -2, 3);
            Variable n = rng.normal(std::vector<std::int64_t>{7}, 1, 2);
            Function f = function({}, {u, n});
            std::vector<Tensor> us, ns;
            for (int k = 0; k < 3; ++k) {
                auto out = f();
                us.push_back(out[0]);
                ns.push_back(out[1]);
            }
            CHECK(bit_equal(stack3(us, fx), fixture(f2 + "uniform_x3.npy")));
            CHECK(bit_equal(stack3(ns, fx), fixture(f2 + "normal_x3.npy")));
            check_state(rng.state(0), f2 + "uniform_state");
            check_state(rng.state(1), f2 + "normal_state");
        }
    }
}

TEST_CASE("RandomStreams.seed reseeds every stream as Theano does") {
    RandomStreams rng(7);
    Variable u = rng.uniform(std::vector<std::int64_t>{4});
    Function f = function({}, {u});
    f();
    rng.seed(234);
    // After seed(234) the first stream is RandomState(RandomState(234).randint(2**30)).
    RandomState gen(234);
    RandomState expect(static_cast<std::uint32_t>(gen.randint(1LL << 30)));
    CHECK(bit_equal(f()[0], expect.uniform(0.0, 1.0, {4})));
}

TEST_CASE("MRG31k3p substreams and jumps match Theano's (fixture E, initial states)") {
    for (std::uint32_t seed : {843828734u, 234u}) {
        CAPTURE(seed);
        mrg::State base;
        base.fill(static_cast<std::int32_t>(seed));
        Tensor all = mrg::substreams(base, 15360);
        Tensor rows = fixture(fmt::format("E_mrg_s{}_rstate_initial_rows.npy", seed));
        Tensor want = fixture(fmt::format("E_mrg_s{}_rstate_initial.npy", seed));
        std::int64_t bad = 0;
        for (std::int64_t r = 0; r < rows.size(); ++r) {
            std::int64_t row = rows.data<std::int64_t>()[r];
            for (int c = 0; c < 6; ++c) bad += all.data<std::int32_t>()[row * 6 + c] != want.data<std::int32_t>()[r * 6 + c];
        }
        CHECK(bad == 0);
    }
    MRG_RandomStreams rng(843828734);
    rng.uniform(std::vector<std::int64_t>{5});
    CHECK(rng.rstate() == mrg::State{1373471712, 1933533694, 222991794, 410322351, 23054219, 1933334059});
    CHECK(mrg::guess_n_streams(std::nullopt) == 15360);
    CHECK(mrg::guess_n_streams(20 * 784) == 2613);
    CHECK(mrg::guess_n_streams(5) == 5);
}

namespace {
void check_rows(const Tensor& state, const std::string& file, const std::string& rows_file) {
    Tensor want = fixture(file);
    if (rows_file.empty()) {
        CHECK(bit_equal(state, want));
        return;
    }
    Tensor rows = fixture(rows_file);
    std::int64_t bad = 0;
    for (std::int64_t r = 0; r < rows.size(); ++r) {
        std::int64_t row = rows.data<std::int64_t>()[r];
        for (int c = 0; c < 6; ++c) bad += state.data<std::int32_t>()[row * 6 + c] != want.data<std::int32_t>()[r * 6 + c];
    }
    CHECK(bad == 0);
}
}  // namespace

TEST_CASE("MRG_RandomStreams draws match Theano's compiled C code (fixture D) with the states after (E)") {
    for (std::uint32_t seed : {843828734u, 234u}) {
        for (DType fx : {DType::float64, DType::float32}) {
            CAPTURE(seed);
            CAPTURE(dtype_name(fx));
            FloatXScope scope(fx);
            const std::string d = fmt::format("D_mrg_s{}_{}_", seed, dtype_name(fx));
            const std::string e = fmt::format("E_mrg_s{}_", seed);
            Variable x = matrix("x");
            Tensor xin = Tensor::full(fx, {20, 784}, 1.0);
            auto run3 = [&](Function& f, bool with_x) {
                std::vector<Tensor> calls;
                for (int k = 0; k < 3; ++k) calls.push_back(with_x ? f({xin})[0] : f()[0]);
                return calls;
            };
            {
                MRG_RandomStreams rng(seed);
                Variable m = rng.binomial(x.shape(), 1, 0.7, fx);
                Function f = function({x}, {m});
                CHECK(bit_equal(stack3(run3(f, true), DType::uint8), fixture(d + "mask_sym_x3.npy")));
                check_rows(rng.state_variables()[0].get_value(true), e + "sym_rstate_after3.npy", e + "sym_rstate_after3_rows.npy");
            }
            {
                MRG_RandomStreams rng(seed);
                Variable u = rng.uniform(x.shape(), 0, 1, fx);
                Function f = function({x}, {u});
                CHECK(bit_equal(stack3(run3(f, true), fx), fixture(d + "uniform_sym_x3.npy")));
            }
            {
                MRG_RandomStreams rng(seed);
                Variable u = rng.uniform(std::vector<std::int64_t>{20, 784}, 0, 1, fx);
                CHECK(rng.state_variables()[0].get_value(true).dim(0) == 2613);
                Function f = function({}, {u});
                CHECK(bit_equal(stack3(run3(f, false), fx), fixture(d + "uniform_const_x3.npy")));
                check_rows(rng.state_variables()[0].get_value(true), e + "const_rstate_after3.npy", e + "const_rstate_after3_rows.npy");
            }
            {
                MRG_RandomStreams rng(seed);
                Variable u = rng.uniform(std::vector<std::int64_t>{5}, 0, 1, fx);
                Function f = function({}, {u});
                CHECK(bit_equal(stack3(run3(f, false), fx), fixture(d + "uniform5_x3.npy")));
                check_rows(rng.state_variables()[0].get_value(true), e + "uniform5_rstate_after3.npy", "");
            }
            {
                MRG_RandomStreams rng(seed);
                Variable n = rng.normal(std::vector<std::int64_t>{6}, 0, 1, fx);
                Function f = function({}, {n});
                CHECK(bit_equal(stack3(run3(f, false), fx), fixture(d + "normal6_x3.npy")));
                check_rows(rng.state_variables()[0].get_value(true), e + "normal6_rstate_after3.npy", e + "normal6_rstate_after3_rows.npy");
            }
        }
    }
}

TEST_CASE("the tutorial's corruption draws Theano's masks with either stream class, call after call") {
    for (DType fx : {DType::float64, DType::float32}) {
        FloatXScope scope(fx);
        Tensor ones = Tensor::full(fx, {20, 784}, 1.0);
        for (bool mrg_streams : {true, false}) {
            CAPTURE(mrg_streams);
            RandomState numpy_rng(123);
            auto seed = static_cast<std::uint32_t>(numpy_rng.randint(1LL << 30));
            std::shared_ptr<RandomStreamsBase> theano_rng;
            if (mrg_streams) {
                theano_rng = std::make_shared<MRG_RandomStreams>(seed);
            } else {
                theano_rng = std::make_shared<RandomStreams>(seed);
            }
            models::dA da(numpy_rng, theano_rng);
            Variable tilde = da.get_corrupted_input(da.x, 0.3);
            Function f = function({da.x}, {tilde});
            std::vector<Tensor> calls;
            for (int k = 0; k < 3; ++k) calls.push_back(f({ones})[0]);
            std::string file = mrg_streams ? fmt::format("D_mrg_s843828734_{}_mask_sym_x3.npy", dtype_name(fx))
                                           : fmt::format("C_rs_s843828734_{}_mask_x3.npy", dtype_name(fx));
            CHECK(bit_equal(stack3(calls, DType::uint8), fixture(file)));
            CHECK(count_diff(calls[0], calls[1]) > 1000);  // successive calls draw new masks
        }
    }
}

TEST_CASE("MRG_RandomStreams::seed reseeds every stream as Theano's seed() (fixture D)") {
    for (DType fx : {DType::float64, DType::float32}) {
        CAPTURE(dtype_name(fx));
        FloatXScope scope(fx);
        MRG_RandomStreams rng(843828734);
        Variable u = rng.uniform(std::vector<std::int64_t>{5}, 0, 1, fx);
        Variable w = rng.uniform(std::vector<std::int64_t>{20, 784}, 0, 1, fx);
        Function f = function({}, {u, w});
        const std::vector<Tensor> first = f();
        f();
        // seed(234): the first variable draws what Theano's first call with seed 234 drew, the
        // second what a new object seeded 234 gives its second variable.
        rng.seed(234);
        const std::vector<Tensor> after = f();
        const Tensor want = fixture(fmt::format("D_mrg_s234_{}_uniform5_x3.npy", dtype_name(fx)));
        CHECK(bit_equal(after[0], want.index(0, 0)));
        MRG_RandomStreams fresh(234);
        Variable u2 = fresh.uniform(std::vector<std::int64_t>{5}, 0, 1, fx);
        Variable w2 = fresh.uniform(std::vector<std::int64_t>{20, 784}, 0, 1, fx);
        const std::vector<Tensor> fresh_draws = function({}, {u2, w2})();
        CHECK(bit_equal(after[1], fresh_draws[1]));
        CHECK(!bit_equal(after[1], first[1]));
        // seed() goes back to the constructor's seed: the first call's draws again.
        rng.seed();
        const std::vector<Tensor> again = f();
        CHECK(bit_equal(again[0], first[0]));
        CHECK(bit_equal(again[1], first[1]));
        CHECK(bit_equal(first[0], fixture(fmt::format("D_mrg_s843828734_{}_uniform5_x3.npy", dtype_name(fx))).index(0, 0)));
        CHECK(error_of([&] { rng.seed(0); }).find("MRG_RandomStreams::seed: the seed must be in [1, ") == 0);
    }
}

TEST_CASE("random sizes are checked when the graph is built") {
    MRG_RandomStreams mrg(12);
    RandomStreams np(12);
    CHECK(error_of([&] { mrg.uniform(std::vector<std::int64_t>{3, 0}); }) ==
          "MRG_RandomStreams::uniform: size [3, 0] has dimension 1 = 0; dimensions must be positive");
    CHECK(error_of([&] { mrg.normal(std::vector<std::int64_t>{-2}); }) ==
          "MRG_RandomStreams::normal: size [-2] has dimension 0 = -2; dimensions must be positive");
    CHECK(error_of([&] { mrg.binomial(std::vector<std::int64_t>{4, -1}, 1, 0.5); }).find("dimension 1 = -1") !=
          std::string::npos);
    CHECK(error_of([&] { np.uniform(std::vector<std::int64_t>{2, -3}); }) ==
          "RandomStreams: size [2, -3] has dimension 1 = -3; dimensions must be non-negative");
    // numpy draws an empty sample for a zero dimension.
    Variable z = np.uniform(std::vector<std::int64_t>{0, 3});
    CHECK(function({}, {z})()[0].shape() == Shape{0, 3});
    CHECK(mrg.state_variables().empty());  // nothing was made by the refused calls
}

TEST_CASE("symbolic distribution parameters: scalars go to the sampler, tensors broadcast per element") {
    for (bool mrg : {false, true}) {
        CAPTURE(mrg);
        auto make = [&]() -> std::shared_ptr<RandomStreamsBase> {
            if (mrg) return std::make_shared<MRG_RandomStreams>(234);
            return std::make_shared<RandomStreams>(234);
        };
        const std::vector<std::int64_t> size = {2, 3};
        // Scalars given as inputs draw what the same numbers given as constants draw.
        Variable lo = scalar("lo"), hi = scalar("hi");
        auto a = make(), b = make();
        Function sym = function({lo, hi}, {a->uniform(size, lo, hi), a->normal(size, lo, hi)});
        Function lit = function({}, {b->uniform(size, -1.0, 3.0), b->normal(size, -1.0, 3.0)});
        const auto s1 = sym({-1.0, 3.0});
        const auto l1 = lit();
        CHECK(bit_equal(s1[0], l1[0]));
        CHECK(bit_equal(s1[1], l1[1]));
        // Tensors: each element drawn with its own parameters, from the stream's standard draws.
        Variable lov = vector("lov"), hiv = vector("hiv"), sd = matrix("sd");
        auto c = make(), d = make();
        Function per = function({lov, hiv, sd}, {c->uniform(size, lov, hiv), c->normal(size, lov, sd)});
        Function unit = function({}, {d->uniform(size, 0.0, 1.0, DType::float64), d->normal(size, 0.0, 1.0, DType::float64)});
        const std::vector<double> lows = {0, 10, -5}, highs = {1, 20, 5}, sds = {1, 2, 3, 0.5, 0.25, 0};
        const auto p = per({T64({3}, lows), T64({3}, highs), T64({2, 3}, sds)});
        const auto u = unit();
        const auto pu = p[0].to_doubles(), pn = p[1].to_doubles(), uu = u[0].to_doubles(), un = u[1].to_doubles();
        for (int i = 0; i < 6; ++i) {
            const int j = i % 3;
            // numpy: low + (high - low) u; MRG: u (high - low) + low. Normal: avg + std z / z std + avg.
            CHECK(pu[i] == (mrg ? uu[i] * (highs[j] - lows[j]) + lows[j] : lows[j] + (highs[j] - lows[j]) * uu[i]));
            CHECK(pn[i] == (mrg ? un[i] * sds[i] + lows[j] : lows[j] + sds[i] * un[i]));
            CHECK(pu[i] >= lows[j]);
            CHECK(pu[i] < highs[j]);
        }
        CHECK(pn[5] == lows[2]);  // std 0
        auto e = make();
        CHECK(error_of([&] { e->uniform(size, input(TensorType{DType::boolean, {}}, "flag"), hi); })
                  .find("uniform: low must be a number tensor, got bool scalar") != std::string::npos);
    }
}

TEST_CASE("RandomStreams: random_integers, permutation, choice, multinomial draw what numpy draws") {
    // Each stream is set to numpy's RandomState(0), whose draws are known: randint(0, 10, 5) is
    // [5, 0, 3, 3, 7], permutation(10) is [2, 8, 4, 9, 1, 6, 7, 3, 0, 5], and random_sample()
    // starts 0.5488135039273248, 0.7151893663724195, 0.6027633760716439, 0.5448831829968969,
    // 0.4236547993389047 (fixture A, seed 0).
    RandomStreams rs(1);
    const auto i64 = [](std::int64_t v) { return constant(Tensor::scalar<std::int64_t>(v)); };
    auto draw = [&](const Variable& v) {
        rs.state_variables().back().set_value(RandomState(0).to_blob());
        return function({}, {v})()[0];
    };
    auto ints = [](const Tensor& t) {
        std::vector<std::int64_t> r;
        for (double d : t.to_doubles()) r.push_back(static_cast<std::int64_t>(d));
        return r;
    };
    const Tensor ri = draw(rs.random_integers(std::vector<std::int64_t>{5}, i64(0), i64(9)));
    CHECK(ri.dtype() == DType::int64);
    CHECK(ints(ri) == std::vector<std::int64_t>{5, 0, 3, 3, 7});
    CHECK(ints(draw(rs.random_integers(std::vector<std::int64_t>{5}, i64(10), i64(19)))) ==
          std::vector<std::int64_t>{15, 10, 13, 13, 17});
    const Tensor perm = draw(rs.permutation(std::vector<std::int64_t>{}, i64(10)));
    CHECK(perm.shape() == Shape{10});
    CHECK(ints(perm) == std::vector<std::int64_t>{2, 8, 4, 9, 1, 6, 7, 3, 0, 5});
    CHECK(draw(rs.permutation(std::vector<std::int64_t>{3}, i64(4))).shape() == Shape{3, 4});
    CHECK(ints(draw(rs.choice(std::vector<std::int64_t>{5}, i64(10)))) == std::vector<std::int64_t>{5, 0, 3, 3, 7});
    CHECK(ints(draw(rs.choice(std::vector<std::int64_t>{3}, i64(10), false))) == std::vector<std::int64_t>{2, 8, 4});
    // With p = (0.1, 0.2, 0.3, 0.4), cumulative (0.1, 0.3, 0.6, 1): the first index above each draw.
    Variable p = constant(T64({4}, {0.1, 0.2, 0.3, 0.4}));
    CHECK(ints(draw(rs.choice(std::vector<std::int64_t>{5}, i64(4), true, p))) == std::vector<std::int64_t>{2, 3, 3, 2, 2});
    // multinomial: numpy's method, a binomial per outcome on what is left (RandomState's binomial
    // is checked bit for bit against numpy above); every row sums to n.
    Variable pv = constant(T64({3}, {0.2, 0.5, 0.3}));
    const Tensor mn = draw(rs.multinomial(std::vector<std::int64_t>{4}, i64(20), pv));
    CHECK(mn.shape() == Shape{4, 3});
    RandomState replay(0);
    const auto got = ints(mn);
    for (int i = 0; i < 4; ++i) {
        const std::int64_t a = replay.binomial(20, 0.2);
        const std::int64_t b = replay.binomial(20 - a, 0.5 / 0.8);
        CHECK(got[i * 3] == a);
        CHECK(got[i * 3 + 1] == b);
        CHECK(got[i * 3 + 2] == 20 - a - b);
    }
    // Streams advance between calls, and errors name the call.
    Variable again = rs.random_integers(std::vector<std::int64_t>{3}, i64(0), i64(1000));
    Function f = function({}, {again});
    CHECK(f()[0].to_doubles() != f()[0].to_doubles());
    CHECK(error_of([&] { rs.permutation(std::vector<std::int64_t>{}, constant(2.5)); })
              .find("RandomStreams::permutation: n must be an integer scalar, got float64 scalar") == 0);
    CHECK(error_of([&] { function({}, {rs.choice(std::vector<std::int64_t>{5}, i64(3), false)})(); })
              .find("cannot take 5 samples of 3 without replacement") != std::string::npos);
    CHECK(error_of([&] { function({}, {rs.multinomial(std::vector<std::int64_t>{1}, i64(3), constant(T64({2}, {0.5, 0.6})))})(); })
              .find("probabilities do not sum to 1") != std::string::npos);
}

TEST_CASE("MRG_RandomStreams::multinomial: each draw counts where its uniform falls in the row's cumulative sum") {
    MRG_RandomStreams a(234), b(234);
    Variable pv = matrix("pv");
    const Tensor pvals = T64({3, 4}, {0.1, 0.2, 0.3, 0.4, 1, 0, 0, 0, 0, 0, 0.5, 0.5});
    // The uniforms the same stream draws for 3 rows x 2 draws.
    const Tensor counts = function({pv}, {a.multinomial(pv, 2)})({pvals})[0];
    const auto u = function({}, {b.uniform(std::vector<std::int64_t>{6}, 0.0, 1.0, DType::float64)})()[0].to_doubles();
    CHECK(counts.shape() == Shape{3, 4});
    std::vector<double> want(12, 0);
    const std::vector<double> p = pvals.to_doubles();
    for (int c = 0; c < 2; ++c)
        for (int r = 0; r < 3; ++r) {
            double run = 0;
            for (int m = 0; m < 4; ++m) {
                run += p[r * 4 + m];
                if (run > u[c * 3 + r]) {
                    want[r * 4 + m] += 1;
                    break;
                }
            }
        }
    CHECK(counts.to_doubles() == want);
    const auto got = counts.to_doubles();
    CHECK(got[4] == 2);               // row 1 has all its mass on outcome 0
    CHECK(got[8] + got[9] == 0);      // row 2 none on outcomes 0 and 1
    CHECK(error_of([&] { a.multinomial(vector("v")); }).find("pvals must be a float matrix") != std::string::npos);
}

TEST_CASE("MRG_RandomStreams::choice: outcomes without replacement, each draw renormalising its row") {
    MRG_RandomStreams a(99), b(99);
    Variable pv = matrix("pv");
    const Tensor pvals = T64({2, 4}, {0.1, 0.2, 0.3, 0.4, 0.25, 0.25, 0.25, 0.25});
    const Tensor picks = function({pv}, {a.choice(pv, 3)})({pvals})[0];
    const auto u = function({}, {b.uniform(std::vector<std::int64_t>{6}, 0.0, 1.0, DType::float64)})()[0].to_doubles();
    CHECK(picks.shape() == Shape{2, 3});
    // By hand: for draw c and row r the uniform u[c * 2 + r] against the renormalised row.
    std::vector<double> p = pvals.to_doubles();
    std::vector<double> want(6);
    for (int c = 0; c < 3; ++c)
        for (int r = 0; r < 2; ++r) {
            double run = 0;
            int pick = -1;
            for (int m = 0; m < 4; ++m) {
                run += p[r * 4 + m];
                if (run > u[c * 2 + r]) {
                    pick = m;
                    break;
                }
            }
            want[r * 3 + c] = pick;
            p[r * 4 + pick] = 0;
            double total = 0;
            for (int m = 0; m < 4; ++m) total += p[r * 4 + m];
            for (int m = 0; m < 4; ++m) p[r * 4 + m] /= total;
        }
    const auto got = picks.to_doubles();
    CHECK(got == want);
    for (int r = 0; r < 2; ++r) {  // no outcome twice in a row
        CHECK(got[r * 3] != got[r * 3 + 1]);
        CHECK(got[r * 3] != got[r * 3 + 2]);
        CHECK(got[r * 3 + 1] != got[r * 3 + 2]);
    }
    CHECK(error_of([&] { function({pv}, {a.choice(pv, 5)})({pvals}); }).find("n at most the outcomes") != std::string::npos);
}
