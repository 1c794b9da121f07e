// What the model benchmarks share: their common flags and the row line bench/run_all reads.
#pragma once

#include <cstdio>
#include <cstdlib>
#include <functional>
#include <string>
#include <vector>

#include "theanine.hpp"

namespace theanine::bench {

struct ModelFlags {
    double fraction = 1;  ///< of an epoch, measured and scaled up to a whole one
    int epochs = 3;       ///< measured epochs; the median is reported
    std::string data = "data/mnist";
    std::vector<DType> dtypes{DType::float32, DType::float64};
    std::vector<int> threads{1, 2};
};

/// A program's own flag: given the flag and a reader of its value, returns false when it does
/// not know the flag.
using ExtraFlag = std::function<bool(const std::string& flag, const std::function<std::string()>& value)>;

/// Parses --fraction F, --epochs N, --data DIR, --dtype float32|float64, --threads N and the
/// program's own flags (extra). Prints `usage: <program> <usage>` and exits on --help (0), an
/// unknown flag, a missing value or a fraction outside (0, 1] or epochs below 1 (2).
inline ModelFlags parse_model_flags(int argc, char** argv, const char* program, const char* usage,
                                    double default_fraction, const ExtraFlag& extra = {}) {
    ModelFlags f;
    f.fraction = default_fraction;
    auto fail = [&](const std::string& why, int code) {
        if (!why.empty()) std::fprintf(stderr, "%s: %s\n", program, why.c_str());
        std::fprintf(code ? stderr : stdout, "usage: %s %s\n", program, usage);
        std::exit(code);
    };
    for (int i = 1; i < argc; ++i) {
        const std::string a = argv[i];
        auto value = [&]() -> std::string {
            if (i + 1 >= argc) fail(a + " needs a value", 2);
            return argv[++i];
        };
        try {
            if (a == "--help") fail("", 0);
            else if (a == "--fraction") f.fraction = std::stod(value());
            else if (a == "--epochs") f.epochs = std::stoi(value());
            else if (a == "--data") f.data = value();
            else if (a == "--dtype") f.dtypes = {dtype_from_name(value())};
            else if (a == "--threads") f.threads = {std::stoi(value())};
            else if (!extra || !extra(a, value)) fail("unknown flag " + a, 2);
        } catch (const std::exception& e) {
            fail("bad value for " + a + ": " + e.what(), 2);
        }
    }
    if (!(f.fraction > 0 && f.fraction <= 1)) fail("--fraction must be in (0, 1]", 2);
    if (f.epochs < 1) fail("--epochs must be at least 1", 2);
    return f;
}

/// The line bench/run_all reads: model, dtype, threads, seconds per epoch (theanine, hand),
/// GFLOP/s (theanine, hand) for an epoch of gflop GFLOP.
inline void print_row(const char* model, DType dt, int threads, double theanine_s, double hand_s, double gflop) {
    std::printf("row %s %s %d %.4f %.4f %.2f %.2f\n", model, std::string(dtype_name(dt)).c_str(), threads, theanine_s,
                hand_s, gflop / theanine_s, gflop / hand_s);
    std::fflush(stdout);
}

}  // namespace theanine::bench
