#!/usr/bin/env bash
# Installs what Weft needs on a fresh Debian or Ubuntu machine (run as root) and prepares the kernel
# side: bpffs mounted, cgroup v2 present. Sourced by agent/demo.sh and tests/run.sh; safe to re-run.
set -euo pipefail

need=()
have_cmd() { command -v "$1" >/dev/null 2>&1; }
have_cmd clang || need+=(clang)
have_cmd llc || need+=(llvm)
# the NativeAOT publish of the agent (tests/run.sh, daemonset/Dockerfile) links with clang and zlib
[ -f /usr/include/zlib.h ] || need+=(zlib1g-dev)
have_cmd ip || need+=(iproute2)
have_cmd bpftool || need+=(bpftool)
have_cmd tcpdump || need+=(tcpdump)
# tests/EndToEnd/NetworkFaultTests drops packets on the test cluster's underlay with nftables
have_cmd nft || need+=(nftables)
# ... and delays and reorders them with an NFQUEUE rule (iptables-legacy) and libnetfilter_queue (no sch_netem here)
have_cmd iptables-legacy || need+=(iptables)
ldconfig -p | grep -q 'libnetfilter_queue.so.1 ' || need+=(libnetfilter-queue1)
have_cmd iperf3 || need+=(iperf3)
have_cmd sockperf || need+=(sockperf)
have_cmd prometheus && have_cmd promtool || need+=(prometheus)
have_cmd curl || need+=(curl)
# weft bench --suite gateway: HTTP/1.1 load with wrk, HTTP/2 load with h2load
have_cmd wrk || need+=(wrk)
have_cmd h2load || need+=(nghttp2-client)
# nginx with its stream module: the TLS peer `weft bench` compares the mTLS tunnels with
have_cmd nginx || [ -x /usr/sbin/nginx ] || need+=(nginx)
[ -f /usr/lib/nginx/modules/ngx_stream_module.so ] || need+=(libnginx-mod-stream)
[ -f /usr/include/bpf/bpf_helpers.h ] || need+=(libbpf-dev)
ldconfig -p | grep -q 'libbpf.so.1 ' || need+=(libbpf1)
[ -x /usr/bin/python3 ] && /usr/bin/python3 -c 'import h2' 2>/dev/null || need+=(python3-h2)
# tests/Ca: an independent gRPC client of the CA (python3-grpcio, stubs from protoc and its gRPC Python plugin)
[ -x /usr/bin/python3 ] && /usr/bin/python3 -c 'import grpc, google.protobuf' 2>/dev/null || need+=(python3-grpcio python3-protobuf)
have_cmd protoc || need+=(protobuf-compiler)
have_cmd grpc_python_plugin || need+=(protobuf-compiler-grpc)
[ -f /usr/include/google/protobuf/struct.proto ] || need+=(libprotobuf-dev)
# tests/Daemonset validates the Kubernetes manifests offline with a Node.js script (npm ci on first use).
have_cmd node || need+=(nodejs)
have_cmd npm || need+=(npm)

if [ ${#need[@]} -gt 0 ]; then
  echo "weft: installing ${need[*]}" >&2
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  # a package's service (nginx) must not start on the machine itself: the bench starts its own
  # nginx inside the namespaces. Without a policy-rc.d, refuse service starts for this install only.
  policy_added=
  if [ ! -e /usr/sbin/policy-rc.d ]; then
    printf '#!/bin/sh\nexit 101\n' >/usr/sbin/policy-rc.d && chmod +x /usr/sbin/policy-rc.d && policy_added=1
  fi
  apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
  [ -z "$policy_added" ] || rm -f /usr/sbin/policy-rc.d
fi

if ! have_cmd dotnet; then
  echo "weft: the .NET 10 SDK is required (dotnet on PATH)" >&2
  exit 1
fi

# bpffs is not always mounted at boot; the agent pins its programs and maps there.
if ! grep -qs ' /sys/fs/bpf bpf ' /proc/self/mountinfo; then
  mount -t bpf bpf /sys/fs/bpf
fi

if ! grep -qs ' - cgroup2 ' /proc/self/mountinfo; then
  echo "weft: no cgroup v2 hierarchy is mounted; the capture programs attach to a cgroup v2" >&2
  exit 1
fi
