// A small command-line parser for the example programs: --name value or --name=value,
// boolean switches, --help; a bad value exits with status 2 and a message naming the flag.
#pragma once

#include <cstdint>
#include <functional>
#include <string>
#include <vector>

namespace theanine::io {

class FlagParser {
public:
    FlagParser(std::string program, std::string summary) : program_(std::move(program)), summary_(std::move(summary)) {}
    void add(const std::string& name, int* v, int min, const std::string& help);
    void add(const std::string& name, std::int64_t* v, std::int64_t min, const std::string& help);
    void add(const std::string& name, std::uint32_t* v, const std::string& help);  // [0, 2^32 - 1]
    void add(const std::string& name, double* v, double min, double max, const std::string& help);
    void add(const std::string& name, std::string* v, const std::string& help, std::vector<std::string> choices = {});
    void add_switch(const std::string& name, bool* v, const std::string& help);
    // Parses argv; prints help and exits on --help; exits with status 2 on a bad flag.
    void parse(int argc, char** argv) const;
    std::string help() const;

private:
    struct Flag {
        std::string name, help, default_text;
        bool is_switch = false;
        std::function<std::string(const std::string&)> set;  // returns an error or ""
    };
    std::string program_, summary_;
    std::vector<Flag> flags_;
};

// The flags every MNIST program takes: --data, --floatX, --threads, --save-params,
// --train-size, --output, --checkpoint, --checkpoint-every, --resume, --nan-guard,
// --graph-html.
struct CommonFlags {
    std::string data = "data/mnist";
    std::string floatX = "float64";
    std::string save;  // folder for parameter files; empty: do not save
    // Folder for metrics.csv, curves.png and curves.svg (examples/io/metrics.hpp) and the
    // program's images; a program sets its own default before add_to.
    std::string output = ".";
    std::string graph_html;  // write the training function's graph view here (Function::to_html)
    int threads = 0;
    std::int64_t train_size = 50000;  // training images, from the start of the training file
    std::string pixel_scale = "255";  // pixels as byte / 255 (the default) or byte / 256
    std::string checkpoint, resume;
    std::int64_t checkpoint_every = 1000;
    bool nan_guard = false;
    // output_help: what the program writes into --output besides the metrics and curves.
    void add_to(FlagParser& parser, const std::string& save_help, const std::string& output_help = "");
    // Sets config().floatX and the thread count; checks that --save-params and --output can
    // be written.
    void apply() const;
    int scale() const { return pixel_scale == "256" ? 256 : 255; }
};

// "1000,1000,1000" -> {1000, 1000, 1000}; throws UsageError naming the flag on a bad item.
std::vector<int> parse_int_list(const std::string& flag, const std::string& text);

}  // namespace theanine::io
