// Rewrites of loops (ops/scan.hpp), on the outer graph:
//   scan_single_step  a Scan whose n_steps is the constant 1 becomes its step's graph on the
//                     first rows (outputs get their leading axis back by a DimShuffle)
//   scan_hoist        inner computations that read no sequence, past output or loop state
//                     (and draw no random numbers) move out of the loop and become
//                     non-sequences, so they run once per call instead of once per step
//   scan_save_mem     an output of which only the last step is read (y[-1]: reduce, foldl,
//                     the HMC trajectory's end) keeps a ring of the last steps it needs
//                     instead of every step
#include <algorithm>
#include <unordered_set>

#include "compile/rewrites/rewrites.hpp"
#include "ops/scan.hpp"

namespace theanine {

namespace {

Variable padleft(const Variable& v) {
    std::vector<int> order{-1};
    for (int d = 0; d < v.ndim(); ++d) order.push_back(d);
    return dimshuffle(v, order);
}

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

bool reads_last_row_only(const Node& client, const Variable& v) {
    const auto* st = dynamic_cast<const Subtensor*>(client.op.get());
    if (!st || !client.inputs[0].same(v)) return false;
    for (std::size_t i = 1; i < client.inputs.size(); ++i) {
        if (client.inputs[i].same(v)) return false;
    }
    const auto& e = st->spec().entries;
    return !e.empty() && e[0].is_index && e[0].b[0].kind == IndexSpec::BoundSpec::Kind::constant && e[0].b[0].value == -1;
}

}  // namespace

// scan_save_mem: outputs read only as y[-1] keep only the steps they need.
std::vector<Variable> scan_save_mem(const std::vector<Variable>& outputs, RewriteLog& log) {
    auto order = toposort(outputs);
    VarMap<std::vector<const Node*>> clients;
    for (const auto& node : order) {
        if (node->kind != NodeKind::apply) continue;
        for (const auto& in : node->inputs) clients[key(in)].push_back(node.get());
    }
    VarMap<bool> returned;
    for (const auto& o : outputs) returned[key(o)] = true;
    VarMap<Variable> replace;
    for (const auto& node : order) {
        const auto* op = node->kind == NodeKind::apply ? dynamic_cast<const ScanOp*>(node->op.get()) : nullptr;
        if (!op) continue;
        ScanInfo info = op->inner().info;
        bool changed = false;
        for (std::size_t j = 0; j < info.out_taps.size(); ++j) {
            const Variable y = node->output(static_cast<int>(j));
            if (info.keep_last[j] > 0 || returned.count(key(y))) continue;
            auto c = clients.find(key(y));
            if (c == clients.end() || c->second.empty()) continue;
            bool last_only = true;
            for (const Node* cl : c->second) last_only = last_only && reads_last_row_only(*cl, y);
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
    r.add(GraphPass{"scan_save_mem", {"scan", "fast_run"}, scan_save_mem});
}

}  // namespace theanine
