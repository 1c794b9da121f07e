#include "compile/function.hpp"

#include <algorithm>
#include <chrono>
#include <cmath>
#include <map>
#include <iostream>
#include <queue>
#include <unordered_set>

#include <fmt/format.h>

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
}

In::In(const Variable& v, double default_value, std::string n)
    : var(v), value(Tensor::full(v.dtype(), {}, default_value)), name(n.empty() ? v.name() : std::move(n)) {
    if (v.ndim() != 0) {
        throw UsageError(fmt::format("In('{}'): a number default needs a scalar input, got {}", v.label(), v.type().str()));
    }
}

struct Step {
    const Op* op;
    const Node* node;
    std::vector<const Tensor*> in;
    std::vector<Tensor*> out;
    std::vector<Tensor*> place;  // a Join's input slots, to be placed in its output
    std::vector<int> acquire;    // output slots that take a pooled buffer before the step
    std::vector<int> release;    // slots whose value is dead after the step
};

// After a Join along axis 0 has run, its inputs' slots become views of the matching rows of
// its output, so on the next call their producers write there and the Join copies nothing.
void place_join_inputs(Step& s) {
    Tensor& o = *s.out[0];
    if (!o.defined() || !o.is_contiguous()) return;
    std::int64_t at = 0;
    for (Tensor* slot : s.place) {
        if (!slot->defined() || slot->ndim() != o.ndim()) return;
        const std::int64_t n = slot->dim(0);
        *slot = o.slice(0, at, at + n, 1).placed();
        at += n;
    }
}

struct InputBinding {
    int slot;
    Variable var;
    std::string name;
    std::optional<Tensor> default_value;
    Tensor scratch;  // reused for number arguments
};

struct UpdateBinding {
    std::shared_ptr<SharedCell> cell;
    int slot;
    bool swap;
};

struct Plan {
    std::vector<Variable> outputs;
    std::vector<std::pair<std::string, Variable>> update_values;  // for printing
    std::vector<Tensor> slots;
    std::vector<Step> steps;
    std::vector<InputBinding> inputs;
    std::vector<std::pair<int, std::shared_ptr<SharedCell>>> shared;
    std::vector<int> output_slots;
    std::vector<UpdateBinding> updates;
    std::vector<int> transient;  // slots released after each call
    std::vector<std::shared_ptr<const Node>> keepalive;
    std::vector<std::string> log;
    std::vector<std::string> in_place;
    bool profile = false;
    std::int64_t calls = 0;
    std::vector<double> step_seconds;  // with profile: per step, summed over the calls
    // Liveness: buffers of dead values wait in the pool for a later value that fits (the
    // size each slot needed last call); views_of[s] lists the view slots made of slot s.
    std::vector<Tensor> pool;
    std::size_t pool_idle = 0;  // pool[0, pool_idle) has not left the pool during this call
    std::vector<std::size_t> last_bytes;
    std::vector<std::vector<int>> views_of;

    void run_step(Step& s);

    Tensor bind_arg(InputBinding& b, std::size_t position, const Arg& a);
    std::vector<Tensor> run();
};

Function::Function() = default;
Function::~Function() = default;
Function::Function(Function&&) noexcept = default;
Function& Function::operator=(Function&&) noexcept = default;

namespace {

std::string input_label(std::size_t i, const InputBinding& b) {
    return b.name.empty() ? fmt::format("input {}", i) : fmt::format("input {} ('{}')", i, b.name);
}

}  // namespace

Tensor Plan::bind_arg(InputBinding& b, std::size_t position, const Arg& a) {
    const TensorType& type = b.var.type();
    if (a.tensor) {
        const Tensor& t = *a.tensor;
        if (!t.defined()) throw UsageError(fmt::format("function call: {} got an empty tensor", input_label(position, b)));
        if (t.dtype() != type.dtype || t.ndim() != type.ndim()) {
            throw UsageError(fmt::format("function call: {} expects {}, got {} of shape {}", input_label(position, b),
                                         type.str(), dtype_name(t.dtype()), shape_string(t.shape())));
        }
        if (!type.accepts(t)) {
            throw UsageError(fmt::format("function call: {} expects {} (size 1 on broadcastable axes), got shape {}",
                                         input_label(position, b), type.str(), shape_string(t.shape())));
        }
        return t;
    }
    if (type.ndim() != 0) {
        throw UsageError(fmt::format("function call: {} expects {}, got a number", input_label(position, b), type.str()));
    }
    if (!is_float(type.dtype) && std::floor(a.number) != a.number) {
        throw UsageError(fmt::format("function call: {} expects {}, got the non-integer {}", input_label(position, b),
                                     type.str(), a.number));
    }
    if (!(b.scratch.defined() && b.scratch.storage_use_count() == 1)) b.scratch = Tensor::empty(type.dtype, {});
    dispatch(type.dtype, [&]<class T>() { *b.scratch.data<T>() = static_cast<T>(a.number); });
    return b.scratch;
}

