using System.Diagnostics;
using System.Text.Json;
using Weft.Harness;
using Xunit.Abstractions;

namespace Weft.Tests.EndToEnd;

/// <summary>
/// Cross-node mTLS traffic over a broken underlay: transfers stay byte-identical under packet loss, and a
/// node cut off the network is noticed by the tunnel keepalive, its streams end with a response flag,
/// and traffic finds a fresh tunnel once the node is back (docs/faults.md).
/// </summary>
[Trait(TestGroups.Trait, TestGroups.EndToEnd)]
[Collection(NetnsCollection.Name)]
public class NetworkFaultTests(ITestOutputHelper output)
{
    private const long Transfer = 16L * 1024 * 1024;
    private static readonly TimeSpan Long = TimeSpan.FromMinutes(3);

    // Short keepalive for the blackhole test: a dead tunnel is found within Keepalive + KeepaliveTimeout.
    private const int Keepalive = 2;
    private const int KeepaliveTimeout = 3;

    // What a loaded 2-core machine adds to that (scheduling, the relay noticing, the record being written).
    private static readonly TimeSpan Margin = TimeSpan.FromSeconds(10);

    private static ClusterSpec Spec() => new(
        new NodeSpec("node1", new PodSpec("demo", "a1")),
        new NodeSpec("node2", new PodSpec("demo", "b1")));

    private static string Inventory(NetnsCluster c) => c.InventoryYaml();

    [PrivilegedFact]
    public async Task TwoPercentLoss_BothWays_SixteenMiBEachWayArriveIntact_AndRequestResponseCompletes()
    {
        await using var mesh = await MeshCluster.StartAsync(Spec(), Inventory, mtls: true);
        var (client, server) = (mesh.Cluster.Pod("demo", "a1"), mesh.Cluster.Pod("demo", "b1"));
        await using var serve = await MeshCluster.StartServerAsync(server, "--port", "8080", "--reply-bytes", Transfer.ToString());
        await using var echo = await MeshCluster.StartServerAsync(server, "--port", "8081", "--mode", "echo");
        foreach (var node in mesh.Cluster.Nodes)
        {
            UnderlayFaults.Loss(node, percent: 2);
        }

        await AssertIntactTransferAsync(mesh, client, server, serve);
        var rr = await MeshCluster.RunPeerAsync(client, Long, "rr", "--to", $"{server.Address}:8081", "--size", "4096", "--count", "300", "--warmup", "10");
        Assert.True(rr.ExitCode == 0, rr.ToString());
        output.WriteLine($"request/response under loss: {rr.Connections[0]}");

        var dropped = mesh.Cluster.Nodes.Sum(UnderlayFaults.Dropped);
        output.WriteLine($"packets dropped on the underlay: {dropped}");
        Assert.True(dropped > 20, $"only {dropped} packets were dropped: the loss rule saw no traffic");
        Assert.False(mesh.Agent("node1").HasExited, mesh.Agent("node1").Stderr);
        Assert.False(mesh.Agent("node2").HasExited, mesh.Agent("node2").Stderr);
    }

