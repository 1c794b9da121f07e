// Elementwise fusion: a connected group of elementwise nodes, each of whose results is used
// only inside the group, becomes one Composite that runs as a single loop over memory.
//
//   sigmoid(add(dot(x, W), b))        -> Composite{sigmoid(add(i0, i1))}(dot(x, W), b)
//   x * -softplus(-a) + (1 - x) * ... -> one loop
//
// Three refinements:
// - a cheap arithmetic node (add, sub, mul, neg of at most two inputs) whose users are all
//   fusible is copied into each user's group instead of being stored once and read back
//   (a bias add read by both the cost and its gradient);
// - a Sum over the group's result becomes an output of the loop (summed as it is computed),
//   beside the elementwise result when that has other users (a gradient and its column sums);
// - a single transcendental op becomes a one-instruction Composite, for the vectorised kernel.
#include <algorithm>
#include <functional>
#include <unordered_map>
#include <unordered_set>

#include <fmt/format.h>

#include "compile/rewrites/rewrites.hpp"
#include "ops/composite.hpp"
#include "ops/elemwise.hpp"
#include "ops/reduce.hpp"

namespace theanine {

namespace {

bool is_member_dtype(DType dt, DType compute) { return dt == compute || dt == DType::boolean; }

// Whether node n can join a group computing in dtype compute.
bool fusible(const Node& n, DType compute) {
    if (n.kind != NodeKind::apply || n.n_outputs() != 1) return false;
    if (!is_member_dtype(n.types[0].dtype, compute)) return false;
    if (const auto* e = dynamic_cast<const Elemwise*>(n.op.get())) {
        // Floor division, remainder and rounding run unfused (the fused loops do not have them).
        const ScalarOp op = e->scalar_op();
        return op != ScalarOp::int_div && op != ScalarOp::mod && op != ScalarOp::round_half_to_even;
    }
    if (const auto* c = dynamic_cast<const Cast*>(n.op.get())) {
        return is_member_dtype(c->to(), compute) || (is_float(c->to()) && c->to() == compute);
    }
    return false;
}

bool cheap(const Node& n) {
    const auto* e = dynamic_cast<const Elemwise*>(n.op.get());
    if (!e || n.inputs.size() > 2) return false;
    switch (e->scalar_op()) {
    case ScalarOp::add: case ScalarOp::sub: case ScalarOp::mul: case ScalarOp::neg: return true;
    default: return false;
    }
}

bool transcendental(const Node& n) {
    const auto* e = dynamic_cast<const Elemwise*>(n.op.get());
    return e && scalar_op_is_transcendental(e->scalar_op());
}

const Reduce* as_sum(const Node* n) {
    const auto* r = dynamic_cast<const Reduce*>(n->op.get());
    return r && r->kind() == ReduceKind::sum && !r->axes().empty() ? r : nullptr;
}

struct Group {
    std::vector<const Node*> members;  // topological order, root last
    std::vector<const Node*> sums;     // Sum nodes over the root computed by the loop
    bool keep_root = true;             // the elementwise result is also stored
};

}  // namespace

std::vector<Variable> fuse_elemwise(const std::vector<Variable>& outputs, RewriteLog& log) {
    auto order = toposort(outputs);
    // Clients of each variable; function outputs count as clients outside any group.
    VarMap<int> clients;
    VarMap<std::vector<const Node*>> consumers;
    for (const auto& n : order) {
        for (const auto& in : n->inputs) {
            auto& u = consumers[key(in)];
            if (std::find(u.begin(), u.end(), n.get()) == u.end()) {
                u.push_back(n.get());
                clients[key(in)]++;
            }
        }
    }
    for (const auto& o : outputs) clients[key(o)] += 1000;

    std::unordered_map<const Node*, const Node*> root_of;  // member -> its group's root
    std::unordered_map<const Node*, Group> groups;
    std::unordered_set<const Node*> copied;    // cheap nodes recomputed in their users' loops
    std::unordered_set<const Node*> absorbed;  // Sum nodes computed by a group's loop
    for (auto it = order.rbegin(); it != order.rend(); ++it) {
        const Node* n = it->get();
        if (root_of.count(n) || n->kind != NodeKind::apply || n->n_outputs() != 1) continue;
        DType out = n->types[0].dtype;
        DType compute;
        if (is_float(out)) {
            compute = out;
        } else if (out == DType::boolean && !n->inputs.empty() && is_float(n->inputs.back().dtype())) {
            compute = n->inputs.back().dtype();
        } else {
            continue;
        }
        if (!fusible(*n, compute)) continue;
        // Grow the group upward through fusible producers all of whose users are already in
        // the group (a value used outside would have to be stored anyway), to a fixed point.
        if (copied.count(n)) continue;  // only ever recomputed inside its users' loops
        std::unordered_set<const Node*> members = {n}, copies;
        for (bool grew = true; grew;) {
            grew = false;
            std::vector<const Node*> current(members.begin(), members.end());
            for (const Node* m : current) {
                if (copies.count(m)) continue;  // a copy's inputs stay outside the loop
                for (const auto& in : m->inputs) {
                    const Node* p = in.node_ptr().get();
                    if (members.count(p) || root_of.count(p) || !fusible(*p, compute)) continue;
                    const auto& users = consumers[key(in)];
                    if (static_cast<int>(users.size()) != clients[key(in)]) continue;  // also a function output
                    bool inside = std::all_of(users.begin(), users.end(), [&](const Node* u) { return members.count(u) > 0; });
                    if (!inside) {
                        // Every user is an elementwise node, so its loop can recompute p too;
                        // a user whose loop reads p stored instead gets p built on its own.
                        bool all_fusible = std::all_of(users.begin(), users.end(), [&](const Node* u) {
                            return fusible(*u, compute);
                        });
                        if (!cheap(*p) || !all_fusible) continue;
                        copies.insert(p);
                        copied.insert(p);
                    }
                    members.insert(p);
                    grew = true;
                }
            }
        }
        // Sums of the root's result, computed by the loop.
        Group g;
        const auto& root_users = consumers[VarKey{n, 0}];
        for (const Node* u : root_users) {
            if (as_sum(u) && u->types[0].dtype == compute && n->types[0].dtype == compute) g.sums.push_back(u);
        }
        g.keep_root = clients[VarKey{n, 0}] > static_cast<int>(g.sums.size());
        if (members.size() < 2 && g.sums.empty() && !transcendental(*n)) continue;
        for (const auto& node : order) {
            if (members.count(node.get())) g.members.push_back(node.get());
        }
        for (const Node* m : g.members) {
            if (!copies.count(m)) root_of[m] = n;
        }
        for (const Node* u : g.sums) absorbed.insert(u);
        groups[n] = std::move(g);
    }
    if (groups.empty()) return outputs;

    // Rebuild: members vanish, each root becomes a Composite over its boundary inputs.
    VarMap<Variable> memo;
    auto mapped = [&](const Variable& v) {
        auto it = memo.find(key(v));
        return it == memo.end() ? v : it->second;
    };
    for (const auto& node : order) {
        const Node* n = node.get();
        if (n->kind != NodeKind::apply) continue;
        if (absorbed.count(n)) continue;  // a loop's output, mapped when its group was built
        auto r = root_of.find(n);
        if (r != root_of.end() && r->second != n) continue;  // a non-root member
        if (r != root_of.end()) {
            Group& g = groups[n];
            const DType compute = is_float(n->types[0].dtype) ? n->types[0].dtype : n->inputs.back().dtype();
            // Boundary inputs get registers 0..n_in-1 in order of first use.
            VarMap<int> input_reg;
            std::vector<Variable> boundary;
            auto reg_for = [&](const Variable& v) -> int {
                auto b = input_reg.find(key(v));
                if (b != input_reg.end()) return b->second;
                int k = static_cast<int>(boundary.size());
                boundary.push_back(v);
                input_reg[key(v)] = k;
                return k;
            };
            // Each member's arguments: (true, member index) or (false, boundary register).
            std::vector<Composite::Instr> program;
            std::vector<std::vector<std::pair<bool, int>>> arg_src;
            for (const Node* m : g.members) {
                std::vector<std::pair<bool, int>> srcs;
                for (const auto& in : m->inputs) {
                    auto it = std::find(g.members.begin(), g.members.end(), in.node_ptr().get());
                    if (it != g.members.end()) {
                        srcs.emplace_back(true, static_cast<int>(it - g.members.begin()));
                    } else {
                        srcs.emplace_back(false, reg_for(in));
                    }
                }
                arg_src.push_back(std::move(srcs));
            }
            const int n_in = static_cast<int>(boundary.size());
            std::vector<std::string> expr(g.members.size());
            auto arg_text = [&](std::pair<bool, int> s) {
                return s.first ? expr[s.second] : fmt::format("i{}", s.second);
            };
            for (std::size_t mi = 0; mi < g.members.size(); ++mi) {
                const Node* m = g.members[mi];
                Composite::Instr ins;
                for (auto s : arg_src[mi]) ins.args.push_back(s.first ? n_in + s.second : s.second);
                std::string args;
                for (auto s : arg_src[mi]) args += (args.empty() ? "" : ", ") + arg_text(s);
                if (const auto* e = dynamic_cast<const Elemwise*>(m->op.get())) {
                    ins.op = e->scalar_op();
                    expr[mi] = fmt::format("{}({})", scalar_op_name(ins.op), args);
                } else {
                    const auto* c = static_cast<const Cast*>(m->op.get());
                    ins.kind = c->to() == DType::boolean ? Composite::Instr::Kind::cast_bool
                                                         : Composite::Instr::Kind::cast_identity;
                    expr[mi] = fmt::format("cast_{}({})", dtype_name(c->to()), args);
                }
                program.push_back(std::move(ins));
            }
            std::vector<Variable> ins;
            for (const auto& b : boundary) ins.push_back(mapped(b));
            const int root_reg = n_in + static_cast<int>(program.size()) - 1;
            std::vector<Composite::Output> outs;
            std::string text = expr.back();
            if (g.keep_root) outs.push_back({root_reg, {}, n->types[0]});
            for (const Node* sn : g.sums) {
                const auto* red = as_sum(sn);
                outs.push_back({root_reg, red->axes(), sn->types[0]});
                std::string axes;
                for (int a : red->axes()) axes += (axes.empty() ? "" : ",") + std::to_string(a);
                text += fmt::format(", sum[{}]", axes);
            }
            auto op = std::make_shared<Composite>(n_in, std::move(program), compute, std::move(outs), text);
            auto results = apply(op, ins, n->where);
            std::size_t k = 0;
            if (g.keep_root) {
                log.note("fusion", Variable(node, 0), results[k]);
                memo[VarKey{n, 0}] = results[k++];
            }
            for (const Node* sn : g.sums) {
                Variable sv(std::const_pointer_cast<Node>(sn->shared_from_this()), 0);
                log.note("fusion", sv, results[k]);
                memo[VarKey{sn, 0}] = results[k++];
            }
            continue;
        }
        bool changed = false;
        std::vector<Variable> ins;
        for (const auto& in : n->inputs) {
            ins.push_back(mapped(in));
            changed = changed || !ins.back().same(in);
        }
        if (!changed) continue;
        auto outs = apply(n->op, ins, n->where);
        for (int o = 0; o < n->n_outputs(); ++o) memo[VarKey{n, o}] = outs[static_cast<std::size_t>(o)];
    }
    std::vector<Variable> result;
    for (const auto& o : outputs) result.push_back(mapped(o));
    return result;
}

void register_fusion(RewriteRegistry& r) { r.add(GraphPass{"fusion", {"fusion", "fast_run"}, fuse_elemwise}); }

}  // namespace theanine
