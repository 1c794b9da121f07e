// scan: values against hand-written loops, taps, n_steps, go_backwards, map/reduce/fold,
// shared variables and random draws inside the step, nested loops, errors, allocation,
// gradients (verify_grad and the same loop unrolled by hand), truncation, outer rewrites.
#include <doctest/doctest.h>

#include <cmath>
#include <string>

#include "compile/rewrites/rewrites.hpp"
#include "support/helpers.hpp"

using namespace theanine;
using namespace theanine::testing;

namespace {

std::vector<double> vals(const Tensor& t) { return t.to_doubles(); }

// Throws and returns the message, or "" when nothing is thrown.

// The tanh RNN h_t = tanh(x_t W + h_{t-1} U + b), by hand, float64.
std::vector<double> rnn_by_hand(const Tensor& x, const Tensor& h0, const Tensor& W, const Tensor& U, const Tensor& b) {
    const std::int64_t n = x.dim(0), batch = x.dim(1), nin = x.dim(2), nh = h0.dim(1);
    std::vector<double> h = vals(h0), out;
    const auto xv = vals(x), Wv = vals(W), Uv = vals(U), bv = vals(b);
    for (std::int64_t t = 0; t < n; ++t) {
        std::vector<double> next(static_cast<std::size_t>(batch * nh));
        for (std::int64_t r = 0; r < batch; ++r) {
            for (std::int64_t c = 0; c < nh; ++c) {
                double a = 0;
                for (std::int64_t k = 0; k < nin; ++k) a += xv[(t * batch + r) * nin + k] * Wv[k * nh + c];
                double u = 0;
                for (std::int64_t k = 0; k < nh; ++k) u += h[r * nh + k] * Uv[k * nh + c];
                next[r * nh + c] = std::tanh(a + u + bv[c]);
            }
        }
        h = next;
        out.insert(out.end(), h.begin(), h.end());
    }
    return out;
}

ScanResult rnn(const Variable& x, const Variable& h0, const Variable& W, const Variable& U, const Variable& b,
               int truncate = -1) {
    return scan([](const std::vector<Variable>& a) { return ScanStep(tanh(dot(a[0], a[2]) + dot(a[1], a[3]) + a[4])); },
                {x}, {h0}, {W, U, b}, std::nullopt, truncate, false, "rnn");
}

}  // namespace

TEST_CASE("scan: a running sum equals the hand-written loop; outputs are stacked without the initial value") {
    Variable x = vector("x"), s0 = scalar("s0");
    ScanResult r = scan([](const std::vector<Variable>& a) { return ScanStep(a[0] + a[1]); }, {x}, {s0});
    Tensor got = eval1({x, s0}, r[0], {T64({4}, {1, 2, 3, 4}), 10.0});
    CHECK(got.shape() == Shape{4});
    CHECK(vals(got) == std::vector<double>{11, 13, 16, 20});
    CHECK(r.updates.empty());
}

TEST_CASE("scan: a tanh RNN over a 3-d sequence matches the loop written by hand") {
    Variable x = tensor3("x"), h0 = matrix("h0"), W = matrix("W"), U = matrix("U"), b = vector("b");
    Tensor xv = random_tensor({6, 2, 3}, 1), hv = random_tensor({2, 4}, 2), Wv = random_tensor({3, 4}, 3),
           Uv = random_tensor({4, 4}, 4), bv = random_tensor({4}, 5);
    Tensor got = eval1({x, h0, W, U, b}, rnn(x, h0, W, U, b)[0], {xv, hv, Wv, Uv, bv});
    CHECK(got.shape() == Shape{6, 2, 4});
    CHECK(close(vals(got), rnn_by_hand(xv, hv, Wv, Uv, bv), 1e-14));
}

TEST_CASE("scan: sequence taps {-1, 0, 1} read three consecutive rows; steps = length - 2") {
    Variable x = vector("x");
    ScanResult r = scan([](const std::vector<Variable>& a) { return ScanStep(a[0] + 2.0 * a[1] + 3.0 * a[2]); },
                        {ScanSequence(x, {-1, 0, 1})});
    Tensor got = eval1({x}, r[0], {T64({5}, {1, 2, 3, 4, 5})});
    // rows (1,2,3), (2,3,4), (3,4,5)
    CHECK(vals(got) == std::vector<double>{1 + 4 + 9, 2 + 6 + 12, 3 + 8 + 15});
}

TEST_CASE("scan: an output with taps {-2, -1} (Fibonacci) takes its initial rows oldest first") {
    Variable f0 = vector("f0");
    ScanResult r = scan([](const std::vector<Variable>& a) { return ScanStep(a[0] + a[1]); }, {},
                        {ScanOutput(f0, {-2, -1})}, {}, 6);
    Tensor got = eval1({f0}, r[0], {T64({2}, {0, 1})});
    CHECK(vals(got) == std::vector<double>{1, 2, 3, 5, 8, 13});
    // taps {-3, -1}: f_t = f_{t-3} + f_{t-1}
    ScanResult r3 = scan([](const std::vector<Variable>& a) { return ScanStep(a[0] + a[1]); }, {},
                         {ScanOutput(f0, {-3, -1})}, {}, 4);
    Tensor got3 = eval1({f0}, r3[0], {T64({3}, {1, 10, 100})});
    // 1 + 100, 10 + 101, 100 + 111, 101 + 211
    CHECK(vals(got3) == std::vector<double>{101, 111, 211, 312});
}

TEST_CASE("scan: outputs not fed back, mixed with fed-back ones; non-sequences in Theano's argument order") {
    Variable x = vector("x"), acc0 = scalar("acc0"), k = scalar("k");
    // args: x[t], acc[t-1], k -> (x[t] * k, acc + x[t])
    ScanResult r = scan(
        [](const std::vector<Variable>& a) { return ScanStep({a[0] * a[2], a[1] + a[0]}); }, {x},
        {ScanOutput::none(), ScanOutput(acc0)}, {k});
    auto got = eval({x, acc0, k}, {r[0], r[1]}, {T64({3}, {1, 2, 3}), 0.0, 10.0});
    CHECK(vals(got[0]) == std::vector<double>{10, 20, 30});
    CHECK(vals(got[1]) == std::vector<double>{1, 3, 6});
}

