// function(): outputs, updates, givens, shared inputs, defaults, argument checking, buffers.
#include <doctest/doctest.h>
#include <fmt/format.h>
#include <fmt/ranges.h>

#include <algorithm>

#include <cmath>

#include <limits>

#include "compile/plan.hpp"
#include "support/helpers.hpp"

using namespace theanine;
using namespace theanine::testing;

TEST_CASE("every update sees the old values") {
    SharedVariable a = shared(T64({}, {1}), "a");
    SharedVariable b = shared(T64({}, {2}), "b");
    Function swap = function({}, {a + b}, {{a, b * 1.0}, {b, a * 1.0}});
    CHECK(swap()[0].item() == 3);
    CHECK(a.get_value().item() == 2);
    CHECK(b.get_value().item() == 1);
    swap();
    CHECK(a.get_value().item() == 1);
    CHECK(b.get_value().item() == 2);
}

TEST_CASE("a counter: shared variables are implicit inputs and updates persist") {
    SharedVariable state = shared(Tensor::scalar<std::int64_t>(0), "state");
    Variable inc = lscalar("inc");
    Function acc = function({inc}, {state}, {{state, state + inc}});
    CHECK(acc({5})[0].item() == 0);  // outputs are computed before the update
    CHECK(acc({2})[0].item() == 5);
    CHECK(state.get_value().item() == 7);
}

TEST_CASE("givens substitute a minibatch slice of a shared dataset (the tutorial's form)") {
    std::vector<double> data(12);
    for (int i = 0; i < 12; ++i) data[i] = i;
    SharedVariable train_set_x = shared(T64({6, 2}, data), "train_set_x");
    Variable index = lscalar("index");
    Variable x = matrix("x");
    const long batch_size = 2;
    Function f = function({index}, {x.sum(0)}, {},
                          {{x, subtensor(train_set_x, {slice(index * batch_size, (index + 1) * batch_size)})}});
    CHECK(f({0})[0].to_doubles() == std::vector<double>{2, 4});
    CHECK(f({2})[0].to_doubles() == std::vector<double>{18, 20});
    CHECK_THROWS_WITH_AS(function({index}, {x.sum()}, {}, {{x, vector("v")}}),
                         "function: givens entry 0 replaces 'x' (float64 matrix) by a value of type float64 vector; the "
                         "types must match", UsageError);
}

TEST_CASE("arguments are checked and errors name the input") {
    Variable x = matrix("x");
    Variable i = lscalar("i");
    Function f = function({x, i}, {x * i});
    Tensor xv = T64({1, 2}, {1, 2});
    CHECK(f({xv, 3})[0].to_doubles() == std::vector<double>{3, 6});
    CHECK_THROWS_WITH_AS(f({xv}), "function call: missing argument for input 1 ('i') (1 given, 2 needed)", UsageError);
    CHECK_THROWS_WITH_AS(f({xv, 1, 2}), "function call: 3 arguments given, the function takes 2", UsageError);
    CHECK(f({T32({1, 2}, {1, 2}), 1})[0].to_doubles() == std::vector<double>{1, 2});  // float32 converts safely
    CHECK_THROWS_WITH_AS(f({xv, T64({}, {2})}),
                         "function call: input 1 ('i') expects int64 scalar; float64 data may lose precision as int64 "
                         "(cast it first, or compile with CompileOptions::allow_input_downcast = true)", UsageError);
    CHECK_THROWS_WITH_AS(f({T64({2}, {1, 2}), 1}),
                         "function call: input 0 ('x') expects float64 matrix, got float64 of shape (2,)", UsageError);
    CHECK_THROWS_WITH_AS(f({xv, 1.5}), "function call: input 1 ('i') expects int64 scalar, got the non-integer 1.5",
                         UsageError);
    CHECK_THROWS_WITH_AS(function({x}, {x + matrix("y")}),
                         "function: the graph needs the input 'y' (float64 matrix), which is neither in the inputs list "
                         "nor replaced by the givens", UsageError);
    SharedVariable s = shared(T64({2}, {1, 2}), "s");
    CHECK_THROWS_WITH_AS(function({}, {s}, {{s, s.sum()}}),
                         "function: update 0 of shared variable 's' (float64 vector) has type float64 scalar; an update "
                         "must keep the variable's dtype and rank", UsageError);
    CHECK_THROWS_WITH_AS(function({s}, {s}),
                         "function: input 0 ('s') is a shared variable; inputs must be symbolic variables (shared "
                         "variables are read implicitly)", UsageError);
}

TEST_CASE("inputs with defaults, called by position or by name") {
    Variable index = lscalar("index");
    Variable corruption = scalar("corruption");
    Variable lr = scalar("lr");
    Function f = function({In(index), In(corruption, 0.2), In(lr, 0.1)}, {index * 1.0 + corruption * 10 + lr * 100});
    CHECK(f({1})[0].item() == doctest::Approx(1 + 2 + 10));
    CHECK(f({1, 0.5})[0].item() == doctest::Approx(1 + 5 + 10));
    CHECK(f.call_named({arg("lr", 0.3), arg("index", 2)})[0].item() == doctest::Approx(2 + 2 + 30));
    CHECK_THROWS_WITH_AS(f.call_named({arg("rate", 1)}),
                         "function call: no input named 'rate' (inputs: index, corruption, lr)", UsageError);
    CHECK_THROWS_WITH_AS(f.call_named({arg("lr", 1)}), "function call: missing argument for input 0 ('index')", UsageError);
}

TEST_CASE("several outputs; an input can be an output") {
    Variable x = vector("x");
    Function f = function({x}, {x, x.sum(), x * 2.0});
    auto out = f({T64({2}, {1, 2})});
    REQUIRE(out.size() == 3);
    CHECK(out[0].to_doubles() == std::vector<double>{1, 2});
    CHECK(out[1].item() == 3);
    CHECK(out[2].to_doubles() == std::vector<double>{2, 4});
}

