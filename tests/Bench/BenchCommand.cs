using System.Diagnostics;
using System.Globalization;
using System.Runtime.InteropServices;
using System.Text.Json;
using System.Text.Json.Nodes;
using Weft.Cli;
using Weft.Harness;

namespace Weft.Bench;

/// <summary>
/// <c>weft-bench</c>: cross-node pod-to-pod traffic along several paths, in one run, with real agents.
/// <code>
///  plaintext cluster (agents without a CA)
///   node1                                        node2
///   client-mesh   ─► agent (connect4, 15001) ═══► agent (sk_lookup, 15006) ─► server-mesh      "plaintext"
///   client-direct ─────────────────────────────────────────────────────────► server-direct    "direct"
///   client-direct ─► nginx :2xxxx ══TLS 1.3══► nginx :3xxxx ────────────────► server-direct    "nginx" (issue #3's peer)
///  mTLS cluster (agents with a CA)
///   client-mesh   ─► agent (connect4, 15001) ══HBONE, mTLS, :15008══► agent ─► server-mesh      "mTLS"
/// </code>
/// iperf3 (throughput), sockperf (1 KiB request/response latency), `weft-kit app send` (new connections
/// per second), a shell loop (one connection at a time, with warm or cold tunnels) and `weft-kit app hold`
/// (agent RSS per idle open connection), checked against the targets of issues #2 and #3. Clients
/// and servers run inside the pods (ClusterPod.StartProcess), so capture applies to the meshed
/// clients exactly as it would to an application.
/// </summary>
internal static partial class BenchCommand
{
    public const string Usage = """
        weft-bench [--suite plaintext|tls|metrics|all|scale|soak|load|ca] [--seconds T] [--repeat R] [--only PARTS] [--json FILE]
                   [--rate-connections N] [--setup-connections N] [--idle-connections N] [--warmup W] [--no-access-log]
          Cross-node pod-to-pod traffic in 2-node clusters of network namespaces with real agents:
          direct, through plaintext agents, and (tls, all) through agents with mTLS HBONE tunnels and
          through an nginx pair doing TLS 1.3 between the nodes. iperf3 throughput (1 and 8 streams),
          sockperf 1 KiB round trips (p50/p99), new connections per second (16 at a time; and one at a
          time with pooled and with cold tunnels), agent memory per idle open connection (plaintext, all),
          and the relays' CPU at a fixed 1,000 requests/s of 1 KiB over 100 kept-alive connections (cpu).
          Prints one table with ratios against direct and the suite's targets.
          --suite    tls (default): direct, plaintext, mTLS, nginx; parts throughput,latency,rate,setup,cpu
                     plaintext: direct, plaintext; parts throughput,latency,rate,memory (plus weft-kit app rr)
                     metrics: direct, plaintext agents with metrics on (scraped every second) and
                       plaintext agents started with --metrics off; parts throughput,latency; R = 4
                       (issue #5: metrics on and off less than 3 % apart)
                     all: every path and every part (not the metrics-off agents)
          --only     a comma-separated subset of throughput,latency,rate,setup,memory,cpu
          Each measurement runs R times (default 2) per path, alternating the order of the paths
          (forward, backward, ...); the table shows medians. T defaults to 4 s (plaintext: 5 s); N to
          1000 new connections (plaintext: 3000), 100 one-at-a-time connections, 10000 idle connections.
          --warmup   seconds of untimed load per path before the cpu part's timed runs (default W = 1)
          --no-access-log starts the agents without their per-connection log line (the path checks
          and the cold-tunnel handshake count need it).
          Needs iperf3, sockperf and, for the nginx peer, nginx with its stream module (agent/bench.sh
          installs them).
        """;

    private static readonly string[] Parts = ["throughput", "latency", "rate", "setup", "memory", "cpu"];

    // the cpu part: Istio publishes 0.06 vCPU per 1,000 requests/s for ztunnel (issue #10 aims at most that)
    private const int FixedRatePerSecond = 1000;
    private const int FixedRateConnections = 100;
    private const double VcpuPerThousandTarget = 0.06;

    private const int IperfPort = 5201;
    private const int SockperfPort = 11111;
    private const int PeerPort = 8080;
    private const string Namespace = "bench";
    private static readonly TimeSpan Settle = TimeSpan.FromSeconds(2);

    // the plaintext suite's targets (issue #2: plaintext through the agents)
    private const double ThroughputTarget = 0.60;
    private const double AddedP99TargetMs = 0.25;
    private const double KibPerIdleConnectionTarget = 4.0;

    // the tls suite's targets (issue #3: mTLS through the agents)
    private const double MtlsThroughputTarget = 0.40;
    private const double MtlsAddedP99TargetMs = 0.30;

