using System.Globalization;
using System.Text.Json;
using Weft.Capture;
using Weft.Harness;

namespace Weft.Tests.EndToEnd;

/// <summary>
/// The app behind the agent sees its real client's address, and its replies still reach the client.
/// <code>
///  node1: a1 (client)  a2 (server, same node)  x1 (not in the mesh)      node2: b1 (server)
/// </code>
/// </summary>
[Trait(TestGroups.Trait, TestGroups.EndToEnd)]
[Collection(NetnsCollection.Name)]
public class TransparentDeliveryTests
{
    private const long EchoBytes = 256 * 1024;
    private static readonly TimeSpan Long = TimeSpan.FromMinutes(2);
    private static readonly string Table = DeliveryReturnPath.Table.ToString(System.Globalization.CultureInfo.InvariantCulture);

    private static ClusterSpec Spec() => new(
        new NodeSpec("node1", new PodSpec("demo", "a1"), new PodSpec("demo", "a2"), new PodSpec("demo", "x1")),
        new NodeSpec("node2", new PodSpec("demo", "b1")));

    private static string Inventory(NetnsCluster c, params ClusterPod[] omit) => c.InventoryYaml(new InventoryOptions
    {
        Omit = [c.Pod("demo", "x1"), .. omit],
    });

    [PrivilegedFact]
    public async Task Plaintext_ServerSeesClientPodAddress_SameNodeCrossNodeAndUnmeshed_RepliesArriveByteIdentical_UnenrollLeavesNothing()
    {
        await using var mesh = await MeshCluster.StartAsync(Spec(), c => Inventory(c));
        var a1 = mesh.Cluster.Pod("demo", "a1");
        var a2 = mesh.Cluster.Pod("demo", "a2");
        var b1 = mesh.Cluster.Pod("demo", "b1");
        var x1 = mesh.Cluster.Pod("demo", "x1");
        await using var serveA2 = await MeshCluster.StartServerAsync(a2, "--port", "8080", "--mode", "echo");
        await using var serveB1 = await MeshCluster.StartServerAsync(b1, "--port", "8080", "--mode", "echo");
        await Task.Delay(300);

        await AssertEchoAndPeerAsync(a1, a2, serveA2, "same-node");
        await AssertEchoAndPeerAsync(a1, b1, serveB1, "cross-node");
        await AssertEchoAndPeerAsync(x1, b1, serveB1, "unmeshed client");

        // The return path is there while b1 is enrolled (so the check below can tell it went)...
        Assert.Contains($"lookup {Table}", Ip(b1, "-4", "rule", "show"));
        Assert.Contains("local default dev lo", Ip(b1, "-4", "route", "show", "table", Table));

        // Only the pods' namespaces get it: the nodes' have no rule, route or mark sysctl of ours.
        foreach (var node in mesh.Cluster.Nodes)
        {
            Assert.DoesNotContain("fwmark", HostCommand.Ip("-n", node.NetnsName, "rule", "show"));
            Assert.Equal("0", HostCommand.Run("ip", "netns", "exec", node.NetnsName, "sysctl", "-n", "net.ipv4.tcp_fwmark_accept").Trim());
        }

        // ...and gone, with its marks' sysctls, once b1 leaves the mesh.
        var agent = mesh.Agent("node2");
        mesh.WriteInventory(Inventory(mesh.Cluster, b1));
        await MeshCluster.WaitForStderrAsync(agent, l => l.Contains("demo/b1: unenrolled", StringComparison.Ordinal), TimeSpan.FromSeconds(30));
        AssertNothingLeft(b1);

        // Unenrolled, b1 is reached directly again and still answers.
        await AssertEchoAndPeerAsync(a1, b1, serveB1, "after unenroll");
    }

    [PrivilegedFact]
    public async Task MutualTls_ServerSeesClientPodAddress_CrossNodeTunnelAndSameNodeShortCut()
    {
        await using var mesh = await MeshCluster.StartAsync(Spec(), c => Inventory(c), mtls: true);
        var a1 = mesh.Cluster.Pod("demo", "a1");
        var a2 = mesh.Cluster.Pod("demo", "a2");
        var b1 = mesh.Cluster.Pod("demo", "b1");
        await using var serveA2 = await MeshCluster.StartServerAsync(a2, "--port", "8080", "--mode", "echo");
        await using var serveB1 = await MeshCluster.StartServerAsync(b1, "--port", "8080", "--mode", "echo");
        await Task.Delay(300);

        await AssertEchoAndPeerAsync(a1, b1, serveB1, "cross-node mTLS");
        await AssertEchoAndPeerAsync(a1, a2, serveA2, "same-node mTLS");
        var inbound = await PodTrafficTests.WaitForFlowAsync(mesh.Agent("node2"), f => f.GetProperty("direction").GetString() == "inbound");
        Assert.Equal("mutual_tls", inbound.GetProperty("connection_security_policy").GetString());
    }

