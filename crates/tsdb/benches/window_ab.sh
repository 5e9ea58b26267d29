#!/usr/bin/env bash
# A/B figures for the `window` bench (sealed `rate[5m]` read path): builds the bench at BASE
# (a git revision, e.g. de2d9a2 = main before block priors and segmented records) and in the
# current work tree, then runs the two binaries alternately ROUNDS times (each run: 10,000
# gen.py-shaped series sealed, 3 windows, median of WINDOW_BENCH_REPS selects) and prints
# every run plus, per window, the median over runs of ms per 10k series for both sides, and
# each side's raw/all-blocks bytes per point. Takes ~1 min per run on an idle 2-core machine.
#
# Usage: CARGO_TARGET_DIR=/path crates/tsdb/benches/window_ab.sh BASE [ROUNDS]
# (BASE is built in $CARGO_TARGET_DIR-ab-base, kept for reruns.)
set -euo pipefail
base=${1:?usage: window_ab.sh BASE-REV [ROUNDS]}
rounds=${2:-5}
repo=$(git rev-parse --show-toplevel)
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$repo/target}
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
mkdir -p "$work/base"
git -C "$repo" archive "$base" | tar -x -C "$work/base"

build() { # $1 = source dir, $2 = target dir, $3 = where to copy the binary
    local exe
    exe=$(cd "$1" && CARGO_TARGET_DIR=$2 cargo bench -p tsdb --bench window --no-run 2>&1 |
        sed -n 's/.*Executable benches\/window.rs (\(.*\))$/\1/p' | tail -1)
    [ -x "$exe" ] || { echo "build of the window bench in $1 failed" >&2; exit 1; }
    cp "$exe" "$3"
}
# Two target dirs: cargo names the two trees' artifacts alike, so one dir would mix them up.
build "$work/base" "$CARGO_TARGET_DIR-ab-base" "$work/window-base"
build "$repo" "$CARGO_TARGET_DIR" "$work/window-new"

for i in $(seq "$rounds"); do
    for side in base new; do
        echo "== round $i $side (load $(cut -d' ' -f1 /proc/loadavg))"
        (cd "$work" && "./window-$side" --bench) | sed "s/^/$side: /"
    done
done | tee "$work/runs.txt"

python3 - "$work/runs.txt" <<'EOF'
import re, statistics, sys
ms, bpp = {}, {}
for line in open(sys.argv[1]):
    m = re.match(r"(base|new): select counters, (.*?): .*?, ([\d.]+) ms per 10k series", line)
    if m:
        ms.setdefault((m[2], m[1]), []).append(float(m[3]))
    m = re.match(r"(base|new): .*raw blocks ([\d.]+) B/pt, all blocks ([\d.]+) B/pt", line)
    if m:
        bpp[m[1]] = (float(m[2]), float(m[3]))
print("\nwindow | base ms/10k (median of runs) | new | base/new")
for w in dict.fromkeys(k[0] for k in ms):
    b, n = statistics.median(ms[(w, "base")]), statistics.median(ms[(w, "new")])
    print(f"{w} | {b:.1f} | {n:.1f} | {b / n:.2f}x")
for side, (raw, allb) in sorted(bpp.items()):
    print(f"{side}: raw blocks {raw:.4f} B/pt, all blocks {allb:.4f} B/pt")
if len(bpp) == 2:
    print(f"all blocks growth: {100 * (bpp['new'][1] / bpp['base'][1] - 1):+.2f} %")
EOF
