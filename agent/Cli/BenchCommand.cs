using System.Diagnostics;
using System.Globalization;
using System.Runtime.InteropServices;
using System.Text.Json;
using System.Text.Json.Nodes;
using System.Text.RegularExpressions;
using Weft.Harness;

namespace Weft.Cli;

/// <summary>
/// <c>weft bench</c>: the meshed path against the direct path, cross node, in one netns cluster with a
/// real agent per node. Same nodes, same kind of pods, same tools; only enrollment differs.
/// <code>
///  node1                                    node2
///  client-mesh  ─► agent (connect4, 15001) ═══► agent (sk_lookup, 15006) ─► server-mesh
///  client-direct ─────────────────────────────────────────────────────────► server-direct
/// </code>
/// iperf3 (throughput), sockperf (1 KiB request/response latency), `weft app send` (new connections
/// per second) and `weft app hold` (agent RSS per idle open connection), checked against the targets
/// of issue #2. Everything runs inside the pods (ClusterPod.StartProcess), so capture applies to the
/// meshed client exactly as it would to an application.
/// </summary>
internal static partial class BenchCommand
{
    public const string Usage = """
        weft bench [--seconds T] [--repeat R] [--idle-connections N] [--rate-connections N] [--json FILE]
                   [--only throughput,latency,rate,memory] [--no-access-log]
          Measures cross-node pod-to-pod traffic through two agents against the same pods talking
          directly, in a 2-node cluster of network namespaces: iperf3 throughput (1 and 8 streams),
          sockperf 1 KiB round trips (p50/p99), new connections per second, agent memory per idle
          open connection. Prints a table with the targets of issue #2. Needs iperf3 and sockperf
          (agent/bench.sh installs them). Each traffic measurement runs R times (default 2) for each path,
          alternating direct and mesh; the table shows medians. T defaults to 5 s, N to 10000 idle and
          3000 new connections.
          --no-access-log starts the agents without their per-connection log line.
        """;

    private static readonly string[] Parts = ["throughput", "latency", "rate", "memory"];

    private const int IperfPort = 5201;
    private const int SockperfPort = 11111;
    private const int PeerPort = 8080;
    private const string Namespace = "bench";
    private static readonly TimeSpan Settle = TimeSpan.FromSeconds(2);

    // issue #2
    private const double ThroughputTarget = 0.60;
    private const double AddedP99TargetMs = 0.25;
    private const double KibPerIdleConnectionTarget = 4.0;

    public static async Task<int> RunAsync(CommandLine cl)
    {
        var seconds = cl.Int("seconds", 5);
        var repeat = cl.Int("repeat", 2);
        var idleConnections = cl.Int("idle-connections", 10_000);
        var rateConnections = cl.Int("rate-connections", 3000);
        var jsonPath = cl.Get("json");
        var noAccessLog = cl.Flag("no-access-log");
        var only = (cl.Get("only") ?? string.Join(',', Parts)).Split(',', StringSplitOptions.RemoveEmptyEntries | StringSplitOptions.TrimEntries).ToHashSet();
        if (only.Count == 0 || only.Except(Parts).FirstOrDefault() is { } unknownPart)
        {
            throw new UsageException($"--only takes a comma-separated list of {string.Join(", ", Parts)}");
        }
        cl.RejectUnknown();
        if (seconds < 1 || repeat < 1 || idleConnections < 1 || rateConnections < 1)
        {
            throw new UsageException("--seconds, --repeat, --idle-connections and --rate-connections must be at least 1");
        }

        foreach (var tool in new[] { "iperf3", "sockperf" })
        {
            if (!OnPath(tool))
            {
                Log.Error("bench", $"{tool} is not installed: run agent/bench.sh, or apt-get install iperf3 sockperf");
                return 1;
            }
        }

        // each idle connection costs two descriptors in each agent (pod side and upstream side); an
        // agent out of descriptors is not what this measures, so stay below the limit we can get
        var fdLimit = RaiseOpenFileLimit((ulong)idleConnections * 2 + FdHeadroom);
        var fitting = fdLimit < FdHeadroom + 200 ? 100 : (int)Math.Min(int.MaxValue, (fdLimit - FdHeadroom) / 2 / 100 * 100);
        if (idleConnections > fitting)
        {
            Log.Warn("bench", $"the open file limit is {fdLimit} and cannot be raised here (no CAP_SYS_RESOURCE?): " +
                $"holding {fitting} idle connections instead of {idleConnections}, as each costs an agent two descriptors");
            idleConnections = fitting;
        }

        using var stop = new CancellationTokenSource();
        void OnSignal(PosixSignalContext context)
        {
            // let the run unwind through its disposals, so agents, pins, namespaces and cgroups all go
            context.Cancel = true;
            Console.Error.WriteLine("weft bench: stopping, cleaning up");
            stop.Cancel();
        }

        using var interrupt = PosixSignalRegistration.Create(PosixSignal.SIGINT, OnSignal);
        using var term = PosixSignalRegistration.Create(PosixSignal.SIGTERM, OnSignal);

        foreach (var stale in NetnsCluster.CleanupStale())
        {
            // a run whose process died (kill -9) also left its agents' pins
            foreach (var pins in Directory.EnumerateDirectories("/sys/fs/bpf", $"weft-{stale}-*"))
            {
                Weft.Capture.BpfCapture.Uninstall(pins);
            }
        }

        var clock = Stopwatch.StartNew();
        var spec = new ClusterSpec(
            new NodeSpec("node1", new PodSpec(Namespace, "client-mesh"), new PodSpec(Namespace, "client-direct")),
            new NodeSpec("node2", new PodSpec(Namespace, "server-mesh"), new PodSpec(Namespace, "server-direct")))
        {
            // the signal handlers above unwind the run through MeshCluster's disposal, which also removes
            // the agents' pins; the cluster's own Ctrl-C teardown would race with it
            TeardownOnExit = false,
        };
        Say("building a 2-node cluster of network namespaces and starting an agent per node");
        string[] agentArgs = noAccessLog ? ["--no-access-log"] : [];
        await using var mesh = await MeshCluster.StartAsync(spec, c => c.InventoryYaml(new InventoryOptions
        {
            // the direct pair is not in the inventory at all: the agents neither capture nor know it
            Omit = [c.Pod(Namespace, "client-direct"), c.Pod(Namespace, "server-direct")],
        }), agentArgs);
        var bench = new Bench(mesh, seconds, repeat, !noAccessLog, stop.Token);
        try
        {
            var report = await bench.RunAsync(idleConnections, rateConnections, only);
            report["run"]!["elapsed_s"] = Math.Round(clock.Elapsed.TotalSeconds, 1);
            if (jsonPath != null)
            {
                await File.WriteAllTextAsync(jsonPath, report.ToJsonString(new JsonSerializerOptions { WriteIndented = true }) + "\n");
                Console.WriteLine($"\nfigures written to {jsonPath}");
            }

            Say($"done in {clock.Elapsed.TotalSeconds:0} s; tearing down");
            return bench.Failures == 0 ? 0 : 1;
        }
        catch (OperationCanceledException) when (stop.IsCancellationRequested)
        {
            Say("interrupted; tearing down");
            return 130;
        }
        catch (Exception e) when (bench.AgentsDied() is { Length: > 0 } died)
        {
            // a dead agent is the finding, not the exception it caused here
            Say($"an agent died during the run ({e.GetType().Name}: {e.Message.Split('\n')[0]})");
            Console.WriteLine(died);
            return 1;
        }
    }

