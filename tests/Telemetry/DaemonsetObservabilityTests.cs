using System.Text.Json;
using System.Text.RegularExpressions;
using Weft.Telemetry;
using static Weft.Tests.Telemetry.TelemetryFixtures;

namespace Weft.Tests.Telemetry;

/// <summary>The alert rules and the dashboard shipped in daemonset/ are valid and use metrics the agent exports.</summary>
public partial class DaemonsetObservabilityTests
{
    private static string Repo([System.Runtime.CompilerServices.CallerFilePath] string here = "") =>
        Path.GetFullPath(Path.Combine(Path.GetDirectoryName(here)!, "..", ".."));

    [GeneratedRegex(@"\b(istio_[a-z_]+|weft_[a-z_]+)")]
    private static partial Regex MetricName();

    private static async Task<HashSet<string>> ExportedNamesAsync()
    {
        var table = new FlowTable();
        var metrics = new MeshMetrics(table, Snapshot, processMetrics: false);
        var flow = Outbound();
        flow.ConnectTime = TimeSpan.FromMilliseconds(1);
        flow.TlsHandshakeTime = TimeSpan.FromMilliseconds(1);
        table.Opened(flow);
        table.Closed(flow);
        metrics.Health = () => new AgentHealth { Certificates = [("spiffe://cluster.local/ns/demo/sa/a", DateTimeOffset.UtcNow)] };
        var text = await metrics.RenderAsync();
        return text.Split('\n').Where(l => l.StartsWith("# TYPE ", StringComparison.Ordinal)).Select(l => l.Split(' ')[2]).ToHashSet();
    }

    private static bool Exported(HashSet<string> names, string name) =>
        names.Contains(name) || names.Contains(Regex.Replace(name, "_(bucket|count|sum)$", ""));

    [Fact]
    public async Task AlertRules_PassPromtoolCheckRules_AndUseExportedMetrics()
    {
        var files = Directory.GetFiles(Path.Combine(Repo(), "daemonset", "alerts"), "*.yaml");
        Assert.NotEmpty(files);
        var names = await ExportedNamesAsync();
        foreach (var file in files)
        {
            var (exit, output) = await PromtoolAsync("", ["check", "rules", file]);
            Assert.True(exit == 0, output);
            foreach (Match m in MetricName().Matches(File.ReadAllText(file)))
            {
                Assert.True(Exported(names, m.Value), $"{Path.GetFileName(file)} uses {m.Value}, which the agent does not export");
            }
        }

        var rules = File.ReadAllText(files[0]);
        foreach (var alert in new[] { "WeftAgentDown", "WeftCertificateExpiringSoon", "WeftTlsFailuresRising", "WeftPolicyDenialsSpiking", "WeftBpfAttachFailures" })
        {
            Assert.Contains($"alert: {alert}", rules);
        }
    }

    [Fact]
    public async Task Dashboard_IsGrafanaJson_WhosePanelsQueryExportedMetrics()
    {
        var file = Assert.Single(Directory.GetFiles(Path.Combine(Repo(), "daemonset", "dashboards"), "*.json"));
        using var doc = JsonDocument.Parse(File.ReadAllText(file));
        var names = await ExportedNamesAsync();
        var panels = doc.RootElement.GetProperty("panels").EnumerateArray().ToList();
        Assert.True(panels.Count >= 8);
        foreach (var panel in panels)
        {
            foreach (var target in panel.GetProperty("targets").EnumerateArray())
            {
                var expr = target.GetProperty("expr").GetString()!;
                var used = MetricName().Matches(expr).Select(m => m.Value).ToList();
                Assert.NotEmpty(used);
                Assert.All(used, name => Assert.True(Exported(names, name), $"panel '{panel.GetProperty("title")}' queries {name}, which the agent does not export"));
            }
        }
    }
}
