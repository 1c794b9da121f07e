#!/usr/bin/env bash
# Data-parallel training on this machine: for the dA and the mlp steps (bench_data_parallel),
# one process with T threads against N MPI ranks with T/N threads each (default N = T = the
# number of cores), both measured in this run; prints each run's line, then
#   data_parallel ratio model=M ranks/process=R
# (the ranks' milliseconds per step over the one process's: below 1 is faster).
# usage: bench/data_parallel.sh [BUILD_DIR] [N] [extra bench_data_parallel flags...]
set -euo pipefail
build=${1:-build}
shift || true
n=${1:-$(nproc)}
shift || true
bench="$build/bench_data_parallel"
[ -x "$bench" ] || { echo "data_parallel.sh: $bench is missing (built when CMake finds MPI)" >&2; exit 1; }
threads=$(nproc)
per_rank=$(( threads / n > 0 ? threads / n : 1 ))
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 OMPI_MCA_rmaps_base_oversubscribe=1
echo "CPU: $(lscpu | sed -n 's/^Model name: *//p') ($threads cores)"
for model in dA mlp; do
    one=$("$bench" --model "$model" --threads "$threads" "$@")
    many=$(mpiexec -n "$n" "$bench" --model "$model" --threads "$per_rank" --data-parallel "$@")
    echo "$one"
    echo "$many"
    a=$(sed 's/.* ms_per_step=\([0-9.]*\).*/\1/' <<< "$one")
    b=$(sed 's/.* ms_per_step=\([0-9.]*\).*/\1/' <<< "$many")
    echo "data_parallel ratio model=$model ranks/process=$(awk -v a="$a" -v b="$b" 'BEGIN { printf "%.3f", b / a }')"
done
