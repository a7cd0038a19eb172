#!/usr/bin/env bash
# Installs what is missing, builds, and runs the demo (`weft-kit demo`, from the test kit in tests/Kit,
# which never ships with the agent): a 2-node cluster of network namespaces with real agents and traffic
# between pods. Needs root. Extra arguments go to the demo (e.g. --keep).
set -euo pipefail
cd "$(dirname "$0")/.."
source tests/deps.sh
export DOTNET_CLI_TELEMETRY_OPTOUT=1 DOTNET_NOLOGO=1
dotnet build tests/Kit/Weft.Kit.csproj -c Release -nologo -v quiet
exec tests/Kit/bin/Release/net10.0/weft-kit demo "$@"
