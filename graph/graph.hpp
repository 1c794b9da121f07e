/// \file
/// The expression graph: types, variables, apply nodes, the Op interface, shared variables.
///
/// A Variable is a cheap handle {node, output index}. A Node is immutable after construction
/// and is either a leaf (a symbolic input, a constant, a shared variable) or an Apply: an Op
/// applied to input Variables. Ownership runs from outputs to inputs only, so graphs never
/// form reference cycles. Two Variables are the same variable when they name the same node
/// and output (Variable::same); names are display metadata only.
///
/// This layer knows no concrete op. The convenience members of Variable that build ops
/// (T(), shape(), slicing, sum, ...) are declared here and defined by the op families.
#pragma once

#include <cstdint>
#include <functional>
#include <initializer_list>
#include <memory>
#include <optional>
#include <source_location>
#include <span>
#include <string>
#include <unordered_map>
#include <vector>

#include "graph/config.hpp"
#include "graph/tensor.hpp"

namespace theanine {

/// A static type: dtype plus one "broadcastable" flag per dimension (true = always size 1).
/// The number of dimensions is static; sizes are dynamic.
struct TensorType {
    DType dtype = DType::float64;
    std::vector<bool> broadcastable;

    int ndim() const { return static_cast<int>(broadcastable.size()); }
    bool operator==(const TensorType&) const = default;
    /// "float64 matrix", "float32 row", "int64 scalar", "float64 (F, T, F)"
    std::string str() const;
    /// Whether a runtime value fits this type (dtype, rank, size 1 where broadcastable).
    bool accepts(const Tensor& t) const;
};

class Node;
class Op;
struct SharedCell;
class Variable;
struct Idx;  ///< ops/shape.hpp

/// A handle on one output of a node (see the file comment).
class Variable {
public:
    Variable() = default;
    Variable(std::shared_ptr<const Node> node, int index) : node_(std::move(node)), index_(index) {}

    bool defined() const { return node_ != nullptr; }
    const Node& node() const { return *node_; }
    const std::shared_ptr<const Node>& node_ptr() const { return node_; }
    int index() const { return index_; }
    bool same(const Variable& other) const {
        return node_ == other.node_ && index_ == other.index_;
    }

    const TensorType& type() const;
    DType dtype() const { return type().dtype; }
    int ndim() const { return type().ndim(); }
    const std::vector<bool>& broadcastable() const { return type().broadcastable; }
    std::string name() const;  ///< the leaf's name, or the name set on an apply output ("" if none)
    /// Names an apply output (as `var.name = ...` in Theano); a leaf keeps the name it was made with.
    void set_name(const std::string& name) const;
    /// A short label for messages: the name, or the op name with the output index.
    std::string label() const;

    bool is_apply() const;
    bool is_input() const;
    bool is_constant() const;
    bool is_shared() const;

    /// Builders defined by the op families (ops/shape.cpp, ops/reduce.cpp).
    Variable T() const;                                 ///< transpose (reversed axes)
    Variable dimshuffle(const std::vector<int>& order) const;  ///< -1 is Theano's 'x'
    Variable shape() const;                             ///< int64 vector
    Variable shape(int axis) const;                     ///< int64 scalar
    Variable reshape(const std::vector<Variable>& shape) const;
    Variable flatten(int outdim = 1) const;
    Variable sum(std::optional<int> axis = std::nullopt, bool keepdims = false) const;
    Variable mean(std::optional<int> axis = std::nullopt, bool keepdims = false) const;
    Variable max(std::optional<int> axis = std::nullopt, bool keepdims = false) const;
    Variable argmax(std::optional<int> axis = std::nullopt) const;
    Variable astype(DType dt) const;
    /// x[{i, j}]: basic indexing with integers, symbolic scalars and slices, or advanced
    /// indexing with integer vectors (m[{arange(n), y}]). Defined in ops/shape.cpp.
    Variable operator[](std::initializer_list<Idx> index) const;

private:
    std::shared_ptr<const Node> node_;
    int index_ = 0;
};

struct VarKey {
    const Node* node;
    int index;
    bool operator==(const VarKey&) const = default;
};
struct VarKeyHash {
    std::size_t operator()(const VarKey& k) const {
        return std::hash<const void*>()(k.node) * 31u + static_cast<std::size_t>(k.index);
    }
};
inline VarKey key(const Variable& v) { return {v.node_ptr().get(), v.index()}; }

template <class V>
using VarMap = std::unordered_map<VarKey, V, VarKeyHash>;

/// The Op interface. Each op keeps in one place: type checking (make_types), its kernel
/// (perform), shape inference (infer_shape), its gradient (pullback), identity (props), name.
class Op {
public:
    virtual ~Op() = default;

