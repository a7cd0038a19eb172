using Weft.Telemetry;
using static Weft.Tests.Telemetry.TelemetryFixtures;

namespace Weft.Tests.Telemetry;

public class MeshMetricsTests
{
    internal const string BytesFromClient = "istio_tcp_received_bytes_total";
    private const string BytesToClient = "istio_tcp_sent_bytes_total";

    internal static (FlowTable Table, MeshMetrics Metrics) NewMetrics()
    {
        var snapshot = Snapshot();
        var table = new FlowTable();
        return (table, new MeshMetrics(table, () => snapshot, processMetrics: false));
    }

    /// <summary>
    /// A process-wide HBONE counter, counted once more by <paramref name="count"/>, shows in a scrape as at least what it
    /// counted: other tests in this process may count too.
    /// </summary>
    internal static async Task AssertProcessCounterExportedAsync(string metric, Action count, Func<long> counted)
    {
        var (_, metrics) = NewMetrics();
        count();
        long total = counted();

        string scrape = await metrics.RenderAsync();

        string line = scrape.Split('\n').Single(l => l.StartsWith(metric + " ", StringComparison.Ordinal));
        double exported = double.Parse(line[(line.LastIndexOf(' ') + 1)..], System.Globalization.CultureInfo.InvariantCulture);
        Assert.True(exported >= total, $"{metric}: exported {exported}, counted {total}");
    }

    [Fact]
    public async Task Bytes_ShowInTheNextScrapeWhileTheConnectionIsOpen_AndAreCountedOnceInTotal()
    {
        var (table, metrics) = NewMetrics();
        var flow = Outbound();
        table.Opened(flow);
        flow.AddSent(1000);
        flow.AddReceived(10);

        var first = await metrics.RenderAsync();
        Assert.Equal(1000, Sample(first, BytesFromClient, ("source_workload", "a1"), ("destination_workload", "b1")));
        Assert.Equal(10, Sample(first, BytesToClient, ("source_workload", "a1")));
        Assert.Equal(1, Sample(first, "istio_tcp_connections_opened_total", ("source_workload", "a1")));
        Assert.True(Sample(first, "istio_tcp_connections_closed_total", ("source_workload", "a1")) is null or 0);

        flow.AddSent(500);
        var second = await metrics.RenderAsync();
        Assert.Equal(1500, Sample(second, BytesFromClient, ("source_workload", "a1")));

        flow.AddSent(25);
        flow.AddReceived(5);
        table.Closed(flow);
        var last = await metrics.RenderAsync();
        Assert.Equal(1525, Sample(last, BytesFromClient, ("source_workload", "a1")));
        Assert.Equal(15, Sample(last, BytesToClient, ("source_workload", "a1")));
        Assert.Equal(1, Sample(last, "istio_tcp_connections_opened_total", ("source_workload", "a1")));
        Assert.Equal(1, Sample(last, "istio_tcp_connections_closed_total", ("source_workload", "a1")));
    }

    [Fact]
    public async Task AFinishedFlow_KeepsNoMeterOfItsOwn_AndASecondCloseCountsNothing()
    {
        var (table, metrics) = NewMetrics();
        var flow = Outbound();
        table.Opened(flow);
        flow.AddSent(100);
        var live = flow.Meter;
        Assert.NotSame(MeshMetrics.FlowMeter.Finished, live);

        table.Closed(flow);
        Assert.Same(MeshMetrics.FlowMeter.Finished, flow.Meter);
        Assert.True(live.Closed);   // a scrape that took the meter before the close skips the flow
        flow.AddSent(50);
        metrics.Closed(flow);

        var text = await metrics.RenderAsync();
        Assert.Equal(100, Sample(text, BytesFromClient, ("source_workload", "a1")));
        Assert.Equal(1, Sample(text, "istio_tcp_connections_closed_total", ("source_workload", "a1")));
        Assert.Same(flow, Assert.Single(table.Recent()));
    }

    [Fact]
    public async Task Labels_AreIstios_WithWorkloadNamesPrincipalsAndService_NeverAddresses()
    {
        var (table, metrics) = NewMetrics();
        var flow = Outbound(to: "demo/reviews-v1-7d9f8c6b5-x2k4q");
        table.Opened(flow);
        flow.AddSent(1);
        table.Closed(flow);

        var text = await metrics.RenderAsync();
        var line = Assert.Single(SeriesOf(text, "istio_tcp_connections_closed_total"));
        foreach (var label in MeshMetrics.IstioLabels)
        {
            Assert.Contains($"{label}=\"", line);
        }

        Assert.Contains("reporter=\"source\"", line);
        Assert.Contains("source_workload=\"a1\"", line);
        Assert.Contains("source_workload_namespace=\"demo\"", line);
        Assert.Contains("source_principal=\"spiffe://cluster.local/ns/demo/sa/a\"", line);
        Assert.Contains("destination_workload=\"reviews-v1\"", line); // the Deployment, not the pod
        Assert.Contains("destination_canonical_service=\"reviews\"", line);
        Assert.Contains("destination_service=\"b.demo.svc.cluster.local\"", line);
        Assert.Contains("destination_service_name=\"b\"", line);
        Assert.Contains("request_protocol=\"tcp\"", line);
        Assert.Contains("response_flags=\"-\"", line);
        Assert.Contains("connection_security_policy=\"mutual_tls\"", line);
        foreach (var series in text.Split('\n').Where(l => l.StartsWith("istio_", StringComparison.Ordinal)))
        {
            Assert.DoesNotMatch(AddressOrPort(), series);
        }
    }

