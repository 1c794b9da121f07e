#include "compile/function.hpp"

#include <algorithm>
#include <cstdio>
#include <map>
#include <queue>
#include <set>
#include <unordered_set>

#include <fmt/format.h>

#include "compile/ownership.hpp"
#include "compile/plan.hpp"
#include "graph/printing.hpp"
#include "ops/shape.hpp"

namespace theanine {

CompileOptions::CompileOptions() {
    const Config& c = config();
    rewrites.none = c.optimizer_none;
    rewrites.excluding = c.optimizer_excluding;
    rewrites.including = c.optimizer_including;
    verbose = c.optimizer_verbose;
    profile = c.profile;
    nan_guard = c.nan_guard;
}

In::In(const Variable& v, double default_value, std::string n)
    : var(v), value(Tensor::full(v.dtype(), {}, default_value)), name(n.empty() ? v.name() : std::move(n)) {
    if (v.ndim() != 0) {
        throw UsageError(fmt::format("In('{}'): a number default needs a scalar input, got {}", v.label(), v.type().str()));
    }
}

Function::Function() = default;
Function::~Function() = default;
Function::Function(Function&&) noexcept = default;
Function& Function::operator=(Function&&) noexcept = default;

Plan& Function::plan() const {
    if (!plan_) throw UsageError("function call: this Function was moved from; it has no compiled plan");
    return *plan_;
}

namespace {

std::string input_label(std::size_t i, const InputBinding& b) {
    return b.name.empty() ? fmt::format("input {}", i) : fmt::format("input {} ('{}')", i, b.name);
}

// Marks a plan busy for the length of a call: a Function is not reentrant.
class CallGuard {
public:
    explicit CallGuard(Plan& p) : p_(p) {
        if (p_.busy.exchange(true)) {
            throw UsageError("function call: this Function is already running a call (from another thread); a "
                             "Function is not reentrant: compile one per thread");
        }
    }
    ~CallGuard() { p_.busy.store(false); }
    CallGuard(const CallGuard&) = delete;
    CallGuard& operator=(const CallGuard&) = delete;

private:
    Plan& p_;
};

}  // namespace

std::vector<Tensor> Function::operator()(const std::vector<Arg>& args) { return call(args, {}); }

std::vector<Tensor> Function::call_named(const std::vector<NamedArg>& args) { return call({}, args); }

std::vector<Tensor> Function::call(const std::vector<Arg>& positional, const std::vector<NamedArg>& named) {
    Plan& p = plan();
    CallGuard guard(p);
    if (positional.size() > p.inputs.size()) {
        throw UsageError(fmt::format("function call: {} arguments given, the function takes {}", positional.size(),
                                     p.inputs.size()));
    }
    std::vector<bool> given(p.inputs.size(), false);
    for (std::size_t i = 0; i < positional.size(); ++i) {
        p.slots[p.inputs[i].slot] = p.bind_arg(p.inputs[i], i, positional[i]);
        given[i] = true;
    }
    for (const NamedArg& a : named) {
        std::size_t i = 0;
        while (i < p.inputs.size() && p.inputs[i].name != a.name) ++i;
        if (i == p.inputs.size()) {
            std::string names;
            for (const auto& b : p.inputs) names += (names.empty() ? "" : ", ") + b.name;
            throw UsageError(fmt::format("function call: no input named '{}' (inputs: {})", a.name, names));
        }
        if (given[i]) {
            throw UsageError(fmt::format("function call: input '{}' given twice{}", a.name,
                                         i < positional.size() ? " (by position and by name)" : ""));
        }
        given[i] = true;
        p.slots[p.inputs[i].slot] = p.bind_arg(p.inputs[i], i, a.value);
    }
    for (std::size_t i = 0; i < p.inputs.size(); ++i) {
        if (given[i]) continue;
        const InputBinding& b = p.inputs[i];
        if (!b.default_value) {
            if (named.empty()) {
                throw UsageError(fmt::format("function call: missing argument for {} ({} given, {} needed)",
                                             input_label(i, b), positional.size(), p.inputs.size()));
            }
            throw UsageError(fmt::format("function call: missing argument for {}", input_label(i, b)));
        }
        p.slots[b.slot] = *b.default_value;
    }
    // An input kernels may overwrite gets a private contiguous copy when its buffer is a view
    // with gaps or is also another input's.
    for (std::size_t i = 0; i < p.inputs.size(); ++i) {
        if (!p.inputs[i].is_mutable) continue;
        Tensor& t = p.slots[p.inputs[i].slot];
        bool shared_buffer = !t.is_contiguous();
        for (std::size_t j = 0; j < p.inputs.size() && !shared_buffer; ++j) {
            shared_buffer = j != i && t.shares_storage(p.slots[p.inputs[j].slot]);
        }
        if (shared_buffer) t = t.copy();
    }
    std::vector<Tensor> out = p.run();
    // The call succeeded: inputs with an update keep its result.
    for (auto& b : p.inputs) {
        if (b.kept_result >= 0) b.default_value = out[static_cast<std::size_t>(b.kept_result)];
    }
    out.resize(p.n_user_outputs);
    return out;
}

Tensor Function::input_value(const std::string& name) const {
    const Plan& p = plan();
    for (const auto& b : p.inputs) {
        if (b.name != name) continue;
        if (!b.default_value) throw UsageError(fmt::format("Function::input_value: input '{}' has no value", name));
        return b.default_value->copy();
    }
    throw UsageError(fmt::format("Function::input_value: no input named '{}'", name));
}

void Function::set_input_value(const std::string& name, const Tensor& value) {
    Plan& p = plan();
    CallGuard guard(p);
    for (std::size_t i = 0; i < p.inputs.size(); ++i) {
        InputBinding& b = p.inputs[i];
        if (b.name != name) continue;
        b.default_value = p.bind_arg(b, i, Arg(value)).copy();
        return;
    }
    throw UsageError(fmt::format("Function::set_input_value: no input named '{}'", name));
}

std::map<std::string, Tensor> Function::named(const std::vector<Arg>& args) {
    std::vector<Tensor> out = (*this)(args);
    const auto& outs = plan_->definition->outputs;
    std::map<std::string, Tensor> by_name;
    for (std::size_t i = 0; i < outs.size(); ++i) {
        if (!outs[i].name.empty()) by_name.emplace(outs[i].name, std::move(out[i]));
    }
    return by_name;
}

std::vector<std::string> Function::output_names() const {
    if (!plan_ || !plan_->definition) throw UsageError("Function::output_names: the function was moved from");
    std::vector<std::string> names;
    for (const Out& o : plan_->definition->outputs) names.push_back(o.name);
    return names;
}

double Function::scalar(const std::vector<Arg>& args) {
    auto out = (*this)(args);
    if (out.size() != 1) throw UsageError(fmt::format("Function::scalar: the function has {} outputs", out.size()));
    return out[0].item();
}

std::string Function::debugprint(bool print_type) const {
    PrintOptions opt;
    opt.print_type = print_type;
    std::string s = theanine::debugprint(plan().outputs, opt);
    for (const auto& [name, v] : plan().update_values) {
        s += "update " + name + ":\n" + theanine::debugprint(v, opt);
    }
    return s;
}

std::string Function::to_dot() const {
    std::vector<Variable> all = plan().outputs;
    for (const auto& u : plan().update_values) all.push_back(u.second);
    return theanine::to_dot(all);
}

const std::vector<std::string>& Function::rewrite_log() const { return plan().log; }

std::vector<std::string> Function::op_names() const {
    std::vector<std::string> names;
    for (const Step& s : plan().steps) names.push_back(s.op->name());
    return names;
}

std::size_t Function::n_steps() const { return plan().steps.size(); }

const std::vector<std::string>& Function::in_place() const { return plan().in_place; }

std::size_t Function::buffer_bytes() const {
    const Plan& p = plan();
    std::unordered_set<const void*> seen;
    std::size_t total = 0;
    auto count = [&](const Tensor& t) {
        if (t.defined() && seen.insert(t.storage_id()).second) total += t.storage_bytes();
    };
    for (const Step& st : p.steps) {
        for (const Tensor* t : st.out) count(*t);
    }
    for (const Tensor& t : p.pool) count(t);
    return total;
}

std::string Function::profile_summary() const {
    const Plan& p = plan();
    if (!p.profile) return "profile: not enabled (CompileOptions::profile or THEANINE_FLAGS=profile=True)\n";
    double total = 0;
    for (double t : p.step_seconds) total += t;
    const double calls = static_cast<double>(std::max<std::int64_t>(p.calls, 1));
    std::string s = fmt::format("profile: {} calls, {:.1f} us per call in the steps\n", p.calls, total / calls * 1e6);
    // Per op class: the name up to its first '{' (Dot22{N,T} and Dot22{N,N} are one class).
    std::map<std::string, std::pair<double, int>> by_class;
    for (std::size_t i = 0; i < p.step_seconds.size(); ++i) {
        std::string name = p.steps[i].op->name();
        auto& e = by_class[name.substr(0, name.find('{'))];
        e.first += p.step_seconds[i];
        e.second += 1;
    }
    std::vector<std::pair<std::string, std::pair<double, int>>> classes(by_class.begin(), by_class.end());
    std::sort(classes.begin(), classes.end(), [](const auto& a, const auto& b) { return a.second.first > b.second.first; });
    s += "  op class             us/call      %  steps\n";
    for (const auto& [name, e] : classes) {
        s += fmt::format("  {:<18} {:>9.2f} {:>6.1f}  {:>5}\n", name, e.first / calls * 1e6,
                         total > 0 ? 100 * e.first / total : 0.0, e.second);
    }
    s += "  step  op                                        us/call      %\n";
    for (std::size_t i = 0; i < p.step_seconds.size(); ++i) {
        std::string name = p.steps[i].op->name();
        if (name.size() > 40) name = name.substr(0, 37) + "...";
        s += fmt::format("  {:>4}  {:<40} {:>9.2f} {:>6.1f}\n", i, name, p.step_seconds[i] / calls * 1e6,
                         total > 0 ? 100 * p.step_seconds[i] / total : 0.0);
    }
    // A loop's step is a compiled function of its own: its profile, per call of the step.
    for (std::size_t i = 0; i < p.steps.size(); ++i) {
        const std::string inner = p.steps[i].op->inner_profile();
        if (inner.empty()) continue;
        s += fmt::format("  inner steps of step {} ({}), per step of the loop:\n", i, p.steps[i].op->name());
        std::size_t at = 0;
        while (at < inner.size()) {
            const std::size_t eol = inner.find('\n', at);
            s += "    " + inner.substr(at, eol - at) + "\n";
            if (eol == std::string::npos) break;
            at = eol + 1;
        }
    }
    return s;
}

namespace {

// What the compile stages hand each other.
struct Compilation {
    std::vector<In> inputs;
    std::size_t n_outputs = 0;
    std::vector<std::shared_ptr<SharedCell>> update_cells;
    std::vector<std::string> update_names;
    std::vector<Variable> all;  // the outputs, then the update values
    std::vector<std::shared_ptr<const Node>> applies;  // apply nodes, topological order
    VarMap<int> slot_of;
    InPlaceGrants grants;
};

// Stage: the inputs are distinct symbolic variables whose defaults fit; every update names a
// shared variable once and keeps its type.
void check_signature(const std::vector<In>& inputs, const std::vector<Out>& outputs, const Updates& updates,
                     Compilation& c) {
    std::set<std::string> out_names;
    for (std::size_t i = 0; i < outputs.size(); ++i) {
        const std::string& n = outputs[i].name;
        if (!n.empty() && !out_names.insert(n).second) {
            throw UsageError(fmt::format("function: output {} is named '{}' like an earlier output; names must differ", i, n));
        }
        c.all.push_back(outputs[i].var);
    }
    c.n_outputs = outputs.size();
    VarMap<std::size_t> input_pos;
    for (std::size_t i = 0; i < inputs.size(); ++i) {
        const Variable& v = inputs[i].var;
        if (!v.defined()) throw UsageError(fmt::format("function: input {} is an undefined Variable", i));
        if (!v.is_input()) {
            throw UsageError(fmt::format("function: input {} ('{}') is a {}; inputs must be symbolic variables "
                                         "(shared variables are read implicitly)", i, v.label(),
                                         v.is_shared() ? "shared variable" : v.is_constant() ? "constant" : "computed value"));
        }
        if (input_pos.count(key(v))) throw UsageError(fmt::format("function: input {} ('{}') is listed twice", i, v.label()));
        input_pos[key(v)] = i;
        if (inputs[i].value && !v.type().accepts(*inputs[i].value)) {
            throw UsageError(fmt::format("function: the default value of input {} ('{}') does not fit {}", i, v.label(),
                                         v.type().str()));
        }
    }
    for (std::size_t i = 0; i < outputs.size(); ++i) {
        if (!outputs[i].var.defined()) throw UsageError(fmt::format("function: output {} is an undefined Variable", i));
    }
    std::unordered_set<const SharedCell*> updated;
    for (std::size_t i = 0; i < updates.size(); ++i) {
        const auto& [sv, expr] = updates[i];
        if (!sv.defined() || !sv.is_shared()) throw UsageError(fmt::format("function: update {} does not name a shared variable", i));
        if (!expr.defined()) throw UsageError(fmt::format("function: update {} of '{}' is an undefined Variable", i, sv.label()));
        if (expr.dtype() != sv.dtype() || expr.ndim() != sv.ndim()) {
            throw UsageError(fmt::format("function: update {} of shared variable '{}' ({}) has type {}; an update must "
                                         "keep the variable's dtype and rank", i, sv.label(), sv.type().str(), expr.type().str()));
        }
        for (int d = 0; d < sv.ndim(); ++d) {
            if (sv.broadcastable()[d] && !expr.broadcastable()[d]) {
                throw UsageError(fmt::format("function: update {} of shared variable '{}' ({}) has type {}: axis {} is "
                                             "broadcastable (size 1) in the variable but not in the update", i,
                                             sv.label(), sv.type().str(), expr.type().str(), d));
            }
        }
        if (!updated.insert(sv.node().cell.get()).second) {
            throw UsageError(fmt::format("function: shared variable '{}' is updated twice", sv.label()));
        }
        c.update_cells.push_back(sv.node().cell);
        c.all.push_back(expr);
        c.update_names.push_back(sv.label());
    }
}

// Stage: givens replace variables everywhere (clone_with_replace), then the default updates
// of the shared variables the substituted graph still reads (generator states) join the
// updates, with the givens applied to them too. All of it is cloned in one pass, so a
// random node that draws a sample and advances its state stays one node. A shared variable
// that a given replaces brings no default update, as in Theano.
void substitute_givens(const Givens& givens, const CompileOptions& options, Compilation& c) {
    VarMap<Variable> replace;
    for (std::size_t i = 0; i < givens.size(); ++i) {
        const auto& [from, to] = givens[i];
        if (!from.defined() || !to.defined()) throw UsageError(fmt::format("function: givens entry {} has an undefined Variable", i));
        if (from.dtype() != to.dtype() || from.ndim() != to.ndim()) {
            throw UsageError(fmt::format("function: givens entry {} replaces '{}' ({}) by a value of type {}; the types "
                                         "must match", i, from.label(), from.type().str(), to.type().str()));
        }
        for (const In& in : c.inputs) {
            if (in.var.same(from)) {
                throw UsageError(fmt::format("function: givens entry {} replaces '{}', which is an input of the function; "
                                             "an input is either passed or given, not both", i, from.label()));
            }
        }
        replace[key(from)] = to;
    }
    std::unordered_set<const SharedCell*> updated;
    for (const auto& cell : c.update_cells) updated.insert(cell.get());
    for (const auto& sv : options.no_default_updates_for) {
        if (sv.defined() && sv.is_shared()) updated.insert(sv.node().cell.get());
    }
    std::vector<Variable> before = c.all;
    while (true) {
        std::vector<Variable> after = clone_with_replace(before, replace);
        bool grew = false;
        if (!options.no_default_updates) {
            for (const auto& node : toposort(after)) {
                if (node->kind != NodeKind::shared || updated.count(node->cell.get())) continue;
                Variable upd = default_update_of(node);
                if (!upd.defined()) continue;
                updated.insert(node->cell.get());
                c.update_cells.push_back(node->cell);
                before.push_back(upd);
                c.update_names.push_back(node->name.empty() ? "<shared>" : node->name);
                grew = true;
            }
        }
        if (!grew) {
            c.all = std::move(after);
            return;
        }
    }
}

// Stage: every input is used by an output or an update (CompileOptions::on_unused_input).
void check_unused_inputs(const CompileOptions& options, Compilation& c) {
    if (options.on_unused_input == CompileOptions::UnusedInput::ignore) return;
    std::unordered_set<const Node*> reached;
    for (const auto& node : toposort(c.all)) reached.insert(node.get());
    for (std::size_t i = 0; i < c.inputs.size(); ++i) {
        if (reached.count(&c.inputs[i].var.node())) continue;
        const std::string msg = fmt::format(
            "function: input {} ('{}') is not used by any output or update (CompileOptions::on_unused_input is {}; "
            "set it to warn or ignore to allow this)", i, c.inputs[i].var.label(),
            options.on_unused_input == CompileOptions::UnusedInput::raise ? "raise" : "warn");
        if (options.on_unused_input == CompileOptions::UnusedInput::raise) throw UsageError(msg);
        std::fprintf(stderr, "theanine warning: %s\n", msg.c_str());
    }
}

// Stage: no output or update is built on an undefined gradient (a not_differentiable marker
// that reached the graph inside a larger expression): refused now, not when called.
void check_defined_gradients(const Compilation& c) {
    for (const auto& node : toposort(c.all)) {
        if (node->kind != NodeKind::apply) continue;
        const Variable v(node, 0);
        if (!is_not_differentiable(v)) continue;
        const std::string reason = not_differentiable_reason(v);
        throw UsageError(fmt::format("function: the graph uses an undefined gradient, {}{}; a function cannot compute "
                                     "it", node->op->name(), reason.empty() ? "" : " (" + reason + ")"));
    }
}

// Stage: one slot per variable (an in-place output later takes its input's slot). Inputs
// first, in order; constants hold their values; shared values and views are bound per call.
void assign_slots(Compilation& c, Plan& p) {
    auto order = toposort(c.all);
    std::size_t n_slots = c.inputs.size();
    for (const auto& node : order) n_slots += static_cast<std::size_t>(node->n_outputs());
    p.slots.resize(n_slots);  // never resized again: steps hold pointers into it
    int next = 0;
    for (const In& in : c.inputs) {
        p.inputs.push_back(InputBinding{next, in.var, in.name, in.value, in.borrow, Tensor()});
        c.slot_of[key(in.var)] = next;
        p.transient.push_back(next);
        ++next;
    }
    for (const auto& node : order) {
        p.keepalive.push_back(node);
        if (node->kind == NodeKind::input) {
            if (!c.slot_of.count(VarKey{node.get(), 0})) {
                throw UsageError(fmt::format(
                    "function: the graph needs the input '{}' ({}), which is neither in the inputs list nor replaced by "
                    "the givens", node->name.empty() ? "<unnamed>" : node->name, node->types[0].str()));
            }
            continue;
        }
        if (node->kind == NodeKind::constant) {
            c.slot_of[VarKey{node.get(), 0}] = next;
            p.constant_slots.push_back(next);
            p.slots[next++] = node->value;
            continue;
        }
        if (node->kind == NodeKind::shared) {
            c.slot_of[VarKey{node.get(), 0}] = next;
            p.shared.emplace_back(next, node->cell);
            p.transient.push_back(next);
            ++next;
            continue;
        }
        std::vector<int> views = node->op->view_map();
        for (int o = 0; o < node->n_outputs(); ++o) {
            c.slot_of[VarKey{node.get(), o}] = next;
            if (o < static_cast<int>(views.size()) && views[o] >= 0) p.transient.push_back(next);
            ++next;
        }
        c.applies.push_back(node);
    }
}

// Stage: the order of the steps. Inputs before users, readers before in-place writers, the
// steps that write into shared variables' buffers (and all that depends on them) last,
// otherwise the topological order.
void schedule(Compilation& c, Plan& p) {
    const auto& applies = c.applies;
    const auto& slot_of = c.slot_of;
    std::unordered_set<const Node*> commit = c.grants.commit;
    for (const auto& n : applies) {
        for (const auto& in : n->inputs) {
            if (in.is_apply() && commit.count(&in.node())) commit.insert(n.get());
        }
    }
    {
        std::unordered_map<const Node*, std::size_t> pos;
        for (std::size_t i = 0; i < applies.size(); ++i) pos[applies[i].get()] = i;
        std::vector<std::vector<std::size_t>> succ(applies.size());
        std::vector<int> indeg(applies.size(), 0);
        auto edge = [&](const Node* from, const Node* to) {
            succ[pos.at(from)].push_back(pos.at(to));
            indeg[pos.at(to)]++;
        };
        for (const auto& n : applies) {
            for (const auto& in : n->inputs) {
                if (in.is_apply()) edge(in.node_ptr().get(), n.get());
            }
        }
        for (auto [r, d] : c.grants.after) edge(r, d);
        // Collectives in the order of their sequence numbers, the same in every process.
        std::vector<std::pair<std::int64_t, const Node*>> collectives;
        for (const auto& n : applies) {
            if (auto seq = n->op->collective_sequence()) collectives.emplace_back(*seq, n.get());
        }
        std::sort(collectives.begin(), collectives.end());
        for (std::size_t k = 1; k < collectives.size(); ++k) edge(collectives[k - 1].second, collectives[k].second);
        std::priority_queue<std::size_t, std::vector<std::size_t>, std::greater<>> ready;
        // Asynchronous steps rank first (their work overlaps what runs next), commit steps
        // after every other step.
        const std::size_t n = applies.size();
        auto rank = [&](std::size_t i) {
            const Node* node = applies[i].get();
            return i + n * (commit.count(node) ? 2 : node->op->is_async() ? 0 : 1);
        };
        for (std::size_t i = 0; i < applies.size(); ++i) {
            if (indeg[i] == 0) ready.push(rank(i));
        }
        std::vector<std::shared_ptr<const Node>> sched;
        while (!ready.empty()) {
            std::size_t i = ready.top() % n;
            ready.pop();
            sched.push_back(applies[i]);
            for (std::size_t j : succ[i]) {
                if (--indeg[j] == 0) ready.push(rank(j));
            }
        }
        internal_check(sched.size() == applies.size(), "function: the in-place schedule has a cycle");
        p.first_commit = sched.size();
        for (std::size_t k = 0; k < sched.size(); ++k) {
            if (commit.count(sched[k].get())) {
                p.first_commit = k;
                break;
            }
        }
        for (const auto& node : sched) {
            Step s;
            s.op = node->op.get();
            s.node = node.get();
            for (const auto& in : node->inputs) s.in.push_back(&p.slots[slot_of.at(key(in))]);
            for (int o = 0; o < node->n_outputs(); ++o) s.out.push_back(&p.slots[slot_of.at(VarKey{node.get(), o})]);
            p.steps.push_back(std::move(s));
        }
    }
}

// Stage: where asynchronous work ends. A step whose op is asynchronous (Op::is_async) is
// finished just before the first later step that reads one of its outputs, or at the end of
// the steps when none does (results and updates are read after them).
void plan_async(Plan& p) {
    for (std::size_t i = 0; i < p.steps.size(); ++i) {
        const Step& st = p.steps[i];
        if (!st.op->is_async()) continue;
        std::size_t reader = p.steps.size();
        for (std::size_t j = i + 1; j < p.steps.size() && reader == p.steps.size(); ++j) {
            for (const Tensor* t : p.steps[j].in) {
                if (std::find(st.out.begin(), st.out.end(), t) != st.out.end()) reader = j;
            }
        }
        if (reader < p.steps.size()) {
            p.steps[reader].finish.push_back(i);
        } else {
            p.finish_at_end.push_back(i);
        }
    }
}

// Stage: placement. The inputs of a Join along axis 0 are written straight into its output
// when each is a plain computed value in a slot of its own that nothing returns or
// overwrites, and the Join's output is neither returned nor overwritten.
void place_joins(Compilation& c, Plan& p) {
    const auto& all = c.all;
    const auto& slot_of = c.slot_of;
    {
        VarMap<bool> returned;
        for (const auto& v : all) returned[key(v)] = true;
        std::unordered_map<int, int> slot_users;
        for (const auto& [k, slot] : slot_of) slot_users[slot]++;
        std::unordered_set<int> destroyed_slots;
        for (const Step& st : p.steps) {
            std::vector<int> dm = st.op->destroy_map();
            for (int o = 0; o < static_cast<int>(dm.size()); ++o) {
                if (dm[o] >= 0) destroyed_slots.insert(static_cast<int>(st.in[dm[o]] - p.slots.data()));
            }
        }
        for (Step& st : p.steps) {
            const auto* join = dynamic_cast<const Join*>(st.op);
            if (!join || join->axis() != 0 || returned.count(VarKey{st.node, 0})) continue;
            if (destroyed_slots.count(static_cast<int>(st.out[0] - p.slots.data()))) continue;
            std::vector<Tensor*> place;
            std::unordered_set<const Tensor*> seen;
            bool ok = true;
            for (std::size_t i = 0; i < st.node->inputs.size() && ok; ++i) {
                const Variable& v = st.node->inputs[i];
                const int slot = slot_of.at(key(v));
                ok = v.is_apply() && !v.node().op->is_async() && !returned.count(key(v)) && slot_users[slot] == 1 &&
                     !destroyed_slots.count(slot) && seen.insert(&p.slots[slot]).second;
                if (ok) {
                    auto vm = v.node().op->view_map();
                    ok = !(v.index() < static_cast<int>(vm.size()) && vm[v.index()] >= 0);
                }
                place.push_back(&p.slots[slot]);
            }
            if (!ok) continue;
            st.place = std::move(place);
            p.in_place.push_back(fmt::format("{}'s inputs are written into its output", st.op->name()));
        }
    }
}

// Stage: liveness. A computed value in a slot of its own (not returned, not an update, not
// overwritten in place, not placed in a Join, none of its views returned) gives its buffer
// back to the pool after its last reader, for a later value of a size that fits.
void plan_liveness(Compilation& c, Plan& p) {
    const auto& all = c.all;
    const auto& slot_of = c.slot_of;
    {
        const int n_steps_i = static_cast<int>(p.steps.size());
        const auto slot_index = [&](const Tensor* t) { return static_cast<int>(t - p.slots.data()); };
        std::vector<int> def(p.slots.size(), -1), last(p.slots.size(), -1);
        std::vector<bool> excluded(p.slots.size(), false);
        p.views_of.assign(p.slots.size(), {});
        p.last_bytes.assign(p.slots.size(), 0);
        for (int s : p.transient) excluded[s] = true;
        for (const auto& v : all) excluded[slot_of.at(key(v))] = true;
        std::unordered_map<int, int> users;
        for (const auto& [k, slot] : slot_of) users[slot]++;
        for (int i = 0; i < n_steps_i; ++i) {
            const Step& st = p.steps[i];
            for (const Tensor* t : st.out) def[slot_index(t)] = def[slot_index(t)] < 0 ? i : def[slot_index(t)];
            for (const Tensor* t : st.in) last[slot_index(t)] = i;
            for (const Tensor* t : st.place) excluded[slot_index(t)] = true;
            if (!st.place.empty()) excluded[slot_index(st.out[0])] = true;
            std::vector<int> dm = st.op->destroy_map();
            for (int o = 0; o < static_cast<int>(dm.size()); ++o) {
                if (dm[o] >= 0) excluded[slot_index(st.in[dm[o]])] = true;
            }
        }
        // An asynchronous step reads its inputs until it is finished (no later step may take
        // their buffers before that; one finished at the end of the steps keeps them to the end).
        for (int j = 0; j < n_steps_i; ++j) {
            for (std::size_t a : p.steps[j].finish) {
                for (const Tensor* t : p.steps[a].in) last[slot_index(t)] = std::max(last[slot_index(t)], j);
            }
        }
        for (std::size_t a : p.finish_at_end) {
            for (const Tensor* t : p.steps[a].in) last[slot_index(t)] = n_steps_i - 1;
        }
        // A view keeps its base alive: the base's last use is its views' last use, and a
        // returned view makes the base escape.
        for (int i = n_steps_i - 1; i >= 0; --i) {
            const Step& st = p.steps[i];
            std::vector<int> vm = st.op->view_map();
            for (int o = 0; o < static_cast<int>(vm.size()) && o < static_cast<int>(st.out.size()); ++o) {
                if (vm[o] < 0) continue;
                const int base = slot_index(st.in[vm[o]]), view = slot_index(st.out[o]);
                last[base] = std::max(last[base], last[view]);
                if (excluded[view] && std::find(p.transient.begin(), p.transient.end(), view) == p.transient.end()) {
                    excluded[base] = true;
                }
                p.views_of[base].push_back(view);
                for (int w : p.views_of[view]) p.views_of[base].push_back(w);
            }
        }
        for (const auto& v : all) {
            // A returned view: every base it was made of escapes too.
            const int s = slot_of.at(key(v));
            for (std::size_t b = 0; b < p.views_of.size(); ++b) {
                if (std::find(p.views_of[b].begin(), p.views_of[b].end(), s) != p.views_of[b].end()) excluded[b] = true;
            }
        }
        for (std::size_t s = 0; s < p.slots.size(); ++s) {
            if (excluded[s] || def[s] < 0 || last[s] < 0 || users[static_cast<int>(s)] != 1) continue;
            const Step& producer = p.steps[def[s]];
            std::vector<int> vm = producer.op->view_map();
            const auto out_pos = std::find(producer.out.begin(), producer.out.end(), &p.slots[s]) - producer.out.begin();
            if (out_pos < static_cast<std::ptrdiff_t>(vm.size()) && vm[out_pos] >= 0) continue;  // itself a view
            p.steps[def[s]].acquire.push_back(static_cast<int>(s));
            p.steps[last[s]].release.push_back(static_cast<int>(s));
        }
    }
}

}  // namespace

Function function(const std::vector<In>& inputs, const std::vector<Out>& outputs, const Updates& updates,
                  const Givens& givens, const CompileOptions& options) {
    // The compile stages, in order. Rewrites run on the whole graph (outputs and updates)
    // once givens and default updates are in it; planning needs the rewritten graph.
    Compilation c;
    c.inputs = inputs;
    // Inputs with an update: their update expressions are computed as results after the
    // outputs, and kept as the inputs' values when the call succeeds.
    std::vector<Out> all_outputs = outputs;
    std::vector<std::size_t> kept_inputs;
    for (std::size_t i = 0; i < inputs.size(); ++i) {
        const In& in = inputs[i];
        if (!in.update) continue;
        const Variable& u = *in.update;
        if (!u.defined()) throw UsageError(fmt::format("function: the update of input {} ('{}') is undefined", i, in.var.label()));
        if (!in.value) {
            throw UsageError(fmt::format("function: input {} ('{}') has an update but no value to start from", i,
                                         in.var.label()));
        }
        bool fits = u.dtype() == in.var.dtype() && u.ndim() == in.var.ndim();
        for (int d = 0; fits && d < u.ndim(); ++d) fits = !in.var.broadcastable()[d] || u.broadcastable()[d];
        if (!fits) {
            throw UsageError(fmt::format("function: the update of input {} ('{}', {}) has type {}; it must keep the "
                                         "input's dtype, rank and broadcastable axes", i, in.var.label(),
                                         in.var.type().str(), u.type().str()));
        }
        all_outputs.emplace_back(u);
        kept_inputs.push_back(i);
    }
    check_signature(inputs, all_outputs, updates, c);
    substitute_givens(givens, options, c);
    check_defined_gradients(c);
    check_unused_inputs(options, c);
    RewriteLog log;
    log.verbose = options.verbose;
    c.all = optimize(c.all, options.rewrites, log);

    Function f;
    f.plan_ = std::make_unique<Plan>();
    Plan& p = *f.plan_;
    p.definition = std::make_shared<const Definition>(Definition{inputs, outputs, updates, givens, options});
    p.log = log.lines;
    p.profile = options.profile;
    p.nan_guard = options.nan_guard;
    p.nan_guard_big = options.nan_guard_big;
    p.workers.adapt = options.adapt_workers;
    p.outputs.assign(c.all.begin(), c.all.begin() + static_cast<std::ptrdiff_t>(c.n_outputs));
    for (std::size_t i = 0; i < c.update_cells.size(); ++i) {
        p.update_values.emplace_back(c.update_names[i], c.all[c.n_outputs + i]);
    }
    assign_slots(c, p);
    std::unordered_set<const Node*> mutable_inputs;
    for (std::size_t i = 0; i < inputs.size(); ++i) {
        p.inputs[i].allow_downcast = options.allow_input_downcast;
        p.inputs[i].is_mutable = inputs[i].is_mutable;
        if (inputs[i].is_mutable) mutable_inputs.insert(&inputs[i].var.node());
    }
    for (std::size_t k = 0; k < kept_inputs.size(); ++k) {
        p.inputs[kept_inputs[k]].kept_result = static_cast<int>(outputs.size() + k);
    }
    p.n_user_outputs = outputs.size();
    // In-place grants change slots, so they come before the schedule that orders readers
    // before writers; placement and liveness need the final order.
    c.grants = grant_in_place(c.applies, c.all, c.n_outputs, c.update_cells, c.slot_of, !options.nan_guard,
                              mutable_inputs);
    p.in_place = c.grants.log;
    p.destroyed_cells = c.grants.destroyed_cells;
    schedule(c, p);
    plan_async(p);
    place_joins(c, p);
    plan_liveness(c, p);
    for (std::size_t i = 0; i < c.n_outputs; ++i) {
        p.results.push_back(OutputBinding{c.slot_of.at(key(c.all[i])), all_outputs[i].borrow, Tensor()});
    }
    for (std::size_t i = 0; i < c.update_cells.size(); ++i) {
        p.updates.push_back(UpdateBinding{c.update_cells[i], c.slot_of.at(key(c.all[c.n_outputs + i])), Tensor()});
    }
    return f;
}

Function Function::copy(const std::vector<std::pair<SharedVariable, SharedVariable>>& swap, bool delete_updates) const {
    if (!plan().definition) throw UsageError("Function::copy: this function keeps no definition to compile again");
    const Definition& d = *plan().definition;
    VarMap<Variable> replace;
    for (const auto& [from, to] : swap) {
        if (!from.is_shared() || !to.is_shared()) {
            throw UsageError("Function::copy: swap pairs shared variables with shared variables");
        }
        if (from.type() != to.type()) {
            throw UsageError(fmt::format("Function::copy: cannot swap {} ({}) for {} ({}): the types differ",
                                         from.label(), from.type().str(), to.label(), to.type().str()));
        }
        replace[key(from)] = to;
    }
    // The graph as it was given, with the swapped variables in place: outputs, update values
    // and the givens' replacements in one rebuild, so shared subgraphs stay shared.
    std::vector<Variable> all;
    for (const Out& o : d.outputs) all.push_back(o.var);
    if (!delete_updates) {
        for (const auto& u : d.updates) all.push_back(u.second);
    }
    for (const auto& g : d.givens) all.push_back(g.second);
    if (!replace.empty()) {
        VarMap<bool> used;
        for (const auto& node : toposort(all)) {
            for (const Variable& v : node->inputs) used[key(v)] = true;
            for (int i = 0; i < node->n_outputs(); ++i) used[key(node->output(i))] = true;
        }
        for (const auto& u : d.updates) used[key(u.first)] = true;
        for (const auto& [from, to] : swap) {
            if (!used.count(key(from))) {
                throw UsageError(fmt::format("Function::copy: {} is not used by this function", from.label()));
            }
        }
        all = clone_with_replace(all, replace);
    }
    std::vector<Out> outputs = d.outputs;
    std::size_t k = 0;
    for (Out& o : outputs) o.var = all[k++];
    Updates updates;
    if (!delete_updates) {
        for (const auto& [shared_var, value] : d.updates) {
            auto it = std::find_if(swap.begin(), swap.end(), [&](const auto& s) { return s.first.same(shared_var); });
            updates.emplace_back(it == swap.end() ? shared_var : it->second, all[k++]);
        }
    }
    Givens givens;
    for (const auto& [var, value] : d.givens) {
        auto it = std::find_if(swap.begin(), swap.end(), [&](const auto& s) { return s.first.same(var); });
        givens.emplace_back(it == swap.end() ? var : Variable(it->second), all[k++]);
    }
    CompileOptions options = d.options;
    if (delete_updates) {
        options.no_default_updates = true;
        options.no_default_updates_for.clear();
        // An input read only by an update is unused now; the copy keeps its signature.
        options.on_unused_input = CompileOptions::UnusedInput::ignore;
    }
    Function copied = function(d.inputs, outputs, updates, givens, options);
    // Inputs' current values (kept by an update, or set) carry over, as copies.
    const Plan& from = plan();
    for (std::size_t i = 0; i < from.inputs.size(); ++i) {
        if (from.inputs[i].default_value) copied.plan().inputs[i].default_value = from.inputs[i].default_value->copy();
    }
    return copied;
}

}  // namespace theanine