    [PrivilegedFact]
    public async Task FiftyMsDelayAndReordering_BothWays_SixteenMiBEachWayArriveIntact_AndEachRoundTripTakesTheDelay()
    {
        await using var mesh = await MeshCluster.StartAsync(Spec(), Inventory, mtls: true);
        var (client, server) = (mesh.Cluster.Pod("demo", "a1"), mesh.Cluster.Pod("demo", "b1"));
        await using var serve = await MeshCluster.StartServerAsync(server, "--port", "8080", "--reply-bytes", Transfer.ToString());
        await using var echo = await MeshCluster.StartServerAsync(server, "--port", "8081", "--mode", "echo");
        var delays = new List<(ClusterNode Node, ManagedProcess Delay)>();
        foreach (var node in mesh.Cluster.Nodes)
        {
            delays.Add((node, await UnderlayFaults.DelayAsync(node, delayMs: 50, reorderPercent: 5)));
        }

        await AssertIntactTransferAsync(mesh, client, server, serve);
        var rr = await MeshCluster.RunPeerAsync(client, Long, "rr", "--to", $"{server.Address}:8081", "--size", "4096", "--count", "50", "--warmup", "3");
        Assert.True(rr.ExitCode == 0, rr.ToString());
        output.WriteLine($"request/response with 50 ms each way: {rr.Connections[0]}");
        // 50 ms on each node's way out: no round trip through the tunnel can take less than 100 ms
        Assert.True(rr.Connections[0].GetProperty("p50_us").GetDouble() >= 100_000, rr.ToString());

        foreach (var (node, delay) in delays)
        {
            var (packets, reordered) = await UnderlayFaults.StopDelayAsync(node, delay);
            output.WriteLine($"{node.Name}: {packets} packets delayed, {reordered} of them reordered");
            Assert.True(packets > 1000 && reordered > 10, $"{node.Name}: {packets} packets delayed, {reordered} reordered: the delay saw no traffic");
        }

        Assert.False(mesh.Agent("node1").HasExited, mesh.Agent("node1").Stderr);
        Assert.False(mesh.Agent("node2").HasExited, mesh.Agent("node2").Stderr);
    }

    [PrivilegedFact]
    public async Task TenSecondBlackhole_KeepaliveEndsTheTunnel_StreamsEndFlaggedOnBothSides_ThenAFreshTunnelCarriesNewConnections()
    {
        await using var mesh = await MeshCluster.StartAsync(Spec(), Inventory, mtls: true,
            "--tunnel-keepalive-seconds", Keepalive.ToString(), "--tunnel-keepalive-timeout-seconds", KeepaliveTimeout.ToString());
        var (client, server) = (mesh.Cluster.Pod("demo", "a1"), mesh.Cluster.Pod("demo", "b1"));
        var node2 = mesh.Cluster.Node("node2");
        await using var serve = await MeshCluster.StartServerAsync(server, "--port", "8080", "--reply-bytes", "0");

        // A transfer far larger than the machine moves in the time it runs, with a timeout far beyond the bound.
        const int senderTimeoutMs = 180_000;
        await using var sender = client.StartWeft("app", "send", "--to", $"{server.Address}:8080", "--bytes", (64L << 30).ToString(),
            "--timeout-ms", senderTimeoutMs.ToString());
        // Long enough for the tunnel to open and bytes to flow on a loaded machine.
        await Task.Delay(3000);
        Assert.False(sender.HasExited, $"the transfer ended before the blackhole: {sender.Stdout}\n{sender.Stderr}");

        var bound = TimeSpan.FromSeconds(Keepalive + KeepaliveTimeout) + Margin;
        var cut = DateTimeOffset.UtcNow;
        UnderlayFaults.Blackhole(mesh.Cluster, node2, on: true);
        var back = Task.Run(async () =>
        {
            await Task.Delay(TimeSpan.FromSeconds(10));
            UnderlayFaults.Blackhole(mesh.Cluster, node2, on: false);
        });
        int exit;
        try
        {
            // Far below the sender's own timeout: the dead tunnel, not the app, must end the connection.
            exit = await sender.WaitForExitAsync(bound);
        }
        finally
        {
            await back;
        }

        var result = JsonDocument.Parse(sender.StdoutLines.First(l => l.StartsWith('{'))).RootElement;
        output.WriteLine($"sender: exit {exit}, {result}");
        Assert.NotEqual(0, exit);
        Assert.False(result.GetProperty("error").ValueKind == JsonValueKind.Null, result.ToString());

        var outbound = await PodTrafficTests.WaitForFlowAsync(mesh.Agent("node1"), f => f.GetProperty("direction").GetString() == "outbound");
        var inbound = await PodTrafficTests.WaitForFlowAsync(mesh.Agent("node2"), f => f.GetProperty("direction").GetString() == "inbound");
        var outboundEnded = DateTimeOffset.Parse(outbound.GetProperty("end").GetString()!, System.Globalization.CultureInfo.InvariantCulture) - cut;
        var inboundEnded = DateTimeOffset.Parse(inbound.GetProperty("end").GetString()!, System.Globalization.CultureInfo.InvariantCulture) - cut;
        output.WriteLine($"outbound flow ended {outboundEnded.TotalSeconds:0.0} s after the cut: {outbound}");
        output.WriteLine($"inbound flow ended {inboundEnded.TotalSeconds:0.0} s after the cut: {inbound}");
        Assert.Equal("UC", outbound.GetProperty("response_flags").GetString());
        Assert.Contains("keepalive", outbound.GetProperty("error").GetString());
        Assert.Equal("DC", inbound.GetProperty("response_flags").GetString());
        Assert.Contains("keepalive", inbound.GetProperty("error").GetString());
        Assert.True(outboundEnded < bound, $"the client's side noticed the dead tunnel only {outboundEnded.TotalSeconds:0.0} s after the cut (bound {bound.TotalSeconds} s)");
        Assert.True(inboundEnded < bound, $"the server's side noticed the dead tunnel only {inboundEnded.TotalSeconds:0.0} s after the cut (bound {bound.TotalSeconds} s)");

        // Back on the network: new connections get a fresh tunnel (a new TLS handshake) and carry bytes intact.
        await using var replying = await MeshCluster.StartServerAsync(server, "--port", "8081", "--reply-bytes", "1048576");
        var flowsBefore = MeshCluster.Flows(mesh.Agent("node1")).Count;
        PeerRun? after = null;
        var deadline = DateTime.UtcNow + TimeSpan.FromSeconds(60);
        while (DateTime.UtcNow < deadline)
        {
            after = await MeshCluster.RunPeerAsync(client, Long, "send", "--to", $"{server.Address}:8081", "--bytes", "1048576",
                "--expect-reply-bytes", "1048576", "--timeout-ms", "10000");
            if (after.ExitCode == 0)
            {
                break;
            }

            await Task.Delay(1000);
        }

        Assert.True(after?.ExitCode == 0, $"no connection got through after the node came back: {after}");
        var fresh = MeshCluster.Flows(mesh.Agent("node1")).Skip(flowsBefore).Last(f => f.GetProperty("direction").GetString() == "outbound");
        output.WriteLine($"after the blackhole: {fresh}");
        Assert.Equal("-", fresh.GetProperty("response_flags").GetString());
        Assert.True(fresh.TryGetProperty("tls_handshake_ms", out _), $"the connection after the blackhole rode an old tunnel: {fresh}");
        Assert.False(mesh.Agent("node1").HasExited, mesh.Agent("node1").Stderr);
        Assert.False(mesh.Agent("node2").HasExited, mesh.Agent("node2").Stderr);
    }

