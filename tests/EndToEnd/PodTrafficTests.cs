using System.Text.Json;
using Weft.Harness;

namespace Weft.Tests.EndToEnd;

/// <summary>
/// Pod traffic through real agents in a 2-node cluster of network namespaces.
/// <code>
///  node1: client (demo/a1)   other (demo/a2)          node2: server (demo/b1)   server (demo/b2)
///  stranger (demo/x1, not in the inventory)
/// </code>
/// </summary>
[Trait(TestGroups.Trait, TestGroups.EndToEnd)]
[Collection(NetnsCollection.Name)]
public class PodTrafficTests
{
    private const long SixtyFourMiB = 64L * 1024 * 1024;
    private static readonly TimeSpan Long = TimeSpan.FromMinutes(2);

    private static ClusterSpec Spec() => new(
        new NodeSpec("node1", new PodSpec("demo", "a1"), new PodSpec("demo", "a2"), new PodSpec("demo", "x1")),
        new NodeSpec("node2", new PodSpec("demo", "b1"), new PodSpec("demo", "b2")));

    private static string Inventory(NetnsCluster c, params ClusterPod[] serviceEndpoints) => c.InventoryYaml(new InventoryOptions
    {
        Omit = [c.Pod("demo", "x1")],
        Services = [new ServiceSpec("b", "demo", "10.96.0.10", 80, 8080, serviceEndpoints.Length > 0 ? serviceEndpoints : [c.Pod("demo", "b1"), c.Pod("demo", "b2")])],
    });

    [PrivilegedTheory]
    [InlineData("b1", "cross-node")]
    [InlineData("a2", "same-node")]
    public async Task PodToPod_64MiBEachWay_ArrivesByteIdentical_AndAgentsRecordIt(string serverName, string _)
    {
        await using var mesh = await MeshCluster.StartAsync(Spec(), c => Inventory(c));
        var client = mesh.Cluster.Pod("demo", "a1");
        var server = mesh.Cluster.Pod("demo", serverName);
        await using var serve = await MeshCluster.StartServerAsync(server, "--port", "8080", "--reply-bytes", SixtyFourMiB.ToString());
        await Task.Delay(300);

        var run = await MeshCluster.RunPeerAsync(client, Long, "send", "--to", $"{server.Address}:8080", "--bytes", SixtyFourMiB.ToString(),
            "--expect-reply-bytes", SixtyFourMiB.ToString());

        Assert.True(run.ExitCode == 0, run.ToString());
        var connection = Assert.Single(run.Connections);
        Assert.Equal(Pattern.Sha256(SixtyFourMiB), connection.GetProperty("received_sha256").GetString());
        var served = JsonDocument.Parse(await serve.WaitForStdoutLineAsync(l => l.Contains("sha256"), Long)).RootElement;
        Assert.Equal(Pattern.Sha256(SixtyFourMiB), served.GetProperty("sha256").GetString());
        Assert.Equal(SixtyFourMiB, served.GetProperty("received").GetInt64());

        // The client's agent recorded the connection: which pod opened it and where it meant to go.
        var outbound = await WaitForFlowAsync(mesh.Agent("node1"), f => f.GetProperty("direction").GetString() == "outbound");
        Assert.Equal("demo/a1", outbound.GetProperty("source_workload").GetString());
        Assert.Equal($"{server.Address}:8080", outbound.GetProperty("original_destination").GetString());
        Assert.Equal($"demo/{serverName}", outbound.GetProperty("destination_workload").GetString());
        Assert.Equal(SixtyFourMiB, outbound.GetProperty("bytes_sent").GetInt64());
        Assert.Equal(SixtyFourMiB, outbound.GetProperty("bytes_received").GetInt64());

        // The server's agent took it in through sk_lookup and names the same source pod.
        var inbound = await WaitForFlowAsync(mesh.Agent(server.Node.Name), f => f.GetProperty("direction").GetString() == "inbound");
        Assert.Equal("demo/a1", inbound.GetProperty("source_workload").GetString());
        Assert.Equal($"demo/{serverName}", inbound.GetProperty("destination_workload").GetString());
        Assert.Equal(SixtyFourMiB, inbound.GetProperty("bytes_sent").GetInt64());

        // Every thread of the agents is back in the agent's own namespace: none was left in (or born
        // into) a pod's, where a socket it made would land in the wrong namespace.
        foreach (var node in mesh.Cluster.Nodes)
        {
            var pid = mesh.Agent(node.Name).Pid;
            var home = new FileInfo($"/proc/{pid}/ns/net").LinkTarget;
            var strays = Directory.GetDirectories($"/proc/{pid}/task")
                .Select(task => (task, ns: new FileInfo(Path.Combine(task, "ns", "net")).LinkTarget))
                .Where(t => t.ns is not null && t.ns != home)
                .Select(t => $"{File.ReadAllText(Path.Combine(t.task, "comm")).Trim()} in {t.ns}")
                .ToList();
            Assert.True(strays.Count == 0, $"{node.Name} agent threads outside its namespace: {string.Join(", ", strays)}");
        }
    }

    internal static async Task<JsonElement> WaitForFlowAsync(ManagedProcess agent, Func<JsonElement, bool> match)
    {
        var deadline = DateTime.UtcNow + TimeSpan.FromSeconds(10);
        while (DateTime.UtcNow < deadline)
        {
            foreach (var flow in MeshCluster.Flows(agent))
            {
                if (match(flow))
                {
                    return flow;
                }
            }

            await Task.Delay(50);
        }

        throw new Xunit.Sdk.XunitException($"no matching flow from {agent}; it logged:\n{agent.Stdout}\n{agent.Stderr}");
    }
}
