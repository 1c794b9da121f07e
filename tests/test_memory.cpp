// The memory contract of compiled functions (compile/ownership.hpp) and atomic calls.
//
// Every case pairs an aliasing situation with a later writer that would expose a shared
// buffer: an in-place Gemm update (W := W - lr * dot(u, v) is granted in place), a caller
// that modifies a returned array, or a call that fails half-way.
#include <doctest/doctest.h>

#include <atomic>
#include <chrono>
#include <thread>
#include <vector>

#include "ops/team.hpp"
#include "support/helpers.hpp"

using namespace theanine;
using namespace theanine::testing;

namespace {

// Overwrites every element of t (a caller modifying an array it was given).
void scribble(Tensor t, double value = -777) {
    Tensor c = Tensor::full(t.dtype(), t.shape(), value);
    t.copy_from(c);
}

// A function that updates target in place: target := target - 0.5 * dot(u, v), with u (2, 1)
// and v (1, 2) of ones, so each call subtracts 0.5 from every element.
Function in_place_writer(const SharedVariable& target) {
    SharedVariable u = shared(Tensor::full(DType::float64, {2, 1}, 1.0), "u");
    SharedVariable v = shared(Tensor::full(DType::float64, {1, 2}, 1.0), "v");
    return function({}, {}, {{target, target - 0.5 * dot(u, v)}});
}

std::vector<double> values(const SharedVariable& s) { return s.get_value().to_doubles(); }

}  // namespace

TEST_CASE("the in-place writer used below is granted in place") {
    SharedVariable w = shared(T64({2, 2}, {1, 2, 3, 4}), "w");
    Function f = in_place_writer(w);
    REQUIRE(f.in_place().size() == 1);
    CHECK(f.in_place()[0].find("writes output 0 into input 0 (w)") != std::string::npos);
    const void* before = w.get_value(true).storage_id();
    f();
    CHECK(w.get_value(true).storage_id() == before);
    CHECK(values(w) == std::vector<double>{0.5, 1.5, 2.5, 3.5});
}

TEST_CASE("(a) returned values never share storage with inputs, constants or shared variables") {
    Variable x = matrix("x");
    Tensor xv = T64({2, 2}, {1, 2, 3, 4});

    SUBCASE("an input returned as it is, and a view of it") {
        Function f = function({x}, {x, x.T()});
        auto out = f({xv});
        CHECK_FALSE(out[0].shares_storage(xv));
        CHECK_FALSE(out[1].shares_storage(xv));
        CHECK_FALSE(out[0].shares_storage(out[1]));
        scribble(out[0]);
        scribble(out[1]);
        CHECK(xv.to_doubles() == std::vector<double>{1, 2, 3, 4});
    }
    SUBCASE("the same value returned twice gives two arrays") {
        Function f = function({x}, {x * 2.0, x * 2.0});
        auto out = f({xv});
        CHECK_FALSE(out[0].shares_storage(out[1]));
        scribble(out[0]);
        CHECK(out[1].to_doubles() == std::vector<double>{2, 4, 6, 8});
    }
    SUBCASE("a constant, and a view of it") {
        Variable c = constant(T64({2}, {5, 6}), "c");
        Function f = function({}, {c, c.dimshuffle({0, -1})});
        auto first = f();
        scribble(first[0]);
        scribble(first[1]);
        auto second = f();
        CHECK(second[0].to_doubles() == std::vector<double>{5, 6});
        CHECK(second[1].to_doubles() == std::vector<double>{5, 6});
    }
    SUBCASE("a shared variable, a view of it, and its updated value") {
        SharedVariable w = shared(T64({2, 2}, {1, 2, 3, 4}), "w");
        Function f = function({}, {w, w.T()});
        auto out = f();
        CHECK_FALSE(out[0].shares_storage(w.get_value(true)));
        CHECK_FALSE(out[1].shares_storage(w.get_value(true)));
        scribble(out[0]);
        scribble(out[1]);
        CHECK(values(w) == std::vector<double>{1, 2, 3, 4});

        Variable w_new = w * 2.0;
        Function g = function({}, {w_new}, {{w, w_new}});
        auto r = g();
        CHECK_FALSE(r[0].shares_storage(w.get_value(true)));
        scribble(r[0]);
        CHECK(values(w) == std::vector<double>{2, 4, 6, 8});
    }
    SUBCASE("an input's default value") {
        Variable s = scalar("s");
        Function f = function({In(s, 3.0)}, {s});
        auto out = f();
        scribble(out[0]);
        CHECK(f()[0].item() == 3.0);
    }
}