    public static async Task<int> RunAsync(CommandLine cl)
    {
        var suite = cl.Get("suite") ?? "tls";
        if (suite == "scale")
        {
            return await ScaleBenchmark.RunAsync(cl);
        }

        if (suite == "soak")
        {
            return await SoakBenchmark.RunAsync(cl);
        }

        if (suite == "load")
        {
            return await LoadAsync(cl);
        }

        if (suite == "ca")
        {
            return await CaBenchmark.RunAsync(cl);
        }

        if (suite == "gateway")
        {
            return await GatewayBenchmark.RunAsync(cl);
        }

        if (suite == "idle")
        {
            return await IdleBenchmark.RunAsync(cl);
        }

        if (suite is not ("plaintext" or "tls" or "metrics" or "all"))
        {
            throw new UsageException($"--suite takes plaintext, tls, metrics, all, scale, soak, load, ca, gateway or idle (the suites once called issue2 and issue3 are plaintext and tls), got '{suite}'");
        }

        // tls measures four paths where plaintext measures two: shorter runs keep the default under ~4 minutes
        var seconds = cl.Int("seconds", suite == "plaintext" ? 5 : 4);
        // metrics on and off differ by little: more alternations (A B C, C B A, ...) against the machine's drift
        var repeat = cl.Int("repeat", suite == "metrics" ? 4 : 2);
        var idleConnections = cl.Int("idle-connections", 10_000);
        var rateConnections = cl.Int("rate-connections", suite == "plaintext" ? 3000 : 1000);
        var setupConnections = cl.Int("setup-connections", 100);
        var warmup = cl.Int("warmup", 1);
        var jsonPath = cl.Get("json");
        var noAccessLog = cl.Flag("no-access-log");
        var defaultParts = suite switch
        {
            "plaintext" => "throughput,latency,rate,memory",
            "tls" => "throughput,latency,rate,setup,cpu",
            "metrics" => "throughput,latency",
            _ => string.Join(',', Parts),
        };
        var only = (cl.Get("only") ?? defaultParts).Split(',', StringSplitOptions.RemoveEmptyEntries | StringSplitOptions.TrimEntries).ToHashSet();
        if (only.Count == 0 || only.Except(Parts).Any())
        {
            throw new UsageException($"--only takes a comma-separated list of {string.Join(", ", Parts)}");
        }

        cl.RejectUnknown();
        if (seconds < 1 || repeat < 1 || warmup < 1 || idleConnections < 1 || rateConnections < 1 || setupConnections < 1)
        {
            throw new UsageException("--seconds, --repeat, --warmup and the connection counts must be at least 1");
        }

        var tls = suite is "tls" or "all";
        foreach (var tool in new[] { "iperf3", "sockperf", "ss", "bash" })
        {
            if (!OnPath(tool))
            {
                Log.Error("bench", $"{tool} is not installed: run agent/bench.sh, or apt-get install iperf3 sockperf iproute2 bash");
                return 1;
            }
        }

        if (tls && BenchNginxPeer.Missing() is { } missing)
        {
            Log.Error("bench", missing);
            return 1;
        }

        if (only.Contains("memory"))
        {
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
        }

        using var stop = new BenchInterrupt("stopping, cleaning up");

        // runs whose process died (kill -9): their processes, pins, namespaces and cgroups
        NetnsCluster.CleanupStale();

        var clock = Stopwatch.StartNew();
        // The memory part holds every idle connection from one client pod: the inbound limits that stop a
        // hostile pod (per source address L/16 of the descriptor limit, per identity L/8, per node L/2)
        // would refuse most of them, so the bench's agents allow what it holds.
        var inbound = (idleConnections + 1000).ToString(CultureInfo.InvariantCulture);
        string[] agentArgs = [.. noAccessLog ? ["--no-access-log"] : System.Array.Empty<string>(),
            "--max-inbound-per-address", inbound, "--max-inbound-per-identity", inbound, "--max-inbound-per-node", inbound];

        // the signal handlers above unwind the run through MeshCluster's disposal (agents, pins,
        // namespaces, cgroups); the clusters need no signal handlers of their own
        var plainSpec = new ClusterSpec(
            new NodeSpec("node1", new PodSpec(Namespace, "client-mesh"), new PodSpec(Namespace, "client-direct")),
            new NodeSpec("node2", new PodSpec(Namespace, "server-mesh"), new PodSpec(Namespace, "server-direct")))
        {
            TeardownOnExit = false,
        };
        Say("building a 2-node cluster of network namespaces with plaintext agents (no CA)");
        await using var plain = await MeshCluster.StartAsync(plainSpec, c => c.InventoryYaml(new InventoryOptions
        {
            // the direct pair is not in the inventory at all: the agents neither capture nor know it
            Omit = [c.Pod(Namespace, "client-direct"), c.Pod(Namespace, "server-direct")],
        }), agentArgs);

        // A second cluster, its agents given a CA: meshed traffic between its nodes rides mTLS HBONE
        // tunnels. Both clusters live side by side so the paths can alternate within one run.
        MeshCluster? mtls = null;
        MeshCluster? metricsOff = null;
        try
        {
            // a start is never abandoned half-way (WaitAsync would leave a cluster nobody disposes):
            // it finishes, then the interrupt unwinds through the disposals below
            stop.Token.ThrowIfCancellationRequested();
            if (suite == "metrics")
            {
                // Same agents, same code, started without the /metrics endpoint (and so never scraped, and
                // with no metrics observer on the flow table): the other half of issue #5's comparison.
                Say("building a second 2-node cluster whose plaintext agents run with --metrics off");
                var offSpec = new ClusterSpec(
                    new NodeSpec("node1", new PodSpec(Namespace, "client-mesh")),
                    new NodeSpec("node2", new PodSpec(Namespace, "server-mesh")))
                {
                    TeardownOnExit = false,
                };
                metricsOff = await MeshCluster.StartAsync(offSpec, c => c.InventoryYaml(new InventoryOptions()), [.. agentArgs, "--metrics", "off"]);
                stop.Token.ThrowIfCancellationRequested();
            }

            if (tls)
            {
                Say("building a second 2-node cluster whose agents have a CA (mTLS HBONE tunnels between nodes)");
                var mtlsSpec = new ClusterSpec(
                    new NodeSpec("node1", new PodSpec(Namespace, "client-mesh")),
                    new NodeSpec("node2", new PodSpec(Namespace, "server-mesh")))
                {
                    TeardownOnExit = false,
                };
                mtls = await MeshCluster.StartAsync(mtlsSpec, c => c.InventoryYaml(new InventoryOptions()), mtls: true, agentArgs);
                stop.Token.ThrowIfCancellationRequested();
            }

            await using var bench = new Bench(plain, mtls, metricsOff, suite, seconds, repeat, warmup, !noAccessLog, stop.Token);
            try
            {
                var report = await bench.RunAsync(idleConnections, rateConnections, setupConnections, only);
                report["run"]!["elapsed_s"] = Math.Round(clock.Elapsed.TotalSeconds, 1);
                if (jsonPath != null)
                {
                    await File.WriteAllTextAsync(jsonPath, report.ToJsonString(new JsonSerializerOptions { WriteIndented = true }) + "\n");
                    Console.WriteLine($"\nfigures written to {jsonPath}");
                }

                Say($"done in {clock.Elapsed.TotalSeconds:0} s; tearing down");
                return bench.Failures == 0 ? 0 : 1;
            }
            catch (Exception e) when (bench.AgentsDied() is { Length: > 0 } died && !stop.IsCancellationRequested)
            {
                // a dead agent is the finding, not the exception it caused here
                Say($"an agent died during the run ({e.GetType().Name}: {e.Message.Split('\n')[0]})");
                Console.WriteLine(died);
                return 1;
            }
        }
        catch (Exception e) when (stop.IsCancellationRequested)
        {
            // whatever was running fails as the run unwinds: the interrupt is the news, not that
            Say($"interrupted ({e.GetType().Name}); tearing down: every cluster's agents, eBPF pins, namespaces and cgroups");
            return 130;
        }
        finally
        {
            if (mtls != null)
            {
                await mtls.DisposeAsync();
            }

            if (metricsOff != null)
            {
                await metricsOff.DisposeAsync();
            }
        }
    }

