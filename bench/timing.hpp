// Timing helpers shared by the benchmarks.
#pragma once

#include <algorithm>
#include <chrono>
#include <functional>
#include <utility>
#include <vector>

namespace theanine::bench {

using Clock = std::chrono::steady_clock;

// Wall-clock seconds since t.
inline double seconds_since(Clock::time_point t) { return std::chrono::duration<double>(Clock::now() - t).count(); }

// The median of v (the upper one of the middle two for an even count).
inline double median(std::vector<double> v) {
    std::sort(v.begin(), v.end());
    return v[v.size() / 2];
}

// The median over reps runs of f's wall-clock seconds.
inline double median_seconds(int reps, const std::function<void()>& f) {
    std::vector<double> t;
    for (int r = 0; r < reps; ++r) {
        const auto t0 = std::chrono::steady_clock::now();
        f();
        t.push_back(std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count());
    }
    std::sort(t.begin(), t.end());
    return t[t.size() / 2];
}

// The medians over reps rounds of a's and of b's wall-clock seconds, the two run in turn
// (a, b, a, b, ...) so that a drift of the machine's speed touches both alike.
inline std::pair<double, double> interleaved_median_seconds(int reps, const std::function<void()>& a,
                                                           const std::function<void()>& b) {
    std::vector<double> ta, tb;
    for (int r = 0; r < reps; ++r) {
        ta.push_back(median_seconds(1, a));
        tb.push_back(median_seconds(1, b));
    }
    return {median(ta), median(tb)};
}

}  // namespace theanine::bench
