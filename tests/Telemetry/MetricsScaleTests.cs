using Weft.Bench;
using Weft.Telemetry;
using static Weft.Tests.Telemetry.TelemetryFixtures;

namespace Weft.Tests.Telemetry;

/// <summary>CPU-heavy metrics tests run alone, so they never starve timing-sensitive tests running beside them.</summary>
[CollectionDefinition(Name, DisableParallelization = true)]
public sealed class MetricsScaleCollection
{
    public const string Name = "metrics at scale";
}

[Collection(MetricsScaleCollection.Name)]
public class MetricsScaleTests
{
    private const string BytesFromClient = MeshMetricsTests.BytesFromClient;

    private static (FlowTable Table, MeshMetrics Metrics) NewMetrics() => MeshMetricsTests.NewMetrics();

    [Fact]
    public async Task TenThousandConnections_ProduceNoMoreSeriesThanWorkloadPairsTimesFlags()
    {
        var (table, metrics) = NewMetrics();
        string[] sources = ["demo/a1", "demo/b1", "demo/gone-pod"];
        string[] destinations = ["demo/b1", "demo/reviews-v1-7d9f8c6b5-x2k4q", "demo/reviews-v1-7d9f8c6b5-zz9zz"];
        string[] flags = ["-", "DENY", "UF", "TLS_FAILURE"];
        var random = new Random(5);
        var pairsSeen = new HashSet<string>();
        for (var i = 0; i < 10_000; i++)
        {
            var from = sources[random.Next(sources.Length)];
            var to = destinations[random.Next(destinations.Length)];
            var flow = Outbound(from, to, clientPort: 1024 + i);
            table.Opened(flow);
            flow.AddSent(random.Next(1, 100_000));
            if (i % 100 == 0)
            {
                await metrics.RenderAsync(); // scrapes while connections are open
            }

            flow.ResponseFlags = flags[random.Next(flags.Length)];
            table.Closed(flow);
            pairsSeen.Add($"{from}>{WorkloadNames.WorkloadName(to.Split('/')[1], new Dictionary<string, string> { ["pod-template-hash"] = "7d9f8c6b5" })}");
        }

        var text = await metrics.RenderAsync();
        // Two reviews-v1 pods are one workload: 3 sources x 2 destination workloads.
        Assert.Equal(6, pairsSeen.Count);
        var bound = pairsSeen.Count * flags.Length;
        var closed = SeriesOf(text, "istio_tcp_connections_closed_total");
        Assert.InRange(closed.Count, 1, bound);
        Assert.InRange(SeriesOf(text, BytesFromClient).Count, 1, bound);
        Assert.InRange(SeriesOf(text, "istio_tcp_connections_opened_total").Count, 1, bound);
        Assert.InRange(metrics.SeriesCount, 1, bound);
        Assert.Equal(10_000, closed.Sum(l => double.Parse(l[(l.LastIndexOf(' ') + 1)..], System.Globalization.CultureInfo.InvariantCulture)));
    }

    [Fact]
    public async Task RenderWithAThousandWorkloadPairs_ExportsOneSeriesPerPairAndDirection()
    {
        // How long a render takes is the benchmark's to say (weft-bench --suite metrics), not a test's:
        // a timed bound fails on a loaded machine and proves nothing on a quiet one.
        var result = await MetricsBenchmark.MeasureAsync(pairs: 1000, livePerPair: 2, closedPerPair: 2, rounds: 1);
        using var doc = System.Text.Json.JsonDocument.Parse(result);
        Assert.Equal(2000, doc.RootElement.GetProperty("series").GetInt32());
    }
}
