using System.Diagnostics;
using System.Globalization;
using System.Runtime.InteropServices;
using System.Text.Json;
using Weft.Cli;
using Weft.Harness;

namespace Weft.Bench;

/// <summary>
/// Issue 13's load run: one node pair with mTLS agents holds many idle connections open (each echoed a
/// byte through both agents first) while new connections arrive at a steady rate, each sending 1 KiB and
/// reading it back, for some minutes. Reports failures (the aim: none), the achieved rate, connection
/// durations, and both agents' RSS, descriptors and threads before, during (peak) and after.
/// </summary>
internal static partial class BenchCommand
{
    public const string LoadUsage = """
        weft-bench --suite load [--minutes 5] [--idle-connections 10000] [--rate 1000] [--clients 8] [--tunnel-idle-seconds 20]
          Load (issue 13): a 2-node mTLS cluster holds --idle-connections open while new connections of
          1 KiB each way arrive at --rate per second for --minutes, spread over --clients client pods on
          node1 to one server pod on node2. Prints failures, the achieved rate, durations p50/p99/max, and
          each agent's RSS, descriptors and threads before, at peak, after, and once the tunnels the run
          opened have closed (the agents are given --tunnel-idle-seconds, 300 by their own default).
        """;

    private const int LoadPort = 8080;

    // After the Settle that follows the last held connection's opening: the agents' trim of a settled burst (two
    // checks a second apart without a change, then a collection) is over well within this.
    private static readonly TimeSpan HeldSettle = TimeSpan.FromSeconds(4);

    /// <summary>
    /// Waits (at most <paramref name="limit"/>) until each agent holds no more than <paramref name="slack"/> descriptors
    /// over <paramref name="baseline"/>, then settles; returns how long the descriptors took.
    /// </summary>
    internal static async Task<TimeSpan> DescriptorsBackAsync(int[] agents, ProcStatus[] baseline, int slack, TimeSpan limit, CancellationToken stop)
    {
        var clock = Stopwatch.StartNew();
        while (clock.Elapsed < limit && agents.Select(ProcStatus.Read).Zip(baseline).Any(p => p.First.Fds > p.Second.Fds + slack))
        {
            await Task.Delay(TimeSpan.FromMilliseconds(200), stop);
        }

        var took = clock.Elapsed;
        await Task.Delay(Settle, stop);
        return took;
    }

    /// <summary>Part <paramref name="i"/> of <paramref name="total"/> shared over <paramref name="parts"/>, as a command-line value.</summary>
    private static string Share(long total, int parts, int i) => (total / parts + (i < total % parts ? 1 : 0)).ToString(CultureInfo.InvariantCulture);

    /// <summary>
    /// Opens <paramref name="total"/> connections to <paramref name="target"/> shared over <paramref name="pods"/>
    /// (<c>weft-kit app hold</c>: one byte echoed on each, then held until the holder's standard input closes). The holders go
    /// into <paramref name="holds"/>, which the caller stops and disposes; returns how many opened and what errors the
    /// holders reported (each holder's count of open connections waited for at most <paramref name="openWithin"/>).
    /// </summary>
    internal static async Task<(int Open, List<string> Errors)> HoldAsync(List<ManagedProcess> holds, IReadOnlyList<ClusterPod> pods, string target, long total, TimeSpan openWithin, CancellationToken stop)
    {
        var first = holds.Count;
        for (var i = 0; i < pods.Count; i++)
        {
            var (file, args) = WeftExecutable.Command(["app", "hold", "--to", target,
                "--connections", Share(total, pods.Count, i), "--concurrency", "50", "--exchange-bytes", "1"]);
            holds.Add(pods[i].StartProcess(file, args, null));
        }

        var open = 0;
        var errors = new List<string>();
        foreach (var hold in holds.Skip(first))
        {
            using var opened = JsonDocument.Parse(await hold.WaitForStdoutLineAsync(l => l.Contains("\"open\"", StringComparison.Ordinal), openWithin).WaitAsync(stop));
            open += opened.RootElement.GetProperty("open").GetInt32();
            if (opened.RootElement.TryGetProperty("errors", out var reported) && reported.ValueKind == JsonValueKind.Object && reported.EnumerateObject().Any())
            {
                errors.Add(reported.ToString());
            }
        }

        return (open, errors);
    }