    /// <summary>
    /// One way from a client pod to a server pod. <see cref="Cluster"/>'s agents must see the traffic
    /// when <see cref="ViaAgents"/> and must not otherwise; a path through the nginx peer dials node1's
    /// nginx instead of the server.
    /// </summary>
    private sealed class BenchPath(string key, string label, ClusterPod client, ClusterPod server, MeshCluster cluster,
        bool viaAgents, string? policy, BenchNginxPeer? peer)
    {
        public string Key { get; } = key;

        public string Label { get; } = label;

        public ClusterPod Client { get; } = client;

        public ClusterPod Server { get; } = server;

        public MeshCluster Cluster { get; } = cluster;

        public bool ViaAgents { get; } = viaAgents;

        /// <summary>The agents' connection_security_policy expected for this path's flows.</summary>
        public string? Policy { get; } = policy;

        public BenchNginxPeer? Peer { get; } = peer;

        public bool IsDirect => !ViaAgents && Peer == null;

        /// <summary>Who relays the bytes on this path besides the kernel, for the CPU figures.</summary>
        public string Relays => ViaAgents ? "both agents" : Peer != null ? "both nginx" : "";

        public (string Host, int Port) Target(int serverPort) => Peer?.Front(serverPort) ?? (Server.Address.ToString(), serverPort);

        /// <summary>CPU time so far of what relays this path (agents or nginx, both nodes); 0 for the direct path.</summary>
        public double CpuSeconds()
        {
            IEnumerable<int> pids = ViaAgents ? [Cluster.Agent("node1").Pid, Cluster.Agent("node2").Pid] : Peer?.Pids() ?? [];
            return pids.Sum(pid =>
            {
                try
                {
                    return ProcStatus.CpuSeconds(pid);
                }
                catch (IOException)
                {
                    return 0;
                }
            });
        }

        public override string ToString() => Label;
    }

    private sealed record PathSnapshot(int Node1Flows, int Node2Flows, int PeerLines, int Node1Handshakes);

    /// <summary>A table row: a cell per path key, then the targets it answers are listed apart.</summary>
    private sealed record TableRow(string Metric, Dictionary<string, string> Cells);

    private sealed record TargetLine(string Issue, string What, string Figure, bool Pass);