    private sealed class Bench(MeshCluster mesh, int seconds, int repeat, bool accessLog, CancellationToken stop)
    {
        private readonly NetnsCluster cluster = mesh.Cluster;
        private readonly List<Row> rows = [];
        private readonly List<Row> memoryRows = [];

        public int Failures { get; private set; }

        /// <summary>Exit code and last stderr lines of every agent that is no longer running; empty when both run.</summary>
        public string AgentsDied() => string.Join('\n', new[] { Agent1, Agent2 }.Where(a => a.HasExited).Select(a =>
            $"  {a} exited with {a.ExitCode}; last stderr lines:\n    " + string.Join("\n    ", a.StderrLines.TakeLast(15))));

        private ClusterPod ClientMesh => cluster.Pod(Namespace, "client-mesh");

        private ClusterPod ClientDirect => cluster.Pod(Namespace, "client-direct");

        private ClusterPod ServerMesh => cluster.Pod(Namespace, "server-mesh");

        private ClusterPod ServerDirect => cluster.Pod(Namespace, "server-direct");

        private ManagedProcess Agent1 => mesh.Agent("node1");

        private ManagedProcess Agent2 => mesh.Agent("node2");

        public async Task<JsonObject> RunAsync(int idleConnections, int rateConnections, IReadOnlySet<string> only)
        {
            var loadBefore = LoadAverage();
            if (loadBefore > Environment.ProcessorCount)
            {
                Console.WriteLine($"  note: the machine is busy before the run (load average {loadBefore:0.0} on {Environment.ProcessorCount} CPUs): expect noisy figures");
            }

            foreach (var pod in cluster.Pods)
            {
                Console.WriteLine($"  {pod}{(pod.Name.EndsWith("-mesh", StringComparison.Ordinal) ? "  enrolled" : "  not in the inventory")}");
            }

            var fresh = new[] { ProcStatus.Read(Agent1.Pid), ProcStatus.Read(Agent2.Pid) };
            Console.WriteLine($"  agents: node1 pid {Agent1.Pid} ({fresh[0].Command}, {fresh[0].RssKib / 1024.0:0.0} MiB), node2 pid {Agent2.Pid} ({fresh[1].Command}, {fresh[1].RssKib / 1024.0:0.0} MiB)");

            Say("starting servers in server-mesh and server-direct: iperf3 :5201, sockperf :11111, weft app serve --mode echo :8080");
            foreach (var server in new[] { ServerMesh, ServerDirect })
            {
                server.StartProcess("iperf3", "-s", "-p", IperfPort.ToString(CultureInfo.InvariantCulture));
                server.StartProcess("sockperf", "sr", "--tcp", "-p", SockperfPort.ToString(CultureInfo.InvariantCulture));
                MeshCluster.StartServer(server, "--port", PeerPort.ToString(CultureInfo.InvariantCulture), "--mode", "echo");
            }

            foreach (var server in new[] { ServerMesh, ServerDirect })
            {
                foreach (var port in new[] { IperfPort, SockperfPort, PeerPort })
                {
                    await WaitForListenerAsync(server, port);
                }
            }

            // memory first: the agents have carried no traffic yet, so the heap grows for what is held, not into garbage of earlier runs
            var memory = only.Contains("memory") ? await MemoryAsync(fresh, idleConnections) : null;
            JsonObject? throughput = null;
            if (only.Contains("throughput"))
            {
                throughput = [];
                foreach (var streams in new[] { 1, 8 })
                {
                    throughput[$"streams_{streams}"] = await ThroughputAsync(streams);
                }
            }

            var latency = only.Contains("latency") ? await LatencyAsync() : null;
            var rate = only.Contains("rate") ? await ConnectionRateAsync(rateConnections) : null;

            var loadAfter = LoadAverage();
            PrintTable(loadBefore, loadAfter);
            return new JsonObject
            {
                ["run"] = new JsonObject
                {
                    ["date"] = DateTimeOffset.UtcNow.ToString("u", CultureInfo.InvariantCulture),
                    ["kernel"] = File.ReadAllText("/proc/sys/kernel/osrelease").Trim(),
                    ["cpus"] = Environment.ProcessorCount,
                    ["seconds"] = seconds,
                    ["repeat"] = repeat,
                    ["cluster"] = cluster.RunId,
                    ["load_average_1m_before"] = loadBefore,
                    ["load_average_1m_after"] = loadAfter,
                    ["agent_access_log"] = accessLog,
                },
                ["throughput"] = throughput,
                ["latency"] = latency,
                ["connection_rate"] = rate,
                ["memory"] = memory,
                ["verdicts"] = new JsonArray(rows.Concat(memoryRows).Where(r => r.Verdict != null)
                    .Select(r => (JsonNode)new JsonObject { ["metric"] = r.Metric, ["target"] = r.Target, ["verdict"] = r.Verdict }).ToArray()),
            };
        }