void Plan::run_step(Step& s) {
    for (int o : s.acquire) {
        // A pooled buffer the op's ensure() will keep (large enough, at most about twice),
        // the most recently released first, so buffers no step needs stay untouched.
        const std::size_t need = last_bytes[o];
        for (std::size_t k = pool.size(); k-- > 0 && need > 0;) {
            const std::size_t have = pool[k].storage_bytes();
            if (have < need || have > 2 * need + 64) continue;
            slots[o] = std::move(pool[k]);
            if (k < pool_idle) {
                // Keep the untouched ones first: the last untouched one fills the hole.
                --pool_idle;
                if (k != pool_idle) pool[k] = std::move(pool[pool_idle]);
                k = pool_idle;
            }
            if (k + 1 != pool.size()) pool[k] = std::move(pool.back());
            pool.pop_back();
            break;
        }
    }
    s.op->perform(*s.node, s.in, s.out);
    if (!s.place.empty()) place_join_inputs(s);
    for (int r : s.release) {
        for (int v : views_of[r]) slots[v] = Tensor();
        if (!slots[r].defined()) continue;
        last_bytes[r] = static_cast<std::size_t>(slots[r].size()) * dtype_size(slots[r].dtype());
        pool.push_back(std::move(slots[r]));
        slots[r] = Tensor();
    }
}

std::vector<Tensor> Plan::run() {
    for (auto& [slot, cell] : shared) slots[slot] = cell->value;
    pool_idle = pool.size();
    if (profile) {
        step_seconds.resize(steps.size(), 0.0);
        for (std::size_t i = 0; i < steps.size(); ++i) {
            auto t0 = std::chrono::steady_clock::now();
            run_step(steps[i]);
            step_seconds[i] += std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
        }
        ++calls;
    } else {
        for (Step& s : steps) run_step(s);
    }
    std::vector<Tensor> result;
    result.reserve(output_slots.size());
    for (int s : output_slots) result.push_back(slots[s]);
    for (UpdateBinding& u : updates) {
        if (u.swap) {
            std::swap(u.cell->value, slots[u.slot]);
        } else {
            u.cell->value = slots[u.slot];
        }
    }
    for (int s : transient) slots[s] = Tensor();
    // Buffers no step took during this call are more than the plan needs: free them.
    pool.erase(pool.begin(), pool.begin() + static_cast<std::ptrdiff_t>(std::min(pool_idle, pool.size())));
    return result;
}

std::vector<Tensor> Function::operator()(const std::vector<Arg>& args) {
    Plan& p = *plan_;
    if (args.size() > p.inputs.size()) {
        throw UsageError(fmt::format("function call: {} arguments given, the function takes {}", args.size(),
                                     p.inputs.size()));
    }
    for (std::size_t i = 0; i < p.inputs.size(); ++i) {
        InputBinding& b = p.inputs[i];
        if (i < args.size()) {
            p.slots[b.slot] = p.bind_arg(b, i, args[i]);
        } else if (b.default_value) {
            p.slots[b.slot] = *b.default_value;
        } else {
            throw UsageError(fmt::format("function call: missing argument for {} ({} given, {} needed)",
                                         input_label(i, b), args.size(), p.inputs.size()));
        }
    }
    return p.run();
}

