/// \file
/// Loops as graphs: scan (Theano's theano.scan) and map / reduce / foldl / foldr built on it.
///
/// scan(fn, sequences, outputs_info, non_sequences, n_steps, ...) calls fn once, on placeholder
/// variables that stand for one step: a row of each sequence per tap, the past values of each
/// fed-back output per tap, then the non-sequences. What fn returns is the step's graph. It
/// becomes the inner graph of one Scan node in the outer graph: the node's outputs are each
/// step output stacked along a new leading axis (without the initial values), and the final
/// values of the shared variables the step updates (random generator states included).
///
/// Inside the step, every variable that is not a placeholder (a non-sequence, a symbolic input,
/// a shared variable the step reads) becomes an input of the Scan node, so the inner graph is
/// closed. Shared variables the step updates (fn's updates, and the default updates of the
/// random streams drawn inside) are threaded through the loop: step t reads the value step t-1
/// wrote, and scan returns an update of each variable to its value after the last step. Pass
/// those updates to function() so successive calls continue the random streams.
///
/// The Scan kernel compiles the inner graph once with the same pipeline as function() (the
/// rewrites, slots, in-place grants, liveness) and runs that plan n_steps times over row views
/// of the sequences, copying each step's outputs into the stacked results. Steady-state calls
/// allocate no tensor storage. Compiled plans are kept per Scan op in a small pool, so one
/// graph can run in several functions on several threads at once.
///
/// grad through a Scan builds the reversed loop (backpropagation through time) as another
/// scan, reading the forward loop's stored outputs where a gradient needs a step's result;
/// truncate_gradient = k backpropagates through the last k steps only, as Theano does.
///
/// Outer rewrites (compile/rewrites/scan.cpp): scan_single_step (a constant n_steps of 1
/// becomes the step's graph), scan_hoist (inner computations that do not depend on the loop
/// are computed once outside it), scan_pushout_seqs (work on the sequences alone runs once
/// over all steps outside the loop), scan_save_mem (an output of which only the last step is
/// read keeps that step alone), scan_prune (outputs nothing reads are not computed),
/// scan_pushout_dot (products accumulated over the steps become one product outside).
#pragma once

#include <functional>
#include <memory>
#include <mutex>
#include <optional>
#include <source_location>
#include <string>
#include <vector>

#include "compile/function.hpp"
#include "graph/graph.hpp"
#include "ops/shape.hpp"

namespace theanine {

/// A sequence and the taps read from it: tap k at step t reads row t + k (taps {-1, 0, 1}
/// read three consecutive rows; the smallest tap reads row t of the sequence).
struct ScanSequence {
    Variable input;
    std::vector<int> taps{0};
    ScanSequence(const Variable& v) : input(v) {}
    ScanSequence(const Variable& v, std::vector<int> t) : input(v), taps(std::move(t)) {}
};

/// An outputs_info entry: none() (the output is not fed back), an initial value (fed back
/// with tap -1), or an initial value with several negative taps, whose leading axis then holds
/// one row per past step, oldest first (-min(taps) rows are used).
struct ScanOutput {
    Variable initial;
    std::vector<int> taps;
    bool with_rows = false;  ///< initial holds rows (the {initial, taps} form)
    ScanOutput(const Variable& init) : initial(init), taps{-1} {}
    ScanOutput(const Variable& init, std::vector<int> t) : initial(init), taps(std::move(t)), with_rows(true) {}
    static ScanOutput none() { return ScanOutput(); }

private:
    ScanOutput() = default;
};

/// What the step function returns: its outputs and, optionally, updates of shared variables.
struct ScanStep {
    std::vector<Variable> outputs;
    Updates updates;
    ScanStep(const Variable& v) : outputs{v} {}
    ScanStep(std::vector<Variable> v) : outputs(std::move(v)) {}
    ScanStep(std::initializer_list<Variable> v) : outputs(v) {}
    ScanStep(std::vector<Variable> v, Updates u) : outputs(std::move(v)), updates(std::move(u)) {}
};

using ScanFn = std::function<ScanStep(const std::vector<Variable>&)>;

/// The result: one variable per step output (stacked along a new leading axis) and the
/// updates of the shared variables the step updates (to pass to function()).
struct ScanResult {
    std::vector<Variable> outputs;
    Updates updates;
    const Variable& operator[](std::size_t i) const { return outputs.at(i); }
};

/// theano.scan's keyword arguments, for designated initialisers:
///   scan(step, {.sequences = {x}, .outputs_info = {h0}, .non_sequences = {W}})
struct ScanArgs {
    std::vector<ScanSequence> sequences;
    std::vector<ScanOutput> outputs_info;
    std::vector<Variable> non_sequences;
    Bound n_steps = Bound();    ///< a constant or an integer scalar; absent: the sequences' length
    int truncate_gradient = -1; ///< -1: full backpropagation through time
    bool go_backwards = false;  ///< iterate over the sequences from their last row
    std::string name;           ///< for messages and debugprint
};

ScanResult scan(const ScanFn& fn, const ScanArgs& args,
                std::source_location where = std::source_location::current());
ScanResult scan(const ScanFn& fn, const std::vector<ScanSequence>& sequences,
                const std::vector<ScanOutput>& outputs_info = {}, const std::vector<Variable>& non_sequences = {},
                Bound n_steps = std::nullopt, int truncate_gradient = -1, bool go_backwards = false,
                const std::string& name = "", std::source_location where = std::source_location::current());

/// fn applied to every row of the sequences (no fed-back outputs).
ScanResult map(const ScanFn& fn, const std::vector<ScanSequence>& sequences,
               const std::vector<Variable>& non_sequences = {}, bool go_backwards = false,
               const std::string& name = "", std::source_location where = std::source_location::current());
/// The last step's outputs of the scan (each output's final value, not stacked).
ScanResult reduce(const ScanFn& fn, const std::vector<ScanSequence>& sequences,
                  const std::vector<ScanOutput>& outputs_info, const std::vector<Variable>& non_sequences = {},
                  bool go_backwards = false, const std::string& name = "",
                  std::source_location where = std::source_location::current());
ScanResult foldl(const ScanFn& fn, const std::vector<ScanSequence>& sequences,
                 const std::vector<ScanOutput>& outputs_info, const std::vector<Variable>& non_sequences = {},
                 const std::string& name = "", std::source_location where = std::source_location::current());
ScanResult foldr(const ScanFn& fn, const std::vector<ScanSequence>& sequences,
                 const std::vector<ScanOutput>& outputs_info, const std::vector<Variable>& non_sequences = {},
                 const std::string& name = "", std::source_location where = std::source_location::current());

/// The static description of a loop.
struct ScanInfo {
    std::string name;
    std::vector<std::vector<int>> seq_taps;  ///< per sequence, ascending
    std::vector<std::vector<int>> out_taps;  ///< per output, ascending negative taps; empty: not fed back
    std::size_t n_shared = 0;                ///< shared variables threaded through the loop
    std::size_t n_non_seqs = 0;
    int truncate_gradient = -1;
    /// Per output: keep only the last this many steps (0: all of them). Set by scan_save_mem.
    std::vector<int> keep_last;