    /// <summary>Each client pod holds a few connections (as the held ones do: one byte echoed) and closes them.</summary>
    internal static async Task WarmUpAsync(IReadOnlyList<ClusterPod> pods, string target, CancellationToken stop)
    {
        var warm = new List<ManagedProcess>();
        try
        {
            foreach (var pod in pods)
            {
                var (file, args) = WeftExecutable.Command(["app", "hold", "--to", target, "--connections", "10", "--concurrency", "10", "--exchange-bytes", "1"]);
                warm.Add(pod.StartProcess(file, args, null));
            }

            foreach (var hold in warm)
            {
                await hold.WaitForStdoutLineAsync(l => l.Contains("\"open\"", StringComparison.Ordinal), TimeSpan.FromMinutes(1)).WaitAsync(stop);
                hold.StandardInput.Close();
            }

            foreach (var hold in warm)
            {
                await hold.WaitForExitAsync(TimeSpan.FromSeconds(30)).WaitAsync(stop);
            }
        }
        finally
        {
            foreach (var hold in warm)
            {
                await hold.DisposeAsync();
            }
        }
    }

    /// <summary>
    /// Ports one client address can hold towards the server: the server's agent delivers each connection from the
    /// client's address with a port it picks in turn from the odd half of the local port range (docs/capture.md), and a
    /// port it closed stays taken for TIME_WAIT's 60 s. Held connections plus a minute of new ones must fit.
    /// </summary>
    private const int PortsPerClientAddress = 14_000;

