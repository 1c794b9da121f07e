#include "compile/ownership.hpp"

#include <algorithm>
#include <unordered_map>

#include <fmt/format.h>

#include "compile/plan.hpp"

namespace theanine {

namespace {

bool is_view(const Variable& v) {
    if (!v.is_apply()) return false;
    auto vm = v.node().op->view_map();
    return v.index() < static_cast<int>(vm.size()) && vm[v.index()] >= 0;
}

// The input an output may overwrite on the way back to shared variable `target`: the target
// itself when it is a candidate, else the first candidate; an undefined Variable when none.
Variable destroyed_input(const Variable& v, const SharedCell* target) {
    if (!v.is_apply()) return Variable();
    const auto cands = v.node().op->destroy_candidates(v.node(), v.index());
    for (int k : cands) {
        const Variable& in = v.node().inputs[k];
        if (in.is_shared() && in.node().cell.get() == target) return in;
    }
    return cands.empty() ? Variable() : v.node().inputs[cands.front()];
}

}  // namespace

InPlaceGrants grant_in_place(const std::vector<std::shared_ptr<const Node>>& applies, const std::vector<Variable>& all,
                             std::size_t n_outputs, const std::vector<std::shared_ptr<SharedCell>>& update_cells,
                             VarMap<int>& slot_of, bool into_shared_allowed,
                             const std::unordered_set<const Node*>& mutable_inputs) {
    InPlaceGrants g;
    VarMap<std::vector<const Node*>> consumers;
    for (const auto& n : applies) {
        for (const auto& in : n->inputs) consumers[key(in)].push_back(n.get());
    }
    VarMap<bool> returned;  // function outputs and update values
    for (const auto& v : all) returned[key(v)] = true;
    // Rule (c): the values that lead, each through the next one's in-place step, from a
    // shared variable to its own update value, and are read by nothing else.
    VarMap<const SharedCell*> chain_of;
    for (std::size_t i = 0; i < update_cells.size(); ++i) {
        std::vector<Variable> members;
        Variable cur = all[n_outputs + i];
        bool sole_reader = consumers[key(cur)].empty();
        const SharedCell* target = update_cells[i].get();
        for (Variable src = destroyed_input(cur, target); src.defined() && sole_reader;
             src = destroyed_input(cur, target)) {
            members.push_back(cur);
            cur = src;
            if (cur.is_shared()) break;
            sole_reader = consumers[key(cur)].size() == 1 && !returned.count(key(cur));
        }
        if (!cur.is_shared() || cur.node().cell != update_cells[i]) continue;
        for (const auto& m : members) chain_of[key(m)] = update_cells[i].get();
    }
    VarMap<bool> destroyed;  // values some step overwrites
    std::unordered_map<const Node*, std::vector<const Node*>> after_succ;  // g.after by reader
    for (const auto& n : applies) {
        for (int o = 0; o < n->n_outputs(); ++o) {
            std::vector<int> cands = n->op->destroy_candidates(*n, o);
            // On an update chain, the shared variable it leads to is tried first.
            if (auto it = chain_of.find(VarKey{n.get(), o}); it != chain_of.end()) {
                std::stable_partition(cands.begin(), cands.end(), [&](int k) {
                    return n->inputs[k].is_shared() && n->inputs[k].node().cell.get() == it->second;
                });
            }
            for (int k : cands) {
                const Variable& v = n->inputs[k];
                if ((v.is_input() && !mutable_inputs.count(&v.node())) || v.is_constant() || returned.count(key(v)) ||
                    destroyed.count(key(v)) || is_view(v)) {
                    continue;
                }
                const bool into_shared = v.is_shared() || (v.is_apply() && g.commit.count(&v.node()));
                if (into_shared && !into_shared_allowed) continue;
                if (into_shared) {
                    // Only the variable's own update chain, and only when the node's other
                    // outputs are unused (so the node can run after every other step).
                    auto it = chain_of.find(VarKey{n.get(), o});
                    if (it == chain_of.end()) continue;
                    if (v.is_shared() && it->second != v.node().cell.get()) continue;
                    bool others_unused = true;
                    for (int k = 0; k < n->n_outputs(); ++k) {
                        if (k != o && (!consumers[VarKey{n.get(), k}].empty() || returned.count(VarKey{n.get(), k}))) {
                            others_unused = false;
                        }
                    }
                    if (!others_unused) continue;
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
                // The destroyer reads v once; the other readers must not depend on it, through
                // data or through the orders earlier grants set (a reader runs before its
                // destroyer), or the schedule would have a cycle.
                std::unordered_set<const Node*> downstream = {n.get()};
                std::vector<const Node*> todo = {n.get()};
                while (!todo.empty()) {
                    const Node* m = todo.back();
                    todo.pop_back();
                    auto visit = [&](const Node* next) {
                        if (downstream.insert(next).second) todo.push_back(next);
                    };
                    for (int mo = 0; mo < m->n_outputs(); ++mo) {
                        for (const Node* c : consumers[VarKey{m, mo}]) visit(c);
                    }
                    if (auto it = after_succ.find(m); it != after_succ.end()) {
                        for (const Node* d : it->second) visit(d);
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
                for (const Node* r : readers) {
                    g.after.emplace_back(r, n.get());
                    after_succ[r].push_back(n.get());
                }
                slot_of[VarKey{n.get(), o}] = slot_of.at(key(v));
                g.log.push_back(fmt::format("{} writes output {} into input {} ({})", n->op->name(), o, k, v.label()));
                destroyed[key(v)] = true;
                if (into_shared) {
                    g.commit.insert(n.get());
                    if (v.is_shared()) g.destroyed_cells.push_back(v.node().cell);
                }
                break;  // one input per output
            }
        }
    }
    return g;
}

void bind_shared(Plan& p) {
    for (const auto& cell : p.destroyed_cells) {
        Tensor& t = cell->value;
        bool copy = !t.is_contiguous();
        for (const InputBinding& b : p.inputs) copy = copy || p.slots[b.slot].shares_storage(t);
        for (int s : p.constant_slots) copy = copy || p.slots[s].shares_storage(t);
        for (const auto& [slot, other] : p.shared) copy = copy || (other != cell && other->value.shares_storage(t));
        if (copy) t = t.copy();
    }
    for (auto& [slot, cell] : p.shared) p.slots[slot] = cell->value;
}

namespace {

bool same_view(const Tensor& a, const Tensor& b) {
    return a.shares_storage(b) && a.raw_data() == b.raw_data() && a.dtype() == b.dtype() && a.shape() == b.shape() &&
           a.strides() == b.strides();
}

bool contains(const std::vector<const void*>& ids, const void* id) {
    return std::find(ids.begin(), ids.end(), id) != ids.end();
}

}  // namespace

std::vector<Tensor> finish_call(Plan& p) {
    // Buffers a result or an update may not take over: the arguments' (unless borrowed),
    // the constants' and the shared variables' as they were during the call.
    std::vector<const void*>& foreign = p.scratch_ids;
    foreign.clear();
    for (const InputBinding& b : p.inputs) {
        if (!b.borrow) foreign.push_back(p.slots[b.slot].storage_id());
    }
    for (int s : p.constant_slots) foreign.push_back(p.slots[s].storage_id());
    for (const auto& [slot, cell] : p.shared) foreign.push_back(cell->value.storage_id());
    for (const UpdateBinding& u : p.updates) foreign.push_back(u.cell->value.storage_id());

    // (b) Decide every update before any is written, so each sees the values of the call.
    using Commit = Plan::Commit;
    std::vector<Commit>& how = p.scratch_commit;
    how.assign(p.updates.size(), Commit::keep);
    std::vector<const void*>& claimed = p.scratch_claimed;  // buffers that become shared values
    claimed.clear();
    for (std::size_t i = 0; i < p.updates.size(); ++i) {
        UpdateBinding& u = p.updates[i];
        const Tensor& t = p.slots[u.slot];
        if (same_view(t, u.cell->value) && !contains(claimed, t.storage_id())) {
            how[i] = Commit::keep;  // written in place, or an identity update
            claimed.push_back(t.storage_id());
        } else if (contains(foreign, t.storage_id()) || contains(claimed, t.storage_id())) {
            how[i] = Commit::copy;
            u.spare.ensure(t.dtype(), t.shape());
            u.spare.copy_from(t);
        } else {
            how[i] = Commit::hand_over;
            claimed.push_back(t.storage_id());
        }
    }
    // (a) Results: a copy where the buffer is not the caller's alone.
    std::vector<Tensor> result;
    result.reserve(p.results.size());
    for (OutputBinding& r : p.results) {
        const Tensor& t = p.slots[r.slot];
        const void* id = t.storage_id();
        bool alias = false;
        for (const Tensor& earlier : result) alias = alias || earlier.storage_id() == id;
        if (!r.borrow && (alias || contains(foreign, id) || contains(claimed, id))) {
            r.spare.ensure(t.dtype(), t.shape());
            r.spare.copy_from(t);
            result.push_back(r.spare);
        } else {
            result.push_back(t);
        }
    }
    // Commit.
    for (std::size_t i = 0; i < p.updates.size(); ++i) {
        UpdateBinding& u = p.updates[i];
        if (how[i] == Commit::copy) {
            std::swap(u.cell->value, u.spare);
        } else if (how[i] == Commit::hand_over) {
            Tensor old = std::move(u.cell->value);
            u.cell->value = p.slots[u.slot];
            p.slots[u.slot] = std::move(old);
        }
    }
    return result;
}

}  // namespace theanine
