/// \file
/// Text and Graphviz views of graphs.
///
/// debugprint prints an indented tree, one line per variable:
///
/// \verbatim
///   Elemwise{add} [id A] <float64 matrix>
///    |x [id B] <float64 matrix>
///    |TensorConstant{1} [id C] <int64 scalar>
/// \endverbatim
///
/// A node used several times is printed in full once; later references print its line with
/// no children. Ids are letters in order of first appearance.
#pragma once

#include <string>
#include <vector>

#include "graph/graph.hpp"

namespace theanine {

struct PrintOptions {
    bool print_type = true;
    /// Concrete shapes to show beside types (e.g. from a compiled function's last call).
    const VarMap<Shape>* shapes = nullptr;
};

std::string debugprint(const std::vector<Variable>& outputs, const PrintOptions& options = {});
/// One variable's label: its op's name (with ".i" for output i of a multi-output op), or the
/// leaf's name, or a constant's value (TensorConstant{1}).
std::string leaf_or_op(const Variable& v);
std::string debugprint(const Variable& output, const PrintOptions& options = {});

/// Graphviz "dot" text: one box per apply node, one ellipse per leaf, edges labelled with
/// the input position.
std::string to_dot(const std::vector<Variable>& outputs, const std::string& graph_name = "theanine");

}  // namespace theanine