    public static async Task<int> LoadAsync(CommandLine cl)
    {
        cl.Get("suite");
        var minutes = cl.Int("minutes", 5);
        var idle = cl.Int("idle-connections", 10_000);
        var rate = cl.Int("rate", 1000);
        var clients = cl.Int("clients", 8);
        var tunnelIdle = cl.Int("tunnel-idle-seconds", 20);
        cl.RejectUnknown();
        if (minutes < 1 || idle < 1 || rate < 1 || clients < 1 || clients > 64 || tunnelIdle < 1)
        {
            throw new UsageException("--minutes, --idle-connections, --rate and --tunnel-idle-seconds must be at least 1, --clients 1 to 64");
        }

        if ((idle + (long)rate * 60) / clients > PortsPerClientAddress)
        {
            Log.Warn("bench", $"each client address would need {(idle + (long)rate * 60) / clients} ports at the server's agent (held plus a minute of TIME_WAIT), " +
                $"more than the ~{PortsPerClientAddress} it has: expect refusals; give more --clients");
        }

        // every process holds at most all the held connections plus the new ones in flight: the hold processes, the
        // server, each agent (one descriptor per connection: the other side is a stream in a shared tunnel)
        var concurrency = Math.Max(64, rate / 2);
        var limit = RaiseOpenFileLimit((ulong)idle + (ulong)concurrency * 2 + FdHeadroom);
        if (limit < (ulong)idle + FdHeadroom)
        {
            Log.Error("bench", $"the open file limit is {limit} and cannot be raised to hold {idle} connections; give fewer with --idle-connections");
            return 1;
        }

        using var stop = new BenchInterrupt("stopping, cleaning up");
        NetnsCluster.CleanupStale();

        Say($"load: {idle} idle connections held, {rate} new connections/s of 1 KiB each way for {minutes} min, from {clients} client pods through mTLS agents " +
            $"(load average before: {LoadAverage():0.00})");
        var clientNames = Enumerable.Range(1, clients).Select(i => $"client{i}").ToArray();
        var spec = new ClusterSpec(
            new NodeSpec("node1", clientNames.Select(n => new PodSpec(Namespace, n)).ToArray()),
            new NodeSpec("node2", new PodSpec(Namespace, "server")))
        {
            TeardownOnExit = false,
        };
        // The client pods share one identity and one node: the inbound limits that stop a hostile pod (derived from the
        // descriptor limit: per peer identity L/8, per source address L/16, per node L/2) would refuse most of them, so
        // this bench sets them to what it holds plus the new connections in flight.
        var inbound = (idle + (rate * 10) + 1000).ToString(CultureInfo.InvariantCulture);
        await using var mesh = await MeshCluster.StartAsync(spec, c => c.InventoryYaml(new InventoryOptions()), mtls: true, "--no-access-log",
            "--max-inbound-per-identity", inbound, "--max-inbound-per-address", inbound, "--max-inbound-per-node", inbound,
            "--tunnel-idle-seconds", tunnelIdle.ToString(CultureInfo.InvariantCulture));
        var pods = clientNames.Select(n => mesh.Cluster.Pod(Namespace, n)).ToArray();
        var server = mesh.Cluster.Pod(Namespace, "server");
        var agents = new[] { mesh.Agent("node1").Pid, mesh.Agent("node2").Pid };
        await using var echo = await MeshCluster.StartServerAsync(server, "--port", LoadPort.ToString(CultureInfo.InvariantCulture), "--mode", "echo");
        var target = $"{server.Address}:{LoadPort}";

        // "before" is a warm agent's: a few connections from every client pod first, closed again, so code run once
        // (the JIT, pages of the agent's libraries read in) is not counted as memory per held connection. Their tunnels
        // stay open (TunnelIdleTimeout) and count in "before": one per client pod, of about 100 the held connections use.
        var idleFds = agents.Select(ProcStatus.Read).ToArray();
        await WarmUpAsync(pods, target, stop.Token);
        await DescriptorsBackAsync(agents, idleFds, slack: 20, TimeSpan.FromSeconds(30), stop.Token);
        var before = agents.Select(ProcStatus.Read).ToArray();

        var holds = new List<ManagedProcess>();
        var senders = new List<ManagedProcess>();
        try
        {
            var holdClock = Stopwatch.StartNew();
            var (open, holdErrors) = await HoldAsync(holds, pods, target, idle, TimeSpan.FromMinutes(5), stop.Token);

            Console.WriteLine($"  {open}/{idle} idle connections open in {holdClock.ElapsedMilliseconds} ms" + (open < idle ? $"; errors: {string.Join(", ", holdErrors)}" : ""));
            await Task.Delay(Settle, stop.Token);
            var justOpened = agents.Select(ProcStatus.Read).ToArray();
            // "holding" is read once the agents have settled: an agent trims its heap once a burst of connections has
            // stopped growing for two seconds (HeapTrim), as it would hours into holding them
            await Task.Delay(HeldSettle, stop.Token);
            var held = agents.Select(ProcStatus.Read).ToArray();

            var total = (long)rate * minutes * 60;
            var peak = held.ToArray();
            var cpuBefore = LoadCpu.Read(agents, pods, server);
            var clock = Stopwatch.StartNew();
            for (var i = 0; i < clients; i++)
            {
                var (sendFile, sendArgs) = WeftExecutable.Command(["app", "send", "--to", target, "--bytes", "1024",
                    "--expect-reply-bytes", "1024", "--connections", Share(total, clients, i), "--rate", Share(rate, clients, i),
                    "--concurrency", Math.Max(16, concurrency / clients).ToString(CultureInfo.InvariantCulture), "--quiet", "1", "--timeout-ms", "30000",
                    "--progress-seconds", "10"]);
                senders.Add(pods[i].StartProcess(sendFile, sendArgs, null));
            }

            while (senders.Any(s => !s.HasExited) && !stop.IsCancellationRequested)
            {
                await Task.WhenAny(Task.WhenAll(senders.Select(s => s.WaitForExitAsync(TimeSpan.FromSeconds(10)))), Task.Delay(TimeSpan.FromSeconds(10), stop.Token));
                var now = agents.Select(ProcStatus.Read).ToArray();
                for (var i = 0; i < peak.Length; i++)
                {
                    // each figure's own maximum over the samples
                    peak[i] = new ProcStatus(now[i].Command, Math.Max(peak[i].RssKib, now[i].RssKib), Math.Max(peak[i].RssAnonKib, now[i].RssAnonKib),
                        Math.Max(peak[i].Threads, now[i].Threads), Math.Max(peak[i].Fds, now[i].Fds));
                }

                var progress = SenderProgress(senders);
                Console.WriteLine($"  {clock.Elapsed:mm\\:ss} {progress.Ok} ok, {progress.Failed} failed, {progress.InFlight} in flight, {progress.Late} late; " +
                    $"agents: {string.Join("; ", now.Select((s, i) => $"node{i + 1} RSS {Mib(s.RssKib)}, {s.Fds} fds, {s.Threads} threads"))}");
            }

            stop.Token.ThrowIfCancellationRequested();
            var cpu = LoadCpu.Read(agents, pods, server) - cpuBefore;
            var cpuWall = clock.Elapsed.TotalSeconds;
            long ok = 0, failed = 0, lateStarts = 0, p50 = 0, p99 = 0, max = 0, elapsedMs = 0;
            var errorCounts = new SortedDictionary<string, long>(StringComparer.Ordinal);
            var failedLines = new List<string>();
            foreach (var send in senders)
            {
                failedLines.AddRange(send.StdoutLines.Where(l => l.Contains("\"error\"", StringComparison.Ordinal)
                    && !l.Contains("\"summary\"", StringComparison.Ordinal) && !l.Contains("\"progress\"", StringComparison.Ordinal)));
                using var summary = JsonDocument.Parse(send.StdoutLines.Last(l => l.Contains("\"summary\"", StringComparison.Ordinal)));
                var s = summary.RootElement;
                ok += s.GetProperty("ok").GetInt64();
                failed += s.GetProperty("failed").GetInt64();
                lateStarts += s.GetProperty("late_starts").GetInt64();
                elapsedMs = Math.Max(elapsedMs, s.GetProperty("elapsed_ms").GetInt64());
                // the senders' percentiles combined conservatively: the median of the medians, the worst p99 and max
                p50 += s.GetProperty("duration_p50_us").GetInt64();
                p99 = Math.Max(p99, s.GetProperty("duration_p99_us").GetInt64());
                max = Math.Max(max, s.GetProperty("duration_max_us").GetInt64());
                foreach (var e in s.GetProperty("errors").EnumerateObject())
                {
                    errorCounts[e.Name] = errorCounts.GetValueOrDefault(e.Name) + e.Value.GetInt64();
                }
            }

            p50 /= clients;
            var seconds = elapsedMs / 1000.0;
            long closedByPeer = 0;
            foreach (var hold in holds)
            {
                hold.StandardInput.Close();
            }

            foreach (var hold in holds)
            {
                await hold.WaitForExitAsync(TimeSpan.FromSeconds(60)).WaitAsync(stop.Token);
                using var holdSummary = JsonDocument.Parse(hold.StdoutLines.Last(l => l.Contains("\"summary\"", StringComparison.Ordinal)));
                closedByPeer += holdSummary.RootElement.GetProperty("closed_by_peer").GetInt64();
            }

            // 10,000 closes take the agents a while on 2 cores: "after" is once their descriptors are back (at most a minute)
            var released = await DescriptorsBackAsync(agents, before, slack: 100, TimeSpan.FromMinutes(1), stop.Token);
            var after = agents.Select(ProcStatus.Read).ToArray();
            Console.WriteLine($"  held connections released; descriptors back in {released.TotalSeconds:0} s");

            // The tunnels the burst opened close once idle for --tunnel-idle-seconds: their descriptors back to what the
            // agents held before the warm-up, and a second for the agents' trim (HeapTrim checks once a second).
            var tunnelsClosed = await DescriptorsBackAsync(agents, idleFds, slack: 4, TimeSpan.FromSeconds(tunnelIdle + 60), stop.Token);
            await Task.Delay(TimeSpan.FromSeconds(1), stop.Token);
            var afterTunnels = agents.Select(ProcStatus.Read).ToArray();
            Console.WriteLine($"  tunnels closed {tunnelsClosed.TotalSeconds:0} s later");

            Console.WriteLine();
            Console.WriteLine($"| figure | value |");
            Console.WriteLine($"| --- | --- |");
            Console.WriteLine($"| idle connections held | {open}/{idle} from {clients} client pods, closed by the mesh while held: {closedByPeer} |");
            Console.WriteLine($"| new connections | {ok} ok, {failed} failed{(failed > 0 ? " " + JsonSerializer.Serialize(errorCounts) : "")}, of {total} |");
            Console.WriteLine($"| achieved rate | {ok / seconds:0} /s over {seconds:0} s (asked {rate}/s; {lateStarts} started > 100 ms late) |");
            Console.WriteLine($"| duration (connect, 1 KiB each way, close) | p50 {p50 / 1000.0:0.0} ms (mean of the senders' medians), p99 {p99 / 1000.0:0.0} ms (worst sender's), max {max / 1000.0:0.0} ms |");
            string Vcpu(double seconds) => $"{seconds / cpuWall:0.00} vCPU";
            Console.WriteLine($"| CPU while sending ({cpuWall:0} s, {Environment.ProcessorCount} CPUs) | node1 agent {Vcpu(cpu.Agent1)} ({cpu.Agent1 * 1000 / Math.Max(ok, 1):0.00} ms per connection), " +
                $"node2 agent {Vcpu(cpu.Agent2)} ({cpu.Agent2 * 1000 / Math.Max(ok, 1):0.00} ms), client pods (senders and holders) {Vcpu(cpu.Clients)}, server pod {Vcpu(cpu.Server)}, " +
                $"all {Vcpu(cpu.Agent1 + cpu.Agent2 + cpu.Clients + cpu.Server)} |");
            for (var i = 0; i < agents.Length; i++)
            {
                var perConnection = (held[i].RssKib - before[i].RssKib) / (double)Math.Max(open, 1);
                var perConnectionJustOpened = (justOpened[i].RssKib - before[i].RssKib) / (double)Math.Max(open, 1);
                Console.WriteLine($"| node{i + 1} agent RSS | before {Mib(before[i].RssKib)}, holding {Mib(held[i].RssKib)} ({perConnection:0.00} KiB per held connection; " +
                    $"{Mib(justOpened[i].RssKib)}, {perConnectionJustOpened:0.00} KiB, {Settle.TotalSeconds:0} s after the last opened), peak {Mib(peak[i].RssKib)}, after {Mib(after[i].RssKib)} " +
                    $"(anonymous {Mib(before[i].RssAnonKib)} before, {Mib(after[i].RssAnonKib)} after), once the tunnels closed {Mib(afterTunnels[i].RssKib)} " +
                    $"({(double)afterTunnels[i].RssKib / before[i].RssKib:0.00} × before; anonymous {Mib(afterTunnels[i].RssAnonKib)}) |");
                Console.WriteLine($"| node{i + 1} agent fds / threads | before {before[i].Fds} / {before[i].Threads}, peak {peak[i].Fds} / {peak[i].Threads}, after {after[i].Fds} / {after[i].Threads}, once the tunnels closed {afterTunnels[i].Fds} / {afterTunnels[i].Threads} |");
            }

            foreach (var node in new[] { "node1", "node2" })
            {
                // what the agents' heap trims cost and gave back (HeapTrim logs each)
                foreach (var line in mesh.Agent(node).StderrLines.Concat(mesh.Agent(node).StdoutLines).Where(l => l.Contains("heap trimmed", StringComparison.Ordinal)))
                {
                    Console.WriteLine($"  {node}: {line}");
                }
            }

            foreach (var line in failedLines.Take(5))
            {
                Console.WriteLine($"  failed: {line}");
            }

            Console.WriteLine($"load average after: {LoadAverage():0.00}");
            return failed == 0 && open == idle && closedByPeer == 0 ? 0 : 1;
        }
        finally
        {
            foreach (var process in senders.Concat(holds))
            {
                await process.DisposeAsync();
            }
        }
    }