    /// Printable name with props, e.g. "Elemwise{add}", "Sum{axes=[1]}".
    virtual std::string name() const = 0;

    /// Checks the input types and returns the output types. Throws UsageError with a message
    /// that names the op, the input positions and their types.
    virtual std::vector<TensorType> make_types(const std::vector<Variable>& inputs) const = 0;

    /// The kernel (node gives the static types, as in Theano). out[i] arrives holding the
    /// tensor this slot held after the previous call (or empty); a kernel calls
    /// out[i]->ensure(...) to reuse that storage.
    virtual void perform(const Node& node, std::span<const Tensor* const> in,
                         std::span<Tensor* const> out) const = 0;

    /// Output shapes from input shapes when they depend on shapes alone; nullopt otherwise.
    virtual std::optional<std::vector<Shape>> infer_shape(const std::vector<Shape>& in) const;

    /// Reverse-mode rule (Theano's grad/L_op): given the node and one gradient per output
    /// (undefined Variable = that output is disconnected from the cost), returns one gradient
    /// per input. An undefined Variable means "disconnected" (no dependence); use
    /// not_differentiable() for an input that has no gradient.
    virtual std::vector<Variable> pullback(const Node& node,
                                           const std::vector<Variable>& out_grads) const;

    /// For each output, the input it is a view of (shares storage with), or -1.
    virtual std::vector<int> view_map() const { return {}; }

    /// For each output, the input whose buffer the kernel can overwrite to produce it, or -1.
    /// The planner grants it (passing the input's own tensor as that output) only when no
    /// later step reads the old value; otherwise the output is a separate buffer.
    virtual std::vector<int> destroy_map() const { return {}; }
    /// The inputs output `output` of node may overwrite, most preferred first: destroy_map's
    /// by default. An op that can take any of several (an elementwise loop over inputs of its
    /// output's type) lists them all; the planner grants at most one, and the kernel finds it
    /// as the input whose tensor is the output's (out[o] == in[k]).
    virtual std::vector<int> destroy_candidates(const Node& node, int output) const;

    /// Checks the runtime inputs as perform() does before it writes anything, throwing the
    /// error perform() would throw. An op with a destroy_map implements it, and perform()
    /// must not throw for inputs it accepts: the executor validates every step that writes
    /// into a shared variable's buffer before the first of them runs, so a call that fails
    /// changes no shared variable (compile/ownership.hpp).
    virtual void validate(const Node& node, std::span<const Tensor* const> in) const;

    /// Loops and other ops that hold a graph of their own: its outputs (debugprint shows the
    /// graph under the node) and, with profiling, the time spent in it.
    virtual const std::vector<Variable>* inner_outputs() const { return nullptr; }
    virtual std::string inner_profile() const { return ""; }

