// The compiled form of a function and its executor.
//
// A Plan is a flat list of steps {op, input slots, output slots} over a vector of tensor
// slots. function.cpp builds it in named stages; a call binds the arguments and shared
// values to their slots, runs the steps in order, and then hands out the results and
// commits the updates under the memory contract (ownership.hpp). Slots keep their buffers
// between calls, so a steady-state call allocates no tensor storage.
#pragma once

#include <array>
#include <atomic>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "compile/function.hpp"

namespace theanine {

struct Step {
    const Op* op = nullptr;
    const Node* node = nullptr;
    std::vector<const Tensor*> in;
    std::vector<Tensor*> out;
    std::vector<Tensor*> place;  // a Join's input slots, to be placed in its output
    std::vector<int> acquire;    // output slots that take a pooled buffer before the step
    std::vector<int> release;    // slots whose value is dead after the step
    std::vector<std::size_t> finish;  // asynchronous steps (Op::is_async) to finish first
    // The last call's outputs, for the graph view (Function::to_html): their shapes, and the
    // bytes of their buffers (0 for an output that shares an input's buffer: a view or an
    // in-place result).
    std::vector<Shape> shapes;
    std::vector<std::size_t> bytes;
};

struct InputBinding {
    int slot;
    Variable var;
    std::string name;
    std::optional<Tensor> default_value;
    bool borrow = false;  // In::borrow: results and updates may keep the argument's buffer
    Tensor scratch;       // reused for number arguments
    bool allow_downcast = false;  // CompileOptions::allow_input_downcast
    Tensor converted;     // reused for arguments converted to the input's dtype
    bool is_mutable = false;      // In::is_mutable: in-place kernels may overwrite the argument
    int kept_result = -1;         // In::update: the result (after the outputs) that becomes the default
};

struct UpdateBinding {
    std::shared_ptr<SharedCell> cell;
    int slot;
    Tensor spare;  // the buffer a copied update value goes to (ownership.cpp)
};

struct OutputBinding {
    int slot;
    bool borrow = false;  // Out::borrow: may be returned without a copy
    Tensor spare;         // the buffer a copied result goes to, reused once the caller drops it
};

// How many threads run a call's parallel parts (ops/blas.hpp, active_workers). A plan times
// its longer calls and now and then runs a few on the other choice (all threads or one); it
// keeps whichever is faster, so with another process busy on a core, N threads are never
// much slower than one. It probes after its first few calls, every 1024 calls (256 while on
// one thread, to return soon once the cores are free), and at once when its calls have
// become much slower than they were. The current choice is judged by its mean over its last
// 32 calls: a call now and then delayed by the machine (a preempted worker) counts for what
// it costs on average, and does not by itself start a probe. A probe runs a few calls on the
// other choice and then as many on the current one, and compares their medians: both sides
// are measured side by side, past their first calls (which wake or settle the threads), so
// calls that are slow for a reason of their own (the first of an evaluation pass after the
// training calls) decide nothing. Results do not depend on the choice.
class WorkerChoice {
public:
    int limit() const { return phase_ == Phase::other ? (one_ ? 0 : 1) : (one_ ? 1 : 0); }  // 0: no limit
    void record(double seconds);
    bool one_thread() const { return one_; }
    bool probing() const { return phase_ != Phase::steady; }
    bool adapt = true;  // CompileOptions::adapt_workers

    static constexpr int kWindow = 32;  // recent calls of the current choice
    static constexpr int kProbeCalls = 8, kProbeWarmup = 2;  // per side; the first calls wake the threads

private:
    void restart_window(double seconds, int calls);
    enum class Phase { steady, other, current };  // a probe: the other choice's calls, then the current's
    bool one_ = false;  // the choice: one thread (true) or all (false)
    Phase phase_ = Phase::steady;
    int probe_left = 0;
    std::array<double, kProbeCalls - kProbeWarmup> other_{}, current_{};  // the probe's timed calls
    std::array<double, kWindow> recent_{};
    int n_recent = 0, next = 0;  // filled entries of recent_, and where the next call goes
    double recent_sum = 0;
    double best = 0;  // the lowest mean of a full window since the last probe
    std::int64_t long_calls = 0, since_probe = 0;
};

// The options of the plan whose steps are running on this thread (LoopOptions in function.hpp).
const LoopOptions& running_options();

// What a function was compiled from (Function::copy compiles it again).
struct Definition {
    std::vector<In> inputs;
    std::vector<Out> outputs;
    Updates updates;
    Givens givens;
    CompileOptions options;
};

struct Plan {
    std::shared_ptr<const Definition> definition;
    std::vector<Variable> outputs;
    std::vector<std::pair<std::string, Variable>> update_values;  // for printing
    std::vector<Tensor> slots;
    std::vector<Step> steps;
    std::vector<InputBinding> inputs;
    std::vector<std::pair<int, std::shared_ptr<SharedCell>>> shared;
    std::vector<OutputBinding> results;  // the outputs, then the results kept by inputs with an update
    std::size_t n_user_outputs = 0;
    std::vector<UpdateBinding> updates;
    std::vector<int> transient;  // slots released after each call
    std::vector<int> constant_slots;
    std::vector<std::shared_ptr<const Node>> keepalive;
    std::vector<std::string> log;
    std::vector<std::string> in_place;
    // Steps [first_commit, end) write into shared variables' buffers (ownership.hpp); they
    // run last and are validated together before the first of them writes.
    std::size_t first_commit = 0;
    // The shared variables some step overwrites in place.
    std::vector<std::shared_ptr<SharedCell>> destroyed_cells;
    bool profile = false;
    bool nan_guard = false, nan_guard_big = false;  // CompileOptions::nan_guard
    std::int64_t calls = 0;
    std::vector<double> step_seconds;  // with profile: per step, summed over the calls
    // Liveness: buffers of dead values wait in the pool for a later value that fits (the
    // size each slot needed last call); views_of[s] lists the view slots made of slot s.
    std::vector<Tensor> pool;
    std::size_t pool_idle = 0;  // pool[0, pool_idle) has not left the pool during this call
    std::vector<std::size_t> last_bytes;
    std::vector<std::vector<int>> views_of;
    // Asynchronous steps: those no step reads, finished at the end of the steps; and, during
    // a call, those started and not yet finished.
    std::vector<std::size_t> finish_at_end;
    std::vector<std::size_t> in_flight;
    std::atomic<bool> busy{false};  // a call is running (a Function is not reentrant)
    // Reused by finish_call (ownership.cpp), so a call allocates nothing for its bookkeeping.
    enum class Commit { keep, hand_over, copy };
    std::vector<const void*> scratch_ids, scratch_claimed;
    std::vector<Commit> scratch_commit;
    WorkerChoice workers;
    bool split_work = false;  // the last call ran kernels that split their work (ops/team.hpp)

    Tensor bind_arg(InputBinding& b, std::size_t position, const Arg& a);
    // Runs the steps with the arguments bound; returns the results and commits the updates.
    std::vector<Tensor> run();
    // For a loop running this plan as its step (ops/scan.cpp), which binds the inputs' slots
    // itself and reads the results' slots: the steps alone (the plan has no shared
    // variables and no updates), then end_loop() once after the last iteration.
    void run_steps();
    void end_loop();

private:
    void run_step(Step& s);
    void finish_async(std::size_t step);
    void check_finite(const Step& s) const;
};

}  // namespace theanine
