// Rewrites of loops (ops/scan.hpp), on the outer graph:
//   scan_single_step  a Scan whose n_steps is the constant 1 becomes its step's graph on the
//                     first rows (outputs get their leading axis back by a DimShuffle)
//   scan_hoist        inner computations that read no sequence, past output or loop state
//                     (and draw no random numbers) move out of the loop and become
//                     non-sequences, so they run once per call instead of once per step
//   scan_pushout_seqs inner products and elementwise work that read only sequences (each at a
//                     single tap), non-sequences and constants run once over the whole
//                     sequences outside the loop (x_t W over every step as one product) and
//                     come in as new sequences
//   scan_save_mem     an output of which only the last step is read (y[-1]: reduce, foldl,
//                     the HMC trajectory's end) keeps a ring of the last steps it needs
//                     instead of every step
//   scan_prune        outputs nobody reads (a gradient loop's gradients of the data
//                     sequences, accumulators of parameters not asked for) are no longer
//                     computed, with their past-output inputs, when no kept output needs them
//   scan_pushout_dot  an accumulator acc_t = acc_{t-1} + dot(a_t, b_t) (+ more products) read
//                     only as acc[-1] (the weight gradients of backpropagation through
//                     time) becomes a_t and b_t stacked as outputs and one product over all
//                     steps outside the loop
#include <algorithm>
#include <string>
#include <unordered_set>

#include <fmt/format.h>

#include "compile/rewrites/rewrites.hpp"
#include "ops/blas.hpp"
#include "ops/elemwise.hpp"
#include "ops/scan.hpp"

