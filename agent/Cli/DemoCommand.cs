using System.Runtime.InteropServices;
using System.Text.Json;
using Weft.Harness;

namespace Weft.Cli;

/// <summary>
/// <c>weft demo</c>: a 2-node x 2-pod cluster in network namespaces with a real agent per node,
/// traffic between the pods (same node, cross node, through a Service VIP), and what the agents saw.
/// Everything is torn down on exit or Ctrl-C.
/// </summary>
internal static class DemoCommand
{
    public const string Usage = """
        weft demo [--keep]
          Builds a 2-node cluster of network namespaces with real agents, runs traffic, prints the flows.
          --keep leaves it running until Ctrl-C, printing how to reach the pods.
        """;

    private const string Vip = "10.96.0.10";

    public static async Task<int> RunAsync(CommandLine cl)
    {
        var keep = cl.Flag("keep");
        cl.RejectUnknown();
        NetnsCluster.CleanupStale();

        var spec = new ClusterSpec(
            new NodeSpec("node1", new PodSpec("demo", "client"), new PodSpec("demo", "web-a")),
            new NodeSpec("node2", new PodSpec("demo", "web-b1"), new PodSpec("demo", "web-b2")));
        Say("building a cluster of network namespaces: 2 nodes, 2 pods each, and starting an agent per node");
        await using var mesh = await MeshCluster.StartAsync(spec, c => c.InventoryYaml(new ServiceSpec(
            "web", "demo", Vip, 80, 8080, c.Pod("demo", "web-b1"), c.Pod("demo", "web-b2"))), "--admin", "127.0.0.1:15000");
        var cluster = mesh.Cluster;
        foreach (var pod in cluster.Pods)
        {
            Console.WriteLine($"  {pod}");
        }

        var servers = new List<ManagedProcess>();
        foreach (var name in new[] { "web-a", "web-b1", "web-b2" })
        {
            servers.Add(MeshCluster.StartServer(cluster.Pod("demo", name), "--port", "8080", "--reply-bytes", "65536"));
        }

        await Task.Delay(500);
        var client = cluster.Pod("demo", "client");
        var ok = true;
        ok &= await TrafficAsync("same node:  client -> web-a", client, $"{cluster.Pod("demo", "web-a").Address}:8080", 1);
        ok &= await TrafficAsync("cross node: client -> web-b1", client, $"{cluster.Pod("demo", "web-b1").Address}:8080", 1);
        ok &= await TrafficAsync($"service:    client -> web ({Vip}:80), 10 connections", client, $"{Vip}:80", 10);
        await Task.Delay(300);

        foreach (var node in cluster.Nodes)
        {
            Say($"what the agent on {node.Name} saw");
            Console.WriteLine($"  {"DIR",-9} {"SOURCE",-12} {"ORIGINAL DST",-18} {"SERVICE",-9} {"DESTINATION",-12} {"SENT",9} {"RECEIVED",9} FLAGS");
            foreach (var flow in MeshCluster.Flows(mesh.Agent(node.Name)))
            {
                Console.WriteLine(
                    $"  {S(flow, "direction"),-9} {S(flow, "source_workload"),-12} {S(flow, "original_destination"),-18} " +
                    $"{S(flow, "destination_service"),-9} {S(flow, "destination_workload"),-12} " +
                    $"{flow.GetProperty("bytes_sent").GetInt64(),9} {flow.GetProperty("bytes_received").GetInt64(),9} {S(flow, "response_flags")}");
            }
        }

        if (keep)
        {
            Say("the cluster stays up until Ctrl-C. Try:");
            Console.WriteLine($"  ip netns exec {client.NetnsName} curl -s {Vip}:80 --max-time 2   # any TCP client works");
            Console.WriteLine($"  ip netns exec {cluster.Node("node1").NetnsName} curl -s 127.0.0.1:15000/flows");
            var stop = new TaskCompletionSource();
            using var interrupt = PosixSignalRegistration.Create(PosixSignal.SIGINT, c =>
            {
                c.Cancel = true;
                stop.TrySetResult();
            });
            await stop.Task;
        }

        foreach (var server in servers)
        {
            await server.DisposeAsync();
        }

        Say(ok ? "all traffic arrived intact; tearing down" : "some traffic failed (see above); tearing down");
        return ok ? 0 : 1;
    }

    private static async Task<bool> TrafficAsync(string title, ClusterPod from, string to, int connections)
    {
        const int bytes = 1024 * 1024;
        var run = await MeshCluster.RunPeerAsync(from, TimeSpan.FromMinutes(1), "send", "--to", to, "--bytes", bytes.ToString(),
            "--connections", connections.ToString(), "--expect-reply-bytes", "65536");
        var good = run.Connections.Count(c => c.GetProperty("error").ValueKind == JsonValueKind.Null);
        Console.WriteLine($"  {title}: {good}/{connections} connection(s) ok, {bytes / 1024} KiB sent and 64 KiB back on each{(good == connections ? "" : "\n" + run)}");
        return run.ExitCode == 0 && good == connections;
    }

    private static string S(JsonElement flow, string name) =>
        flow.TryGetProperty(name, out var value) && value.ValueKind == JsonValueKind.String ? value.GetString()! : "-";

    private static void Say(string text) => Console.WriteLine($"\n== {text}");
}
