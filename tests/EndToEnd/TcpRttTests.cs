using System.Globalization;
using System.Text.RegularExpressions;
using Weft.Harness;

namespace Weft.Tests.EndToEnd;

/// <summary>The kernel's TCP round-trip time (TCP_INFO) of real connections through both agents.</summary>
[Trait(TestGroups.Trait, TestGroups.EndToEnd)]
[Collection(NetnsCollection.Name)]
public class TcpRttTests
{
    private static readonly TimeSpan Long = TimeSpan.FromMinutes(2);

    private static ClusterSpec Spec() => new(
        new NodeSpec("node1", new PodSpec("demo", "a1")),
        new NodeSpec("node2", new PodSpec("demo", "b1")));

    [PrivilegedTheory]
    [InlineData(false)]
    [InlineData(true)]
    public async Task ConnectionThroughAgents_RecordsPositiveTcpRtt_InAccessLogAndHistogram(bool mtls)
    {
        await using var mesh = await MeshCluster.StartAsync(Spec(), c => c.InventoryYaml(new InventoryOptions()), mtls, "--metrics", ":15020");
        var client = mesh.Cluster.Pod("demo", "a1");
        var server = mesh.Cluster.Pod("demo", "b1");
        await using var serve = await MeshCluster.StartServerAsync(server, "--port", "8080", "--reply-bytes", "65536");
        await Task.Delay(300);

        var run = await MeshCluster.RunPeerAsync(client, Long, "send", "--to", $"{server.Address}:8080", "--bytes", "65536", "--expect-reply-bytes", "65536");
        Assert.True(run.ExitCode == 0, run.ToString());

        foreach (var (node, direction, reporter) in new[] { ("node1", "outbound", "source"), ("node2", "inbound", "destination") })
        {
            var flow = await PodTrafficTests.WaitForFlowAsync(mesh.Agent(node), f => f.GetProperty("direction").GetString() == direction
                && f.GetProperty("destination_workload").GetString() == "demo/b1");
            Assert.True(flow.TryGetProperty("tcp_rtt_ms", out var rtt), $"{direction} flow has no tcp_rtt_ms: {flow}");
            Assert.InRange(rtt.GetDouble(), 0.000_001, 1000);

            var node0 = mesh.Cluster.Nodes.Single(n => n.Name == node);
            await using var curl = node0.StartProcess("curl", "-sS", "http://127.0.0.1:15020/metrics");
            Assert.Equal(0, await curl.WaitForExitAsync(TimeSpan.FromSeconds(30)));
            var count = Regex.Match(curl.Stdout, $@"^weft_tcp_rtt_seconds_count\{{reporter=""{reporter}""\}} (\S+)$", RegexOptions.Multiline);
            Assert.True(count.Success, $"no weft_tcp_rtt_seconds_count for {reporter} on {node}:\n{curl.Stdout}");
            Assert.True(double.Parse(count.Groups[1].Value, CultureInfo.InvariantCulture) >= 1, count.Value);
        }
    }
}
