#!/usr/bin/env bash
# Runs the whole test suite: unit tests, the lab tests (which need root and
# say so when they skip), and every fuzz target for a few seconds.
# Environment: FUZZTIME (default 3s) per fuzz target, 0 to skip fuzzing;
# PKGS (default ./...) to narrow the packages.
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="$PATH:/usr/local/go/bin"
mkdir -p build
PKGS=${PKGS:-./...}
FUZZTIME=${FUZZTIME:-3s}
go build -o build/testreport ./scripts/testreport

status=0
echo "== go test $PKGS"
go test -count=1 -timeout 25m -json $PKGS >build/test.json 2>&1 || true
build/testreport <build/test.json || status=1

if [ "$FUZZTIME" != 0 ] && [ "$status" = 0 ]; then
  scripts/fuzz-all.sh "$FUZZTIME" || status=1
fi
exit $status