TEST_CASE("scan: symbolic n_steps without sequences (matrix power), zero steps, and a negative count refused") {
    Variable A = matrix("A"), k = lscalar("k");
    Variable one = constant(Tensor::from_vector<double>({2, 2}, {1, 0, 0, 1}));
    ScanResult r = scan([](const std::vector<Variable>& a) { return ScanStep(dot(a[0], a[1])); }, {}, {one}, {A},
                        Bound(k), -1, false, "power");
    Function f = function({A, k}, {r[0]});
    Tensor Av = T64({2, 2}, {1, 1, 1, 0});
    Tensor got = f({Av, 5})[0];
    CHECK(got.shape() == Shape{5, 2, 2});
    // A^5 for the Fibonacci matrix: [[8, 5], [5, 3]]
    CHECK(vals(got.index(0, 4)) == std::vector<double>{8, 5, 5, 3});
    CHECK(f({Av, 0})[0].shape() == Shape{0, 2, 2});
    const std::string e = error_of([&] { f({Av, -1}); });
    CHECK(e.find("scan 'power'") != std::string::npos);
    CHECK(e.find("n_steps is -1") != std::string::npos);
    CHECK(e.find("test_scan.cpp") != std::string::npos);
}

TEST_CASE("scan: sequences are cut to the shortest; a given n_steps longer than a sequence is an error") {
    Variable x = vector("x"), y = vector("y"), n = lscalar("n");
    ScanResult r = scan([](const std::vector<Variable>& a) { return ScanStep(a[0] * a[1]); }, {x, y});
    Tensor got = eval1({x, y}, r[0], {T64({4}, {1, 2, 3, 4}), T64({3}, {10, 20, 30})});
    CHECK(vals(got) == std::vector<double>{10, 40, 90});
    ScanResult r2 = scan([](const std::vector<Variable>& a) { return ScanStep(a[0] * 2.0); },
                         {ScanSequence(x, {0, 2})}, {}, {}, Bound(n), -1, false, "short");
    Function f = function({x, n}, {r2[0]});
    CHECK(vals(f({T64({4}, {1, 2, 3, 4}), 2})[0]) == std::vector<double>{2, 4});
    const std::string e = error_of([&] { f({T64({4}, {1, 2, 3, 4}), 3}); });
    CHECK(e.find("scan 'short': sequence 0 has 4 rows; 3 steps with taps {0, 2} need 5") != std::string::npos);
}

TEST_CASE("scan: go_backwards iterates from the last row; outputs stay in iteration order") {
    Variable x = vector("x"), s0 = scalar("s0");
    ScanResult r = scan([](const std::vector<Variable>& a) { return ScanStep(a[0] + 10.0 * a[1]); }, {x}, {s0}, {},
                        std::nullopt, -1, true);
    Tensor got = eval1({x, s0}, r[0], {T64({3}, {1, 2, 3}), 0.0});
    CHECK(vals(got) == std::vector<double>{3, 32, 321});
}

TEST_CASE("map, reduce, foldl, foldr") {
    Variable x = vector("x"), z = scalar("z");
    auto sq = map([](const std::vector<Variable>& a) { return ScanStep(a[0] * a[0]); }, {x});
    auto sum = reduce([](const std::vector<Variable>& a) { return ScanStep(a[0] + a[1]); }, {x}, {z});
    // foldl: (((z - x0) - x1) - x2); foldr: (((z - x2) - x1) - x0) with x = [1, 2, 3] and a
    // step that is not symmetric: acc * 10 + x
    auto fl = foldl([](const std::vector<Variable>& a) { return ScanStep(a[1] * 10.0 + a[0]); }, {x}, {z});
    auto fr = foldr([](const std::vector<Variable>& a) { return ScanStep(a[1] * 10.0 + a[0]); }, {x}, {z});
    auto got = eval({x, z}, {sq[0], sum[0], fl[0], fr[0]}, {T64({3}, {1, 2, 3}), 0.0});
    CHECK(vals(got[0]) == std::vector<double>{1, 4, 9});
    CHECK(got[1].ndim() == 0);
    CHECK(got[1].item() == 6);
    CHECK(got[2].item() == 123);
    CHECK(got[3].item() == 321);
}

TEST_CASE("scan: shared variables read inside are implicit inputs; the step's updates come back per loop") {
    SharedVariable w = shared(T64({2}, {1, 2}), "w");
    SharedVariable count = shared(Tensor::scalar<double>(0), "count");
    Variable x = vector("x");
    ScanResult r = scan(
        [&](const std::vector<Variable>& a) {
            return ScanStep({a[0] * w + count}, {{count, count + 1.0}});
        },
        {x});
    REQUIRE(r.updates.size() == 1);
    CHECK(r.updates[0].first.same(count));
    Function f = function({x}, {r[0]}, r.updates);
    Tensor got = f({T64({3}, {1, 2, 3})})[0];
    // step t reads count = t (the value the previous step wrote)
    CHECK(vals(got) == std::vector<double>{1, 2, 2 + 1, 4 + 1, 3 + 2, 6 + 2});
    CHECK(count.get_value().item() == 3);
    got = f({T64({3}, {1, 2, 3})})[0];
    CHECK(vals(got) == std::vector<double>{1 + 3, 2 + 3, 2 + 4, 4 + 4, 3 + 5, 6 + 5});
    CHECK(count.get_value().item() == 6);
    // Without the updates the loop still runs, and the variable keeps its value.
    Function g = function({x}, {r[0]});
    g({T64({3}, {1, 2, 3})});
    CHECK(count.get_value().item() == 6);
}