TEST_CASE("(b) two shared variables never share storage after an update") {
    SharedVariable a = shared(T64({2, 2}, {0, 0, 0, 0}), "a");
    SharedVariable b = shared(T64({2, 2}, {1, 2, 3, 4}), "b");
    SharedVariable d = shared(T64({2, 2}, {9, 8, 7, 6}), "d");

    SUBCASE("(a, b), then b updated in place") {
        function({}, {}, {{a, b}})();
        CHECK_FALSE(a.get_value(true).shares_storage(b.get_value(true)));
        in_place_writer(b)();
        CHECK(values(a) == std::vector<double>{1, 2, 3, 4});
        CHECK(values(b) == std::vector<double>{0.5, 1.5, 2.5, 3.5});
    }
    SUBCASE("(b, input), then b updated in place: the caller's array is not written") {
        Variable x = matrix("x");
        Tensor xv = T64({2, 2}, {1, 1, 1, 1});
        function({x}, {}, {{b, x}})({xv});
        CHECK_FALSE(b.get_value(true).shares_storage(xv));
        in_place_writer(b)();
        CHECK(xv.to_doubles() == std::vector<double>{1, 1, 1, 1});
        CHECK(values(b) == std::vector<double>{0.5, 0.5, 0.5, 0.5});
    }
    SUBCASE("(a, d), (b, d): both take d's value, in separate buffers") {
        Variable d2 = d * 1.0;
        Function f = function({}, {}, {{a, d2}, {b, d2}});
        f();
        CHECK(values(a) == std::vector<double>{9, 8, 7, 6});
        CHECK(values(b) == std::vector<double>{9, 8, 7, 6});
        CHECK_FALSE(a.get_value(true).shares_storage(b.get_value(true)));
        in_place_writer(a)();
        CHECK(values(b) == std::vector<double>{9, 8, 7, 6});
        f();  // again, now that the function holds buffers from the first call
        CHECK(values(a) == std::vector<double>{9, 8, 7, 6});
        CHECK(values(b) == std::vector<double>{9, 8, 7, 6});
    }
    SUBCASE("(a, d[:]), then d updated in place") {
        function({}, {}, {{a, subtensor(d, {slice(0, 2)})}})();
        CHECK_FALSE(a.get_value(true).shares_storage(d.get_value(true)));
        in_place_writer(d)();
        CHECK(values(a) == std::vector<double>{9, 8, 7, 6});
        CHECK(values(d) == std::vector<double>{8.5, 7.5, 6.5, 5.5});
    }
    SUBCASE("(a, b) and (b, a) swap without aliasing") {
        Function f = function({}, {}, {{a, b}, {b, a}});
        f();
        CHECK(values(a) == std::vector<double>{1, 2, 3, 4});
        CHECK(values(b) == std::vector<double>{0, 0, 0, 0});
        CHECK_FALSE(a.get_value(true).shares_storage(b.get_value(true)));
        f();
        CHECK(values(a) == std::vector<double>{0, 0, 0, 0});
        CHECK(values(b) == std::vector<double>{1, 2, 3, 4});
    }
    SUBCASE("set_value and get_value copy unless borrow") {
        Tensor t = T64({2, 2}, {1, 1, 2, 2});
        a.set_value(t);
        scribble(t);
        CHECK(values(a) == std::vector<double>{1, 1, 2, 2});
        Tensor got = a.get_value();
        scribble(got);
        CHECK(values(a) == std::vector<double>{1, 1, 2, 2});
        a.set_value(t, true);
        CHECK(a.get_value(true).shares_storage(t));
    }
}

