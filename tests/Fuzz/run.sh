#!/usr/bin/env bash
# Fuzzes one target of tests/Fuzz with AFL++ through SharpFuzz, then prints what the run found.
#
#   bash tests/Fuzz/run.sh TARGET SECONDS      e.g. bash tests/Fuzz/run.sh http2 120
#   bash tests/Fuzz/run.sh --list
#
# Targets: http2, hbone-request, inventory, policy, k8s-watch, ca-csr, ca-token, gateway-routes (weft-fuzz --help
# describes them).
# Installs what is missing (Debian's afl++, the SharpFuzz.CommandLine dotnet tool), publishes weft-fuzz
# afresh, instruments the agent (weft.dll) and the libraries that parse for it (YamlDotNet,
# KubernetesClient, Google.Protobuf), and runs afl-fuzz from the committed corpus and regressions. Output stays under
# $WEFT_FUZZ_OUT (default /tmp/weft-fuzz): findings/TARGET/default/{crashes,hangs,queue,fuzzer_stats}.
# A crash or hang found becomes a fix plus a file in tests/Fuzz/regressions/TARGET/, which the unit
# tests replay (FuzzRegressionTests); `weft-fuzz TARGET FILE` replays one by hand with the stack trace.
#
# Environment: WEFT_FUZZ_OUT; WEFT_FUZZ_EXECS (stop after about this many executions, even before SECONDS); WEFT_FUZZ_TIMEOUT_MS (an execution slower than this is a hang; default 5000, and
# 30000 for ca-csr, ca-token and gateway-routes: SharpFuzz starts the harness process afresh for the first input
# and after a crash or hang, that start counts against the input, and theirs (a CA, an in-memory API server,
# TLS Secrets) took more than 5 s on a loaded 2-core machine);
# WEFT_FUZZ_HEAP (default 0x20000000: the GC heap limit, past which an execution dies of OutOfMemory).
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
repo="$(cd "$here/../.." && pwd)"
targets="http2 hbone-request inventory policy k8s-watch ca-csr ca-token gateway-routes"
sharpfuzz_version=2.3.0

if [[ "${1:-}" == "--list" ]]; then
  echo "$targets"
  exit 0
fi
if [[ $# -ne 2 || ! " $targets " =~ " $1 " || ! "$2" =~ ^[0-9]+$ ]]; then
  echo "usage: bash tests/Fuzz/run.sh TARGET SECONDS   (targets: $targets)" >&2
  exit 2
fi
target="$1"
seconds="$2"
out="${WEFT_FUZZ_OUT:-/tmp/weft-fuzz}"
mkdir -p "$out"

if ! command -v afl-fuzz >/dev/null; then
  echo "installing afl++ (Debian package)"
  if [[ $(id -u) -ne 0 ]]; then
    echo "afl-fuzz is missing and installing it needs root: apt-get install afl++" >&2
    exit 1
  fi
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq afl++ >/dev/null
fi

tools="$out/tools"
if [[ ! -x "$tools/sharpfuzz" ]]; then
  echo "installing SharpFuzz.CommandLine $sharpfuzz_version into $tools"
  dotnet tool install SharpFuzz.CommandLine --version "$sharpfuzz_version" --tool-path "$tools" >/dev/null
fi

# A fresh publish every run: instrumentation rewrites the assemblies in place, and an incremental
# publish would keep an instrumented copy of stale code.
# One build per target, so targets can run side by side.
build="$out/build-$target"
rm -rf "$build"
echo "publishing weft-fuzz into $build"
dotnet publish "$repo/tests/Fuzz/Weft.Fuzz.csproj" -c Release -o "$build" -nologo -v quiet 2>&1 | grep -E " error |rror\(s\)" | grep -v " 0 Error" || true
[[ -x "$build/weft-fuzz" ]] || { echo "publish failed" >&2; exit 1; }
# Coverage comes from the agent and from the library that parses for the target (instrumenting
# KubernetesClient takes minutes, so only the target that reads through it pays for that).
case "$target" in
  inventory|policy|gateway-routes) instrumented="weft.dll YamlDotNet.dll" ;;
  ca-csr) instrumented="weft.dll Google.Protobuf.dll" ;;
  k8s-watch) instrumented="weft.dll KubernetesClient.dll" ;;
  *) instrumented="weft.dll" ;;
