using Weft.Harness;

namespace Weft.Tests.EndToEnd;

/// <summary>What the mesh must leave alone, and what it must do to a service VIP.</summary>
[Trait(TestGroups.Trait, TestGroups.EndToEnd)]
[Collection(NetnsCollection.Name)]
public class CaptureScopeTests
{
    private static readonly TimeSpan Long = TimeSpan.FromMinutes(2);

    private static ClusterSpec Spec() => new(
        new NodeSpec("node1", new PodSpec("demo", "a1"), new PodSpec("demo", "x1")),
        new NodeSpec("node2", new PodSpec("demo", "b1"), new PodSpec("demo", "b2"), new PodSpec("demo", "x2")));

    private static string Inventory(NetnsCluster c, params string[] endpoints) => c.InventoryYaml(new InventoryOptions
    {
        Omit = [c.Pod("demo", "x1"), c.Pod("demo", "x2")],
        Services = [new ServiceSpec("b", "demo", "10.96.0.10", 80, 8080, endpoints.Select(e => c.Pod("demo", e)).ToArray())],
    });

    /// <summary>Objects of kinds the agent ignores: a Deployment and a ConfigMap.</summary>
    private const string OtherKinds = """
        ---
        apiVersion: apps/v1
        kind: Deployment
        metadata: {name: b, namespace: demo}
        spec: {replicas: 1, selector: {matchLabels: {app: b}}, template: {metadata: {labels: {app: b}}, spec: {containers: [{name: b, image: b, resources: {limits: {memory: 64Mi}}}]}}}
        ---
        apiVersion: v1
        kind: ConfigMap
        metadata: {name: b, namespace: demo}
        data: {greeting: hello}

        """;

    private static int Served(ManagedProcess server) => server.StdoutLines.Count(l => l.Contains("sha256", StringComparison.Ordinal));

    [PrivilegedFact]
    public async Task ServiceVip_100Connections_SpreadOverReadyEndpoints_RemovedEndpointGetsNoNewConnection()
    {
        await using var mesh = await MeshCluster.StartAsync(Spec(), c => Inventory(c, "b1", "b2"));
        var client = mesh.Cluster.Pod("demo", "a1");
        await using var b1 = await MeshCluster.StartServerAsync(mesh.Cluster.Pod("demo", "b1"), "--port", "8080", "--reply-bytes", "16");
        await using var b2 = await MeshCluster.StartServerAsync(mesh.Cluster.Pod("demo", "b2"), "--port", "8080", "--reply-bytes", "16");
        await Task.Delay(300);

        var run = await MeshCluster.RunPeerAsync(client, Long, "send", "--to", "10.96.0.10:80", "--bytes", "100",
            "--connections", "100", "--concurrency", "4", "--expect-reply-bytes", "16");
        Assert.True(run.ExitCode == 0, run.ToString());
        await WaitUntilAsync(() => Served(b1) + Served(b2) == 100);
        Assert.InRange(Served(b1), 40, 60);
        Assert.InRange(Served(b2), 40, 60);
        // The agent writes a record when both directions have closed, which can be just after the client saw its reply.
        await WaitUntilAsync(() => MeshCluster.Flows(mesh.Agent("node1")).Count(f => f.GetProperty("destination_service").GetString() == "demo/b") >= 100);
        var flows = MeshCluster.Flows(mesh.Agent("node1"));
        Assert.Equal(100, flows.Count(f => f.GetProperty("destination_service").GetString() == "demo/b"));

        // b2 leaves the service: after the reload no new connection reaches it.
        var agent = mesh.Agent("node1");
        var applied = agent.StderrLines.Count(l => l.Contains("inventory version", StringComparison.Ordinal));
        // The file also holds kinds the agent does not use, as a cluster dump would: the shipped agent (weft-agent) has no
        // JSON metadata for them and skips them; failing the reload on them instead would keep b2 in the service.
        mesh.WriteInventory(Inventory(mesh.Cluster, "b1") + OtherKinds);
        await WaitUntilAsync(() => agent.StderrLines.Count(l => l.Contains("inventory version", StringComparison.Ordinal)) > applied);
        var refusal = agent.StderrLines.FirstOrDefault(l => l.Contains("keeping inventory version", StringComparison.Ordinal));
        Assert.True(refusal is null, $"the agent refused the new inventory: {refusal}");
        var b2Before = Served(b2);
        run = await MeshCluster.RunPeerAsync(client, Long, "send", "--to", "10.96.0.10:80", "--bytes", "100",
            "--connections", "100", "--concurrency", "4", "--expect-reply-bytes", "16");
        Assert.True(run.ExitCode == 0, run.ToString());
        await WaitUntilAsync(() => Served(b1) + Served(b2) == 200);
        Assert.Equal(b2Before, Served(b2));
    }

    [PrivilegedFact]
    public async Task PodNotInInventory_AndNodeProcess_ConnectDirectly_AgentsRecordNothing()
    {
        await using var mesh = await MeshCluster.StartAsync(Spec(), c => Inventory(c, "b1"));
        var stranger = mesh.Cluster.Pod("demo", "x1");
        var target = mesh.Cluster.Pod("demo", "x2");
        await using var server = await MeshCluster.StartServerAsync(target, "--port", "8080", "--reply-bytes", "5");
        await Task.Delay(300);

        var fromPod = await MeshCluster.RunPeerAsync(stranger, Long, "send", "--to", $"{target.Address}:8080", "--bytes", "1000", "--expect-reply-bytes", "5");
        Assert.True(fromPod.ExitCode == 0, fromPod.ToString());

        await using var fromNode = mesh.Cluster.Node("node1").StartWeft("app", "send", "--to", $"{target.Address}:8080", "--bytes", "1000", "--expect-reply-bytes", "5");
        Assert.Equal(0, await fromNode.WaitForExitAsync(Long));

        // The server saw the stranger's own address: the connection went directly, not through an agent.
        await WaitUntilAsync(() => Served(server) == 2);
        Assert.Contains(server.StdoutLines, l => l.Contains($"\"{stranger.Address}:", StringComparison.Ordinal));
        await Task.Delay(500);
        Assert.Empty(MeshCluster.Flows(mesh.Agent("node1")));
        Assert.Empty(MeshCluster.Flows(mesh.Agent("node2")));
    }

    [PrivilegedFact]
    public async Task ThousandConcurrentConnections_FromOnePod_AllComplete()
    {
        await using var mesh = await MeshCluster.StartAsync(Spec(), c => Inventory(c, "b1"));
        var server = mesh.Cluster.Pod("demo", "b1");
        await using var serve = await MeshCluster.StartServerAsync(server, "--port", "8080", "--reply-bytes", "1024");
        await Task.Delay(300);

        var run = await MeshCluster.RunPeerAsync(mesh.Cluster.Pod("demo", "a1"), Long, "send", "--to", $"{server.Address}:8080",
            "--bytes", "1024", "--connections", "1000", "--concurrency", "1000", "--hold-ms", "1000", "--expect-reply-bytes", "1024");

        Assert.True(run.ExitCode == 0, run.ToString());
        Assert.Equal(1000, run.Connections.Count(c => c.GetProperty("error").ValueKind == System.Text.Json.JsonValueKind.Null));
    }

    internal static async Task WaitUntilAsync(Func<bool> condition, double seconds = 10)
    {
        var deadline = DateTime.UtcNow + TimeSpan.FromSeconds(seconds);
        while (!condition())
        {
            if (DateTime.UtcNow > deadline)
            {
                throw new TimeoutException("condition not met in time");
            }

            await Task.Delay(50);
        }
    }
}