TEST_CASE("(c) an in-place kernel writes only the function's buffers or the variable it updates") {
    SharedVariable w = shared(T64({2, 2}, {1, 2, 3, 4}), "w");
    SharedVariable a = shared(T64({2, 2}, {0, 0, 0, 0}), "a");
    SharedVariable u = shared(Tensor::full(DType::float64, {2, 1}, 1.0), "u");
    SharedVariable v = shared(Tensor::full(DType::float64, {1, 2}, 1.0), "v");

    SUBCASE("a := w - dot(u, v) with w kept: w is not overwritten") {
        Function f = function({}, {}, {{a, w - 0.5 * dot(u, v)}, {w, w}});
        f();
        CHECK(values(a) == std::vector<double>{0.5, 1.5, 2.5, 3.5});
        CHECK(values(w) == std::vector<double>{1, 2, 3, 4});
    }
    SUBCASE("a := w - dot(u, v) and w := 2 w") {
        Function f = function({}, {}, {{a, w - 0.5 * dot(u, v)}, {w, w * 2.0}});
        f();
        CHECK(values(a) == std::vector<double>{0.5, 1.5, 2.5, 3.5});
        CHECK(values(w) == std::vector<double>{2, 4, 6, 8});
    }
    SUBCASE("an argument that is w's own buffer (a borrowed get_value passed back)") {
        Variable x = matrix("x");
        Function f = function({x}, {x.sum()}, {{w, w - 0.5 * dot(u, v)}});
        Tensor borrowed = w.get_value(true);
        CHECK(f({borrowed})[0].item() == 10);
        CHECK(values(w) == std::vector<double>{0.5, 1.5, 2.5, 3.5});
        CHECK(borrowed.to_doubles() == std::vector<double>{1, 2, 3, 4});
    }
    SUBCASE("a shared value that is a non-contiguous view (a borrowed transpose)") {
        Tensor base = T64({2, 2}, {1, 3, 2, 4});
        w.set_value(base.transpose(), true);
        in_place_writer(w)();
        CHECK(values(w) == std::vector<double>{0.5, 1.5, 2.5, 3.5});
    }
    SUBCASE("two shared variables given one buffer by set_value(borrow=true)") {
        Tensor one = T64({2, 2}, {1, 2, 3, 4});
        w.set_value(one, true);
        a.set_value(one, true);
        Function f = function({}, {a.sum()}, {{w, w - 0.5 * dot(u, v)}});
        CHECK(f()[0].item() == 10);
        CHECK(values(a) == std::vector<double>{1, 2, 3, 4});
        CHECK(values(w) == std::vector<double>{0.5, 1.5, 2.5, 3.5});
    }
}

TEST_CASE("(d) a returned value is not changed by later calls of this or another function") {
    SharedVariable w = shared(T64({2, 2}, {1, 2, 3, 4}), "w");
    Variable x = matrix("x");
    Function f = function({x}, {x + w, w}, {});
    Function writer = in_place_writer(w);
    Tensor xv = T64({2, 2}, {0, 0, 0, 0});
    auto r1 = f({xv});
    writer();
    auto r2 = f({xv});
    CHECK(r1[0].to_doubles() == std::vector<double>{1, 2, 3, 4});
    CHECK(r1[1].to_doubles() == std::vector<double>{1, 2, 3, 4});
    CHECK(r2[0].to_doubles() == std::vector<double>{0.5, 1.5, 2.5, 3.5});

    SharedVariable u = shared(Tensor::full(DType::float64, {2, 1}, 1.0), "u");
    SharedVariable v = shared(Tensor::full(DType::float64, {1, 2}, 1.0), "v");
    Function train = function({}, {w * 2.0, w}, {{w, w - 0.5 * dot(u, v)}});
    auto t1 = train();
    auto t2 = train();
    CHECK(t1[0].to_doubles() == std::vector<double>{1, 3, 5, 7});
    CHECK(t1[1].to_doubles() == std::vector<double>{0.5, 1.5, 2.5, 3.5});
    CHECK(t2[0].to_doubles() == std::vector<double>{0, 2, 4, 6});
    CHECK(t2[1].to_doubles() == std::vector<double>{0, 1, 2, 3});
}

TEST_CASE("borrow: In(borrow) and Out(borrow) allow aliasing") {
    Variable x = matrix("x");
    Tensor xv = T64({2, 2}, {1, 2, 3, 4});
    In bx(x);
    bx.borrow = true;
    Function f = function({bx}, {x});
    CHECK(f({xv})[0].shares_storage(xv));

    SharedVariable w = shared(T64({2, 2}, {1, 2, 3, 4}), "w");
    Function g = function({}, {Out(w, true)});
    CHECK(g()[0].shares_storage(w.get_value(true)));
    Function h = function({}, {Out(w)});
    CHECK_FALSE(h()[0].shares_storage(w.get_value(true)));
}

