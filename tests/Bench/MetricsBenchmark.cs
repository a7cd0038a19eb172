using System.Diagnostics;
using System.Globalization;
using System.Net;
using Weft.Cli;
using Weft.Telemetry;

namespace Weft.Bench;

/// <summary>
/// <c>weft-bench render-metrics</c>: how long one /metrics render takes with many workload pairs and live
/// flows, the work a scrape adds to an agent (the data path only ever does Interlocked.Add per read).
/// </summary>
internal static class MetricsBenchmark
{
    public const string Usage = """
        weft-bench render-metrics [--pairs 1000] [--live-per-pair 2] [--closed-per-pair 5] [--rounds 50]
          Times rendering /metrics with that many workload pairs (each with live flows moving bytes
          between renders, and closed ones); prints JSON with the median and worst render.
        """;

    public static async Task<int> RunAsync(CommandLine cl)
    {
        var pairs = cl.Int("pairs", 1000);
        var livePerPair = cl.Int("live-per-pair", 2);
        var closedPerPair = cl.Int("closed-per-pair", 5);
        var rounds = cl.Int("rounds", 50);
        cl.RejectUnknown();

        var result = await MeasureAsync(pairs, livePerPair, closedPerPair, rounds).ConfigureAwait(false);
        Console.WriteLine(result);
        return 0;
    }

    internal static async Task<string> MeasureAsync(int pairs, int livePerPair, int closedPerPair, int rounds)
    {
        var table = new FlowTable(recentCapacity: 1024);
        var metrics = new MeshMetrics(table, () => null, processMetrics: false);
        var live = new List<Flow>();
        var source = new IPEndPoint(IPAddress.Parse("10.244.1.2"), 40000);
        var destination = new IPEndPoint(IPAddress.Parse("10.244.2.2"), 8080);
        for (var p = 0; p < pairs; p++)
        {
            for (var i = 0; i < livePerPair + closedPerPair; i++)
            {
                var flow = new Flow(i % 2 == 0 ? FlowDirection.Outbound : FlowDirection.Inbound, source, destination)
                {
                    SourceWorkload = $"ns{p % 10}/client-{p}",
                    DestinationWorkload = $"ns{p % 7}/server-{p}",
                    DestinationService = $"ns{p % 7}/svc-{p}",
                    SourcePrincipal = $"spiffe://cluster.local/ns/ns{p % 10}/sa/client-{p}",
                    DestinationPrincipal = $"spiffe://cluster.local/ns/ns{p % 7}/sa/server-{p}",
                    SecurityPolicy = "mutual_tls",
                    ConnectTime = TimeSpan.FromMilliseconds(1),
                    TlsHandshakeTime = TimeSpan.FromMilliseconds(3),
                };
                table.Opened(flow);
                flow.AddSent(1000);
                flow.AddReceived(2000);
                if (i < livePerPair)
                {
                    live.Add(flow);
                }
                else
                {
                    table.Closed(flow);
                }
            }
        }

        await metrics.RenderAsync().ConfigureAwait(false); // warm up: first render creates the series
        var times = new List<double>();
        var size = 0;
        for (var r = 0; r < rounds; r++)
        {
            foreach (var flow in live)
            {
                flow.AddSent(4096);
                flow.AddReceived(8192);
            }

            var watch = Stopwatch.StartNew();
            var text = await metrics.RenderAsync().ConfigureAwait(false);
            times.Add(watch.Elapsed.TotalMilliseconds);
            size = text.Length;
        }

        times.Sort();
        return string.Create(CultureInfo.InvariantCulture,
            $"{{\"pairs\":{pairs},\"live_flows\":{live.Count},\"series\":{metrics.SeriesCount},\"bytes\":{size},\"rounds\":{rounds},\"median_ms\":{times[times.Count / 2]:0.00},\"max_ms\":{times[^1]:0.00}}}");
    }
}