        private async Task<JsonObject> ThroughputAsync(int streams)
        {
            Say($"throughput, {streams} stream(s), {seconds} s each, {Runs}: iperf3 -c SERVER -P {streams}");
            var (direct, meshed, cpu) = await PairedAsync(
                () => IperfAsync(ClientDirect, ServerDirect, streams, viaAgents: false),
                () => IperfAsync(ClientMesh, ServerMesh, streams, viaAgents: true));
            var directGbps = Median(direct.Select(r => r.Gbps));
            var meshGbps = Median(meshed.Select(r => r.Gbps));
            var ratio = meshGbps / directGbps;
            Console.WriteLine($"  direct {Samples(direct.Select(r => r.Gbps))} Gbit/s ({direct.Sum(r => r.Retransmits)} retransmits), " +
                $"mesh {Samples(meshed.Select(r => r.Gbps))} Gbit/s ({meshed.Sum(r => r.Retransmits)} retransmits): median {ratio:P0} of direct");
            var gigabytes = meshed.Sum(r => r.Gbps) * seconds / 8;
            Console.WriteLine($"  agent CPU during the mesh runs: node1 {cpu.Node1:0.00} s, node2 {cpu.Node2:0.00} s in {meshed.Count * seconds} s " +
                $"({(cpu.Node1 + cpu.Node2) / gigabytes:0.00} CPU-s per GB through both)");
            rows.Add(new Row($"throughput, {streams} stream{(streams > 1 ? "s" : "")} (Gbit/s)", $"{directGbps:0.00}", $"{meshGbps:0.00}",
                $"{ratio:P0}", $">= {ThroughputTarget:P0}", Verdict(ratio >= ThroughputTarget)));
            return new JsonObject
            {
                ["direct_gbps"] = Round(directGbps, 3),
                ["mesh_gbps"] = Round(meshGbps, 3),
                ["ratio"] = Round(ratio, 3),
                ["direct_samples_gbps"] = Array(direct.Select(r => Round(r.Gbps, 3))),
                ["mesh_samples_gbps"] = Array(meshed.Select(r => Round(r.Gbps, 3))),
                ["direct_retransmits"] = direct.Sum(r => r.Retransmits),
                ["mesh_retransmits"] = meshed.Sum(r => r.Retransmits),
                ["agent_cpu_s"] = new JsonObject { ["node1"] = Round(cpu.Node1, 2), ["node2"] = Round(cpu.Node2, 2) },
                ["agent_cpu_s_per_gb"] = Round((cpu.Node1 + cpu.Node2) / gigabytes, 3),
            };
        }

        private async Task<Iperf> IperfAsync(ClusterPod client, ClusterPod server, int streams, bool viaAgents)
        {
            var flowsBefore = FlowCounts();
            var stdout = await RunToEndAsync(client, TimeSpan.FromSeconds(seconds + 30), "iperf3",
                ["-c", server.Address.ToString(), "-p", IperfPort.ToString(CultureInfo.InvariantCulture),
                "-t", seconds.ToString(CultureInfo.InvariantCulture), "-P", streams.ToString(CultureInfo.InvariantCulture), "-J"]);
            using var json = JsonDocument.Parse(stdout);
            var end = json.RootElement.GetProperty("end");
            var result = new Iperf(
                end.GetProperty("sum_received").GetProperty("bits_per_second").GetDouble() / 1e9,
                end.GetProperty("sum_sent").TryGetProperty("retransmits", out var r) ? r.GetInt64() : 0);
            await CheckPathAsync(flowsBefore, viaAgents, $"iperf3 {client.Name} -> {server.Name}");
            return result;
        }