TEST_CASE("scan: MRG draws inside the step are the stream's successive draws; updates continue the stream") {
    const int steps = 4;
    MRG_RandomStreams srng(1234);
    ScanResult r = scan(
        [&](const std::vector<Variable>&) { return ScanStep(srng.uniform(std::vector<std::int64_t>{3})); }, {}, {}, {},
        steps);
    REQUIRE(r.updates.size() == 1);
    Function f = function({}, {r[0]}, r.updates);
    // The same stream outside a loop: successive calls draw successive numbers.
    MRG_RandomStreams ref(1234);
    Variable u = ref.uniform(std::vector<std::int64_t>{3});
    Function g = function({}, {u});
    for (int call = 0; call < 2; ++call) {
        Tensor got = f()[0];
        for (int t = 0; t < steps; ++t) {
            CAPTURE(call);
            CAPTURE(t);
            CHECK(vals(got.index(0, t)) == vals(g()[0]));
        }
    }
}

TEST_CASE("scan: a stream's state advanced in place inside the loop leaves the value the call started from intact") {
    // The step advances its generator state in its own copy: an output that reads the state
    // variable as the call found it still holds that value, and the update holds the state
    // after every step's draws (the same rows a stream outside the loop reaches).
    const int steps = 5;
    MRG_RandomStreams srng(77);
    ScanResult r = scan(
        [&](const std::vector<Variable>&) { return ScanStep(srng.uniform(std::vector<std::int64_t>{4, 3})); }, {}, {}, {},
        steps);
    REQUIRE(srng.state_variables().size() == 1);
    SharedVariable state = srng.state_variables()[0];
    Function f = function({}, {r[0], state}, r.updates);
    MRG_RandomStreams ref(77);
    Variable u = ref.uniform(std::vector<std::int64_t>{4, 3});
    Function g = function({}, {u});
    for (int call = 0; call < 3; ++call) {
        CAPTURE(call);
        const Tensor before = state.get_value();
        const auto out = f();
        CHECK(vals(out[1]) == vals(before));
        for (int t = 0; t < steps; ++t) CHECK(vals(out[0].index(0, t)) == vals(g()[0]));
        CHECK(vals(state.get_value()) == vals(ref.state_variables()[0].get_value()));
        CHECK(vals(state.get_value()) != vals(before));
    }
}

TEST_CASE("scan: numpy RandomStreams inside the step, binomial masks on a sequence") {
    RandomStreams srng(42);
    Variable x = matrix("x");
    ScanResult r = scan(
        [&](const std::vector<Variable>& a) { return ScanStep(a[0] * srng.binomial(a[0].shape(), 1, 0.5, DType::float64)); },
        {x});
    Function f = function({x}, {r[0]}, r.updates);
    RandomStreams ref(42);
    Variable y = vector("y");
    Function g = function({y}, {y * ref.binomial(y.shape(), 1, 0.5, DType::float64)});
    Tensor xv = random_tensor({5, 7}, 9);
    Tensor got = f({xv})[0];
    for (int t = 0; t < 5; ++t) CHECK(vals(got.index(0, t)) == vals(g({xv.index(0, t).copy()})[0]));
}

TEST_CASE("scan: a scan inside the step of a scan") {
    Variable X = matrix("X");
    // Row sums by an inner reduce, then a running total of them by the outer loop.
    Variable t0 = scalar("t0");
    ScanResult r = scan(
        [](const std::vector<Variable>& a) {
            Variable zero = constant(0.0);
            auto inner = reduce([](const std::vector<Variable>& b) { return ScanStep(b[0] + b[1]); }, {a[0]}, {zero});
            return ScanStep(a[1] + inner[0]);
        },
        {X}, {t0});
    Tensor got = eval1({X, t0}, r[0], {T64({3, 2}, {1, 2, 3, 4, 5, 6}), 0.0});
    CHECK(vals(got) == std::vector<double>{3, 10, 21});
}

TEST_CASE("scan: errors name the scan, the output or sequence, and the user's line") {
    Variable x = vector("x"), h0 = vector("h0"), i0 = lscalar("i0");
    // dtype of a fed-back output
    std::string e = error_of([&] {
        scan([](const std::vector<Variable>& a) { return ScanStep(cast(a[1], DType::float32)); }, {x}, {h0}, {},
             std::nullopt, -1, false, "bad_dtype");
    });
    CHECK(e.find("scan 'bad_dtype': step output 0 has type float32 vector but its initial value has type float64 "
                 "vector") != std::string::npos);
    CHECK(e.find("test_scan.cpp") != std::string::npos);
    // rank
    e = error_of([&] {
        scan([](const std::vector<Variable>& a) { return ScanStep(a[1].sum()); }, {x}, {h0});
    });
    CHECK(e.find("step output 0 has type float64 scalar") != std::string::npos);
    // shape at run time
    ScanResult r = scan([](const std::vector<Variable>& a) { return ScanStep(concatenate({a[1], a[1]})); }, {x}, {h0},
                        {}, std::nullopt, -1, false, "grows");
    Function f = function({x, h0}, {r[0]});
    e = error_of([&] { f({T64({2}, {1, 2}), T64({2}, {0, 0})}); });
    CHECK(e.find("scan 'grows': output 0 has shape (4,) at step 0, but its initial value (taps {-1}) has rows of "
                 "shape (2,)") != std::string::npos);
    // number of outputs
    e = error_of([&] {
        scan([](const std::vector<Variable>& a) { return ScanStep({a[0], a[0]}); }, {x}, {h0});
    });
    CHECK(e.find("the step returns 2 outputs but outputs_info has 1 entries") != std::string::npos);
    // taps
    e = error_of([&] { scan([](const std::vector<Variable>& a) { return ScanStep(a[0]); }, {}, {ScanOutput(h0, {-1, 0})}, {}, 3); });
    CHECK(e.find("must be distinct negative numbers") != std::string::npos);
    e = error_of([&] { scan([](const std::vector<Variable>& a) { return ScanStep(a[0]); }, {}, {h0}); });
    CHECK(e.find("without sequences, n_steps must be given") != std::string::npos);
    e = error_of([&] { scan([](const std::vector<Variable>& a) { return ScanStep(a[0]); }, {i0}); });
    CHECK(e.find("sequence 0 ('i0') is a int64 scalar; a sequence needs a leading axis") != std::string::npos);
}