    [Fact]
    public async Task InboundFlow_IsReportedByTheDestination()
    {
        var (table, metrics) = NewMetrics();
        var flow = new Flow(FlowDirection.Inbound, new System.Net.IPEndPoint(System.Net.IPAddress.Parse("10.244.1.2"), 4000), new System.Net.IPEndPoint(System.Net.IPAddress.Parse("10.244.2.2"), 8080))
        {
            SourceWorkload = "demo/a1",
            DestinationWorkload = "demo/b1",
            ResponseFlags = "DENY",
        };
        table.Opened(flow);
        table.Closed(flow);

        var text = await metrics.RenderAsync();
        Assert.Equal(1, Sample(text, "istio_tcp_connections_closed_total", ("reporter", "destination"), ("response_flags", "DENY"), ("source_principal", "unknown")));
    }

    [Fact]
    public async Task HealthGauges_ShowEnrolledPodsCaptureInventoryAndCertificateExpiry_AndDropGoneCertificates()
    {
        var (table, metrics) = NewMetrics();
        var notAfter = DateTimeOffset.UtcNow.AddHours(3);
        var certificates = new List<(string, DateTimeOffset)> { ("spiffe://cluster.local/ns/demo/sa/a", notAfter), ("spiffe://cluster.local/ns/demo/sa/old", notAfter) };
        metrics.Health = () => new AgentHealth { EnrolledPods = 2, CaptureAttached = true, PinnedObjects = 7, Certificates = certificates.ToList() };
        metrics.EnrollFailed();

        var text = await metrics.RenderAsync();
        Assert.Contains("weft_enrolled_pods 2", text);
        Assert.Contains("weft_bpf_capture_up 1", text);
        Assert.Contains("weft_bpf_pinned_objects 7", text);
        Assert.Contains("weft_pod_enroll_failures_total 1", text);
        Assert.Contains("weft_inventory_version 1", text);
        Assert.Matches(@"weft_inventory_sync_age_seconds \d", text);
        Assert.Equal(notAfter.ToUnixTimeSeconds(), Sample(text, "weft_certificate_expiry_timestamp_seconds", ("principal", "spiffe://cluster.local/ns/demo/sa/a")));

        certificates.RemoveAt(1);
        var later = await metrics.RenderAsync();
        Assert.Null(Sample(later, "weft_certificate_expiry_timestamp_seconds", ("principal", "spiffe://cluster.local/ns/demo/sa/old")));
    }

    [Fact]
    public async Task Histograms_RecordDurationConnectAndTlsHandshake()
    {
        var (table, metrics) = NewMetrics();
        var flow = Outbound();
        flow.ConnectTime = TimeSpan.FromMilliseconds(2);
        flow.TlsHandshakeTime = TimeSpan.FromMilliseconds(4);
        table.Opened(flow);
        table.Closed(flow);

        var text = await metrics.RenderAsync();
        Assert.Contains("weft_tcp_connection_duration_seconds_count{reporter=\"source\",response_flags=\"-\"} 1", text);
        Assert.Contains("weft_upstream_connect_seconds_count{reporter=\"source\"} 1", text);
        Assert.Contains("weft_tls_handshake_seconds_count{reporter=\"source\"} 1", text);
    }

    [Fact]
    public async Task Exposition_PassesPromtoolCheckMetrics()
    {
        var snapshot = Snapshot();
        var table = new FlowTable();
        var metrics = new MeshMetrics(table, () => snapshot);
        var open = Outbound();
        table.Opened(open);
        open.AddSent(100);
        var closed = Outbound(to: "demo/reviews-v1-7d9f8c6b5-x2k4q");
        closed.ConnectTime = TimeSpan.FromMilliseconds(1);
        table.Opened(closed);
        table.Closed(closed);
        metrics.Health = () => new AgentHealth { EnrolledPods = 1, Certificates = [("spiffe://cluster.local/ns/demo/sa/a", DateTimeOffset.UtcNow.AddHours(12))] };

        var text = await metrics.RenderAsync();
        var (exit, output) = await PromtoolAsync(text, "check", "metrics");
        Assert.True(exit == 0, output);
    }

    [Fact]
    public void WorkloadName_StripsDeploymentAndStatefulSetSuffixes_AndKeepsBarePods()
    {
        Assert.Equal("reviews-v1", WorkloadNames.WorkloadName("reviews-v1-7d9f8c6b5-x2k4q", new Dictionary<string, string> { ["pod-template-hash"] = "7d9f8c6b5" }));
        Assert.Equal("db", WorkloadNames.WorkloadName("db-2", new Dictionary<string, string> { ["statefulset.kubernetes.io/pod-name"] = "db-2" }));
        Assert.Equal("a1", WorkloadNames.WorkloadName("a1", new Dictionary<string, string>()));
        Assert.Equal("web-abc", WorkloadNames.WorkloadName("web-abc", new Dictionary<string, string> { ["pod-template-hash"] = "zzz" }));
    }
}
