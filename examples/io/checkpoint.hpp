// Checkpoints of the training programs, and what lets a run stop cleanly and resume exactly.
//
// A checkpoint is one file of named tensors (parameters, generator states, the position in
// the data, early-stopping state, the lines printed so far), written with AtomicFile: a
// kill -9 at any moment leaves the previous checkpoint or the new one, never a partial
// file. A resumed run prints the saved lines again and continues from the saved position
// with the saved state, so its output is the output of a run that was never interrupted.
//
// File layout (little-endian): "THEANINE-CHECKPOINT 1\n", u32 count, then per entry: u16
// name length, name, u8 dtype (DType's order), u8 ndim, i64 dims[ndim], the C-order data.
#pragma once

#include <atomic>
#include <cstdint>
#include <map>
#include <optional>
#include <string>
#include <vector>

#include "graph/graph.hpp"

namespace theanine::io {

using Checkpoint = std::map<std::string, Tensor>;

void save_checkpoint(const std::string& path, const Checkpoint& entries);
// Throws UsageError naming the file and the byte offset of anything malformed.
Checkpoint load_checkpoint(const std::string& path);

// Lines a program prints to stdout, kept so that a checkpoint can carry them.
class PrintedLines {
public:
    void print(const std::string& line);  // prints, flushes, keeps
    Tensor to_tensor() const;             // uint8 bytes of all lines
    void replay(const Tensor& saved);     // prints the saved lines again and keeps them

private:
    std::string text_;
};

// --checkpoint DIR / --resume DIR / --checkpoint-every N of a training program.
class Checkpointer {
public:
    Checkpointer() = default;
    Checkpointer(std::string dir, std::int64_t every, std::string resume_dir);
    bool enabled() const { return !dir_.empty(); }
    // Whether a checkpoint is due after this many minibatches in all.
    bool due(std::int64_t steps) const { return enabled() && every_ > 0 && steps % every_ == 0; }
    void save(const Checkpoint& c) const;
    // The checkpoint to resume from, if --resume was given (throws when it cannot be read).
    std::optional<Checkpoint> resume() const;
    const std::string& dir() const { return dir_; }

private:
    std::string dir_, resume_;
    std::int64_t every_ = 0;
};

// The values of shared variables, by name, and back. set_values checks dtype and shape and
// names the entry that does not fit.
void put_values(Checkpoint& c, const std::string& prefix, const std::vector<SharedVariable>& vars);
void set_values(const Checkpoint& c, const std::string& prefix, const std::vector<SharedVariable>& vars);
// A scalar entry as int64 or double, exactly.
Tensor int_entry(std::int64_t v);
Tensor double_entry(double v);
std::int64_t get_int(const Checkpoint& c, const std::string& name);
double get_double(const Checkpoint& c, const std::string& name);

// SIGINT and SIGTERM set a flag instead of killing the process; training loops poll it,
// write a checkpoint and exit cleanly.
void install_stop_signals();
bool stop_requested();
// The exit status for a stop by signal (128 + the signal's number).
int stop_status();

// A progress line on stderr ("  epoch 3: batch 1200/2500"), only when stderr is a terminal,
// at most every 0.2 s; clear() erases it before the program prints its own line.
class Progress {
public:
    explicit Progress(std::string label);
    void update(std::int64_t done, std::int64_t total);
    void clear();

private:
    std::string label_;
    bool tty_;
    double last_ = -1;
    bool shown_ = false;
};

}  // namespace theanine::io