TEST_CASE("scan: a step whose row shape changes is refused at run time") {
    Variable x = matrix("x"), n = lvector("n");
    ScanResult r = scan([](const std::vector<Variable>& a) { return ScanStep(a[0][{slice(0, a[1])}]); }, {x, n}, {}, {},
                        std::nullopt, -1, false, "ragged");
    Function f = function({x, n}, {r[0]});
    CHECK(f({T64({2, 3}, {1, 2, 3, 4, 5, 6}), I64({2}, {2, 2})})[0].shape() == Shape{2, 2});
    const std::string e = error_of([&] { f({T64({2, 3}, {1, 2, 3, 4, 5, 6}), I64({2}, {2, 1})}); });
    CHECK(e.find("scan 'ragged': output 0 has shape (1,) at step 1 but (2,) at step 0") != std::string::npos);
}

TEST_CASE("scan: steady-state calls allocate no tensor storage") {
    Variable x = tensor3("x"), h0 = matrix("h0"), W = matrix("W"), U = matrix("U"), b = vector("b");
    Function f = function({x, h0, W, U, b}, {rnn(x, h0, W, U, b)[0]});
    Tensor xv = random_tensor({20, 4, 3}, 1), hv = random_tensor({4, 5}, 2), Wv = random_tensor({3, 5}, 3),
           Uv = random_tensor({5, 5}, 4), bv = random_tensor({5}, 5);
    for (int i = 0; i < 3; ++i) f({xv, hv, Wv, Uv, bv});
    const auto before = storage_allocation_count();
    for (int i = 0; i < 3; ++i) f({xv, hv, Wv, Uv, bv});
    // Each call hands its result to the caller, which drops it: one buffer for it at most.
    CHECK(storage_allocation_count() - before <= 3);
}

// ------------------------------------------------------------------ gradients

TEST_CASE("grad through scan: verify_grad on a tanh RNN, 5 and 50 steps, wrt every input") {
    for (int steps : {5, 50}) {
        CAPTURE(steps);
        Tensor xv = random_tensor({steps, 2, 3}, 11), hv = random_tensor({2, 4}, 12),
               Wv = random_tensor({3, 4}, 13, -0.5, 0.5), Uv = random_tensor({4, 4}, 14, -0.5, 0.5),
               bv = random_tensor({4}, 15);
        VerifyGradReport rep;
        CHECK_NOTHROW(rep = verify_grad(
                          [](const std::vector<Variable>& v) { return rnn(v[0], v[1], v[2], v[3], v[4])[0]; },
                          {xv, hv, Wv, Uv, bv}));
        CHECK(rep.n_checked == static_cast<std::size_t>(steps * 6 + 8 + 12 + 16 + 4));
    }
}

TEST_CASE("grad through scan equals the gradient of the loop unrolled by hand to 1e-12") {
    const int steps = 7;
    Variable x = tensor3("x"), h0 = matrix("h0"), W = matrix("W"), U = matrix("U"), b = vector("b");
    Tensor xv = random_tensor({steps, 3, 2}, 21), hv = random_tensor({3, 5}, 22), Wv = random_tensor({2, 5}, 23),
           Uv = random_tensor({5, 5}, 24, -0.6, 0.6), bv = random_tensor({5}, 25), cv = random_tensor({steps, 3, 5}, 26);
    Variable c = constant(cv);
    Variable y = rnn(x, h0, W, U, b)[0];
    Variable cost_scan = (y * c).sum();
    // The same computation unrolled.
    std::vector<Variable> hs;
    Variable h = h0;
    for (int t = 0; t < steps; ++t) {
        h = tanh(dot(x[{t}], W) + dot(h, U) + b);
        hs.push_back((h * c[{t}]).sum());
    }
    Variable cost_unrolled = hs[0];
    for (int t = 1; t < steps; ++t) cost_unrolled = cost_unrolled + hs[t];
    auto gs = grad(cost_scan, {x, h0, W, U, b});
    auto gu = grad(cost_unrolled, {x, h0, W, U, b});
    std::vector<Variable> all = gs;
    all.insert(all.end(), gu.begin(), gu.end());
    all.push_back(cost_scan);
    all.push_back(cost_unrolled);
    auto got = eval({x, h0, W, U, b}, all, {xv, hv, Wv, Uv, bv});
    for (int i = 0; i < 5; ++i) {
        CAPTURE(i);
        CHECK(got[i].shape() == got[i + 5].shape());
        CHECK(close(vals(got[i]), vals(got[i + 5]), 1e-12));
    }
    CHECK(close(vals(got[10]), vals(got[11]), 1e-13));
}

TEST_CASE("grad through scan with sequence taps {-1, 0, 1} and output taps {-2, -1}") {
    auto f = [](const std::vector<Variable>& v) {
        // y_t = tanh(w * (x[t-1] + 2 x[t] x[t+1]) + 0.5 y[t-2] - 0.3 y[t-1])
        ScanResult r = scan(
            [](const std::vector<Variable>& a) {
                return ScanStep(tanh(a[5] * (a[0] + 2.0 * a[1] * a[2]) + 0.5 * a[3] - 0.3 * a[4]));
            },
            {ScanSequence(v[0], {-1, 0, 1})}, {ScanOutput(v[1], {-2, -1})}, {v[2]});
        return r[0];
    };
    VerifyGradReport rep;
    CHECK_NOTHROW(rep = verify_grad(f, {random_tensor({9, 3}, 31), random_tensor({2, 3}, 32), random_tensor({3}, 33)}));
    CHECK(rep.n_checked == 27 + 6 + 3);
}

