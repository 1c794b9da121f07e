#include "examples/io/flags.hpp"

#include <cstdlib>
#include <iostream>

#include <fmt/format.h>

#include "examples/io/files.hpp"
#include "graph/config.hpp"
#include "graph/error.hpp"
#include "ops/blas.hpp"

namespace theanine::io {

namespace {
bool to_long(const std::string& s, long long* out) {
    try {
        std::size_t pos = 0;
        *out = std::stoll(s, &pos);
        return pos == s.size();
    } catch (const std::exception&) {
        return false;
    }
}
}  // namespace

void FlagParser::add(const std::string& name, int* v, int min, const std::string& help) {
    flags_.push_back({name, help, std::to_string(*v), false, [=](const std::string& s) -> std::string {
                          long long x;
                          if (!to_long(s, &x) || x < min || x > 2147483647) {
                              return fmt::format("--{} needs an integer in [{}, 2147483647], got '{}'", name, min, s);
                          }
                          *v = static_cast<int>(x);
                          return "";
                      }});
}

void FlagParser::add(const std::string& name, std::int64_t* v, std::int64_t min, const std::string& help) {
    flags_.push_back({name, help, std::to_string(*v), false, [=](const std::string& s) -> std::string {
                          long long x;
                          if (!to_long(s, &x) || x < min) return fmt::format("--{} needs an integer >= {}, got '{}'", name, min, s);
                          *v = x;
                          return "";
                      }});
}

void FlagParser::add(const std::string& name, std::uint32_t* v, const std::string& help) {
    flags_.push_back({name, help, std::to_string(*v), false, [=](const std::string& s) -> std::string {
                          long long x;
                          if (!to_long(s, &x) || x < 0 || x > 4294967295LL) {
                              return fmt::format("--{} needs an integer in [0, 4294967295], got '{}'", name, s);
                          }
                          *v = static_cast<std::uint32_t>(x);
                          return "";
                      }});
}

void FlagParser::add(const std::string& name, double* v, double min, double max, const std::string& help) {
    flags_.push_back({name, help, fmt::format("{}", *v), false, [=](const std::string& s) -> std::string {
                          try {
                              std::size_t pos = 0;
                              double x = std::stod(s, &pos);
                              if (pos == s.size() && x >= min && x <= max) {
                                  *v = x;
                                  return "";
                              }
                          } catch (const std::exception&) {
                          }
                          return fmt::format("--{} needs a number in [{}, {}], got '{}'", name, min, max, s);
                      }});
}

void FlagParser::add(const std::string& name, std::string* v, const std::string& help, std::vector<std::string> choices) {
    flags_.push_back({name, help, *v, false, [=](const std::string& s) -> std::string {
                          if (choices.empty()) {
                              *v = s;
                              return "";
                          }
                          for (const auto& c : choices) {
                              if (c == s) {
                                  *v = s;
                                  return "";
                              }
                          }
                          std::string list;
                          for (const auto& c : choices) list += (list.empty() ? "" : ", ") + c;
                          return fmt::format("--{} takes one of {}, got '{}'", name, list, s);
                      }});
}

void FlagParser::add_switch(const std::string& name, bool* v, const std::string& help) {
    flags_.push_back({name, help, "", true, [=](const std::string&) -> std::string {
                          *v = true;
                          return "";
                      }});
}

std::string FlagParser::help() const {
    std::string s = fmt::format("usage: {} [flags]\n\n{}\n\n", program_, summary_);
    for (const auto& f : flags_) {
        std::string left = "--" + f.name + (f.is_switch ? "" : " X");
        s += fmt::format("  {:<24}{}{}\n", left, f.help, f.is_switch || f.default_text.empty() ? "" : " (default " + f.default_text + ")");
    }
    return s + "  --help                  this text\n";
}

void FlagParser::parse(int argc, char** argv) const {
    auto fail = [&](const std::string& msg) {
        std::cerr << program_ << ": " << msg << "\n(run " << program_ << " --help for the flags)\n";
        std::exit(2);
    };
    for (int i = 1; i < argc; ++i) {
        std::string a = argv[i];
        if (a == "--help" || a == "-h") {
            std::cout << help();
            std::exit(0);
        }
        if (a.rfind("--", 0) != 0) fail(fmt::format("unexpected argument '{}'", a));
        std::string name = a.substr(2), value;
        bool has_value = false;
        if (auto eq = name.find('='); eq != std::string::npos) {
            value = name.substr(eq + 1);
            name = name.substr(0, eq);
            has_value = true;
        }
        const Flag* f = nullptr;
        for (const auto& x : flags_) {
            if (x.name == name) f = &x;
        }
        if (!f) fail(fmt::format("unknown flag '--{}'", name));
        if (!f->is_switch && !has_value) {
            if (i + 1 >= argc) fail(fmt::format("--{} needs a value", name));
            value = argv[++i];
        }
        std::string err = f->set(value);
        if (!err.empty()) fail(err);
    }
}

void CommonFlags::add_to(FlagParser& parser, const std::string& save_help, const std::string& output_help) {
    parser.add("data", &data, "folder with the MNIST IDX files");
    parser.add("output", &output, "folder for metrics.csv, curves.png and curves.svg" +
                                      (output_help.empty() ? std::string() : ", " + output_help));
    parser.add("graph-html", &graph_html, "write an HTML view of the compiled training function to FILE");
    parser.add("floatX", &floatX, "float32 or float64", {"float32", "float64"});
    parser.add("threads", &threads, 0, "threads for products, 0 for all cores");
    parser.add("save-params", &save, save_help);
    parser.add("train-size", &train_size, 1, "training images used, from the start (at most 50000)");
    parser.add("pixel-scale", &pixel_scale, "pixels as byte/255 (as the tutorials' data loader) or byte/256 (as the "
                                            "original mnist.pkl.gz, which the documented figures used)", {"255", "256"});
    parser.add("checkpoint", &checkpoint, "write DIR/checkpoint.bin every --checkpoint-every minibatches, at each "
                                          "epoch's end and on SIGINT/SIGTERM (then exit)");
    parser.add("checkpoint-every", &checkpoint_every, 1, "minibatches between checkpoints");
    parser.add("resume", &resume, "continue the run checkpointed in DIR (same flags), printing its lines again");
    parser.add_switch("nan-guard", &nan_guard, "check every step for NaN/inf and name the op that made one");
}

void CommonFlags::apply() const {
    config().floatX = dtype_from_name(floatX);
    if (threads > 0) set_num_threads(threads);
    if (!save.empty()) check_writable_dir(save, "--save-params");
    check_writable_dir(output, "--output");
    if (!graph_html.empty()) check_writable_file_dir(graph_html, "--graph-html");
}

std::vector<int> parse_int_list(const std::string& flag, const std::string& text) {
    std::vector<int> out;
    std::size_t s = 0;
    while (s <= text.size()) {
        std::size_t e = text.find(',', s);
        if (e == std::string::npos) e = text.size();
        long long x;
        if (!to_long(text.substr(s, e - s), &x) || x < 1) {
            throw UsageError(fmt::format("--{}: '{}' is not a list of positive integers", flag, text));
        }
        out.push_back(static_cast<int>(x));
        s = e + 1;
    }
    return out;
}

}  // namespace theanine::io