    private readonly record struct LoadProgress(long Ok, long Failed, long InFlight, long Late);

    /// <summary>CPU seconds used so far by each agent, by the client pods' cgroups together and by the server pod's cgroup.</summary>
    private readonly record struct LoadCpu(double Agent1, double Agent2, double Clients, double Server)
    {
        public static LoadCpu Read(int[] agents, ClusterPod[] clients, ClusterPod server) =>
            new(ProcStatus.CpuSeconds(agents[0]), ProcStatus.CpuSeconds(agents[1]), clients.Sum(p => CgroupCpuSeconds(p.CgroupPath)), CgroupCpuSeconds(server.CgroupPath));

        public static LoadCpu operator -(LoadCpu a, LoadCpu b) => new(a.Agent1 - b.Agent1, a.Agent2 - b.Agent2, a.Clients - b.Clients, a.Server - b.Server);
    }

    /// <summary>The senders' latest progress lines added up.</summary>
    private static LoadProgress SenderProgress(IEnumerable<ManagedProcess> senders)
    {
        var sum = default(LoadProgress);
        foreach (var send in senders)
        {
            var line = send.StdoutLines.LastOrDefault(l => l.Contains("\"progress\"", StringComparison.Ordinal) || l.Contains("\"summary\"", StringComparison.Ordinal));
            if (line is null)
            {
                continue;
            }

            using var json = JsonDocument.Parse(line);
            var r = json.RootElement;
            sum = new LoadProgress(sum.Ok + r.GetProperty("ok").GetInt64(), sum.Failed + r.GetProperty("failed").GetInt64(),
                sum.InFlight + (r.TryGetProperty("in_flight", out var f) ? f.GetInt64() : 0), sum.Late + r.GetProperty("late_starts").GetInt64());
        }

        return sum;
    }
}
