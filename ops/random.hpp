/// \file
/// Random numbers that reproduce numpy's and Theano's generators bit for bit.
///
/// RandomState      numpy.random.RandomState's legacy generator: MT19937 seeded from a 32-bit
///                  integer, random_sample (53-bit doubles from two 32-bit words), uniform,
///                  randint (masked rejection), binomial (inversion when n*min(p,1-p) <= 30,
///                  BTPE otherwise) and normal (polar method with a cached second value).
/// RandomStreams    theano.tensor.shared_randomstreams: each random variable owns a
///                  RandomState(seedgen.randint(2**30)) held as shared state with a default
///                  update, so every call of a compiled function advances it.
/// MRG_RandomStreams theano.sandbox.rng_mrg: MRG31k3p with one substream per output element
///                  (up to Theano's stream-count rule), substreams started by jump-ahead,
///                  binomial as cast(uniform < p), normal by Box-Muller.
///
/// Generator state lives in shared variables: a RandomState as a uint8 blob (its bytes), the
/// MRG state as an int32 (n_streams, 6) matrix exactly as Theano stores it.
#pragma once

#include <array>
#include <cstdint>
#include <optional>
#include <variant>

#include "graph/graph.hpp"

namespace theanine {

class RandomState {
public:
    explicit RandomState(std::uint32_t seed = 0) { seed_with(seed); }
    void seed_with(std::uint32_t seed);

    std::uint32_t next_uint32();
    double next_double();  ///< random_sample: [0, 1) with 53 bits
    double uniform(double low, double high);
    /// randint(high): [0, high) by masked rejection (numpy's legacy method).
    std::int64_t randint(std::int64_t high);
    std::int64_t binomial(std::int64_t n, double p);
    double gauss();  ///< standard normal, polar method
    double normal(double loc, double scale) { return loc + scale * gauss(); }

    /// Array forms in C order, as float64 (or int64 for binomial/randint).
    Tensor random_sample(const Shape& size);
    Tensor uniform(double low, double high, const Shape& size);
    Tensor binomial(std::int64_t n, double p, const Shape& size);
    Tensor normal(double loc, double scale, const Shape& size);

    /// numpy's get_state(): key (624 words), pos, has_gauss, cached_gaussian.
    const std::array<std::uint32_t, 624>& key() const { return mt_; }
    int pos() const { return pos_; }
    bool has_gauss() const { return has_gauss_; }
    double cached_gaussian() const { return gauss_; }

    /// The state as bytes (the shared-variable representation) and back.
    Tensor to_blob() const;
    static RandomState from_blob(const Tensor& blob);

private:
    std::int64_t binomial_inversion(std::int64_t n, double p);
    std::int64_t binomial_btpe(std::int64_t n, double p);

