#!/usr/bin/env bash
# Builds the libFuzzer targets of the file readers with clang and runs each for a while on
# the seed corpus kept in tests/fuzz/corpus (new inputs go to a scratch folder, not the repo).
#   bash scripts/fuzz.sh          # 20 s per target (what CI runs)
#   bash scripts/fuzz.sh 3600     # an hour per target
set -euo pipefail
cd "$(dirname "$0")/.."
seconds=${1:-20}
if ! command -v clang++ >/dev/null || ! dpkg -s libclang-rt-14-dev >/dev/null 2>&1; then
  sudo=""
  [ "$(id -u)" -ne 0 ] && sudo=sudo
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq clang libclang-rt-14-dev
fi
cmake -S tests/fuzz -B build-fuzz -DCMAKE_CXX_COMPILER=clang++ -DCMAKE_BUILD_TYPE=RelWithDebInfo >/dev/null
cmake --build build-fuzz -j"$(nproc)"
scratch=$(mktemp -d)
trap 'rm -rf "$scratch"' EXIT
for target in idx idx_gz npy; do
  mkdir -p "$scratch/$target"
  echo "== fuzz_$target for ${seconds} s"
  # -rss_limit_mb: a reader that allocates what a header promises instead of what the file
  # holds runs out of this budget and is reported.
  ./build-fuzz/fuzz_$target -max_total_time="$seconds" -rss_limit_mb=1024 -max_len=4096 -timeout=10 \
    -artifact_prefix="$scratch/" "$scratch/$target" "tests/fuzz/corpus/$target" 2>&1 | tail -1
done
echo "fuzz: every target ran ${seconds} s without a finding"
