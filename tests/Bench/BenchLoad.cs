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
        weft-bench --suite load [--minutes 5] [--idle-connections 10000] [--rate 1000]
          Load (issue 13): a 2-node mTLS cluster holds --idle-connections open while new connections of
          1 KiB each way arrive at --rate per second for --minutes. Prints failures, the achieved rate,
          durations p50/p99/max, and each agent's RSS, descriptors and threads before, at peak and after.
        """;

    private const int LoadPort = 8080;

    public static async Task<int> LoadAsync(CommandLine cl)
    {
        cl.Get("suite");
        var minutes = cl.Int("minutes", 5);
        var idle = cl.Int("idle-connections", 10_000);
        var rate = cl.Int("rate", 1000);
        cl.RejectUnknown();
        if (minutes < 1 || idle < 1 || rate < 1)
        {
            throw new UsageException("--minutes, --idle-connections and --rate must be at least 1");
        }

        // each held connection costs each agent two descriptors, each in-flight new one two more
        var limit = RaiseOpenFileLimit((ulong)idle * 2 + (ulong)rate * 2 + FdHeadroom);
        if (limit < (ulong)idle * 2 + FdHeadroom)
        {
            Log.Error("bench", $"the open file limit is {limit} and cannot be raised to hold {idle} connections; give fewer with --idle-connections");
            return 1;
        }

        using var stop = new BenchInterrupt("stopping, cleaning up");
        NetnsCluster.CleanupStale();

        Say($"load: {idle} idle connections held, {rate} new connections/s of 1 KiB each way for {minutes} min, through mTLS agents (load average before: {LoadAverage():0.00})");
        var spec = new ClusterSpec(
            new NodeSpec("node1", new PodSpec(Namespace, "client")),
            new NodeSpec("node2", new PodSpec(Namespace, "server")))
        {
            TeardownOnExit = false,
        };
        // One client pod holds every connection: the inbound limits that stop a hostile pod (derived from the
        // descriptor limit: per peer identity L/8, per source address L/16, per node L/2) would refuse most of
        // them, so this bench sets them to what it holds plus the new connections in flight.
        var inbound = (idle + (rate * 10) + 1000).ToString(CultureInfo.InvariantCulture);
        await using var mesh = await MeshCluster.StartAsync(spec, c => c.InventoryYaml(new InventoryOptions()), mtls: true, "--no-access-log",
            "--max-inbound-per-identity", inbound, "--max-inbound-per-address", inbound, "--max-inbound-per-node", inbound);
        var (client, server) = (mesh.Cluster.Pod(Namespace, "client"), mesh.Cluster.Pod(Namespace, "server"));
        var agents = new[] { mesh.Agent("node1").Pid, mesh.Agent("node2").Pid };
        await using var echo = MeshCluster.StartServer(server, "--port", LoadPort.ToString(CultureInfo.InvariantCulture), "--mode", "echo");
        await echo.WaitForStdoutLineAsync(l => l.Contains("listening", StringComparison.Ordinal), TimeSpan.FromSeconds(30)).WaitAsync(stop.Token);
        await Task.Delay(Settle, stop.Token);
        var before = agents.Select(ProcStatus.Read).ToArray();

        var (holdFile, holdArgs) = WeftExecutable.Command(["app", "hold", "--to", $"{server.Address}:{LoadPort}",
            "--connections", idle.ToString(CultureInfo.InvariantCulture), "--concurrency", "200", "--exchange-bytes", "1"]);
        await using var hold = client.StartProcess(holdFile, holdArgs, null);
        using var opened = JsonDocument.Parse(await hold.WaitForStdoutLineAsync(l => l.Contains("\"open\"", StringComparison.Ordinal), TimeSpan.FromMinutes(5)).WaitAsync(stop.Token));
        var open = opened.RootElement.GetProperty("open").GetInt32();
        Console.WriteLine($"  {open}/{idle} idle connections open in {opened.RootElement.GetProperty("elapsed_ms").GetInt64()} ms" +
            (open < idle ? $"; errors: {opened.RootElement.GetProperty("errors")}" : ""));
        await Task.Delay(Settle, stop.Token);
        var held = agents.Select(ProcStatus.Read).ToArray();

        var total = (long)rate * minutes * 60;
        var (sendFile, sendArgs) = WeftExecutable.Command(["app", "send", "--to", $"{server.Address}:{LoadPort}", "--bytes", "1024",
            "--expect-reply-bytes", "1024", "--connections", total.ToString(CultureInfo.InvariantCulture), "--rate", rate.ToString(CultureInfo.InvariantCulture),
            "--concurrency", Math.Max(64, rate / 2).ToString(CultureInfo.InvariantCulture), "--quiet", "1", "--timeout-ms", "30000"]);
        var peak = held.ToArray();
        var clock = Stopwatch.StartNew();
        await using (var send = client.StartProcess(sendFile, sendArgs, null))
        {
            while (!send.HasExited && !stop.IsCancellationRequested)
            {
                await Task.WhenAny(send.WaitForExitAsync(TimeSpan.FromSeconds(10)), Task.Delay(TimeSpan.FromSeconds(10), stop.Token));
                var now = agents.Select(ProcStatus.Read).ToArray();
                for (var i = 0; i < peak.Length; i++)
                {
                    // each figure's own maximum over the samples
                    peak[i] = new ProcStatus(now[i].Command, Math.Max(peak[i].RssKib, now[i].RssKib), Math.Max(peak[i].RssAnonKib, now[i].RssAnonKib),
                        Math.Max(peak[i].Threads, now[i].Threads), Math.Max(peak[i].Fds, now[i].Fds));
                }

                Console.WriteLine($"  {clock.Elapsed:mm\\:ss} agents: {string.Join("; ", now.Select((s, i) => $"node{i + 1} RSS {Mib(s.RssKib)}, {s.Fds} fds, {s.Threads} threads"))}");
            }

            stop.Token.ThrowIfCancellationRequested();
            var failedLines = send.StdoutLines.Where(l => !l.Contains("\"summary\"", StringComparison.Ordinal)).ToList();
            using var summary = JsonDocument.Parse(send.StdoutLines.Last(l => l.Contains("\"summary\"", StringComparison.Ordinal)));
            var s = summary.RootElement;
            var ok = s.GetProperty("ok").GetInt64();
            var failed = s.GetProperty("failed").GetInt64();
            var seconds = s.GetProperty("elapsed_ms").GetInt64() / 1000.0;

            hold.StandardInput.Close();
            await hold.WaitForExitAsync(TimeSpan.FromSeconds(60)).WaitAsync(stop.Token);
            using var holdSummary = JsonDocument.Parse(hold.StdoutLines.Last(l => l.Contains("\"summary\"", StringComparison.Ordinal)));
            var closedByPeer = holdSummary.RootElement.GetProperty("closed_by_peer").GetInt64();
            await Task.Delay(Settle, stop.Token);
            var after = agents.Select(ProcStatus.Read).ToArray();

            Console.WriteLine();
            Console.WriteLine($"| figure | value |");
            Console.WriteLine($"| --- | --- |");
            Console.WriteLine($"| idle connections held | {open}/{idle}, closed by the mesh while held: {closedByPeer} |");
            Console.WriteLine($"| new connections | {ok} ok, {failed} failed{(failed > 0 ? " " + s.GetProperty("errors") : "")}, of {total} |");
            Console.WriteLine($"| achieved rate | {ok / seconds:0} /s over {seconds:0} s (asked {rate}/s; {s.GetProperty("late_starts").GetInt64()} started > 100 ms late) |");
            Console.WriteLine($"| duration (connect, 1 KiB each way, close) | p50 {s.GetProperty("duration_p50_us").GetInt64() / 1000.0:0.0} ms, p99 {s.GetProperty("duration_p99_us").GetInt64() / 1000.0:0.0} ms, max {s.GetProperty("duration_max_us").GetInt64() / 1000.0:0.0} ms |");
            for (var i = 0; i < agents.Length; i++)
            {
                var perConnection = (held[i].RssKib - before[i].RssKib) / (double)Math.Max(open, 1);
                Console.WriteLine($"| node{i + 1} agent RSS | before {Mib(before[i].RssKib)}, holding {Mib(held[i].RssKib)} ({perConnection:0.00} KiB per held connection), peak {Mib(peak[i].RssKib)}, after {Mib(after[i].RssKib)} |");
                Console.WriteLine($"| node{i + 1} agent fds / threads | before {before[i].Fds} / {before[i].Threads}, peak {peak[i].Fds} / {peak[i].Threads}, after {after[i].Fds} / {after[i].Threads} |");
            }

            foreach (var line in failedLines.Take(5))
            {
                Console.WriteLine($"  failed: {line}");
            }

            Console.WriteLine($"load average after: {LoadAverage():0.00}");
            return failed == 0 && open == idle && closedByPeer == 0 ? 0 : 1;
        }
    }
}
