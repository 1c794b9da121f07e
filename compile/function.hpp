// function(inputs, outputs, updates, givens): compiles a graph into a callable.
//
// The path of a value: function() substitutes the givens (clone_with_replace), adds the
// default updates of shared variables the graph reads (random generator states), runs the
// rewrite pipeline, and linearises the graph into a Plan: a flat list of steps
// {op, input slots, output slots} over a vector of tensor slots. A call binds the
// arguments and the shared variables' values to their slots, runs every step's kernel,
// collects the outputs, then writes every update at once (so each update sees the old
// values). Slots keep their buffers between calls, so a steady-state call allocates no
// tensor storage; an update hands its freshly computed buffer to the shared variable and
// takes the old one back for the next call.
#pragma once

#include <memory>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "compile/rewrite.hpp"
#include "graph/graph.hpp"

namespace theanine {

struct CompileOptions {
    RewriteSelection rewrites;   // starts from config(): optimizer, optimizer_excluding, ...
    bool verbose = false;        // print "rewrite X replaced A by B" while compiling
    bool profile = false;        // time every step of every call (profile_summary())
    CompileOptions();
};

// An input of a compiled function, optionally with a default value and a name for calls
// by name (Theano's In(variable, value=..., name=...)).
struct In {
    Variable var;
    std::optional<Tensor> value;
    std::string name;
    In(const Variable& v) : var(v), name(v.name()) {}
    In(const Variable& v, const Tensor& default_value, std::string n = "")
        : var(v), value(default_value), name(n.empty() ? v.name() : std::move(n)) {}
    In(const Variable& v, double default_value, std::string n = "");
};

// A call argument: a tensor, or a number converted to the input's dtype.
struct Arg {
    std::optional<Tensor> tensor;
    double number = 0;
    bool is_integer = false;
    std::string name;  // for calls by name
    Arg(const Tensor& t) : tensor(t) {}
    Arg(double x) : number(x) {}
    Arg(float x) : number(x) {}
    Arg(int x) : number(x), is_integer(true) {}
    Arg(long x) : number(static_cast<double>(x)), is_integer(true) {}
    Arg(long long x) : number(static_cast<double>(x)), is_integer(true) {}
};

// fn(index=i, corruption=c) style named argument.
struct NamedArg {
    std::string name;
    Arg value;
};
inline NamedArg arg(std::string name, Arg value) { return {std::move(name), std::move(value)}; }

using Updates = std::vector<std::pair<SharedVariable, Variable>>;
using Givens = std::vector<std::pair<Variable, Variable>>;

struct Plan;

class Function {
public:
    // Positional call; missing trailing arguments take their inputs' defaults.
    std::vector<Tensor> operator()(const std::vector<Arg>& args = {});
    // Call with named arguments (any order); unnamed inputs take their defaults.
    std::vector<Tensor> call_named(const std::vector<NamedArg>& args);
    // The single output's value as a double (a function with one scalar output).
    double scalar(const std::vector<Arg>& args = {});

    // The graph after rewrites: outputs, then update values (marked).
    std::string debugprint(bool print_type = true) const;
    std::string to_dot() const;
    // "rewrite X replaced A by B" lines from compilation.
    const std::vector<std::string>& rewrite_log() const;
    // Names of the ops in execution order.
    std::vector<std::string> op_names() const;
    std::size_t n_steps() const;
    // The steps the planner lets overwrite an input's buffer, e.g.
    // "Gemm{T,N} writes output 0 into input 0 (W)", and the Joins whose inputs are computed
    // in place ("Join{axis=0}'s inputs are written into its output").
    const std::vector<std::string>& in_place() const;
    // With CompileOptions::profile: the calls so far, the time of each step summed over
    // them, and the time per op class, largest first (as Theano's profile=True prints).
    std::string profile_summary() const;
    // Bytes of tensor storage the function keeps between calls for its intermediate values
    // (slots and the liveness pool; inputs, constants and shared values not counted).
    std::size_t buffer_bytes() const;

    ~Function();
    Function(Function&&) noexcept;
    Function& operator=(Function&&) noexcept;

private:
    friend Function function(const std::vector<In>&, const std::vector<Variable>&, const Updates&,
                             const Givens&, const CompileOptions&);
    Function();
    std::unique_ptr<Plan> plan_;
};

Function function(const std::vector<In>& inputs, const std::vector<Variable>& outputs,
                  const Updates& updates = {}, const Givens& givens = {},
                  const CompileOptions& options = CompileOptions());

}  // namespace theanine
