using System.Globalization;
using System.Text.Json;
using System.Text.RegularExpressions;
using Weft.Harness;
using Xunit.Abstractions;

namespace Weft.Tests.EndToEnd;

/// <summary>
/// One pod talking to more remote pods than <c>--max-tunnels-per-pod</c> allows (2 here): its agent holds
/// at most that many tunnels, closes the least recently used idle one for each new peer, and refuses (UO)
/// only when every tunnel it holds is carrying a connection.
/// <code>
///  node1: a1 ──HBONE──► node2: b1 b2 b3 b4 (echo)
/// </code>
/// </summary>
[Trait(TestGroups.Trait, TestGroups.EndToEnd)]
[Collection(NetnsCollection.Name)]
public class TunnelPoolLimitTests(ITestOutputHelper output)
{
    private const int Cap = 2;

    private static ClusterSpec Spec() => new(
        new NodeSpec("node1", new PodSpec("demo", "a1")),
        new NodeSpec("node2", new PodSpec("demo", "b1"), new PodSpec("demo", "b2"), new PodSpec("demo", "b3"), new PodSpec("demo", "b4")));

    [PrivilegedFact]
    public async Task PodTalkingToMorePeersThanTheCap_HoldsAtMostCapTunnels_EvictsTheIdlest_AndRefusesOnlyWhenAllAreBusy()
    {
        await using var mesh = await MeshCluster.StartAsync(Spec(), c => c.InventoryYaml(), mtls: true,
            "--max-tunnels-per-pod", Cap.ToString(CultureInfo.InvariantCulture), "--metrics", ":15020");
        var a1 = mesh.Cluster.Pod("demo", "a1");
        var node1 = a1.Node;
        var agent = mesh.Agent("node1");
        var servers = new List<ManagedProcess>();
        try
        {
            foreach (var name in new[] { "b1", "b2", "b3", "b4" })
            {
                servers.Add(await MeshCluster.StartServerAsync(mesh.Cluster.Pod("demo", name), "--port", "8080", "--mode", "echo"));
            }

            // Five peers one after the other: b3, b4 and b1 again each find two idle tunnels and evict the idlest.
            var sent = 0;
            foreach (var name in new[] { "b1", "b2", "b3", "b4", "b1" })
            {
                await AssertEchoesAsync(a1, mesh.Cluster.Pod("demo", name));
                await WaitForOutboundFlowsAsync(agent, ++sent);
                var open = Value(await MetricsAsync(node1), "weft_hbone_tunnels_open");
                output.WriteLine($"after {name}: {open} tunnels open");
                Assert.True(open <= Cap, $"after {name} the agent holds {open} tunnels (cap {Cap})");
            }

            var metrics = await MetricsAsync(node1);
            Assert.Equal(Cap, Value(metrics, "weft_hbone_tunnels_open"));
            Assert.Equal(3, Value(metrics, "weft_hbone_tunnels_evicted_total"));
            Assert.Equal(0, Value(metrics, "weft_hbone_tunnels_refused_total"));

            // Both tunnels busy (b1's reused, b2's evicts b4's): a third peer is refused with UO, and says why.
            await using var holdB1 = await HoldAsync(a1, mesh.Cluster.Pod("demo", "b1"));
            await using var holdB2 = await HoldAsync(a1, mesh.Cluster.Pod("demo", "b2"));
            var b3 = mesh.Cluster.Pod("demo", "b3");
            var refused = await MeshCluster.RunPeerAsync(a1, TimeSpan.FromSeconds(30), "send", "--to", $"{b3.Address}:8080",
                "--bytes", "10000", "--expect-reply-bytes", "10000", "--timeout-ms", "10000");
            Assert.True(refused.ExitCode != 0, $"a connection past the cap with no idle tunnel went through: {refused}");
            var flow = await PodTrafficTests.WaitForFlowAsync(agent, f => f.GetProperty("response_flags").GetString() == "UO");
            output.WriteLine(flow.ToString());
            Assert.Equal($"{b3.Address}:8080", flow.GetProperty("destination").GetString());
            Assert.Contains("--max-tunnels-per-pod", flow.GetProperty("error").GetString(), StringComparison.Ordinal);
            metrics = await MetricsAsync(node1);
            Assert.Equal(Cap, Value(metrics, "weft_hbone_tunnels_open"));
            Assert.Equal(4, Value(metrics, "weft_hbone_tunnels_evicted_total"));
            Assert.Equal(1, Value(metrics, "weft_hbone_tunnels_refused_total"));

            // b2's held connection ends: its tunnel is idle again, and b3 gets through by evicting it.
            holdB2.Stop();
            Assert.Equal(0, await holdB2.WaitForExitAsync(TimeSpan.FromSeconds(30)));
            await WaitForOutboundFlowsAsync(agent, sent + 2);
            await AssertEchoesAsync(a1, b3);
            metrics = await MetricsAsync(node1);
            Assert.Equal(Cap, Value(metrics, "weft_hbone_tunnels_open"));
            Assert.Equal(5, Value(metrics, "weft_hbone_tunnels_evicted_total"));
            Assert.Equal(1, Value(metrics, "weft_hbone_tunnels_refused_total"));
            Assert.False(agent.HasExited, agent.Stderr);
        }
        finally
        {
            foreach (var server in servers)
            {
                await server.DisposeAsync();
            }
        }
    }