TEST_CASE("a steady-state call allocates no tensor storage") {
    RandomState rng(1);
    SharedVariable data = shared(rng.uniform(0, 1, {40, 8}), "data");
    SharedVariable W = shared(rng.uniform(-0.1, 0.1, {8, 5}), "W");
    SharedVariable b = shared(Tensor::zeros(DType::float64, {5}), "b");
    Variable index = lscalar("index");
    Variable x = matrix("x");
    Variable h = sigmoid(dot(x, W) + b);
    Variable cost = mean(sum(sqr(h - 0.5), 1));
    auto g = grad(cost, std::vector<Variable>{W, b});
    Function train = function({index}, {cost}, {{W, W - 0.1 * g[0]}, {b, b - 0.1 * g[1]}},
                              {{x, subtensor(data, {slice(index * 4, (index + 1) * 4)})}});
    for (int k = 0; k < 3; ++k) train.scalar({k});
    const auto before = storage_allocation_count();
    double c = 0;
    for (int k = 0; k < 10; ++k) c += train.scalar({k % 10});
    CHECK(storage_allocation_count() == before);
    CHECK(std::isfinite(c));
}

TEST_CASE("logistic regression's negative log-likelihood matches a hand computation") {
    // n = 3 examples, 2 features, 3 classes.
    Tensor xv = T64({3, 2}, {1, 2, -1, 0.5, 0, -2});
    std::vector<std::int64_t> labels = {2, 0, 1};
    Tensor Wv = T64({2, 3}, {0.1, -0.2, 0.3, 0.4, 0.0, -0.1});
    Tensor bv = T64({3}, {0.01, 0.02, -0.03});
    SharedVariable W = shared(Wv, "W");
    SharedVariable b = shared(bv, "b");
    Variable x = matrix("x");
    Variable y = lvector("y");
    Variable p_y_given_x = softmax(dot(x, W) + b);
    Variable nll = -mean(log(p_y_given_x)[{arange(y.shape(0)), y}]);
    Variable errors = mean(neq(argmax(p_y_given_x, 1), y));
    Function f = function({x, y}, {nll, errors});
    auto out = f({xv, I64({3}, labels)});
    double want = 0;
    int wrong = 0;
    for (int i = 0; i < 3; ++i) {
        double logits[3], mx = -1e300, s = 0;
        for (int k = 0; k < 3; ++k) {
            logits[k] = xv.at({i, 0}) * Wv.at({0, k}) + xv.at({i, 1}) * Wv.at({1, k}) + bv.at({k});
            mx = std::max(mx, logits[k]);
        }
        int best = 0;
        for (int k = 0; k < 3; ++k) {
            s += std::exp(logits[k] - mx);
            if (logits[k] > logits[best]) best = k;
        }
        want -= (logits[labels[i]] - mx - std::log(s)) / 3;
        wrong += best != labels[i];
    }
    CHECK(out[0].item() == doctest::Approx(want).epsilon(1e-14));
    CHECK(out[1].item() == doctest::Approx(wrong / 3.0));
}

TEST_CASE("profile=True times every step and sums by op class") {
    Variable x = matrix("x"), W = matrix("W");
    CompileOptions o;
    o.profile = true;
    o.rewrites.excluding = {"fusion"};
    Function f = function({x, W}, {sigmoid(dot(x, W)).sum()}, {}, {}, o);
    Function plain = function({x, W}, {sigmoid(dot(x, W)).sum()});
    CHECK(plain.profile_summary().find("not enabled") != std::string::npos);
    Tensor xv = Tensor::full(DType::float64, {4, 3}, 0.5), Wv = Tensor::full(DType::float64, {3, 2}, 1.0);
    for (int i = 0; i < 3; ++i) CHECK(f.scalar({xv, Wv}) == doctest::Approx(8 / (1 + std::exp(-1.5))));
    std::string s = f.profile_summary();
    CHECK(s.rfind("profile: 3 calls", 0) == 0);
    // Each op class once, and each step by name.
    for (const char* name : {"Dot22 ", "Elemwise ", "Sum ", "Dot22{N,N}", "Elemwise{sigmoid}", "Sum{axes=[0,1]}"}) {
        CHECK_MESSAGE(s.find(name) != std::string::npos, name);
    }
}

TEST_CASE("a Join's inputs are written in place: right values, no copies, no allocations") {
    Variable x = matrix("x"), y = matrix("y");
    Variable j = concatenate({exp(x), y * 2.0}, 0);  // two computed values stacked
    Variable out = dot(j.T(), j);
    Function f = function({x, y}, {out});
    Function returned = function({x, y}, {out, j});  // the Join itself is an output: not placed
    auto by_hand = [](const Tensor& xv, const Tensor& yv) {
        const std::int64_t c = xv.dim(1);
        std::vector<double> r(static_cast<std::size_t>(c * c), 0.0);
        for (std::int64_t a = 0; a < c; ++a) {
            for (std::int64_t b = 0; b < c; ++b) {
                double s = 0;
                for (std::int64_t i = 0; i < xv.dim(0); ++i) s += std::exp(xv.at({i, a})) * std::exp(xv.at({i, b}));
                for (std::int64_t i = 0; i < yv.dim(0); ++i) s += 4 * yv.at({i, a}) * yv.at({i, b});
                r[static_cast<std::size_t>(a * c + b)] = s;
            }
        }
        return r;
    };
    // Changing inputs and row counts: each call's result is its own.
    std::vector<Tensor> kept;
    for (int call = 0; call < 6; ++call) {
        Tensor xv = random_tensor({2 + call % 2, 3}, 10 + call), yv = random_tensor({3, 3}, 20 + call);
        CHECK(close(f({xv, yv})[0].to_doubles(), by_hand(xv, yv), 1e-12));
        auto r = returned({xv, yv});
        CHECK(close(r[0].to_doubles(), by_hand(xv, yv), 1e-12));
        kept.push_back(r[1]);
        CHECK(kept.front().dim(0) == 5);  // a returned Join value is not overwritten later
    }
    Tensor x0 = random_tensor({2, 3}, 10), y0 = random_tensor({3, 3}, 20);
    CHECK(kept.front().to_doubles()[0] == doctest::Approx(std::exp(x0.at({0, 0}))));
    // Steady state: the producers write into the Join's buffer; nothing is allocated.
    Tensor xv = random_tensor({2, 3}, 1), yv = random_tensor({3, 3}, 2);
    for (int k = 0; k < 3; ++k) f({xv, yv});
    const auto before = storage_allocation_count();
    for (int k = 0; k < 5; ++k) f({xv, yv});
    CHECK(storage_allocation_count() == before);
    auto placed = [](const Function& fn) {
        const auto& l = fn.in_place();
        return std::count(l.begin(), l.end(), "Join{axis=0}'s inputs are written into its output");
    };
    CHECK(placed(f) == 1);
    CHECK(placed(returned) == 0);
}

