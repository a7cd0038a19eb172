# Sourced by tests/run.sh and agent/bench.sh: publishes the node agent as daemonset/Dockerfile ships it (NativeAOT,
# -p:WeftEdge=false: without the gateway and the CA service) and names it in WEFT_AGENT_EXECUTABLE, so that every
# agent the tests or the benchmark start is that binary. A caller who set WEFT_AGENT_EXECUTABLE keeps it; set and
# empty, the agents run this build's weft.dll (JIT) and nothing is published.
if [ -z "${WEFT_AGENT_EXECUTABLE+set}" ]; then
  echo "weft: publishing the NativeAOT agent (agent/bin/weft-agent/weft; WEFT_AGENT_EXECUTABLE= skips it)" >&2
  dotnet publish agent/Weft.Agent.csproj -c Release -r linux-x64 -p:PublishAot=true -p:WeftEdge=false -nologo -v quiet \
    -o agent/bin/weft-agent
  export WEFT_AGENT_EXECUTABLE=$PWD/agent/bin/weft-agent/weft
fi
