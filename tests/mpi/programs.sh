#!/usr/bin/env bash
# The programs' --data-parallel under mpiexec: the dA prints the costs one process prints
# (to 1e-12 relative) with 2 and 4 ranks, rank 0 alone prints and writes the files; the mlp
# prints the same validation and test errors; periodic averaging runs; a rank that fails
# ends the job with its rank named, and no rank is left waiting.
# The data are MNIST-shaped IDX files made here: random labels, and images whose pixels are 0
# but for about 30 % of random bright ones (sparse as handwriting: dense noise makes the dA's
# training chaotic, so rounding differences grow).
# usage: programs.sh MPIEXEC DA_PROGRAM MLP_PROGRAM
set -euo pipefail
mpiexec=$1 dA=$2 mlp=$3
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
fail() { echo "FAIL: $*" >&2; exit 1; }

be32() { printf '\\x%02x\\x%02x\\x%02x\\x%02x' $(($1 >> 24 & 255)) $(($1 >> 16 & 255)) $(($1 >> 8 & 255)) $(($1 & 255)); }
images() {  # file count
    { printf '\x00\x00\x08\x03'; printf "$(be32 "$2")$(be32 28)$(be32 28)"; head -c $(($2 * 784)) /dev/urandom | tr '\000-\263' '[\000*]'; } > "$1"
}
labels() {  # file count
    { printf '\x00\x00\x08\x01'; printf "$(be32 "$2")"; for ((i = 0; i < $2; i++)); do printf "\\x0$((RANDOM % 10))"; done; } > "$1"
}
data="$tmp/mnist"
mkdir "$data"
images "$data/train-images-idx3-ubyte" 10400
labels "$data/train-labels-idx1-ubyte" 10400
images "$data/t10k-images-idx3-ubyte" 200
labels "$data/t10k-labels-idx1-ubyte" 200

# Relative difference of the numbers at the ends of two files' matching lines.
same_costs() {  # file_a file_b
    paste -d'|' <(grep '^Training epoch' "$1") <(grep '^Training epoch' "$2") | awk -F'|' '
        { split($1, a, " "); split($2, b, " "); x = a[length(a)]; y = b[length(b)];
          d = x - y; if (d < 0) d = -d; s = (x < 0 ? -x : x);
          if (a[3] != b[3] || d > 1e-12 * s) { print "epoch " a[3] ": " x " vs " y; bad = 1 } n++ }
        END { if (n == 0) { print "no epoch lines"; exit 1 } exit bad }'
}

common=(--epochs 2 --train-size 2000 --corruption 0 --data "$data" --threads 1)
"$dA" "${common[@]}" --output "$tmp/one" > "$tmp/one.txt" 2> /dev/null
for np in 2 4; do
    timeout 300 "$mpiexec" -n "$np" "$dA" "${common[@]}" --data-parallel --output "$tmp/dp$np" > "$tmp/dp$np.txt" \
        2> "$tmp/dp$np.err" || { cat "$tmp/dp$np.err" >&2; fail "dA --data-parallel with $np ranks"; }
    same_costs "$tmp/one.txt" "$tmp/dp$np.txt" || fail "dA with $np ranks printed other costs than one process"
    [ "$(grep -c '^Training epoch' "$tmp/dp$np.txt")" = 2 ] || fail "dA with $np ranks: not rank 0 alone printed"
    [ -s "$tmp/dp$np/filters_corruption_0.png" ] && [ -s "$tmp/dp$np/metrics.csv" ] || fail "dA with $np ranks wrote no outputs"
    grep -q "data parallel: $np ranks, .* s per epoch, rank 0 spent .* s in allreduce" "$tmp/dp$np.err" \
        || fail "dA with $np ranks: no timing line"
    echo "dA: $np ranks print the one-process costs: $(grep '^Training epoch 1' "$tmp/dp$np.txt")"
done
# The filters of one process and of two ranks: the same picture (the parameters agree to 1e-12).
cmp -s "$tmp/one/filters_corruption_0.png" "$tmp/dp2/filters_corruption_0.png" || fail "dA filters differ with 2 ranks"

