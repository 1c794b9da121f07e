// The tutorials' test_hmc.py: HMC sampling of a correlated Gaussian (sampler_on_nd_gaussian
// with burnin 1000, 1000 samples, 5 dimensions, batches of 3), printing the target mean and
// covariance, the empirical ones and the sampler's final step size and acceptance rate.
#include <cstdio>
#include <iostream>

#include <fmt/format.h>

#include "examples/io/flags.hpp"
#include "examples/io/numpy_like.hpp"
#include "models/hmc.hpp"
#include "theanine.hpp"

using namespace theanine;
namespace np = theanine::io::numpy;

namespace {

template <class T>
int run(int burnin, int n_samples, int dim, int batchsize) {
    const bool f32 = std::is_same_v<T, float>;
    const DType fx = dtype_of<T>();
    RandomState rng(123);
    // mu = rand(dim) * 10; cov = rand(dim, dim), symmetrised, unit diagonal; its inverse.
    std::vector<T> mu(static_cast<std::size_t>(dim));
    for (auto& m : mu) m = static_cast<T>(rng.next_double() * 10);
    std::vector<T> cov(static_cast<std::size_t>(dim * dim));
    for (auto& c : cov) c = static_cast<T>(rng.next_double());
    std::vector<T> sym(cov.size());
    for (int i = 0; i < dim; ++i) {
        for (int j = 0; j < dim; ++j) sym[i * dim + j] = (cov[i * dim + j] + cov[j * dim + i]) / T(2);
    }
    for (int i = 0; i < dim; ++i) sym[i * dim + i] = T(1);
    const std::vector<T> cov_inv = np::inv(sym, dim);
    Variable mu_c = constant(Tensor::from_vector<T>({dim}, mu));
    Variable cov_inv_c = constant(Tensor::from_vector<T>({dim, dim}, cov_inv));
    auto gaussian_energy = [&](const Variable& x) { return 0.5 * (dot(x - mu_c, cov_inv_c) * (x - mu_c)).sum(1); };
    // Initial positions: randn(batchsize, dim) cast to floatX.
    std::vector<T> pos(static_cast<std::size_t>(batchsize * dim));
    for (auto& p : pos) p = static_cast<T>(rng.gauss());
    SharedVariable position = shared(Tensor::from_vector<T>({batchsize, dim}, pos));
    models::hmc::HMCSettings settings;
    settings.initial_stepsize = 1e-3;
    settings.stepsize_max = 0.5;
    auto sampler = models::hmc::HMC_sampler::new_from_shared_positions(position, gaussian_energy, settings);
    for (int r = 0; r < burnin; ++r) sampler.draw();
    // samples[k, d] with k = b * n_samples + r: draw r, chain b (numpy's _samples.T.reshape(dim, -1).T).
    std::vector<std::vector<T>> columns(static_cast<std::size_t>(dim), std::vector<T>(static_cast<std::size_t>(batchsize) * n_samples));
    for (int r = 0; r < n_samples; ++r) {
        const Tensor s = sampler.draw();
        const T* v = s.data<T>();
        for (int b = 0; b < batchsize; ++b) {
            for (int d = 0; d < dim; ++d) columns[d][static_cast<std::size_t>(b) * n_samples + r] = v[b * dim + d];
        }
    }
    auto widen = [](const std::vector<T>& v) { return std::vector<double>(v.begin(), v.end()); };
    std::printf("****** TARGET VALUES ******\n");
    std::printf("target mean: %s\n", np::array_str(widen(mu), {dim}, f32).c_str());
    std::printf("target cov:\n %s\n", np::array_str(widen(sym), {dim, dim}, f32).c_str());
    std::vector<double> emp_mean, all;
    const std::int64_t n = static_cast<std::int64_t>(batchsize) * n_samples;
    for (int d = 0; d < dim; ++d) {
        emp_mean.push_back(np::mean(columns[d].data(), n));
        all.insert(all.end(), columns[d].begin(), columns[d].end());
    }
    std::printf("****** EMPIRICAL MEAN/COV USING HMC ******\n");
    std::printf("empirical mean:  %s\n", np::array_str(emp_mean, {dim}, f32).c_str());
    std::printf("empirical_cov:\n %s\n", np::array_str(np::cov(all, dim, n), {dim, dim}).c_str());
    std::printf("****** HMC INTERNALS ******\n");
    std::printf("final stepsize %s\n", np::scalar_str(sampler.stepsize.get_value().item(), f32).c_str());
    std::printf("final acceptance_rate %s\n", np::scalar_str(sampler.avg_acceptance_rate.get_value().item(), f32).c_str());
    (void)fx;
    return 0;
}

}  // namespace

int main(int argc, char** argv) {
    int burnin = 1000, samples = 1000, dim = 5, batchsize = 3, threads = 0;
    std::string floatX = "float64";
    io::FlagParser flags("hmc", "Hybrid Monte Carlo on a correlated Gaussian, as the tutorials' test_hmc.py.");
    flags.add("burnin", &burnin, 0, "draws before the samples are kept");
    flags.add("samples", &samples, 2, "draws kept");
    flags.add("dim", &dim, 1, "dimensions of the Gaussian");
    flags.add("batch-size", &batchsize, 1, "chains sampled side by side");
    flags.add("floatX", &floatX, "float type of the graph", {"float64", "float32"});
    flags.add("threads", &threads, 0, "threads for the kernels (0: all cores)");
    flags.parse(argc, argv);
    try {
        config().floatX = dtype_from_name(floatX);
        if (threads > 0) set_num_threads(threads);
        return floatX == "float32" ? run<float>(burnin, samples, dim, batchsize) : run<double>(burnin, samples, dim, batchsize);
    } catch (const Error& e) {
        std::cerr << "hmc: " << e.what() << "\n";
        return 1;
    }
}
