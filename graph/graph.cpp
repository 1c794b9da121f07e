#include "graph/graph.hpp"

#include <atomic>
#include <typeinfo>

#include <fmt/format.h>

namespace theanine {

namespace {
std::atomic<std::uint64_t> g_serial{0};

std::shared_ptr<Node> new_node(NodeKind kind) {
    auto n = std::make_shared<Node>();
    n->kind = kind;
    n->serial = ++g_serial;
    return n;
}
}  // namespace

std::string TensorType::str() const {
    std::string_view dt = dtype_name(dtype);
    const auto& b = broadcastable;
    if (b.empty()) return fmt::format("{} scalar", dt);
    if (b.size() == 1 && !b[0]) return fmt::format("{} vector", dt);
    if (b.size() == 2 && !b[0] && !b[1]) return fmt::format("{} matrix", dt);
    if (b.size() == 2 && b[0] && !b[1]) return fmt::format("{} row", dt);
    if (b.size() == 2 && !b[0] && b[1]) return fmt::format("{} col", dt);
    std::string s = fmt::format("{} (", dt);
    for (std::size_t i = 0; i < b.size(); ++i) s += (i ? ", " : "") + std::string(b[i] ? "T" : "F");
    return s + ")";
}

bool TensorType::accepts(const Tensor& t) const {
    if (!t.defined() || t.dtype() != dtype || t.ndim() != ndim()) return false;
    for (int i = 0; i < ndim(); ++i) {
        if (broadcastable[static_cast<std::size_t>(i)] && t.dim(i) != 1) return false;
    }
    return true;
}

const TensorType& Variable::type() const {
    if (!node_) throw UsageError("use of an undefined Variable");
    return node_->types.at(static_cast<std::size_t>(index_));
}

std::string Variable::name() const {
    if (!node_) return "";
    if (node_->kind != NodeKind::apply) return node_->name;
    const auto i = static_cast<std::size_t>(index_);
    return i < node_->output_names.size() ? node_->output_names[i] : "";
}

void Variable::set_name(const std::string& name) const {
    if (!node_) throw UsageError("set_name: the Variable is undefined");
    if (node_->kind != NodeKind::apply) {
        throw UsageError(fmt::format("set_name: '{}' is a {} and keeps the name it was made with", label(),
                                     node_->kind == NodeKind::constant ? "constant" : "leaf"));
    }
    node_->output_names.resize(static_cast<std::size_t>(node_->n_outputs()));
    node_->output_names[static_cast<std::size_t>(index_)] = name;
}

std::string Variable::label() const {
    if (!node_) return "<undefined>";
    if (!node_->name.empty()) return node_->name;
    if (std::string n = name(); !n.empty()) return n;
    if (node_->kind == NodeKind::apply) {
        std::string s = node_->op->name();
        if (node_->n_outputs() > 1) s += fmt::format(".{}", index_);
        return s;
    }
    if (node_->kind == NodeKind::constant) return "constant";
    return "<unnamed>";
}

bool Variable::is_apply() const { return node_ && node_->kind == NodeKind::apply; }
bool Variable::is_input() const { return node_ && node_->kind == NodeKind::input; }
bool Variable::is_constant() const { return node_ && node_->kind == NodeKind::constant; }
bool Variable::is_shared() const { return node_ && node_->kind == NodeKind::shared; }

void Op::validate(const Node&, std::span<const Tensor* const>) const {}
void Op::finish(const Node&, std::span<Tensor* const>) const {}
void Op::progress(const Node&) const {}
std::vector<int> Op::destroy_candidates(const Node&, int output) const {
    const std::vector<int> dm = destroy_map();
    if (output < static_cast<int>(dm.size()) && dm[output] >= 0) return {dm[output]};
    return {};
}

std::optional<std::vector<Shape>> Op::infer_shape(const std::vector<Shape>&) const {
    return std::nullopt;
}

std::vector<Variable> Op::pullback(const Node& node, const std::vector<Variable>&) const {
    std::vector<Variable> g;
    for (std::size_t i = 0; i < node.inputs.size(); ++i) {
        g.push_back(not_differentiable(*this, static_cast<int>(i)));
    }
    return g;
}

bool Op::equals(const Op& other) const {
    return typeid(*this) == typeid(other) && props_equal(other);
}

std::size_t Op::hash() const { return typeid(*this).hash_code() ^ (props_hash() * 1000003u); }

Variable Node::output(int i) const { return Variable(shared_from_this(), i); }

std::vector<Variable> apply(std::shared_ptr<const Op> op, std::vector<Variable> inputs,
                            std::source_location where) {
    for (std::size_t i = 0; i < inputs.size(); ++i) {
        if (!inputs[i].defined()) {
            throw UsageError(fmt::format("{}: input {} is an undefined Variable{}", op->name(), i,
                                         where.line() ? " (node built at " + where_string(where) + ")" : ""));
        }
    }
    std::vector<TensorType> types;
    try {
        types = op->make_types(inputs);
    } catch (const UsageError& e) {
        if (where.line() == 0) throw;
        throw UsageError(std::string(e.what()) + " (node built at " + where_string(where) + ")");
    }
    auto n = new_node(NodeKind::apply);
    n->op = std::move(op);
    n->inputs = std::move(inputs);
    n->types = std::move(types);
    n->where = where;
    std::shared_ptr<const Node> cn = n;
    std::vector<Variable> outs;
    for (int i = 0; i < cn->n_outputs(); ++i) outs.emplace_back(cn, i);
    return outs;
}

Variable apply1(std::shared_ptr<const Op> op, std::vector<Variable> inputs,
                std::source_location where) {
    auto outs = apply(std::move(op), std::move(inputs), where);
    internal_check(outs.size() == 1, "apply1 on an op with several outputs");
    return outs[0];
}

Variable input(const TensorType& type, const std::string& name, std::source_location where) {
    auto n = new_node(NodeKind::input);
    n->types = {type};
    n->name = name;
    n->where = where;
    return Variable(std::move(n), 0);
}

namespace {
Variable make_input(int ndim, const std::string& name, DType dt) {
    return input(TensorType{dt, std::vector<bool>(static_cast<std::size_t>(ndim), false)}, name);
}
}  // namespace

Variable scalar(const std::string& name, std::optional<DType> dt) {
    return make_input(0, name, dt.value_or(config().floatX));
}
Variable lscalar(const std::string& name) { return make_input(0, name, DType::int64); }
Variable iscalar(const std::string& name) { return make_input(0, name, DType::int32); }
Variable vector(const std::string& name, std::optional<DType> dt) {
    return make_input(1, name, dt.value_or(config().floatX));
}
Variable ivector(const std::string& name) { return make_input(1, name, DType::int32); }
Variable lvector(const std::string& name) { return make_input(1, name, DType::int64); }
Variable bscalar(const std::string& name) { return make_input(0, name, DType::int8); }
Variable bvector(const std::string& name) { return make_input(1, name, DType::int8); }
Variable bmatrix(const std::string& name) { return make_input(2, name, DType::int8); }
Variable wscalar(const std::string& name) { return make_input(0, name, DType::int16); }
Variable wvector(const std::string& name) { return make_input(1, name, DType::int16); }
Variable wmatrix(const std::string& name) { return make_input(2, name, DType::int16); }
Variable imatrix(const std::string& name) { return make_input(2, name, DType::int32); }
Variable lmatrix(const std::string& name) { return make_input(2, name, DType::int64); }
Variable matrix(const std::string& name, std::optional<DType> dt) {
    return make_input(2, name, dt.value_or(config().floatX));
}
Variable dmatrix(const std::string& name) { return make_input(2, name, DType::float64); }
Variable fmatrix(const std::string& name) { return make_input(2, name, DType::float32); }
Variable tensor3(const std::string& name, std::optional<DType> dt) {
    return make_input(3, name, dt.value_or(config().floatX));
}
Variable tensor4(const std::string& name, std::optional<DType> dt) {
    return make_input(4, name, dt.value_or(config().floatX));
}

std::uint64_t newest_node_serial() { return g_serial.load(); }

void inherit_where(const std::vector<Variable>& made, std::uint64_t since, const std::source_location& where) {
    std::vector<const Node*> stack;
    for (const auto& v : made) stack.push_back(v.node_ptr().get());
    while (!stack.empty()) {
        const Node* n = stack.back();
        stack.pop_back();
        const bool same_line = n->where.line() == where.line() && n->where.file_name() == where.file_name();
        if (n->serial <= since || n->kind != NodeKind::apply || same_line) continue;
        // Nodes made by the rewrite that is running are reachable from nothing else yet.
        const_cast<Node*>(n)->where = where;
        for (const auto& in : n->inputs) stack.push_back(in.node_ptr().get());
    }
}

Variable constant(const Tensor& value, const std::string& name, bool weak) {
    if (!value.defined()) throw UsageError("constant: the value is an empty tensor");
    auto n = new_node(NodeKind::constant);
    std::vector<bool> bc;
    for (int i = 0; i < value.ndim(); ++i) bc.push_back(value.dim(i) == 1);
    n->types = {TensorType{value.dtype(), bc}};
    n->value = value.contiguous();
    n->name = name;
    n->weak = weak;
    return Variable(std::move(n), 0);
}

Variable constant(double value, std::optional<DType> dt) {
    DType d = dt.value_or(config().floatX);
    return constant(Tensor::full(d, {}, value));
}

SharedVariable::SharedVariable(const Variable& v) : Variable(v) {
    if (!v.is_shared()) {
        throw UsageError(fmt::format("SharedVariable: '{}' is not a shared variable", v.label()));
    }
}

Tensor SharedVariable::get_value(bool borrow) const {
    const Tensor& t = cell().value;
    return borrow ? t : t.copy();
}

void SharedVariable::set_value(const Tensor& value, bool borrow) const {
    if (!value.defined()) throw UsageError(fmt::format("set_value of shared variable '{}': the value is empty", label()));
    const bool fits = TensorType{value.dtype(), type().broadcastable}.accepts(value);
    if (!fits || !casts_safely(value.dtype(), dtype())) {
        throw UsageError(fmt::format(
            "set_value of shared variable '{}': value {} {} does not fit its type {}{}", label(),
            dtype_name(value.dtype()), shape_string(value.shape()), type().str(),
            fits ? " without losing precision (cast it first)" : ""));
    }
    // Another dtype that converts safely (an int array for a float variable) is converted.
    cell().value = value.dtype() != dtype() ? value.astype(dtype()) : borrow ? value : value.copy();
}

void SharedVariable::tie_default_update(const Variable& update) const {
    if (!update.defined()) throw UsageError(fmt::format("default update of '{}' is an undefined Variable", label()));
    if (update.type() != type()) {
        throw UsageError(fmt::format("default update of '{}' has type {}, expected {}", label(),
                                     update.type().str(), type().str()));
    }
    clear_default_update();
    cell().default_update_node = update.node_ptr();
    cell().default_update_index = update.index();
}

void SharedVariable::set_default_update(const Variable& update) const {
    tie_default_update(update);
    Variable self = input(type(), name().empty() ? "<shared>" : name());
    VarMap<Variable> to_self;
    to_self[key(*this)] = self;
    cell().detached_update = clone_with_replace({update}, to_self)[0];
    cell().detached_self = self;
}

void SharedVariable::clear_default_update() const {
    cell().default_update_node.reset();
    cell().default_update_index = 0;
    cell().detached_update = Variable();
    cell().detached_self = Variable();
}

Variable default_update_of(const std::shared_ptr<const Node>& shared_node) {
    if (!shared_node || shared_node->kind != NodeKind::shared) return Variable();
    const SharedCell& cell = *shared_node->cell;
    if (auto live = cell.default_update_node.lock()) return Variable(live, cell.default_update_index);
    if (!cell.detached_update.defined()) return Variable();
    VarMap<Variable> back;
    back[key(cell.detached_self)] = Variable(shared_node, 0);
    return clone_with_replace({cell.detached_update}, back)[0];
}

SharedVariable shared(const Tensor& value, const std::string& name, bool borrow,
                      std::optional<std::vector<bool>> broadcastable) {
    if (!value.defined()) throw UsageError(fmt::format("shared('{}'): the value is an empty tensor", name));
    auto n = new_node(NodeKind::shared);
    std::vector<bool> bc = broadcastable.value_or(std::vector<bool>(static_cast<std::size_t>(value.ndim()), false));
    if (static_cast<int>(bc.size()) != value.ndim()) {
        throw UsageError(fmt::format("shared('{}'): broadcastable pattern has {} entries for a {}-d value",
                                     name, bc.size(), value.ndim()));
    }
    n->types = {TensorType{value.dtype(), bc}};
    n->name = name;
    n->cell = std::make_shared<SharedCell>();
    n->cell->name = name;
    n->cell->value = borrow ? value : value.copy();
    if (!n->types[0].accepts(n->cell->value)) {
        throw UsageError(fmt::format("shared('{}'): value of shape {} does not fit broadcastable pattern {}",
                                     name, shape_string(value.shape()), n->types[0].str()));
    }
    return SharedVariable(Variable(std::move(n), 0));
}

namespace {
// Marker op for "this input has no gradient". Never executed.
class NotDifferentiable final : public Op {
public:
    NotDifferentiable(std::string op, int input, TensorType type, std::string reason)
        : op_(std::move(op)), input_(input), type_(std::move(type)), reason_(std::move(reason)) {}
    std::string name() const override {
        return fmt::format("NotDifferentiable{{{}, input {}}}", op_, input_);
    }
    std::vector<TensorType> make_types(const std::vector<Variable>&) const override { return {type_}; }
    void perform(const Node&, std::span<const Tensor* const>, std::span<Tensor* const>) const override {
        throw UsageError(fmt::format("the gradient of {} with respect to its input {} is not defined", op_, input_));
    }
    bool props_equal(const Op& o) const override {
        auto& x = static_cast<const NotDifferentiable&>(o);
        return x.op_ == op_ && x.input_ == input_;
    }
    std::size_t props_hash() const override { return std::hash<std::string>()(op_) + static_cast<std::size_t>(input_); }
    const std::string& op_name() const { return op_; }
    int input() const { return input_; }
    const std::string& reason() const { return reason_; }

private:
    std::string op_;
    int input_;
    TensorType type_;
    std::string reason_;
};
}  // namespace

Variable not_differentiable(const Op& op, int input, std::string reason) {
    return apply1(std::make_shared<NotDifferentiable>(op.name(), input, TensorType{DType::float64, {}}, std::move(reason)),
                  {}, std::source_location());
}

std::string not_differentiable_reason(const Variable& g) {
    const auto* nd = g.is_apply() ? dynamic_cast<const NotDifferentiable*>(g.node().op.get()) : nullptr;
    return nd ? nd->reason() : std::string();
}

bool is_not_differentiable(const Variable& g) {
    return g.is_apply() && dynamic_cast<const NotDifferentiable*>(g.node().op.get()) != nullptr;
}

std::vector<std::shared_ptr<const Node>> toposort(const std::vector<Variable>& outputs) {
    std::vector<std::shared_ptr<const Node>> order;
    std::unordered_map<const Node*, int> state;  // 1 = on stack, 2 = done
    std::vector<std::pair<std::shared_ptr<const Node>, std::size_t>> stack;
    for (const Variable& out : outputs) {
        if (!out.defined() || state[out.node_ptr().get()] == 2) continue;
        stack.emplace_back(out.node_ptr(), 0);
        state[out.node_ptr().get()] = 1;
        while (!stack.empty()) {
            auto& [node, next] = stack.back();
            if (next < node->inputs.size()) {
                const auto& in = node->inputs[next++].node_ptr();
                int s = state[in.get()];
                if (s == 0) {
                    state[in.get()] = 1;
                    stack.emplace_back(in, 0);
                } else if (s == 1) {
                    throw InternalError("toposort: the graph has a cycle");
                }
            } else {
                state[node.get()] = 2;
                order.push_back(node);
                stack.pop_back();
            }
        }
    }
    return order;
}

std::vector<Variable> clone_with_replace(const std::vector<Variable>& outputs,
                                         const VarMap<Variable>& replace) {
    if (replace.empty()) return outputs;
    VarMap<Variable> memo = replace;
    for (const auto& node : toposort(outputs)) {
        if (node->kind != NodeKind::apply) continue;
        bool changed = false;
        std::vector<Variable> ins;
        for (const Variable& in : node->inputs) {
            auto it = memo.find(key(in));
            if (it != memo.end()) {
                ins.push_back(it->second);
                changed = true;
            } else {
                ins.push_back(in);
            }
        }
        bool self_replaced = false;
        for (int i = 0; i < node->n_outputs(); ++i) {
            if (replace.count(VarKey{node.get(), i})) self_replaced = true;
        }
        if (!changed || self_replaced) continue;
        auto outs = apply(node->op, ins, node->where);
        for (int i = 0; i < node->n_outputs(); ++i) memo[VarKey{node.get(), i}] = outs[static_cast<std::size_t>(i)];
    }
    std::vector<Variable> result;
    for (const Variable& o : outputs) {
        auto it = memo.find(key(o));
        result.push_back(it != memo.end() ? it->second : o);
    }
    return result;
}

}  // namespace theanine