    /// <summary>16 MiB from client to server and 16 MiB back on one connection, both hashes checked.</summary>
    private async Task AssertIntactTransferAsync(MeshCluster mesh, ClusterPod client, ClusterPod server, ManagedProcess serve)
    {
        var clock = Stopwatch.StartNew();
        var run = await MeshCluster.RunPeerAsync(client, Long, "send", "--to", $"{server.Address}:8080",
            "--bytes", Transfer.ToString(), "--expect-reply-bytes", Transfer.ToString(), "--timeout-ms", "150000");
        output.WriteLine($"16 MiB each way in {clock.Elapsed.TotalSeconds:0.0} s: {run}");
        Assert.True(run.ExitCode == 0, run.ToString());
        Assert.Equal(Pattern.Sha256(Transfer), run.Connections[0].GetProperty("received_sha256").GetString());
        var served = await serve.WaitForStdoutLineAsync(l => l.Contains("sha256", StringComparison.Ordinal), TimeSpan.FromSeconds(30));
        var line = JsonDocument.Parse(served).RootElement;
        Assert.Equal(Transfer, line.GetProperty("received").GetInt64());
        Assert.Equal(Pattern.Sha256(Transfer), line.GetProperty("sha256").GetString());
        var inbound = await PodTrafficTests.WaitForFlowAsync(mesh.Agent("node2"), f => f.GetProperty("direction").GetString() == "inbound");
        Assert.Equal("mutual_tls", inbound.GetProperty("connection_security_policy").GetString());
    }
}
