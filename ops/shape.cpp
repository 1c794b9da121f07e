#include "ops/shape.hpp"

#include <fmt/format.h>

#include "ops/elemwise.hpp"
#include "ops/loops.hpp"

namespace theanine {

namespace {
Variable int64_scalar_const(std::int64_t v) { return constant(Tensor::scalar<std::int64_t>(v)); }

void check_int_scalar(const std::string& op, std::size_t pos, const Variable& v) {
    if (v.ndim() != 0 || !is_integer(v.dtype())) {
        throw UsageError(fmt::format("{}: input {} must be an integer scalar, got {}", op, pos, v.type().str()));
    }
}

void check_int_vector(const std::string& op, std::size_t pos, const Variable& v) {
    if (v.ndim() != 1 || !is_integer(v.dtype())) {
        throw UsageError(fmt::format("{}: input {} must be an integer vector, got {}", op, pos, v.type().str()));
    }
}
}  // namespace

// ---------------------------------------------------------------- DimShuffle

DimShuffle::DimShuffle(std::vector<bool> input_bc, std::vector<int> order)
    : input_bc_(std::move(input_bc)), order_(std::move(order)) {
    std::vector<bool> seen(input_bc_.size(), false);
    for (int o : order_) {
        if (o < -1 || o >= static_cast<int>(input_bc_.size()) || (o >= 0 && seen[o])) {
            throw UsageError(fmt::format("{}: invalid order for a {}-d input", name(), input_bc_.size()));
        }
        if (o >= 0) seen[o] = true;
    }
    for (std::size_t i = 0; i < seen.size(); ++i) {
        if (!seen[i] && !input_bc_[i]) {
            throw UsageError(fmt::format("{}: drops axis {}, which is not broadcastable", name(), i));
        }
    }
}

bool DimShuffle::is_transpose() const {
    return input_bc_.size() == 2 && order_ == std::vector<int>{1, 0};
}

std::string DimShuffle::name() const {
    std::string s = "DimShuffle{";
    for (std::size_t i = 0; i < order_.size(); ++i) {
        s += (i ? "," : "") + (order_[i] < 0 ? std::string("x") : std::to_string(order_[i]));
    }
    return s + "}";
}

std::vector<TensorType> DimShuffle::make_types(const std::vector<Variable>& inputs) const {
    if (inputs.size() != 1) throw UsageError(name() + ": takes 1 input");
    const Variable& x = inputs[0];
    if (x.ndim() != static_cast<int>(input_bc_.size())) {
        throw UsageError(fmt::format("{}: input 0 is {}, expected {} dimensions", name(), x.type().str(), input_bc_.size()));
    }
    std::vector<bool> bc;
    for (int o : order_) bc.push_back(o < 0 ? true : x.broadcastable()[o]);
    return {TensorType{x.dtype(), bc}};
}

void DimShuffle::perform(const Node&, std::span<const Tensor* const> in, std::span<Tensor* const> out) const {
    *out[0] = in[0]->dimshuffle(order_);
}

std::optional<std::vector<Shape>> DimShuffle::infer_shape(const std::vector<Shape>& in) const {
    Shape s;
    for (int o : order_) s.push_back(o < 0 ? 1 : in[0][o]);
    return std::vector<Shape>{s};
}

std::vector<Variable> DimShuffle::pullback(const Node&, const std::vector<Variable>& g) const {
    // grad() hands g with the output's broadcastable pattern, so the inserted axes can be
    // dropped; axes the shuffle dropped come back as size-1 axes.
    std::vector<int> back(input_bc_.size(), -1);
    for (std::size_t j = 0; j < order_.size(); ++j) {
        if (order_[j] >= 0) back[order_[j]] = static_cast<int>(j);
    }
    return {apply1(std::make_shared<DimShuffle>(g[0].broadcastable(), back), {g[0]})};
}

bool DimShuffle::props_equal(const Op& other) const {
    const auto& o = static_cast<const DimShuffle&>(other);
    return o.order_ == order_ && o.input_bc_ == input_bc_;
}

std::size_t DimShuffle::props_hash() const {
    std::size_t h = input_bc_.size();
    for (int o : order_) h = h * 31 + static_cast<std::size_t>(o + 2);
    return h;
}

Variable dimshuffle(const Variable& x, const std::vector<int>& order) {
    return apply1(std::make_shared<DimShuffle>(x.broadcastable(), order), {x});
}

Variable transpose(const Variable& x) {
    std::vector<int> order;
    for (int i = x.ndim() - 1; i >= 0; --i) order.push_back(i);
    return dimshuffle(x, order);
}

Variable Variable::T() const { return transpose(*this); }
Variable Variable::dimshuffle(const std::vector<int>& order) const { return theanine::dimshuffle(*this, order); }

// ---------------------------------------------------------------- Shape, ShapeI, MakeVector

std::vector<TensorType> ShapeOp::make_types(const std::vector<Variable>& inputs) const {
    if (inputs.size() != 1) throw UsageError("Shape: takes 1 input");
    return {TensorType{DType::int64, {inputs[0].ndim() == 1}}};
}

void ShapeOp::perform(const Node&, std::span<const Tensor* const> in, std::span<Tensor* const> out) const {
    out[0]->ensure(DType::int64, {in[0]->ndim()});
    auto* d = out[0]->data<std::int64_t>();
    for (int i = 0; i < in[0]->ndim(); ++i) d[i] = in[0]->dim(i);
}

std::vector<Variable> ShapeOp::pullback(const Node&, const std::vector<Variable>&) const { return {Variable()}; }

std::string ShapeI::name() const { return fmt::format("Shape_i{{{}}}", axis_); }

std::vector<TensorType> ShapeI::make_types(const std::vector<Variable>& inputs) const {
    if (inputs.size() != 1) throw UsageError(name() + ": takes 1 input");
    if (axis_ < 0 || axis_ >= inputs[0].ndim()) {
        throw UsageError(fmt::format("{}: axis {} out of range for input 0 of type {}", name(), axis_, inputs[0].type().str()));
    }
    return {TensorType{DType::int64, {}}};
}

void ShapeI::perform(const Node&, std::span<const Tensor* const> in, std::span<Tensor* const> out) const {
    out[0]->ensure(DType::int64, {});
    *out[0]->data<std::int64_t>() = in[0]->dim(axis_);
}

std::vector<Variable> ShapeI::pullback(const Node&, const std::vector<Variable>&) const { return {Variable()}; }

Variable Variable::shape() const { return apply1(std::make_shared<ShapeOp>(), {*this}); }
Variable Variable::shape(int axis) const {
    if (axis < 0) axis += ndim();
    return apply1(std::make_shared<ShapeI>(axis), {*this});
}

std::vector<TensorType> MakeVector::make_types(const std::vector<Variable>& inputs) const {
    for (std::size_t i = 0; i < inputs.size(); ++i) check_int_scalar(name(), i, inputs[i]);
    return {TensorType{DType::int64, {inputs.size() == 1}}};
}

void MakeVector::perform(const Node&, std::span<const Tensor* const> in, std::span<Tensor* const> out) const {
    out[0]->ensure(DType::int64, {static_cast<std::int64_t>(in.size())});
    auto* d = out[0]->data<std::int64_t>();
    for (std::size_t i = 0; i < in.size(); ++i) d[i] = in[i]->item_int();
}

std::vector<Variable> MakeVector::pullback(const Node& node, const std::vector<Variable>&) const {
    return std::vector<Variable>(node.inputs.size());
}

Variable make_vector(const std::vector<Variable>& scalars) {
    return apply1(std::make_shared<MakeVector>(), scalars);
}

// ---------------------------------------------------------------- Join

std::string Join::name() const { return fmt::format("Join{{axis={}}}", axis_); }

std::vector<TensorType> Join::make_types(const std::vector<Variable>& inputs) const {
    if (inputs.empty()) throw UsageError(name() + ": needs at least one input");
    const Variable& first = inputs[0];
    if (axis_ < 0 || axis_ >= first.ndim()) {
        throw UsageError(fmt::format("{}: axis out of range for input 0 of type {}", name(), first.type().str()));
    }
    std::vector<bool> bc(static_cast<std::size_t>(first.ndim()), true);
    for (std::size_t i = 0; i < inputs.size(); ++i) {
        const Variable& v = inputs[i];
        if (v.dtype() != first.dtype() || v.ndim() != first.ndim()) {
            throw UsageError(fmt::format("{}: input {} is {} but input 0 is {} (dtype and rank must agree)", name(), i,
                                         v.type().str(), first.type().str()));
        }
        for (int d = 0; d < v.ndim(); ++d) bc[d] = bc[d] && v.broadcastable()[d];
    }
    bc[axis_] = false;
    return {TensorType{first.dtype(), bc}};
}

std::optional<std::vector<Shape>> Join::infer_shape(const std::vector<Shape>& in) const {
    Shape s = in[0];
    for (std::size_t i = 1; i < in.size(); ++i) s[axis_] += in[i][axis_];
    return std::vector<Shape>{s};
}

void Join::perform(const Node&, std::span<const Tensor* const> in, std::span<Tensor* const> out) const {
    const Shape& s0 = in[0]->shape();
    for (std::size_t i = 1; i < in.size(); ++i) {
        const Shape& si = in[i]->shape();
        for (int d = 0; d < static_cast<int>(s0.size()); ++d) {
            if (d != axis_ && si[d] != s0[d]) {
                throw UsageError(fmt::format("{}: input {} has shape {} and input 0 has shape {}: all sizes but axis {} "
                                             "must agree", name(), i, shape_string(si), shape_string(s0), axis_));
            }
        }
    }
    std::vector<Shape> shapes;
    for (const Tensor* t : in) shapes.push_back(t->shape());
    const Shape os = (*infer_shape(shapes))[0];
    // The inputs may already sit in place, where the compiler asked their producers to write
    // them (Tensor::placed): then there is nothing to copy.
    Tensor& o = *out[0];
    if (axis_ == 0 && o.defined() && o.dtype() == in[0]->dtype() && o.shape() == os && o.is_contiguous()) {
        const auto* base = static_cast<const char*>(o.raw_data());
        std::size_t at = 0;
        bool in_place = true;
        for (const Tensor* t : in) {
            in_place = in_place && t->is_contiguous() && static_cast<const char*>(t->raw_data()) == base + at;
            at += static_cast<std::size_t>(t->size()) * dtype_size(t->dtype());
        }
        if (in_place) return;
    }
    o.ensure(in[0]->dtype(), os);
    std::int64_t at = 0;
    for (const Tensor* t : in) {
        const std::int64_t n = t->dim(axis_);
        out[0]->slice(axis_, at, at + n, 1).copy_from(*t);
        at += n;
    }
}

std::vector<Variable> Join::pullback(const Node& node, const std::vector<Variable>& g) const {
    std::vector<Variable> grads;
    Variable at = constant(Tensor::full(DType::int64, {}, 0));
    for (const auto& x : node.inputs) {
        Variable next = at + x.shape(axis_);
        std::vector<Idx> idx(static_cast<std::size_t>(axis_), Idx::all());
        idx.push_back(slice(at, next));
        grads.push_back(subtensor(g[0], idx));  // grad() fits it to x's broadcastable axes
        at = next;
    }
    return grads;
}

Variable concatenate(const std::vector<Variable>& xs, int axis, std::source_location where) {
    if (xs.empty()) throw UsageError("concatenate: needs at least one input");
    DType dt = xs[0].dtype();
    for (const auto& x : xs) dt = promote(dt, x.dtype());
    std::vector<Variable> ins;
    for (const auto& x : xs) ins.push_back(x.dtype() == dt ? x : cast(x, dt));
    const int nd = xs[0].ndim();
    return apply1(std::make_shared<Join>(axis < 0 ? axis + nd : axis), ins, where);
}

// ---------------------------------------------------------------- Reshape

std::string Reshape::name() const { return fmt::format("Reshape{{{}}}", ndim_); }

std::vector<bool> known_ones(const Variable& shape, int n) {
    std::vector<bool> ones(static_cast<std::size_t>(n), false);
    if (shape.is_constant()) {
        const Tensor& s = shape.node().value;
        for (int i = 0; i < n && i < s.size(); ++i) ones[i] = s.at({i}) == 1;
        return ones;
    }
    if (!shape.is_apply() || !dynamic_cast<const MakeVector*>(shape.node().op.get())) return ones;
    const auto& entries = shape.node().inputs;
    for (int i = 0; i < n && i < static_cast<int>(entries.size()); ++i) {
        const Variable& e = entries[i];
        if (e.is_constant()) {
            ones[i] = e.node().value.size() == 1 && e.node().value.item() == 1;
        } else if (const auto* si = e.is_apply() ? dynamic_cast<const ShapeI*>(e.node().op.get()) : nullptr) {
            const Variable& of = e.node().inputs[0];
            ones[i] = si->axis() < of.ndim() && of.broadcastable()[si->axis()];
        }
    }
    return ones;
}

std::vector<TensorType> Reshape::make_types(const std::vector<Variable>& inputs) const {
    if (inputs.size() != 2) throw UsageError(name() + ": takes 2 inputs (x, shape)");
    check_int_vector(name(), 1, inputs[1]);
    if (inputs[1].is_constant() && inputs[1].node().value.size() != ndim_) {
        throw UsageError(fmt::format("{}: shape has {} entries, expected {}", name(), inputs[1].node().value.size(), ndim_));
    }
    // Entries known to be 1 (a constant 1, a broadcastable axis's size) make broadcastable axes.
    return {TensorType{inputs[0].dtype(), known_ones(inputs[1], ndim_)}};
}

void Reshape::perform(const Node&, std::span<const Tensor* const> in, std::span<Tensor* const> out) const {
    const Tensor& x = *in[0];
    const Tensor& s = *in[1];
    if (s.size() != ndim_) {
        throw UsageError(fmt::format("{}: shape has {} entries, expected {}", name(), s.size(), ndim_));
    }
    Shape shape(static_cast<std::size_t>(ndim_));
    int infer = -1;
    std::int64_t known = 1;
    for (int i = 0; i < ndim_; ++i) {
        shape[i] = static_cast<std::int64_t>(s.at({i}));
        if (shape[i] == -1) {
            if (infer >= 0) throw UsageError(name() + ": more than one -1 in the shape");
            infer = i;
        } else if (shape[i] < 0) {
            throw UsageError(fmt::format("{}: negative size {} in the shape", name(), shape[i]));
        } else {
            known = checked_mul(known, shape[i], "Reshape");
        }
    }
    if (infer >= 0) shape[infer] = known ? x.size() / known : 0;
    if (shape_size(shape) != x.size()) {
        throw UsageError(fmt::format("{}: cannot reshape input of shape {} ({} elements) to {}", name(),
                                     shape_string(x.shape()), x.size(), shape_string(shape)));
    }
    if (x.is_contiguous()) {
        *out[0] = x.reshape_view(shape);
        return;
    }
    // A strided input is copied into the step's own buffer (kept between calls).
    out[0]->ensure(x.dtype(), shape);
    out[0]->reshape_view(x.shape()).copy_from(x);
}

std::vector<Variable> Reshape::pullback(const Node& node, const std::vector<Variable>& g) const {
    const Variable& x = node.inputs[0];
    Variable back = apply1(std::make_shared<Reshape>(x.ndim()), {g[0], x.shape()});
    return {back, Variable()};
}

Variable reshape(const Variable& x, const std::vector<Variable>& shape) {
    return apply1(std::make_shared<Reshape>(static_cast<int>(shape.size())), {x, make_vector(shape)});
}

Variable reshape(const Variable& x, const std::vector<std::int64_t>& shape) {
    Tensor s = Tensor::from_vector<std::int64_t>({static_cast<std::int64_t>(shape.size())}, shape);
    return apply1(std::make_shared<Reshape>(static_cast<int>(shape.size())), {x, constant(s)});
}

Variable Variable::reshape(const std::vector<Variable>& shape) const { return theanine::reshape(*this, shape); }

Variable Variable::flatten(int outdim) const {
    if (outdim < 1 || outdim > std::max(1, ndim())) {
        throw UsageError(fmt::format("flatten: outdim {} invalid for {}", outdim, type().str()));
    }
    // The kept axes keep their pattern; the last axis is broadcastable when every axis it
    // collapses is.
    std::vector<Variable> dims;
    for (int i = 0; i < outdim - 1; ++i) dims.push_back(shape(i));
    bool last_one = true;
    for (int i = outdim - 1; i < ndim(); ++i) last_one = last_one && broadcastable()[i];
    dims.push_back(int64_scalar_const(last_one && ndim() > 0 ? 1 : -1));
    return theanine::reshape(*this, dims);
}

// ---------------------------------------------------------------- Index specs

Idx::Idx(const Variable& v) {
    if (v.ndim() == 0) {
        kind = Kind::index;
        b[0] = Bound(v);
    } else {
        kind = Kind::vector;  // an integer array of any rank: advanced indexing
        vec = v;
    }
}

Idx Idx::slice(Bound start, Bound stop, Bound step) {
    Idx i;
    i.kind = Kind::slice;
    i.b = {std::move(start), std::move(stop), std::move(step)};
    return i;
}

Idx slice(Bound start, Bound stop, Bound step) { return Idx::slice(std::move(start), std::move(stop), std::move(step)); }

std::string IndexSpec::str() const {
    std::string s;
    auto bound = [](const BoundSpec& b) {
        switch (b.kind) {
        case BoundSpec::Kind::none: return std::string();
        case BoundSpec::Kind::constant: return std::to_string(b.value);
        case BoundSpec::Kind::input: return std::string("int64");
        }
        return std::string();
    };
    for (std::size_t i = 0; i < entries.size(); ++i) {
        if (i) s += ", ";
        const auto& e = entries[i];
        if (e.is_index) {
            s += bound(e.b[0]);
        } else {
            s += bound(e.b[0]) + ":" + bound(e.b[1]);
            if (e.b[2].kind != BoundSpec::Kind::none) s += ":" + bound(e.b[2]);
        }
    }
    return s;
}

int IndexSpec::n_inputs() const {
    int n = 0;
    for (const auto& e : entries) {
        for (const auto& b : e.b) n += b.kind == BoundSpec::Kind::input;
    }
    return n;
}

namespace {

// Splits user indices into a static spec and the symbolic bound inputs.
std::pair<IndexSpec, std::vector<Variable>> make_spec(const std::vector<Idx>& index) {
    IndexSpec spec;
    std::vector<Variable> syms;
    for (const Idx& idx : index) {
        IndexSpec::Entry e;
        e.is_index = idx.kind == Idx::Kind::index;
        int nb = e.is_index ? 1 : 3;
        for (int k = 0; k < nb; ++k) {
            const Bound& b = idx.b[k];
            if (b.var.defined()) {
                if (b.var.is_constant() && b.var.ndim() == 0 && is_integer(b.var.dtype())) {
                    e.b[k] = {IndexSpec::BoundSpec::Kind::constant, b.var.node().value.item_int()};
                } else {
                    e.b[k].kind = IndexSpec::BoundSpec::Kind::input;
                    syms.push_back(b.var);
                }
            } else if (b.value) {
                e.b[k] = {IndexSpec::BoundSpec::Kind::constant, *b.value};
            }
        }
        spec.entries.push_back(e);
    }
    return {spec, syms};
}

struct Resolved {
    bool is_index;
    std::int64_t start, stop, step, length;
};

// Applies Python's index and slice rules to concrete sizes.
std::vector<Resolved> resolve(const std::string& op, const IndexSpec& spec, const Tensor& x,
                              std::span<const Tensor* const> syms) {
    std::vector<Resolved> out;
    std::size_t next = 0;
    auto get = [&](const IndexSpec::BoundSpec& b) -> std::optional<std::int64_t> {
        switch (b.kind) {
        case IndexSpec::BoundSpec::Kind::none: return std::nullopt;
        case IndexSpec::BoundSpec::Kind::constant: return b.value;
        case IndexSpec::BoundSpec::Kind::input: return syms[next++]->item_int();
        }
        return std::nullopt;
    };
    for (std::size_t axis = 0; axis < spec.entries.size(); ++axis) {
        const auto& e = spec.entries[axis];
        const std::int64_t n = x.dim(static_cast<int>(axis));
        if (e.is_index) {
            std::int64_t i = *get(e.b[0]);
            std::int64_t j = i < 0 ? i + n : i;
            if (j < 0 || j >= n) {
                throw UsageError(fmt::format("{}: index {} out of bounds for axis {} with size {}", op, i, axis, n));
            }
            out.push_back({true, j, j + 1, 1, 1});
            continue;
        }
        auto start = get(e.b[0]);
        auto stop = get(e.b[1]);
        auto step_o = get(e.b[2]);
        std::int64_t step = step_o.value_or(1);
        if (step == 0) throw UsageError(fmt::format("{}: slice step cannot be zero (axis {})", op, axis));
        std::int64_t lo, hi;
        if (step > 0) {
            lo = start ? (*start < 0 ? std::max<std::int64_t>(*start + n, 0) : std::min(*start, n)) : 0;
            hi = stop ? (*stop < 0 ? std::max<std::int64_t>(*stop + n, 0) : std::min(*stop, n)) : n;
        } else {
            lo = start ? (*start < 0 ? std::max<std::int64_t>(*start + n, -1) : std::min(*start, n - 1)) : n - 1;
            hi = stop ? (*stop < 0 ? std::max<std::int64_t>(*stop + n, -1) : std::min(*stop, n - 1)) : -1;
        }
        std::int64_t len = 0;
        if (step > 0 && hi > lo) len = (hi - lo + step - 1) / step;
        if (step < 0 && lo > hi) len = (lo - hi + (-step) - 1) / (-step);
        out.push_back({false, lo, hi, step, len});
    }
    return out;
}

Tensor view_of(const Tensor& x, const std::vector<Resolved>& r) {
    Tensor v = x;
    int axis = 0;
    for (const auto& e : r) {
        if (e.is_index) {
            v = v.index(axis, e.start);
        } else {
            v = v.slice(axis, e.start, e.start + e.length * e.step, e.step);
            if (e.length == 0) v = v.slice(axis, 0, 0, 1);
            ++axis;
        }
    }
    return v;
}

std::vector<bool> sub_broadcastable(const IndexSpec& spec, const Variable& x) {
    std::vector<bool> bc;
    for (int d = 0; d < x.ndim(); ++d) {
        if (d < static_cast<int>(spec.entries.size())) {
            if (spec.entries[d].is_index) continue;
            bc.push_back(x.broadcastable()[d]);
        } else {
            bc.push_back(x.broadcastable()[d]);
        }
    }
    return bc;
}

void check_spec_inputs(const std::string& op, const IndexSpec& spec, const std::vector<Variable>& inputs,
                       std::size_t first_sym) {
    const Variable& x = inputs[0];
    if (static_cast<int>(spec.entries.size()) > x.ndim()) {
        throw UsageError(fmt::format("{}: {} indices for input 0 of type {}", op, spec.entries.size(), x.type().str()));
    }
    if (inputs.size() != first_sym + static_cast<std::size_t>(spec.n_inputs())) {
        throw UsageError(fmt::format("{}: expected {} symbolic index inputs, got {}", op, spec.n_inputs(),
                                     inputs.size() - first_sym));
    }
    for (std::size_t i = first_sym; i < inputs.size(); ++i) check_int_scalar(op, i, inputs[i]);
}

}  // namespace

// ---------------------------------------------------------------- Subtensor

std::string Subtensor::name() const { return "Subtensor{" + spec_.str() + "}"; }

std::size_t Subtensor::props_hash() const { return std::hash<std::string>()(spec_.str()); }

std::vector<TensorType> Subtensor::make_types(const std::vector<Variable>& inputs) const {
    if (inputs.empty()) throw UsageError(name() + ": needs an input");
    check_spec_inputs(name(), spec_, inputs, 1);
    return {TensorType{inputs[0].dtype(), sub_broadcastable(spec_, inputs[0])}};
}

void Subtensor::perform(const Node&, std::span<const Tensor* const> in, std::span<Tensor* const> out) const {
    auto r = resolve(name(), spec_, *in[0], in.subspan(1));
    *out[0] = view_of(*in[0], r);
}

std::vector<Variable> Subtensor::pullback(const Node& node, const std::vector<Variable>& g) const {
    std::vector<Variable> ins = {zeros_like(node.inputs[0]), g[0]};
    for (std::size_t i = 1; i < node.inputs.size(); ++i) ins.push_back(node.inputs[i]);
    std::vector<Variable> grads = {apply1(std::make_shared<IncSubtensor>(spec_, false), ins)};
    for (std::size_t i = 1; i < node.inputs.size(); ++i) grads.emplace_back();
    return grads;
}

namespace {

// numpy's advanced indexing for any mix of integer arrays, scalars and slices, as a plan that
// reading and writing share. Integer scalars next to arrays count as arrays (broadcast with
// them). The slices are applied first (a basic Subtensor); the indexed axes are moved to the
// front and read with one AdvancedSubtensor on the index arrays broadcast to their common
// shape S and flattened; the result is reshaped to S + the other axes, and S goes where the
// indexed axes stood when they are adjacent (numpy's placement rule), else first.
struct AdvancedPlan {
    std::vector<Idx> basic;     // per axis: its slice, or all of it where it is indexed
    bool any_slice = false;
    std::vector<int> perm;      // the indexed axes, then the others
    std::size_t n_adv = 0;
    std::vector<Variable> flat; // the index arrays, broadcast and flattened
    Variable common;            // zeros in the index arrays' common shape
    int block_at = 0;           // where S's axes go among the result's axes
};

bool is_full_slice(const Idx& i) {
    return i.kind == Idx::Kind::slice && i.b[0].none() && i.b[1].none() && i.b[2].none();
}

AdvancedPlan plan_advanced(const Variable& x, const std::vector<Idx>& index) {
    if (index.size() > static_cast<std::size_t>(x.ndim())) {
        throw UsageError(fmt::format("indexing: {} indices for {}", index.size(), x.type().str()));
    }
    AdvancedPlan p;
    std::vector<Variable> arrays;
    std::vector<int> adv_axes, other_axes;
    for (int d = 0; d < x.ndim(); ++d) {
        const Idx i = d < static_cast<int>(index.size()) ? index[d] : Idx::all();
        if (i.kind == Idx::Kind::slice) {
            p.basic.push_back(i);
            p.any_slice = p.any_slice || !is_full_slice(i);
            other_axes.push_back(d);
            continue;
        }
        Variable a = i.kind == Idx::Kind::vector ? i.vec
                     : i.b[0].var.defined()      ? i.b[0].var
                                                 : int64_scalar_const(*i.b[0].value);
        if (!is_integer(a.dtype())) {
            throw UsageError(fmt::format("indexing: the index of axis {} must be integer, got {}", d, a.type().str()));
        }
        arrays.push_back(a.dtype() == DType::int64 ? a : cast(a, DType::int64));
        adv_axes.push_back(d);
        p.basic.push_back(Idx::all());
    }
    p.n_adv = adv_axes.size();
    p.perm = adv_axes;
    p.perm.insert(p.perm.end(), other_axes.begin(), other_axes.end());
    p.common = mul(arrays[0], 0);
    for (std::size_t k = 1; k < arrays.size(); ++k) p.common = add(p.common, mul(arrays[k], 0));
    for (const auto& a : arrays) p.flat.push_back(reshape(add(a, p.common), std::vector<std::int64_t>{-1}));
    bool adjacent = true;
    for (std::size_t k = 1; k < adv_axes.size(); ++k) adjacent = adjacent && adv_axes[k] == adv_axes[k - 1] + 1;
    p.block_at = adjacent ? adv_axes[0] : 0;
    return p;
}

bool is_identity(const std::vector<int>& order) {
    for (std::size_t k = 0; k < order.size(); ++k) {
        if (order[k] != static_cast<int>(k)) return false;
    }
    return true;
}

// The order that moves a block of s leading axes (of r + s axes) to position at, and back.
std::vector<int> block_to(int s, int r, int at) {
    std::vector<int> order;
    for (int j = 0; j < at; ++j) order.push_back(s + j);
    for (int j = 0; j < s; ++j) order.push_back(j);
    for (int j = at; j < r; ++j) order.push_back(s + j);
    return order;
}
std::vector<int> block_from(int s, int r, int at) {
    std::vector<int> order;
    for (int j = 0; j < s; ++j) order.push_back(at + j);
    for (int j = 0; j < at; ++j) order.push_back(j);
    for (int j = at; j < r; ++j) order.push_back(s + j);
    return order;
}

Variable advanced_read(const Variable& x, const std::vector<Idx>& index, std::source_location where) {
    const AdvancedPlan p = plan_advanced(x, index);
    Variable y = p.any_slice ? subtensor(x, p.basic, where) : x;
    if (!is_identity(p.perm)) y = dimshuffle(y, p.perm);
    Variable z = advanced_subtensor(y, p.flat, where);
    const int s = p.common.ndim();
    const int r = y.ndim() - static_cast<int>(p.n_adv);
    std::vector<Variable> dims;
    for (int d = 0; d < s; ++d) dims.push_back(p.common.shape(d));
    for (int d = 0; d < r; ++d) dims.push_back(y.shape(static_cast<int>(p.n_adv) + d));
    if (s != 1) z = reshape(z, dims);
    return p.block_at > 0 ? dimshuffle(z, block_to(s, r, p.block_at)) : z;
}

Variable advanced_write(const Variable& x, const Variable& y_in, const std::vector<Idx>& index, bool set,
                        std::source_location where) {
    const AdvancedPlan p = plan_advanced(x, index);
    const Variable region = advanced_read(x, index, where);
    // y broadcast to the indexed region (a scalar or a row written at many places).
    Variable y = y_in.dtype() == x.dtype() ? y_in : cast(y_in, x.dtype());
    if (y.ndim() > region.ndim()) {
        throw UsageError(fmt::format("indexing: the value is {} but the indexed region has {} dimensions", y.type().str(),
                                     region.ndim()));
    }
    if (y.broadcastable() != region.broadcastable() || y.ndim() != region.ndim()) y = second(region, y);
    Variable xs = p.any_slice ? subtensor(x, p.basic, where) : x;
    Variable xt = is_identity(p.perm) ? xs : dimshuffle(xs, p.perm);
    const int s = p.common.ndim();
    const int r = xt.ndim() - static_cast<int>(p.n_adv);
    if (p.block_at > 0) y = dimshuffle(y, block_from(s, r, p.block_at));
    std::vector<Variable> dims = {int64_scalar_const(-1)};
    for (int d = 0; d < r; ++d) dims.push_back(xt.shape(static_cast<int>(p.n_adv) + d));
    if (s != 1) y = reshape(y, dims);
    Variable zt = advanced_inc_subtensor(xt, y, p.flat, set, where);
    std::vector<int> inverse(p.perm.size());
    for (std::size_t k = 0; k < p.perm.size(); ++k) inverse[static_cast<std::size_t>(p.perm[k])] = static_cast<int>(k);
    Variable zs = is_identity(p.perm) ? zt : dimshuffle(zt, inverse);
    return p.any_slice ? set_subtensor(x, zs, p.basic, where) : zs;
}

// Leading 1-d index arrays and nothing else: one AdvancedSubtensor as it is.
bool leading_vectors(const std::vector<Idx>& index) {
    for (const Idx& i : index) {
        if (i.kind != Idx::Kind::vector || i.vec.ndim() != 1 || !is_integer(i.vec.dtype())) return false;
    }
    return true;
}

}  // namespace

Variable subtensor(const Variable& x, const std::vector<Idx>& index, std::source_location where) {
    bool advanced = false;
    for (const Idx& i : index) advanced = advanced || i.kind == Idx::Kind::vector;
    if (advanced) {
        if (leading_vectors(index)) {
            std::vector<Variable> vecs;
            for (const Idx& i : index) vecs.push_back(i.vec);
            return advanced_subtensor(x, vecs, where);
        }
        return advanced_read(x, index, where);
    }
    auto [spec, syms] = make_spec(index);
    std::vector<Variable> ins = {x};
    ins.insert(ins.end(), syms.begin(), syms.end());
    return apply1(std::make_shared<Subtensor>(spec), ins, where);
}

Variable Variable::operator[](std::initializer_list<Idx> idx) const { return subtensor(*this, std::vector<Idx>(idx)); }

Variable index(const Variable& x, std::initializer_list<Idx> idx, std::source_location where) {
    return subtensor(x, std::vector<Idx>(idx), where);
}

// ---------------------------------------------------------------- IncSubtensor

std::string IncSubtensor::name() const {
    return std::string(set_ ? "SetSubtensor{" : "IncSubtensor{") + spec_.str() + "}";
}

bool IncSubtensor::props_equal(const Op& o) const {
    const auto& x = static_cast<const IncSubtensor&>(o);
    return x.spec_ == spec_ && x.set_ == set_;
}

std::size_t IncSubtensor::props_hash() const { return std::hash<std::string>()(name()); }

std::vector<TensorType> IncSubtensor::make_types(const std::vector<Variable>& inputs) const {
    if (inputs.size() < 2) throw UsageError(name() + ": needs inputs x and y");
    std::vector<Variable> xs = {inputs[0]};
    xs.insert(xs.end(), inputs.begin() + 2, inputs.end());
    check_spec_inputs(name(), spec_, xs, 1);
    auto region_bc = sub_broadcastable(spec_, inputs[0]);
    const Variable& y = inputs[1];
    if (y.ndim() != static_cast<int>(region_bc.size())) {
        throw UsageError(fmt::format("{}: input 1 (y) is {} but the indexed region has {} dimensions", name(),
                                     y.type().str(), region_bc.size()));
    }
    if (y.dtype() != inputs[0].dtype()) {
        throw UsageError(fmt::format("{}: input 1 (y) is {} but input 0 (x) is {}", name(), y.type().str(),
                                     inputs[0].type().str()));
    }
    return {inputs[0].type()};
}

void IncSubtensor::perform(const Node& node, std::span<const Tensor* const> in, std::span<Tensor* const> out) const {
    const Tensor& x = *in[0];
    const Tensor& y = *in[1];
    out[0]->ensure(x.dtype(), x.shape());
    out[0]->copy_from(x);
    auto r = resolve(name(), spec_, x, in.subspan(2));
    Tensor region = view_of(*out[0], r);
    std::vector<const Tensor*> pair = {&region, &y};
    broadcast_shapes(*this, pair, {std::vector<bool>(static_cast<std::size_t>(region.ndim()), false),
                                    node.inputs[1].broadcastable()});
    dispatch(x.dtype(), [&]<class T>() {
        T* base = static_cast<T*>(region.raw_data());
        const T* yd = y.data<T>();
        loops::broadcast_iterate<2>({&region, &y}, region.shape(), [&](std::int64_t, const std::array<std::int64_t, 2>& off) {
            if (set_) {
                base[off[0]] = yd[off[1]];
            } else {
                base[off[0]] = static_cast<T>(base[off[0]] + yd[off[1]]);
            }
        });
    });
}

std::vector<Variable> IncSubtensor::pullback(const Node& node, const std::vector<Variable>& g) const {
    std::vector<Variable> syms(node.inputs.begin() + 2, node.inputs.end());
    std::vector<Variable> sub_in = {g[0]};
    sub_in.insert(sub_in.end(), syms.begin(), syms.end());
    Variable gy = apply1(std::make_shared<Subtensor>(spec_), sub_in);
    Variable gx = g[0];
    if (set_) {
        std::vector<Variable> ins = {g[0], zeros_like(gy)};
        ins.insert(ins.end(), syms.begin(), syms.end());
        gx = apply1(std::make_shared<IncSubtensor>(spec_, true), ins);
    }
    std::vector<Variable> grads = {gx, gy};
    for (std::size_t i = 0; i < syms.size(); ++i) grads.emplace_back();
    return grads;
}

namespace {
Variable inc_or_set(const Variable& x, const Variable& y_in, const std::vector<Idx>& index, bool set,
                    std::source_location where) {
    bool advanced = false;
    for (const Idx& i : index) advanced = advanced || i.kind == Idx::Kind::vector;
    if (advanced) {
        const std::size_t k = index.size();
        const int want = x.ndim() - static_cast<int>(k) + 1;
        const bool plain = leading_vectors(index) && y_in.ndim() == want &&
                           std::none_of(y_in.broadcastable().begin(), y_in.broadcastable().end(), [](bool b) { return b; });
        if (plain) {
            std::vector<Variable> vecs;
            for (const Idx& i : index) vecs.push_back(i.vec);
            return advanced_inc_subtensor(x, y_in, vecs, set, where);
        }
        return advanced_write(x, y_in, index, set, where);
    }
    auto [spec, syms] = make_spec(index);
    auto region_bc = sub_broadcastable(spec, x);
    Variable y = y_in;
    if (y.dtype() != x.dtype()) y = cast(y, x.dtype());
    if (y.ndim() < static_cast<int>(region_bc.size())) {
        std::vector<int> order(region_bc.size() - static_cast<std::size_t>(y.ndim()), -1);
        for (int i = 0; i < y.ndim(); ++i) order.push_back(i);
        y = dimshuffle(y, order);
    }
    std::vector<Variable> ins = {x, y};
    ins.insert(ins.end(), syms.begin(), syms.end());
    return apply1(std::make_shared<IncSubtensor>(spec, set), ins, where);
}
}  // namespace

Variable set_subtensor(const Variable& x, const Variable& y, const std::vector<Idx>& index, std::source_location where) {
    return inc_or_set(x, y, index, true, where);
}
Variable inc_subtensor(const Variable& x, const Variable& y, const std::vector<Idx>& index, std::source_location where) {
    return inc_or_set(x, y, index, false, where);
}

// ---------------------------------------------------------------- Advanced indexing

namespace {
std::vector<bool> adv_broadcastable(const Variable& x, std::size_t k) {
    std::vector<bool> bc = {false};
    for (int d = static_cast<int>(k); d < x.ndim(); ++d) bc.push_back(x.broadcastable()[d]);
    return bc;
}

// Gathers the flat row offsets selected by integer index vectors.
std::vector<std::int64_t> gather_offsets(const std::string& op, const Tensor& x, std::span<const Tensor* const> idx) {
    const std::int64_t n = idx[0]->size();
    for (std::size_t k = 1; k < idx.size(); ++k) {
        if (idx[k]->size() != n) {
            throw UsageError(fmt::format("{}: index vectors have different lengths: index 0 has {}, index {} has {}", op,
                                         n, k, idx[k]->size()));
        }
    }
    std::vector<std::int64_t> offs(static_cast<std::size_t>(n), 0);
    for (std::size_t k = 0; k < idx.size(); ++k) {
        const std::int64_t size = x.dim(static_cast<int>(k));
        const std::int64_t stride = x.strides()[k];
        dispatch(idx[k]->dtype(), [&]<class I>() {
            if constexpr (std::is_integral_v<I> && !std::is_same_v<I, bool>) {
                const I* p = idx[k]->data<I>();
                const std::int64_t st = idx[k]->strides()[0];
                for (std::int64_t i = 0; i < n; ++i) {
                    std::int64_t v = static_cast<std::int64_t>(p[i * st]);
                    std::int64_t j = v < 0 ? v + size : v;
                    if (j < 0 || j >= size) {
                        throw UsageError(fmt::format("{}: index {} (at position {} of index vector {}) is out of bounds "
                                                     "for axis {} with size {}", op, v, i, k, k, size));
                    }
                    offs[i] += j * stride;
                }
            } else {
                throw UsageError(fmt::format("{}: index vector {} must be integer", op, k));
            }
        });
    }
    return offs;
}
}  // namespace

std::vector<TensorType> AdvancedSubtensor::make_types(const std::vector<Variable>& inputs) const {
    if (inputs.size() < 2) throw UsageError(name() + ": needs x and at least one index vector");
    const Variable& x = inputs[0];
    if (inputs.size() - 1 > static_cast<std::size_t>(x.ndim())) {
        throw UsageError(fmt::format("{}: {} index vectors for input 0 of type {}", name(), inputs.size() - 1, x.type().str()));
    }
    for (std::size_t i = 1; i < inputs.size(); ++i) check_int_vector(name(), i, inputs[i]);
    return {TensorType{x.dtype(), adv_broadcastable(x, inputs.size() - 1)}};
}

void AdvancedSubtensor::perform(const Node&, std::span<const Tensor* const> in, std::span<Tensor* const> out) const {
    const Tensor& x0 = *in[0];
    const Tensor x = x0.contiguous();
    auto offs = gather_offsets(name(), x, in.subspan(1));
    const std::size_t k = in.size() - 1;
    Shape os = {static_cast<std::int64_t>(offs.size())};
    std::int64_t row = 1;
    for (int d = static_cast<int>(k); d < x.ndim(); ++d) {
        os.push_back(x.dim(d));
        row *= x.dim(d);
    }
    out[0]->ensure(x.dtype(), os);
    dispatch(x.dtype(), [&]<class T>() {
        const T* src = x.data<T>();
        T* dst = out[0]->data<T>();
        for (std::size_t i = 0; i < offs.size(); ++i) {
            for (std::int64_t j = 0; j < row; ++j) dst[static_cast<std::int64_t>(i) * row + j] = src[offs[i] + j];
        }
    });
}

std::vector<Variable> AdvancedSubtensor::pullback(const Node& node, const std::vector<Variable>& g) const {
    std::vector<Variable> idx(node.inputs.begin() + 1, node.inputs.end());
    std::vector<Variable> grads = {advanced_inc_subtensor(zeros_like(node.inputs[0]), g[0], idx)};
    for (std::size_t i = 0; i < idx.size(); ++i) grads.emplace_back();
    return grads;
}

Variable advanced_subtensor(const Variable& x, const std::vector<Variable>& indices, std::source_location where) {
    std::vector<Variable> ins = {x};
    ins.insert(ins.end(), indices.begin(), indices.end());
    return apply1(std::make_shared<AdvancedSubtensor>(), ins, where);
}

std::string AdvancedIncSubtensor::name() const { return set_ ? "AdvancedSetSubtensor" : "AdvancedIncSubtensor"; }

std::vector<TensorType> AdvancedIncSubtensor::make_types(const std::vector<Variable>& inputs) const {
    if (inputs.size() < 3) throw UsageError(name() + ": needs x, y and at least one index vector");
    const Variable& x = inputs[0];
    const Variable& y = inputs[1];
    const std::size_t k = inputs.size() - 2;
    if (k > static_cast<std::size_t>(x.ndim())) {
        throw UsageError(fmt::format("{}: {} index vectors for input 0 of type {}", name(), k, x.type().str()));
    }
    for (std::size_t i = 2; i < inputs.size(); ++i) check_int_vector(name(), i, inputs[i]);
    if (y.dtype() != x.dtype() || y.ndim() != x.ndim() - static_cast<int>(k) + 1) {
        throw UsageError(fmt::format("{}: input 1 (y) is {}, expected {} with {} dimensions", name(), y.type().str(),
                                     dtype_name(x.dtype()), x.ndim() - static_cast<int>(k) + 1));
    }
    return {x.type()};
}

void AdvancedIncSubtensor::perform(const Node&, std::span<const Tensor* const> in, std::span<Tensor* const> out) const {
    const Tensor& x = *in[0];
    const Tensor y = in[1]->contiguous();
    out[0]->ensure(x.dtype(), x.shape());
    out[0]->copy_from(x);
    auto offs = gather_offsets(name(), *out[0], in.subspan(2));
    const std::size_t k = in.size() - 2;
    std::int64_t row = 1;
    Shape expect = {static_cast<std::int64_t>(offs.size())};
    for (int d = static_cast<int>(k); d < x.ndim(); ++d) {
        row *= x.dim(d);
        expect.push_back(x.dim(d));
    }
    if (y.shape() != expect) {
        throw UsageError(fmt::format("{}: y has shape {}, expected {}", name(), shape_string(y.shape()), shape_string(expect)));
    }
    dispatch(x.dtype(), [&]<class T>() {
        T* dst = out[0]->data<T>();
        const T* src = y.data<T>();
        for (std::size_t i = 0; i < offs.size(); ++i) {
            for (std::int64_t j = 0; j < row; ++j) {
                T v = src[static_cast<std::int64_t>(i) * row + j];
                if (set_) {
                    dst[offs[i] + j] = v;
                } else {
                    dst[offs[i] + j] = static_cast<T>(dst[offs[i] + j] + v);
                }
            }
        }
    });
}

std::vector<Variable> AdvancedIncSubtensor::pullback(const Node& node, const std::vector<Variable>& g) const {
    std::vector<Variable> idx(node.inputs.begin() + 2, node.inputs.end());
    Variable gx = g[0];
    Variable gy = advanced_subtensor(g[0], idx);
    if (set_) gx = advanced_inc_subtensor(g[0], zeros_like(gy), idx, true);
    std::vector<Variable> grads = {gx, gy};
    for (std::size_t i = 0; i < idx.size(); ++i) grads.emplace_back();
    return grads;
}

Variable advanced_inc_subtensor(const Variable& x, const Variable& y, const std::vector<Variable>& indices, bool set,
                                std::source_location where) {
    std::vector<Variable> ins = {x, y.dtype() == x.dtype() ? y : cast(y, x.dtype())};
    ins.insert(ins.end(), indices.begin(), indices.end());
    return apply1(std::make_shared<AdvancedIncSubtensor>(set), ins, where);
}

// ---------------------------------------------------------------- ARange

std::vector<TensorType> ARange::make_types(const std::vector<Variable>& inputs) const {
    if (inputs.size() != 3) throw UsageError("ARange: takes start, stop, step");
    for (std::size_t i = 0; i < 3; ++i) {
        if (inputs[i].ndim() != 0 || (!is_integer(inputs[i].dtype()) && !is_float(inputs[i].dtype()))) {
            throw UsageError(fmt::format("ARange: input {} must be a number scalar, got {}", i, inputs[i].type().str()));
        }
    }
    const DType dt = inputs[0].dtype();
    if (inputs[1].dtype() != dt || inputs[2].dtype() != dt) {
        throw UsageError(fmt::format("ARange: start, stop and step must have one dtype, got {}, {} and {}",
                                     dtype_name(dt), dtype_name(inputs[1].dtype()), dtype_name(inputs[2].dtype())));
    }
    return {TensorType{is_float(dt) ? dt : DType::int64, {false}}};
}

void ARange::perform(const Node& node, std::span<const Tensor* const> in, std::span<Tensor* const> out) const {
    if (is_float(node.types[0].dtype)) {
        // numpy's rule: ceil((stop - start) / step) values start + i * step.
        const double start = in[0]->item(), stop = in[1]->item(), step = in[2]->item();
        if (step == 0) throw UsageError("ARange: step cannot be zero");
        const double len = std::ceil((stop - start) / step);
        if (!std::isfinite(len) && !std::isnan(len)) {
            throw UsageError(fmt::format("ARange: arange({}, {}, {}) has infinitely many elements", start, stop, step));
        }
        if (std::isnan(len)) throw UsageError(fmt::format("ARange: arange({}, {}, {}) has a NaN bound", start, stop, step));
        if (len > 4.6e18) {
            throw UsageError(fmt::format("ARange: arange({}, {}, {}) has {} elements, too many to store", start, stop,
                                         step, len));
        }
        const auto n = static_cast<std::int64_t>(std::max(0.0, len));
        out[0]->ensure(node.types[0].dtype, {n});
        dispatch(node.types[0].dtype, [&]<class T>() {
            if constexpr (std::is_floating_point_v<T>) {
                T* d = out[0]->data<T>();
                for (std::int64_t i = 0; i < n; ++i) d[i] = static_cast<T>(start + static_cast<double>(i) * step);
            }
        });
        return;
    }
    std::int64_t start = in[0]->item_int(), stop = in[1]->item_int(), step = in[2]->item_int();
    if (step == 0) throw UsageError("ARange: step cannot be zero");
    // In 128 bits: stop - start + step overflows 64 bits for far-apart bounds.
    __int128 n = 0;
    const __int128 a = start, b = stop, c = step;
    if (c > 0 && b > a) n = (b - a + c - 1) / c;
    if (c < 0 && b < a) n = (a - b - c - 1) / (-c);
    if (n > (__int128(1) << 62)) {
        throw UsageError(fmt::format("ARange: arange({}, {}, {}) has {} elements, too many to store", start, stop, step,
                                     static_cast<long double>(n)));
    }
    out[0]->ensure(DType::int64, {static_cast<std::int64_t>(n)});
    auto* d = out[0]->data<std::int64_t>();
    for (std::int64_t i = 0; i < static_cast<std::int64_t>(n); ++i) d[i] = start + i * step;
}

std::vector<Variable> ARange::pullback(const Node&, const std::vector<Variable>&) const {
    return {Variable(), Variable(), Variable()};
}

Variable arange(const Bound& a, const Bound& b, const Bound& c) {
    // Integer bounds give int64 values; a float bound makes all of them (and the values) that
    // float dtype (the widest one given), as numpy's arange.
    std::optional<DType> fdt;
    for (const Bound* x : {&a, &b, &c}) {
        if (x->var.defined() && is_float(x->var.dtype())) fdt = fdt ? promote(*fdt, x->var.dtype()) : x->var.dtype();
    }
    const DType dt = fdt.value_or(DType::int64);
    auto to_var = [&](const Bound& x, std::int64_t dflt) {
        if (x.var.defined()) return x.var.dtype() == dt ? x.var : cast(x.var, dt);
        const std::int64_t v = x.value.value_or(dflt);
        return dt == DType::int64 ? int64_scalar_const(v) : constant(Tensor::full(dt, {}, static_cast<double>(v)));
    };
    Variable start = b.none() ? to_var(Bound(), 0) : to_var(a, 0);
    Variable stop = b.none() ? to_var(a, 0) : to_var(b, 0);
    Variable step = to_var(c, 1);
    return apply1(std::make_shared<ARange>(), {start, stop, step});
}

}  // namespace theanine