    std::array<std::uint32_t, 624> mt_{};
    int pos_ = 624;
    bool has_gauss_ = false;
    double gauss_ = 0;
    /// Cached constants of the last binomial (n, p), as numpy keeps them.
    struct BinomialCache {
        bool valid = false;
        std::int64_t nsave = 0;
        double psave = 0, r = 0, q = 0, fm = 0, p1 = 0, xm = 0, xl = 0, xr = 0, c = 0, laml = 0, lamr = 0, p2 = 0,
               p3 = 0, p4 = 0;
        std::int64_t m = 0;
    } bin_;
};

/// MRG31k3p arithmetic (Theano's rng_mrg).
namespace mrg {
using State = std::array<std::int32_t, 6>;
constexpr std::int64_t M1 = 2147483647;
constexpr std::int64_t M2 = 2147462579;
/// One step of a stream; returns z in [1, M1].
std::int32_t next(State& s);
/// s advanced by 2^e steps (jump-ahead by matrix powers).
State jump(const State& s, int e);
/// Theano's stream count for a draw of a constant size (None = symbolic size).
std::int64_t guess_n_streams(std::optional<std::int64_t> n_elements);
/// (n_streams, 6) int32 matrix: row 0 = base, row i = row i-1 jumped by 2^72.
Tensor substreams(const State& base, std::int64_t n_streams);
/// Draws n uniforms from the streams' rows (n_streams x 6 int32, advanced in place): element i
/// comes from stream i % n_streams, each stream's draws in order. Converted as Theano's
/// compiled code does: z * 2^-31 in double, float(z) * float(2^-31 - ulp) in single; then
/// low + u * (high - low) unless the range is [0, 1). Vectorised across streams, and split
/// across threads by stream when threads > 1.
template <class T>
void uniform_fill(std::int32_t* rows, std::int64_t n_streams, std::int64_t n, T* out, T low = T(0), T high = T(1),
                  int threads = 1);
/// The same reading the streams from src and writing the advanced ones to rows (src may be
/// rows), so the old state stays untouched.
template <class T>
void uniform_fill(const std::int32_t* src, std::int32_t* rows, std::int64_t n_streams, std::int64_t n, T* out,
                  T low, T high, int threads);
}  // namespace mrg

/// A size argument: constant dimensions, or a symbolic int64 vector such as x.shape().
using Size = std::variant<std::vector<std::int64_t>, Variable>;

/// Draws from numpy's legacy distributions. Inputs: state blob, size (int64 vector), params
/// (float64 scalars; binomial's n is int64). Outputs: new state, sample.
class NumpyRandomOp final : public Op {
public:
    enum class Dist { binomial, uniform, normal };
    NumpyRandomOp(Dist dist, DType dtype, int ndim) : dist_(dist), dtype_(dtype), ndim_(ndim) {}
    std::string name() const override;
    std::vector<TensorType> make_types(const std::vector<Variable>& inputs) const override;
    void perform(const Node& node, std::span<const Tensor* const> in, std::span<Tensor* const> out) const override;
    std::vector<Variable> pullback(const Node& node, const std::vector<Variable>& out_grads) const override;
    bool is_stateful() const override { return true; }
    bool props_equal(const Op& o) const override;
    std::size_t props_hash() const override;

private:
    Dist dist_;
    DType dtype_;
    int ndim_;
};

/// numpy's integer samplers, drawn from a RandomState as numpy's legacy methods draw them.
/// Inputs: state, size (int64 vector), then per kind: random_integers: low, high (int64
/// scalars; values in [low, high]); permutation: n (each sample is a permutation of 0..n-1,
/// output size + (n,)); choice: a (int64 scalar, the population 0..a-1) and p (float64
/// vector of probabilities, or empty for uniform), replace as a prop; multinomial: n (int64
/// scalar) and pvals (float64 vector; output size + (len(pvals),)). Output: new state, int64 sample.
class NumpySampleOp final : public Op {
public:
    enum class Kind { random_integers, permutation, choice, multinomial };
    NumpySampleOp(Kind kind, int ndim, bool replace = true) : kind_(kind), ndim_(ndim), replace_(replace) {}
    std::string name() const override;
    std::vector<TensorType> make_types(const std::vector<Variable>& inputs) const override;
    void perform(const Node& node, std::span<const Tensor* const> in, std::span<Tensor* const> out) const override;
    std::vector<Variable> pullback(const Node& node, const std::vector<Variable>& out_grads) const override;
    bool is_stateful() const override { return true; }
    bool props_equal(const Op& o) const override;
    std::size_t props_hash() const override;

private:
    Kind kind_;
    int ndim_;
    bool replace_;
};

/// Theano's MultinomialFromUniform: for each row r of pvals (rows x k) and each of n draws c,
/// the uniform unis[c * rows + r] falls in one outcome's share of the row's cumulative sum
/// (the first m whose running sum exceeds it), whose count goes up by one. Output: int64 (rows, k).
class MultinomialFromUniform final : public Op {
public:
    std::string name() const override { return "MultinomialFromUniform"; }
    std::vector<TensorType> make_types(const std::vector<Variable>& inputs) const override;
    void perform(const Node& node, std::span<const Tensor* const> in, std::span<Tensor* const> out) const override;
    std::vector<Variable> pullback(const Node& node, const std::vector<Variable>& out_grads) const override;
    bool props_equal(const Op&) const override { return true; }
    std::size_t props_hash() const override { return 77; }
};

/// Theano's ChoiceFromUniform (sampling without replacement): for each of n draws c and each
/// row r of pvals (rows x k), the uniform unis[c * rows + r] picks the first outcome whose
/// running sum exceeds it; that outcome's probability is then set to 0 and the row
/// renormalised, so it is not picked again. Output: int64 (rows, n) of outcome indices (-1
/// where rounding left a row's whole sum at or below its uniform, as Theano's).
class ChoiceFromUniform final : public Op {
public:
    std::string name() const override { return "ChoiceFromUniform"; }
    std::vector<TensorType> make_types(const std::vector<Variable>& inputs) const override;
    void perform(const Node& node, std::span<const Tensor* const> in, std::span<Tensor* const> out) const override;
    std::vector<Variable> pullback(const Node& node, const std::vector<Variable>& out_grads) const override;
    bool props_equal(const Op&) const override { return true; }
    std::size_t props_hash() const override { return 78; }
};

/// MRG31k3p draws. Inputs: rstate (int32 (n, 6)), size (int64 vector), and for normal avg and
/// std (scalars of the output dtype). Outputs: new rstate, sample. The state advances in place
/// when the planner allows it (destroy_map {0}: only when the sample is unused, since the
/// state is a shared variable's buffer); otherwise uniform draws write the advanced state to
/// the output buffer without copying the old one first.
class MRGRandomOp final : public Op {
public:
    enum class Dist { uniform, normal };
    MRGRandomOp(Dist dist, DType dtype, int ndim) : dist_(dist), dtype_(dtype), ndim_(ndim) {}
    std::string name() const override;
    std::vector<int> destroy_map() const override { return {0, -1}; }
    void validate(const Node& node, std::span<const Tensor* const> in) const override;
    std::vector<TensorType> make_types(const std::vector<Variable>& inputs) const override;
    void perform(const Node& node, std::span<const Tensor* const> in, std::span<Tensor* const> out) const override;
    std::vector<Variable> pullback(const Node& node, const std::vector<Variable>& out_grads) const override;
    bool is_stateful() const override { return true; }
    bool props_equal(const Op& o) const override;
    std::size_t props_hash() const override;

private:
    Dist dist_;
    DType dtype_;
    int ndim_;
};

/// What a model needs of a stream class (dA takes either kind).
class RandomStreamsBase {
public:
    virtual ~RandomStreamsBase() = default;
    virtual Variable binomial(const Size& size, std::int64_t n, double p, std::optional<DType> dtype = std::nullopt) = 0;
    /// binomial with a symbolic probability (a float scalar), e.g. 1 - corruption_level.
    virtual Variable binomial(const Size& size, std::int64_t n, const Variable& p,
                              std::optional<DType> dtype = std::nullopt) = 0;
    virtual Variable uniform(const Size& size, double low = 0.0, double high = 1.0,
                             std::optional<DType> dtype = std::nullopt) = 0;
    virtual Variable normal(const Size& size, double avg = 0.0, double std = 1.0,
                            std::optional<DType> dtype = std::nullopt) = 0;
    /// Symbolic parameters (Theano's low/high and avg/std given as tensors): number scalars go
    /// to the sampler as they are; tensors broadcast against the sample, each element drawn
    /// with its own parameters (low + (high - low) u and avg + std z, in the stream's own
    /// arithmetic: numpy's in float64 then cast, MRG's in the sample's dtype).
    virtual Variable uniform(const Size& size, const Variable& low, const Variable& high,
                             std::optional<DType> dtype = std::nullopt) = 0;
    virtual Variable normal(const Size& size, const Variable& avg, const Variable& std,
                            std::optional<DType> dtype = std::nullopt) = 0;
};

class RandomStreams final : public RandomStreamsBase {
public:
    explicit RandomStreams(std::uint32_t seed);

