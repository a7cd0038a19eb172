using System.Globalization;
using System.Text.Json.Nodes;
using Weft.Cli;
using Weft.Harness;

namespace Weft.Bench;

internal static partial class BenchCommand
{
    /// <summary>One way of opening connections one at a time: a path, and whether its tunnel is destroyed before each connection.</summary>
    private sealed record SetupVariant(string Key, string Label, BenchPath Path, bool ColdTunnel);

    /// <summary>
    /// A run's connections, their times, and what the agents recorded meanwhile: node1's tunnel handshakes (with their
    /// durations), the time node1's agent waited for each connection's way through (a tunnel stream's 200, or a
    /// connect), the time node2's agent took to connect to the server app, and for the nginx pair how many TLS sessions node2's
    /// nginx saw resumed.
    /// </summary>
    private sealed record SetupRun(long Ok, long Failed, double[] Micros, int Handshakes, double[] HandshakeMs, double[] OutboundConnectMs,
        double[] InboundConnectMs, int? PeerResumed);

    /// <summary>
    /// The client loop, in bash so that no process starts between the two clock reads: connect, send 64
    /// bytes, read the 64-byte echo, close, one connection at a time. Before every connection (outside
    /// the timing) `ss -K` destroys, inside the client pod's netns, the TCP sockets to the server's
    /// port KILL_PORT: 15008 destroys the pooled HBONE tunnel (its client end lives in the source pod's
    /// netns), so the agent must dial and handshake again; any other port destroys nothing but keeps
    /// the pace of the loop the same for every variant.
    /// </summary>
    private const string SetupScript = """
        host=$1 port=$2 n=$3 kill_port=$4 tunnel_to=$5
        payload=$(printf '%064d' 0)
        ok=0 failed=0 times=
        for ((i = 0; i < n; i++)); do
          ss -K -tn dst "$tunnel_to" dport = ":$kill_port" >/dev/null 2>&1
          sleep 0.02
          t0=${EPOCHREALTIME//[!0-9]/}
          if exec 3<>"/dev/tcp/$host/$port"; then
            if printf '%s' "$payload" >&3 && read -r -t 5 -N 64 -u 3 reply && [ ${#reply} -eq 64 ]; then
              exec 3>&-
              t1=${EPOCHREALTIME//[!0-9]/}
              ok=$((ok + 1))
              times+="$((t1 - t0)) "
              continue
            fi
            exec 3>&-
          fi
          failed=$((failed + 1))
        done
        echo "ok $ok failed $failed"
        echo "us $times"
        """;

    private sealed partial class Bench
    {
        private async Task<JsonObject> ConnectionSetupAsync(int connections)
        {
            Say($"connection setup, one at a time: {connections} x (connect, 64 B each way, close) per run, {Runs}; " +
                "for mTLS once with the pooled tunnel and once with the tunnel destroyed (ss -K) before every connection");
            var variants = _paths.Select(p => new SetupVariant(p.Key, p.Label, p, ColdTunnel: false)).ToList();
            if (Path("mtls") is { } mtlsPath)
            {
                variants.Insert(variants.FindIndex(v => v.Key == "mtls") + 1, new SetupVariant("mtls_cold", "mTLS, cold tunnel", mtlsPath, ColdTunnel: true));
            }

            var runs = await AlternatingAsync(variants, v => SetupRunAsync(v, connections), pathOf: v => v.Path);
            var direct = runs.First(r => r.Key.Key == "direct");
            var directRate = Rate(direct.Value);
            var pooled = new Dictionary<string, string>();
            var cold = new Dictionary<string, string>();
            var result = new JsonObject { ["connections_per_run"] = connections };
            foreach (var (variant, samples) in runs)
            {
                var micros = samples.SelectMany(s => s.Micros).Order().ToArray();
                var rate = Rate(samples);
                var ratio = rate / directRate;
                var failed = samples.Sum(s => s.Failed);
                var handshakes = samples.Sum(s => s.Handshakes);
                var handshakeMs = samples.SelectMany(s => s.HandshakeMs).Order().ToArray();
                var ok = samples.Sum(s => s.Ok);
                var p50 = micros.Length > 0 ? Percentile(micros, 0.50) : double.NaN;
                var p99 = micros.Length > 0 ? Percentile(micros, 0.99) : double.NaN;
                Console.WriteLine($"  {variant.Label,-18} {rate,6:0} conn/s ({ratio:P0} of direct); per connection p50 {p50:0} us, p99 {p99:0} us; " +
                    $"{ok} ok, {failed} failed" + (variant.Path.Key == "mtls" && accessLog ? $"; {handshakes} new tunnels on node1" +
                    (handshakeMs.Length > 0 ? $", tunnel dial (TCP, TLS, HTTP/2) p50 {Percentile(handshakeMs, 0.5):0.00} ms, p99 {Percentile(handshakeMs, 0.99):0.00} ms (agent's record)" : "") : ""));
                if (samples.Any(s => s.PeerResumed is not null))
                {
                    // nginx reuses the TLS session to its upstream by default (proxy_ssl_session_reuse on): a resumed
                    // handshake skips both certificates' signatures and checks.
                    Console.WriteLine($"  {"",-18} node2's nginx: {samples.Sum(s => s.PeerResumed ?? 0)} of {ok} TLS sessions resumed");
                }

                var outboundMs = samples.SelectMany(s => s.OutboundConnectMs).Order().ToArray();
                var inboundMs = samples.SelectMany(s => s.InboundConnectMs).Order().ToArray();
                if (outboundMs.Length > 0 && inboundMs.Length > 0)
                {
                    // Where a connection's time goes in the agents: node1 waits for its way through (for a tunnel, the
                    // stream's 200, which includes node2's connect to the app), node2 connects to the app.
                    Console.WriteLine($"  {"",-18} node1's wait for the way through p50 {Percentile(outboundMs, 0.5):0.000} ms, " +
                        $"node2's connect to the app p50 {Percentile(inboundMs, 0.5):0.000} ms (agents' records)");
                }

                var cell = variant.Key == "direct" ? $"{rate:0}" : $"{rate:0} ({ratio:P0})";
                (variant.ColdTunnel ? cold : pooled)[variant.Path.Key] = cell;
                result[variant.Key] = new JsonObject
                {
                    ["per_s"] = Round(rate, 0),
                    ["ratio_to_direct"] = Round(ratio, 3),
                    ["p50_us"] = Round(p50, 0),
                    ["p99_us"] = Round(p99, 0),
                    ["samples_per_s"] = Array(samples.Select(s => Round(Rate([s]), 0))),
                    ["ok"] = ok,
                    ["failed"] = failed,
                    ["tunnel_handshakes"] = variant.Path.Key == "mtls" && accessLog ? handshakes : null,
                    ["tunnel_handshake_ms_p50"] = handshakeMs.Length > 0 ? Round(Percentile(handshakeMs, 0.5), 3) : null,
                    ["tunnel_handshake_ms_p99"] = handshakeMs.Length > 0 ? Round(Percentile(handshakeMs, 0.99), 3) : null,
                    ["node1_connect_ms_p50"] = outboundMs.Length > 0 ? Round(Percentile(outboundMs, 0.5), 3) : null,
                    ["node2_connect_ms_p50"] = inboundMs.Length > 0 ? Round(Percentile(inboundMs, 0.5), 3) : null,
                    ["peer_sessions_resumed"] = samples.Any(s => s.PeerResumed is not null) ? samples.Sum(s => s.PeerResumed ?? 0) : null,
                };
                if (failed > 0)
                {
                    Failures++;
                    Console.WriteLine($"  some connections of '{variant.Label}' failed: its figure is not trustworthy");
                }

                if (accessLog && variant.Path.Key == "mtls" && (variant.ColdTunnel ? handshakes < ok * 0.95 : handshakes > samples.Count))
                {
                    Failures++;
                    Console.WriteLine($"  WARNING: '{variant.Label}' made {handshakes} tunnel handshakes for {ok} connections: " +
                        (variant.ColdTunnel ? "the tunnels were not cold" : "the pooled tunnel was not reused"));
                }
            }

            _rows.Add(new TableRow("new conn/s, one at a time (mTLS: pooled tunnel)", pooled));
            _rows.Add(new TableRow("new conn/s, one at a time (mTLS: cold tunnel each)", cold));
            return result;
        }

