#!/usr/bin/env bash
# Installs what is missing, builds, and runs every test (unit, real-kernel eBPF, network-namespace
# end-to-end). Needs root. CI=true makes a privileged test that cannot run fail instead of skip.
set -euo pipefail
cd "$(dirname "$0")/.."
source tests/deps.sh

export DOTNET_CLI_TELEMETRY_OPTOUT=1 DOTNET_NOLOGO=1
dotnet build Agent.sln -c Release -nologo -v quiet
results=$(mktemp -d)
set +e
dotnet test tests/Weft.Tests.csproj -c Release --no-build --logger "trx;LogFileName=weft.trx" \
  --logger "console;verbosity=normal" --results-directory "$results" "$@"
status=$?
set -e
summary=$(grep -o '<Counters [^>]*>' "$results/weft.trx" 2>/dev/null || true)
passed=$(sed -n 's/.* passed="\([0-9]*\)".*/\1/p' <<<"$summary")
failed=$(sed -n 's/.* failed="\([0-9]*\)".*/\1/p' <<<"$summary")
rm -rf "$results"
echo "tests: ${passed:-0} passed, ${failed:-0} failed"
exit $status
