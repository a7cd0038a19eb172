using System.Text.Json;
using Weft.Harness;

namespace Weft.Tests.EndToEnd;

/// <summary>
/// IPv6 end to end: every pod of the netns cluster is dual-stack (fd00:244:NODE::HOST), and IPv6 traffic is
/// captured, tunnelled, balanced and authorized like IPv4.
/// <code>
///  node1: a1 (client)  x1 (not in the mesh)        node2: b1  b2 (servers)
/// </code>
/// </summary>
[Trait(TestGroups.Trait, TestGroups.EndToEnd)]
[Collection(NetnsCollection.Name)]
public class DualStackTests
{
    private const long SixtyFourMiB = 64L * 1024 * 1024;
    private const string Vip6 = "fd00:96::10";
    private static readonly TimeSpan Long = TimeSpan.FromMinutes(3);

    private static ClusterSpec Spec() => new(
        new NodeSpec("node1", new PodSpec("demo", "a1"), new PodSpec("demo", "x1")),
        new NodeSpec("node2", new PodSpec("demo", "b1"), new PodSpec("demo", "b2")));

    private static string Inventory(NetnsCluster c, string extra = "") => c.InventoryYaml(new InventoryOptions
    {
        Omit = [c.Pod("demo", "x1")],
        Services = [new ServiceSpec("b6", "demo", Vip6, 80, 8080, c.Pod("demo", "b1"), c.Pod("demo", "b2"))],
    }) + extra;

    private static int Served(ManagedProcess server) => server.StdoutLines.Count(l => l.Contains("sha256", StringComparison.Ordinal));

    [PrivilegedFact]
    public async Task Ipv6_CrossNodeMtls_64MiBEachWay_ArrivesByteIdentical_ServerSeesClientsIpv6Address()
    {
        await using var mesh = await MeshCluster.StartAsync(Spec(), c => Inventory(c), mtls: true);
        var client = mesh.Cluster.Pod("demo", "a1");
        var server = mesh.Cluster.Pod("demo", "b1");
        await using var serve = await MeshCluster.StartServerAsync(server, "--bind", "::", "--port", "8080", "--reply-bytes", SixtyFourMiB.ToString());
        await Task.Delay(300);

        var run = await MeshCluster.RunPeerAsync(client, Long, "send", "--to", $"[{server.Address6}]:8080", "--bytes", SixtyFourMiB.ToString(),
            "--expect-reply-bytes", SixtyFourMiB.ToString());

        Assert.True(run.ExitCode == 0, run.ToString());
        Assert.Equal(Pattern.Sha256(SixtyFourMiB), Assert.Single(run.Connections).GetProperty("received_sha256").GetString());
        var served = JsonDocument.Parse(await serve.WaitForStdoutLineAsync(l => l.Contains("sha256", StringComparison.Ordinal), Long)).RootElement;
        Assert.Equal(Pattern.Sha256(SixtyFourMiB), served.GetProperty("sha256").GetString());
        Assert.Equal(SixtyFourMiB, served.GetProperty("received").GetInt64());
        Assert.StartsWith($"[{client.Address6}]:", served.GetProperty("remote").GetString());

        // It went through the tunnel, over IPv6 on both sides.
        var outbound = await PodTrafficTests.WaitForFlowAsync(mesh.Agent("node1"), f => f.GetProperty("direction").GetString() == "outbound");
        Assert.Equal("mutual_tls", outbound.GetProperty("connection_security_policy").GetString());
        Assert.Equal($"[{server.Address6}]:8080", outbound.GetProperty("original_destination").GetString());
        var inbound = await PodTrafficTests.WaitForFlowAsync(mesh.Agent("node2"), f => f.GetProperty("direction").GetString() == "inbound");
        Assert.Equal("mutual_tls", inbound.GetProperty("connection_security_policy").GetString());
        Assert.Equal("demo/a1", inbound.GetProperty("source_workload").GetString());
        Assert.Equal(SixtyFourMiB, inbound.GetProperty("bytes_received").GetInt64());
        Assert.Equal(SixtyFourMiB, inbound.GetProperty("bytes_sent").GetInt64());
    }

    [PrivilegedFact]
    public async Task Ipv6_ServiceVip_SpreadsOverEndpoints()
    {
        await using var mesh = await MeshCluster.StartAsync(Spec(), c => Inventory(c), mtls: true);
        await using var b1 = await MeshCluster.StartServerAsync(mesh.Cluster.Pod("demo", "b1"), "--bind", "::", "--port", "8080", "--reply-bytes", "16");
        await using var b2 = await MeshCluster.StartServerAsync(mesh.Cluster.Pod("demo", "b2"), "--bind", "::", "--port", "8080", "--reply-bytes", "16");
        await Task.Delay(300);

        var run = await MeshCluster.RunPeerAsync(mesh.Cluster.Pod("demo", "a1"), Long, "send", "--to", $"[{Vip6}]:80", "--bytes", "100",
            "--connections", "60", "--concurrency", "4", "--expect-reply-bytes", "16");

        Assert.True(run.ExitCode == 0, run.ToString());
        await CaptureScopeTests.WaitUntilAsync(() => Served(b1) + Served(b2) == 60);
        Assert.InRange(Served(b1), 15, 45);
        Assert.InRange(Served(b2), 15, 45);
        var flows = MeshCluster.Flows(mesh.Agent("node1"));
        Assert.Equal(60, flows.Count(f => f.GetProperty("destination_service").GetString() == "demo/b6"
            && f.GetProperty("original_destination").GetString() == $"[{Vip6}]:80"));
    }

    [PrivilegedFact]
    public async Task Ipv6_DenyByIpBlock_RefusesIpv6_LeavesIpv4Alone()
    {
        const string deny = """

            ---
            apiVersion: weft.dev/v1alpha1
            kind: AuthorizationPolicy
            metadata: {name: deny-node1-v6, namespace: demo}
            spec:
              selector: {matchLabels: {app: b}}
              action: DENY
              rules:
              - from: [{source: {ipBlocks: ["fd00:244:1::/64"]}}]
            """;
        await using var mesh = await MeshCluster.StartAsync(Spec(), c => Inventory(c, deny), mtls: true);
        var client = mesh.Cluster.Pod("demo", "a1");
        var server = mesh.Cluster.Pod("demo", "b1");
        await using var serve = await MeshCluster.StartServerAsync(server, "--bind", "::", "--port", "8080", "--reply-bytes", "10");
        await Task.Delay(300);

        var refused = await MeshCluster.RunPeerAsync(client, Long, "send", "--to", $"[{server.Address6}]:8080", "--bytes", "100",
            "--expect-reply-bytes", "10", "--timeout-ms", "5000");
        Assert.NotEqual(0, refused.ExitCode);
        var denied = await PodTrafficTests.WaitForFlowAsync(mesh.Agent("node2"), f => f.GetProperty("response_flags").GetString() == "DENY");
        Assert.Contains("demo/deny-node1-v6", denied.GetProperty("error").GetString());
        await Task.Delay(300);
        Assert.Equal(0, Served(serve));

        // The same client over IPv4 is outside the block and gets through.
        var allowed = await MeshCluster.RunPeerAsync(client, Long, "send", "--to", $"{server.Address}:8080", "--bytes", "100", "--expect-reply-bytes", "10");
        Assert.True(allowed.ExitCode == 0, allowed.ToString());
        Assert.Equal(1, Served(serve));
    }
}
