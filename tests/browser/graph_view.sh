#!/usr/bin/env bash
# The graph view (Function::to_html) in a real browser: headless Chromium loads the page
# written by write_graph_page and must log no console message but the page's own, draw as
# many step nodes as the function has steps, show the details of the node named in the
# address (#s0), and take a screenshot, kept as DIR/graph_view.png.
# usage: graph_view.sh WRITE_GRAPH_PAGE CHROMIUM DIR
set -euo pipefail
writer=$1 chromium=$2 dir=$3
mkdir -p "$dir"
page="$(cd "$dir" && pwd)/graph_view.html"
expected=$("$writer" "$page")
flags=(--headless=new --no-sandbox --disable-gpu --no-first-run --hide-scrollbars --virtual-time-budget=5000
       --user-data-dir="$dir/chromium-profile")
fail() { echo "graph_view: $*" >&2; exit 1; }

"$chromium" "${flags[@]}" --enable-logging=stderr --v=0 --dump-dom "file://$page#s0" >"$dir/dom.html" 2>"$dir/chromium.log" ||
  fail "chromium failed (log: $dir/chromium.log)"
status=$(grep -o '<p id="status"[^>]*>' "$dir/dom.html") || fail "no status element in the page's DOM"
echo "status: $status"
[[ $status == *"data-steps=\"$expected\""* ]] || fail "the page drew a different number of steps than the function's $expected"
[[ $status == *'data-errors="0"'* ]] || fail "the page raised script errors"
[[ $status == *'data-selected="s0"'* ]] || fail "the node named in the address was not selected"
grep -q '<h2>step 0: ' "$dir/dom.html" || fail "the details of step 0 are not shown"
grep -q "CONSOLE.*\"theanine graph view: $expected steps\"" "$dir/chromium.log" || fail "the page's own console line is missing"
if grep 'CONSOLE' "$dir/chromium.log" | grep -v '"theanine graph view: '; then
  fail "console messages other than the page's own (above)"
fi

rm -f "$dir/graph_view.png"
"$chromium" "${flags[@]}" --window-size=1400,1000 --screenshot="$dir/graph_view.png" "file://$page" 2>/dev/null ||
  fail "chromium could not take the screenshot"
[ -s "$dir/graph_view.png" ] || fail "no screenshot written"
# The PNG header's width and height (bytes 16..23, big-endian).
size=$(od -An -tu1 -j16 -N8 "$dir/graph_view.png" | awk '{print $1*16777216+$2*65536+$3*256+$4 "x" $5*16777216+$6*65536+$7*256+$8}')
[ "$size" = "1400x1000" ] || fail "the screenshot is $size, expected 1400x1000"
echo "graph_view: $expected steps drawn, no console errors; screenshot $dir/graph_view.png ($size)"
