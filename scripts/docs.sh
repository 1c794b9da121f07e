#!/usr/bin/env bash
# Builds the API reference from the public headers' comments with Doxygen into DIR/html
# (default build/docs); fails on any warning Doxygen gives about them.
set -euo pipefail
out=$(realpath -m "${1:-build/docs}")
cd "$(dirname "$0")/.."
mkdir -p "$out"
# The settings are scripts/Doxyfile's; the output folder and warning log are this run's.
{ cat scripts/Doxyfile; echo "OUTPUT_DIRECTORY = $out"; echo "WARN_LOGFILE = $out/warnings.log"; } > "$out/Doxyfile"
if ! doxygen "$out/Doxyfile"; then
  cat "$out/warnings.log" >&2
  echo "docs: Doxygen warned about the public API ($out/warnings.log)" >&2
  exit 1
fi
if [ -s "$out/warnings.log" ]; then
  cat "$out/warnings.log" >&2
  echo "docs: Doxygen warned about the public API ($out/warnings.log)" >&2
  exit 1
fi
echo "docs: $out/html/index.html"
