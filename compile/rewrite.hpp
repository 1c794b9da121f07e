/// \file
/// The rewrite registry and the pipeline that runs it.
///
/// A NodeRewriter looks at one apply node and may return replacements for its outputs; its
/// comment's first line is the rewrite (e.g. "log(sigmoid(x)) -> -softplus(x... )"). A
/// GraphPass transforms the whole graph (merge, constant folding, fusion). Every rewrite has
/// a name and tags (its phase); CompileOptions include or exclude them by name or tag.
///
/// The pipeline (optimize() in compile/rewrite.cpp) is one ordered list of stages:
///   merge -> constant_fold -> scan_prune -> scan_pushout_dot -> canonicalize -> stabilize -> specialize -> constant_fold -> merge
///   -> scan_save_mem -> fusion
/// (the loop rewrites scan_single_step and scan_hoist are canonicalize node rewriters)
/// Node-rewrite phases run to a fixed point; a phase that does not settle within its
/// iteration budget raises InternalError naming the rewrites that kept firing.
#pragma once

#include <functional>
#include <optional>
#include <string>
#include <vector>

#include "graph/graph.hpp"

namespace theanine {

struct RewriteLog {
    bool verbose = false;
    std::vector<std::string> lines;  ///< "rewrite X replaced A by B"
    void note(const std::string& rewrite, const Variable& old_var, const Variable& new_var);
};

struct NodeRewriter {
    std::string name;
    std::string phase;  ///< canonicalize, stabilize, specialize
    std::vector<std::string> tags;
    std::function<std::optional<std::vector<Variable>>(const Node&)> fn;
};

struct GraphPass {
    std::string name;
    std::vector<std::string> tags;
    std::function<std::vector<Variable>(const std::vector<Variable>&, RewriteLog&)> fn;
};

class RewriteRegistry {
public:
    static RewriteRegistry& global();

    void add(NodeRewriter r);
    void add(GraphPass p);
    const std::vector<NodeRewriter>& node_rewriters() const { return node_; }
    const std::vector<GraphPass>& graph_passes() const { return passes_; }
    /// "name [phase, tags...]" per rewrite, in registration order.
    std::vector<std::string> list() const;
    bool known(const std::string& name_or_tag) const;

private:
    std::vector<NodeRewriter> node_;
    std::vector<GraphPass> passes_;
};

/// Which rewrites a compilation uses.
struct RewriteSelection {
    bool none = false;                     ///< compile with no rewrites at all
    std::vector<std::string> excluding;    ///< names or tags
    std::vector<std::string> including;    ///< names or tags added back
    bool enabled(const std::string& name, const std::vector<std::string>& tags) const;
};

/// Runs the node rewriters of one phase to a fixed point.
std::vector<Variable> run_phase(const std::vector<Variable>& outputs, const std::string& phase,
                                const RewriteSelection& sel, RewriteLog& log);

/// The whole pipeline.
std::vector<Variable> optimize(const std::vector<Variable>& outputs, const RewriteSelection& sel, RewriteLog& log);

/// Graph passes, also usable alone.
std::vector<Variable> merge_duplicates(const std::vector<Variable>& outputs, RewriteLog& log);
std::vector<Variable> constant_fold(const std::vector<Variable>& outputs, RewriteLog& log);

}  // namespace theanine