        /// <summary>The <c>connect_ms</c> of the flow records of one direction, sorted.</summary>
        private static double[] ConnectMs(IEnumerable<string> lines, string direction) =>
            lines.Where(l => l.Contains($"\"direction\":\"{direction}\"", StringComparison.Ordinal))
                .Select(l => JsonNode.Parse(l)?["connect_ms"]?.GetValue<double>())
                .OfType<double>().Order().ToArray();

        /// <summary>Connections per second one at a time: the reciprocal of the mean time per connection.</summary>
        private static double Rate(IEnumerable<SetupRun> runs)
        {
            var micros = runs.SelectMany(r => r.Micros).ToArray();
            return micros.Length == 0 ? 0 : 1e6 / micros.Average();
        }

        private static double Percentile(double[] sorted, double fraction) =>
            sorted[Math.Clamp((int)Math.Ceiling(fraction * sorted.Length) - 1, 0, sorted.Length - 1)];

        private async Task<SetupRun> SetupRunAsync(SetupVariant variant, int connections)
        {
            var path = variant.Path;
            var before = Snapshot(path);
            var (host, port) = path.Target(PeerPort);
            var stdout = await RunToEndAsync(path.Client, TimeSpan.FromSeconds(30 + connections * 0.2), "bash",
                ["-c", SetupScript, "weft-bench-connect", host, port.ToString(CultureInfo.InvariantCulture),
                connections.ToString(CultureInfo.InvariantCulture), variant.ColdTunnel ? "15008" : "9", path.Server.Address.ToString()]);
            var lines = stdout.Split('\n');
            var counts = (lines.FirstOrDefault(l => l.StartsWith("ok ", StringComparison.Ordinal))
                ?? throw new InvalidOperationException($"the connect loop printed no summary:\n{Tail(stdout)}")).Split(' ');
            var micros = (lines.FirstOrDefault(l => l.StartsWith("us", StringComparison.Ordinal)) ?? "us").Split(' ', StringSplitOptions.RemoveEmptyEntries)
                .Skip(1).Select(t => double.Parse(t, CultureInfo.InvariantCulture)).ToArray();
            await CheckPathAsync(path, before, $"the connect loop over the {path.Label} path");
            var resumed = path.Peer?.BackLog().Skip(before.PeerLines).Count(l => l.EndsWith(" r", StringComparison.Ordinal));
            var node1 = path.Cluster.Agent("node1").StdoutLines.Where(l => l.StartsWith('{')).Skip(before.Node1Flows).ToList();
            var handshakes = node1.Where(IsOutboundHandshake)
                .Select(l => JsonNode.Parse(l)?["tls_handshake_ms"]?.GetValue<double>() ?? 0).ToArray();
            return new SetupRun(long.Parse(counts[1], CultureInfo.InvariantCulture), long.Parse(counts[3], CultureInfo.InvariantCulture), micros,
                handshakes.Length, handshakes,
                ConnectMs(node1, "outbound"),
                ConnectMs(path.Cluster.Agent("node2").StdoutLines.Where(l => l.StartsWith('{')).Skip(before.Node2Flows), "inbound"),
                resumed);
        }
    }
}
