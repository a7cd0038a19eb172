using Weft.Harness;
using Weft.Scale;

namespace Weft.Tests.EndToEnd;

/// <summary>
/// Real agents with a 10,000-pod standalone inventory: they load it, follow a churn of 100 pods, and route a
/// connection to the service VIP to the pod that was added last.
/// </summary>
[Trait(TestGroups.Trait, TestGroups.EndToEnd)]
[Collection(NetnsCollection.Name)]
public class ScaleInventoryTests
{
    private const int RemotePods = 10_000;

    // Loading 10,000 pods takes about a second on a quiet machine; a shared CI machine may be many times slower.
    private static readonly double Generous = TimeSpan.FromMinutes(5).TotalSeconds;

    private static ClusterSpec Spec() => new(
        new NodeSpec("node1", new PodSpec("demo", "a1")),
        new NodeSpec("node2", new PodSpec("demo", "b1")));

    /// <summary>The netns cluster's own pods and service b, then <paramref name="remotePods"/> pods of other nodes.</summary>
    private static string Inventory(NetnsCluster c, int remotePods, params string[] endpoints)
    {
        var writer = new StringWriter();
        writer.Write(c.InventoryYaml(new InventoryOptions
        {
            Services = [new ServiceSpec("b", "demo", "10.96.0.10", 80, 8080, endpoints.Select(e => c.Pod("demo", e)).ToArray())],
        }));
        new SyntheticCluster(remotePods).WriteYaml(writer);
        return writer.ToString();
    }

    private static int Applied(ManagedProcess agent) => agent.StderrLines.Count(l => l.Contains("inventory version", StringComparison.Ordinal));

    private static int Served(ManagedProcess server) => server.StdoutLines.Count(l => l.Contains("sha256", StringComparison.Ordinal));

    [PrivilegedFact]
    public async Task TenThousandPodInventory_Loads_FollowsChurn_RoutesToThePodAddedLast()
    {
        await using var mesh = await MeshCluster.StartAsync(Spec(), c => Inventory(c, 0, "b1"));
        var node1 = mesh.Agent("node1");
        var node2 = mesh.Agent("node2");

        // The cluster grows to 10,000 remote pods.
        var applied = (Applied(node1), Applied(node2));
        mesh.WriteInventory(Inventory(mesh.Cluster, RemotePods, "b1"));
        await CaptureScopeTests.WaitUntilAsync(() => Applied(node1) > applied.Item1 && Applied(node2) > applied.Item2, Generous);
        // The source logs what it loaded just after publishing it, so the line may follow "applied" by a moment.
        await CaptureScopeTests.WaitUntilAsync(() => node1.StderrLines.Any(l => l.Contains($"{RemotePods + 2} workloads", StringComparison.Ordinal)), Generous);

        // Churn: 100 remote pods go away.
        applied = (Applied(node1), Applied(node2));
        mesh.WriteInventory(Inventory(mesh.Cluster, RemotePods - 100, "b1"));
        await CaptureScopeTests.WaitUntilAsync(() => Applied(node1) > applied.Item1 && Applied(node2) > applied.Item2, Generous);
        await CaptureScopeTests.WaitUntilAsync(() => node1.StderrLines.Any(l => l.Contains($"{RemotePods - 100 + 2} workloads", StringComparison.Ordinal)), Generous);

        // A pod is added last, on node2, and becomes service b's only endpoint.
        var added = mesh.Cluster.AddPod(mesh.Cluster.Node("node2"), "demo", "b9");
        applied = (Applied(node1), Applied(node2));
        mesh.WriteInventory(Inventory(mesh.Cluster, RemotePods - 100, "b9"));
        await CaptureScopeTests.WaitUntilAsync(() => Applied(node1) > applied.Item1 && Applied(node2) > applied.Item2, Generous);
        await CaptureScopeTests.WaitUntilAsync(() => node2.StderrLines.Any(l => l.Contains("2 local pod(s) enrolled", StringComparison.Ordinal)), Generous);

        await using var b1 = await MeshCluster.StartServerAsync(mesh.Cluster.Pod("demo", "b1"), "--port", "8080", "--reply-bytes", "16");
        await using var b9 = await MeshCluster.StartServerAsync(added, "--port", "8080", "--reply-bytes", "16");
        await Task.Delay(300);
        var run = await MeshCluster.RunPeerAsync(mesh.Cluster.Pod("demo", "a1"), TimeSpan.FromMinutes(2), "send", "--to", "10.96.0.10:80",
            "--bytes", "100", "--connections", "5", "--expect-reply-bytes", "16");

        Assert.True(run.ExitCode == 0, run.ToString());
        await CaptureScopeTests.WaitUntilAsync(() => Served(b9) == 5);
        Assert.Equal(0, Served(b1));
        await CaptureScopeTests.WaitUntilAsync(() => MeshCluster.Flows(node1).Count == 5);
        Assert.All(MeshCluster.Flows(node1), f =>
        {
            Assert.Equal("demo/b", f.GetProperty("destination_service").GetString());
            Assert.Equal("demo/b9", f.GetProperty("destination_workload").GetString());
            Assert.Equal($"{added.Address}:8080", f.GetProperty("destination").GetString());
        });
    }
}
