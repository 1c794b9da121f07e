// Registration of the rewrite phases, one file per phase. The registry calls these once.
#pragma once

#include "compile/rewrite.hpp"

namespace theanine {

void register_canonicalize(RewriteRegistry& r);
void register_stabilize(RewriteRegistry& r);
void register_specialize(RewriteRegistry& r);
void register_fusion(RewriteRegistry& r);
void register_scan(RewriteRegistry& r);

// The fusion pass, also usable alone.
std::vector<Variable> fuse_elemwise(const std::vector<Variable>& outputs, RewriteLog& log);
// The loop pass that keeps only the last steps of outputs read as y[-1] (compile/rewrites/scan.cpp).
std::vector<Variable> scan_save_mem(const std::vector<Variable>& outputs, RewriteLog& log);
// The loop pass that drops outputs nothing reads (compile/rewrites/scan.cpp).
std::vector<Variable> scan_prune(const std::vector<Variable>& outputs, RewriteLog& log);
// The loop pass that moves products accumulated over the steps out of the loop (compile/rewrites/scan.cpp).
std::vector<Variable> scan_pushout_dot(const std::vector<Variable>& outputs, RewriteLog& log);

// Helpers for writing rewrites.
namespace pattern {
// The op of v's node as T, or nullptr when v is not an output of such an op.
template <class T>
const T* op_as(const Variable& v) {
    return v.is_apply() ? dynamic_cast<const T*>(v.node().op.get()) : nullptr;
}
// Whether v is an Elemwise node of the given scalar op.
bool is_elemwise(const Variable& v, int scalar_op);
// Whether v is a constant (possibly under DimShuffles) whose every element equals value.
bool is_constant_value(const Variable& v, double value);
}  // namespace pattern

}  // namespace theanine