    std::size_t n_seq_inputs() const;  ///< inner placeholders for sequences
    std::size_t n_tap_inputs() const;  ///< inner placeholders for past outputs
    int init_rows(std::size_t j) const { return out_taps[j].empty() ? 0 : -out_taps[j].front(); }
};

/// The closed inner graph of a loop and the compiled plans that run it.
///   inner inputs:  sequence taps (per sequence, per tap), past-output taps (per output, per
///                  tap), shared states, non-sequences
///   inner outputs: per output its value at the step, then per shared state its new value
///   outer inputs:  n_steps (int64 scalar), sequences, initial rows (L, ...) per fed-back
///                  output, shared variables, non-sequences
///   outer outputs: per output the stacked values (n_steps, ...), then per shared state its
///                  value after the last step
struct ScanInner {
    ScanInfo info;
    std::vector<Variable> inputs;
    std::vector<Variable> outputs;
    std::source_location where;

    /// Compiled plans, checked out by a running kernel and returned after it; each compiled
    /// with the profiling and NaN-check options of the function that runs the loop.
    mutable std::mutex mutex;
    mutable std::vector<std::pair<LoopOptions, std::unique_ptr<Function>>> pool;
};

class ScanOp final : public Op {
public:
    explicit ScanOp(std::shared_ptr<const ScanInner> inner) : inner_(std::move(inner)) {}
    std::string name() const override;
    std::vector<TensorType> make_types(const std::vector<Variable>& inputs) const override;
    void perform(const Node& node, std::span<const Tensor* const> in, std::span<Tensor* const> out) const override;
    std::vector<Variable> pullback(const Node& node, const std::vector<Variable>& out_grads) const override;
    bool props_equal(const Op& other) const override;
    std::size_t props_hash() const override;
    // Random draws inside advance generator states that the node threads explicitly (its
    // outputs), so the node itself is pure: equal scans over equal inputs may be merged.

    const ScanInner& inner() const { return *inner_; }
    const std::shared_ptr<const ScanInner>& inner_ptr() const { return inner_; }
    const std::vector<Variable>* inner_outputs() const override { return &inner_->outputs; }
    /// With profile (THEANINE_FLAGS profile=True): the inner plans' time per step.
    std::string inner_profile() const override;

private:
    std::shared_ptr<const ScanInner> inner_;
};

/// Builds a Scan node (used by scan() and by the outer rewrites). Checks the types.
std::vector<Variable> make_scan_node(ScanInfo info, std::vector<Variable> inner_inputs,
                                     std::vector<Variable> inner_outputs, std::vector<Variable> outer_inputs,
                                     std::source_location where);

}  // namespace theanine
