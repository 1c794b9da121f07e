// The memory contract of compiled functions: which buffers a call may write, and which
// buffers it may hand to a caller or to a shared variable. It is stated and enforced here
// alone; the rest of the compiler asks these functions.
//
// Theano's aliasing rules, as theanine keeps them:
//   (a) A returned value never shares storage with an argument, a constant, a shared
//       variable, or another returned value, unless the caller asked for it: Out::borrow on
//       the output, or In::borrow on the argument it aliases. Such a value is copied when
//       it is returned (into a buffer the function reuses once the caller drops it).
//   (b) Two shared variables never share storage after an update: an update value that is an
//       argument, a constant, another shared variable, a view of one of them, or the value of
//       an earlier update is copied; any other computed value is handed over without a copy
//       (the variable takes the function's buffer, the function takes the old one).
//   (c) An in-place kernel writes only buffers the function owns, or the buffer of the very
//       shared variable whose update it computes (the destroyer's output is that update, or
//       leads to it through further in-place steps, and nothing else reads it). Before such
//       a step runs, the variable's value is made private and contiguous: a value that is a
//       non-contiguous view, or whose buffer an argument, a constant or another shared
//       variable also holds, is replaced by a copy first.
//   (d) A returned value is not changed by later calls of this or any other function: the
//       function reuses a buffer only when nothing outside it refers to it any more
//       (Tensor::ensure), and (a) keeps shared buffers out of the caller's hands.
//   (e) get_value and set_value copy unless borrow is true (graph/graph.hpp).
// A call is atomic: steps that write into shared variables' buffers run last, after every
// other step has succeeded, and are all validated (Op::validate) before the first writes;
// other state (random generator states included) changes only when the call commits its
// updates after the last step. A call that throws leaves every shared variable as it was.
// With borrow=true on get_value/set_value/In/Out the caller accepts that a buffer may be
// shared and changed by later calls, as in Theano.
#pragma once

#include <memory>
#include <unordered_set>
#include <utility>
#include <vector>

#include "graph/graph.hpp"

namespace theanine {

struct Plan;

// The planner's in-place decisions.
struct InPlaceGrants {
    std::vector<std::pair<const Node*, const Node*>> after;  // (reader, destroyer): reader runs first
    std::unordered_set<const Node*> commit;                  // steps that write a shared buffer
    std::vector<std::shared_ptr<SharedCell>> destroyed_cells;
    std::vector<std::string> log;                            // "Gemm{N,N} writes output 0 into input 0 (W)"
};

// Compile stage: grants each destroy request whose old value nobody reads afterwards and
// that rule (c) allows; a granted output takes its input's slot in slot_of. applies are in
// topological order; all = outputs then update values (n_outputs of them outputs). With
// into_shared false, no step writes into a shared variable's buffer (so any step may fail
// without a shared variable having changed: the NaN guard checks every step). The inputs in
// mutable_inputs (In::is_mutable) may be overwritten like the function's own buffers.
InPlaceGrants grant_in_place(const std::vector<std::shared_ptr<const Node>>& applies,
                             const std::vector<Variable>& all, std::size_t n_outputs,
                             const std::vector<std::shared_ptr<SharedCell>>& update_cells,
                             VarMap<int>& slot_of, bool into_shared = true,
                             const std::unordered_set<const Node*>& mutable_inputs = {});

// At the start of a call, with the arguments bound: binds the shared values to their slots,
// first making private and contiguous the values that steps overwrite in place (rule (c)).
void bind_shared(Plan& p);

// At the end of a successful call: collects the results (copied where rule (a) says),
// commits the updates (rule (b)) and returns the results.
std::vector<Tensor> finish_call(Plan& p);

}  // namespace theanine
