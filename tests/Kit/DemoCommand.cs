using System.Runtime.InteropServices;
using System.Text.Json;
using Weft.Cli;
using Weft.Harness;

namespace Weft.Demo;

/// <summary>
/// <c>weft-kit demo</c>: a 2-node x 2-pod cluster in network namespaces with a real agent per node,
/// traffic between the pods (same node, cross node, through a Service VIP), and what the agents saw.
/// Everything it made (agents, eBPF pins, namespaces, cgroups) is removed on exit, Ctrl-C, SIGTERM or SIGHUP.
/// </summary>
internal static class DemoCommand
{
    public const string Usage = """
        weft-kit demo [--keep] [--plaintext]
          Builds a 2-node cluster of network namespaces with a CA service (weft ca serve, the only holder
          of a fresh root's key) and real agents that get their pods' certificates from it, runs
          traffic (same node, cross node through an mTLS tunnel, through a Service VIP, and a call that
          a DENY policy refuses), prints the flows, removes it all. --keep leaves it running until Ctrl-C;
          --plaintext runs the agents without any CA.
        """;

    private const string Vip = "10.96.0.10";

    public static async Task<int> RunAsync(CommandLine cl)
    {
        var keep = cl.Flag("keep");
        var mtls = !cl.Flag("plaintext");
        cl.RejectUnknown();
        NetnsCluster.CleanupStale();

        // Ctrl-C, SIGTERM and SIGHUP end the demo at any point. The handler only asks (and keeps the
        // process alive); the teardown below does the work, once, even when the cluster's own signal
        // handler has begun it already, and then says what it removed.
        using var interrupted = new CancellationTokenSource();
        void OnSignal(PosixSignalContext context)
        {
            context.Cancel = true;
            _ = interrupted.CancelAsync();
        }

        using var sigint = PosixSignalRegistration.Create(PosixSignal.SIGINT, OnSignal);
        using var sigterm = PosixSignalRegistration.Create(PosixSignal.SIGTERM, OnSignal);
        using var sighup = PosixSignalRegistration.Create(PosixSignal.SIGHUP, OnSignal);

        var spec = new ClusterSpec(
            new NodeSpec("node1", new PodSpec("demo", "client"), new PodSpec("demo", "web-a")),
            new NodeSpec("node2", new PodSpec("demo", "web-b1"), new PodSpec("demo", "web-b2")));
        Say("building a cluster of network namespaces: 2 nodes, 2 pods each, " + (mtls ? "a CA service on node1, " : "") + "and starting an agent per node");
        MeshCluster mesh;
        try
        {
            mesh = await MeshCluster.StartAsync(spec, c => c.InventoryYaml(new ServiceSpec(
                "web", "demo", Vip, 80, 8080, c.Pod("demo", "web-b1"), c.Pod("demo", "web-b2"))) + DenyPolicy, mtls ? MeshIdentity.CaService : MeshIdentity.None, "--admin", "127.0.0.1:15000");
        }
        catch (Exception e) when (interrupted.IsCancellationRequested || e is ObjectDisposedException)
        {
            // A failed start has torn down what it made; its message says whether anything is left. The cluster's
            // own signal handler may run before ours and tear the cluster down under the start, which then fails
            // with ObjectDisposedException before our token is set: nothing else disposes it while it starts.
            Say($"interrupted while building the cluster: {e.Message.Split('\n')[0]}");
            return 130;
        }

        var cluster = mesh.Cluster;
        if (mtls)
        {
            Say($"CA service {mesh.CaAddress} holds the root key; the agents hold only the trust bundle and a node certificate from `weft ca issue-node`");
        }

        Say($"cluster {cluster.RunId}: network namespaces {cluster.NetnsPrefix}-*, cgroup {cluster.CgroupRoot}, " +
            $"eBPF pins {cluster.PinRoot("NODE")}; all removed on exit, Ctrl-C or SIGTERM");
        var outcome = new DemoOutcome();
        var show = ShowAsync(mesh, keep, outcome, interrupted.Token);
        await Task.WhenAny(show, Task.Delay(Timeout.Infinite, interrupted.Token));

        // The cluster's own signal handler may run before ours and tear the cluster down under the traffic, which then
        // fails (ObjectDisposedException) before our token is set: an interrupt too, not a failure of the demo.
        var wasInterrupted = interrupted.IsCancellationRequested || cluster.IsTornDown;
        if (show.IsFaulted && !wasInterrupted)
        {
            await mesh.DisposeAsync();
            await show;
        }

        // after an interrupt, whatever the demo was doing fails as its processes go: that is expected
        _ = show.ContinueWith(t => t.Exception, TaskScheduler.Default);
        var code = outcome.TrafficDone ? (outcome.Ok ? 0 : 1) : 130;
        Say((wasInterrupted ? "interrupted; " : "") + (!outcome.TrafficDone ? "" : outcome.Ok
            ? "all traffic arrived intact; " : "some traffic failed (see above); ") + $"tearing down cluster {cluster.RunId}");
        try
        {
            await mesh.DisposeAsync();
        }
        catch (HarnessException e)
        {
            Say($"cluster {cluster.RunId}: {e.Message}");
            return 1;
        }

        Say($"cluster {cluster.RunId} removed: {cluster.TeardownSummary}");
        return code;
    }

