#!/usr/bin/env bash
# Installs what is missing (iperf3 and sockperf among it), builds Release, and runs `weft bench`:
# meshed against direct cross-node pod-to-pod traffic in a 2-node cluster of network namespaces with
# real agents. Needs root. Extra arguments go to `weft bench` (e.g. --seconds 10 --json bench.json).
set -euo pipefail
cd "$(dirname "$0")/.."
source tests/deps.sh
export DOTNET_CLI_TELEMETRY_OPTOUT=1 DOTNET_NOLOGO=1
dotnet build agent/Weft.Agent.csproj -c Release 2>&1 | tail -n 2
exec agent/bin/Release/net10.0/weft bench "$@"