    /// Ops whose kernel hands work to another engine that completes it later (a collective
    /// over the network): perform() starts the work and returns; finish() waits for it and
    /// leaves the outputs written. The executor schedules such a step as soon as its inputs
    /// are ready, calls progress() after each step that runs while the work is in flight, and
    /// finish() just before the first step that reads an output (or at the end of the call),
    /// so the work overlaps the steps in between. The inputs stay untouched until finish().
    virtual bool is_async() const { return false; }
    virtual void finish(const Node& node, std::span<Tensor* const> out) const;
    virtual void progress(const Node& node) const;
    /// Collectives must start in the same order in every process of a job: the steps whose
    /// ops give a sequence number run in the order of their numbers.
    virtual std::optional<std::int64_t> collective_sequence() const { return std::nullopt; }

    /// Identity through props. Ops of the same dynamic type with equal props are equal,
    /// so equal nodes can be merged.
    virtual bool props_equal(const Op& other) const = 0;
    virtual std::size_t props_hash() const = 0;

    /// Whether perform() has effects beyond its outputs or reads state (random ops);
    /// such nodes are never merged or constant-folded.
    virtual bool is_stateful() const { return false; }

    bool equals(const Op& other) const;
    std::size_t hash() const;
};

enum class NodeKind { apply, input, constant, shared };

/// Mutable storage behind a shared variable.
struct SharedCell {
    Tensor value;
    std::string name;
    /// Update applied by every function that reads this variable, unless the function's own
    /// updates name it. The expression itself is held weakly, so that while a graph uses it a
    /// function computes that very node. A random op's new state is tied to its draw this
    /// way only (tie_default_update): once the draw's graph is gone, or a loop has taken the
    /// draw into its step, the state has no default update. For an update set by
    /// set_default_update, a copy with this variable replaced by the placeholder
    /// `detached_self` is also held strongly (holding the expression itself would be a cycle,
    /// as it refers to this variable) and takes over once nothing else keeps the expression
    /// alive (x.set_default_update(x + 1) from a temporary). Two shared variables whose
    /// default updates read each other keep each other alive.
    std::weak_ptr<const Node> default_update_node;
    int default_update_index = 0;
    Variable detached_update;
    Variable detached_self;
};

class Node : public std::enable_shared_from_this<Node> {
public:
    NodeKind kind = NodeKind::apply;
    std::shared_ptr<const Op> op;             ///< apply only
    std::vector<Variable> inputs;             ///< apply only
    std::vector<TensorType> types;            ///< one per output (leaves: one)
    std::string name;                         ///< leaves: the user's name
    /// Apply nodes: names given to outputs after the node was built (Variable::set_name; grad
    /// names its results (dcost/dwrt)); empty where none was given.
    mutable std::vector<std::string> output_names;
    Tensor value;                             ///< constants
    bool weak = false;                        ///< constants auto-wrapped from C++ numbers
    std::shared_ptr<SharedCell> cell;         ///< shared variables
    std::source_location where;               ///< the user's line that built the node
    std::uint64_t serial = 0;                 ///< creation order

