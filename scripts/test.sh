#!/usr/bin/env bash
# The whole test suite: install what is missing, build (Release), run every test with ctest
# (the browser test of the graph view, the API reference's Doxygen run and the MPI tests
# under mpiexec among them).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh --with-browser --with-docs --with-mpi
cmake -S . -B build -DCMAKE_BUILD_TYPE=Release
cmake --build build -j"$(nproc)"
ctest --test-dir build --output-on-failure