    /// binomial(size, n, p): numpy's binomial cast to dtype (default int64, as in Theano).
    /// Float arguments are rounded to floatX first, as Theano's constants are.
    Variable binomial(const Size& size, std::int64_t n, double p, std::optional<DType> dtype = std::nullopt) override;
    Variable binomial(const Size& size, std::int64_t n, const Variable& p,
                      std::optional<DType> dtype = std::nullopt) override;
    Variable uniform(const Size& size, double low = 0.0, double high = 1.0,
                     std::optional<DType> dtype = std::nullopt) override;
    Variable normal(const Size& size, double avg = 0.0, double std = 1.0,
                    std::optional<DType> dtype = std::nullopt) override;
    Variable uniform(const Size& size, const Variable& low, const Variable& high,
                     std::optional<DType> dtype = std::nullopt) override;
    Variable normal(const Size& size, const Variable& avg, const Variable& std,
                    std::optional<DType> dtype = std::nullopt) override;

    /// Integers in [low, high] (Theano's random_integers: numpy's randint(low, high + 1)).
    Variable random_integers(const Size& size, const Variable& low, const Variable& high);
    /// A permutation of 0..n-1 per sample: output size + (n,).
    Variable permutation(const Size& size, const Variable& n);
    /// Samples of 0..a-1 (numpy's choice): with or without replacement, uniform or with
    /// probabilities p (a float vector of length a; without replacement only uniform).
    Variable choice(const Size& size, const Variable& a, bool replace = true,
                    const std::optional<Variable>& p = std::nullopt);
    /// Counts of n draws over len(pvals) outcomes per sample: output size + (len(pvals),).
    Variable multinomial(const Size& size, const Variable& n, const Variable& pvals);

