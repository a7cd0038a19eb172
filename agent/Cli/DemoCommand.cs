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
        weft demo [--keep] [--plaintext]
          Builds a 2-node cluster of network namespaces with real agents sharing a fresh CA, runs
          traffic (same node, cross node through an mTLS tunnel, through a Service VIP, and a call that
          a DENY policy refuses), prints the flows. --keep leaves it running until Ctrl-C;
          --plaintext runs the agents without a CA.
        """;

    private const string Vip = "10.96.0.10";

    public static async Task<int> RunAsync(CommandLine cl)
    {
        var keep = cl.Flag("keep");
        var mtls = !cl.Flag("plaintext");
        cl.RejectUnknown();
        NetnsCluster.CleanupStale();

        var spec = new ClusterSpec(
            new NodeSpec("node1", new PodSpec("demo", "client"), new PodSpec("demo", "web-a")),
            new NodeSpec("node2", new PodSpec("demo", "web-b1"), new PodSpec("demo", "web-b2")));
        Say("building a cluster of network namespaces: 2 nodes, 2 pods each, and starting an agent per node");
        await using var mesh = await MeshCluster.StartAsync(spec, c => c.InventoryYaml(new ServiceSpec(
            "web", "demo", Vip, 80, 8080, c.Pod("demo", "web-b1"), c.Pod("demo", "web-b2"))) + DenyPolicy, mtls, "--admin", "127.0.0.1:15000");
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
        ok &= await RefusedAsync("policy:     client -> web-b1:9090 (denied by demo/deny-9090)", client, $"{cluster.Pod("demo", "web-b1").Address}:9090");
        await Task.Delay(300);

        foreach (var node in cluster.Nodes)
        {
            Say($"what the agent on {node.Name} saw");
            Console.WriteLine($"  {"DIR",-9} {"SOURCE",-12} {"ORIGINAL DST",-18} {"SERVICE",-9} {"DESTINATION",-12} {"SECURITY",-10} {"SENT",9} {"RECEIVED",9} FLAGS");
            foreach (var flow in MeshCluster.Flows(mesh.Agent(node.Name)))
            {
                Console.WriteLine(
                    $"  {S(flow, "direction"),-9} {S(flow, "source_workload"),-12} {S(flow, "original_destination"),-18} " +
                    $"{S(flow, "destination_service"),-9} {S(flow, "destination_workload"),-12} {S(flow, "connection_security_policy"),-10} " +
                    $"{flow.GetProperty("bytes_sent").GetInt64(),9} {flow.GetProperty("bytes_received").GetInt64(),9} {S(flow, "response_flags")}" +
                    (flow.TryGetProperty("error", out var error) ? $" ({error.GetString()})" : ""));
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

    private static async Task<bool> RefusedAsync(string title, ClusterPod from, string to)
    {
        var run = await MeshCluster.RunPeerAsync(from, TimeSpan.FromMinutes(1), "send", "--to", to, "--bytes", "100", "--timeout-ms", "5000");
        var refused = run.ExitCode != 0;
        Console.WriteLine($"  {title}: {(refused ? "refused, as the policy says" : "NOT refused")}");
        return refused;
    }

    private const string DenyPolicy = """

        ---
        apiVersion: weft.dev/v1alpha1
        kind: AuthorizationPolicy
        metadata: {name: deny-9090, namespace: demo}
        spec:
          action: DENY
          rules:
          - to: [{operation: {ports: ["9090"]}}]
        """;

    private static string S(JsonElement flow, string name) =>
        flow.TryGetProperty(name, out var value) && value.ValueKind == JsonValueKind.String ? value.GetString()! : "-";

    private static void Say(string text) => Console.WriteLine($"\n== {text}");
}