TEST_CASE("a call that fails changes no shared variable and no generator state") {
    SharedVariable w = shared(T64({2, 2}, {1, 2, 3, 4}), "w");
    SharedVariable b = shared(T64({2}, {1, 1}), "b");
    Variable u = matrix("u");
    Variable v = matrix("v");
    Variable idx = lvector("idx");
    MRG_RandomStreams rng(234);
    Variable noise = rng.uniform(std::vector<std::int64_t>{2});
    // The in-place Gemm on w and the random draw could run before the failing step.
    Variable picked = b[{idx}];
    Function f = function({u, v, idx}, {(noise * picked).sum()}, {{w, w - 0.5 * dot(u, v)}, {b, b * 2.0}});
    REQUIRE(f.in_place().size() == 1);
    Tensor ones21 = Tensor::full(DType::float64, {2, 1}, 1.0);
    Tensor ones12 = Tensor::full(DType::float64, {1, 2}, 1.0);
    const SharedVariable state = rng.state_variables().at(0);
    const std::vector<double> state0 = values(state);

    SUBCASE("an index out of bounds") {
        CHECK_THROWS_AS(f({ones21, ones12, I64({2}, {0, 5})}), UsageError);
    }
    SUBCASE("the gemm's own shapes do not agree") {
        CHECK_THROWS_AS(f({Tensor::full(DType::float64, {3, 1}, 1.0), ones12, I64({2}, {0, 1})}), UsageError);
    }
    CHECK(values(w) == std::vector<double>{1, 2, 3, 4});
    CHECK(values(b) == std::vector<double>{1, 1});
    CHECK(values(state) == state0);
    // A successful call afterwards draws what a first call would have drawn.
    Function fresh_draw = function({}, {noise}, {}, {}, CompileOptions());
    const auto expected = fresh_draw()[0].to_doubles();
    state.set_value(Tensor::from_vector<std::int32_t>(state.get_value().shape(),
                                                     std::vector<std::int32_t>(state0.begin(), state0.end())));
    const double got = f({ones21, ones12, I64({2}, {0, 1})})[0].item();
    CHECK(got == doctest::Approx(expected[0] + expected[1]).epsilon(1e-15));
    CHECK(values(w) == std::vector<double>{0.5, 1.5, 2.5, 3.5});
    CHECK(values(b) == std::vector<double>{2, 2});
}

TEST_CASE("calling a moved-from Function, and calling one Function from two threads") {
    Variable x = scalar("x");
    Function f = function({x}, {x + 1.0});
    Function g = std::move(f);
    CHECK(g({1.0})[0].item() == 2.0);
    CHECK_THROWS_WITH_AS(f({1.0}), "function call: this Function was moved from; it has no compiled plan", UsageError);
}

TEST_CASE("a second concurrent call of one Function is refused; two Functions run concurrently") {
    // A call long enough (a 160x160 product) that two threads calling in a loop overlap.
    SharedVariable m = shared(random_tensor({160, 160}, 3), "m");
    Variable x = matrix("x");
    Function f = function({x}, {dot(x, m).sum()});
    Tensor xv = random_tensor({160, 160}, 4);
    const double expected = f({xv})[0].item();
    std::atomic<int> refused{0}, wrong{0}, other_errors{0};
    auto worker = [&] {
        for (int i = 0; i < 300; ++i) {
            try {
                if (f({xv})[0].item() != expected) ++wrong;
            } catch (const UsageError& e) {
                if (std::string(e.what()).find("is already running a call") != std::string::npos) {
                    ++refused;
                } else {
                    ++other_errors;
                }
            }
        }
    };
    std::thread t1(worker), t2(worker);
    t1.join();
    t2.join();
    CHECK(wrong == 0);
    CHECK(other_errors == 0);
    CHECK(refused > 0);
    CHECK(f({xv})[0].item() == expected);  // usable again afterwards

    // Two Functions, each updating its own shared variable, from two threads.
    SharedVariable a = shared(T64({}, {0}), "a");
    SharedVariable b = shared(T64({}, {0}), "b");
    Function inc_a = function({}, {}, {{a, a + 1.0}});
    Function inc_b = function({}, {}, {{b, b + 2.0}});
    std::thread ta([&] {
        for (int i = 0; i < 2000; ++i) inc_a();
    });
    std::thread tb([&] {
        for (int i = 0; i < 2000; ++i) inc_b();
    });
    ta.join();
    tb.join();
    CHECK(a.get_value().item() == 2000);
    CHECK(b.get_value().item() == 4000);
}


// Under ThreadSanitizer the team's OpenMP regions are skipped: libgomp is not built with it,
// and the data the compiler hands to a region's threads is written outside what any
// annotation can reach (.ci/run runs the kernels on one thread there).
#if defined(__SANITIZE_THREAD__)
constexpr bool kThreadSanitizer = true;
#else
constexpr bool kThreadSanitizer = false;
#endif

