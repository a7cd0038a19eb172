using System.Net;
using System.Text.Json;
using Weft.Cli;
using Weft.Telemetry;

namespace Weft.Tests.Cli;

/// <summary>
/// The CLI's table and JSON output against golden files in tests/Cli/golden. A deliberate change of
/// format: run with WEFT_UPDATE_GOLDEN=1 once, review the diff, commit it.
/// </summary>
public class CliGoldenTests
{
    private static string Golden(string name, [System.Runtime.CompilerServices.CallerFilePath] string here = "") =>
        Path.Combine(Path.GetDirectoryName(here)!, "golden", name);

    private static void AssertGolden(string name, string actual)
    {
        var path = Golden(name);
        if (Environment.GetEnvironmentVariable("WEFT_UPDATE_GOLDEN") == "1")
        {
            File.WriteAllText(path, actual);
        }

        Assert.Equal(File.ReadAllText(path), actual);
    }

    [Fact]
    public void FlowsTable_MatchesGolden()
    {
        using var doc = JsonDocument.Parse(File.ReadAllText(Golden("flows.json")));
        AssertGolden("flows.table.txt", FlowsRendering.Table(FlowsRendering.Read(doc.RootElement)));
    }

    [Fact]
    public void FlowsJson_MatchesGolden_OneObjectPerLineWithEveryField()
    {
        using var doc = JsonDocument.Parse(File.ReadAllText(Golden("flows.json")));
        var text = FlowsRendering.JsonLines(FlowsRendering.Read(doc.RootElement));
        AssertGolden("flows.jsonl.txt", text);
        var lines = text.TrimEnd('\n').Split('\n');
        Assert.Equal(3, lines.Length);
        var live = JsonDocument.Parse(lines[2]).RootElement; // by start time: 40, 41, then live 42
        Assert.Equal(42, live.GetProperty("id").GetInt64());
        Assert.Equal(doc.RootElement.GetProperty("live")[0].EnumerateObject().Select(p => p.Name), live.EnumerateObject().Select(p => p.Name));
    }

    [Theory]
    [InlineData("workloads")]
    [InlineData("services")]
    [InlineData("policies")]
    [InlineData("certs")]
    public void ViewTables_MatchGolden(string view)
    {
        using var doc = JsonDocument.Parse(File.ReadAllText(Golden("views.json")));
        var items = doc.RootElement.GetProperty(view == "certs" ? "certificates" : view).EnumerateArray().ToList();
        AssertGolden($"{view}.table.txt", ViewsCommand.Table(view, items));
    }

    [Fact]
    public void FlowJson_CarriesEveryField_WhenTheFlowHasThemAll()
    {
        var flow = new Flow(FlowDirection.Outbound, new IPEndPoint(IPAddress.Parse("10.244.1.2"), 40000), new IPEndPoint(IPAddress.Parse("10.96.0.10"), 80))
        {
            SourceWorkload = "demo/a1",
            Destination = new IPEndPoint(IPAddress.Parse("10.244.2.2"), 8080),
            DestinationService = "demo/b",
            DestinationWorkload = "demo/b1",
            SourcePrincipal = "spiffe://cluster.local/ns/demo/sa/a",
            DestinationPrincipal = "spiffe://cluster.local/ns/demo/sa/b",
            SecurityPolicy = "mutual_tls",
            TraceParent = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
            ConnectTime = TimeSpan.FromMilliseconds(1),
            TlsHandshakeTime = TimeSpan.FromMilliseconds(2),
            ResponseFlags = "UF",
            Error = "connect 10.244.2.2:8080: ConnectionRefused",
        };
        flow.AddSent(10);
        flow.AddReceived(20);
        flow.Finish();

        var root = JsonDocument.Parse(FlowTable.ToJson(flow)).RootElement;
        string[] every =
        [
            "id", "direction", "state", "source", "source_workload", "original_destination", "destination", "destination_service",
            "destination_workload", "source_principal", "destination_principal", "connection_security_policy", "traceparent",
            "start", "end", "duration_ms", "connect_ms", "tls_handshake_ms", "bytes_sent", "bytes_received", "response_flags", "verdict", "error",
        ];
        Assert.Equal(every.Order(), root.EnumerateObject().Select(p => p.Name).Order());
        Assert.Equal("error", root.GetProperty("verdict").GetString());
        Assert.Equal(10, root.GetProperty("bytes_sent").GetInt64());
    }

    [Fact]
    public void AccessLog_TextLine_SaysWhoWhatAndHowMuch()
    {
        var flow = Weft.Tests.Telemetry.TelemetryFixtures.Outbound();
        flow.AddSent(5);
        flow.Finish();
        var line = FlowTable.ToText(flow);
        Assert.Matches("""^\[\d{4}-\d\d-\d\dT[\d:.]+Z\] "outbound" - forwarded 5 0 \d+ "demo/a1" 10\.244\.1\.2:40000 "demo/b1" 10\.244\.2\.2:8080 "demo/b" "spiffe://cluster.local/ns/demo/sa/a" "spiffe://cluster.local/ns/demo/sa/b" mutual_tls$""", line);
    }
}