    private sealed partial class Bench(MeshCluster plain, MeshCluster? mtls, MeshCluster? metricsOff, string suite, int seconds, int repeat, int warmup, bool accessLog, CancellationToken stop)
        : IAsyncDisposable
    {
        private readonly NetnsCluster _cluster = plain.Cluster;
        private readonly List<TableRow> _rows = [];
        private readonly List<TargetLine> _targets = [];
        private readonly List<BenchPath> _paths = [];
        private readonly List<string> _memoryLines = [];
        private BenchNginxPeer? _peer;

        public int Failures { get; private set; }

        private bool PlaintextSuite => suite is "plaintext" or "all";

        private bool TlsSuite => suite is "tls" or "all";

        private bool Issue5 => metricsOff != null;

        /// <summary>Issue #5: data-path throughput with metrics on and off, less than this far apart.</summary>
        private const double MetricsApartTarget = 0.03;

        /// <summary>Exit code and last stderr lines of every agent that is no longer running; empty when all run.</summary>
        public string AgentsDied() => string.Join('\n', Agents.Where(a => a.HasExited).Select(a =>
            $"  {a} exited with {a.ExitCode}; last stderr lines:\n    " + string.Join("\n    ", a.StderrLines.TakeLast(15))));

        private IEnumerable<ManagedProcess> Agents => new[] { plain, mtls, metricsOff }.OfType<MeshCluster>()
            .SelectMany(m => new[] { m.Agent("node1"), m.Agent("node2") });

        private ClusterPod ClientMesh => _cluster.Pod(Namespace, "client-mesh");

        private ClusterPod ServerMesh => _cluster.Pod(Namespace, "server-mesh");

        private ManagedProcess Agent1 => plain.Agent("node1");

        private ManagedProcess Agent2 => plain.Agent("node2");

        private BenchPath Direct => _paths[0];

        private BenchPath? Path(string key) => _paths.FirstOrDefault(p => p.Key == key);

        public async ValueTask DisposeAsync()
        {
            if (_peer != null)
            {
                await _peer.DisposeAsync();
            }
        }

        public async Task<JsonObject> RunAsync(int idleConnections, int rateConnections, int setupConnections, IReadOnlySet<string> only)
        {
            var loadBefore = LoadAverage();
            if (loadBefore > Environment.ProcessorCount)
            {
                Console.WriteLine($"  note: the machine is busy before the run (load average {loadBefore:0.0} on {Environment.ProcessorCount} CPUs): expect noisy figures");
            }

            Console.WriteLine($"  agents: {WeftExecutable.Command(WeftExecutable.Agent, ["agent"]).File}");

            foreach (var pod in _cluster.Pods.Concat(mtls?.Cluster.Pods ?? []).Concat(metricsOff?.Cluster.Pods ?? []))
            {
                var where = mtls != null && pod.Node.NetnsPath.Contains(mtls.Cluster.RunId, StringComparison.Ordinal) ? "mTLS cluster"
                    : metricsOff != null && pod.Node.NetnsPath.Contains(metricsOff.Cluster.RunId, StringComparison.Ordinal) ? "metrics-off cluster" : "plaintext cluster";
                Console.WriteLine($"  {pod} in the {where}{(pod.Name.EndsWith("-mesh", StringComparison.Ordinal) ? ", enrolled" : ", not in the inventory")}");
            }

            var fresh = new[] { ProcStatus.Read(Agent1.Pid), ProcStatus.Read(Agent2.Pid) };
            Console.WriteLine($"  plaintext agents: node1 pid {Agent1.Pid} ({fresh[0].RssKib / 1024.0:0.0} MiB), node2 pid {Agent2.Pid} ({fresh[1].RssKib / 1024.0:0.0} MiB)");
            if (mtls != null)
            {
                Console.WriteLine($"  mTLS agents: node1 pid {mtls.Agent("node1").Pid}, node2 pid {mtls.Agent("node2").Pid} (trust domain {MeshCluster.TrustDomain}, fresh CA)");
            }

            var servers = new List<ClusterPod> { ServerMesh, _cluster.Pod(Namespace, "server-direct") };
            if (mtls != null)
            {
                servers.Add(mtls.Cluster.Pod(Namespace, "server-mesh"));
            }

            if (metricsOff != null)
            {
                servers.Add(metricsOff.Cluster.Pod(Namespace, "server-mesh"));
                Console.WriteLine($"  metrics-off agents: node1 pid {metricsOff.Agent("node1").Pid}, node2 pid {metricsOff.Agent("node2").Pid} (--metrics off)");

                // Metrics on means scraped: each node's agent is read every second (Prometheus defaults to
                // 15 s), so the render and the before-scrape flush run during every measurement.
                foreach (var node in _cluster.Nodes)
                {
                    node.StartProcess("bash", "-c", "while :; do curl -sf -o /dev/null http://127.0.0.1:15020/metrics || echo scrape failed >&2; sleep 1; done");
                }

                Console.WriteLine("  scraping the metrics-on agents' /metrics every second (curl in each node's netns)");
            }

            Say($"starting servers in {string.Join(", ", servers.Select(s => s.Name + (s.Node.NetnsPath.Contains(_cluster.RunId, StringComparison.Ordinal) ? "" : " (second cluster)")))}: " +
                "iperf3 :5201, sockperf :11111, weft-kit app serve --mode echo :8080");
            foreach (var server in servers)
            {
                server.StartProcess("iperf3", "-s", "-p", IperfPort.ToString(CultureInfo.InvariantCulture));
                server.StartProcess("sockperf", "sr", "--tcp", "-p", SockperfPort.ToString(CultureInfo.InvariantCulture));
                await MeshCluster.StartServerAsync(server, "--port", PeerPort.ToString(CultureInfo.InvariantCulture), "--mode", "echo");
            }

            foreach (var server in servers)
            {
                foreach (var port in new[] { IperfPort, SockperfPort, PeerPort })
                {
                    await WaitForListenerAsync(server, port);
                }
            }

            var clientDirect = _cluster.Pod(Namespace, "client-direct");
            var serverDirect = _cluster.Pod(Namespace, "server-direct");
            _paths.Add(new BenchPath("direct", "direct", clientDirect, serverDirect, plain, viaAgents: false, null, null));
            _paths.Add(new BenchPath("plaintext", Issue5 ? "metrics on" : "plaintext agents", ClientMesh, ServerMesh, plain, viaAgents: true, "none", null));
            if (metricsOff != null)
            {
                _paths.Add(new BenchPath("metrics-off", "metrics off", metricsOff.Cluster.Pod(Namespace, "client-mesh"), metricsOff.Cluster.Pod(Namespace, "server-mesh"),
                    metricsOff, viaAgents: true, "none", null));
            }

            if (mtls != null)
            {
                _paths.Add(new BenchPath("mtls", "mTLS agents", mtls.Cluster.Pod(Namespace, "client-mesh"), mtls.Cluster.Pod(Namespace, "server-mesh"),
                    mtls, viaAgents: true, "mutual_tls", null));
                Say("starting the nginx peer: node1 nginx (plaintext in, TLS 1.3 out with a client certificate) -> node2 nginx (TLS in, verifies it) -> server-direct");
                _peer = await BenchNginxPeer.StartAsync(_cluster.Node("node1"), _cluster.Node("node2"), serverDirect.Address, [IperfPort, SockperfPort, PeerPort]).WaitAsync(stop);
                _paths.Add(new BenchPath("nginx", "nginx TLS", clientDirect, serverDirect, plain, viaAgents: false, null, _peer));
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
            var setup = only.Contains("setup") ? await ConnectionSetupAsync(setupConnections) : null;
            var fixedRate = only.Contains("cpu") ? await FixedRateCpuAsync() : null;

            var loadAfter = LoadAverage();
            PrintTable(loadBefore, loadAfter);
            return new JsonObject
            {
                ["run"] = new JsonObject
                {
                    ["date"] = DateTimeOffset.UtcNow.ToString("u", CultureInfo.InvariantCulture),
                    ["suite"] = suite,
                    ["kernel"] = File.ReadAllText("/proc/sys/kernel/osrelease").Trim(),
                    ["cpus"] = Environment.ProcessorCount,
                    ["seconds"] = seconds,
                    ["repeat"] = repeat,
                    ["clusters"] = new JsonArray(new[] { plain, mtls, metricsOff }.OfType<MeshCluster>().Select(m => (JsonNode?)m.Cluster.RunId).ToArray()),
                    ["load_average_1m_before"] = loadBefore,
                    ["load_average_1m_after"] = loadAfter,
                    ["agent_access_log"] = accessLog,
                },
                ["paths"] = new JsonObject(_paths.Select(p => KeyValuePair.Create(p.Key, (JsonNode?)new JsonObject
                {
                    ["label"] = p.Label,
                    ["client"] = p.Client.ToString(),
                    ["server"] = p.Server.ToString(),
                    ["dials"] = $"{p.Target(PeerPort).Host}:{{port{(p.Peer != null ? " + 20000" : "")}}}",
                    ["via_agents"] = p.ViaAgents,
                }))),
                ["throughput"] = throughput,
                ["latency"] = latency,
                ["connection_rate"] = rate,
                ["connection_setup"] = setup,
                ["fixed_rate_cpu"] = fixedRate,
                ["memory"] = memory,
                ["targets"] = new JsonArray(_targets.Select(t => (JsonNode?)new JsonObject
                {
                    ["issue"] = t.Issue,
                    ["target"] = t.What,
                    ["figure"] = t.Figure,
                    ["verdict"] = t.Pass ? "PASS" : "MISS",
                }).ToArray()),
            };
        }

        private async Task<JsonObject> ThroughputAsync(int streams)
        {
            Say($"throughput, {streams} stream(s), {seconds} s each, {Runs}: iperf3 -c SERVER -P {streams}");
            var cpu = new Dictionary<BenchPath, double>();
            var runs = await AlternatingAsync(path => IperfAsync(path, streams), cpu);
            var medians = runs.ToDictionary(r => r.Key, r => Median(r.Value.Select(i => i.Gbps)));
            var result = new JsonObject();
            var cells = new Dictionary<string, string>();
            foreach (var (path, samples) in runs)
            {
                var ratio = medians[path] / medians[Direct];
                var gigabytes = samples.Sum(r => r.Gbps) * seconds / 8;
                var cpuPerGb = path.IsDirect ? (double?)null : cpu[path] / gigabytes;
                Console.WriteLine($"  {path.Label,-16} {Samples(samples.Select(r => r.Gbps))} Gbit/s ({samples.Sum(r => r.Retransmits)} retransmits)" +
                    (path.IsDirect ? "" : $", median {ratio:P0} of direct; {path.Relays} used {cpu[path]:0.00} CPU-s, {cpuPerGb:0.00} CPU-s per GB"));
                cells[path.Key] = path.IsDirect ? $"{medians[path]:0.00}" : $"{medians[path]:0.00} ({ratio:P0})";
                result[path.Key] = new JsonObject
                {
                    ["gbps"] = Round(medians[path], 3),
                    ["ratio_to_direct"] = Round(ratio, 3),
                    ["samples_gbps"] = Array(samples.Select(r => Round(r.Gbps, 3))),
                    ["retransmits"] = samples.Sum(r => r.Retransmits),
                    ["relay_cpu_s"] = path.IsDirect ? null : Round(cpu[path], 2),
                    ["relay_cpu_s_per_gb"] = cpuPerGb is { } c ? Round(c, 3) : null,
                };
            }

            var label = $"throughput, {streams} stream{(streams > 1 ? "s" : "")}";
            _rows.Add(new TableRow($"{label} (Gbit/s)", cells));
            if (PlaintextSuite && Path("plaintext") is { } plaintext)
            {
                var ratio = medians[plaintext] / medians[Direct];
                _targets.Add(new TargetLine("#2", $"plaintext {label} >= {ThroughputTarget:P0} of direct", $"{ratio:P0}", ratio >= ThroughputTarget));
            }

            if (TlsSuite && Path("mtls") is { } mtlsPath)
            {
                var ratio = medians[mtlsPath] / medians[Direct];
                _targets.Add(new TargetLine("#3", $"mTLS {label} >= {MtlsThroughputTarget:P0} of direct", $"{ratio:P0}", ratio >= MtlsThroughputTarget));
                if (Path("nginx") is { } nginx)
                {
                    _targets.Add(new TargetLine("#3", $"mTLS {label} >= the nginx peer's", $"{medians[mtlsPath]:0.00} vs {medians[nginx]:0.00} Gbit/s",
                        medians[mtlsPath] >= medians[nginx]));
                }
            }

            if (Issue5 && Path("metrics-off") is { } off && Path("plaintext") is { } on)
            {
                var apart = (medians[on] - medians[off]) / medians[off];
                _targets.Add(new TargetLine("#5", $"metrics on vs off, {label}, < {MetricsApartTarget:P0} apart", $"{medians[on]:0.00} vs {medians[off]:0.00} Gbit/s ({apart:+0.0%;-0.0%})",
                    Math.Abs(apart) < MetricsApartTarget));
                result["metrics_on_vs_off"] = Round(apart, 4);
            }

            return result;
        }

        private async Task<Iperf> IperfAsync(BenchPath path, int streams)
        {
            var before = Snapshot(path);
            var (host, port) = path.Target(IperfPort);
            var stdout = await RunToEndAsync(path.Client, TimeSpan.FromSeconds(seconds + 30), "iperf3",
                ["-c", host, "-p", port.ToString(CultureInfo.InvariantCulture),
                "-t", seconds.ToString(CultureInfo.InvariantCulture), "-P", streams.ToString(CultureInfo.InvariantCulture), "-J"]);
            using var json = JsonDocument.Parse(stdout);
            var end = json.RootElement.GetProperty("end");
            var result = new Iperf(
                end.GetProperty("sum_received").GetProperty("bits_per_second").GetDouble() / 1e9,
                end.GetProperty("sum_sent").TryGetProperty("retransmits", out var r) ? r.GetInt64() : 0);
            await CheckPathAsync(path, before, $"iperf3 over the {path.Label} path");
            return result;
        }

        private async Task<JsonObject> LatencyAsync()
        {
            Say($"latency: 1 KiB request/response on one kept-alive connection, sockperf ping-pong, full round trip, {seconds} s each, {Runs}");
            var runs = await AlternatingAsync(SockperfAsync);
            var medians = runs.ToDictionary(r => r.Key, r => Latency.Median(r.Value));
            var direct = medians[Direct];
            var sockperf = new JsonObject();
            var p50 = new Dictionary<string, string>();
            var p99 = new Dictionary<string, string>();
            foreach (var (path, samples) in runs)
            {
                var m = medians[path];
                var addedP50 = (m.P50 - direct.P50) / 1000;
                var addedP99 = (m.P99 - direct.P99) / 1000;
                Console.WriteLine($"  {path.Label,-16} p50 {Samples(samples.Select(r => r.P50), "0.0")} us, p99 {Samples(samples.Select(r => r.P99), "0.0")} us" +
                    (path.IsDirect ? "" : $"; added (medians) p50 {Added(addedP50)}, p99 {Added(addedP99)}"));
                p50[path.Key] = path.IsDirect ? $"{m.P50:0.0}" : $"{m.P50:0.0} ({Added(addedP50)})";
                p99[path.Key] = path.IsDirect ? $"{m.P99:0.0}" : $"{m.P99:0.0} ({Added(addedP99)})";
                var json = m.ToJson();
                json["added_p50_ms"] = path.IsDirect ? null : Round(addedP50, 4);
                json["added_p99_ms"] = path.IsDirect ? null : Round(addedP99, 4);
                json["runs"] = Array(samples.Select(r => r.ToJson()));
                sockperf[path.Key] = json;
            }

            _rows.Add(new TableRow("latency p50, sockperf 1 KiB RTT (us)", p50));
            _rows.Add(new TableRow("latency p99, sockperf 1 KiB RTT (us)", p99));
            double AddedP99(string key) => (medians[Path(key)!].P99 - direct.P99) / 1000;
            if (PlaintextSuite && Path("plaintext") != null)
            {
                _targets.Add(new TargetLine("#2", $"plaintext added p99 <= {AddedP99TargetMs:0.00} ms", Added(AddedP99("plaintext")), AddedP99("plaintext") <= AddedP99TargetMs));
            }

            if (TlsSuite && Path("mtls") != null)
            {
                _targets.Add(new TargetLine("#3", $"mTLS added p99 <= {MtlsAddedP99TargetMs:0.00} ms", Added(AddedP99("mtls")), AddedP99("mtls") <= MtlsAddedP99TargetMs));
            }

            var result = new JsonObject { ["sockperf_rtt_us"] = sockperf };
            if (Issue5 && Path("metrics-off") is { } off && Path("plaintext") is { } on)
            {
                // reported, not judged: the 3 % target is issue #5's throughput figure; p99 here is mostly scheduling
                var (mOn, mOff) = (medians[on], medians[off]);
                _memoryLines.Add($"metrics on vs off, sockperf p50: {mOn.P50:0.0} vs {mOff.P50:0.0} us ({(mOn.P50 - mOff.P50) / mOff.P50:+0.0%;-0.0%})");
                _memoryLines.Add($"metrics on vs off, sockperf p99: {mOn.P99:0.0} vs {mOff.P99:0.0} us ({(mOn.P99 - mOff.P99) / mOff.P99:+0.0%;-0.0%})");
                result["metrics_on_vs_off_p50"] = Round((mOn.P50 - mOff.P50) / mOff.P50, 4);
                result["metrics_on_vs_off_p99"] = Round((mOn.P99 - mOff.P99) / mOff.P99, 4);
            }

            if (PlaintextSuite)
            {
                Say($"latency, second opinion: weft-kit app rr (a .NET client, 1 KiB, 20000 round trips after 2000 warm-up), {Runs}");
                var rr = await AlternatingAsync(RoundTripAsync);
                var rrJson = new JsonObject();
                var rr50 = new Dictionary<string, string>();
                var rr99 = new Dictionary<string, string>();
                var rrDirect = Latency.Median(rr[Direct]);
                foreach (var (path, samples) in rr)
                {
                    var m = Latency.Median(samples);
                    Console.WriteLine($"  {path.Label,-16} p50 {Samples(samples.Select(r => r.P50), "0.0")} us, p99 {Samples(samples.Select(r => r.P99), "0.0")} us");
                    rr50[path.Key] = path.IsDirect ? $"{m.P50:0.0}" : $"{m.P50:0.0} ({Added((m.P50 - rrDirect.P50) / 1000)})";
                    rr99[path.Key] = path.IsDirect ? $"{m.P99:0.0}" : $"{m.P99:0.0} ({Added((m.P99 - rrDirect.P99) / 1000)})";
                    var json = m.ToJson();
                    json["runs"] = Array(samples.Select(r => r.ToJson()));
                    rrJson[path.Key] = json;
                }

                _rows.Add(new TableRow("latency p50, weft-kit app rr 1 KiB (us)", rr50));
                _rows.Add(new TableRow("latency p99, weft-kit app rr 1 KiB (us)", rr99));
                result["weft_app_rr_us"] = rrJson;
            }

            return result;
        }

        private async Task<Latency> SockperfAsync(BenchPath path)
        {
            var before = Snapshot(path);
            var (host, port) = path.Target(SockperfPort);
            var stdout = await RunToEndAsync(path.Client, TimeSpan.FromSeconds(seconds + 30), "sockperf",
                ["pp", "--tcp", "-i", host, "-p", port.ToString(CultureInfo.InvariantCulture),
                "-m", "1024", "-t", seconds.ToString(CultureInfo.InvariantCulture), "--full-rtt"]);
            var text = AnsiEscape().Replace(stdout, "");
            double Percentile(string name) =>
                System.Text.RegularExpressions.Regex.Match(text, $@"percentile {System.Text.RegularExpressions.Regex.Escape(name)} =\s*([0-9.]+)") is { Success: true } m
                    ? double.Parse(m.Groups[1].Value, CultureInfo.InvariantCulture)
                    : throw new InvalidOperationException($"sockperf printed no 'percentile {name}' line:\n{text}");
            var observations = System.Text.RegularExpressions.Regex.Match(text, @"Total (\d+) observations") is { Success: true } o
                ? long.Parse(o.Groups[1].Value, CultureInfo.InvariantCulture) : 0;
            await CheckPathAsync(path, before, $"sockperf over the {path.Label} path");
            return new Latency(Percentile("50.000"), Percentile("99.000"), Percentile("99.900"), observations);
        }

        private async Task<Latency> RoundTripAsync(BenchPath path)
        {
            var (host, port) = path.Target(PeerPort);
            var (file, args) = WeftExecutable.Command(["app", "rr", "--to", $"{host}:{port}", "--size", "1024", "--count", "20000", "--warmup", "2000"]);
            var stdout = await RunToEndAsync(path.Client, TimeSpan.FromSeconds(60), file, args);
            using var json = JsonDocument.Parse(stdout.Split('\n').Last(l => l.StartsWith('{')));
            var r = json.RootElement;
            return new Latency(r.GetProperty("p50_us").GetDouble(), r.GetProperty("p99_us").GetDouble(), null, r.GetProperty("count").GetInt64());
        }

        private async Task<JsonObject> ConnectionRateAsync(int connections)
        {
            Say($"new connections: {connections} x (connect, 64 B each way, close), 16 at a time, {Runs}: weft-kit app send " +
                "(after 300 untimed connections per path, so agents are warm and mTLS tunnels exist)");
            foreach (var path in _paths)
            {
                await ConnectionRunAsync(path, 300);
            }

            var cpu = new Dictionary<BenchPath, double>();
            var runs = await AlternatingAsync(path => ConnectionRunAsync(path, connections), cpu);
            var medians = runs.ToDictionary(r => r.Key, r => Median(r.Value.Select(c => c.PerSecond)));
            var cells = new Dictionary<string, string>();
            var result = new JsonObject { ["connections"] = connections, ["concurrency"] = 16 };
            foreach (var (path, samples) in runs)
            {
                var ratio = medians[path] / medians[Direct];
                var failed = samples.Sum(s => s.Failed);
                var cpuPerConnection = path.IsDirect ? (double?)null : cpu[path] * 1e6 / (connections * samples.Count);
                Console.WriteLine($"  {path.Label,-16} {Samples(samples.Select(r => r.PerSecond), "0")} conn/s, {failed} failed" +
                    (path.IsDirect ? "" : $"; median {ratio:P0} of direct; {path.Relays}: {cpuPerConnection:0} CPU-us per connection"));
                cells[path.Key] = path.IsDirect ? $"{medians[path]:0}" : $"{medians[path]:0} ({ratio:P0})";
                result[path.Key] = new JsonObject
                {
                    ["per_s"] = Round(medians[path], 0),
                    ["ratio_to_direct"] = Round(ratio, 3),
                    ["samples_per_s"] = Array(samples.Select(r => Round(r.PerSecond, 0))),
                    ["failed"] = failed,
                    ["relay_cpu_us_per_connection"] = cpuPerConnection is { } c ? Round(c, 0) : null,
                };
                if (failed > 0)
                {
                    Failures++;
                    Console.WriteLine($"  some connections over the {path.Label} path failed: its figure is not trustworthy");
                }
            }

            _rows.Add(new TableRow("new conn/s, 16 at a time (mTLS: pooled tunnel)", cells));
            return result;
        }

        /// <summary>
        /// The relays' CPU at a fixed load, the way Istio reports ztunnel's (vCPU per 1,000 requests/s):
        /// 100 kept-alive connections together send 1,000 round trips of 1 KiB a second. The CPU counted is
        /// what the relays (both agents, or both nginx) used from the client's start to its end, so it
        /// includes opening the 100 connections (through a warm tunnel on the mTLS path); vCPU is that over
        /// the seconds the round trips ran.
        /// </summary>
        private async Task<JsonObject> FixedRateCpuAsync()
        {
            var runSeconds = Math.Max(5, seconds * 2);
            var relayed = _paths.Where(p => !p.IsDirect).ToList();
            Say($"cpu: {FixedRatePerSecond} round trips/s of 1 KiB over {FixedRateConnections} kept-alive connections, {runSeconds} s, " +
                $"weft-kit app rr --rate; the relays' CPU from /proc, {Runs} (after a {warmup} s untimed run per path)");
            foreach (var path in relayed)
            {
                await FixedRateRunAsync(path, warmup);
            }

            var cpu = new Dictionary<BenchPath, double>();
            var runs = await AlternatingAsync(relayed, path => FixedRateRunAsync(path, runSeconds), cpu);
            var cells = new Dictionary<string, string>();
            var p99Cells = new Dictionary<string, string>();
            var result = new JsonObject { ["rate_per_s"] = FixedRatePerSecond, ["connections"] = FixedRateConnections, ["seconds"] = runSeconds, ["warmup_s"] = warmup };
            foreach (var (path, samples) in runs)
            {
                var elapsed = samples.Sum(r => r.Seconds);
                var vcpu = cpu[path] / elapsed;
                var perThousand = vcpu / (samples.Sum(r => r.Count) / elapsed / 1000);
                var p99 = Median(samples.Select(r => r.P99Us));
                var failed = samples.Sum(r => r.FailedConnections);
                Console.WriteLine($"  {path.Label,-16} {Samples(samples.Select(r => r.PerSecond), "0")} round trips/s, p99 {Samples(samples.Select(r => r.P99Us), "0")} us, " +
                    $"{failed} failed connections; {path.Relays}: {vcpu:0.000} vCPU, {perThousand:0.000} vCPU per 1,000 requests/s");
                cells[path.Key] = $"{perThousand:0.000}";
                p99Cells[path.Key] = $"{p99:0}";
                result[path.Key] = new JsonObject
                {
                    ["vcpu"] = Round(vcpu, 4),
                    ["vcpu_per_1000_rps"] = Round(perThousand, 4),
                    ["relay_cpu_s"] = Round(cpu[path], 3),
                    ["achieved_per_s"] = Array(samples.Select(r => Round(r.PerSecond, 1))),
                    ["p50_us"] = Array(samples.Select(r => Round(r.P50Us, 1))),
                    ["p99_us"] = Array(samples.Select(r => Round(r.P99Us, 1))),
                    ["failed_connections"] = failed,
                };
                if (failed > 0 || samples.Any(r => r.PerSecond < FixedRatePerSecond * 0.9))
                {
                    Failures++;
                    Console.WriteLine($"  the {path.Label} path fell short of {FixedRatePerSecond} round trips/s or lost connections: its figure is not trustworthy");
                }
            }

            _rows.Add(new TableRow($"vCPU per 1,000 req/s, {FixedRateConnections} conns x 1 KiB (relays)", cells));
            _rows.Add(new TableRow($"p99 at {FixedRatePerSecond} req/s (us, from the scheduled start)", p99Cells));
            if (TlsSuite && Path("mtls") is { } mtlsPath && runs.TryGetValue(mtlsPath, out var mtlsRuns))
            {
                var perThousand = cpu[mtlsPath] / mtlsRuns.Sum(r => r.Seconds) / (mtlsRuns.Sum(r => r.Count) / mtlsRuns.Sum(r => r.Seconds) / 1000);
                _targets.Add(new TargetLine("#10", $"mTLS agents (both) at most {VcpuPerThousandTarget} vCPU per 1,000 req/s (ztunnel's published figure)",
                    $"{perThousand:0.000}", perThousand <= VcpuPerThousandTarget));
            }

            return result;
        }

        private async Task<FixedRate> FixedRateRunAsync(BenchPath path, int runSeconds)
        {
            var before = Snapshot(path);
            var (host, port) = path.Target(PeerPort);
            var (file, args) = WeftExecutable.Command(["app", "rr", "--to", $"{host}:{port}", "--size", "1024",
                "--rate", FixedRatePerSecond.ToString(CultureInfo.InvariantCulture),
                "--connections", FixedRateConnections.ToString(CultureInfo.InvariantCulture),
                "--seconds", runSeconds.ToString(CultureInfo.InvariantCulture)]);
            var stdout = await RunToEndAsync(path.Client, TimeSpan.FromSeconds(runSeconds + 60), file, args, allowFailure: true);
            var line = stdout.Split('\n').LastOrDefault(l => l.StartsWith('{'))
                ?? throw new InvalidOperationException($"weft-kit app rr printed nothing:\n{Tail(stdout)}");
            using var json = JsonDocument.Parse(line);
            var r = json.RootElement;
            if (!r.TryGetProperty("count", out var count))
            {
                throw new InvalidOperationException($"weft-kit app rr over the {path.Label} path failed: {line}");
            }

            await CheckPathAsync(path, before, $"weft-kit app rr --rate over the {path.Label} path");
            return new FixedRate(count.GetInt64(), r.GetProperty("seconds").GetDouble(), r.GetProperty("p50_us").GetDouble(),
                r.GetProperty("p99_us").GetDouble(), r.GetProperty("failed_connections").GetInt32());
        }

        private sealed record FixedRate(long Count, double Seconds, double P50Us, double P99Us, int FailedConnections)
        {
            public double PerSecond => Count / Seconds;
        }

        private async Task<Connections> ConnectionRunAsync(BenchPath path, int connections)
        {
            var (host, port) = path.Target(PeerPort);
            var (file, args) = WeftExecutable.Command(["app", "send", "--to", $"{host}:{port}",
                "--connections", connections.ToString(CultureInfo.InvariantCulture), "--concurrency", "16",
                "--bytes", "64", "--expect-reply-bytes", "64"]);
            var stdout = await RunToEndAsync(path.Client, TimeSpan.FromMinutes(2), file, args, allowFailure: true);
            var summaryLine = stdout.Split('\n').LastOrDefault(l => l.Contains("\"summary\"", StringComparison.Ordinal))
                ?? throw new InvalidOperationException($"weft-kit app send printed no summary:\n{stdout[^Math.Min(stdout.Length, 2000)..]}");
            using var json = JsonDocument.Parse(summaryLine);
            var s = json.RootElement;
            var ok = s.GetProperty("ok").GetInt64();
            var elapsedMs = Math.Max(1, s.GetProperty("elapsed_ms").GetInt64());
            return new Connections(ok * 1000.0 / elapsedMs, s.GetProperty("failed").GetInt64());
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

        private string Runs => repeat == 1 ? "once per path" : $"{repeat} times per path, alternating the order";

        /// <summary>
        /// Runs the measurement <c>repeat</c> times on every path, the paths in turn forward then
        /// backward (A B C D, D C B A, ...), so a drift in what else the machine does weighs on all
        /// alike. With <paramref name="cpu"/>, adds up the CPU time of what relays each path during its runs.
        /// </summary>
        private async Task<Dictionary<BenchPath, List<T>>> AlternatingAsync<T>(Func<BenchPath, Task<T>> measure, Dictionary<BenchPath, double>? cpu = null) =>
            await AlternatingAsync(_paths, measure, cpu);

        private async Task<Dictionary<TKey, List<T>>> AlternatingAsync<TKey, T>(IReadOnlyList<TKey> keys, Func<TKey, Task<T>> measure,
            Dictionary<TKey, double>? cpu = null, Func<TKey, BenchPath>? pathOf = null)
            where TKey : notnull
        {
            var results = keys.ToDictionary(k => k, _ => new List<T>());
            for (var i = 0; i < repeat; i++)
            {
                foreach (var key in i % 2 == 0 ? keys : keys.Reverse())
                {
                    var path = pathOf?.Invoke(key) ?? (BenchPath)(object)key;
                    var before = path.CpuSeconds();
                    results[key].Add(await measure(key));
                    if (cpu != null)
                    {
                        cpu[key] = cpu.GetValueOrDefault(key) + path.CpuSeconds() - before;
                    }
                }
            }

            return results;
        }

        private static int FlowCount(ManagedProcess agent) => agent.StdoutLines.Count(l => l.StartsWith('{'));

        private PathSnapshot Snapshot(BenchPath path)
        {
            var node1 = path.Cluster.Agent("node1").StdoutLines;
            return new PathSnapshot(
                node1.Count(l => l.StartsWith('{')),
                FlowCount(path.Cluster.Agent("node2")),
                path.Peer?.BackLog().Count ?? 0,
                node1.Count(IsOutboundHandshake));
        }

        /// <summary>An outbound flow record that had to dial a new tunnel (the pool had none with room): it carries the handshake time.</summary>
        private static bool IsOutboundHandshake(string line) =>
            line.StartsWith('{') && line.Contains("\"direction\":\"outbound\"", StringComparison.Ordinal) && line.Contains("\"tls_handshake_ms\"", StringComparison.Ordinal);

        /// <summary>
        /// The comparison is only worth something if each path went where it says: the meshed runs
        /// through both agents (with the expected security policy), the direct and nginx runs through
        /// neither, and the nginx runs over TLS 1.3 with a verified client certificate. Checked from
        /// the agents' access logs and node2 nginx's (logged when a connection ends: give it a moment).
        /// </summary>
        private async Task CheckPathAsync(BenchPath path, PathSnapshot before, string what)
        {
            if (!accessLog && path.ViaAgents)
            {
                return;
            }

            var deadline = DateTime.UtcNow + TimeSpan.FromSeconds(path.IsDirect ? 0.3 : 3);
            PathSnapshot now;
            bool Arrived(PathSnapshot s) => path.ViaAgents
                ? s.Node1Flows > before.Node1Flows && s.Node2Flows > before.Node2Flows
                : path.Peer == null || s.PeerLines > before.PeerLines;
            do
            {
                await Task.Delay(100, stop);
                now = Snapshot(path);
            }
            while (!Arrived(now) && DateTime.UtcNow < deadline);

            var through = (now.Node1Flows > before.Node1Flows, now.Node2Flows > before.Node2Flows);
            if (accessLog && through != (path.ViaAgents, path.ViaAgents))
            {
                Failures++;
                Console.WriteLine($"  WARNING: {what} went through node1's agent: {through.Item1}, node2's: {through.Item2}; expected {path.ViaAgents} for both");
            }

            if (path.ViaAgents && path.Policy != null && path.Cluster.Agent("node2").StdoutLines.LastOrDefault(l => l.StartsWith('{')) is { } last)
            {
                using var flow = JsonDocument.Parse(last);
                var policy = flow.RootElement.TryGetProperty("connection_security_policy", out var p) ? p.GetString() : null;
                if (policy != path.Policy)
                {
                    Failures++;
                    Console.WriteLine($"  WARNING: {what}: node2's agent recorded connection_security_policy {policy}, expected {path.Policy}");
                }
            }

            if (path.Peer != null)
            {
                var lines = path.Peer.BackLog().Skip(before.PeerLines).ToList();
                var wrong = lines.Where(l => !l.StartsWith("TLSv1.3 SUCCESS ", StringComparison.Ordinal)).ToList();
                if (lines.Count == 0 || wrong.Count > 0)
                {
                    Failures++;
                    Console.WriteLine($"  WARNING: {what}: node2's nginx logged {lines.Count} connection(s), {wrong.Count} not TLS 1.3 with a verified client certificate ({wrong.FirstOrDefault()})");
                }
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
                $"load average {loadBefore:0.0} before and {loadAfter:0.0} after; medians, (ratio or added latency against direct)");
            string[] header = ["metric", .. _paths.Select(p => p.Label)];
            var table = _rows.Select(r => new[] { r.Metric }.Concat(_paths.Select(p => r.Cells.GetValueOrDefault(p.Key, "-"))).ToArray()).Prepend(header).ToList();
            var widths = Enumerable.Range(0, header.Length).Select(i => table.Max(row => row[i].Length)).ToArray();
            foreach (var (row, index) in table.Select((r, i) => (r, i)))
            {
                Console.WriteLine("  " + string.Join("  ", row.Select((cell, i) => i > 0 ? cell.PadLeft(widths[i]) : cell.PadRight(widths[i]))).TrimEnd());
                if (index == 0)
                {
                    Console.WriteLine("  " + string.Join("  ", widths.Select(w => new string('-', w))).TrimEnd());
                }
            }

            foreach (var line in _memoryLines)
            {
                Console.WriteLine("  " + line);
            }

            if (_targets.Count > 0)
            {
                Console.WriteLine();
                var width = _targets.Max(t => t.What.Length);
                var figureWidth = _targets.Max(t => t.Figure.Length);
                foreach (var t in _targets)
                {
                    Console.WriteLine($"  {t.Issue} {t.What.PadRight(width)}  {t.Figure.PadLeft(figureWidth)}  {(t.Pass ? "PASS" : "MISS")}");
                }
            }
        }
    }
}