        private async Task<JsonObject> LatencyAsync()
        {
            Say($"latency: 1 KiB request/response on one kept-alive connection, sockperf ping-pong, full round trip, {seconds} s each, {Runs}");
            var (directRuns, meshRuns, _) = await PairedAsync(
                () => SockperfAsync(ClientDirect, ServerDirect, viaAgents: false),
                () => SockperfAsync(ClientMesh, ServerMesh, viaAgents: true));
            var direct = Latency.Median(directRuns);
            var meshed = Latency.Median(meshRuns);
            var addedP50 = (meshed.P50 - direct.P50) / 1000;
            var addedP99 = (meshed.P99 - direct.P99) / 1000;
            Console.WriteLine($"  direct p50 {Samples(directRuns.Select(r => r.P50))} us, p99 {Samples(directRuns.Select(r => r.P99))} us ({directRuns.Sum(r => r.Observations)} round trips)");
            Console.WriteLine($"  mesh   p50 {Samples(meshRuns.Select(r => r.P50))} us, p99 {Samples(meshRuns.Select(r => r.P99))} us ({meshRuns.Sum(r => r.Observations)} round trips)");
            Console.WriteLine($"  added (medians): p50 {Added(addedP50)}, p99 {Added(addedP99)}");
            rows.Add(new Row("latency p50, sockperf 1 KiB RTT (us)", $"{direct.P50:0.0}", $"{meshed.P50:0.0}", Added(addedP50), "", null));
            rows.Add(new Row("latency p99, sockperf 1 KiB RTT (us)", $"{direct.P99:0.0}", $"{meshed.P99:0.0}", Added(addedP99),
                $"<= +{AddedP99TargetMs:0.00} ms", Verdict(addedP99 <= AddedP99TargetMs)));

            Say($"latency, second opinion: weft app rr (a .NET client, 1 KiB, 20000 round trips after 2000 warm-up), {Runs}");
            var (rrDirectRuns, rrMeshRuns, _) = await PairedAsync(() => RoundTripAsync(ClientDirect, ServerDirect), () => RoundTripAsync(ClientMesh, ServerMesh));
            var rrDirect = Latency.Median(rrDirectRuns);
            var rrMesh = Latency.Median(rrMeshRuns);
            Console.WriteLine($"  direct p50 {Samples(rrDirectRuns.Select(r => r.P50))} us, p99 {Samples(rrDirectRuns.Select(r => r.P99))} us");
            Console.WriteLine($"  mesh   p50 {Samples(rrMeshRuns.Select(r => r.P50))} us, p99 {Samples(rrMeshRuns.Select(r => r.P99))} us");
            rows.Add(new Row("latency p50, weft app rr 1 KiB (us)", $"{rrDirect.P50:0.0}", $"{rrMesh.P50:0.0}", Added((rrMesh.P50 - rrDirect.P50) / 1000), "", null));
            rows.Add(new Row("latency p99, weft app rr 1 KiB (us)", $"{rrDirect.P99:0.0}", $"{rrMesh.P99:0.0}", Added((rrMesh.P99 - rrDirect.P99) / 1000), "", null));
            return new JsonObject
            {
                ["sockperf_rtt_us"] = new JsonObject
                {
                    ["direct"] = direct.ToJson(),
                    ["mesh"] = meshed.ToJson(),
                    ["added_p50_ms"] = Round(addedP50, 4),
                    ["added_p99_ms"] = Round(addedP99, 4),
                    ["direct_runs"] = Array(directRuns.Select(r => r.ToJson())),
                    ["mesh_runs"] = Array(meshRuns.Select(r => r.ToJson())),
                },
                ["weft_app_rr_us"] = new JsonObject
                {
                    ["direct"] = rrDirect.ToJson(),
                    ["mesh"] = rrMesh.ToJson(),
                    ["direct_runs"] = Array(rrDirectRuns.Select(r => r.ToJson())),
                    ["mesh_runs"] = Array(rrMeshRuns.Select(r => r.ToJson())),
                },
            };
        }

        private async Task<Latency> SockperfAsync(ClusterPod client, ClusterPod server, bool viaAgents)
        {
            var flowsBefore = FlowCounts();
            var stdout = await RunToEndAsync(client, TimeSpan.FromSeconds(seconds + 30), "sockperf",
                ["pp", "--tcp", "-i", server.Address.ToString(), "-p", SockperfPort.ToString(CultureInfo.InvariantCulture),
                "-m", "1024", "-t", seconds.ToString(CultureInfo.InvariantCulture), "--full-rtt"]);
            var text = AnsiEscape().Replace(stdout, "");
            double Percentile(string name) =>
                Regex.Match(text, $@"percentile {Regex.Escape(name)} =\s*([0-9.]+)") is { Success: true } m
                    ? double.Parse(m.Groups[1].Value, CultureInfo.InvariantCulture)
                    : throw new InvalidOperationException($"sockperf printed no 'percentile {name}' line:\n{text}");
            var observations = Regex.Match(text, @"Total (\d+) observations") is { Success: true } o ? long.Parse(o.Groups[1].Value, CultureInfo.InvariantCulture) : 0;
            await CheckPathAsync(flowsBefore, viaAgents, $"sockperf {client.Name} -> {server.Name}");
            return new Latency(Percentile("50.000"), Percentile("99.000"), Percentile("99.900"), observations);
        }