    Variable output(int i) const;
    int n_outputs() const { return static_cast<int>(types.size()); }
};

/// Builds an Apply node of op on inputs and returns its outputs. Type errors from make_types
/// are rethrown with the user's line that built the node appended.
std::vector<Variable> apply(std::shared_ptr<const Op> op, std::vector<Variable> inputs,
                            std::source_location where = std::source_location::current());
Variable apply1(std::shared_ptr<const Op> op, std::vector<Variable> inputs,
                std::source_location where = std::source_location::current());

/// Symbolic inputs.
Variable input(const TensorType& type, const std::string& name = "",
               std::source_location where = std::source_location::current());
Variable scalar(const std::string& name = "", std::optional<DType> dt = std::nullopt);
Variable lscalar(const std::string& name = "");
Variable iscalar(const std::string& name = "");
Variable vector(const std::string& name = "", std::optional<DType> dt = std::nullopt);
Variable ivector(const std::string& name = "");
Variable lvector(const std::string& name = "");
/// Theano's b (int8), w (int16), i (int32) and l (int64) constructors; other dtypes
/// (uint16, uint32, ...) through input(TensorType{dtype, broadcastable}) or the dt argument.
Variable bscalar(const std::string& name = "");
Variable bvector(const std::string& name = "");
Variable bmatrix(const std::string& name = "");
Variable wscalar(const std::string& name = "");
Variable wvector(const std::string& name = "");
Variable wmatrix(const std::string& name = "");
Variable imatrix(const std::string& name = "");
Variable lmatrix(const std::string& name = "");
Variable matrix(const std::string& name = "", std::optional<DType> dt = std::nullopt);
Variable dmatrix(const std::string& name = "");
Variable fmatrix(const std::string& name = "");
Variable tensor3(const std::string& name = "", std::optional<DType> dt = std::nullopt);
Variable tensor4(const std::string& name = "", std::optional<DType> dt = std::nullopt);

/// Constants. A weak constant (auto-wrapped from a C++ number) takes the dtype of the other
/// operand of the same kind, as a Python literal does in Theano (x * 0.5 stays float32).
/// For rewrites: the serial of the newest node so far, and giving the apply nodes a rewrite
/// made (serial above since, reached from made through inputs) the user's line of the node
/// they replace, so that messages and graph views name the user's code, not the rewrite's.
std::uint64_t newest_node_serial();
void inherit_where(const std::vector<Variable>& made, std::uint64_t since, const std::source_location& where);

Variable constant(const Tensor& value, const std::string& name = "", bool weak = false);
Variable constant(double value, std::optional<DType> dt = std::nullopt);

/// A shared variable: a symbolic variable with storage that persists across calls.
class SharedVariable : public Variable {
public:
    SharedVariable() = default;
    explicit SharedVariable(const Variable& v);  ///< v must be a shared variable

    /// A copy of the value, or the stored tensor itself when borrow is true.
    Tensor get_value(bool borrow = false) const;
    /// Replaces the value; copies unless borrow. A value of another dtype is converted when
    /// numpy's safe casting allows it (casts_safely); otherwise, or when the rank or a
    /// broadcastable axis does not fit, throws UsageError naming the variable.
    void set_value(const Tensor& value, bool borrow = false) const;
    SharedCell& cell() const { return *node().cell; }
    /// Sets the expression every function reading this variable uses as its update (Theano's
    /// `x.default_update = ...`); the expression is kept for as long as the variable lives.
    void set_default_update(const Variable& update) const;
    /// As set_default_update, for as long as a graph holds the expression's node only (random
    /// ops tie their generator state's update to the draw this way).
    void tie_default_update(const Variable& update) const;
    /// Removes it (Theano's `del x.default_update`).
    void clear_default_update() const;
};

/// The default update of the shared variable `shared_node`: the expression set, or its copy
/// rebuilt on this variable when the expression is gone; undefined when none is set.
Variable default_update_of(const std::shared_ptr<const Node>& shared_node);

/// shared(value, name): the type is value's dtype with no broadcastable dimension (as in
/// Theano); broadcastable overrides that.
SharedVariable shared(const Tensor& value, const std::string& name = "", bool borrow = false,
                      std::optional<std::vector<bool>> broadcastable = std::nullopt);

/// A marker gradient for an input without a gradient. grad() raises UsageError naming the
/// op, the input and the reason when such a gradient reaches a requested wrt.
Variable not_differentiable(const Op& op, int input, std::string reason = "");
/// The reason a not_differentiable marker carries ("" when none was given).
std::string not_differentiable_reason(const Variable& g);
bool is_not_differentiable(const Variable& g);

/// All nodes the outputs depend on (leaves included), inputs before users.
std::vector<std::shared_ptr<const Node>> toposort(const std::vector<Variable>& outputs);

/// Rebuilds the graph of outputs with each variable in replace swapped for its replacement
/// (memoised: shared subgraphs are rebuilt once). Used for givens.
std::vector<Variable> clone_with_replace(const std::vector<Variable>& outputs,
                                         const VarMap<Variable>& replace);

}  // namespace theanine