TEST_CASE("liveness: a dead value's buffer serves a later value, with right results and no allocations") {
    // A chain of products: each intermediate dies at the next product, so two buffers serve
    // the whole chain instead of one per value.
    Variable x = matrix("x");
    std::vector<SharedVariable> Ws;
    Variable h = x;
    RandomState rng(5);
    for (int i = 0; i < 6; ++i) {
        Ws.push_back(shared(rng.uniform(-0.3, 0.3, {40, 40}), "W" + std::to_string(i)));
        h = dot(h, Ws.back());
    }
    Function f = function({x}, {h.sum()});
    Tensor xv = random_tensor({30, 40}, 9);
    double want = 0;
    {
        // By hand.
        std::vector<double> cur = xv.to_doubles();
        for (int i = 0; i < 6; ++i) {
            std::vector<double> next(30 * 40, 0.0);
            Tensor w = Ws[i].get_value();
            for (int r = 0; r < 30; ++r) {
                for (int c = 0; c < 40; ++c) {
                    for (int k = 0; k < 40; ++k) next[r * 40 + c] += cur[r * 40 + k] * w.at({k, c});
                }
            }
            cur = next;
        }
        for (double v : cur) want += v;
    }
    for (int call = 0; call < 3; ++call) CHECK(f.scalar({xv}) == doctest::Approx(want).epsilon(1e-12));
    // Five intermediates of 30x40 doubles (9600 bytes each) share two buffers.
    CHECK(f.buffer_bytes() <= 2 * 9600 + 64 + 8);
    const auto before = storage_allocation_count();
    for (int call = 0; call < 5; ++call) f.scalar({xv});
    CHECK(storage_allocation_count() == before);
    // A value that is returned keeps its own buffer: the results stay distinct.
    Variable a = exp(x), b = dot(a, Ws[0]), c = dot(b, Ws[1]);
    Function g = function({x}, {a, c});
    auto r1 = g({xv});
    auto r2 = g({random_tensor({30, 40}, 10)});
    CHECK(r1[0].to_doubles()[0] == doctest::Approx(std::exp(xv.at({0, 0}))));
    CHECK(!r1[1].shares_storage(r2[1]));
}

TEST_CASE("number arguments are converted exactly or refused, never wrapped") {
    Variable i64 = lscalar("i64");
    Variable i32 = iscalar("i32");
    Variable u8 = input(TensorType{DType::uint8, {}}, "u8");
    Variable f = scalar("f");
    Function id = function({i64, i32, u8, f}, {i64, i32, u8, f});
    auto out = id({9007199254740993LL, -5, 255, 2});
    CHECK(out[0].data<std::int64_t>()[0] == 9007199254740993LL);
    CHECK(out[1].item() == -5);
    CHECK(out[2].item() == 255);
    CHECK(out[3].item() == 2);
    CHECK_THROWS_WITH_AS(id({1, 2, 300, 0.0}),
                         "function call: input 2 ('u8') expects uint8 scalar, got 300, outside its range [0, 255]", UsageError);
    CHECK_THROWS_WITH_AS(id({1, 2, -1, 0.0}),
                         "function call: input 2 ('u8') expects uint8 scalar, got -1, outside its range [0, 255]", UsageError);
    CHECK_THROWS_WITH_AS(id({1, 1LL << 40, 0, 0.0}),
                         "function call: input 1 ('i32') expects int32 scalar, got 1099511627776, outside its range "
                         "[-2147483648, 2147483647]", UsageError);
    CHECK_THROWS_WITH_AS(id({std::numeric_limits<double>::infinity(), 0, 0, 0.0}),
                         "function call: input 0 ('i64') expects int64 scalar, got the non-integer inf", UsageError);
    CHECK_THROWS_WITH_AS(id({std::nan(""), 0, 0, 0.0}),
                         "function call: input 0 ('i64') expects int64 scalar, got the non-integer nan", UsageError);
    CHECK_THROWS_WITH_AS(id({9007199254740994.0, 0, 0, 0.0}), doctest::Contains("beyond 2^53"), UsageError);
    CHECK(id({3.0, 0, 0, 0.0})[0].item() == 3);
}

TEST_CASE("results depend on the thread count alone, not on how many threads run the parts") {
    // The dA's step on data big enough for every kernel to split its work.
    RandomState data_rng(5);
    SharedVariable set_x = shared(data_rng.uniform(0, 1, {40, 784}), "set_x");
    Variable index = lscalar("index");
    Variable x = matrix("x");
    auto train = [&](int threads, int worker_limit) {
        set_num_threads(threads);
        RandomState rng(123);
        auto streams = std::make_shared<MRG_RandomStreams>(static_cast<std::uint32_t>(rng.randint(1 << 30)));
        models::dA da(rng, streams, x, 784, 500);
        auto [cost, updates] = da.get_cost_updates(0.3, 0.1);
        Function f = function({index}, {cost}, updates, {{x, set_x[{slice(index * 20, (index + 1) * 20)}]}});
        WorkerLimit limit(worker_limit);
        std::vector<double> costs;
        for (int i = 0; i < 6; ++i) costs.push_back(f({static_cast<long>(i % 2)})[0].item());
        std::vector<double> w = da.W.get_value().to_doubles();
        costs.insert(costs.end(), w.begin(), w.end());
        return costs;
    };
    const auto two = train(2, 0);
    const auto two_on_one = train(2, 1);  // two parts run by one thread, as under contention
    CHECK(two == train(2, 0));
    CHECK(two_on_one == train(2, 1));
    CHECK(two == two_on_one);
    const auto one = train(1, 0);
    set_num_threads(0);
    // Between thread counts, sums are added in another order: the last bits differ.
    double worst = 0;
    for (std::size_t i = 0; i < one.size(); ++i) worst = std::max(worst, std::abs(one[i] - two[i]) / std::max(1.0, std::abs(one[i])));
    CHECK(worst < 1e-13);
}

