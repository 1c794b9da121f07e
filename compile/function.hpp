/// \file
/// function(inputs, outputs, updates, givens): compiles a graph into a callable.
///
/// The path of a value: function() substitutes the givens (clone_with_replace), adds the
/// default updates of shared variables the graph reads (random generator states), runs the
/// rewrite pipeline, and linearises the graph into a Plan (compile/plan.hpp): a flat list of
/// steps {op, input slots, output slots} over a vector of tensor slots. A call binds the
/// arguments and the shared variables' values to their slots, runs every step's kernel, then
/// hands out the results and writes every update at once (so each update sees the old
/// values). Slots keep their buffers between calls, so a steady-state call allocates no
/// tensor storage.
///
/// The contract a caller can rely on (compile/ownership.hpp states it in full):
/// - Results never share storage with the arguments, constants, shared variables or each
///   other, and later calls never change them, unless Out::borrow / In::borrow allow it.
/// - Two shared variables never share storage after an update; in-place kernels write only
///   the function's own buffers or the buffer of the very variable they update.
/// - A call is atomic: when any step throws, no shared variable and no random generator state
///   changes (updates are committed only after every step has succeeded).
/// - A Function is not reentrant: a second call while one is running (from another thread)
///   raises UsageError. Different Functions may run concurrently when no shared variable one
///   of them updates is read or updated by the other.
/// - A moved-from Function raises UsageError when called.
#pragma once

#include <concepts>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "compile/rewrite.hpp"
#include "graph/graph.hpp"

namespace theanine {

struct CompileOptions {
    RewriteSelection rewrites;   ///< starts from config(): optimizer, optimizer_excluding, ...
    bool verbose = false;        ///< print "rewrite X replaced A by B" while compiling
    bool profile = false;        ///< time every step of every call (profile_summary())
    /// Theano's NanGuardMode: after every step, check its float outputs for NaN and inf (and,
    /// with nan_guard_big, magnitudes above 1e10) and raise UsageError naming the step's op,
    /// the user's line that built it and summaries of its inputs. The call then changes
    /// nothing (steps that write shared variables in place are not used in this mode).
    bool nan_guard = false;
    bool nan_guard_big = false;
    /// An input that no output or update uses: an error (Theano's default), a warning on
    /// stderr, or nothing.
    enum class UnusedInput { raise, warn, ignore };
    UnusedInput on_unused_input = UnusedInput::raise;
    /// Theano's no_default_updates: leave out every default update (true), or those of the
    /// listed shared variables.
    bool no_default_updates = false;
    /// Theano's allow_input_downcast: convert call arguments of any dtype to their inputs'
    /// dtypes (float64 data for a float32 input). Without it only conversions numpy deems
    /// safe are made (an int array for a float64 input) and others are refused.
    bool allow_input_downcast = false;
    std::vector<SharedVariable> no_default_updates_for;
    /// Let the executor run parallel parts on fewer threads when that measures faster (other
    /// processes busy on the cores); false keeps num_threads() threads, for measurements.
    bool adapt_workers = true;
    CompileOptions();
};

/// An input of a compiled function, optionally with a default value and a name for calls
/// by name (Theano's In(variable, value=..., name=...)).
/// borrow = true lets results and updates keep the argument's buffer instead of a copy (the
/// caller accepts that later calls may change the array it passed).
///
/// update (Theano's In(update=...)): the function keeps this input's value between calls. A
/// call without an argument for it uses the kept value (starting at `value`, which is then
/// required), a call with one uses that; after a call that succeeds, the kept value becomes
/// the update expression's result (computed from the call's inputs, like a shared variable's
/// update). Function::input_value / set_input_value read and replace the kept value.
/// is_mutable (Theano's mutable) lets in-place kernels overwrite the argument's buffer (the
/// caller's array, or the kept value) when no later step reads it; such a buffer may be
/// changed even by a call that fails.
struct In {
    Variable var;
    std::optional<Tensor> value;
    std::string name;
    bool borrow = false;
    std::optional<Variable> update;
    bool is_mutable = false;
    In(const Variable& v) : var(v), name(v.name()) {}
    In(const Variable& v, const Tensor& default_value, std::string n = "")
        : var(v), value(default_value), name(n.empty() ? v.name() : std::move(n)) {}
    In(const Variable& v, double default_value, std::string n = "");
};

/// An output of a compiled function (Theano's Out). borrow = true allows the result to be
/// returned without a copy even when it shares a buffer with an argument, a constant or a
/// shared variable; the caller accepts that later calls may change it.
struct Out {
    Variable var;
    bool borrow = false;
    /// A name for the result (Theano's outputs given as a dict): Function::named() returns
    /// the results by these names.
    std::string name;
    Out(const Variable& v, bool b = false) : var(v), borrow(b) {}
    Out(const Variable& v, std::string n, bool b = false) : var(v), borrow(b), name(std::move(n)) {}
    Out(const Variable& v, const char* n, bool b = false) : var(v), borrow(b), name(n) {}
};

/// A call argument: a tensor, or a number converted to the input's dtype. Integers are kept
/// exactly; a number that the input's dtype cannot hold exactly (300 for uint8, 2^40 for
/// int32, 2.5 or inf for an integer input) is refused with a message naming the input.
struct Arg {
    std::optional<Tensor> tensor;
    double number = 0;
    std::int64_t integer = 0;
    bool is_integer = false;
    std::string name;  ///< for calls by name
    Arg(const Tensor& t) : tensor(t) {}
    Arg(double x) : number(x) {}
    Arg(float x) : number(x) {}
    Arg(int x) : number(x), integer(x), is_integer(true) {}
    Arg(long x) : number(static_cast<double>(x)), integer(x), is_integer(true) {}
    Arg(long long x) : number(static_cast<double>(x)), integer(x), is_integer(true) {}
    Arg(unsigned x) : number(x), integer(x), is_integer(true) {}
};

/// fn(index=i, corruption=c) style named argument.
struct NamedArg {
    std::string name;
    Arg value;
};
inline NamedArg arg(std::string name, Arg value) { return {std::move(name), std::move(value)}; }

using Updates = std::vector<std::pair<SharedVariable, Variable>>;
using Givens = std::vector<std::pair<Variable, Variable>>;

struct Plan;

/// What a loop's step (ops/scan) takes from the function that runs the loop: it is compiled and
/// run with the same profiling and NaN checks.
struct LoopOptions {
    bool profile = false, nan_guard = false, nan_guard_big = false;
    bool operator==(const LoopOptions&) const = default;
};

class Function {
public:
    /// Positional call; missing trailing arguments take their inputs' defaults.
    std::vector<Tensor> operator()(const std::vector<Arg>& args = {});
    /// Call with named arguments (any order); unnamed inputs take their defaults.
    std::vector<Tensor> call_named(const std::vector<NamedArg>& args);
    /// Positional arguments for the first inputs, named ones for others (f(1, b=2)).
    std::vector<Tensor> call(const std::vector<Arg>& positional, const std::vector<NamedArg>& named);
    /// The single output's value as a double (a function with one scalar output).
    double scalar(const std::vector<Arg>& args = {});
    /// A positional call whose results come by the names their Outs were given (outputs
    /// without a name are left out).
    std::map<std::string, Tensor> named(const std::vector<Arg>& args = {});
    /// The outputs' names, "" where none was given.
    std::vector<std::string> output_names() const;
    /// The value an input with a default (or an update) currently takes when a call leaves it
    /// out, by input name; set_input_value replaces it (converted as a call argument is).
    Tensor input_value(const std::string& name) const;
    void set_input_value(const std::string& name, const Tensor& value);

