#!/usr/bin/env bash
# Installs what is missing, builds, and runs every test (unit, real-kernel eBPF, network-namespace
# end-to-end). Needs root. CI=true makes a privileged test that cannot run fail instead of skip.
#   bash tests/run.sh [all|unit|kernel|e2e] [dotnet test options]
# unit needs no root (and installs nothing); kernel and e2e need root; all (the default) runs the three.
# kernel, e2e and all first publish the agent as the image ships it (NativeAOT) and start their agents from it.
set -euo pipefail
cd "$(dirname "$0")/.."
group=all
case "${1:-}" in
  all|unit|kernel|e2e) group=$1; shift ;;
esac
case "$group" in
  unit) filter="Group!=kernel&Group!=e2e" ;;
  kernel) filter="Group=kernel" ;;
  e2e) filter="Group=e2e" ;;
  all) filter="" ;;
esac
if [ "$group" = unit ] && [ "$(id -u)" != 0 ]; then
  command -v dotnet >/dev/null || { echo "weft: the .NET 10 SDK is required (dotnet on PATH)" >&2; exit 1; }
else
  source tests/deps.sh
fi

export DOTNET_CLI_TELEMETRY_OPTOUT=1 DOTNET_NOLOGO=1
dotnet build Agent.sln -c Release -nologo -v quiet
if [ "$group" = all ] || [ "$group" = unit ]; then
  # the style in .editorconfig (file-scoped namespaces, braces, sorted usings, _camelCase private fields)
  dotnet format Agent.sln --verify-no-changes --severity warn --no-restore -v quiet \
    || { echo "weft: code style differs from .editorconfig: run 'dotnet format Agent.sln --severity warn'" >&2; exit 1; }
fi
if [ "$group" != unit ]; then
  source tests/agent-aot.sh
fi
results=$(mktemp -d)
set +e
dotnet test tests/Weft.Tests.csproj -c Release --no-build --logger "trx;LogFileName=weft.trx" \
  --logger "console;verbosity=normal" --results-directory "$results" ${filter:+--filter "$filter"} "$@"
status=$?
set -e
summary=$(grep -o '<Counters [^>]*>' "$results/weft.trx" 2>/dev/null || true)
passed=$(sed -n 's/.* passed="\([0-9]*\)".*/\1/p' <<<"$summary")
failed=$(sed -n 's/.* failed="\([0-9]*\)".*/\1/p' <<<"$summary")
# CI shows only the tail of this output: name each failed test there, with its message and where it failed
if [ "${failed:-0}" != 0 ]; then
  python3 - "$results/weft.trx" <<'PY' || true
import sys, xml.etree.ElementTree as ET
ns = {"t": "http://microsoft.com/schemas/VisualStudio/TeamTest/2010"}
for r in ET.parse(sys.argv[1]).getroot().iterfind(".//t:UnitTestResult", ns):
    if r.get("outcome") != "Failed":
        continue
    print(f"FAILED {r.get('testName')} ({r.get('duration')})")
    for tag in ("Message", "StackTrace"):
        e = r.find(f"t:Output/t:ErrorInfo/t:{tag}", ns)
        if e is not None and e.text:
            for line in e.text.strip().splitlines()[:12]:
                print("    " + line.strip())
PY
fi
rm -rf "$results"
echo "test group: $group"
echo "tests: ${passed:-0} passed, ${failed:-0} failed"
exit $status