TEST_CASE("the worker choice follows lasting changes of speed, not single slow calls") {
    // Modelled call times: all threads take `all` seconds, one thread `one`; every 40th call
    // on all threads is delayed to 8x (a preempted worker). run() returns how many of its
    // calls ran on one thread outside probes.
    set_num_threads(2);
    WorkerChoice w;
    std::int64_t call = 0;
    auto run = [&](std::int64_t calls, double all, double one) {
        std::int64_t on_one = 0;
        for (std::int64_t i = 0; i < calls; ++i, ++call) {
            const bool single = w.limit() == 1;
            if (single && !w.probing()) ++on_one;
            const double t = single ? one : (call % 40 == 39 ? 8 * all : all);
            w.record(t);
        }
        return on_one;
    };
    // Two threads faster: the spikes (3.2 ms against 400 us) never move the choice.
    CHECK(run(5000, 400e-6, 600e-6) == 0);
    CHECK_FALSE(w.one_thread());
    // Another process takes a core: two threads now take 2 ms. One thread within 50 calls.
    run(50, 2000e-6, 620e-6);
    CHECK(w.one_thread());
    CHECK(run(1000, 2000e-6, 620e-6) >= 900);
    // The core is free again: back on both threads within the 256-call probe interval.
    run(300, 400e-6, 600e-6);
    CHECK_FALSE(w.one_thread());
    CHECK(run(3000, 400e-6, 600e-6) == 0);
    // An evaluation pass: 16 calls after other work, whose first two are slow whichever the
    // choice (4x), and two threads only a little faster (memory-bound: 250 against 290 us).
    // A probe that compared one thread's settled calls with a window holding the slow ones
    // switched to one thread; measured side by side, two threads stay.
    WorkerChoice eval;
    std::int64_t eval_on_one = 0;
    for (std::int64_t i = 0; i < 3000; ++i) {
        const bool single = eval.limit() == 1;
        if (single && !eval.probing()) ++eval_on_one;
        eval.record((single ? 290e-6 : 250e-6) * (i % 16 < 2 ? 4 : 1));
    }
    CHECK(eval_on_one == 0);
    CHECK_FALSE(eval.one_thread());
    // Calls under 100 us are not timed for the choice: nothing moves.
    WorkerChoice quick;
    for (int i = 0; i < 5000; ++i) quick.record(i % 2 ? 90e-6 : 10e-6);
    CHECK_FALSE(quick.one_thread());
    CHECK_FALSE(quick.probing());
    set_num_threads(0);
}

TEST_CASE("the NaN guard names the step that made a NaN or inf, and the call changes nothing") {
    SharedVariable w = shared(T64({2, 2}, {1, 2, 3, 4}), "w");
    SharedVariable u = shared(T64({2, 1}, {1, 1}), "u");
    Variable x = matrix("x");
    Variable bad = log(x);  // NaN for negative x, -inf at 0
    CompileOptions guarded;
    guarded.nan_guard = true;
    Function f = function({x}, {bad.sum()}, {{w, w - 0.5 * dot(u, u.T())}}, {}, guarded);
    CHECK(f.in_place().empty());  // no in-place write into w in this mode
    CHECK(f({T64({2, 2}, {1, 1, 1, 1})})[0].item() == 0);
    CHECK(w.get_value().to_doubles() == std::vector<double>{0.5, 1.5, 2.5, 3.5});
    try {
        f({T64({2, 2}, {1, -1, 2, 3})});
        FAIL("no error");
    } catch (const UsageError& e) {
        const std::string m = e.what();
        CHECK(m.find("NaN guard: ") == 0);
        // The fused loop log(x).sum() made the NaN.
        CHECK(m.find("Composite{log(i0), sum[0,1]} produced 1 NaN in output 0 (float64 () (1 NaN))") != std::string::npos);
        CHECK(m.find("(node built at test_function.cpp:") != std::string::npos);
        CHECK(m.find("input 0: float64 (2, 2) min -1 max 3 mean 1.25") != std::string::npos);
    }
    CHECK(w.get_value().to_doubles() == std::vector<double>{0.5, 1.5, 2.5, 3.5});
    CHECK_THROWS_WITH_AS(f({T64({2, 2}, {1, 0, 2, 3})}), doctest::Contains("produced 1 inf in output 0 (float64 () (1 inf))"), UsageError);

    CompileOptions big;
    big.nan_guard = true;
    big.nan_guard_big = true;
    Function g = function({x}, {x * 1e6}, {}, {}, big);
    CHECK(g({T64({1, 1}, {10})})[0].item() == 1e7);
    CHECK_THROWS_WITH_AS(g({T64({1, 1}, {1e5})}), doctest::Contains("produced 1 values above 1e10"), UsageError);
    // Without the guard the same call returns the NaN.
    Function plain = function({x}, {bad.sum()});
    CHECK(std::isnan(plain({T64({2, 2}, {1, -1, 2, 3})})[0].item()));
}