        private async Task<Latency> RoundTripAsync(ClusterPod client, ClusterPod server)
        {
            var (file, args) = WeftExecutable.Command(["app", "rr", "--to", $"{server.Address}:{PeerPort}", "--size", "1024", "--count", "20000", "--warmup", "2000"]);
            var stdout = await RunToEndAsync(client, TimeSpan.FromSeconds(60), file, args);
            using var json = JsonDocument.Parse(stdout.Split('\n').Last(l => l.StartsWith('{')));
            var r = json.RootElement;
            return new Latency(r.GetProperty("p50_us").GetDouble(), r.GetProperty("p99_us").GetDouble(), null, r.GetProperty("count").GetInt64());
        }

        private async Task<JsonObject> ConnectionRateAsync(int connections)
        {
            Say($"new connections: {connections} x (connect, 64 B each way, close), 16 at a time, {Runs}: weft app send");
            var (direct, meshed, cpu) = await PairedAsync(
                () => ConnectionRunAsync(ClientDirect, ServerDirect, connections),
                () => ConnectionRunAsync(ClientMesh, ServerMesh, connections));
            var directRate = Median(direct.Select(r => r.PerSecond));
            var meshRate = Median(meshed.Select(r => r.PerSecond));
            var ratio = meshRate / directRate;
            var failed = (Direct: direct.Sum(r => r.Failed), Mesh: meshed.Sum(r => r.Failed));
            Console.WriteLine($"  direct {Samples(direct.Select(r => r.PerSecond), "0")} conn/s, mesh {Samples(meshed.Select(r => r.PerSecond), "0")} conn/s " +
                $"(median {ratio:P0} of direct); failed: direct {failed.Direct}, mesh {failed.Mesh}");
            Console.WriteLine($"  agent CPU during the mesh runs: node1 {cpu.Node1:0.00} s, node2 {cpu.Node2:0.00} s " +
                $"({(cpu.Node1 + cpu.Node2) * 1e6 / (connections * meshed.Count):0} CPU-us per connection through both)");
            rows.Add(new Row("new connections (conn/s)", $"{directRate:0}", $"{meshRate:0}", $"{ratio:P0}", "(none)", null));
            if (failed.Direct + failed.Mesh > 0)
            {
                Failures++;
                Console.WriteLine("  some connections failed: the figures above are not trustworthy");
            }

            return new JsonObject
            {
                ["connections"] = connections,
                ["direct_per_s"] = Round(directRate, 0),
                ["mesh_per_s"] = Round(meshRate, 0),
                ["ratio"] = Round(ratio, 3),
                ["direct_samples_per_s"] = Array(direct.Select(r => Round(r.PerSecond, 0))),
                ["mesh_samples_per_s"] = Array(meshed.Select(r => Round(r.PerSecond, 0))),
                ["direct_failed"] = failed.Direct,
                ["mesh_failed"] = failed.Mesh,
                ["agent_cpu_s"] = new JsonObject { ["node1"] = Round(cpu.Node1, 2), ["node2"] = Round(cpu.Node2, 2) },
                ["agent_cpu_us_per_connection"] = Round((cpu.Node1 + cpu.Node2) * 1e6 / (connections * meshed.Count), 0),
            };
        }

        private async Task<Connections> ConnectionRunAsync(ClusterPod client, ClusterPod server, int connections)
        {
            var (file, args) = WeftExecutable.Command(["app", "send", "--to", $"{server.Address}:{PeerPort}",
                "--connections", connections.ToString(CultureInfo.InvariantCulture), "--concurrency", "16",
                "--bytes", "64", "--expect-reply-bytes", "64"]);
            var stdout = await RunToEndAsync(client, TimeSpan.FromMinutes(2), file, args, allowFailure: true);
            var summaryLine = stdout.Split('\n').LastOrDefault(l => l.Contains("\"summary\"", StringComparison.Ordinal))
                ?? throw new InvalidOperationException($"weft app send printed no summary:\n{stdout[^Math.Min(stdout.Length, 2000)..]}");
            using var json = JsonDocument.Parse(summaryLine);
            var s = json.RootElement;
            var ok = s.GetProperty("ok").GetInt64();
            var elapsedMs = Math.Max(1, s.GetProperty("elapsed_ms").GetInt64());
            return new Connections(ok * 1000.0 / elapsedMs, s.GetProperty("failed").GetInt64());
        }

