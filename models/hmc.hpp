// Hybrid Monte Carlo, as the Deep Learning Tutorials' hmc.py writes it: leap-frog integration
// of Hamiltonian dynamics as a scan whose step takes the gradient of the energy, a
// Metropolis-Hastings accept/reject with MRG uniforms, and a step size adapted towards a
// target acceptance rate.
#pragma once

#include <functional>

#include "compile/function.hpp"
#include "graph/graph.hpp"
#include "ops/random.hpp"

namespace theanine::models::hmc {

// Energy of each row of a matrix of positions: a vector.
using EnergyFn = std::function<Variable(const Variable&)>;

// 0.5 * sum(vel ** 2, axis=1), a mass of 1.
Variable kinetic_energy(const Variable& vel);
// energy_fn(pos) + kinetic_energy(vel)
Variable hamiltonian(const Variable& pos, const Variable& vel, const EnergyFn& energy_fn);
// (exp(energy_prev - energy_next) - uniform) >= 0, one uniform per row.
Variable metropolis_hastings_accept(const Variable& energy_prev, const Variable& energy_next,
                                    MRG_RandomStreams& s_rng);
// The final (position, velocity) after n_steps leap-frog steps of size stepsize: a half step
// of the velocity, a full step of the position, n_steps - 1 leap-frog steps as a scan, and a
// last half step of the velocity.
std::pair<Variable, Variable> simulate_dynamics(const Variable& initial_pos, const Variable& initial_vel,
                                                const Variable& stepsize, int n_steps, const EnergyFn& energy_fn);
// One HMC move: normal velocities, the dynamics, the accept decision. Returns (accept, final_pos).
std::pair<Variable, Variable> hmc_move(MRG_RandomStreams& s_rng, const Variable& positions, const EnergyFn& energy_fn,
                                       const Variable& stepsize, int n_steps);

struct HMCSettings {
    double initial_stepsize = 0.01;
    double target_acceptance_rate = 0.9;
    int n_steps = 20;
    double stepsize_dec = 0.98;
    double stepsize_min = 0.001;
    double stepsize_max = 0.25;
    double stepsize_inc = 1.02;
    double avg_acceptance_slowness = 0.9;  // weight of the old average in its moving average
    std::uint32_t seed = 12345;            // of the MRG streams
};

// The updates of positions (accepted moves), step size (towards the target rate, clipped)
// and average acceptance rate (exponential moving average).
Updates hmc_updates(const SharedVariable& positions, const SharedVariable& stepsize,
                    const SharedVariable& avg_acceptance_rate, const Variable& final_pos, const Variable& accept,
                    const HMCSettings& s);

// The sampler: draw() runs one HMC move (the compiled simulate function) and returns the
// positions.
class HMC_sampler {
public:
    static HMC_sampler new_from_shared_positions(const SharedVariable& shared_positions, const EnergyFn& energy_fn,
                                                 const HMCSettings& settings = {});
    Tensor draw();

    SharedVariable positions, stepsize, avg_acceptance_rate;
    HMCSettings settings;
    std::shared_ptr<MRG_RandomStreams> s_rng;
    Updates updates;
    Function simulate;

private:
    HMC_sampler(Function f) : simulate(std::move(f)) {}
};

}  // namespace theanine::models::hmc