TEST_CASE("function edge cases as Theano has them: unused inputs, givens on inputs, update types, mixed calls") {
    Variable x = scalar("x");
    Variable y = scalar("y");
    CHECK_THROWS_WITH_AS(function({x, y}, {x * 2.0}),
                         "function: input 1 ('y') is not used by any output or update (CompileOptions::on_unused_input "
                         "is raise; set it to warn or ignore to allow this)", UsageError);
    CompileOptions lenient;
    lenient.on_unused_input = CompileOptions::UnusedInput::ignore;
    Function f = function({x, y}, {x * 2.0}, {}, {}, lenient);
    CHECK(f({1.5, 7.0})[0].item() == 3.0);

    CHECK_THROWS_WITH_AS(function({x}, {x * 2.0}, {}, {{x, constant(1.0)}}),
                         "function: givens entry 0 replaces 'x', which is an input of the function; an input is either "
                         "passed or given, not both", UsageError);

    SharedVariable row = shared(T64({1, 3}, {1, 2, 3}), "row", false, std::vector<bool>{true, false});
    Variable m = matrix("m");
    CHECK_THROWS_WITH_AS(function({m}, {}, {{row, m}}),
                         "function: update 0 of shared variable 'row' (float64 row) has type float64 matrix: axis 0 is "
                         "broadcastable (size 1) in the variable but not in the update", UsageError);

    // f(1, b=2): positional for the first inputs, named for the others.
    Variable a = scalar("a");
    Variable b = scalar("b");
    Variable c = scalar("c");
    Function g = function({In(a), In(b), In(c, 10.0)}, {a + 2.0 * b + 3.0 * c});
    CHECK(g.call({1.0}, {arg("b", 2.0)})[0].item() == 35);
    CHECK(g.call({1.0}, {arg("c", 0.0), arg("b", 1.0)})[0].item() == 3);
    CHECK_THROWS_WITH_AS(g.call({1.0, 2.0}, {arg("b", 1.0)}),
                         "function call: input 'b' given twice (by position and by name)", UsageError);
    CHECK_THROWS_WITH_AS(g.call({1.0}, {arg("c", 1.0)}), "function call: missing argument for input 1 ('b')", UsageError);
}

TEST_CASE("In(update=): an accumulator input that keeps its value between calls; named outputs") {
    Variable x = scalar("x");
    Variable a = scalar("a");
    Variable s = scalar("s");
    In acc(s, 0.0, "s");
    acc.update = s + a * x;
    Function f = function({In(x), In(a, 1.0, "a"), acc}, {Out(s + a * x, "total"), Out(a * 2.0, "twice_a")});
    CHECK(f.output_names() == std::vector<std::string>{"total", "twice_a"});
    // s starts at 0: 0 + 1 * 1, then s = 1; with a = 2: 1 + 2 * 1, then s = 3.
    CHECK(f({1.0})[0].item() == 1);
    CHECK(f.input_value("s").item() == 1);
    CHECK(f({1.0, 2.0})[0].item() == 3);
    CHECK(f.input_value("s").item() == 3);
    // An argument for s replaces the kept value for this call: 10 + 1 * 2, then s = 12.
    const auto by_name = f.named({2.0, 1.0, 10.0});
    CHECK(by_name.at("total").item() == 12);
    CHECK(by_name.at("twice_a").item() == 2);
    CHECK(f.input_value("s").item() == 12);
    f.set_input_value("s", T64({}, {-1}));
    CHECK(f.call({0.5}, {arg("a", 4.0)})[0].item() == 1);
    CHECK(f.input_value("s").item() == 1);
    // A call that fails keeps the value as it was.
    CHECK(error_of([&] { f({1.0, T64({2}, {1, 2})}); }).find("input 1 ('a') expects float64 scalar") != std::string::npos);
    CHECK(f.input_value("s").item() == 1);
    // A copy of the function keeps its own value.
    Function g = f.copy();
    g({1.0});
    CHECK(g.input_value("s").item() == 2);
    CHECK(f.input_value("s").item() == 1);

    // Errors: no starting value, a type the input cannot keep, duplicate output names.
    In no_value(s);
    no_value.update = s + 1.0;
    CHECK(error_of([&] { function({no_value}, {s * 1.0}); }) ==
          "function: input 0 ('s') has an update but no value to start from");
    In wrong(s, 0.0);
    wrong.update = vector("v");
    CHECK(error_of([&] { function({wrong}, {s * 1.0}); })
              .find("function: the update of input 0 ('s', float64 scalar) has type float64 vector") == 0);
    CHECK(error_of([&] { function({x}, {Out(x * 1.0, "y"), Out(x * 2.0, "y")}); }) ==
          "function: output 1 is named 'y' like an earlier output; names must differ");
    CHECK(error_of([&] { f.input_value("nope"); }) == "Function::input_value: no input named 'nope'");
}

TEST_CASE("In(mutable=): an in-place kernel may overwrite the argument's buffer, and only then") {
    Variable z = matrix("z");
    Variable p = matrix("p");
    Variable q = matrix("q");
    const Tensor pv = T64({2, 2}, {1, 2, 3, 4}), qv = T64({2, 2}, {1, 0, 0, 1});
    const std::vector<double> want = {11, 12, 13, 14};  // z + p q with z all 10
    In zm(z);
    zm.is_mutable = true;
    Function mut = function({zm, In(p), In(q)}, {z + dot(p, q)});
    Function safe = function({z, p, q}, {z + dot(p, q)});
    bool writes_z = false;
    for (const auto& line : mut.in_place()) writes_z = writes_z || line.find("(z)") != std::string::npos;
    CHECK(writes_z);
    for (const auto& line : safe.in_place()) CHECK(line.find("(z)") == std::string::npos);
    Tensor zs = Tensor::full(DType::float64, {2, 2}, 10.0);
    CHECK(safe({zs, pv, qv})[0].to_doubles() == want);
    CHECK(zs.to_doubles() == std::vector<double>(4, 10.0));  // the caller's array is untouched
    Tensor zm_arg = Tensor::full(DType::float64, {2, 2}, 10.0);
    CHECK(mut({zm_arg, pv, qv})[0].to_doubles() == want);
    CHECK(zm_arg.to_doubles() == want);  // written in place, as allowed
    // The same array passed for the mutable input and another one: the other still reads it intact.
    Tensor both = T64({2, 2}, {1, 2, 3, 4});
    CHECK(mut({both, both, qv})[0].to_doubles() == std::vector<double>{2, 4, 6, 8});
}

