#!/usr/bin/env bash
# Installs what theanine needs on a Debian machine (apt-get; run as root or with sudo).
# Installs only packages that are missing.
set -euo pipefail
pkgs=(build-essential cmake pkg-config libeigen3-dev libfmt-dev doctest-dev zlib1g-dev libpng-dev)
if [ "${1:-}" = "--with-npm" ]; then pkgs+=(npm); fi
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