    private static async Task AssertEchoesAsync(ClusterPod client, ClusterPod server)
    {
        var run = await MeshCluster.RunPeerAsync(client, TimeSpan.FromSeconds(30), "send", "--to", $"{server.Address}:8080",
            "--bytes", "10000", "--expect-reply-bytes", "10000", "--timeout-ms", "10000");
        Assert.True(run.ExitCode == 0, $"{client.Name} → {server.Name}: {run}");
        Assert.Equal(Pattern.Sha256(10000), run.Connections[0].GetProperty("received_sha256").GetString());
    }

    /// <summary>One connection to <paramref name="server"/>, shown to work end to end, then held idle until stopped.</summary>
    private static async Task<ManagedProcess> HoldAsync(ClusterPod client, ClusterPod server)
    {
        var hold = client.StartWeft("app", "hold", "--to", $"{server.Address}:8080", "--connections", "1", "--exchange-bytes", "64", "--stdin", "ignore");
        var line = await hold.WaitForStdoutLineAsync(l => l.Contains("\"open\"", StringComparison.Ordinal), TimeSpan.FromSeconds(30));
        var report = JsonDocument.Parse(line).RootElement;
        Assert.True(report.GetProperty("open").GetInt32() == 1, $"holding a connection to {server.Name} failed: {line}");
        return hold;
    }

    /// <summary>Waits until the agent has recorded <paramref name="count"/> finished outbound connections (their tunnels' streams are closed).</summary>
    private static Task WaitForOutboundFlowsAsync(ManagedProcess agent, int count) =>
        CaptureScopeTests.WaitUntilAsync(() => MeshCluster.Flows(agent).Count(f => f.GetProperty("direction").GetString() == "outbound") >= count, seconds: 30);

    internal static async Task<string> MetricsAsync(ClusterNode node)
    {
        await using var curl = node.StartProcess("curl", "-sS", "--max-time", "10", "http://127.0.0.1:15020/metrics");
        Assert.Equal(0, await curl.WaitForExitAsync(TimeSpan.FromSeconds(30)));
        return curl.Stdout;
    }

    internal static double Value(string exposition, string name)
    {
        var match = Regex.Match(exposition, $"^{Regex.Escape(name)} (\\S+)$", RegexOptions.Multiline);
        Assert.True(match.Success, $"no {name} in /metrics:\n{exposition}");
        return double.Parse(match.Groups[1].Value, CultureInfo.InvariantCulture);
    }
}