TEST_CASE("arguments of another dtype: converted when numpy deems it safe, else refused unless allow_input_downcast") {
    Variable x = vector("x");
    Function f = function({x}, {x * 2.0});
    // int64, int32, uint8, bool and float32 data for a float64 input.
    CHECK(f({I64({3}, {1, -2, 3})})[0].to_doubles() == std::vector<double>{2, -4, 6});
    CHECK(f({Tensor::from_vector<std::int32_t>({2}, {7, 8})})[0].to_doubles() == std::vector<double>{14, 16});
    CHECK(f({Tensor::from_vector<std::uint8_t>({2}, {255, 1})})[0].to_doubles() == std::vector<double>{510, 2});
    CHECK(f({T32({2}, {0.1f, 1})})[0].to_doubles() == std::vector<double>{2 * static_cast<double>(0.1f), 2});
    // float64 data for a float32 input, int64 for int32: refused, naming the input.
    Variable xf = vector("xf", DType::float32);
    Function g = function({xf}, {xf * 2.0});
    CHECK(error_of([&] { g({T64({2}, {1, 0.1})}); }) ==
          "function call: input 0 ('xf') expects float32 vector; float64 data may lose precision as float32 (cast "
          "it first, or compile with CompileOptions::allow_input_downcast = true)");
    Variable i = ivector("i");
    Function h = function({i}, {i + 1});
    CHECK(error_of([&] { h({I64({1}, {5})}); }).find("int64 data may lose precision as int32") != std::string::npos);
    CHECK(h({Tensor::from_vector<std::uint8_t>({1}, {5})})[0].to_doubles() == std::vector<double>{6});
    // With allow_input_downcast the value is converted (rounded to float32).
    CompileOptions down;
    down.allow_input_downcast = true;
    Function gd = function({xf}, {xf * 2.0}, {}, {}, down);
    const Tensor r = gd({T64({2}, {1, 0.1})})[0];
    CHECK(r.dtype() == DType::float32);
    CHECK(r.to_doubles()[1] == static_cast<double>(0.1f * 2.0f));
    // Rank and broadcast pattern are still checked.
    CHECK(error_of([&] { f({I64({1, 2}, {1, 2})}); }) == "function call: input 0 ('x') expects float64 vector, got int64 of shape (1, 2)");
    // The caller's array is not the function's: a converted argument never aliases it.
    Tensor data = I64({2}, {1, 2});
    Function ident = function({x}, {Out(x, true)});
    ident({data});
    CHECK(data.to_doubles() == std::vector<double>{1, 2});
}

TEST_CASE("upcasts as Theano: small integers through transcendental ops give float32, int / int gives floatX") {
    Variable b = input(TensorType{DType::uint8, {false}}, "b");
    Variable flag = input(TensorType{DType::boolean, {false}}, "flag");
    Variable i = lvector("i");
    Variable j = ivector("j");
    CHECK(exp(b).dtype() == DType::float32);
    CHECK(sqrt(flag).dtype() == DType::float32);
    CHECK(log(i).dtype() == DType::float64);
    CHECK(tanh(j).dtype() == DType::float64);
    CHECK(true_div(i, j).dtype() == config().floatX);
    CHECK(true_div(b, b).dtype() == config().floatX);
    CHECK((b + j).dtype() == DType::int32);
    CHECK((i * 0.5).dtype() == DType::float64);
    Function f = function({b}, {exp(b)});
    const Tensor r = f({Tensor::from_vector<std::uint8_t>({2}, {0, 2})})[0];
    CHECK(r.dtype() == DType::float32);
    CHECK(r.to_doubles()[1] == static_cast<double>(std::exp(2.0f)));
}

TEST_CASE("default updates set from temporary expressions live on; cleared, chained, partial graphs, givens") {
    auto ishared = [](std::int64_t v, const std::string& name) { return shared(I64({}, {v}), name); };
    auto value = [](const SharedVariable& s) { return static_cast<std::int64_t>(s.get_value().item()); };
    // x + 1 is a temporary: nothing but x's default update refers to it.
    SharedVariable x = ishared(0, "x");
    x.set_default_update(x + constant(1.0, DType::int64));
    Function f = function({}, {x});
    f();
    CHECK(value(x) == 1);
    x.clear_default_update();
    f();  // compiled with the update: it keeps it
    CHECK(value(x) == 2);
    function({}, {x})();
    CHECK(value(x) == 2);

    // Chained: x := x - y, y := z, z := z - 1; each function applies the updates of what it reads.
    SharedVariable a = ishared(2, "a"), b = ishared(1, "b"), c = ishared(-1, "c");
    a.set_default_update(a - b);
    b.set_default_update(Variable(c));
    c.set_default_update(c - constant(1.0, DType::int64));
    function({}, {a})();
    CHECK(std::vector<std::int64_t>{value(a), value(b), value(c)} == std::vector<std::int64_t>{1, -1, -2});
    function({}, {a, b})();
    CHECK(std::vector<std::int64_t>{value(a), value(b), value(c)} == std::vector<std::int64_t>{2, -2, -3});
    function({}, {b})();
    CHECK(std::vector<std::int64_t>{value(a), value(b), value(c)} == std::vector<std::int64_t>{2, -3, -4});
    CompileOptions no_a;
    no_a.no_default_updates_for = {a};
    function({}, {a, b}, {}, {}, no_a)();
    CHECK(std::vector<std::int64_t>{value(a), value(b), value(c)} == std::vector<std::int64_t>{2, -4, -5});
    CompileOptions no_c;
    no_c.no_default_updates_for = {c};
    function({}, {a, b, c}, {}, {}, no_c)();
    CHECK(std::vector<std::int64_t>{value(a), value(b), value(c)} == std::vector<std::int64_t>{6, -5, -5});

    // An update that reads an input: the function must take it.
    SharedVariable p = ishared(0, "p"), q = ishared(1, "q");
    Variable k = lscalar("k");
    p.set_default_update(Variable(q));
    q.set_default_update(q + k);
    function({k}, {p})({2.0});
    CHECK(value(p) == 1);
    CHECK(value(q) == 3);
    CHECK(error_of([&] { function({}, {p}); }).find("'k'") != std::string::npos);

    // Only the tip of a graph is used (the part under it given): the variable under it is not
    // read, so not updated.
    SharedVariable t = ishared(0, "t");
    t.set_default_update(t + constant(1.0, DType::int64));
    Variable twice = t * constant(2.0, DType::int64);
    Variable m = lscalar("m");
    Function tip = function({m}, {twice + constant(1.0, DType::int64)}, {}, {{twice, m}});
    CHECK(tip({21.0})[0].item() == 22);
    CHECK(value(t) == 0);

    // A given that replaces the variable by an expression of it applies to its update too:
    // c = s + 10 with s := s + 10 given, and s's update s + 3 becomes (s + 10) + 3.
    SharedVariable sv = shared(T64({}, {1}), "s");
    sv.set_default_update(sv + 3.0);
    Function g = function({}, {sv + 10.0}, {}, {{sv, sv + 10.0}});
    CHECK(g()[0].item() == 21);
    CHECK(g()[0].item() == 34);
}

