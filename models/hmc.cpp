#include "models/hmc.hpp"

#include "autodiff/grad.hpp"
#include "ops/blas.hpp"
#include "ops/elemwise.hpp"
#include "ops/reduce.hpp"
#include "ops/scan.hpp"
#include "ops/shape.hpp"

namespace theanine::models::hmc {

Variable kinetic_energy(const Variable& vel) { return 0.5 * pow(vel, 2).sum(1); }

Variable hamiltonian(const Variable& pos, const Variable& vel, const EnergyFn& energy_fn) {
    return energy_fn(pos) + kinetic_energy(vel);
}

Variable metropolis_hastings_accept(const Variable& energy_prev, const Variable& energy_next,
                                    MRG_RandomStreams& s_rng) {
    Variable ediff = energy_prev - energy_next;
    return ge(exp(ediff) - s_rng.uniform(energy_prev.shape()), 0);
}

std::pair<Variable, Variable> simulate_dynamics(const Variable& initial_pos, const Variable& initial_vel,
                                                const Variable& stepsize, int n_steps, const EnergyFn& energy_fn) {
    // pos(t), vel(t - stepsize/2) -> pos(t + stepsize), vel(t + stepsize/2)
    auto leapfrog = [&energy_fn](const std::vector<Variable>& a) {
        const Variable &pos = a[0], &vel = a[1], &step = a[2];
        Variable dE_dpos = grad(energy_fn(pos).sum(), pos);
        Variable new_vel = vel - step * dE_dpos;
        Variable new_pos = pos + step * new_vel;
        return ScanStep({new_pos, new_vel});
    };
    Variable initial_energy = energy_fn(initial_pos);
    Variable dE_dpos = grad(initial_energy.sum(), initial_pos);
    Variable vel_half_step = initial_vel - 0.5 * stepsize * dE_dpos;
    Variable pos_full_step = initial_pos + stepsize * vel_half_step;
    ScanResult r = scan(leapfrog, {}, {ScanOutput(pos_full_step), ScanOutput(vel_half_step)}, {stepsize},
                        n_steps - 1, -1, false, "leapfrog");
    if (!r.updates.empty()) throw InternalError("simulate_dynamics: the leap-frog step updates shared variables");
    Variable final_pos = r[0][{-1}];
    Variable final_vel = r[1][{-1}];
    // The scan's last velocity is vel(t + (n_steps - 1/2) stepsize): one more half step.
    Variable energy = energy_fn(final_pos);
    final_vel = final_vel - 0.5 * stepsize * grad(energy.sum(), final_pos);
    return {final_pos, final_vel};
}

std::pair<Variable, Variable> hmc_move(MRG_RandomStreams& s_rng, const Variable& positions, const EnergyFn& energy_fn,
                                       const Variable& stepsize, int n_steps) {
    Variable initial_vel = s_rng.normal(positions.shape());
    auto [final_pos, final_vel] = simulate_dynamics(positions, initial_vel, stepsize, n_steps, energy_fn);
    Variable accept = metropolis_hastings_accept(hamiltonian(positions, initial_vel, energy_fn),
                                                 hamiltonian(final_pos, final_vel, energy_fn), s_rng);
    return {accept, final_pos};
}

Updates hmc_updates(const SharedVariable& positions, const SharedVariable& stepsize,
                    const SharedVariable& avg_acceptance_rate, const Variable& final_pos, const Variable& accept,
                    const HMCSettings& s) {
    std::vector<int> order{0};
    for (int d = 1; d < final_pos.ndim(); ++d) order.push_back(-1);
    Variable accept_matrix = accept.dimshuffle(order);
    Variable new_positions = switch_(accept_matrix, final_pos, positions);
    Variable new_stepsize_raw = switch_(gt(avg_acceptance_rate, s.target_acceptance_rate), stepsize * s.stepsize_inc,
                                        stepsize * s.stepsize_dec);
    Variable new_stepsize = clip(new_stepsize_raw, s.stepsize_min, s.stepsize_max);
    Variable new_acceptance_rate = add(s.avg_acceptance_slowness * avg_acceptance_rate,
                                       (1.0 - s.avg_acceptance_slowness) * cast(accept, avg_acceptance_rate.dtype()).mean());
    return {{positions, new_positions}, {stepsize, new_stepsize}, {avg_acceptance_rate, new_acceptance_rate}};
}

HMC_sampler HMC_sampler::new_from_shared_positions(const SharedVariable& shared_positions, const EnergyFn& energy_fn,
                                                   const HMCSettings& settings) {
    const DType fx = config().floatX;
    SharedVariable stepsize = shared(Tensor::full(fx, {}, settings.initial_stepsize), "hmc_stepsize");
    SharedVariable avg_acceptance_rate = shared(Tensor::full(fx, {}, settings.target_acceptance_rate), "avg_acceptance_rate");
    auto s_rng = std::make_shared<MRG_RandomStreams>(settings.seed);
    auto [accept, final_pos] = hmc_move(*s_rng, shared_positions, energy_fn, stepsize, settings.n_steps);
    Updates updates = hmc_updates(shared_positions, stepsize, avg_acceptance_rate, final_pos, accept, settings);
    HMC_sampler h(function({}, std::vector<Out>{}, updates));
    h.positions = shared_positions;
    h.stepsize = stepsize;
    h.avg_acceptance_rate = avg_acceptance_rate;
    h.settings = settings;
    h.s_rng = s_rng;
    h.updates = updates;
    return h;
}

Tensor HMC_sampler::draw() {
    simulate();
    return positions.get_value();
}

}  // namespace theanine::models::hmc