namespace {

// The Scan nodes a graph uses, in topological order.
std::vector<const ScanOp*> scans_of(const std::vector<Variable>& outs) {
    std::vector<const ScanOp*> r;
    for (const auto& n : toposort(outs)) {
        if (n->kind != NodeKind::apply) continue;
        if (const auto* s = dynamic_cast<const ScanOp*>(n->op.get())) r.push_back(s);
    }
    return r;
}

// How many nodes of op class T a loop's step graph has.
template <class T>
int count_inner(const ScanOp& s) {
    int k = 0;
    for (const auto& n : toposort(s.inner().outputs)) k += n->kind == NodeKind::apply && dynamic_cast<const T*>(n->op.get());
    return k;
}

}  // namespace

TEST_CASE("grad through scan reads the forward loop's outputs instead of computing the step again") {
    Variable x = tensor3("x"), h0 = matrix("h0"), W = matrix("W"), U = matrix("U"), b = vector("b");
    Variable cost = rnn(x, h0, W, U, b)[0][{-1}].sum();
    auto g = grad(cost, std::vector<Variable>{W, U, b, h0, x});
    auto scans = scans_of(g);
    REQUIRE(scans.size() == 2);
    const ScanOp& back = *scans[1];
    CHECK(back.inner().info.name == "grad_of_rnn");
    // tanh's gradient reads tanh's output: the stored h_t. Without it the reversed step would
    // hold the forward step's two products and its tanh as well.
    CHECK(count_inner<Dot>(back) == 4);  // dh_{t-1} = dA U^T, x_t^T dA, h_{t-1}^T dA, dx_t = dA W^T
    int tanhs = 0;
    for (const auto& n : toposort(back.inner().outputs)) tanhs += pattern::is_elemwise(Variable(n, 0), static_cast<int>(ScalarOp::tanh));
    CHECK(tanhs == 0);
}

TEST_CASE("scan_prune and scan_pushout_dot: weight gradients of backpropagation through time as one product "
          "over all steps, unread gradients not computed") {
    const int steps = 6;
    Variable x = tensor3("x"), h0 = matrix("h0"), W = matrix("W"), U = matrix("U"), b = vector("b");
    Tensor xv = random_tensor({steps, 3, 2}, 51), hv = random_tensor({3, 4}, 52), Wv = random_tensor({2, 4}, 53),
           Uv = random_tensor({4, 4}, 54, -0.6, 0.6), bv = random_tensor({4}, 55);
    Variable cost = (rnn(x, h0, W, U, b)[0][{-1}] * constant(random_tensor({3, 4}, 56))).sum();
    auto g = grad(cost, std::vector<Variable>{W, U});
    RewriteLog log;
    auto pruned = scan_prune(g, log);
    auto pushed = scan_pushout_dot(pruned, log);
    // Before: the reversed loop accumulates dh, dW, dU, db and computes dx_t at every step.
    const ScanOp& before = *scans_of(g).back();
    CHECK(before.inner().info.out_taps.size() == 5);
    CHECK(count_inner<Dot>(before) == 4);
    // Pruned: db and dx are not asked for. Pushed out: dW and dU become x_t, h_{t-1} and dA_t
    // stacked as outputs (no product left for them in the loop), summed by one product each.
    const ScanOp& after = *scans_of(pushed).back();
    CHECK(after.inner().info.out_taps.size() == 5);  // dh; then x_t, dA_t; h_{t-1}, dA_t
    CHECK(after.inner().info.out_taps[0] == std::vector<int>{-1});
    for (std::size_t j = 1; j < 5; ++j) CHECK(after.inner().info.out_taps[j].empty());
    CHECK(count_inner<Dot>(after) == 1);  // dh_{t-1} = dA_t U^T
    int pushouts = 0, prunes = 0;
    for (const auto& l : log.lines) {
        pushouts += l.rfind("rewrite scan_pushout_dot", 0) == 0;
        prunes += l.rfind("rewrite scan_prune", 0) == 0;
    }
    CHECK(prunes > 0);
    CHECK(pushouts > 0);
    // The same numbers as the loop without the two passes, and as central differences.
    CompileOptions plain;
    plain.rewrites.excluding = {"scan_prune", "scan_pushout_dot"};
    Function with = function({x, h0, W, U, b}, g), without = function({x, h0, W, U, b}, g, {}, {}, plain);
    auto a = with({xv, hv, Wv, Uv, bv}), e = without({xv, hv, Wv, Uv, bv});
    for (int i = 0; i < 2; ++i) CHECK(close(vals(a[i]), vals(e[i]), 1e-13));
    bool seen = false;
    for (const auto& l : with.rewrite_log()) seen = seen || l.rfind("rewrite scan_pushout_dot", 0) == 0;
    CHECK(seen);
    CHECK_NOTHROW(verify_grad(
        [](const std::vector<Variable>& v) {
            return (rnn(v[0], v[1], v[2], v[3], v[4])[0][{-1}] * constant(random_tensor({3, 4}, 56))).sum();
        },
        {xv, hv, Wv, Uv, bv}));
}

