#!/usr/bin/env bash
# Fuzz every native Go fuzz target (func FuzzXxx(f *testing.F)) under pkg/
# and internal/ for DURATION each (default 10s; any -fuzztime value), one
# target after another: `go test -fuzz` takes one target per run, and the
# targets unpack, decompress and decode, so two at once would only fight
# over the cores. Prints a line per target and exits non-zero if any found
# a failing input, which Go leaves in the package's testdata/fuzz/<target>/
# (a plain `go test` then replays it as a seed).
#
#   bash hack/fuzz.sh 60s
set -euo pipefail
cd "$(dirname "$0")/.."
duration=${1:-10s}

# grep rather than `go test -list`, which would build every package first.
targets=$(grep -rHoE '^func Fuzz[A-Za-z0-9_]+\(f \*testing\.F\)' --include='*_test.go' pkg internal |
  sed -E 's|^(.*)/[^/]*_test\.go:func (Fuzz[A-Za-z0-9_]+).*|\1 \2|' | sort)
if [ -z "$targets" ]; then
  echo "no fuzz targets found" >&2
  exit 1
fi

log=$(mktemp)
trap 'rm -f "$log"' EXIT
failed=0
while read -r dir name; do
  # -fuzzminimizetime 1x: Go minimizes every input that finds new coverage,
  # for up to 60 s each, which would eat a short run; crashers are kept
  # unminimized. -parallel 1: one worker, beside whatever else builds here.
  # -timeout 0: a run lasts DURATION; each target's own watchdog turns a
  # hang into a crash with its input recorded.
  if go test -run '^$' -fuzz "^${name}\$" -fuzztime "$duration" -fuzzminimizetime 1x \
    -parallel 1 -timeout 0 "./$dir/" </dev/null >"$log" 2>&1; then
    result=ok
  elif grep -q 'Failing input written to' "$log" || ! grep -q 'context deadline exceeded' "$log"; then
    result=FAIL
  else
    # Go 1.26 may fail a run that merely reached its -fuzztime with a
    # bare "context deadline exceeded" and no input (go.dev/issue/75804,
    # fixed in 1.27): no crash.
    result="ok (Go's spurious deadline failure at the end)"
  fi
  execs=$(grep -oE 'execs: [0-9]+' "$log" | tail -1 | grep -oE '[0-9]+' || true)
  if [ "$result" = FAIL ]; then
    failed=1
    crasher=$(grep -oE 'testdata/fuzz/[^ ]+' "$log" | head -1 || true)
    echo "FAIL  $name ./$dir/ ${crasher:+$dir/$crasher}"
    grep -vE '^fuzz: elapsed|^\s*$' "$log" | head -40 | sed 's/^/      /'
  else
    echo "$result  $name ./$dir/ (${execs:-no} execs)"
  fi
done <<<"$targets"
exit "$failed"