    /// <summary>
    /// The agent chooses each delivery's port from the odd half of the pod's local port range, in turn per client
    /// address. b1 gets a range of 100 odd ports; 60 connections from a1 stay open while 120 new ones go through, so
    /// the turn comes round over the held ports (whose 4-tuples a new connect would collide with) and over ports still
    /// in TIME_WAIT (the delivering socket closes first here). Every connection succeeds and the server still sees a1.
    /// </summary>
    [PrivilegedFact]
    public async Task NewConnectionsPastAWholeTurnOfThePodsPorts_WhileSomeAreHeld_NoneFails()
    {
        const int Held = 60;
        const int New = 120;
        await using var mesh = await MeshCluster.StartAsync(Spec(), c =>
        {
            // before the agent enrolls b1: it reads the range then
            HostCommand.Run("ip", "netns", "exec", c.Pod("demo", "b1").NetnsName, "sysctl", "-q", "-w", "net.ipv4.ip_local_port_range=40000 40199");
            return Inventory(c);
        });
        var a1 = mesh.Cluster.Pod("demo", "a1");
        var b1 = mesh.Cluster.Pod("demo", "b1");
        await using var echo = await MeshCluster.StartServerAsync(b1, "--port", "9090", "--mode", "echo");

        await using var hold = a1.StartWeft("app", "hold", "--to", $"{b1.Address}:9090", "--connections", $"{Held}",
            "--exchange-bytes", "64", "--stdin", "ignore", "--timeout-ms", "10000");
        var opened = JsonDocument.Parse(await hold.WaitForStdoutLineAsync(l => l.Contains("\"open\"", StringComparison.Ordinal), Long)).RootElement;
        Assert.True(opened.GetProperty("open").GetInt32() == Held, opened.ToString());

        var run = await MeshCluster.RunPeerAsync(a1, Long, "send", "--to", $"{b1.Address}:9090", "--bytes", "1024",
            "--expect-reply-bytes", "1024", "--connections", $"{New}", "--concurrency", "4", "--timeout-ms", "10000");
        Assert.True(run.ExitCode == 0 && run.Connections.Count == New, run.ToString());

        // the server saw a1's address on every new connection, from ports of b1's range
        await CaptureScopeTests.WaitUntilAsync(() => Remotes(echo).Count >= New);
        var remotes = Remotes(echo);
        Assert.All(remotes, r => Assert.StartsWith(a1.Address + ":", r));
        Assert.All(remotes, r => Assert.InRange(int.Parse(r[(r.LastIndexOf(':') + 1)..], CultureInfo.InvariantCulture), 40000, 40199));

        // and the held ones are all still open
        hold.Stop();
        Assert.Equal(0, await hold.WaitForExitAsync(Long));
        var summary = JsonDocument.Parse(hold.StdoutLines.Last(l => l.Contains("\"summary\"", StringComparison.Ordinal))).RootElement;
        Assert.True(summary.GetProperty("open").GetInt32() == Held && summary.GetProperty("closed_by_peer").GetInt32() == 0, summary.ToString());
    }

    private static List<string> Remotes(ManagedProcess serve) =>
        [.. serve.StdoutLines.Where(l => l.Contains("\"remote\"", StringComparison.Ordinal)).Select(l => JsonDocument.Parse(l).RootElement.GetProperty("remote").GetString()!)];

    /// <summary>One echo exchange from <paramref name="client"/>: the bytes come back unchanged and the server names the client's address.</summary>
    private static async Task AssertEchoAndPeerAsync(ClusterPod client, ClusterPod server, ManagedProcess serve, string path)
    {
        var before = serve.StdoutLines.Count(l => l.Contains("\"remote\"", StringComparison.Ordinal));
        var run = await MeshCluster.RunPeerAsync(client, Long, "send", "--to", $"{server.Address}:8080", "--bytes", EchoBytes.ToString(),
            "--expect-reply-bytes", EchoBytes.ToString());
        Assert.True(run.ExitCode == 0, $"{path}: {run}");
        Assert.Equal(Pattern.Sha256(EchoBytes), Assert.Single(run.Connections).GetProperty("received_sha256").GetString());

        await CaptureScopeTests.WaitUntilAsync(() => serve.StdoutLines.Count(l => l.Contains("\"remote\"", StringComparison.Ordinal)) > before);
        var served = JsonDocument.Parse(serve.StdoutLines.Where(l => l.Contains("\"remote\"", StringComparison.Ordinal)).Last()).RootElement;
        var remote = served.GetProperty("remote").GetString()!;
        Assert.True(remote.StartsWith(client.Address + ":", StringComparison.Ordinal), $"{path}: the server saw {remote}, not {client.Address}");
        Assert.Equal(EchoBytes, served.GetProperty("received").GetInt64());
    }

    internal static void AssertNothingLeft(ClusterPod pod)
    {
        foreach (var family in new[] { "-4", "-6" })
        {
            var rules = Ip(pod, family, "rule", "show");
            Assert.DoesNotContain("fwmark", rules);
            Assert.DoesNotContain(Table, rules);
            Assert.Equal("", Ip(pod, family, "route", "show", "table", Table).Trim());
        }

        foreach (var sysctl in new[] { "net.ipv4.tcp_fwmark_accept", "net.ipv4.fwmark_reflect", "net.ipv6.fwmark_reflect" })
        {
            Assert.Equal("0", HostCommand.Run("ip", "netns", "exec", pod.NetnsName, "sysctl", "-n", sysctl).Trim());
        }
    }

    private static string Ip(ClusterPod pod, params string[] args)
    {
        try
        {
            return HostCommand.Ip(["-n", pod.NetnsName, .. args]);
        }
        catch (HarnessException e) when (e.Message.Contains("FIB table does not exist", StringComparison.Ordinal))
        {
            // `ip route show table N` fails for a table that never existed: empty too
            return "";
        }
    }
}