TEST_CASE("scan_pushout_seqs: work on the sequences alone runs once over all steps, outside the loop") {
    const int steps = 5;
    Variable x = tensor3("x"), h0 = matrix("h0"), W = matrix("W"), U = matrix("U"), b = vector("b");
    Tensor xv = random_tensor({steps, 3, 2}, 61), hv = random_tensor({3, 4}, 62), Wv = random_tensor({2, 4}, 63),
           Uv = random_tensor({4, 4}, 64, -0.6, 0.6), bv = random_tensor({4}, 65);
    // x_t W and exp(x_t) * 2 read the sequence alone; h U reads the loop's state.
    ScanResult r = scan(
        [](const std::vector<Variable>& a) {
            return ScanStep({tanh(dot(a[0], a[2]) + dot(a[1], a[3]) + a[4]), exp(a[0]) * 2.0});
        },
        {x}, {h0, ScanOutput::none()}, {W, U, b}, std::nullopt, -1, false, "rnn2");
    Variable cost = r[0][{-1}].sum() + r[1].sum();
    auto g = grad(cost, std::vector<Variable>{W, U, b});
    std::vector<Variable> all{r[0], r[1]};
    all.insert(all.end(), g.begin(), g.end());
    CompileOptions plain;
    plain.rewrites.excluding = {"scan_pushout_seqs"};
    Function with = function({x, h0, W, U, b}, all), without = function({x, h0, W, U, b}, all, {}, {}, plain);
    int fired = 0;
    for (const auto& l : with.rewrite_log()) fired += l.rfind("rewrite scan_pushout_seqs", 0) == 0;
    CHECK(fired >= 1);
    for (const auto& l : without.rewrite_log()) CHECK(l.rfind("rewrite scan_pushout_seqs", 0) != 0);
    auto a = with({xv, hv, Wv, Uv, bv}), e = without({xv, hv, Wv, Uv, bv});
    REQUIRE(a.size() == e.size());
    for (std::size_t i = 0; i < a.size(); ++i) {
        CAPTURE(i);
        CHECK(a[i].shape() == e[i].shape());
        CHECK(close(vals(a[i]), vals(e[i]), 1e-13));
    }
    // exp(x_t) * 2 by hand.
    const auto xs = vals(xv), ys = vals(a[1]);
    for (std::size_t i = 0; i < xs.size(); ++i) CHECK(ys[i] == doctest::Approx(2 * std::exp(xs[i])).epsilon(1e-15));
}

TEST_CASE("grad through scan: map over a matrix and reduce; the gradient of a go_backwards loop") {
    auto m = [](const std::vector<Variable>& v) {
        return map([](const std::vector<Variable>& a) { return ScanStep(sigmoid(dot(a[0], a[1]))); }, {v[0]}, {v[1]})[0];
    };
    CHECK_NOTHROW(verify_grad(m, {random_tensor({4, 3}, 41), random_tensor({3, 2}, 42)}));
    auto r = [](const std::vector<Variable>& v) {
        return foldr([](const std::vector<Variable>& a) { return ScanStep(a[1] * a[0] + a[0]); }, {v[0]}, {v[1]})[0];
    };
    CHECK_NOTHROW(verify_grad(r, {random_tensor({5}, 43), random_tensor({}, 44)}));
}

TEST_CASE("grad through scan: truncate_gradient = k backpropagates through the last k steps") {
    const int steps = 6, k = 2;
    Variable x = tensor3("x"), h0 = matrix("h0"), W = matrix("W"), U = matrix("U"), b = vector("b");
    Tensor xv = random_tensor({steps, 2, 3}, 51), hv = random_tensor({2, 3}, 52), Wv = random_tensor({3, 3}, 53),
           Uv = random_tensor({3, 3}, 54), bv = random_tensor({3}, 55);
    Variable full = rnn(x, h0, W, U, b)[0][{-1}].sum();
    Variable trunc = rnn(x, h0, W, U, b, k)[0][{-1}].sum();
    auto gf = grad(full, {x, h0});
    auto gt = grad(trunc, {x, h0});
    auto got = eval({x, h0, W, U, b}, {gf[0], gt[0], gt[1]}, {xv, hv, Wv, Uv, bv});
    // The last k rows of the sequence get their full gradient, earlier rows none.
    for (int t = 0; t < steps; ++t) {
        CAPTURE(t);
        if (t >= steps - k) {
            CHECK(close(vals(got[1].index(0, t)), vals(got[0].index(0, t)), 1e-14));
        } else {
            CHECK(vals(got[1].index(0, t)) == std::vector<double>(6, 0.0));
        }
    }
    // The initial state gets the gradient gathered at the truncation point (Theano's rule):
    // d cost / d h[steps - k - 1] through the last k steps.
    Variable hmid = matrix("hmid");
    Variable tail = rnn(x[{slice(steps - k, std::nullopt)}], hmid, W, U, b)[0][{-1}].sum();
    Tensor hs = eval1({x, h0, W, U, b}, rnn(x, h0, W, U, b)[0], {xv, hv, Wv, Uv, bv});
    Tensor want = eval1({x, hmid, W, U, b}, grad(tail, hmid), {xv, hs.index(0, steps - k - 1).copy(), Wv, Uv, bv});
    CHECK(close(vals(got[2]), vals(want), 1e-14));
}

TEST_CASE("grad through scan: consider_constant on the loop's output, and a loop-updated shared variable refused") {
    Variable x = vector("x"), s0 = scalar("s0");
    ScanResult r = scan([](const std::vector<Variable>& a) { return ScanStep(a[0] * a[1]); }, {x}, {s0});
    GradOptions opt;
    opt.consider_constant = {r[0]};
    const std::string e0 = error_of([&] { grad(r[0].sum(), x, opt); });
    CHECK(e0.find("does not depend on wrt 0 ('x'") != std::string::npos);

    // A shared variable the loop updates: the gradient with respect to it is refused with
    // Theano's reason; other gradients see its value at each step (w_t = 2^(t+1)).
    SharedVariable w = shared(Tensor::scalar<double>(2), "w");
    ScanResult r2 = scan(
        [&](const std::vector<Variable>& a) { return ScanStep({a[0] * w}, {{w, w * 2.0}}); }, {x});
    const std::string e = error_of([&] { grad(r2[0].sum(), w); });
    CHECK(e.find("Scan{scan_fn} has no gradient with respect to its input") != std::string::npos);
    CHECK(e.find("shared variable 'w' is updated inside the loop (Shared Variable with update)") != std::string::npos);
    Tensor gx = eval1({x}, grad(r2[0].sum(), x), {T64({4}, {5, 6, 7, 8})});
    CHECK(vals(gx) == std::vector<double>{2, 4, 8, 16});
    CHECK(w.get_value().item() == 2);
}