    /// The graph after rewrites: outputs, then update values (marked).
    std::string debugprint(bool print_type = true) const;
    std::string to_dot() const;
    /// One self-contained HTML page showing the steps as a graph laid out by Graphviz's dot
    /// program (run now; THEANINE_DOT names it when it is not "dot" on PATH): each step's op,
    /// the line that built it, output types, the last call's shapes and buffer bytes, whether
    /// it runs in place, and with CompileOptions::profile its time; inputs, shared variables,
    /// constants, outputs and updates marked. Pan, zoom, click a node for its details.
    /// Throws UsageError when dot cannot be run or fails.
    std::string to_html() const;
    /// "rewrite X replaced A by B" lines from compilation.
    const std::vector<std::string>& rewrite_log() const;
    /// Names of the ops in execution order.
    std::vector<std::string> op_names() const;
    std::size_t n_steps() const;
    /// The steps the planner lets overwrite an input's buffer, e.g.
    /// "Gemm{T,N} writes output 0 into input 0 (W)", and the Joins whose inputs are computed
    /// in place ("Join{axis=0}'s inputs are written into its output").
    const std::vector<std::string>& in_place() const;
    /// With CompileOptions::profile: the calls so far, the time of each step summed over
    /// them, and the time per op class, largest first (as Theano's profile=True prints).
    std::string profile_summary() const;
    /// Bytes of tensor storage the function keeps between calls for its intermediate values
    /// (slots and the liveness pool; inputs, constants and shared values not counted).
    std::size_t buffer_bytes() const;

    /// Theano's Function.copy: the same definition compiled again into an independent function
    /// (its own buffers; calls of one never change the other's results). swap pairs each shared
    /// variable with one of the same type that the copy reads and updates in its place;
    /// delete_updates leaves out every update, the default ones too.
    Function copy(const std::vector<std::pair<SharedVariable, SharedVariable>>& swap = {},
                  bool delete_updates = false) const;

    ~Function();
    Function(Function&&) noexcept;
    Function& operator=(Function&&) noexcept;

private:
    friend Function function(const std::vector<In>&, const std::vector<Out>&, const Updates&, const Givens&,
                             const CompileOptions&);
    friend struct ScanAccess;  ///< ops/scan.cpp runs a loop's compiled step directly
    Function();
    Plan& plan() const;  ///< throws UsageError on a moved-from Function
    std::unique_ptr<Plan> plan_;
};

Function function(const std::vector<In>& inputs, const std::vector<Out>& outputs,
                  const Updates& updates = {}, const Givens& givens = {},
                  const CompileOptions& options = CompileOptions());

/// The same with a std::vector<Variable> of outputs (braced lists take the overload above).
template <class V>
    requires std::same_as<std::remove_cvref_t<V>, std::vector<Variable>>
Function function(const std::vector<In>& inputs, V&& outputs, const Updates& updates = {},
                  const Givens& givens = {}, const CompileOptions& options = CompileOptions()) {
    return function(inputs, std::vector<Out>(outputs.begin(), outputs.end()), updates, givens, options);
}

}  // namespace theanine