TEST_CASE("default updates: no_default_updates, and a given that replaces the variable drops its update") {
    MRG_RandomStreams rng(234);
    Variable u = rng.uniform(std::vector<std::int64_t>{3});
    const SharedVariable state = rng.state_variables().at(0);
    const auto s0 = state.get_value().to_doubles();
    Function frozen = [&] {
        CompileOptions o;
        o.no_default_updates = true;
        return function({}, {u}, {}, {}, o);
    }();
    const auto d1 = frozen()[0].to_doubles();
    CHECK(frozen()[0].to_doubles() == d1);  // the state does not move
    CHECK(state.get_value().to_doubles() == s0);
    Function listed = [&] {
        CompileOptions o;
        o.no_default_updates_for = {state};
        return function({}, {u}, {}, {}, o);
    }();
    CHECK(listed()[0].to_doubles() == d1);
    CHECK(state.get_value().to_doubles() == s0);
    Function moving = function({}, {u});
    CHECK(moving()[0].to_doubles() == d1);
    CHECK(moving()[0].to_doubles() != d1);
    // A given replacing the state: the draw reads the given state, and no update is made.
    const auto s1 = state.get_value().to_doubles();
    Function from_start = function({}, {u}, {}, {{state, constant(Tensor::from_vector<std::int32_t>(
                                                            state.get_value().shape(),
                                                            std::vector<std::int32_t>(s0.begin(), s0.end())))}});
    CHECK(from_start()[0].to_doubles() == d1);
    CHECK(from_start()[0].to_doubles() == d1);
    CHECK(state.get_value().to_doubles() == s1);
}

namespace {

// Ops that log when their kernels run, for the executor's handling of asynchronous ops.
std::vector<std::string> g_events;

// Copies its float64 input to its output, logging "run:<tag>"; throws when the tag is "fail".
class Logged final : public Op {
public:
    explicit Logged(std::string tag) : tag_(std::move(tag)) {}
    std::string name() const override { return "Logged{" + tag_ + "}"; }
    std::vector<TensorType> make_types(const std::vector<Variable>& in) const override { return {in[0].type()}; }
    void perform(const Node&, std::span<const Tensor* const> in, std::span<Tensor* const> out) const override {
        g_events.push_back("run:" + tag_);
        if (tag_ == "fail") throw UsageError("Logged{fail}: failing on purpose");
        out[0]->ensure(in[0]->dtype(), in[0]->shape());
        out[0]->copy_from(*in[0]);
    }
    bool props_equal(const Op& o) const override { return dynamic_cast<const Logged*>(&o) && static_cast<const Logged&>(o).tag_ == tag_; }
    std::size_t props_hash() const override { return std::hash<std::string>()(tag_); }
    bool is_stateful() const override { return true; }

private:
    std::string tag_;
};

// An asynchronous copy, as a transfer over the network behaves: perform() only remembers
// where its input lives; finish() reads it from there then (so the input's buffer must still
// hold the value) and writes the output.
class DelayedCopy final : public Op {
public:
    std::string name() const override { return "DelayedCopy"; }
    std::vector<TensorType> make_types(const std::vector<Variable>& in) const override { return {in[0].type()}; }
    bool is_async() const override { return true; }
    void perform(const Node&, std::span<const Tensor* const> in, std::span<Tensor* const> out) const override {
        g_events.push_back("start");
        src_ = in[0]->data<double>();
        n_ = in[0]->size();
        out[0]->ensure(in[0]->dtype(), in[0]->shape());
    }
    void progress(const Node&) const override { g_events.push_back("progress"); }
    void finish(const Node&, std::span<Tensor* const> out) const override {
        g_events.push_back("finish");
        std::copy(src_, src_ + n_, out[0]->data<double>());
    }
    bool props_equal(const Op&) const override { return false; }
    std::size_t props_hash() const override { return 0; }
    bool is_stateful() const override { return true; }

private:
    mutable const double* src_ = nullptr;
    mutable std::int64_t n_ = 0;
};

Variable logged(const std::string& tag, const Variable& x) { return apply1(std::make_shared<Logged>(tag), {x}); }
Variable delayed(const Variable& x) { return apply1(std::make_shared<DelayedCopy>(), {x}); }

}  // namespace