TEST_CASE("grad through a loop that draws random numbers: the reversed loop sees the same draws") {
    // A dropout RNN: h_t = tanh(x_t W + h_{t-1} U) * mask_t, mask_t ~ binomial(0.7), with both
    // stream classes. Without the loop's updates every call draws the same masks, so finite
    // differences apply.
    for (bool mrg : {true, false}) {
        CAPTURE(mrg);
        std::shared_ptr<RandomStreamsBase> srng;
        if (mrg) {
            srng = std::make_shared<MRG_RandomStreams>(99);
        } else {
            srng = std::make_shared<RandomStreams>(99);
        }
        auto f = [&](const std::vector<Variable>& v) {
            return scan(
                [&](const std::vector<Variable>& a) {
                    Variable h = tanh(dot(a[0], a[2]) + dot(a[1], a[3]));
                    return ScanStep(h * srng->binomial(h.shape(), 1, 0.7, DType::float64));
                },
                {v[0]}, {v[1]}, {v[2], v[3]})[0];
        };
        VerifyGradReport rep;
        CHECK_NOTHROW(rep = verify_grad(f, {random_tensor({6, 2, 3}, 91), random_tensor({2, 4}, 92),
                                            random_tensor({3, 4}, 93), random_tensor({4, 4}, 94, -0.5, 0.5)}));
        CHECK(rep.n_checked == 36 + 8 + 12 + 16);
    }
}

// ------------------------------------------------------------------ outer rewrites, printing

namespace {
bool has_op(const Function& f, const std::string& prefix) {
    for (const auto& n : f.op_names()) {
        if (n.rfind(prefix, 0) == 0) return true;
    }
    return false;
}
bool logged(const Function& f, const std::string& rewrite) {
    for (const auto& l : f.rewrite_log()) {
        if (l.find("rewrite " + rewrite + " ") == 0) return true;
    }
    return false;
}
}  // namespace

TEST_CASE("scan_single_step: a constant n_steps of 1 becomes the step's graph, with the same values") {
    Variable x = matrix("x"), h0 = vector("h0"), W = matrix("W");
    ScanResult r = scan([](const std::vector<Variable>& a) { return ScanStep(tanh(a[0] + dot(a[1], a[2]))); }, {x},
                        {h0}, {W}, 1);
    Tensor xv = random_tensor({3, 2}, 61), hv = random_tensor({2}, 62), Wv = random_tensor({2, 2}, 63);
    Function f = function({x, h0, W}, {r[0]});
    CHECK_FALSE(has_op(f, "Scan"));
    CHECK(logged(f, "scan_single_step"));
    CompileOptions keep;
    keep.rewrites.excluding = {"scan_single_step"};
    Function g = function({x, h0, W}, {r[0]}, {}, {}, keep);
    CHECK(has_op(g, "Scan"));
    Tensor a = f({xv, hv, Wv})[0], b = g({xv, hv, Wv})[0];
    CHECK(a.shape() == Shape{1, 2});
    CHECK(vals(a) == vals(b));
}

TEST_CASE("scan_hoist: work that does not depend on the loop runs once outside it") {
    Variable x = matrix("x"), h0 = vector("h0"), W = matrix("W");
    // W.T * 2 and exp(W) do not change between steps.
    auto step = [](const std::vector<Variable>& a) {
        return ScanStep(tanh(dot(a[0], a[2].T() * 2.0) + dot(a[1], exp(a[2]))));
    };
    ScanResult r = scan(step, {x}, {h0}, {W});
    Tensor xv = random_tensor({5, 3}, 71), hv = random_tensor({3}, 72), Wv = random_tensor({3, 3}, 73);
    Function f = function({x, h0, W}, {r[0]});
    CHECK(logged(f, "scan_hoist"));
    // The hoisted values are computed in the outer function: exp runs there.
    const std::string dp = f.debugprint(false);
    CHECK(dp.find("Inner graph of Scan") != std::string::npos);
    const std::string outer_part = dp.substr(0, dp.find("Inner graph"));
    CHECK(outer_part.find("exp") != std::string::npos);
    const std::string inner_part = dp.substr(dp.find("Inner graph"));
    CHECK(inner_part.find("|Elemwise{exp}") == std::string::npos);
    CHECK(inner_part.find("hoisted:Elemwise{exp}") != std::string::npos);
    CompileOptions keep;
    keep.rewrites.excluding = {"scan_hoist"};
    Function g = function({x, h0, W}, {r[0]}, {}, {}, keep);
    CHECK_FALSE(logged(g, "scan_hoist"));
    CHECK(close(vals(f({xv, hv, Wv})[0]), vals(g({xv, hv, Wv})[0]), 1e-15));
}

TEST_CASE("scan_hoist keeps random draws inside the loop") {
    MRG_RandomStreams srng(7);
    ScanResult r = scan([&](const std::vector<Variable>&) { return ScanStep(srng.uniform(std::vector<std::int64_t>{2})); },
                        {}, {}, {}, 3);
    Function f = function({}, {r[0]}, r.updates);
    Tensor got = f()[0];
    CHECK(vals(got.index(0, 0)) != vals(got.index(0, 1)));
}

TEST_CASE("scan_save_mem: y[-1] keeps the last step only, with the values of the full loop") {
    Variable x = matrix("x"), h0 = vector("h0"), f0 = vector("f0");
    ScanResult r = scan([](const std::vector<Variable>& a) { return ScanStep(tanh(a[0] + a[1])); }, {x}, {h0});
    ScanResult fib = scan([](const std::vector<Variable>& a) { return ScanStep(a[0] + a[1]); }, {},
                          {ScanOutput(f0, {-2, -1})}, {}, 7);
    Tensor xv = random_tensor({9, 4}, 81), hv = random_tensor({4}, 82);
    Function f = function({x, h0, f0}, {r[0][{-1}], fib[0][{-1}]});
    CHECK(logged(f, "scan_save_mem"));
    bool ring = false;
    for (const auto& n : f.op_names()) ring = ring || n.find("out0: last 1") != std::string::npos;
    CHECK(ring);
    CompileOptions keep;
    keep.rewrites.excluding = {"scan_save_mem"};
    Function g = function({x, h0, f0}, {r[0][{-1}], fib[0][{-1}]}, {}, {}, keep);
    auto a = f({xv, hv, T64({2}, {0, 1})}), b = g({xv, hv, T64({2}, {0, 1})});
    CHECK(vals(a[0]) == vals(b[0]));
    CHECK(vals(a[1]) == std::vector<double>{21});
    CHECK(vals(b[1]) == std::vector<double>{21});
    // A returned whole output keeps every step.
    Function h = function({x, h0}, {r[0], r[0][{-1}]});
    CHECK_FALSE(logged(h, "scan_save_mem"));
}

