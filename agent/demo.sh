#!/usr/bin/env bash
# Installs what is missing, builds, and runs `weft demo`: a 2-node cluster of network namespaces with
# real agents and traffic between pods. Needs root. Extra arguments go to `weft demo` (e.g. --keep).
set -euo pipefail
cd "$(dirname "$0")/.."
source tests/deps.sh
export DOTNET_CLI_TELEMETRY_OPTOUT=1 DOTNET_NOLOGO=1
dotnet build agent/Weft.Agent.csproj -c Release -nologo -v quiet
exec agent/bin/Release/net10.0/weft demo "$@"
