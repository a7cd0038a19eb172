using Weft.Inventory;
using Weft.Telemetry;
using static Weft.Tests.Telemetry.TelemetryFixtures;

namespace Weft.Tests.Telemetry;

/// <summary>Pods come and go for as long as the agent runs: their metric series must go with them.</summary>
public class MetricsChurnTests
{
    private const string BytesFromClient = MeshMetricsTests.BytesFromClient;
    private const string Closed = "istio_tcp_connections_closed_total";

    [Fact]
    public async Task PodChurn_DoesNotGrowTheSeries_AndEachDepartedPodsFinalCountsAreScrapedBeforeItsSeriesGo()
    {
        var inventory = new ChurningInventory();
        var time = new ManualTime();
        var table = new FlowTable();
        var metrics = new MeshMetrics(table, () => inventory.Current, processMetrics: false, time: time);
        var counts = new List<int>();
        for (var round = 0; round < 20; round++)
        {
            inventory.Replace($"churn-{round}");
            var flow = Outbound(to: $"demo/churn-{round}", clientPort: 40000 + round);
            table.Opened(flow);
            flow.AddSent(100 + round);
            table.Closed(flow);

            var text = await metrics.RenderAsync();
            Assert.Equal(100 + round, Sample(text, BytesFromClient, ("destination_workload", $"churn-{round}")));
            Assert.Equal(1, Sample(text, Closed, ("destination_workload", $"churn-{round}")));
            time.Advance(MeshMetrics.DepartedSeriesRetention);
            counts.Add(metrics.SeriesCount);
        }

        // Without removal the count is the round number (20); with it, the pod in the inventory now and the one before.
        Assert.InRange(counts.Max(), 1, 2);
        var last = await metrics.RenderAsync();
        Assert.Null(Sample(last, BytesFromClient, ("destination_workload", "churn-0")));
        Assert.Equal(4, last.Split('\n').Count(l => l.StartsWith("istio_tcp_", StringComparison.Ordinal) && l.Contains("destination_workload=\"churn-", StringComparison.Ordinal)));
    }

    [Fact]
    public async Task SeriesOfADepartedPod_StayWhileAConnectionIsOpen_AndItsCloseIsCounted()
    {
        var inventory = new ChurningInventory();
        var time = new ManualTime();
        var table = new FlowTable();
        var metrics = new MeshMetrics(table, () => inventory.Current, processMetrics: false, time: time);
        inventory.Replace("churn-0");
        var open = Outbound(to: "demo/churn-0");
        table.Opened(open);
        open.AddSent(10);
        await metrics.RenderAsync();

        inventory.Replace("churn-1");
        time.Advance(MeshMetrics.DepartedSeriesRetention * 3);
        var during = await metrics.RenderAsync();
        Assert.Contains(SeriesOf(during, BytesFromClient), l => l.Contains("destination_workload=\"churn-0\"", StringComparison.Ordinal));

        open.AddSent(5);
        table.Closed(open);
        var after = await metrics.RenderAsync();
        Assert.Equal(5, Total(after, BytesFromClient, "churn-0"));
        Assert.Equal(1, Total(after, Closed, "churn-0"));

        time.Advance(MeshMetrics.DepartedSeriesRetention);
        var later = await metrics.RenderAsync();
        Assert.Equal(0, Total(later, Closed, "churn-0"));
    }

    /// <summary>
    /// The sum over the series of one destination. Once its pod left the inventory the labels derived for it
    /// change (its app label is no longer known), so an open connection's counts continue in a second series,
    /// and the first one, its final value scraped, goes.
    /// </summary>
    private static double Total(string exposition, string metric, string destinationWorkload) =>
        SeriesOf(exposition, metric).Where(l => l.Contains($"destination_workload=\"{destinationWorkload}\"", StringComparison.Ordinal))
            .Sum(l => double.Parse(l[(l.LastIndexOf(' ') + 1)..], System.Globalization.CultureInfo.InvariantCulture));

    [Fact]
    public async Task SeriesOfWorkloadsStillInTheInventory_StayThroughLongQuiet()
    {
        var inventory = new ChurningInventory();
        var time = new ManualTime();
        var table = new FlowTable();
        var metrics = new MeshMetrics(table, () => inventory.Current, processMetrics: false, time: time);
        inventory.Replace("churn-0");
        var flow = Outbound();
        table.Opened(flow);
        flow.AddSent(7);
        table.Closed(flow);
        await metrics.RenderAsync();

        time.Advance(TimeSpan.FromDays(2));
        inventory.Replace("churn-1");
        var text = await metrics.RenderAsync();
        Assert.Equal(7, Sample(text, BytesFromClient, ("source_workload", "a1"), ("destination_workload", "b1")));
    }

    /// <summary>The fixture's inventory plus one bare pod on node2 that a new one replaces each time.</summary>
    private sealed class ChurningInventory
    {
        private readonly InventoryStore _store = new();

        public InventorySnapshot? Current { get; private set; }

        public void Replace(string pod) => Current = _store.Publish(InventoryBuilder.Build(Weft.Inventory.InventoryYaml.Load(TelemetryFixtures.InventoryYaml + $"""

            ---
            apiVersion: v1
            kind: Pod
            metadata: {"{"}name: {pod}, namespace: demo, labels: {"{"}app: churn{"}}"}
            spec: {"{"}nodeName: node2, serviceAccountName: b{"}"}
            status: {"{"}podIP: 10.244.2.9{"}"}
            """, "inventory.yaml")));
    }

    private sealed class ManualTime : TimeProvider
    {
        private DateTimeOffset _now = new(2026, 1, 1, 0, 0, 0, TimeSpan.Zero);

        public override DateTimeOffset GetUtcNow() => _now;

        public void Advance(TimeSpan by) => _now += by;
    }
}
