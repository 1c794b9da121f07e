#include "examples/io/checkpoint.hpp"

#include <unistd.h>

#include <chrono>
#include <csignal>
#include <cstdio>
#include <cstring>
#include <iostream>

#include <fmt/format.h>

#include "examples/io/files.hpp"

namespace theanine::io {

namespace {

constexpr char kMagic[] = "THEANINE-CHECKPOINT 1\n";
constexpr std::size_t kMagicLen = sizeof(kMagic) - 1;
constexpr DType kDTypes[] = {DType::float32, DType::float64, DType::int64,  DType::int32,  DType::uint8,
                             DType::boolean, DType::int8,    DType::int16, DType::uint16, DType::uint32};

template <class T>
void put(AtomicFile& f, T v) {
    f.write(&v, sizeof v);
}

}  // namespace

void save_checkpoint(const std::string& path, const Checkpoint& entries) {
    AtomicFile f(path);
    f.write(kMagic, kMagicLen);
    put(f, static_cast<std::uint32_t>(entries.size()));
    for (const auto& [name, t0] : entries) {
        const Tensor t = t0.contiguous();
        put(f, static_cast<std::uint16_t>(name.size()));
        f.write(name.data(), name.size());
        put(f, static_cast<std::uint8_t>(t.dtype()));
        put(f, static_cast<std::uint8_t>(t.ndim()));
        for (auto d : t.shape()) put(f, static_cast<std::int64_t>(d));
        f.write(t.raw_data(), checked_byte_size(t.shape(), dtype_size(t.dtype())));
    }
    f.commit();
}

Checkpoint load_checkpoint(const std::string& path) {
    InputFile f(path);
    std::string magic(kMagicLen, '\0');
    f.read(magic.data(), kMagicLen, "the checkpoint header");
    if (magic != kMagic) throw UsageError(fmt::format("{}: not a theanine checkpoint (bad header at byte offset 0)", path));
    std::uint32_t count = 0;
    f.read(&count, sizeof count, "the entry count");
    Checkpoint c;
    for (std::uint32_t e = 0; e < count; ++e) {
        const std::uint64_t at = f.offset();
        std::uint16_t len = 0;
        f.read(&len, sizeof len, "an entry's name length");
        std::string name(len, '\0');
        f.read(name.data(), len, "an entry's name");
        std::uint8_t code = 0, ndim = 0;
        f.read(&code, 1, "an entry's dtype");
        f.read(&ndim, 1, "an entry's rank");
        if (code >= std::size(kDTypes) || ndim > 32) {
            throw UsageError(fmt::format("{}: entry '{}' at byte offset {} has dtype code {} and rank {}", path, name, at,
                                         code, ndim));
        }
        Shape shape(ndim);
        for (auto& d : shape) f.read(&d, sizeof d, "an entry's dimensions");
        const DType dt = kDTypes[code];
        const std::size_t bytes = checked_byte_size(shape, dtype_size(dt));
        if (bytes > f.size() - f.offset()) {
            throw UsageError(fmt::format("{}: entry '{}' needs {} bytes at byte offset {}, the file has {} left", path,
                                         name, bytes, f.offset(), f.size() - f.offset()));
        }
        Tensor t = Tensor::empty(dt, shape);
        f.read(t.raw_data(), bytes, "entry '" + name + "'");
        c[name] = t;
    }
    return c;
}

void PrintedLines::print(const std::string& line) {
    std::fwrite(line.data(), 1, line.size(), stdout);
    std::fputc('\n', stdout);
    std::fflush(stdout);
    text_ += line;
    text_ += '\n';
}

Tensor PrintedLines::to_tensor() const {
    Tensor t = Tensor::empty(DType::uint8, {static_cast<std::int64_t>(text_.size())});
    if (!text_.empty()) std::memcpy(t.raw_data(), text_.data(), text_.size());
    return t;
}

void PrintedLines::replay(const Tensor& saved) {
    std::string s(static_cast<const char*>(saved.raw_data()), static_cast<std::size_t>(saved.size()));
    std::fwrite(s.data(), 1, s.size(), stdout);
    std::fflush(stdout);
    text_ = s;
}

Checkpointer::Checkpointer(std::string dir, std::int64_t every, std::string resume_dir)
    : dir_(std::move(dir)), resume_(std::move(resume_dir)), every_(every) {
    if (!dir_.empty()) check_writable_dir(dir_, "--checkpoint");
}

void Checkpointer::save(const Checkpoint& c) const {
    if (enabled()) save_checkpoint(dir_ + "/checkpoint.bin", c);
}

std::optional<Checkpoint> Checkpointer::resume() const {
    if (resume_.empty()) return std::nullopt;
    return load_checkpoint(resume_ + "/checkpoint.bin");
}

void put_values(Checkpoint& c, const std::string& prefix, const std::vector<SharedVariable>& vars) {
    for (std::size_t i = 0; i < vars.size(); ++i) c[fmt::format("{}{}", prefix, i)] = vars[i].get_value();
}

void set_values(const Checkpoint& c, const std::string& prefix, const std::vector<SharedVariable>& vars) {
    for (std::size_t i = 0; i < vars.size(); ++i) {
        const std::string name = fmt::format("{}{}", prefix, i);
        auto it = c.find(name);
        if (it == c.end()) throw UsageError(fmt::format("checkpoint: no entry '{}' (for '{}')", name, vars[i].label()));
        const Tensor& now = vars[i].get_value(true);
        if (it->second.dtype() != now.dtype() || it->second.shape() != now.shape()) {
            throw UsageError(fmt::format("checkpoint: entry '{}' is {} {}, but '{}' is {} {} (other settings than the "
                                         "checkpointed run?)", name, dtype_name(it->second.dtype()),
                                         shape_string(it->second.shape()), vars[i].label(), dtype_name(now.dtype()),
                                         shape_string(now.shape())));
        }
        vars[i].set_value(it->second);
    }
}

Tensor int_entry(std::int64_t v) { return Tensor::scalar<std::int64_t>(v); }
Tensor double_entry(double v) { return Tensor::scalar<double>(v); }

std::int64_t get_int(const Checkpoint& c, const std::string& name) {
    auto it = c.find(name);
    if (it == c.end() || it->second.dtype() != DType::int64 || it->second.size() != 1) {
        throw UsageError(fmt::format("checkpoint: no int64 entry '{}'", name));
    }
    return it->second.data<std::int64_t>()[0];
}

double get_double(const Checkpoint& c, const std::string& name) {
    auto it = c.find(name);
    if (it == c.end() || it->second.dtype() != DType::float64 || it->second.size() != 1) {
        throw UsageError(fmt::format("checkpoint: no float64 entry '{}'", name));
    }
    return it->second.data<double>()[0];
}

namespace {
std::atomic<int> g_stop_signal{0};
extern "C" void on_stop_signal(int sig) { g_stop_signal.store(sig); }
}  // namespace

void install_stop_signals() {
    std::signal(SIGINT, on_stop_signal);
    std::signal(SIGTERM, on_stop_signal);
}

bool stop_requested() { return g_stop_signal.load() != 0; }
int stop_status() { return 128 + g_stop_signal.load(); }

Progress::Progress(std::string label) : label_(std::move(label)), tty_(::isatty(2) != 0) {}

void Progress::update(std::int64_t done, std::int64_t total) {
    if (!tty_) return;
    const double now = std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch()).count();
    if (last_ >= 0 && now - last_ < 0.2) return;
    last_ = now;
    std::fprintf(stderr, "\r  %s: batch %lld/%lld", label_.c_str(), static_cast<long long>(done),
                 static_cast<long long>(total));
    shown_ = true;
}

void Progress::clear() {
    if (shown_) std::fprintf(stderr, "\r%70s\r", "");
    shown_ = false;
}

}  // namespace theanine::io