        private async Task<JsonObject> MemoryAsync(ProcStatus[] fresh, int connections)
        {
            Say($"agent memory: RSS idle, then with {connections} idle connections client-mesh -> server-mesh held open (weft app hold)");
            await Task.Delay(Settle, stop);
            var idle = new[] { ProcStatus.Read(Agent1.Pid), ProcStatus.Read(Agent2.Pid) };
            var (file, args) = WeftExecutable.Command(["app", "hold", "--to", $"{ServerMesh.Address}:{PeerPort}",
                "--connections", connections.ToString(CultureInfo.InvariantCulture), "--concurrency", "200", "--exchange-bytes", "1"]);
            await using var hold = ClientMesh.StartProcess(file, args, null);
            var openLine = await hold.WaitForStdoutLineAsync(l => l.Contains("\"open\"", StringComparison.Ordinal), TimeSpan.FromMinutes(2)).WaitAsync(stop);
            using var opened = JsonDocument.Parse(openLine);
            var open = opened.RootElement.GetProperty("open").GetInt32();
            Console.WriteLine($"  {open}/{connections} open (each echoed 1 byte through both agents) in {opened.RootElement.GetProperty("elapsed_ms").GetInt64()} ms{(open < connections ? "; errors: " + opened.RootElement.GetProperty("errors") : "")}");
            await Task.Delay(Settle, stop);
            var loaded = new[] { ProcStatus.Read(Agent1.Pid), ProcStatus.Read(Agent2.Pid) };

            hold.StandardInput.Close();
            await hold.WaitForExitAsync(TimeSpan.FromSeconds(30)).WaitAsync(stop);
            var summaryLine = hold.StdoutLines.LastOrDefault(l => l.Contains("\"summary\"", StringComparison.Ordinal)) ?? "{}";
            using var summary = JsonDocument.Parse(summaryLine);
            var closedByPeer = summary.RootElement.TryGetProperty("closed_by_peer", out var c) ? c.GetInt64() : -1;
            await Task.Delay(Settle, stop);
            var released = new[] { ProcStatus.Read(Agent1.Pid), ProcStatus.Read(Agent2.Pid) };
            if (open < connections || closedByPeer != 0)
            {
                Failures++;
                Console.WriteLine($"  not every connection stayed open (closed by the other side while held: {closedByPeer}): the per-connection figure is not trustworthy");
            }

            var result = new JsonObject { ["connections"] = connections, ["open"] = open, ["closed_by_peer_while_held"] = closedByPeer };
            for (var i = 0; i < 2; i++)
            {
                var node = $"node{i + 1}";
                var perConnection = (loaded[i].RssKib - idle[i].RssKib) / (double)Math.Max(open, 1);
                var anonPerConnection = (loaded[i].RssAnonKib - idle[i].RssAnonKib) / (double)Math.Max(open, 1);
                Console.WriteLine($"  {node} agent: RSS fresh {Mib(fresh[i].RssKib)}, idle {Mib(idle[i].RssKib)}, with {open} open {Mib(loaded[i].RssKib)} " +
                    $"({perConnection:0.00} KiB/conn; anonymous {anonPerConnection:0.00}), after release {Mib(released[i].RssKib)}; " +
                    $"fds {idle[i].Fds} -> {loaded[i].Fds}, threads {idle[i].Threads} -> {loaded[i].Threads}");
                memoryRows.Add(new Row($"{node} agent memory per idle conn (KiB)", "-", $"{perConnection:0.00}", $"RSS {Mib(idle[i].RssKib)} -> {Mib(loaded[i].RssKib)}",
                    $"<= {KibPerIdleConnectionTarget:0} KiB", Verdict(perConnection <= KibPerIdleConnectionTarget)));
                result[node] = new JsonObject
                {
                    ["rss_fresh_kib"] = fresh[i].RssKib,
                    ["rss_idle_kib"] = idle[i].RssKib,
                    ["rss_loaded_kib"] = loaded[i].RssKib,
                    ["rss_after_release_kib"] = released[i].RssKib,
                    ["rss_anon_idle_kib"] = idle[i].RssAnonKib,
                    ["rss_anon_loaded_kib"] = loaded[i].RssAnonKib,
                    ["kib_per_connection"] = Round(perConnection, 3),
                    ["fds_idle"] = idle[i].Fds,
                    ["fds_loaded"] = loaded[i].Fds,
                    ["threads_idle"] = idle[i].Threads,
                    ["threads_loaded"] = loaded[i].Threads,
                };
            }

            return result;
        }

        /// <summary>Runs one tool in a pod to completion and returns its stdout; a failure exit is an error unless allowed.</summary>
        private async Task<string> RunToEndAsync(ClusterPod pod, TimeSpan timeout, string file, IReadOnlyList<string> args, bool allowFailure = false)
        {
            await using var process = pod.StartProcess(file, args, null);
            var exit = await process.WaitForExitAsync(timeout).WaitAsync(stop);
            var stdout = process.Stdout;
            if (exit != 0 && !allowFailure)
            {
                throw new InvalidOperationException($"{process} exited with {exit}:\n{Tail(stdout)}\n{Tail(process.Stderr)}");
            }

            return stdout;
        }

        private string Runs => repeat == 1 ? "once" : $"{repeat} times each, alternating";