TEST_CASE("debugprint shows the loop's inner graph with its placeholders") {
    Variable x = vector("x"), s0 = scalar("s0");
    ScanResult r = scan([](const std::vector<Variable>& a) { return ScanStep(a[0] * a[1]); }, {x}, {s0}, {}, std::nullopt,
                        -1, false, "prod");
    const std::string s = debugprint(r[0]);
    CHECK(s.find("Scan{prod} [id A] <float64 vector>") != std::string::npos);
    CHECK(s.find("Inner graph of Scan{prod} [id A]:") != std::string::npos);
    CHECK(s.find(" >Elemwise{mul}") != std::string::npos);
    CHECK(s.find("x[t]") != std::string::npos);
    CHECK(s.find("s0[t-1]") != std::string::npos);
}

TEST_CASE("the profile shows the time per inner node of a loop") {
    const bool was = config().profile;
    config().profile = true;
    Variable x = vector("x"), s0 = scalar("s0");
    ScanResult r = scan([](const std::vector<Variable>& a) { return ScanStep(exp(a[0]) * a[1]); }, {x}, {s0}, {},
                        std::nullopt, -1, false, "profiled");
    Function f = function({x, s0}, {r[0]});
    f({T64({5}, {1, 2, 3, 4, 5}), 1.0});
    config().profile = was;
    const std::string p = f.profile_summary();
    CHECK(p.find("inner steps of step") != std::string::npos);
    CHECK(p.find("Scan{profiled}") != std::string::npos);
    CHECK(p.find("profile: 5 calls") != std::string::npos);  // the step ran 5 times
}

TEST_CASE("scan with designated arguments, as the README writes it") {
    Variable x = tensor3("x"), h0 = matrix("h0"), W = matrix("W"), U = matrix("U"), b = vector("b");
    ScanResult r = scan([](const std::vector<Variable>& a) { return ScanStep(tanh(dot(a[0], a[2]) + dot(a[1], a[3]) + a[4])); },
                        {.sequences = {x}, .outputs_info = {h0}, .non_sequences = {W, U, b}, .name = "rnn"});
    Function f = function({x, h0, W, U, b}, {r[0], r[0][{-1}]}, r.updates);
    Tensor xv = random_tensor({3, 2, 2}, 1), hv = random_tensor({2, 3}, 2), Wv = random_tensor({2, 3}, 3),
           Uv = random_tensor({3, 3}, 4), bv = random_tensor({3}, 5);
    auto got = f({xv, hv, Wv, Uv, bv});
    CHECK(close(vals(got[0]), rnn_by_hand(xv, hv, Wv, Uv, bv), 1e-14));
    CHECK(vals(got[1]) == vals(got[0].index(0, 2)));
    auto g = grad(r[0][{-1}].sum(), {W, U, b});
    CHECK(g.size() == 3);
}

TEST_CASE("a loop's step runs with the calling function's profile and NaN-guard options") {
    Variable x = vector("x"), s0 = scalar("s0");
    // The log reads the loop's state, so it stays in the step (scan_pushout_seqs would move a
    // log of the sequence alone out of the loop).
    ScanResult r = scan([](const std::vector<Variable>& a) { return ScanStep(log(a[0] + a[1]) - a[1]); }, {x}, {s0}, {},
                        std::nullopt, -1, false, "logsum");
    CompileOptions guarded;
    guarded.nan_guard = true;
    guarded.profile = true;
    Function f = function({x, s0}, {r[0]}, {}, {}, guarded);
    CHECK(vals(f({T64({2}, {1, 1}), 0.0})[0]) == std::vector<double>{0, 0});
    CHECK(f.profile_summary().find("inner steps of step") != std::string::npos);
    const std::string e = error_of([&] { f({T64({3}, {1, -1, 1}), 0.0}); });
    CHECK(e.find("scan 'logsum' step 1: NaN guard:") != std::string::npos);
    CHECK(e.find("log") != std::string::npos);
    // The same loop in a function without the guard returns the NaN.
    Function g = function({x, s0}, {r[0]});
    CHECK(std::isnan(g({T64({3}, {1, -1, 1}), 0.0})[0].at({1})));
    CHECK(g.profile_summary().find("inner steps") == std::string::npos);
}

TEST_CASE("a call whose loop fails at a later step changes no shared variable and no generator state") {
    SharedVariable count = shared(Tensor::scalar<double>(0), "count");
    MRG_RandomStreams srng(3);
    Variable x = vector("x");
    ScanResult r = scan(
        [&](const std::vector<Variable>& a) {
            return ScanStep({log(a[0] * (1.0 + srng.uniform(std::vector<std::int64_t>{})))}, {{count, count + 1.0}});
        },
        {x});
    CompileOptions guarded;
    guarded.nan_guard = true;
    Function f = function({x}, {r[0]}, r.updates, {}, guarded);
    f({T64({2}, {1, 2})});
    CHECK(count.get_value().item() == 2);
    std::vector<Tensor> states;
    for (const auto& s : srng.state_variables()) states.push_back(s.get_value());
    CHECK_THROWS_WITH_AS(f({T64({3}, {1, 2, -1})}), doctest::Contains("step 2: NaN guard"), UsageError);
    CHECK(count.get_value().item() == 2);
    for (std::size_t i = 0; i < states.size(); ++i) {
        CHECK(srng.state_variables()[i].get_value().to_doubles() == states[i].to_doubles());
    }
}
