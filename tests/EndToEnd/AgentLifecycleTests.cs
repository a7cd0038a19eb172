using Weft.Harness;

namespace Weft.Tests.EndToEnd;

/// <summary>Agent stop, restart, uninstall, bad configuration and peer resets, seen from the pods.</summary>
[Trait(TestGroups.Trait, TestGroups.EndToEnd)]
[Collection(NetnsCollection.Name)]
public class AgentLifecycleTests
{
    private static readonly TimeSpan Long = TimeSpan.FromMinutes(1);

    private static ClusterSpec Spec() => new(
        new NodeSpec("node1", new PodSpec("demo", "a1")),
        new NodeSpec("node2", new PodSpec("demo", "b1")));

    private static string Inventory(NetnsCluster c) => c.InventoryYaml(new InventoryOptions
    {
        Services = [new ServiceSpec("b", "demo", "10.96.0.10", 80, 8080, c.Pod("demo", "b1"))],
    });

    private static Task<PeerRun> SendAsync(ClusterPod from, string to) =>
        MeshCluster.RunPeerAsync(from, Long, "send", "--to", to, "--bytes", "4096", "--expect-reply-bytes", "7", "--timeout-ms", "5000");

    private static int Served(ManagedProcess server) => server.StdoutLines.Count(l => l.Contains("sha256", StringComparison.Ordinal));

    [PrivilegedFact]
    public async Task AgentStopped_NewConnectionsRefused_NeverSentAround_RestartWorksWithSamePins()
    {
        await using var mesh = await MeshCluster.StartAsync(Spec(), Inventory);
        var client = mesh.Cluster.Pod("demo", "a1");
        var server = mesh.Cluster.Pod("demo", "b1");
        await using var serve = await MeshCluster.StartServerAsync(server, "--port", "8080", "--reply-bytes", "7");
        await Task.Delay(300);
        var first = await SendAsync(client, $"{server.Address}:8080");
        Assert.True(first.ExitCode == 0, first.ToString());
        var node1 = mesh.Cluster.Node("node1");
        var pins = Directory.GetFileSystemEntries(mesh.PinRoot(node1), "*", SearchOption.AllDirectories).Order().ToList();

        // SIGTERM with no replacement: the programs stay attached, nothing listens for the pod.
        var agent = mesh.Agent("node1");
        agent.Stop();
        Assert.Equal(0, await agent.WaitForExitAsync(TimeSpan.FromSeconds(15)));
        var servedBefore = Served(serve);
        var refused = await SendAsync(client, $"{server.Address}:8080");
        Assert.NotEqual(0, refused.ExitCode);
        Assert.Equal("ConnectionRefused", Assert.Single(refused.Connections).GetProperty("error").GetString());
        var viaVip = await SendAsync(client, "10.96.0.10:80");
        Assert.Equal("ConnectionRefused", Assert.Single(viaVip.Connections).GetProperty("error").GetString());
        await Task.Delay(300);
        Assert.Equal(servedBefore, Served(serve));
        Assert.Equal(pins, Directory.GetFileSystemEntries(mesh.PinRoot(node1), "*", SearchOption.AllDirectories).Order().ToList());

        // A new agent adopts the same pins and the pod's traffic flows again, through it.
        var restarted = await mesh.StartAgentAsync(node1);
        var again = await SendAsync(client, "10.96.0.10:80");
        Assert.True(again.ExitCode == 0, again.ToString());
        await PodTrafficTests.WaitForFlowAsync(restarted, f => f.GetProperty("destination_service").GetString() == "demo/b");
        Assert.Equal(pins, Directory.GetFileSystemEntries(mesh.PinRoot(node1), "*", SearchOption.AllDirectories).Order().ToList());
    }

    [PrivilegedFact]
    public async Task Uninstall_RemovesEveryPin_AndTheReturnPathFromPods_AndPodsTalkDirectly()
    {
        await using var mesh = await MeshCluster.StartAsync(Spec(), Inventory);
        var client = mesh.Cluster.Pod("demo", "a1");
        var server = mesh.Cluster.Pod("demo", "b1");
        await using var serve = await MeshCluster.StartServerAsync(server, "--port", "8080", "--reply-bytes", "7");
        var node1 = mesh.Cluster.Node("node1");
        var agent = mesh.Agent("node1");
        Assert.Contains("fwmark", HostCommand.Ip("-n", client.NetnsName, "rule", "show"));

        // A stopped agent leaves the return path (a restarted one adopts it); only the uninstall removes it.
        agent.Stop();
        await agent.WaitForExitAsync(TimeSpan.FromSeconds(15));
        Assert.Contains("fwmark", HostCommand.Ip("-n", client.NetnsName, "rule", "show"));

        await using (var uninstall = node1.StartWeft("uninstall", "--bpffs", mesh.PinRoot(node1)))
        {
            Assert.Equal(0, await uninstall.WaitForExitAsync(Long));
        }

        Assert.False(Directory.Exists(mesh.PinRoot(node1)));
        TransparentDeliveryTests.AssertNothingLeft(client);
        var direct = await SendAsync(client, $"{server.Address}:8080");
        Assert.True(direct.ExitCode == 0, direct.ToString());
    }

    [PrivilegedFact]
    public async Task MalformedInventory_AgentKeepsServingWithPreviousSnapshot()
    {
        await using var mesh = await MeshCluster.StartAsync(Spec(), Inventory);
        var client = mesh.Cluster.Pod("demo", "a1");
        await using var serve = await MeshCluster.StartServerAsync(mesh.Cluster.Pod("demo", "b1"), "--port", "8080", "--reply-bytes", "7");
        await Task.Delay(300);
        var good = File.ReadAllText(mesh.InventoryPath);

        mesh.WriteInventory(good + "\n---\napiVersion: v1\nkind: Service\nmetadata: {name: broken, namespace: demo\nspec: [\n");
        var agent = mesh.Agent("node1");
        await MeshCluster.WaitForStderrAsync(agent, l => l.Contains("inventory.yaml:", StringComparison.Ordinal) && l.Contains("error", StringComparison.Ordinal), TimeSpan.FromSeconds(10));

        var run = await SendAsync(client, "10.96.0.10:80");
        Assert.True(run.ExitCode == 0, run.ToString());
        Assert.False(agent.HasExited);
    }

    [PrivilegedFact]
    public async Task HealthEndpoints_AnswerOn15021_InTheNodeNamespace()
    {
        await using var mesh = await MeshCluster.StartAsync(Spec(), Inventory);
        var node = mesh.Cluster.Node("node1");
        foreach (var (path, expected) in new[] { ("/healthz", "200"), ("/ready", "200"), ("/nope", "404") })
        {
            await using var curl = node.StartProcess("curl", "-s", "-o", "/dev/null", "-w", "%{http_code}", "--max-time", "5", $"http://127.0.0.1:15021{path}");
            await curl.WaitForExitAsync(TimeSpan.FromSeconds(10));
            Assert.Equal(expected, curl.Stdout.Trim());
        }
    }

    [PrivilegedFact]
    public async Task ServerReset_ReachesClientAsReset()
    {
        await using var mesh = await MeshCluster.StartAsync(Spec(), Inventory);
        var server = mesh.Cluster.Pod("demo", "b1");
        await using var serve = await MeshCluster.StartServerAsync(server, "--port", "8080", "--mode", "reset");
        await Task.Delay(300);

        var run = await SendAsync(mesh.Cluster.Pod("demo", "a1"), $"{server.Address}:8080");

        Assert.Equal("ConnectionReset", Assert.Single(run.Connections).GetProperty("error").GetString());
    }
}
