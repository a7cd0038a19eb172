#!/usr/bin/env bash
# Installs what is missing (iperf3, sockperf, nginx with its stream module, wrk, h2load), builds Release, and runs `weft-bench`
# (tests/Bench, never shipped with the agent):
# direct, plaintext-agent, mTLS-agent and nginx-TLS cross-node pod-to-pod traffic in 2-node clusters of network namespaces with
# real agents. Needs root. Extra arguments go to `weft-bench`: --suite tls (default), plaintext, metrics, all or gateway,
# e.g. --suite all --json bench.json (docs/benchmark.md says what each suite measures).
set -euo pipefail
cd "$(dirname "$0")/.."
source tests/deps.sh
export DOTNET_CLI_TELEMETRY_OPTOUT=1 DOTNET_NOLOGO=1
dotnet build tests/Bench/Weft.Bench.csproj -c Release -nologo -v quiet
# the agents run the image's build of the agent (NativeAOT); WEFT_AGENT_EXECUTABLE= runs this build's weft.dll instead
source tests/agent-aot.sh
exec tests/Bench/bin/Release/net10.0/weft-bench "$@"
