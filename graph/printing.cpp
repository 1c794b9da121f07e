#include "graph/printing.hpp"

#include <fmt/format.h>

namespace theanine {

namespace {

std::string id_string(std::size_t n) {
    std::string s;
    do {
        s.insert(s.begin(), static_cast<char>('A' + n % 26));
        n = n / 26;
    } while (n-- > 0);
    return s;
}

std::string constant_text(const Tensor& t) {
    if (t.size() == 1) return fmt::format("TensorConstant{{{}}}", t.item());
    return fmt::format("TensorConstant{{{} {}}}", dtype_name(t.dtype()), shape_string(t.shape()));
}

}  // namespace

std::string leaf_or_op(const Variable& v) {
    const Node& n = v.node();
    switch (n.kind) {
    case NodeKind::apply: {
        std::string s = n.op->name();
        if (n.n_outputs() > 1) s += fmt::format(".{}", v.index());
        if (std::string name = v.name(); !name.empty()) s += fmt::format(" '{}'", name);
        return s;
    }
    case NodeKind::constant: return n.name.empty() ? constant_text(n.value) : n.name;
    case NodeKind::shared: return n.name.empty() ? std::string("<shared>") : n.name;
    case NodeKind::input: return n.name.empty() ? std::string("<input>") : n.name;
    }
    return "?";
}

namespace {

struct Printer {
    const PrintOptions& opt;
    std::unordered_map<const Node*, std::string> ids;
    std::string out;
    std::vector<const Node*> with_inner;  // nodes holding a graph of their own, in order met

    std::string id_of(const Node* n, bool* fresh) {
        auto it = ids.find(n);
        *fresh = it == ids.end();
        if (*fresh) it = ids.emplace(n, id_string(ids.size())).first;
        return it->second;
    }

    // prefix starts this line; indent starts the lines of v's inputs.
    void line(const Variable& v, const std::string& prefix, const std::string& indent) {
        bool fresh = false;
        std::string id = id_of(v.node_ptr().get(), &fresh);
        out += prefix + leaf_or_op(v) + " [id " + id + "]";
        if (opt.print_type) out += " <" + v.type().str() + ">";
        if (opt.shapes) {
            auto s = opt.shapes->find(key(v));
            if (s != opt.shapes->end()) out += " " + shape_string(s->second);
        }
        out += "\n";
        if (!fresh || !v.is_apply()) return;
        if (v.node().op->inner_outputs()) with_inner.push_back(&v.node());
        const auto& ins = v.node().inputs;
        for (std::size_t i = 0; i < ins.size(); ++i) {
            const bool last = i + 1 == ins.size();
            line(ins[i], indent + " |", indent + (last ? "  " : " |"));
        }
    }
};

}  // namespace


std::string debugprint(const std::vector<Variable>& outputs, const PrintOptions& options) {
    Printer p{options, {}, {}, {}};
    for (const auto& v : outputs) p.line(v, "", "");
    // Inner graphs (a loop's step) after the graph, each under its node's id; the step's
    // inputs are its placeholders.
    for (std::size_t i = 0; i < p.with_inner.size(); ++i) {
        const Node* n = p.with_inner[i];
        p.out += fmt::format("\nInner graph of {} [id {}]:\n", n->op->name(), p.ids.at(n));
        for (const auto& v : *n->op->inner_outputs()) p.line(v, " >", " >");
    }
    return p.out;
}

std::string debugprint(const Variable& output, const PrintOptions& options) {
    return debugprint(std::vector<Variable>{output}, options);
}

std::string to_dot(const std::vector<Variable>& outputs, const std::string& graph_name) {
    std::string s = fmt::format("digraph {} {{\n  rankdir=BT;\n", graph_name);
    std::unordered_map<const Node*, std::size_t> ids;
    auto order = toposort(outputs);
    auto escape = [](std::string t) {
        std::string r;
        for (char c : t) {
            if (c == '"' || c == '\\') r += '\\';
            r += c;
        }
        return r;
    };
    for (const auto& n : order) {
        std::size_t id = ids.size();
        ids[n.get()] = id;
        Variable v(n, 0);
        std::string label = escape(leaf_or_op(v));
        if (n->kind == NodeKind::apply) {
            s += fmt::format("  n{} [shape=box, label=\"{}\"];\n", id, label);
        } else {
            s += fmt::format("  n{} [shape=ellipse, label=\"{}\\n{}\"];\n", id, label, escape(n->types[0].str()));
        }
        for (std::size_t i = 0; i < n->inputs.size(); ++i) {
            s += fmt::format("  n{} -> n{} [label=\"{}\"];\n", ids.at(n->inputs[i].node_ptr().get()), id, i);
        }
    }
    for (std::size_t i = 0; i < outputs.size(); ++i) {
        s += fmt::format("  out{} [shape=plaintext, label=\"output {}\"];\n  n{} -> out{};\n", i, i,
                         ids.at(outputs[i].node_ptr().get()), i);
    }
    return s + "}\n";
}

}  // namespace theanine