std::vector<Tensor> Function::call_named(const std::vector<NamedArg>& args) {
    Plan& p = *plan_;
    std::vector<bool> given(p.inputs.size(), false);
    for (const NamedArg& a : args) {
        std::size_t i = 0;
        while (i < p.inputs.size() && p.inputs[i].name != a.name) ++i;
        if (i == p.inputs.size()) {
            std::string names;
            for (const auto& b : p.inputs) names += (names.empty() ? "" : ", ") + b.name;
            throw UsageError(fmt::format("function call: no input named '{}' (inputs: {})", a.name, names));
        }
        if (given[i]) throw UsageError(fmt::format("function call: input '{}' given twice", a.name));
        given[i] = true;
        p.slots[p.inputs[i].slot] = p.bind_arg(p.inputs[i], i, a.value);
    }
    for (std::size_t i = 0; i < p.inputs.size(); ++i) {
        if (given[i]) continue;
        if (!p.inputs[i].default_value) {
            throw UsageError(fmt::format("function call: missing argument for {}", input_label(i, p.inputs[i])));
        }
        p.slots[p.inputs[i].slot] = *p.inputs[i].default_value;
    }
    return p.run();
}

double Function::scalar(const std::vector<Arg>& args) {
    auto out = (*this)(args);
    if (out.size() != 1) throw UsageError(fmt::format("Function::scalar: the function has {} outputs", out.size()));
    return out[0].item();
}

std::string Function::debugprint(bool print_type) const {
    PrintOptions opt;
    opt.print_type = print_type;
    std::string s = theanine::debugprint(plan_->outputs, opt);
    for (const auto& [name, v] : plan_->update_values) {
        s += "update " + name + ":\n" + theanine::debugprint(v, opt);
    }
    return s;
}

std::string Function::to_dot() const {
    std::vector<Variable> all = plan_->outputs;
    for (const auto& u : plan_->update_values) all.push_back(u.second);
    return theanine::to_dot(all);
}

const std::vector<std::string>& Function::rewrite_log() const { return plan_->log; }

std::vector<std::string> Function::op_names() const {
    std::vector<std::string> names;
    for (const Step& s : plan_->steps) names.push_back(s.op->name());
    return names;
}

std::size_t Function::n_steps() const { return plan_->steps.size(); }

const std::vector<std::string>& Function::in_place() const { return plan_->in_place; }

std::size_t Function::buffer_bytes() const {
    const Plan& p = *plan_;
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
    const Plan& p = *plan_;
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
    return s;
}

