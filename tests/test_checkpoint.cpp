// Checkpoints and resume of the training programs: runs the built dA and mlp programs on a
// small MNIST-shaped data set the test writes, kills them with SIGKILL at several moments,
// resumes each time, and compares every printed line of the finished run with an
// uninterrupted run's; SIGTERM writes a checkpoint and exits cleanly; a NaN cost stops a
// run with a message. Also the checkpoint file's own reader.
#include <doctest/doctest.h>

#include <fcntl.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <cstdlib>
#include <csignal>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <thread>

#include <regex>
#include <set>

#include <fmt/printf.h>

#include "examples/io/checkpoint.hpp"
#include "examples/io/metrics.hpp"
#include "examples/io/png.hpp"
#include "support/helpers.hpp"

using namespace theanine;
using namespace theanine::testing;
namespace fs = std::filesystem;

namespace {

fs::path temp_root() { return fs::temp_directory_path() / ("theanine_ckpt_" + std::to_string(::getpid())); }

// This process's temporary files (the data sets, the runs' outputs and checkpoints, the
// captured output streams) are removed when it exits.
struct RemoveTempFiles {
    ~RemoveTempFiles() {
        std::error_code ec;
        fs::remove_all(temp_root(), ec);
        const fs::path out = fs::temp_directory_path() / ("theanine_ckpt_out_" + std::to_string(::getpid()));
        fs::remove(out, ec);
        fs::remove(out.string() + ".err", ec);
    }
} remove_temp_files;

fs::path temp_dir(const std::string& name) {
    fs::path p = temp_root() / name;
    fs::remove_all(p);
    fs::create_directories(p);
    return p;
}

void write_idx(const fs::path& p, const std::vector<std::uint32_t>& dims, const std::vector<unsigned char>& data) {
    std::ofstream f(p, std::ios::binary);
    const unsigned char head[4] = {0, 0, 8, static_cast<unsigned char>(dims.size())};
    f.write(reinterpret_cast<const char*>(head), 4);
    for (auto d : dims) {
        const unsigned char b[4] = {static_cast<unsigned char>(d >> 24), static_cast<unsigned char>(d >> 16),
                                    static_cast<unsigned char>(d >> 8), static_cast<unsigned char>(d)};
        f.write(reinterpret_cast<const char*>(b), 4);
    }
    f.write(reinterpret_cast<const char*>(data.data()), static_cast<std::streamsize>(data.size()));
}

// n training images of noise with a weak mark of their label, and a small t10k set.
fs::path make_mnist(std::uint32_t n, std::uint32_t n_test) {
    fs::path dir = temp_dir("mnist_" + std::to_string(n));
    RandomState rng(7);
    auto images = [&](std::uint32_t count, std::vector<unsigned char>& labels) {
        std::vector<unsigned char> img(static_cast<std::size_t>(count) * 784, 0);
        labels.resize(count);
        for (std::uint32_t i = 0; i < count; ++i) {
            labels[i] = static_cast<unsigned char>(rng.randint(10));
            for (int j = 0; j < 784; ++j) {
                if (rng.next_double() < 0.3) img[i * 784 + j] = static_cast<unsigned char>(rng.randint(256));
            }
            for (int j = 0; j < 8; ++j) img[i * 784 + labels[i] * 70 + rng.randint(70)] = 255;
        }
        return img;
    };
    std::vector<unsigned char> train_labels, test_labels;
    write_idx(dir / "train-images-idx3-ubyte", {n, 28, 28}, images(n, train_labels));
    write_idx(dir / "train-labels-idx1-ubyte", {n}, train_labels);
    write_idx(dir / "t10k-images-idx3-ubyte", {n_test, 28, 28}, images(n_test, test_labels));
    write_idx(dir / "t10k-labels-idx1-ubyte", {n_test}, test_labels);
    return dir;
}

struct Result {
    int status = -1;     // exit status, or 128 + signal
    std::string out;     // stdout, without the lines that carry timings
    std::string err;     // stderr
    double seconds = 0;
    bool killed = false;
};

// Runs argv; with kill_after >= 0, sends sig after that many seconds if still running.
Result run(const std::vector<std::string>& argv, double kill_after = -1, int sig = SIGKILL) {
    const fs::path out_file = fs::temp_directory_path() / ("theanine_ckpt_out_" + std::to_string(::getpid()));
    auto t0 = std::chrono::steady_clock::now();
    pid_t pid = fork();
    if (pid == 0) {
        int fd = ::open(out_file.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
        int err = ::open((out_file.string() + ".err").c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
        ::dup2(fd, 1);
        ::dup2(err, 2);
        std::vector<char*> args;
        for (const auto& a : argv) args.push_back(const_cast<char*>(a.c_str()));
        args.push_back(nullptr);
        ::execv(args[0], args.data());
        ::_exit(127);
    }
    Result r;
    int status = 0;
    while (true) {
        pid_t done = ::waitpid(pid, &status, WNOHANG);
        if (done == pid) break;
        const double t = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
        if (kill_after >= 0 && t >= kill_after && !r.killed) {
            ::kill(pid, sig);
            r.killed = true;
        }
        std::this_thread::sleep_for(std::chrono::milliseconds(2));
    }
    r.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    r.status = WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
    std::ifstream f(out_file);
    std::string line;
    std::ostringstream kept;
    while (std::getline(f, line)) {
        if (line.find(" ran for ") == std::string::npos) kept << line << "\n";
    }
    r.out = kept.str();
    std::ifstream e(out_file.string() + ".err");
    r.err.assign(std::istreambuf_iterator<char>(e), std::istreambuf_iterator<char>());
    return r;
}

// Kills runs of args at several moments (fractions of an uninterrupted run's time),
// resuming each from the last checkpoint, then finishes; the finished run must print
// exactly what the uninterrupted run printed.
// Lines that start with timing_prefix (a program's own timing, on stdout as in the tutorial)
// are left out of the comparison.
std::string without_timing(const std::string& out, const std::string& timing_prefix) {
    if (timing_prefix.empty()) return out;
    std::string kept;
    std::size_t at = 0;
    while (at < out.size()) {
        std::size_t eol = out.find('\n', at);
        if (eol == std::string::npos) eol = out.size() - 1;
        const std::string line = out.substr(at, eol - at + 1);
        if (line.rfind(timing_prefix, 0) != 0) kept += line;
        at = eol + 1;
    }
    return kept;
}

std::string read_text(const fs::path& p) {
    std::ifstream f(p);
    return std::string(std::istreambuf_iterator<char>(f), std::istreambuf_iterator<char>());
}

// The rows metrics.csv must hold, read off the printed lines in order: each program's
// per-epoch line, the validation and test errors of early stopping, pre-training costs.
// A row's series is left empty where the line does not name it (the dA's corruption level).
std::vector<io::MetricRow> rows_from_lines(const std::string& out, std::vector<std::string>* texts) {
    static const std::regex da(R"(^Training epoch (\d+), cost  (\S+)$)");
    static const std::regex rbm(R"(^Training epoch (\d+), cost is  (\S+)$)");
    static const std::regex ca(R"(^Training epoch (\d+), reconstruction cost  (\S+)  jacobian norm  (\S+)$)");
    static const std::regex pre(R"(^Pre-training layer (\d+), epoch (\d+), cost +(\S+)$)");
    static const std::regex valid(R"(^epoch (\d+), minibatch (\d+)/(\d+), validation error (\S+) %$)");
    static const std::regex test(R"(^     epoch (\d+), minibatch (\d+)/(\d+), test error of best model (\S+) %$)");
    std::vector<io::MetricRow> rows;
    std::istringstream lines(out);
    std::string line;
    std::smatch m;
    auto add = [&](std::string panel, std::string series, double epoch, const std::string& text) {
        rows.push_back({std::move(panel), std::move(series), epoch, 0});
        texts->push_back(text);
    };
    auto position = [](const std::smatch& m) {  // the epoch's fraction done, as the loop counts it
        const double e = std::stod(m[1]), b = std::stod(m[2]), n = std::stod(m[3]);
        return ((e - 1) * n + b) / n;
    };
    while (std::getline(lines, line)) {
        if (std::regex_match(line, m, da)) {
            add("cost", "", std::stod(m[1]), m[2]);
        } else if (std::regex_match(line, m, rbm)) {
            add("cost", "training cost", std::stod(m[1]), m[2]);
        } else if (std::regex_match(line, m, ca)) {
            add("reconstruction cost", "reconstruction cost", std::stod(m[1]), m[2]);
            add("jacobian norm", "jacobian norm", std::stod(m[1]), m[3]);
        } else if (std::regex_match(line, m, pre)) {
            add("pre-training cost", "layer " + std::string(m[1]), std::stod(m[2]), m[3]);
        } else if (std::regex_match(line, m, valid)) {
            add("error (%)", "validation error", position(m), m[4]);
        } else if (std::regex_match(line, m, test)) {
            add("error (%)", "test error of best model", position(m), m[4]);
        }
    }
    return rows;
}

// metrics.csv in dir holds exactly the numbers the run printed: each value as printed with
// %f, or (printed in the shortest form) the same double.
void check_metrics(const std::string& printed, const fs::path& dir) {
    REQUIRE(fs::exists(dir / "metrics.csv"));
    const auto rows = io::Metrics::parse_csv(read_text(dir / "metrics.csv"), "metrics.csv");
    std::vector<std::string> texts;
    const auto want = rows_from_lines(printed, &texts);
    REQUIRE(!want.empty());
    REQUIRE(rows.size() == want.size());
    for (std::size_t i = 0; i < rows.size(); ++i) {
        INFO("row " << i << ": " << rows[i].panel << ", " << rows[i].series << ", " << rows[i].epoch << ", "
                    << rows[i].value << "; printed " << texts[i]);
        CHECK(rows[i].panel == want[i].panel);
        if (!want[i].series.empty()) CHECK(rows[i].series == want[i].series);
        CHECK(rows[i].epoch == want[i].epoch);
        CHECK((fmt::sprintf("%f", rows[i].value) == texts[i] || std::stod(texts[i]) == rows[i].value));
    }
    // The plot of them decodes, one 330-pixel panel per panel name.
    std::set<std::string> panels;
    for (const auto& r : rows) panels.insert(r.panel);
    const Tensor png = io::read_png_rgba((dir / "curves.png").string());
    CHECK(png.shape() == Shape{330 * static_cast<std::int64_t>(panels.size()), 900, 4});
    CHECK(read_text(dir / "curves.svg").find("</svg>") != std::string::npos);
}

// The value of a flag in args ("" when absent).
std::string flag_value(const std::vector<std::string>& args, const std::string& flag) {
    for (std::size_t i = 0; i + 1 < args.size(); ++i) {
        if (args[i] == flag) return args[i + 1];
    }
    return "";
}

void kill_and_resume(std::vector<std::string> args, const fs::path& ckpt, const std::string& timing_prefix = "") {
    const fs::path output = flag_value(args, "--output");
    REQUIRE(!output.empty());
    const Result reference = run(args);
    REQUIRE(reference.status == 0);
    REQUIRE(!reference.out.empty());
    check_metrics(reference.out, output);
    const std::string reference_metrics = read_text(output / "metrics.csv");
    args.push_back("--checkpoint");
    args.push_back(ckpt.string());
    const std::string ref = without_timing(reference.out, timing_prefix);
    // Kill moments are fractions of the reference run's time; on a loaded machine a round may
    // finish before any kill lands after a checkpoint (the runs got faster), or every kill may
    // land before the first checkpoint (they got slower), so up to four rounds, with earlier
    // moments and then later ones, start over from no checkpoint.
    int interrupted_mid_run = 0;
    for (double scale : {1.0, 0.5, 0.25, 2.0}) {
        fs::remove(ckpt / "checkpoint.bin");
        for (double fraction : {0.35, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95}) {
            std::vector<std::string> a = args;
            if (fs::exists(ckpt / "checkpoint.bin")) {
                a.push_back("--resume");
                a.push_back(ckpt.string());
            }
            const bool had_checkpoint = fs::exists(ckpt / "checkpoint.bin");
            Result r = run(a, scale * fraction * reference.seconds);
            if (r.status == 0) break;
            CHECK(r.status == 128 + SIGKILL);
            if (had_checkpoint && fs::exists(ckpt / "checkpoint.bin")) ++interrupted_mid_run;
            // Whatever was printed so far is a prefix of the uninterrupted output.
            const std::string got = without_timing(r.out, timing_prefix);
            CHECK(ref.compare(0, got.size(), got) == 0);
        }
        std::vector<std::string> a = args;
        if (fs::exists(ckpt / "checkpoint.bin")) {
            a.push_back("--resume");
            a.push_back(ckpt.string());
        }
        const Result finished = run(a);
        CHECK(finished.status == 0);
        CHECK(without_timing(finished.out, timing_prefix) == ref);
        // The resumed run's metrics are the uninterrupted run's, rows from before each kill included.
        CHECK(read_text(output / "metrics.csv") == reference_metrics);
        if (interrupted_mid_run >= 1) break;
    }
    CHECK(interrupted_mid_run >= 1);
    // The temporary files of interrupted writes never stay behind.
    for (const auto& e : fs::directory_iterator(ckpt)) CHECK(e.path().filename() == "checkpoint.bin");
}

}  // namespace

TEST_CASE("checkpoint files round-trip and bad ones are refused with the byte offset") {
    fs::path dir = temp_dir("file");
    io::Checkpoint c;
    c["w"] = random_tensor({3, 4}, 1);
    c["step"] = io::int_entry(42);
    c["loss"] = io::double_entry(0.1 + 0.2);
    c["mask"] = Tensor::from_vector<std::uint8_t>({2}, {1, 0});
    io::save_checkpoint((dir / "c.bin").string(), c);
    io::Checkpoint back = io::load_checkpoint((dir / "c.bin").string());
    CHECK(back.size() == 4);
    CHECK(back["w"].to_doubles() == c["w"].to_doubles());
    CHECK(io::get_int(back, "step") == 42);
    CHECK(io::get_double(back, "loss") == 0.1 + 0.2);
    CHECK_THROWS_WITH_AS(io::get_int(back, "loss"), "checkpoint: no int64 entry 'loss'", UsageError);
    // Cut short: the reader names the entry and where the file ends.
    const auto size = fs::file_size(dir / "c.bin");
    fs::resize_file(dir / "c.bin", size - 5);
    CHECK_THROWS_WITH_AS(io::load_checkpoint((dir / "c.bin").string()), doctest::Contains("bytes at byte offset"),
                         UsageError);
    std::ofstream(dir / "junk.bin") << "not a checkpoint at all";
    CHECK_THROWS_WITH_AS(io::load_checkpoint((dir / "junk.bin").string()), doctest::Contains("not a theanine checkpoint"),
                         UsageError);
}

TEST_CASE("the dA resumes after kill -9 at any moment and prints what an uninterrupted run prints") {
    const fs::path data = make_mnist(600, 20);
    const fs::path out = temp_dir("da_out");
    kill_and_resume({THEANINE_DA_PROGRAM, "--data", data.string(), "--train-size", "600", "--epochs", "4", "--hidden",
                     "300", "--corruption", "0,0.3", "--checkpoint-every", "5", "--output", out.string(), "--threads", "2"},
                    temp_dir("da_ckpt"));
}

TEST_CASE("the mlp resumes after kill -9 at any moment and prints what an uninterrupted run prints") {
    const fs::path data = make_mnist(10100, 200);
    kill_and_resume({THEANINE_MLP_PROGRAM, "--data", data.string(), "--train-size", "400", "--epochs", "12", "--hidden",
                     "100", "--learning-rate", "0.1", "--checkpoint-every", "7", "--threads", "2", "--output",
                     temp_dir("mlp_out").string()},
                    temp_dir("mlp_ckpt"));
}

TEST_CASE("the SdA resumes after kill -9 in pretraining or fine-tuning and prints what an uninterrupted run prints") {
    const fs::path data = make_mnist(10100, 200);
    kill_and_resume({THEANINE_SDA_PROGRAM, "--data", data.string(), "--train-size", "400", "--hidden", "200,200",
                     "--corruption", "0.1,0.2", "--pretrain-epochs", "3", "--finetune-epochs", "5", "--batch-size", "10",
                     "--checkpoint-every", "9", "--threads", "2", "--output", temp_dir("sda_out").string()},
                    temp_dir("sda_ckpt"));
}

TEST_CASE("the DBN resumes after kill -9 in pretraining or fine-tuning and prints what an uninterrupted run prints") {
    const fs::path data = make_mnist(10100, 200);
    kill_and_resume({THEANINE_DBN_PROGRAM, "--data", data.string(), "--train-size", "400", "--hidden", "120,100",
                     "--pretrain-epochs", "3", "--finetune-epochs", "4", "--batch-size", "10", "--k", "2",
                     "--checkpoint-every", "9", "--threads", "2", "--output", temp_dir("dbn_out").string()},
                    temp_dir("dbn_ckpt"));
}

TEST_CASE("the rbm resumes after kill -9 in training and draws the same samples") {
    const fs::path data = make_mnist(10100, 200);
    const fs::path out = temp_dir("rbm_out");
    kill_and_resume({THEANINE_RBM_PROGRAM, "--data", data.string(), "--train-size", "400", "--epochs", "3", "--hidden",
                     "60", "--k", "5", "--chains", "4", "--samples", "2", "--plot-every", "20", "--checkpoint-every", "6",
                     "--output", out.string(), "--threads", "2"},
                    temp_dir("rbm_ckpt"), "Training took");
}

TEST_CASE("the cA resumes after kill -9 and prints what an uninterrupted run prints") {
    const fs::path data = make_mnist(10100, 200);
    const fs::path out = temp_dir("ca_out");
    kill_and_resume({THEANINE_CA_PROGRAM, "--data", data.string(), "--train-size", "400", "--epochs", "4", "--hidden",
                     "80", "--checkpoint-every", "7", "--output", out.string(), "--threads", "2"},
                    temp_dir("ca_ckpt"));
}

TEST_CASE("convolutional_mlp (LeNet) resumes after kill -9 and prints what an uninterrupted run prints") {
    const fs::path data = make_mnist(10100, 200);
    const fs::path out = temp_dir("lenet_out");
    kill_and_resume({THEANINE_LENET_PROGRAM, "--data", data.string(), "--train-size", "400", "--epochs", "4", "--nkerns",
                     "4,6", "--batch-size", "20", "--checkpoint-every", "7", "--output", out.string(), "--threads", "2"},
                    temp_dir("lenet_ckpt"));
    CHECK(fs::file_size(out / "filters_layer0.png") > 0);
}

TEST_CASE("SIGTERM writes a checkpoint and exits cleanly; the resumed run finishes the same") {
    const fs::path data = make_mnist(600, 20);
    const fs::path out = temp_dir("term_out");
    const fs::path ckpt = temp_dir("term_ckpt");
    std::vector<std::string> args = {THEANINE_DA_PROGRAM, "--data", data.string(), "--train-size", "600", "--epochs", "3",
                                     "--hidden", "300", "--corruption", "0.3", "--output", out.string()};
    const Result reference = run(args);
    REQUIRE(reference.status == 0);
    args.push_back("--checkpoint");
    args.push_back(ckpt.string());
    args.push_back("--checkpoint-every");
    args.push_back("1000000");  // only at epoch ends and on the signal
    const Result stopped = run(args, 0.5 * reference.seconds, SIGTERM);
    if (stopped.status != 0) {
        CHECK(stopped.status == 128 + SIGTERM);
        CHECK(fs::exists(ckpt / "checkpoint.bin"));
    }
    args.push_back("--resume");
    args.push_back(ckpt.string());
    const Result finished = run(args);
    CHECK(finished.status == 0);
    CHECK(finished.out == reference.out);
}

TEST_CASE("a cost that becomes NaN or inf stops the program with a message; --nan-guard names the op") {
    const fs::path data = make_mnist(10100, 200);
    // A learning rate this large drives the softmax to exact zeros after one step; the
    // negative log-likelihood is then log(0) unless LogSoftmax stands in for log(softmax),
    // so the stabilising rewrite is turned off here (as a user would, through THEANINE_FLAGS).
    const char* old_flags = std::getenv("THEANINE_FLAGS");
    const std::string saved = old_flags ? old_flags : "";
    ::setenv("THEANINE_FLAGS", "optimizer_excluding=local_log_softmax", 1);
    struct Restore {
        bool had;
        std::string value;
        ~Restore() {
            if (had) {
                ::setenv("THEANINE_FLAGS", value.c_str(), 1);
            } else {
                ::unsetenv("THEANINE_FLAGS");
            }
        }
    } restore{old_flags != nullptr, saved};
    const fs::path out = data.parent_path() / "nan_stop_output";  // the finished run's curves go here
    fs::create_directories(out);
    const std::vector<std::string> args = {THEANINE_MLP_PROGRAM, "--data", data.string(), "--train-size", "400", "--epochs",
                                           "3", "--hidden", "50", "--learning-rate", "1000000", "--output", out.string()};
    Result r = run(args);
    CHECK(r.status == 1);
    CHECK(r.out.find("nan") == std::string::npos);
    CHECK(r.err.find("mlp: the cost became inf at epoch 1, minibatch 1; rerun with --nan-guard") != std::string::npos);
    std::vector<std::string> guarded = args;
    guarded.push_back("--nan-guard");
    Result g = run(guarded);
    CHECK(g.status == 1);
    CHECK(g.err.find("mlp: NaN guard: Composite{log(i0)} produced") != std::string::npos);
    CHECK(g.err.find("(node built at mlp.cpp:") != std::string::npos);
    CHECK(g.err.find("input 0: float64 (20, 10)") != std::string::npos);
    // With the rewrite (the default), the same run stays finite to the end.
    ::unsetenv("THEANINE_FLAGS");
    Result stable = run(args);
    CHECK(stable.status == 0);
    CHECK(stable.out.find("test error of best model") != std::string::npos);
    CHECK(fs::exists(out / "metrics.csv"));
}

TEST_CASE("flags are checked in their final type, and bad destinations are found before training") {
    const fs::path data = make_mnist(600, 20);
    const fs::path out = temp_dir("flags_out");
    auto da = [&](std::vector<std::string> extra) {
        std::vector<std::string> a = {THEANINE_DA_PROGRAM, "--data", data.string(), "--train-size", "600", "--epochs", "1",
                                      "--hidden", "20", "--output", out.string()};
        a.insert(a.end(), extra.begin(), extra.end());
        return run(a);
    };
    Result r = da({"--batch-size", "4294967296"});
    CHECK(r.status == 2);
    CHECK(r.err.find("--batch-size needs an integer in [1, 2147483647], got '4294967296'") != std::string::npos);
    r = da({"--seed", "4294967296"});
    CHECK(r.status == 2);
    CHECK(r.err.find("--seed needs an integer in [0, 4294967295]") != std::string::npos);
    // --output names a file: refused at once, before any training line.
    std::ofstream(out / "a_file") << "x";
    r = da({"--output", (out / "a_file").string()});
    CHECK(r.status == 1);
    CHECK(r.out.empty());
    CHECK(r.err.find("--output " + (out / "a_file").string() + ": cannot create the folder") != std::string::npos);

    const fs::path mlp_data = make_mnist(10100, 200);
    r = run({THEANINE_MLP_PROGRAM, "--data", mlp_data.string(), "--train-size", "400", "--seed", "4294967296"});
    CHECK(r.status == 2);
    CHECK(r.err.find("--seed needs an integer in [0, 4294967295]") != std::string::npos);
    // A minibatch larger than the test split (200 images): an error, not "test error 0 %".
    r = run({THEANINE_MLP_PROGRAM, "--data", mlp_data.string(), "--train-size", "400", "--batch-size", "300"});
    CHECK(r.status == 1);
    CHECK(r.err.find("--batch-size 300 does not fit the test set of 200 examples: no whole minibatch") != std::string::npos);
    r = run({THEANINE_MLP_PROGRAM, "--data", mlp_data.string(), "--train-size", "400", "--save-params",
             (out / "a_file" / "sub").string()});
    CHECK(r.status == 1);
    CHECK(r.out.empty());
    CHECK(r.err.find("--save-params") != std::string::npos);
}

TEST_CASE("--graph-html writes the view of the training function after training; a bad destination is found first") {
    const fs::path data = make_mnist(600, 20);
    const fs::path out = temp_dir("graph_html");
    const fs::path page = out / "train.html";
    const Result r = run({THEANINE_DA_PROGRAM, "--data", data.string(), "--train-size", "600", "--epochs", "1", "--hidden",
                          "40", "--corruption", "0.3", "--output", out.string(), "--graph-html", page.string()});
    REQUIRE(r.status == 0);
    const std::string html = read_text(page);
    std::size_t steps = 0;
    for (std::size_t at = html.find("class=\"node step\""); at != std::string::npos;
         at = html.find("class=\"node step\"", at + 1)) {
        ++steps;
    }
    CHECK(steps > 10);
    CHECK(html.find(fmt::format("data-expected-steps=\"{}\"", steps)) != std::string::npos);
    // The last call's shapes: the minibatch of 20 through the 40 hidden units.
    CHECK(html.find("float64 matrix (20, 40)") != std::string::npos);
    CHECK(html.find("(in place)") != std::string::npos);  // the updates of W, b and b'
    check_metrics(r.out, out);

    // logistic_sgd: its early-stopping errors in metrics.csv and its graph.
    const fs::path lr_out = temp_dir("logistic_out");
    const fs::path big = make_mnist(10100, 200);
    const Result lr = run({THEANINE_LOGISTIC_PROGRAM, "--data", big.string(), "--train-size", "1200", "--epochs", "4",
                           "--batch-size", "100", "--output", lr_out.string(), "--graph-html", (lr_out / "g.html").string()});
    REQUIRE(lr.status == 0);
    check_metrics(lr.out, lr_out);
    CHECK(read_text(lr_out / "g.html").find("class=\"node step\"") != std::string::npos);

    const Result bad = run({THEANINE_MLP_PROGRAM, "--data", data.string(), "--train-size", "400", "--epochs", "1",
                            "--graph-html", "/proc/no/such/dir/x.html"});
    CHECK(bad.status == 1);
    CHECK(bad.err.find("--graph-html") != std::string::npos);
    CHECK(bad.out.empty());
}