TEST_CASE("asynchronous ops start as soon as their inputs are ready and finish before their first reader") {
    Variable x = vector("x");
    // In graph order the chain a -> b comes first; the asynchronous copy of x is ready at once,
    // so it starts first, is polled after each step, and ends just before c reads it.
    Variable out = logged("c", logged("b", logged("a", x)) + delayed(x) * 2.0);
    Function f = function({x}, {out});
    g_events.clear();
    auto r = f({Tensor::from_vector<double>({2}, {1.0, -3.0})});
    CHECK(r[0].to_doubles() == std::vector<double>{3.0, -9.0});
    INFO(fmt::format("{}", fmt::join(g_events, " ")));
    CHECK(g_events == std::vector<std::string>{"start", "progress", "run:a", "progress", "run:b", "progress", "finish", "run:c"});
}

TEST_CASE("an asynchronous op nothing reads finishes at the end of the call; its input outlives the steps between") {
    Variable x = vector("x");
    Variable a = x * 2.0;  // a computed value whose buffer the pool could hand on
    // Values of a's size computed while the copy is in flight: none may take a's buffer.
    Variable b = logged("b", x * 3.0);
    Variable c = logged("c", b * 4.0 + 1.0);
    Function f = function({x}, {delayed(a), c});
    for (int call = 0; call < 3; ++call) {
        g_events.clear();
        auto r = f({Tensor::from_vector<double>({3}, {1.0, 2.0, 3.0 + call})});
        CHECK(r[0].to_doubles() == std::vector<double>{2.0, 4.0, 2.0 * (3.0 + call)});
        CHECK(r[1].to_doubles() == std::vector<double>{13.0, 25.0, 12.0 * (3.0 + call) + 1.0});
        REQUIRE(!g_events.empty());
        CHECK(g_events.front() == "start");
        CHECK(g_events.back() == "finish");
    }
}

TEST_CASE("work in flight is finished when a later step throws") {
    Variable x = vector("x");
    Function f = function({x}, {delayed(x * 2.0), logged("fail", x + 1.0)});
    g_events.clear();
    CHECK_THROWS_WITH_AS(f({Tensor::from_vector<double>({1}, {1.0})}), doctest::Contains("failing on purpose"), UsageError);
    INFO(fmt::format("{}", fmt::join(g_events, " ")));
    // x * 2, the start, x + 1, the failing step: the copy is finished on the way out.
    CHECK(g_events == std::vector<std::string>{"start", "progress", "progress", "run:fail", "finish"});
}

TEST_CASE("a fused update is written into its parameter's own buffer") {
    SharedVariable w = shared(Tensor::from_vector<double>({2, 2}, {1, 2, 3, 4}), "w");
    Variable g = matrix("g");
    Function f = function({g}, {}, {{w, w - 0.5 * exp(g)}});
    bool into_w = false;
    for (const auto& line : f.in_place()) into_w = into_w || line.find("(w)") != std::string::npos;
    CHECK(into_w);
    const void* before = w.get_value(true).raw_data();
    f({Tensor::from_vector<double>({2, 2}, {0, 0, 0, std::log(2.0)})});
    CHECK(w.get_value(true).raw_data() == before);
    CHECK(w.get_value().to_doubles() == std::vector<double>{0.5, 1.5, 2.5, 3.0});
    // A copy taken before (get_value without borrow) keeps its values; the next update is
    // written into the same buffer again.
    Tensor copy = w.get_value();
    f({Tensor::from_vector<double>({2, 2}, {0, 0, 0, 0})});
    CHECK(copy.to_doubles() == std::vector<double>{0.5, 1.5, 2.5, 3.0});
    CHECK(w.get_value(true).raw_data() == before);
    CHECK(w.get_value().to_doubles() == std::vector<double>{0.0, 1.0, 2.0, 2.5});
}

TEST_CASE("Function::copy: swap shared variables, delete updates, independent of the original") {
    SharedVariable acc = shared(Tensor::scalar(0.0), "acc");
    Variable inc = scalar("inc");
    Function f = function({inc}, {acc * 2}, {{acc, acc + inc}});
    f({1.0});
    f({2.0});
    CHECK(acc.get_value().item() == 3);

    // swap: the copy reads and updates other, acc is left alone.
    SharedVariable other = shared(Tensor::scalar(100.0), "other");
    Function g = f.copy({{acc, other}});
    const Tensor from_f = f({0.0})[0];  // 2 * 3
    CHECK(g({5.0})[0].item() == 200);
    CHECK(other.get_value().item() == 105);
    CHECK(acc.get_value().item() == 3);
    CHECK(from_f.item() == 6);  // the original's earlier result is not changed by the copy's call
    CHECK(g({1.0})[0].item() == 210);

    // delete_updates: the state stays where it is.
    Function h = f.copy({}, true);
    CHECK(h({10.0})[0].item() == 6);
    CHECK(h({10.0})[0].item() == 6);
    CHECK(acc.get_value().item() == 3);
    f({1.0});  // the original still updates
    CHECK(acc.get_value().item() == 4);

    SharedVariable unused = shared(Tensor::scalar(0.0), "unused");
    CHECK(error_of([&] { f.copy({{unused, other}}); }) == "Function::copy: unused is not used by this function");
    // A swap must keep the type.
    SharedVariable vec = shared(T64({2}, {1, 2}), "vec");
    CHECK(error_of([&] { f.copy({{acc, vec}}); }) ==
          "Function::copy: cannot swap acc (float64 scalar) for vec (float64 vector): the types differ");
}

TEST_CASE("Function::copy with delete_updates leaves out default updates (random states) too") {
    MRG_RandomStreams rng(1234);
    Variable u = rng.uniform(std::vector<std::int64_t>{4});
    Function f = function({}, {u});
    Function frozen = f.copy({}, true);
    const Tensor a = frozen()[0], b = frozen()[0];
    CHECK(a.to_doubles() == b.to_doubles());  // the state is not advanced
    const Tensor c = f()[0], d = f()[0];
    CHECK(a.to_doubles() == c.to_doubles());  // the original draws from the same state, then advances it
    CHECK(c.to_doubles() != d.to_doubles());
}