Function function(const std::vector<In>& inputs, const std::vector<Variable>& outputs, const Updates& updates,
                  const Givens& givens, const CompileOptions& options) {
    // 1. Check the inputs and updates.
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
        if (!outputs[i].defined()) throw UsageError(fmt::format("function: output {} is an undefined Variable", i));
    }
    std::vector<std::pair<std::shared_ptr<SharedCell>, Variable>> all_updates;
    std::unordered_set<const SharedCell*> updated;
    std::vector<std::string> update_names;
    for (std::size_t i = 0; i < updates.size(); ++i) {
        const auto& [sv, expr] = updates[i];
        if (!sv.defined() || !sv.is_shared()) throw UsageError(fmt::format("function: update {} does not name a shared variable", i));
        if (!expr.defined()) throw UsageError(fmt::format("function: update {} of '{}' is an undefined Variable", i, sv.label()));
        if (expr.dtype() != sv.dtype() || expr.ndim() != sv.ndim()) {
            throw UsageError(fmt::format("function: update {} of shared variable '{}' ({}) has type {}; an update must "
                                         "keep the variable's dtype and rank", i, sv.label(), sv.type().str(), expr.type().str()));
        }
        if (!updated.insert(sv.node().cell.get()).second) {
            throw UsageError(fmt::format("function: shared variable '{}' is updated twice", sv.label()));
        }
        all_updates.emplace_back(sv.node().cell, expr);
        update_names.push_back(sv.label());
    }
    // 2. Default updates of the shared variables the graph reads (generator states).
    for (bool grew = true; grew;) {
        grew = false;
        std::vector<Variable> roots = outputs;
        for (auto& u : all_updates) roots.push_back(u.second);
        for (const auto& node : toposort(roots)) {
            if (node->kind != NodeKind::shared || updated.count(node->cell.get())) continue;
            auto upd = node->cell->default_update_node.lock();
            if (!upd) continue;
            updated.insert(node->cell.get());
            all_updates.emplace_back(node->cell, Variable(upd, node->cell->default_update_index));
            update_names.push_back(node->name.empty() ? "<shared>" : node->name);
            grew = true;
        }
    }
    // 3. Givens.
    VarMap<Variable> replace;
    for (std::size_t i = 0; i < givens.size(); ++i) {
        const auto& [from, to] = givens[i];
        if (!from.defined() || !to.defined()) throw UsageError(fmt::format("function: givens entry {} has an undefined Variable", i));
        if (from.dtype() != to.dtype() || from.ndim() != to.ndim()) {
            throw UsageError(fmt::format("function: givens entry {} replaces '{}' ({}) by a value of type {}; the types "
                                         "must match", i, from.label(), from.type().str(), to.type().str()));
        }
        replace[key(from)] = to;
    }
    std::vector<Variable> all = outputs;
    for (auto& u : all_updates) all.push_back(u.second);
    all = clone_with_replace(all, replace);

    // 4. Rewrites.
    RewriteLog log;
    log.verbose = options.verbose;
    all = optimize(all, options.rewrites, log);

    Function f;
    f.plan_ = std::make_unique<Plan>();
    Plan& p = *f.plan_;
    p.log = log.lines;
    p.profile = options.profile;
    p.outputs.assign(all.begin(), all.begin() + static_cast<std::ptrdiff_t>(outputs.size()));
    for (std::size_t i = 0; i < all_updates.size(); ++i) {
        p.update_values.emplace_back(update_names[i], all[outputs.size() + i]);
    }

    // 5. Slots: one per variable (an in-place output later shares its input's slot).
    auto order = toposort(all);
    VarMap<int> slot_of;
    std::size_t n_slots = inputs.size();
    for (const auto& node : order) n_slots += static_cast<std::size_t>(node->n_outputs());
    p.slots.resize(n_slots);  // never resized again: steps hold pointers into it
    int next = 0;
    for (std::size_t i = 0; i < inputs.size(); ++i) {
        InputBinding b{next, inputs[i].var, inputs[i].name, inputs[i].value, Tensor()};
        slot_of[key(inputs[i].var)] = next;
        p.transient.push_back(next);
        p.inputs.push_back(std::move(b));
        ++next;
    }
    std::vector<std::shared_ptr<const Node>> applies;
    for (const auto& node : order) {
        p.keepalive.push_back(node);
        if (node->kind == NodeKind::input) {
            if (!slot_of.count(VarKey{node.get(), 0})) {
                throw UsageError(fmt::format(
                    "function: the graph needs the input '{}' ({}), which is neither in the inputs list nor replaced by "
                    "the givens", node->name.empty() ? "<unnamed>" : node->name, node->types[0].str()));
            }
            continue;
        }
        if (node->kind == NodeKind::constant) {
            slot_of[VarKey{node.get(), 0}] = next;
            p.slots[next++] = node->value;
            continue;
        }
        if (node->kind == NodeKind::shared) {
            slot_of[VarKey{node.get(), 0}] = next;
            p.shared.emplace_back(next, node->cell);
            p.transient.push_back(next);
            ++next;
            continue;
        }
        std::vector<int> views = node->op->view_map();
        for (int o = 0; o < node->n_outputs(); ++o) {
            slot_of[VarKey{node.get(), o}] = next;
            if (o < static_cast<int>(views.size()) && views[o] >= 0) p.transient.push_back(next);
            ++next;
        }
        applies.push_back(node);
    }

    // 6. In-place: grant destroy requests whose old value nobody reads afterwards.
    std::vector<std::pair<const Node*, const Node*>> after;  // (reader, destroyer): reader runs first
    {
        VarMap<std::vector<const Node*>> consumers;
        for (const auto& n : applies) {
            for (const auto& in : n->inputs) consumers[key(in)].push_back(n.get());
        }
        VarMap<bool> returned;  // function outputs and update values
        for (const auto& v : all) returned[key(v)] = true;
        std::unordered_map<const SharedCell*, VarKey> update_of;
        for (std::size_t i = 0; i < all_updates.size(); ++i) update_of[all_updates[i].first.get()] = key(all[outputs.size() + i]);
        VarMap<bool> destroyed;  // values some step overwrites
        for (const auto& n : applies) {
            std::vector<int> dm = n->op->destroy_map();
            for (int o = 0; o < static_cast<int>(dm.size()); ++o) {
                if (dm[o] < 0) continue;
                const Variable& v = n->inputs[dm[o]];
                if (v.is_input() || v.is_constant() || returned.count(key(v)) || destroyed.count(key(v))) continue;
                if (v.is_apply()) {
                    auto vm = v.node().op->view_map();
                    if (v.index() < static_cast<int>(vm.size()) && vm[v.index()] >= 0) continue;
                } else if (!update_of.count(v.node().cell.get())) {
                    // A shared value may be overwritten only when this call replaces it anyway.
                    continue;
                }
                // Every variable that shares v's storage (v and the views made of it).
                std::vector<Variable> aliases = {v};
                bool ok = true;
                for (std::size_t k = 0; k < aliases.size() && ok; ++k) {
                    for (const Node* c : consumers[key(aliases[k])]) {
                        auto vm = c->op->view_map();
                        for (int co = 0; co < static_cast<int>(vm.size()); ++co) {
                            if (vm[co] >= 0 && c->inputs[vm[co]].same(aliases[k])) {
                                Variable alias = c->output(co);
                                if (returned.count(key(alias))) ok = false;
                                aliases.push_back(alias);
                            }
                        }
                    }
                }
                // The destroyer reads v once; the other readers must not depend on it.
                std::unordered_set<const Node*> downstream = {n.get()};
                for (const auto& m : applies) {
                    for (const auto& in : m->inputs) {
                        if (downstream.count(in.node_ptr().get())) {
                            downstream.insert(m.get());
                            break;
                        }
                    }
                }
                int reads_by_n = 0;
                std::vector<const Node*> readers;
                for (const auto& a : aliases) {
                    for (const Node* c : consumers[key(a)]) {
                        if (c == n.get()) {
                            ++reads_by_n;
                        } else if (downstream.count(c)) {
                            ok = false;
                        } else {
                            readers.push_back(c);
                        }
                    }
                }
                if (!ok || reads_by_n != 1) continue;
                for (const Node* r : readers) after.emplace_back(r, n.get());
                slot_of[VarKey{n.get(), o}] = slot_of.at(key(v));
                p.in_place.push_back(fmt::format("{} writes output {} into input {} ({})", n->op->name(), o, dm[o], v.label()));
                destroyed[key(v)] = true;
            }
        }
    }

    // 7. Schedule: inputs before users, readers before in-place writers, otherwise the
    // topological order.
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
        for (auto [r, d] : after) edge(r, d);
        std::priority_queue<std::size_t, std::vector<std::size_t>, std::greater<>> ready;
        for (std::size_t i = 0; i < applies.size(); ++i) {
            if (indeg[i] == 0) ready.push(i);
        }
        std::vector<std::shared_ptr<const Node>> sched;
        while (!ready.empty()) {
            std::size_t i = ready.top();
            ready.pop();
            sched.push_back(applies[i]);
            for (std::size_t j : succ[i]) {
                if (--indeg[j] == 0) ready.push(j);
            }
        }
        internal_check(sched.size() == applies.size(), "function: the in-place schedule has a cycle");
        for (const auto& node : sched) {
            Step s{node->op.get(), node.get(), {}, {}, {}, {}, {}};
            for (const auto& in : node->inputs) s.in.push_back(&p.slots[slot_of.at(key(in))]);
            for (int o = 0; o < node->n_outputs(); ++o) s.out.push_back(&p.slots[slot_of.at(VarKey{node.get(), o})]);
            p.steps.push_back(std::move(s));
        }
    }
    // 8. Placement: the inputs of a Join along axis 0 are written straight into its output
    // when each is a plain computed value in a slot of its own that nothing returns or
    // overwrites, and the Join's output is neither returned nor overwritten.
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
                ok = v.is_apply() && !returned.count(key(v)) && slot_users[slot] == 1 && !destroyed_slots.count(slot) &&
                     seen.insert(&p.slots[slot]).second;
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
    // 9. Liveness: a computed value in a slot of its own (not returned, not an update, not
    // overwritten in place, not placed in a Join, none of its views returned) gives its
    // buffer back to the pool after its last reader, for a later value of a size that fits.
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
    for (const auto& o : p.outputs) p.output_slots.push_back(slot_of.at(key(o)));
    std::unordered_set<int> transient(p.transient.begin(), p.transient.end());
    std::unordered_set<int> used;
    for (std::size_t i = 0; i < all_updates.size(); ++i) {
        int slot = slot_of.at(key(all[outputs.size() + i]));
        const Variable& v = all[outputs.size() + i];
        bool swap = v.is_apply() && !transient.count(slot) && used.insert(slot).second;
        p.updates.push_back({all_updates[i].first, slot, swap});
    }
    return f;
}

}  // namespace theanine
