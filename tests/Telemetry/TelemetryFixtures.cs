using System.Diagnostics;
using System.Net;
using System.Text.RegularExpressions;
using Weft.Inventory;
using Weft.Telemetry;

namespace Weft.Tests.Telemetry;

/// <summary>A small inventory and flows between its pods, as the proxy would fill them in.</summary>
internal static partial class TelemetryFixtures
{
    public const string InventoryYaml = """
        apiVersion: v1
        kind: Namespace
        metadata: {name: demo, labels: {weft.dev/mesh: enabled}}
        ---
        apiVersion: v1
        kind: Pod
        metadata: {name: a1, namespace: demo, labels: {app: a}}
        spec: {nodeName: node1, serviceAccountName: a}
        status: {podIP: 10.244.1.2}
        ---
        apiVersion: v1
        kind: Pod
        metadata: {name: reviews-v1-7d9f8c6b5-x2k4q, namespace: demo, labels: {app: reviews, pod-template-hash: 7d9f8c6b5}}
        spec: {nodeName: node2, serviceAccountName: reviews}
        status: {podIP: 10.244.2.3}
        ---
        apiVersion: v1
        kind: Pod
        metadata: {name: reviews-v1-7d9f8c6b5-zz9zz, namespace: demo, labels: {app: reviews, pod-template-hash: 7d9f8c6b5}}
        spec: {nodeName: node2, serviceAccountName: reviews}
        status: {podIP: 10.244.2.4}
        ---
        apiVersion: v1
        kind: Pod
        metadata: {name: b1, namespace: demo, labels: {app: b}}
        spec: {nodeName: node2, serviceAccountName: b}
        status: {podIP: 10.244.2.2}
        ---
        apiVersion: v1
        kind: Service
        metadata: {name: b, namespace: demo}
        spec: {clusterIP: 10.96.0.10, ports: [{name: http, port: 80, targetPort: 8080, protocol: TCP}]}
        ---
        apiVersion: weft.dev/v1alpha1
        kind: AuthorizationPolicy
        metadata: {name: deny-x, namespace: demo}
        spec:
          selector: {matchLabels: {app: b}}
          action: DENY
          rules:
          - from: [{source: {principals: ["cluster.local/ns/other/sa/x"]}}]
        """;

    public static InventorySnapshot Snapshot()
    {
        var store = new InventoryStore();
        return store.Publish(InventoryBuilder.Build(Weft.Inventory.InventoryYaml.Load(InventoryYaml, "inventory.yaml")));
    }

    public static Flow Outbound(string from = "demo/a1", string to = "demo/b1", string? service = "demo/b", int clientPort = 40000)
    {
        return new Flow(FlowDirection.Outbound, new IPEndPoint(IPAddress.Parse("10.244.1.2"), clientPort), new IPEndPoint(IPAddress.Parse("10.96.0.10"), 80))
        {
            SourceWorkload = from,
            DestinationWorkload = to,
            DestinationService = service,
            Destination = new IPEndPoint(IPAddress.Parse("10.244.2.2"), 8080),
            SourcePrincipal = "spiffe://cluster.local/ns/demo/sa/a",
            DestinationPrincipal = "spiffe://cluster.local/ns/demo/sa/b",
            SecurityPolicy = "mutual_tls",
        };
    }

    /// <summary>The value of one sample line in an exposition, or null when there is none.</summary>
    public static double? Sample(string exposition, string metric, params (string Label, string Value)[] labels)
    {
        foreach (var line in exposition.Split('\n'))
        {
            if (!line.StartsWith(metric + "{", StringComparison.Ordinal))
            {
                continue;
            }

            if (labels.All(l => line.Contains($"{l.Label}=\"{l.Value}\"", StringComparison.Ordinal)))
            {
                return double.Parse(line[(line.LastIndexOf(' ') + 1)..], System.Globalization.CultureInfo.InvariantCulture);
            }
        }

        return null;
    }

    public static List<string> SeriesOf(string exposition, string metric) =>
        exposition.Split('\n').Where(l => l.StartsWith(metric + "{", StringComparison.Ordinal)).ToList();

    [GeneratedRegex(@"\d{1,3}\.\d{1,3}\.\d{1,3}\.\d{1,3}|:\d{2,5}""")]
    public static partial Regex AddressOrPort();

    /// <summary>Runs promtool with stdin; returns exit code and combined output.</summary>
    public static async Task<(int ExitCode, string Output)> PromtoolAsync(string stdin, params string[] args)
    {
        var start = new ProcessStartInfo("promtool", args)
        {
            RedirectStandardInput = true,
            RedirectStandardOutput = true,
            RedirectStandardError = true,
        };
        using var process = Process.Start(start)!;
        await process.StandardInput.WriteAsync(stdin);
        process.StandardInput.Close();
        var stdout = process.StandardOutput.ReadToEndAsync();
        var stderr = process.StandardError.ReadToEndAsync();
        await process.WaitForExitAsync();
        return (process.ExitCode, await stdout + await stderr);
    }
}