# mlp: the validation and test errors, printed as %f, are those of one process.
mcommon=(--epochs 2 --train-size 400 --data "$data" --threads 1)
"$mlp" "${mcommon[@]}" --output "$tmp/m1" > "$tmp/m1.txt" 2> /dev/null
timeout 300 "$mpiexec" -n 2 "$mlp" "${mcommon[@]}" --data-parallel --output "$tmp/m2" > "$tmp/m2.txt" 2> "$tmp/m2.err" \
    || { cat "$tmp/m2.err" >&2; fail "mlp --data-parallel"; }
diff <(grep 'error' "$tmp/m1.txt") <(grep 'error' "$tmp/m2.txt") || fail "mlp with 2 ranks printed other errors"
timeout 300 "$mpiexec" -n 2 "$mlp" "${mcommon[@]}" --data-parallel --average-every 10 --output "$tmp/m3" \
    > "$tmp/m3.txt" 2> "$tmp/m3.err" || { cat "$tmp/m3.err" >&2; fail "mlp --average-every"; }
grep -q '^Optimization complete' "$tmp/m3.txt" || fail "mlp --average-every did not finish"
echo "mlp: 2 ranks print the one-process errors; --average-every 10 trains"

# A rank that fails: rank 1 reads a truncated image file. The job ends at once, naming it.
mkdir "$tmp/bad"
cp "$data"/* "$tmp/bad/"
head -c 1000 "$data/train-images-idx3-ubyte" > "$tmp/bad/train-images-idx3-ubyte"
set +e
timeout 120 "$mpiexec" -n 1 "$dA" "${common[@]}" --data-parallel --output "$tmp/f0" : \
    -n 1 "$dA" "${common[@]}" --data-parallel --data "$tmp/bad" --output "$tmp/f1" > "$tmp/f.txt" 2> "$tmp/f.err"
status=$?
set -e
[ "$status" != 124 ] || fail "a failing rank left the job hanging"
[ "$status" != 0 ] || fail "a failing rank ended the job with status 0"
grep -q "dA: rank 1 of 2: .*train-images-idx3-ubyte.*truncated" "$tmp/f.err" || { cat "$tmp/f.err" >&2; fail "the error does not name rank 1 and the file"; }
echo "a failing rank: status $status, $(grep -o 'dA: rank 1 of 2: .*truncated' "$tmp/f.err" | cut -c1-80)..."
# Signals. Each rank stops at a minibatch's end on SIGTERM and ends the whole job, saying so.
# sig_run NAME TARGET: starts a 2-rank job, waits for its first epoch, sends SIGTERM to the
# ranks themselves (TARGET=ranks, as a batch system does) or to mpiexec (TARGET=mpiexec).
sig_run() {
    local name=$1 target=$2
    timeout 120 "$mpiexec" -n 2 "$dA" --epochs 50 --train-size 2000 --corruption 0 --data "$data" --threads 1 \
        --data-parallel --output "$tmp/$name" > "$tmp/$name.txt" 2> "$tmp/$name.err" &
    local job=$!
    for _ in $(seq 100); do grep -q '^Training epoch 1,' "$tmp/$name.txt" 2>/dev/null && break; sleep 0.2; done
    local launcher
    launcher=$(pgrep -P "$job")  # mpiexec, under timeout
    if [ "$target" = ranks ]; then
        # shellcheck disable=SC2046  # one pid per word
        kill -TERM $(pgrep -P "$launcher") 2>/dev/null || true
    else
        kill -TERM "$launcher" 2>/dev/null || true
    fi
    set +e
    wait "$job"
    status=$?
    set -e
    [ "$status" != 124 ] || fail "SIGTERM to $target left the job hanging"
    [ "$status" != 0 ] || fail "SIGTERM to $target: the job ended with status 0"
}
sig_run sig ranks
[ "$(grep -c 'stopped by a signal' "$tmp/sig.err")" -ge 1 ] || { cat "$tmp/sig.err" >&2; fail "SIGTERM: no rank said it stopped"; }
echo "SIGTERM to the ranks: the job ended with status $status, $(grep -c 'stopped by a signal' "$tmp/sig.err") rank(s) said so"
# mpiexec passes SIGTERM on to the ranks, but may also end them itself before they print: the
# job must end (no rank left waiting); the message is not required.
sig_run sig_launcher mpiexec
echo "SIGTERM to mpiexec: the job ended with status $status"
echo "PASS"