        /// <summary>
        /// Runs the direct and the meshed measurement <c>repeat</c> times each in ABBA order (direct, mesh,
        /// mesh, direct, ...), so a drift in what else the machine does weighs on both alike. Returns the
        /// samples and the agents' CPU time during the meshed runs.
        /// </summary>
        private async Task<(List<T> Direct, List<T> Mesh, (double Node1, double Node2) MeshCpu)> PairedAsync<T>(Func<Task<T>> direct, Func<Task<T>> meshed)
        {
            var directRuns = new List<T>();
            var meshRuns = new List<T>();
            var cpu = (Node1: 0.0, Node2: 0.0);
            async Task Mesh()
            {
                var (result, used) = await WithAgentCpuAsync(meshed);
                meshRuns.Add(result);
                cpu = (cpu.Node1 + used.Node1, cpu.Node2 + used.Node2);
            }

            for (var i = 0; i < repeat; i++)
            {
                if (i % 2 == 0)
                {
                    directRuns.Add(await direct());
                    await Mesh();
                }
                else
                {
                    await Mesh();
                    directRuns.Add(await direct());
                }
            }

            return (directRuns, meshRuns, cpu);
        }

        private async Task<(T Result, (double Node1, double Node2) Cpu)> WithAgentCpuAsync<T>(Func<Task<T>> run)
        {
            var before = (ProcStatus.CpuSeconds(Agent1.Pid), ProcStatus.CpuSeconds(Agent2.Pid));
            var result = await run();
            return (result, (ProcStatus.CpuSeconds(Agent1.Pid) - before.Item1, ProcStatus.CpuSeconds(Agent2.Pid) - before.Item2));
        }

        private (int Node1, int Node2) FlowCounts() => (MeshCluster.Flows(Agent1).Count, MeshCluster.Flows(Agent2).Count);

        /// <summary>
        /// The comparison is only worth something if the meshed run went through both agents and the
        /// direct run through neither: checked from the agents' access logs (flows are logged when a
        /// connection ends, so give the last one a moment).
        /// </summary>
        private async Task CheckPathAsync((int Node1, int Node2) before, bool viaAgents, string what)
        {
            if (!accessLog)
            {
                return;
            }

            var deadline = DateTime.UtcNow + TimeSpan.FromSeconds(viaAgents ? 3 : 0.3);
            (int, int) now;
            do
            {
                await Task.Delay(100, stop);
                now = FlowCounts();
            }
            while (viaAgents && (now.Item1 == before.Node1 || now.Item2 == before.Node2) && DateTime.UtcNow < deadline);

            var through = (now.Item1 > before.Node1, now.Item2 > before.Node2);
            if (through != (viaAgents, viaAgents))
            {
                Failures++;
                Console.WriteLine($"  WARNING: {what} went through node1's agent: {through.Item1}, node2's: {through.Item2}; expected {viaAgents} for both");
            }
        }

        private async Task WaitForListenerAsync(ClusterPod pod, int port)
        {
            var deadline = DateTime.UtcNow + TimeSpan.FromSeconds(20);
            while (true)
            {
                var listening = HostCommand.Run("nsenter", $"--net={pod.NetnsPath}", "--", "ss", "-Hltn", $"sport = :{port}");
                if (listening.Trim().Length > 0)
                {
                    return;
                }

                if (DateTime.UtcNow > deadline)
                {
                    throw new TimeoutException($"nothing listens on {pod}:{port} after 20 s");
                }

                await Task.Delay(100, stop);
            }
        }

        private void PrintTable(double loadBefore, double loadAfter)
        {
            Say($"results: cross-node pod to pod, {Environment.ProcessorCount} CPUs, Linux {File.ReadAllText("/proc/sys/kernel/osrelease").Trim()}, " +
                $"load average {loadBefore:0.0} before and {loadAfter:0.0} after");
            string[] header = ["metric", "direct", "mesh", "mesh vs direct", "target (#2)", ""];
            var table = rows.Concat(memoryRows).Select(r => new[] { r.Metric, r.Direct, r.Mesh, r.Comparison, r.Target, r.Verdict ?? "" }).Prepend(header).ToList();
            var widths = Enumerable.Range(0, header.Length).Select(i => table.Max(row => row[i].Length)).ToArray();
            foreach (var (row, index) in table.Select((r, i) => (r, i)))
            {
                Console.WriteLine("  " + string.Join("  ", row.Select((cell, i) => i is 1 or 2 ? cell.PadLeft(widths[i]) : cell.PadRight(widths[i]))).TrimEnd());
                if (index == 0)
                {
                    Console.WriteLine("  " + string.Join("  ", widths.Select(w => new string('-', w))).TrimEnd());
                }
            }
        }

        private static string? Verdict(bool pass) => pass ? "PASS" : "MISS";
    }

    private sealed record Row(string Metric, string Direct, string Mesh, string Comparison, string Target, string? Verdict);

    private sealed record Iperf(double Gbps, long Retransmits);

    private sealed record Connections(double PerSecond, long Failed);

    private sealed record Latency(double P50, double P99, double? P999, long Observations)
    {
        public JsonObject ToJson() => new()
        {
            ["p50"] = Round(P50, 1),
            ["p99"] = Round(P99, 1),
            ["p99_9"] = P999 is { } p ? Round(p, 1) : null,
            ["observations"] = Observations,
        };