    /// Reseeds every stream as Theano does: a new seed generator, one randint each, in order.
    void seed(std::uint32_t s);
    /// The generator state of the k-th random variable made by this object.
    RandomState state(std::size_t k) const;
    const std::vector<SharedVariable>& state_variables() const { return states_; }

private:
    Variable make(NumpyRandomOp::Dist dist, const Size& size, Variable a, Variable b, DType dtype);
    Variable sample(NumpySampleOp::Kind kind, const Size& size, std::vector<Variable> params, bool replace = true);
    SharedVariable next_state();
    RandomState seedgen_;
    std::vector<SharedVariable> states_;
};

class MRG_RandomStreams final : public RandomStreamsBase {
public:
    explicit MRG_RandomStreams(std::uint32_t seed);

    Variable uniform(const Size& size, double low = 0.0, double high = 1.0,
                     std::optional<DType> dtype = std::nullopt) override;
    /// cast(uniform(size) < p, dtype): uniforms in floatX, p a floatX constant (Theano's rule),
    /// or a float scalar or tensor (broadcast against the sample).
    Variable binomial(const Size& size, std::int64_t n, double p, std::optional<DType> dtype = std::nullopt) override;
    Variable binomial(const Size& size, std::int64_t n, const Variable& p,
                      std::optional<DType> dtype = std::nullopt) override;
    Variable normal(const Size& size, double avg = 0.0, double std = 1.0,
                    std::optional<DType> dtype = std::nullopt) override;
    Variable uniform(const Size& size, const Variable& low, const Variable& high,
                     std::optional<DType> dtype = std::nullopt) override;
    Variable normal(const Size& size, const Variable& avg, const Variable& std,
                    std::optional<DType> dtype = std::nullopt) override;

    /// Theano's MRG multinomial: pvals a matrix of probability rows, n draws per row, one
    /// uniform per draw; output int64 counts of pvals' shape.
    Variable multinomial(const Variable& pvals, std::int64_t n = 1);
    /// Theano's MRG choice: n outcomes per row of pvals without replacement (the only form
    /// Theano's MRG stream has); output int64 (rows, n).
    Variable choice(const Variable& pvals, std::int64_t n = 1);

    /// Reseeds every stream as Theano's seed(): the base state from s (the constructor's seed
    /// when none is given), then each random variable made so far, in order, its substreams from
    /// it, as a new object seeded with s would have given them.
    void seed(std::optional<std::uint32_t> s = std::nullopt);
    /// The base state the next random variable's substreams start from.
    const mrg::State& rstate() const { return rstate_; }
    const std::vector<SharedVariable>& state_variables() const { return states_; }

private:
    SharedVariable new_state(const Size& size, std::optional<std::int64_t> n_elements);
    mrg::State rstate_;
    std::uint32_t initial_seed_;
    std::vector<SharedVariable> states_;
};

}  // namespace theanine
