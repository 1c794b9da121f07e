#include "graph/config.hpp"

#include <cstdlib>

#include <fmt/format.h>

namespace theanine {

namespace {
std::vector<std::string> split(std::string_view s, char sep) {
    std::vector<std::string> out;
    std::size_t start = 0;
    while (start <= s.size()) {
        std::size_t end = s.find(sep, start);
        if (end == std::string_view::npos) end = s.size();
        if (end > start) out.emplace_back(s.substr(start, end - start));
        start = end + 1;
    }
    return out;
}

bool parse_bool(const std::string& key, const std::string& v) {
    if (v == "True" || v == "true" || v == "1") return true;
    if (v == "False" || v == "false" || v == "0") return false;
    throw UsageError(fmt::format("THEANINE_FLAGS: {} takes True or False, got '{}'", key, v));
}
}  // namespace

void apply_flags(std::string_view flags, Config& cfg) {
    for (const std::string& item : split(flags, ',')) {
        auto eq = item.find('=');
        if (eq == std::string::npos) {
            throw UsageError(fmt::format("THEANINE_FLAGS: '{}' is not key=value", item));
        }
        std::string key = item.substr(0, eq);
        std::string value = item.substr(eq + 1);
        if (key == "floatX") {
            if (value != "float32" && value != "float64") {
                throw UsageError(fmt::format("THEANINE_FLAGS: floatX must be float32 or float64, got '{}'", value));
            }
            cfg.floatX = dtype_from_name(value);
        } else if (key == "optimizer") {
            if (value == "None" || value == "none") {
                cfg.optimizer_none = true;
            } else if (value == "fast_run") {
                cfg.optimizer_none = false;
            } else {
                throw UsageError(fmt::format("THEANINE_FLAGS: optimizer must be fast_run or None, got '{}'", value));
            }
        } else if (key == "optimizer_excluding") {
            for (auto& n : split(value, ':')) cfg.optimizer_excluding.push_back(n);
        } else if (key == "optimizer_including") {
            for (auto& n : split(value, ':')) cfg.optimizer_including.push_back(n);
        } else if (key == "optimizer_verbose") {
            cfg.optimizer_verbose = parse_bool(key, value);
        } else if (key == "profile") {
            cfg.profile = parse_bool(key, value);
        } else if (key == "nan_guard") {
            cfg.nan_guard = parse_bool(key, value);
        } else if (key == "blas_kernel") {
            if (value != "measure" && value != "eigen" && value != "openblas" && value != "blocked") {
                throw UsageError(fmt::format(
                    "THEANINE_FLAGS: blas_kernel must be measure, eigen, openblas or blocked, got '{}'", value));
            }
            cfg.blas_kernel = value;
        } else if (key == "kernel_cache") {
            if (value.empty()) throw UsageError("THEANINE_FLAGS: kernel_cache takes a file path or off");
            cfg.kernel_cache = value == "off" ? "" : value;
        } else {
            throw UsageError(fmt::format(
                "THEANINE_FLAGS: unknown key '{}' (known: floatX, optimizer, optimizer_excluding, "
                "optimizer_including, optimizer_verbose, profile, nan_guard, blas_kernel, kernel_cache)", key));
        }
    }
}

Config& config() {
    static Config cfg = [] {
        Config c;
        if (const char* xdg = std::getenv("XDG_CACHE_HOME"); xdg && *xdg == '/') {
            c.kernel_cache = std::string(xdg) + "/theanine/products.txt";
        } else if (const char* home = std::getenv("HOME"); home && *home) {
            c.kernel_cache = std::string(home) + "/.cache/theanine/products.txt";
        }
        if (const char* env = std::getenv("THEANINE_FLAGS")) apply_flags(env, c);
        return c;
    }();
    return cfg;
}

}  // namespace theanine