TEST_CASE("the kernels' team: every part once, barriers, errors, sleeping threads, with and without a session" *
          doctest::skip(kThreadSanitizer)) {
    using theanine::team::run;
    // In a session of 4 threads, run(n) hands part w of n to its own thread; the caller is
    // worker 0, and a part's kernels would run on its thread alone.
    auto parts_once = [](int n) {
        std::vector<int> seen(static_cast<std::size_t>(n), 0), sizes(static_cast<std::size_t>(n), 0);
        std::vector<std::thread::id> ids(static_cast<std::size_t>(n));
        std::atomic<int> inside{0};
        run(n, [&](int w, int size) {
            ++seen[static_cast<std::size_t>(w)];
            sizes[static_cast<std::size_t>(w)] = size;
            ids[static_cast<std::size_t>(w)] = std::this_thread::get_id();
            if (team::in_part() && active_workers() == 1) ++inside;
        });
        CHECK_FALSE(team::in_part());
        CHECK(inside == n);
        for (int w = 0; w < n; ++w) {
            CHECK(seen[static_cast<std::size_t>(w)] == 1);
            CHECK(sizes[static_cast<std::size_t>(w)] == n);
            for (int v = 0; v < w; ++v) CHECK(ids[static_cast<std::size_t>(v)] != ids[static_cast<std::size_t>(w)]);
        }
        CHECK(ids[0] == std::this_thread::get_id());
    };
    const std::uint64_t teams_before = team::teams_run();
    team::session(4, [&] {
        for (int n : {2, 3, 4}) parts_once(n);
        // A barrier makes every worker's write before it visible to all after it, part after part.
        std::vector<long> slot(3, 0), bad(3, 0);
        for (long call = 1; call <= 500; ++call) {
            run(3, [&](int w, int) {
                slot[static_cast<std::size_t>(w)] = call * 10 + w;
                team::barrier();
                for (int v = 0; v < 3; ++v) {
                    if (slot[static_cast<std::size_t>(v)] != call * 10 + v) ++bad[static_cast<std::size_t>(w)];
                }
                team::barrier();  // nobody writes the next values before all have read
            });
        }
        CHECK(bad == std::vector<long>(3, 0));
        // A part's exception reaches the caller once every part has finished; the team works on.
        std::atomic<int> finished{0};
        CHECK_THROWS_WITH_AS(run(2,
                                 [&](int w, int) {
                                     if (w == 1) throw UsageError("part 1 failed");
                                     ++finished;
                                 }),
                             "part 1 failed", UsageError);
        CHECK(finished == 1);
        // Threads asleep after a pause (longer than they spin) wake for the next part.
        std::this_thread::sleep_for(std::chrono::milliseconds(20));
        parts_once(4);
        // A session inside a session is the same session.
        team::session(4, [&] { parts_once(2); });
    });
    CHECK(team::teams_run() - teams_before == 3 + 500 + 1 + 1 + 1);
    // Without a session each run() opens an OpenMP region of its own.
    parts_once(2);
    // The body's exception leaves the session.
    CHECK_THROWS_WITH_AS(team::session(2, [] { throw UsageError("body failed"); }), "body failed", UsageError);
    // Two callers at once, each in a session of its own.
    std::atomic<long> total{0};
    auto caller = [&] {
        team::session(2, [&] {
            for (int i = 0; i < 300; ++i) {
                run(2, [&](int w, int) {
                    total += w + 1;
                    team::barrier();
                });
            }
        });
    };
    std::thread c1(caller), c2(caller);
    c1.join();
    c2.join();
    CHECK(total == 2 * 300 * 3);
}

TEST_CASE("two Functions with parallel kernels called from two threads give their serial results" *
          doctest::skip(kThreadSanitizer)) {
    set_num_threads(2);
    SharedVariable m = shared(random_tensor({200, 300}, 5), "m");
    Variable x = matrix("x");
    Function f = function({x}, {tanh(dot(x, m)).sum(0)});
    Function g = function({x}, {(dot(x, m) * 2.0).sum(1)});
    Tensor xv = random_tensor({64, 200}, 6);
    const std::vector<double> want_f = f({xv})[0].to_doubles(), want_g = g({xv})[0].to_doubles();
    std::atomic<int> wrong{0};
    std::thread tf([&] {
        for (int i = 0; i < 200; ++i) wrong += f({xv})[0].to_doubles() != want_f;
    });
    std::thread tg([&] {
        for (int i = 0; i < 200; ++i) wrong += g({xv})[0].to_doubles() != want_g;
    });
    tf.join();
    tg.join();
    CHECK(wrong == 0);
    set_num_threads(0);
}