namespace theanine {

namespace {

Variable padleft(const Variable& v) {
    std::vector<int> order{-1};
    for (int d = 0; d < v.ndim(); ++d) order.push_back(d);
    return dimshuffle(v, order);
}

// Who reads each variable of a graph: its client nodes, and whether the graph returns it.
struct Readers {
    std::vector<std::shared_ptr<const Node>> order;  // topological
    VarMap<std::vector<const Node*>> clients;
    VarMap<bool> returned;
    explicit Readers(const std::vector<Variable>& outputs) : order(toposort(outputs)) {
        for (const auto& node : order) {
            if (node->kind != NodeKind::apply) continue;
            for (const auto& in : node->inputs) clients[key(in)].push_back(node.get());
        }
        for (const auto& o : outputs) returned[key(o)] = true;
    }
    // The nodes reading v (none when it has no clients).
    const std::vector<const Node*>& of(const Variable& v) const {
        static const std::vector<const Node*> none;
        auto c = clients.find(key(v));
        return c == clients.end() ? none : c->second;
    }
};

// Index of each inner input kind, as ops/scan.cpp lays them out.
struct Parts {
    std::size_t n_seq_in, n_tap_in, shared0, nonseq0;
    std::size_t seq0_outer = 1, init0_outer, shared0_outer, nonseq0_outer;
    explicit Parts(const ScanInfo& info) {
        n_seq_in = info.n_seq_inputs();
        n_tap_in = info.n_tap_inputs();
        shared0 = n_seq_in + n_tap_in;
        nonseq0 = shared0 + info.n_shared;
        init0_outer = seq0_outer + info.seq_taps.size();
        std::size_t n_init = 0;
        for (const auto& t : info.out_taps) n_init += t.empty() ? 0 : 1;
        shared0_outer = init0_outer + n_init;
        nonseq0_outer = shared0_outer + info.n_shared;
    }
};

// scan_single_step: Scan with n_steps = 1 -> its body.
std::optional<std::vector<Variable>> single_step(const Node& n) {
    const auto* op = dynamic_cast<const ScanOp*>(n.op.get());
    if (!op || !n.inputs[0].is_constant() || n.inputs[0].node().value.item_int() != 1) return std::nullopt;
    const ScanInner& inner = op->inner();
    const ScanInfo& info = inner.info;
    const Parts parts(info);
    VarMap<Variable> rep;
    std::size_t q = 0;
    for (std::size_t s = 0; s < info.seq_taps.size(); ++s) {
        const auto& taps = info.seq_taps[s];
        for (int k : taps) rep[key(inner.inputs[q++])] = subtensor(n.inputs[parts.seq0_outer + s], {Idx(k - taps.front())});
    }
    std::size_t init = parts.init0_outer;
    for (std::size_t j = 0; j < info.out_taps.size(); ++j) {
        if (info.out_taps[j].empty()) continue;
        const int L = info.init_rows(j);
        for (int k : info.out_taps[j]) rep[key(inner.inputs[q++])] = subtensor(n.inputs[init], {Idx(L + k)});
        ++init;
    }
    for (std::size_t m = 0; m < info.n_shared; ++m) rep[key(inner.inputs[parts.shared0 + m])] = n.inputs[parts.shared0_outer + m];
    for (std::size_t i = 0; i < info.n_non_seqs; ++i) {
        rep[key(inner.inputs[parts.nonseq0 + i])] = n.inputs[parts.nonseq0_outer + i];
    }
    std::vector<Variable> body = clone_with_replace(inner.outputs, rep);
    for (std::size_t j = 0; j < info.out_taps.size(); ++j) body[j] = padleft(body[j]);
    return body;
}

// scan_hoist: loop-invariant inner computations -> non-sequences computed outside.
std::optional<std::vector<Variable>> hoist(const Node& n) {
    const auto* op = dynamic_cast<const ScanOp*>(n.op.get());
    if (!op) return std::nullopt;
    const ScanInner& inner = op->inner();
    const ScanInfo& info = inner.info;
    const Parts parts(info);
    std::unordered_set<const Node*> variant;
    for (std::size_t i = 0; i < parts.nonseq0; ++i) variant.insert(inner.inputs[i].node_ptr().get());
    std::vector<Variable> candidates;
    VarMap<bool> is_candidate;
    auto consider = [&](const Variable& v) {
        if (v.is_apply() && !variant.count(v.node_ptr().get()) && !is_candidate.count(key(v))) {
            is_candidate[key(v)] = true;
            candidates.push_back(v);
        }
    };
    for (const auto& node : toposort(inner.outputs)) {
        if (node->kind != NodeKind::apply) continue;
        bool var = node->op->is_stateful();
        for (const auto& in : node->inputs) var = var || variant.count(in.node_ptr().get());
        if (!var) continue;
        variant.insert(node.get());
        for (const auto& in : node->inputs) consider(in);
    }
    for (const auto& o : inner.outputs) consider(o);
    if (candidates.empty()) return std::nullopt;
    // The hoisted values on the outer graph, and new placeholders for them inside.
    VarMap<Variable> to_outer;
    for (std::size_t i = 0; i < info.n_non_seqs; ++i) {
        to_outer[key(inner.inputs[parts.nonseq0 + i])] = n.inputs[parts.nonseq0_outer + i];
    }
    std::vector<Variable> outer_vals = clone_with_replace(candidates, to_outer);
    VarMap<Variable> to_ph;
    std::vector<Variable> new_ph;
    for (const auto& c : candidates) {
        Variable ph = input(c.type(), "hoisted:" + c.label());
        to_ph[key(c)] = ph;
        new_ph.push_back(ph);
    }
    std::vector<Variable> outs = clone_with_replace(inner.outputs, to_ph);
    std::unordered_set<const Node*> used;
    for (const auto& node : toposort(outs)) used.insert(node.get());
    ScanInfo ni = info;
    std::vector<Variable> ins(inner.inputs.begin(), inner.inputs.begin() + static_cast<std::ptrdiff_t>(parts.nonseq0));
    std::vector<Variable> outer(n.inputs.begin(), n.inputs.begin() + static_cast<std::ptrdiff_t>(parts.nonseq0_outer));
    for (std::size_t i = 0; i < info.n_non_seqs; ++i) {
        const Variable& ph = inner.inputs[parts.nonseq0 + i];
        if (!used.count(ph.node_ptr().get())) continue;
        ins.push_back(ph);
        outer.push_back(n.inputs[parts.nonseq0_outer + i]);
    }
    for (std::size_t c = 0; c < candidates.size(); ++c) {
        ins.push_back(new_ph[c]);
        outer.push_back(outer_vals[c]);
    }
    ni.n_non_seqs = ins.size() - parts.nonseq0;
    return make_scan_node(std::move(ni), std::move(ins), std::move(outs), std::move(outer), inner.where);
}

// scan_pushout_seqs: per-step work on sequences alone -> one computation over all steps.
std::optional<std::vector<Variable>> pushout_seqs(const Node& n) {
    const auto* op = dynamic_cast<const ScanOp*>(n.op.get());
    if (!op) return std::nullopt;
    const ScanInner& inner = op->inner();
    const ScanInfo& info = inner.info;
    const Parts parts(info);
    const Variable n_steps = n.inputs[0];
    // Inner values over all steps, outside: single-tap sequences (their first n_steps rows),
    // and what is computed from them alone. Loop-invariant values map to themselves.
    VarMap<Variable> stacked;
    VarMap<Variable> invariant;
    std::size_t q = 0;
    for (std::size_t s = 0; s < info.seq_taps.size(); ++s) {
        const Variable& seq = n.inputs[parts.seq0_outer + s];
        if (info.seq_taps[s].size() == 1) stacked[key(inner.inputs[q])] = subtensor(seq, {slice(0, n_steps)});
        q += info.seq_taps[s].size();
    }
    for (std::size_t i = 0; i < info.n_non_seqs; ++i) {
        invariant[key(inner.inputs[parts.nonseq0 + i])] = n.inputs[parts.nonseq0_outer + i];
    }
    auto outside = [&](const Variable& v) -> std::optional<Variable> {
        if (v.is_constant()) return v;
        auto it = invariant.find(key(v));
        return it == invariant.end() ? std::nullopt : std::optional<Variable>(it->second);
    };
    std::vector<const Node*> lifted;
    for (const auto& nd : toposort(inner.outputs)) {
        if (nd->kind != NodeKind::apply || nd->n_outputs() != 1 || nd->op->is_stateful()) continue;
        bool any_seq = false, ok = true;
        for (const auto& in : nd->inputs) {
            if (stacked.count(key(in))) any_seq = true;
            else if (!outside(in)) ok = false;
        }
        if (!ok || !any_seq) continue;
        Variable out;
        if (pattern::op_as<Dot>(Variable(nd, 0))) {
            // dot(a_t, W): the steps' rows stacked ahead of a_t's, one product (numpy's axes).
            if (!stacked.count(key(nd->inputs[0])) || stacked.count(key(nd->inputs[1])) || nd->inputs[1].ndim() != 2) continue;
            out = dot(stacked[key(nd->inputs[0])], *outside(nd->inputs[1]));
        } else if (dynamic_cast<const Elemwise*>(nd->op.get())) {
            // Inputs of the result's rank only: the loop's rows then gain the step axis alike.
            bool same_rank = true;
            for (const auto& in : nd->inputs) same_rank = same_rank && in.ndim() == nd->types[0].ndim();
            if (!same_rank) continue;
            std::vector<Variable> ins;
            for (const auto& in : nd->inputs) {
                auto st = stacked.find(key(in));
                ins.push_back(st != stacked.end() ? st->second : padleft(*outside(in)));
            }
            out = apply(nd->op, ins, nd->where)[0];
        } else {
            continue;
        }
        if (out.ndim() != nd->types[0].ndim() + 1 || out.dtype() != nd->types[0].dtype) continue;
        stacked[VarKey{nd.get(), 0}] = out;
        lifted.push_back(nd.get());
    }
    // Lifted values the step still reads (outside the lifted set) come in as new sequences.
    std::unordered_set<const Node*> is_lifted(lifted.begin(), lifted.end());
    std::vector<Variable> needed;
    VarMap<bool> seen;
    auto need = [&](const Variable& v) {
        if (v.is_apply() && is_lifted.count(v.node_ptr().get()) && !seen.count(key(v))) {
            seen[key(v)] = true;
            needed.push_back(v);
        }
    };
    for (const auto& nd : toposort(inner.outputs)) {
        if (nd->kind != NodeKind::apply || is_lifted.count(nd.get())) continue;
        for (const auto& in : nd->inputs) need(in);
    }
    for (const auto& o : inner.outputs) need(o);
    if (needed.empty()) return std::nullopt;
    VarMap<Variable> to_ph;
    std::vector<Variable> new_ph, new_seqs;
    for (const auto& v : needed) {
        Variable ph = input(v.type(), "seq:" + v.label());
        to_ph[key(v)] = ph;
        new_ph.push_back(ph);
        new_seqs.push_back(stacked[key(v)]);
    }
    std::vector<Variable> outs = clone_with_replace(inner.outputs, to_ph);
    ScanInfo ni = info;
    for (std::size_t i = 0; i < needed.size(); ++i) ni.seq_taps.push_back({0});
    std::vector<Variable> ins(inner.inputs.begin(), inner.inputs.begin() + static_cast<std::ptrdiff_t>(parts.n_seq_in));
    ins.insert(ins.end(), new_ph.begin(), new_ph.end());
    ins.insert(ins.end(), inner.inputs.begin() + static_cast<std::ptrdiff_t>(parts.n_seq_in), inner.inputs.end());
    std::vector<Variable> outer(n.inputs.begin(), n.inputs.begin() + static_cast<std::ptrdiff_t>(parts.init0_outer));
    outer.insert(outer.end(), new_seqs.begin(), new_seqs.end());
    outer.insert(outer.end(), n.inputs.begin() + static_cast<std::ptrdiff_t>(parts.init0_outer), n.inputs.end());
    return make_scan_node(std::move(ni), std::move(ins), std::move(outs), std::move(outer), inner.where);
}

bool reads_last_row_only(const Node& client, const Variable& v) {
    const auto* st = dynamic_cast<const Subtensor*>(client.op.get());
    if (!st || !client.inputs[0].same(v)) return false;
    for (std::size_t i = 1; i < client.inputs.size(); ++i) {
        if (client.inputs[i].same(v)) return false;
    }
    const auto& e = st->spec().entries;
    return !e.empty() && e[0].is_index && e[0].b[0].kind == IndexSpec::BoundSpec::Kind::constant && e[0].b[0].value == -1;
}

bool reads_last_row_alone(const Node& client, const Variable& v) {
    const auto* st = dynamic_cast<const Subtensor*>(client.op.get());
    return reads_last_row_only(client, v) && st->spec().entries.size() == 1;
}

// The terms of an add tree (nested Elemwise adds flattened).
void add_terms(const Variable& v, std::vector<Variable>& terms) {
    if (pattern::is_elemwise(v, static_cast<int>(ScalarOp::add))) {
        for (const auto& in : v.node().inputs) add_terms(in, terms);
    } else {
        terms.push_back(v);
    }
}

// sum over the steps of dot(a_t, b_t), from a and b stacked (n, r, c) and (n, c, q): the
// steps laid side by side along the summed axis, one product. a_t = u_t^T reads u stacked.
Variable product_over_steps(const Variable& a_stacked, bool a_is_transpose, const Variable& b_stacked) {
    const Variable n = a_stacked.shape(0);
    const Variable bcat = reshape(b_stacked, std::vector<Variable>{mul(n, b_stacked.shape(1)), b_stacked.shape(2)});
    if (a_is_transpose) {  // a_stacked holds u_t (c x r)
        const Variable ucat = reshape(a_stacked, std::vector<Variable>{mul(n, a_stacked.shape(1)), a_stacked.shape(2)});
        return dot(transpose(ucat), bcat);
    }
    const Variable acat = reshape(dimshuffle(a_stacked, {1, 0, 2}),
                                  std::vector<Variable>{a_stacked.shape(1), mul(n, a_stacked.shape(2))});
    return dot(acat, bcat);
}

// One accumulator of one Scan node pushed out, or nullopt when the node has none.
std::optional<std::vector<std::pair<Variable, Variable>>> pushout_one(const Node& node, const Readers& readers) {
    const auto* op = dynamic_cast<const ScanOp*>(node.op.get());
    if (!op) return std::nullopt;
    const ScanInner& inner = op->inner();
    const ScanInfo& info = inner.info;
    const Parts parts(info);
    const std::size_t n_out = info.out_taps.size();
    // Uses of each inner variable inside the step.
    VarMap<int> uses;
    for (const auto& nd : toposort(inner.outputs)) {
        if (nd->kind != NodeKind::apply) continue;
        for (const auto& in : nd->inputs) ++uses[key(in)];
    }
    for (const auto& o : inner.outputs) ++uses[key(o)];
    std::size_t tap_in = parts.n_seq_in, init_in = parts.init0_outer;
    for (std::size_t j = 0; j < n_out; ++j) {
        const std::size_t my_tap = tap_in, my_init = init_in;
        tap_in += info.out_taps[j].size();
        init_in += info.out_taps[j].empty() ? 0 : 1;
        if (info.out_taps[j] != std::vector<int>{-1} || info.keep_last[j] != 0) continue;
        const Variable y = node.output(static_cast<int>(j));
        if (!is_float(y.dtype()) || y.ndim() != 3 || readers.returned.count(key(y))) continue;
        const auto& readers_of_y = readers.of(y);
        if (readers_of_y.empty()) continue;
        bool last_only = true;
        for (const Node* cl : readers_of_y) last_only = last_only && reads_last_row_alone(*cl, y);
        if (!last_only) continue;
        const Variable& prev = inner.inputs[my_tap];
        const Variable& out = inner.outputs[j];
        std::vector<Variable> terms;
        add_terms(out, terms);
        std::vector<Variable> dots;
        int n_prev = 0;
        bool ok = terms.size() >= 2;
        for (const auto& t : terms) {
            if (t.same(prev)) {
                ++n_prev;
            } else if (pattern::op_as<Dot>(t) && t.ndim() == 2 && t.node().inputs[0].ndim() == 2 &&
                       t.node().inputs[1].ndim() == 2 && t.type() == out.type()) {
                dots.push_back(t);
            } else {
                ok = false;
            }
        }
        // The accumulator must feed nothing else in the step.
        if (!ok || n_prev != 1 || uses[key(prev)] != 1 || dots.empty()) continue;
        // The new loop: output j and its past-output input gone, the products' operands
        // stacked as new outputs.
        ScanInfo ni = info;
        ni.out_taps.erase(ni.out_taps.begin() + static_cast<std::ptrdiff_t>(j));
        ni.keep_last.erase(ni.keep_last.begin() + static_cast<std::ptrdiff_t>(j));
        std::vector<Variable> ins = inner.inputs;
        ins.erase(ins.begin() + static_cast<std::ptrdiff_t>(my_tap));
        std::vector<Variable> outs(inner.outputs.begin(), inner.outputs.begin() + static_cast<std::ptrdiff_t>(n_out));
        outs.erase(outs.begin() + static_cast<std::ptrdiff_t>(j));
        std::vector<bool> transposed;
        for (const auto& d : dots) {
            const Variable& a = d.node().inputs[0];
            const auto* ds = pattern::op_as<DimShuffle>(a);
            const bool tr = ds && ds->is_transpose();
            transposed.push_back(tr);
            outs.push_back(tr ? a.node().inputs[0] : a);
            outs.push_back(d.node().inputs[1]);
            ni.out_taps.insert(ni.out_taps.end(), 2, std::vector<int>());
            ni.keep_last.insert(ni.keep_last.end(), 2, 0);
        }
        outs.insert(outs.end(), inner.outputs.begin() + static_cast<std::ptrdiff_t>(n_out), inner.outputs.end());
        std::vector<Variable> outer = node.inputs;
        outer.erase(outer.begin() + static_cast<std::ptrdiff_t>(my_init));
        auto nouts = make_scan_node(std::move(ni), std::move(ins), std::move(outs), std::move(outer), inner.where);
        std::vector<std::pair<Variable, Variable>> rep;
        for (std::size_t o = 0; o < n_out; ++o) {
            if (o != j) rep.emplace_back(node.output(static_cast<int>(o)), nouts[o < j ? o : o - 1]);
        }
        const std::size_t stacked0 = n_out - 1, shared0 = stacked0 + 2 * dots.size();
        for (std::size_t m = 0; m < info.n_shared; ++m) {
            rep.emplace_back(node.output(static_cast<int>(n_out + m)), nouts[shared0 + m]);
        }
        Variable total = subtensor(node.inputs[my_init], {Idx(0)});
        for (std::size_t d = 0; d < dots.size(); ++d) {
            total = add(total, product_over_steps(nouts[stacked0 + 2 * d], transposed[d], nouts[stacked0 + 2 * d + 1]));
        }
        for (const Node* cl : readers_of_y) rep.emplace_back(cl->output(0), total);
        return rep;
    }
    return std::nullopt;
}

// The Scan node without the outputs nobody reads, or nullopt when it computes none such.
std::optional<std::vector<std::pair<Variable, Variable>>> prune_one(const Node& node, const Readers& readers) {
    const auto* op = dynamic_cast<const ScanOp*>(node.op.get());
    if (!op) return std::nullopt;
    const ScanInner& inner = op->inner();
    const ScanInfo& info = inner.info;
    const Parts parts(info);
    const std::size_t n_out = info.out_taps.size();
    std::vector<bool> drop(n_out, false);
    std::size_t n_drop = 0;
    for (std::size_t j = 0; j < n_out; ++j) {
        const Variable y = node.output(static_cast<int>(j));
        drop[j] = !readers.returned.count(key(y)) && readers.of(y).empty();
        n_drop += drop[j] ? 1 : 0;
    }
    if (n_drop == 0 || (n_drop == n_out && info.n_shared == 0)) return std::nullopt;
    // Past-output inputs of each output.
    std::vector<std::vector<std::size_t>> taps_of(n_out);
    for (std::size_t j = 0, q = parts.n_seq_in; j < n_out; ++j) {
        for (std::size_t t = 0; t < info.out_taps[j].size(); ++t) taps_of[j].push_back(q++);
    }
    // An unread output whose past values a kept output reads is kept (to a fixed point).
    for (bool changed = true; changed;) {
        changed = false;
        std::vector<Variable> kept;
        for (std::size_t j = 0; j < n_out; ++j) {
            if (!drop[j]) kept.push_back(inner.outputs[j]);
        }
        kept.insert(kept.end(), inner.outputs.begin() + static_cast<std::ptrdiff_t>(n_out), inner.outputs.end());
        std::unordered_set<const Node*> reached;
        for (const auto& nd : toposort(kept)) reached.insert(nd.get());
        for (std::size_t j = 0; j < n_out; ++j) {
            if (!drop[j]) continue;
            for (std::size_t q : taps_of[j]) {
                if (reached.count(inner.inputs[q].node_ptr().get())) {
                    drop[j] = false;
                    changed = true;
                    --n_drop;
                    break;
                }
            }
        }
    }
    if (n_drop == 0) return std::nullopt;
    ScanInfo ni = info;
    ni.out_taps.clear();
    ni.keep_last.clear();
    std::vector<Variable> ins(inner.inputs.begin(), inner.inputs.begin() + static_cast<std::ptrdiff_t>(parts.n_seq_in));
    std::vector<Variable> outs;
    std::vector<Variable> outer(node.inputs.begin(), node.inputs.begin() + static_cast<std::ptrdiff_t>(parts.init0_outer));
    for (std::size_t j = 0, init = parts.init0_outer; j < n_out; ++j) {
        const bool fed_back = !info.out_taps[j].empty();
        if (!drop[j]) {
            ni.out_taps.push_back(info.out_taps[j]);
            ni.keep_last.push_back(info.keep_last[j]);
            for (std::size_t q : taps_of[j]) ins.push_back(inner.inputs[q]);
            outs.push_back(inner.outputs[j]);
            if (fed_back) outer.push_back(node.inputs[init]);
        }
        if (fed_back) ++init;
    }
    ins.insert(ins.end(), inner.inputs.begin() + static_cast<std::ptrdiff_t>(parts.shared0), inner.inputs.end());
    outs.insert(outs.end(), inner.outputs.begin() + static_cast<std::ptrdiff_t>(n_out), inner.outputs.end());
    outer.insert(outer.end(), node.inputs.begin() + static_cast<std::ptrdiff_t>(parts.shared0_outer), node.inputs.end());
    auto nouts = make_scan_node(std::move(ni), std::move(ins), std::move(outs), std::move(outer), inner.where);
    std::vector<std::pair<Variable, Variable>> rep;
    std::size_t k = 0;
    for (std::size_t j = 0; j < n_out; ++j) {
        if (!drop[j]) rep.emplace_back(node.output(static_cast<int>(j)), nouts[k++]);
    }
    for (std::size_t m = 0; m < info.n_shared; ++m) rep.emplace_back(node.output(static_cast<int>(n_out + m)), nouts[k++]);
    return rep;
}

using ScanNodeRewrite = std::optional<std::vector<std::pair<Variable, Variable>>> (*)(const Node&, const Readers&);

// Applies rewrite to one Scan node at a time (its replacements need the clients of the
// graph it changed) until no node changes.
std::vector<Variable> rewrite_scans(const std::vector<Variable>& outputs, RewriteLog& log, const std::string& name,
                                    ScanNodeRewrite rewrite) {
    std::vector<Variable> g = outputs;
    for (int round = 0; round < 256; ++round) {
        const Readers readers(g);
        std::optional<std::vector<std::pair<Variable, Variable>>> rep;
        for (const auto& node : readers.order) {
            if (node->kind == NodeKind::apply && (rep = rewrite(*node, readers))) break;
        }
        if (!rep) return g;
        VarMap<Variable> replace;
        for (const auto& [old_var, new_var] : *rep) {
            replace[key(old_var)] = new_var;
            log.note(name, old_var, new_var);
        }
        g = clone_with_replace(g, replace);
    }
    throw InternalError(fmt::format("{}: did not settle after 256 rounds", name));
}

}  // namespace

// scan_prune: outputs of loops that nothing reads are not computed.
std::vector<Variable> scan_prune(const std::vector<Variable>& outputs, RewriteLog& log) {
    return rewrite_scans(outputs, log, "scan_prune", prune_one);
}

// scan_pushout_dot: accumulated products read as acc[-1] -> one product outside the loop.
std::vector<Variable> scan_pushout_dot(const std::vector<Variable>& outputs, RewriteLog& log) {
    return rewrite_scans(outputs, log, "scan_pushout_dot", pushout_one);
}

// scan_save_mem: outputs read only as y[-1] keep only the steps they need.
std::vector<Variable> scan_save_mem(const std::vector<Variable>& outputs, RewriteLog& log) {
    const Readers readers(outputs);
    VarMap<Variable> replace;
    for (const auto& node : readers.order) {
        const auto* op = node->kind == NodeKind::apply ? dynamic_cast<const ScanOp*>(node->op.get()) : nullptr;
        if (!op) continue;
        ScanInfo info = op->inner().info;
        bool changed = false;
        for (std::size_t j = 0; j < info.out_taps.size(); ++j) {
            const Variable y = node->output(static_cast<int>(j));
            if (info.keep_last[j] > 0 || readers.returned.count(key(y))) continue;
            const auto& readers_of_y = readers.of(y);
            if (readers_of_y.empty()) continue;
            bool last_only = true;
            for (const Node* cl : readers_of_y) last_only = last_only && reads_last_row_only(*cl, y);
            if (!last_only) continue;
            info.keep_last[j] = std::max(1, info.init_rows(j));
            changed = true;
        }
        if (!changed) continue;
        const ScanInner& inner = op->inner();
        auto outs = make_scan_node(std::move(info), inner.inputs, inner.outputs, node->inputs, inner.where);
        for (int o = 0; o < node->n_outputs(); ++o) {
            replace[VarKey{node.get(), o}] = outs[static_cast<std::size_t>(o)];
            log.note("scan_save_mem", node->output(o), outs[static_cast<std::size_t>(o)]);
        }
    }
    if (replace.empty()) return outputs;
    return clone_with_replace(outputs, replace);
}

void register_scan(RewriteRegistry& r) {
    r.add(NodeRewriter{"scan_single_step", "canonicalize", {"scan", "fast_run"}, single_step});
    r.add(NodeRewriter{"scan_hoist", "canonicalize", {"scan", "fast_run"}, hoist});
    r.add(NodeRewriter{"scan_pushout_seqs", "canonicalize", {"scan", "fast_run"}, pushout_seqs});
    r.add(GraphPass{"scan_prune", {"scan", "fast_run"}, scan_prune});
    r.add(GraphPass{"scan_pushout_dot", {"scan", "fast_run"}, scan_pushout_dot});
    r.add(GraphPass{"scan_save_mem", {"scan", "fast_run"}, scan_save_mem});
}

}  // namespace theanine