    private sealed class DemoOutcome
    {
        public volatile bool TrafficDone;
        public volatile bool Ok;
    }

    private static async Task ShowAsync(MeshCluster mesh, bool keep, DemoOutcome outcome, CancellationToken interrupted)
    {
        // nothing printed once interrupted: the teardown is removing what the remaining steps use
        void Print(string line)
        {
            if (!interrupted.IsCancellationRequested)
            {
                Console.WriteLine(line);
            }
        }

        var cluster = mesh.Cluster;
        foreach (var pod in cluster.Pods)
        {
            Print($"  {pod}");
        }

        foreach (var name in new[] { "web-a", "web-b1", "web-b2" })
        {
            await MeshCluster.StartServerAsync(cluster.Pod("demo", name), "--bind", "::", "--port", "8080", "--reply-bytes", "65536");
        }

        var client = cluster.Pod("demo", "client");
        var ok = true;
        ok &= await TrafficAsync(Print, "same node:  client -> web-a", client, $"{cluster.Pod("demo", "web-a").Address}:8080", 1);
        ok &= await TrafficAsync(Print, "cross node: client -> web-b1", client, $"{cluster.Pod("demo", "web-b1").Address}:8080", 1);
        ok &= await TrafficAsync(Print, "IPv6:       client -> web-b1", client, $"[{cluster.Pod("demo", "web-b1").Address6}]:8080", 1);
        ok &= await TrafficAsync(Print, $"service:    client -> web ({Vip}:80), 10 connections", client, $"{Vip}:80", 10);
        ok &= await RefusedAsync(Print, "policy:     client -> web-b1:9090 (denied by demo/deny-9090)", client, $"{cluster.Pod("demo", "web-b1").Address}:9090");
        await Task.Delay(300, interrupted);

        foreach (var node in cluster.Nodes)
        {
            Print($"\n== what the agent on {node.Name} saw");
            Print($"  {"DIR",-9} {"SOURCE",-12} {"ORIGINAL DST",-22} {"SERVICE",-9} {"DESTINATION",-12} {"SECURITY",-10} {"SENT",9} {"RECEIVED",9} FLAGS");
            foreach (var flow in MeshCluster.Flows(mesh.Agent(node.Name)))
            {
                Print(
                    $"  {S(flow, "direction"),-9} {S(flow, "source_workload"),-12} {S(flow, "original_destination"),-22} " +
                    $"{S(flow, "destination_service"),-9} {S(flow, "destination_workload"),-12} {S(flow, "connection_security_policy"),-10} " +
                    $"{flow.GetProperty("bytes_sent").GetInt64(),9} {flow.GetProperty("bytes_received").GetInt64(),9} {S(flow, "response_flags")}" +
                    (flow.TryGetProperty("error", out var error) ? $" ({error.GetString()})" : ""));
            }
        }

        outcome.Ok = ok;
        outcome.TrafficDone = !interrupted.IsCancellationRequested;
        if (keep)
        {
            Print("\n== the cluster stays up until Ctrl-C (or SIGTERM). Try:");
            Print($"  ip netns exec {client.NetnsName} curl -s {Vip}:80 --max-time 2   # any TCP client works");
            Print($"  ip netns exec {cluster.Node("node1").NetnsName} curl -s 127.0.0.1:15000/flows");
            await Task.Delay(Timeout.Infinite, interrupted);
        }
    }

    private static async Task<bool> TrafficAsync(Action<string> print, string title, ClusterPod from, string to, int connections)
    {
        const int bytes = 1024 * 1024;
        var run = await MeshCluster.RunPeerAsync(from, TimeSpan.FromMinutes(1), "send", "--to", to, "--bytes", bytes.ToString(),
            "--connections", connections.ToString(), "--expect-reply-bytes", "65536");
        var good = run.Connections.Count(c => c.GetProperty("error").ValueKind == JsonValueKind.Null);
        print($"  {title}: {good}/{connections} connection(s) ok, {bytes / 1024} KiB sent and 64 KiB back on each{(good == connections ? "" : "\n" + run)}");
        return run.ExitCode == 0 && good == connections;
    }

    private static async Task<bool> RefusedAsync(Action<string> print, string title, ClusterPod from, string to)
    {
        var run = await MeshCluster.RunPeerAsync(from, TimeSpan.FromMinutes(1), "send", "--to", to, "--bytes", "100", "--timeout-ms", "5000");
        var refused = run.ExitCode != 0;
        print($"  {title}: {(refused ? "refused, as the policy says" : "NOT refused")}");
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
