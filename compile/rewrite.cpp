#include "compile/rewrite.hpp"

#include <algorithm>
#include <iostream>
#include <map>

#include <fmt/format.h>

#include "compile/rewrites/rewrites.hpp"

namespace theanine {

void RewriteLog::note(const std::string& rewrite, const Variable& old_var, const Variable& new_var) {
    std::string line = fmt::format("rewrite {} replaced {} by {}", rewrite, old_var.label(), new_var.label());
    if (verbose) std::cerr << line << "\n";
    lines.push_back(std::move(line));
}

RewriteRegistry& RewriteRegistry::global() {
    static RewriteRegistry reg = [] {
        RewriteRegistry r;
        r.add(GraphPass{"merge", {"merge"}, merge_duplicates});
        r.add(GraphPass{"constant_fold", {"constant_fold"}, constant_fold});
        register_canonicalize(r);
        register_stabilize(r);
        register_specialize(r);
        register_fusion(r);
        register_scan(r);
        return r;
    }();
    return reg;
}

void RewriteRegistry::add(NodeRewriter r) { node_.push_back(std::move(r)); }
void RewriteRegistry::add(GraphPass p) { passes_.push_back(std::move(p)); }

std::vector<std::string> RewriteRegistry::list() const {
    std::vector<std::string> out;
    for (const auto& p : passes_) {
        std::string t;
        for (const auto& tag : p.tags) t += (t.empty() ? "" : ", ") + tag;
        out.push_back(fmt::format("{} [graph pass: {}]", p.name, t));
    }
    for (const auto& r : node_) {
        std::string t = r.phase;
        for (const auto& tag : r.tags) t += ", " + tag;
        out.push_back(fmt::format("{} [{}]", r.name, t));
    }
    return out;
}

bool RewriteRegistry::known(const std::string& n) const {
    for (const auto& p : passes_) {
        if (p.name == n || std::count(p.tags.begin(), p.tags.end(), n)) return true;
    }
    for (const auto& r : node_) {
        if (r.name == n || r.phase == n || std::count(r.tags.begin(), r.tags.end(), n)) return true;
    }
    return false;
}

bool RewriteSelection::enabled(const std::string& name, const std::vector<std::string>& tags) const {
    if (none) return false;
    auto hit = [&](const std::vector<std::string>& list) {
        for (const auto& x : list) {
            if (x == name || std::count(tags.begin(), tags.end(), x)) return true;
        }
        return false;
    };
    if (hit(including)) return true;
    return !hit(excluding);
}

namespace {

using Visit = std::function<std::optional<std::vector<Variable>>(const std::shared_ptr<const Node>&)>;

void check_replacement(const std::string& who, const Variable& old_v, const Variable& new_v) {
    const auto& a = old_v.type();
    const auto& b = new_v.type();
    bool ok = a.dtype == b.dtype && a.ndim() == b.ndim();
    for (int d = 0; ok && d < a.ndim(); ++d) ok = !a.broadcastable[d] || b.broadcastable[d];
    if (!ok) {
        throw InternalError(fmt::format("rewrite {} replaced {} ({}) by a value of type {}", who, old_v.label(),
                                        a.str(), b.str()));
    }
}

// Rebuilds the graph in topological order: an apply node whose inputs changed is rebuilt,
// and every node is offered to visit, which may return replacements for its outputs.
std::vector<Variable> transform(const std::vector<Variable>& outputs, const Visit& visit, bool* changed) {
    VarMap<Variable> memo;
    for (const auto& node : toposort(outputs)) {
        std::shared_ptr<const Node> cur = node;
        if (node->kind == NodeKind::apply) {
            bool any = false;
            std::vector<Variable> ins;
            for (const auto& in : node->inputs) {
                auto it = memo.find(key(in));
                if (it != memo.end()) {
                    ins.push_back(it->second);
                    any = true;
                } else {
                    ins.push_back(in);
                }
            }
            if (any) {
                cur = apply(node->op, ins, node->where)[0].node_ptr();
                *changed = true;
            }
        }
        auto rep = visit(cur);
        for (int o = 0; o < node->n_outputs(); ++o) {
            Variable out = rep ? (*rep)[o] : Variable(cur, o);
            if (rep) *changed = true;
            if (out.node_ptr() != node || out.index() != o) memo[VarKey{node.get(), o}] = out;
        }
    }
    std::vector<Variable> result;
    for (const auto& o : outputs) {
        auto it = memo.find(key(o));
        result.push_back(it != memo.end() ? it->second : o);
    }
    return result;
}

bool same_constant(const Node& a, const Node& b) {
    if (a.types[0] != b.types[0] || a.value.shape() != b.value.shape()) return false;
    if (a.value.size() > 64) return false;
    return a.value.to_doubles() == b.value.to_doubles() && a.weak == b.weak;
}

}  // namespace

// merge: two nodes with equal ops and the same inputs become one (common subexpressions);
// equal small constants become one.
std::vector<Variable> merge_duplicates(const std::vector<Variable>& outputs, RewriteLog& log) {
    std::multimap<std::size_t, std::shared_ptr<const Node>> seen;
    bool changed = false;
    auto visit = [&](const std::shared_ptr<const Node>& n) -> std::optional<std::vector<Variable>> {
        std::size_t h = 0;
        if (n->kind == NodeKind::constant) {
            if (n->value.size() > 64) return std::nullopt;
            for (double d : n->value.to_doubles()) h = h * 1000003u ^ std::hash<double>()(d);
        } else if (n->kind == NodeKind::apply) {
            if (n->op->is_stateful()) return std::nullopt;
            h = n->op->hash();
            for (const auto& in : n->inputs) h = h * 31u + VarKeyHash()(key(in));
        } else {
            return std::nullopt;
        }
        auto range = seen.equal_range(h);
        for (auto it = range.first; it != range.second; ++it) {
            const Node& m = *it->second;
            if (m.kind != n->kind) continue;
            bool eq = false;
            if (n->kind == NodeKind::constant) {
                eq = same_constant(m, *n);
            } else if (m.op->equals(*n->op) && m.inputs.size() == n->inputs.size()) {
                eq = true;
                for (std::size_t i = 0; eq && i < m.inputs.size(); ++i) eq = m.inputs[i].same(n->inputs[i]);
            }
            if (eq) {
                std::vector<Variable> outs;
                for (int o = 0; o < n->n_outputs(); ++o) outs.emplace_back(it->second, o);
                if (n->kind == NodeKind::apply) log.note("merge", Variable(n, 0), outs[0]);
                return outs;
            }
        }
        seen.emplace(h, n);
        return std::nullopt;
    };
    return transform(outputs, visit, &changed);
}

// constant_fold: an op whose inputs are all constants is evaluated once at compile time.
std::vector<Variable> constant_fold(const std::vector<Variable>& outputs, RewriteLog& log) {
    bool changed = false;
    auto visit = [&](const std::shared_ptr<const Node>& n) -> std::optional<std::vector<Variable>> {
        if (n->kind != NodeKind::apply || n->op->is_stateful() || n->inputs.empty()) return std::nullopt;
        for (const auto& in : n->inputs) {
            if (!in.is_constant()) return std::nullopt;
        }
        std::vector<const Tensor*> ins;
        for (const auto& in : n->inputs) ins.push_back(&in.node().value);
        std::vector<Tensor> outs(static_cast<std::size_t>(n->n_outputs()));
        std::vector<Tensor*> optr;
        for (auto& t : outs) optr.push_back(&t);
        try {
            n->op->perform(*n, ins, optr);
        } catch (const UsageError&) {
            return std::nullopt;  // leave the error to run time, where it names the call
        }
        std::vector<Variable> rep;
        for (int o = 0; o < n->n_outputs(); ++o) {
            Tensor v = outs[o].copy();
            Variable c = constant(v);
            // Keep the static type (a folded value can be size 1 on an axis the type does not
            // mark broadcastable; the constant's type would then be more specific, which is fine).
            rep.push_back(c);
            log.note("constant_fold", Variable(n, o), c);
        }
        return rep;
    };
    return transform(outputs, visit, &changed);
}

std::vector<Variable> run_phase(const std::vector<Variable>& outputs, const std::string& phase,
                                const RewriteSelection& sel, RewriteLog& log) {
    std::vector<const NodeRewriter*> active;
    for (const auto& r : RewriteRegistry::global().node_rewriters()) {
        if (r.phase == phase && sel.enabled(r.name, [&] {
                auto t = r.tags;
                t.push_back(r.phase);
                return t;
            }())) {
            active.push_back(&r);
        }
    }
    if (active.empty()) return outputs;
    std::vector<Variable> cur = outputs;
    std::map<std::string, int> fired;
    constexpr int kBudget = 50;
    for (int iter = 0; iter < kBudget; ++iter) {
        bool changed = false;
        bool fired_now = false;
        auto visit = [&](const std::shared_ptr<const Node>& n) -> std::optional<std::vector<Variable>> {
            if (n->kind != NodeKind::apply) return std::nullopt;
            for (const NodeRewriter* r : active) {
                const std::uint64_t since = newest_node_serial();
                auto rep = r->fn(*n);
                if (!rep) continue;
                inherit_where(*rep, since, n->where);
                for (int o = 0; o < n->n_outputs(); ++o) {
                    check_replacement(r->name, Variable(n, o), (*rep)[o]);
                    log.note(r->name, Variable(n, o), (*rep)[o]);
                }
                fired[r->name]++;
                fired_now = true;
                return rep;
            }
            return std::nullopt;
        };
        cur = transform(cur, visit, &changed);
        if (!fired_now) return cur;
    }
    std::string names;
    for (const auto& [n, c] : fired) names += fmt::format("{}{} ({} times)", names.empty() ? "" : ", ", n, c);
    throw InternalError(fmt::format("rewrite phase {} did not settle after {} sweeps; rewrites that kept firing: {}",
                                    phase, kBudget, names));
}

std::vector<Variable> optimize(const std::vector<Variable>& outputs, const RewriteSelection& sel, RewriteLog& log) {
    if (sel.none) return outputs;
    const auto& reg = RewriteRegistry::global();
    auto pass = [&](const std::string& name, const std::vector<Variable>& g) {
        for (const auto& p : reg.graph_passes()) {
            if (p.name == name && sel.enabled(p.name, p.tags)) return p.fn(g, log);
        }
        return g;
    };
    std::vector<Variable> g = outputs;
    g = pass("merge", g);                       // share common subexpressions first: less to rewrite
    g = pass("constant_fold", g);               // fold shapes and constants the builders made
    g = pass("scan_prune", g);                  // loop outputs nothing reads are not computed
    g = pass("scan_pushout_dot", g);            // products accumulated in loops: one outside
    g = run_phase(g, "canonicalize", sel, log); // simple algebra, so later patterns see one form
    g = run_phase(g, "stabilize", sel, log);    // numerically safe forms (log(sigmoid), log1p)
    g = run_phase(g, "specialize", sel, log);   // dot + transposes -> Gemm with flags
    g = pass("constant_fold", g);               // fold what the rewrites built from constants
    g = pass("merge", g);                       // rewrites may have made duplicates
    g = pass("scan_save_mem", g);               // loops keep only the steps that are read
    g = pass("fusion", g);                      // last: fuse what remains elementwise
    return g;
}

}  // namespace theanine