esac
for assembly in $instrumented; do
  echo "instrumenting $assembly"
  "$tools/sharpfuzz" "$build/$assembly" >/dev/null
done

# Seeds: the committed corpus and every regression input.
inputs="$out/inputs/$target"
rm -rf "$inputs"
mkdir -p "$inputs"
cp "$here/corpus/$target/"* "$inputs/"
if compgen -G "$here/regressions/$target/*" >/dev/null; then
  for f in "$here/regressions/$target/"*; do cp "$f" "$inputs/regression-$(basename "$f")"; done
fi

findings="$out/findings/$target"
rm -rf "$findings"
mkdir -p "$out/findings"
echo "fuzzing $target for ${seconds}s (output in $findings)"
# SKIP_BIN_CHECK: the instrumentation lives in the .NET assemblies, not in the apphost afl-fuzz inspects.
# MISSING_CRASHES / SKIP_CPUFREQ: this script never changes the machine's core_pattern or CPU governor.
export AFL_SKIP_BIN_CHECK=1 AFL_I_DONT_CARE_ABOUT_MISSING_CRASHES=1 AFL_SKIP_CPUFREQ=1 AFL_NO_UI=1 \
  AFL_NO_AFFINITY=1 AFL_TRY_AFFINITY=0 AFL_FORKSRV_INIT_TMOUT=60000
export DOTNET_GCHeapHardLimit="${WEFT_FUZZ_HEAP:-0x20000000}" DOTNET_TieredPGO=0
default_timeout_ms=5000
[[ " ca-csr ca-token gateway-routes " =~ " $target " ]] && default_timeout_ms=30000
execs=()
[[ -n "${WEFT_FUZZ_EXECS:-}" ]] && execs=(-E "$WEFT_FUZZ_EXECS")
# afl-fuzz's own peak_rss_mb stays 0 here: it reads getrusage of reaped children, and the harness is one long-lived
# process (SharpFuzz's persistent loop). So the harness's peak RSS (VmHWM) is sampled every 2 s while it runs.
peak_file="$out/peak-rss-$target"
echo 0 >"$peak_file"
(
  peak=0
  while sleep 2; do
    for pid in $(pgrep -f "^$build/weft-fuzz $target" || true); do
      hwm=$(awk '/^VmHWM:/ { print int($2 / 1024) }' "/proc/$pid/status" 2>/dev/null || echo 0)
      if [[ -n "$hwm" && "$hwm" -gt "$peak" ]]; then peak=$hwm; echo "$peak" >"$peak_file"; fi
    done
  done
) &
sampler=$!
trap 'kill "$sampler" 2>/dev/null || true' EXIT
afl-fuzz -i "$inputs" -o "$findings" -t "${WEFT_FUZZ_TIMEOUT_MS:-$default_timeout_ms}" -m none -V "$seconds" "${execs[@]}" \
  -- "$build/weft-fuzz" "$target" >"$out/afl-$target.log" 2>&1 || {
  echo "afl-fuzz failed; the end of its log ($out/afl-$target.log):" >&2
  tail -30 "$out/afl-$target.log" >&2
  exit 1
}

stats="$findings/default/fuzzer_stats"
value() { awk -F' *: *' -v k="$1" '$1 == k { print $2 }' "$stats"; }
crashes=$(value saved_crashes)
hangs=$(value saved_hangs)
echo "target $target: $(value execs_done) executions in $(value run_time)s ($(value execs_per_sec)/s), $(value corpus_count) paths ($(value corpus_found) new), $crashes crashes, $hangs hangs, harness peak RSS $(cat "$peak_file") MB (GC heap limit $((DOTNET_GCHeapHardLimit / 1048576)) MB)"
for kind in crashes hangs; do
  # A few examples; they are usually one bug found many ways.
  find "$findings/default/$kind" -name 'id:*' 2>/dev/null | sort | head -5 | while read -r f; do
    echo "  $kind: $f   (replay: $build/weft-fuzz $target '$f')"
  done
done
[[ "$crashes" == 0 && "$hangs" == 0 ]]
