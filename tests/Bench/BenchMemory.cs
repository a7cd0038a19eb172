using System.Globalization;
using System.Text.Json;
using System.Text.Json.Nodes;
using Weft.Cli;
using Weft.Harness;

namespace Weft.Bench;

internal static partial class BenchCommand
{
    private sealed partial class Bench
    {
        private async Task<JsonObject> MemoryAsync(ProcStatus[] fresh, int connections)
        {
            Say($"agent memory: RSS idle, then with {connections} idle connections client-mesh -> server-mesh held open (weft-kit app hold)");
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
                _memoryLines.Add($"{node} plaintext agent memory per idle connection: {perConnection:0.00} KiB (RSS {Mib(idle[i].RssKib)} -> {Mib(loaded[i].RssKib)})");
                if (PlaintextSuite)
                {
                    _targets.Add(new TargetLine("#2", $"{node} agent memory per idle connection <= {KibPerIdleConnectionTarget:0} KiB", $"{perConnection:0.00} KiB",
                        perConnection <= KibPerIdleConnectionTarget));
                }

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

    }
}