        /// <summary>Percentile by percentile, the median over runs.</summary>
        public static Latency Median(IReadOnlyList<Latency> runs) => new(
            BenchCommand.Median(runs.Select(r => r.P50)),
            BenchCommand.Median(runs.Select(r => r.P99)),
            runs.All(r => r.P999.HasValue) ? BenchCommand.Median(runs.Select(r => r.P999!.Value)) : null,
            runs.Sum(r => r.Observations));
    }

    /// <summary>What /proc says about a process: memory as the kernel counts it, descriptors, threads, CPU.</summary>
    private sealed record ProcStatus(string Command, long RssKib, long RssAnonKib, int Threads, int Fds)
    {
        public static ProcStatus Read(int pid)
        {
            var fields = File.ReadAllLines($"/proc/{pid}/status")
                .Select(l => l.Split(':', 2))
                .Where(p => p.Length == 2)
                .ToDictionary(p => p[0], p => p[1].Trim());
            long Kib(string name) => long.Parse(fields[name].Split(' ')[0], CultureInfo.InvariantCulture);
            return new ProcStatus(fields["Name"], Kib("VmRSS"), Kib("RssAnon"), int.Parse(fields["Threads"], CultureInfo.InvariantCulture),
                Directory.GetFiles($"/proc/{pid}/fd").Length);
        }

        /// <summary>User plus system CPU time of the whole process (all threads) so far.</summary>
        public static double CpuSeconds(int pid)
        {
            var stat = File.ReadAllText($"/proc/{pid}/stat");
            var fields = stat[(stat.LastIndexOf(')') + 2)..].Split(' ');

            // fields after the command: state is [0], utime is field 14 of the whole line, so [11]; stime [12]
            var ticks = long.Parse(fields[11], CultureInfo.InvariantCulture) + long.Parse(fields[12], CultureInfo.InvariantCulture);
            return ticks / (double)ClockTicksPerSecond;
        }
    }

    // sysconf(_SC_CLK_TCK) is 100 on every Linux the agent targets (USER_HZ is fixed by the ABI)
    private const int ClockTicksPerSecond = 100;

    // descriptors an agent needs besides its proxied connections (listeners, pins, runtime), with room to spare
    private const ulong FdHeadroom = 400;

    /// <summary>Raises this process's open-file limit (children inherit it) towards <paramref name="wanted"/>; returns the limit now in force.</summary>
    private static ulong RaiseOpenFileLimit(ulong wanted)
    {
        if (GetRLimit(RlimitNoFile, out var limit) != 0)
        {
            return 1024;
        }

        if (limit.Current >= wanted)
        {
            return limit.Current;
        }

        // root may raise the hard limit too, given CAP_SYS_RESOURCE; otherwise settle for the hard limit
        var raised = new RLimit { Current = wanted, Maximum = Math.Max(wanted, limit.Maximum) };
        if (SetRLimit(RlimitNoFile, ref raised) == 0)
        {
            return wanted;
        }

        raised = new RLimit { Current = limit.Maximum, Maximum = limit.Maximum };
        return SetRLimit(RlimitNoFile, ref raised) == 0 ? limit.Maximum : limit.Current;
    }

    private const int RlimitNoFile = 7;

    [StructLayout(LayoutKind.Sequential)]
    private struct RLimit
    {
        public ulong Current;
        public ulong Maximum;
    }

    [LibraryImport("libc", EntryPoint = "getrlimit", SetLastError = true)]
    private static partial int GetRLimit(int resource, out RLimit limit);

    [LibraryImport("libc", EntryPoint = "setrlimit", SetLastError = true)]
    private static partial int SetRLimit(int resource, ref RLimit limit);

    private static bool OnPath(string tool) =>
        (Environment.GetEnvironmentVariable("PATH") ?? "").Split(':').Any(dir => dir.Length > 0 && File.Exists(Path.Join(dir, tool)));

    /// <summary>The 1-minute load average: other work on the machine shares the CPUs the benchmark measures.</summary>
    private static double LoadAverage() =>
        double.Parse(File.ReadAllText("/proc/loadavg").Split(' ')[0], CultureInfo.InvariantCulture);

    private static double Median(IEnumerable<double> values)
    {
        var sorted = values.Order().ToArray();
        return sorted.Length % 2 == 1 ? sorted[sorted.Length / 2] : (sorted[sorted.Length / 2 - 1] + sorted[sorted.Length / 2]) / 2;
    }

    private static string Samples(IEnumerable<double> values, string format = "0.00") =>
        string.Join(" / ", values.Select(v => v.ToString(format, CultureInfo.InvariantCulture)));

    private static JsonArray Array(IEnumerable<JsonNode?> values) => new(values.ToArray());

    private static JsonArray Array(IEnumerable<double> values) => new(values.Select(v => (JsonNode?)v).ToArray());

    private static double Round(double value, int digits) => Math.Round(value, digits);

    private static string Added(double ms) => ms.ToString("+0.000;-0.000", CultureInfo.InvariantCulture) + " ms";

    private static string Mib(long kib) => $"{kib / 1024.0:0.0} MiB";

    private static string Tail(string text) => text.Length <= 2000 ? text : "..." + text[^2000..];

    private static void Say(string text) => Console.WriteLine($"\n== {text}");

    [GeneratedRegex(@"\x1b\[[0-9;]*m")]
    private static partial Regex AnsiEscape();
}
